"""Device names: what resolve_device takes, and a clear error for what it does not; the
logged terms under torchrun."""

import csv

import pytest
import torch

from helpers import run_two_ranks
from localdisc.engine.distributed import mean_over_ranks, resolve_device
from localdisc.errors import LocaldiscError


def test_known_devices_resolve():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("device", ["gpu", "GPU", "cuda0", "", "meta", "cpu:x"])
def test_a_misspelt_device_is_one_clear_error(device):
    with pytest.raises(LocaldiscError, match=rf"unknown device '{device}' \(auto, cpu, cuda, "):
        resolve_device(device)


def test_a_missing_gpu_is_named():
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(LocaldiscError, match=f"cuda:{count} was asked for"):
        resolve_device(f"cuda:{count}")


def test_predict_with_a_misspelt_device_fails_before_any_work(tmp_path):
    from localdisc.models.segmenter import Segmenter
    from localdisc.tasks.predict import predict_images

    Segmenter(modality="fundus", size=32).save(tmp_path / "model")
    with pytest.raises(LocaldiscError, match="unknown device 'gpu'"):
        predict_images(tmp_path / "model", [tmp_path], tmp_path / "out", device="gpu")


@pytest.fixture
def two_gpus(monkeypatch):
    """Pretend this machine has two CUDA GPUs (resolving a device touches none)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_each_torchrun_process_takes_its_own_gpu(two_gpus):
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    # More processes per node than GPUs: used to fail later inside CUDA or NCCL.
    with pytest.raises(LocaldiscError, match="nproc-per-node 2"):
        resolve_device("cuda", local_rank=2)


def test_one_named_gpu_for_every_torchrun_process_is_refused(two_gpus, monkeypatch):
    from localdisc.engine import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    # Both processes would take cuda:0, which NCCL refuses after the process group started.
    with pytest.raises(LocaldiscError, match="CUDA_VISIBLE_DEVICES"):
        distributed.setup("cuda:0")
    assert not torch.distributed.is_initialized()


MEAN_RANK = """
import os, sys
import torch
import torch.distributed as dist
from helpers import tiny_pretrain_config
import localdisc.engine.pretrain as engine
from localdisc.data.pool import synthetic_pool

rank, store, run_dir, start = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
real = engine.ld_losses

def ld_losses(model, *args, **kwargs):  # each rank logs its own pd: 1 on rank 0, 3 on rank 1
    terms = real(model, *args, **kwargs)
    terms.pd = torch.tensor(1.0 + 2 * rank)
    return terms

engine.ld_losses = ld_losses
# one log row, at step 4; a checkpoint (with the log window) at step 2
config = tiny_pretrain_config(stage1_steps=4, stage2_steps=0, log_every=4, checkpoint_every=2,
                              val_every=100)
messages = []
try:
    engine.pretrain(config, run_dir, resume=start == "resume",
                    pool=synthetic_pool(6, "fundus", 48),
                    stop_at_step=2 if start == "stop" else None, log=messages.append)
    print(messages)
finally:
    dist.destroy_process_group()
"""


@pytest.mark.parametrize("starts", [["full"], ["stop", "resume"]])
def test_under_torchrun_the_log_shows_the_mean_over_ranks(tmp_path, starts):
    # It showed rank 0's terms; after a resume, where every rank starts from the window saved
    # by rank 0, the row that window belongs to is the mean too.
    for start in starts:
        outputs = run_two_ranks(tmp_path, MEAN_RANK, start)
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").read_text().splitlines()))
    logged = [(row["step"], float(row["pd"])) for row in rows if row["pd"]]
    assert logged == [("4", 2.0)], outputs
    # the first process speaks for all ("resumed from step 2" was said by each)
    said = [eval(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert said[1] == [] and any(m.startswith("training on") for m in said[0]), outputs
    assert ("resumed from step 2" in said[0]) == (starts[-1] == "resume"), outputs


def test_sync_bn_without_cuda_under_torchrun_is_refused_before_the_pool_is_read(
    tmp_path, monkeypatch
):
    # torch's SyncBatchNorm raised "only work with GPU modules" in every process, after the
    # pool was read and config.json written (and again on --resume, which keeps the setting).
    from helpers import tiny_pretrain_config
    from localdisc.engine import distributed, pretrain

    monkeypatch.setattr(
        distributed, "setup", lambda device: distributed.DistContext(0, 2, 0, torch.device("cpu"))
    )
    config = tiny_pretrain_config(sync_bn=True, data=[str(tmp_path / "missing")])
    with pytest.raises(LocaldiscError, match="--sync-bn on cpu: torch's SyncBatchNorm runs on"):
        pretrain.pretrain(config, tmp_path / "run", log=lambda m: None)
    assert not (tmp_path / "run").exists()


def test_mean_over_ranks_alone_returns_the_values():
    values = {"loss": torch.tensor(2.0), "pd": torch.tensor(1.0)}
    assert mean_over_ranks(values) is values


PARTNERS_RANK = """
import os, sys
import torch.distributed as dist
from helpers import tiny_pretrain_config
import localdisc.engine.pretrain as engine
from localdisc.data.pool import synthetic_pool

rank, store, run_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
real, seen = engine.validation_loss, []

def validation_loss(*args, partners, **kwargs):
    seen.append(partners.double().sum().item())
    return real(*args, partners=partners, **kwargs)

engine.validation_loss = validation_loss
config = tiny_pretrain_config(stage1_steps=1, stage2_steps=0, val_every=1)
try:
    engine.pretrain(config, run_dir, pool=synthetic_pool(24, "fundus", 48), log=lambda m: None)
    print(seen)
finally:
    dist.destroy_process_group()
"""


def test_under_torchrun_the_validation_pairs_are_those_of_one_process(tmp_path, monkeypatch):
    # Each validation image is paired with a training image, fixed for the run: they were
    # taken from rank 0's shard, so a run of 2 processes had another validation loss.
    import localdisc.engine.pretrain as engine
    from helpers import tiny_pretrain_config
    from localdisc.data.pool import synthetic_pool

    real, seen = engine.validation_loss, []

    def validation_loss(*args, partners, **kwargs):
        seen.append(partners.double().sum().item())
        return real(*args, partners=partners, **kwargs)

    monkeypatch.setattr(engine, "validation_loss", validation_loss)
    config = tiny_pretrain_config(stage1_steps=1, stage2_steps=0, val_every=1)
    engine.pretrain(config, tmp_path / "one", pool=synthetic_pool(24, "fundus", 48),
                    log=lambda m: None)  # fmt: skip
    outputs = run_two_ranks(tmp_path, PARTNERS_RANK)
    assert eval(outputs[0][0].strip().splitlines()[-1]) == seen, outputs
