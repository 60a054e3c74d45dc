"""Device names: what resolve_device takes, and a clear error for what it does not."""

import pytest
import torch

from localdisc.engine.distributed import resolve_device
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
