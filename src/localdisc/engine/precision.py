"""Where bf16 autocast and channels-last memory pay off.

On a GPU both always do. On a CPU, oneDNN's convolutions run faster channels-last, and in bf16
only where the CPU has bf16 instructions (AVX512-BF16 or AMX): on a 2-core AMD EPYC with
AVX512-BF16 the LD step at the CPU-scale settings went from 15.4 to 25.6 images/s; with oneDNN
held to AVX-512 without BF16 (emulated bf16) it fell to 0.65x of float32, held to AVX2 to 0.11x
(benchmarks/RESULTS.md, "bf16 and channels-last on CPU").

The losses keep their float32 reductions either way (they disable autocast inside).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from functools import cache

import torch


@cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX tiles)."""
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    # Private probes of torch.cpu; a torch without them is taken to mean no support.
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def bf16_autocast_pays(device: torch.device | str) -> bool:
    """Whether bf16 autocast speeds up training on ``device``: CUDA, or a CPU with bf16."""
    kind = torch.device(device).type
    return kind == "cuda" or (kind == "cpu" and cpu_has_native_bf16())


def bf16_autocast(device: torch.device | str, enabled: bool = True) -> AbstractContextManager:
    """bf16 autocast on ``device`` when ``enabled`` and it pays there (:func:`bf16_autocast_pays`),
    otherwise a no-op context."""
    if enabled and bf16_autocast_pays(device):
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return nullcontext()
