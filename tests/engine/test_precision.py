"""Where bf16 autocast is used: CUDA, and CPUs with bf16 instructions only."""

from __future__ import annotations

import pytest
import torch

from localdisc.engine import precision


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Set what the CPU reports about bf16 (torch.cpu's private probes), uncached."""

    def set_support(avx512_bf16: bool, amx: bool) -> None:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        precision.cpu_has_native_bf16.cache_clear()

    yield set_support
    precision.cpu_has_native_bf16.cache_clear()


@pytest.mark.parametrize(("avx512_bf16", "amx"), [(False, False), (True, False), (False, True)])
def test_cpu_autocast_only_with_native_bf16(cpu_bf16, avx512_bf16, amx):
    cpu_bf16(avx512_bf16, amx)
    native = avx512_bf16 or amx
    assert precision.bf16_autocast_pays("cpu") == native
    x = torch.ones(2, 2)
    with precision.bf16_autocast("cpu"):
        assert (x @ x).dtype == (torch.bfloat16 if native else torch.float32)
    with precision.bf16_autocast(torch.device("cpu"), enabled=False):
        assert (x @ x).dtype == torch.float32


def test_cuda_always_pays_and_old_torch_means_no_cpu_bf16(cpu_bf16, monkeypatch):
    cpu_bf16(True, True)
    assert precision.bf16_autocast_pays("cuda")
    assert precision.bf16_autocast_pays(torch.device("cuda", 0))
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    precision.cpu_has_native_bf16.cache_clear()
    assert not precision.bf16_autocast_pays("cpu")
