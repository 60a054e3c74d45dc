"""LDViews' copies from the host to the device: each copy of a CPU tensor to a CUDA device with
``.to(device)`` (or ``torch.tensor(..., device=...)``) makes the host wait for the GPU, and a
views call ran at every training step made eleven of them."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from localdisc.data.views import LDViews


def _device_of(args: tuple, kwargs: dict) -> torch.device | None:
    """The device a ``Tensor.to`` call copies to, if it names one."""
    for a in (*args, kwargs.get("device")):
        if isinstance(a, (torch.device, str)):
            return torch.device(a)
        if isinstance(a, torch.Tensor):
            return a.device
    return None


@pytest.fixture
def host_to_device_copies(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Count the copies of CPU data to another device (by how they were asked for) while on."""
    copies: Counter = Counter()
    to, tensor, getitem = torch.Tensor.to, torch.tensor, torch.Tensor.__getitem__

    def counted_to(self: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        device = _device_of(args, kwargs)
        if self.device.type == "cpu" and device is not None and device.type != "cpu":
            copies["Tensor.to"] += 1
        return to(self, *args, **kwargs)

    def counted_tensor(*args: object, **kwargs: object) -> torch.Tensor:
        device = kwargs.get("device")
        if device is not None and torch.device(device).type != "cpu":  # type: ignore[arg-type]
            copies["torch.tensor"] += 1
        return tensor(*args, **kwargs)

    def counted_getitem(self: torch.Tensor, index: object) -> torch.Tensor:
        on_cpu = isinstance(index, torch.Tensor) and index.device.type == "cpu"
        if on_cpu and self.device.type != "cpu" and index.dtype != torch.bool:
            copies["CPU index"] += 1  # torch copies the index over first
        return getitem(self, index)

    monkeypatch.setattr(torch.Tensor, "to", counted_to)
    monkeypatch.setattr(torch, "tensor", counted_tensor)
    monkeypatch.setattr(torch.Tensor, "__getitem__", counted_getitem)
    return copies


@pytest.mark.parametrize("modality", ["fundus", "xray"])
def test_a_views_call_copies_its_draws_to_the_device_once(host_to_device_copies, modality):
    # The 'meta' device stands in for a GPU: the same code path, no data and no GPU needed.
    c = 3 if modality == "fundus" else 1
    x = torch.zeros(4, c, 80, 80, dtype=torch.uint8, device="meta")
    views = LDViews(64, modality)
    gen = torch.Generator().manual_seed(0)
    views(x[:2], x[2:], generator=gen)  # a first call may make its constants
    host_to_device_copies.clear()
    batch = views(x[:2], x[2:], generator=gen)
    # One copy of all the draws (was 12 for fundus: 9 draws, the mean, the std, the hue offsets).
    assert sum(host_to_device_copies.values()) == 1, dict(host_to_device_copies)
    assert batch.images.is_meta and batch.lam.is_meta and batch.flip.is_meta
    assert batch.flip.dtype == torch.bool and batch.rot_k.dtype == torch.int64
    assert batch.lam.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_views_call_on_cuda_does_not_wait_for_the_gpu() -> None:
    x = torch.randint(0, 256, (4, 3, 80, 80), dtype=torch.uint8, device="cuda")
    views = LDViews(64)
    gen = torch.Generator().manual_seed(0)
    views(x[:2], x[2:], generator=gen)  # a first call may make its constants
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # a synchronising call raises
    try:
        batch = views(x[:2], x[2:], generator=gen)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert batch.images.is_cuda and batch.rot_k.is_cuda
