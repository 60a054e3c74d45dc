import torch

from helpers import tiny_pretrain_config
from localdisc.engine.pretrain import pretrain


def test_a_seeded_run_leaves_the_callers_random_state_as_it_was(tmp_path):
    # pretrain, run_transfer, refine and train_student seed torch's global generator: after
    # one, a notebook drew the same "random" split whatever it had seeded (reviewer).
    torch.manual_seed(123)
    expected = torch.randperm(10)
    torch.manual_seed(123)
    pretrain(tiny_pretrain_config(data=["synthetic_fundus:4"], stage2_steps=0), tmp_path / "run")
    assert torch.equal(torch.randperm(10), expected)
