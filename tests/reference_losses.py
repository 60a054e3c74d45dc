"""Slow, direct transcriptions of METHOD.md formulas shared by the loss tests."""

from __future__ import annotations

import torch


def reference_isl(xs: list[torch.Tensor], tau: float) -> torch.Tensor:
    """ISL of METHOD.md Sec. 3 over a list of vectors, as loops (sg = ``.detach()``)."""
    n = len(xs)
    total = xs[0].new_zeros(())
    for i in range(n):
        pos = (i + n // 2) % n
        s = {j: torch.exp(torch.dot(xs[i], xs[j].detach()) / tau) for j in range(n) if j != i}
        z = sum(s.values())
        total = total + torch.log(s[pos] / z)
        for j, s_ij in s.items():
            if j != pos:
                total = total + torch.log(1 - s_ij / z)
    return -total / n
