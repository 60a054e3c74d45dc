"""Entropy of the soft cluster assignments: pushes every a_k(p) towards 0 or 1.

Chen et al., "Unsupervised Local Discrimination for Medical Images", TPAMI 2023 (arXiv
2108.09440), Sec. 3 (clustering head, entropy term); METHOD.md Sec. 3.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from localdisc.losses.isl import _compute_dtype

__all__ = ["EntropyLoss", "entropy_loss"]


def entropy_loss(a: Tensor, eps: float | None = None) -> Tensor:
    """Mean binary entropy (base 2) of the assignments (paper Sec. 3)::

        L_ent = mean_{n,k,p} -( a log2 a + (1 - a) log2(1 - a) )

    ``a`` is clamped to ``[eps, 1 - eps]`` first: ``log 0`` would make ``0 * log 0`` NaN and its
    gradient infinite. The clamp costs at most about ``eps * log2(1/eps)`` in value (about
    ``3e-6`` for float32's default), and entries outside the interval get no gradient, which is
    the right limit for a term whose gradient diverges there.

    Args:
        a: ``[N, K, H, W]`` (any shape works) assignments in ``[0, 1]``.
        eps: clamp margin; default: machine epsilon of the compute dtype (float32 for
            bf16/fp16 input).

    Returns:
        Scalar in ``[0, 1]``: 0 for hard 0/1 assignments, 1 for ``a = 0.5`` everywhere.
    """
    a = a.to(_compute_dtype(a.dtype))
    if eps is None:
        eps = torch.finfo(a.dtype).eps
    if not 0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")
    a = a.clamp(eps, 1.0 - eps)
    nats = -(a * torch.log(a) + (1 - a) * torch.log1p(-a))
    return nats.mean() / math.log(2.0)


class EntropyLoss(nn.Module):
    """Module form of :func:`entropy_loss` (TPAMI 2023 Sec. 3)."""

    def __init__(self, eps: float | None = None) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, a: Tensor) -> Tensor:
        return entropy_loss(a, self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
