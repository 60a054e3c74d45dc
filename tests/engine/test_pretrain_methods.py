import csv

import pytest
import torch

from helpers import tiny_pretrain_config
from localdisc.engine.checkpoint import load_safetensors
from localdisc.engine.pretrain import pretrain
from localdisc.errors import LocaldiscError
from localdisc.methods import PEER_METHODS


@pytest.fixture(scope="module")
def pool():
    from localdisc.data.pool import synthetic_pool

    return synthetic_pool(6, "fundus", 48)


def test_a_peers_one_stage_has_the_budget_of_the_stages_it_folds():
    # A stage without a budget is unlimited for LD: the peer's one stage was given the other
    # stage's budget alone, and is now refused (dropping the budget given ran a peer for days,
    # a reviewer found); a negative budget or count was netted against the other stage's.
    def folded(**kw):
        config = tiny_pretrain_config(method="simclr", stage1_steps=2, stage2_steps=3, **kw)
        return config.stage1_steps, config.stage1_seconds, config.stage2_seconds

    for one in ({"stage2_seconds": 100.0}, {"stage1_seconds": 60.0}):
        with pytest.raises(LocaldiscError, match="give both stages a budget, or neither"):
            folded(**one)
    assert folded(stage1_seconds=60.0, stage2_seconds=40.0) == (5, 100.0, None)
    assert folded() == (5, None, None)
    only2 = tiny_pretrain_config(method="simclr", stage1_steps=0, stage2_steps=3,
                                 stage1_seconds=9.0, stage2_seconds=40.0)  # fmt: skip
    assert (only2.stage1_steps, only2.stage1_seconds) == (3, 40.0)  # stage 1 had no steps
    with pytest.raises(LocaldiscError, match="budgets must be > 0"):
        tiny_pretrain_config(method="simclr", stage1_seconds=-50.0, stage2_seconds=100.0)
    with pytest.raises(LocaldiscError, match="step counts must be >= 0"):
        tiny_pretrain_config(method="simclr", stage1_steps=-10, stage2_steps=20)


@pytest.mark.parametrize("method", sorted(PEER_METHODS))
def test_a_peer_method_trains_one_stage_and_resumes_exactly(tmp_path, pool, method):
    config = tiny_pretrain_config(method=method, stage1_steps=2, stage2_steps=2)
    assert (config.stage1_steps, config.stage2_steps) == (4, 0)  # one stage of 2 + 2 steps
    quiet = {"pool": pool, "log": lambda m: None}
    pretrain(config, tmp_path / "straight", **quiet)
    pretrain(config, tmp_path / "resumed", stop_at_step=2, **quiet)
    pretrain(config, tmp_path / "resumed", resume=True, **quiet)
    a = load_safetensors(tmp_path / "straight" / "model.safetensors")
    b = load_safetensors(tmp_path / "resumed" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert (tmp_path / "straight" / "encoder.safetensors").is_file()
    rows = list(csv.DictReader((tmp_path / "straight" / "log.csv").read_text().splitlines()))
    assert {r["stage"] for r in rows} == {"1"} and all(r["loss"] for r in rows if r["lr"])


def test_unknown_methods_and_priors_on_peers_are_refused():
    with pytest.raises(LocaldiscError, match="unknown method 'byol'"):
        tiny_pretrain_config(method="byol")
    with pytest.raises(LocaldiscError, match="needs --method ld"):
        tiny_pretrain_config(method="simclr", prior="simulated:vessels")
    with pytest.raises(LocaldiscError, match="--compile is for --method ld"):
        tiny_pretrain_config(method="simclr", compile=True)


def test_a_peer_method_says_that_crop_scale_is_lds(tmp_path, pool):
    lines: list[str] = []
    config = tiny_pretrain_config(method="simclr", stage1_steps=1, stage2_steps=0,
                                  crop_scale=(0.3, 0.4), val_images=0)  # fmt: skip
    pretrain(config, tmp_path, pool=pool, log=lines.append)
    assert any("crop_scale (0.3, 0.4) is LD's: simclr keeps" in line for line in lines)
