"""Hypersphere mixup: the patches of a mixed image should match the mixed patch embeddings.

Chen et al., "Unsupervised Local Discrimination for Medical Images", TPAMI 2023 (arXiv
2108.09440), Sec. 3 (hypersphere mixup); METHOD.md Sec. 2 item 4 and Sec. 3.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from localdisc.losses.isl import _compute_dtype, isl_loss
from localdisc.losses.patch import flatten_patches

__all__ = ["HypersphereMixupLoss", "hypersphere_mixup_loss", "mixup_targets"]


def mixup_targets(patches1: Tensor, patches2: Tensor, lam: Tensor | float) -> Tensor:
    """Targets ``t = sg(L2norm(lam * P1 + (1 - lam) * P2))`` per patch, detached.

    Args:
        patches1: ``[B, D, g, g]`` patch embeddings of ``view1(I1)``.
        patches2: ``[B, D, g, g]`` patch embeddings of ``view1(I2)``.
        lam: ``[B]`` mixing weights (or one float for all items), the weight of ``I1``.
    """
    if patches1.shape != patches2.shape or patches1.dim() != 4:
        raise ValueError(
            "patches1 and patches2 must both be [B, D, g, g] of the same shape, got "
            f"{tuple(patches1.shape)} and {tuple(patches2.shape)}"
        )
    dtype = _compute_dtype(torch.promote_types(patches1.dtype, patches2.dtype))
    b = patches1.shape[0]
    lam = torch.as_tensor(lam, device=patches1.device).detach().to(dtype)
    if lam.dim() == 0:
        lam = lam.expand(b)
    if lam.shape != (b,):
        raise ValueError(f"lam must be a scalar or of shape [{b}], got {tuple(lam.shape)}")
    lam = lam.view(b, 1, 1, 1)
    with torch.no_grad():  # the target is stop-gradient as a whole
        mixed = lam * patches1.to(dtype) + (1 - lam) * patches2.to(dtype)
        return F.normalize(mixed, dim=1)


def hypersphere_mixup_loss(
    mixed: Tensor,
    patches1: Tensor,
    patches2: Tensor,
    lam: Tensor | float,
    tau: float = 0.1,
    *,
    distributed: bool = False,
) -> Tensor:
    """Hypersphere mixup ``L_mix = ISL([P(m) ; t]; tau)`` with ``t`` from :func:`mixup_targets`.

    Patch ``(b, u, w)`` of the mixed image pairs with target ``(b, u, w)``; all other patches and
    targets are negatives, so ``N = 2 * B * g * g``.

    Gradient: the targets are detached, and ISL's second operand is always detached, so the
    target rows (``i`` a target) carry no gradient at all; only the mixed-image rows do. The
    target rows' values still count, and the mean is over all ``N`` rows exactly as in the
    formula, which halves the gradient relative to averaging over the mixed rows alone (a
    constant factor, kept so the value is the published criterion).

    Args:
        mixed: ``[B, D, g, g]`` patch embeddings of the mixed images ``m``.
        patches1: ``[B, D, g, g]`` patch embeddings of ``view1(I1)`` (receive no gradient here).
        patches2: ``[B, D, g, g]`` patch embeddings of ``view1(I2)`` (receive no gradient here).
        lam: ``[B]`` mixing weights of ``I1`` (``m = lam * I1 + (1 - lam) * I2``).
        tau: temperature (paper: 0.1).
        distributed: negatives over all ranks (each rank passes its own items), see
            :func:`~localdisc.losses.isl.isl_loss`.
    """
    if mixed.shape != patches1.shape:
        raise ValueError(
            f"mixed {tuple(mixed.shape)} and patches1 {tuple(patches1.shape)} must have one shape"
        )
    dtype = _compute_dtype(torch.promote_types(mixed.dtype, patches1.dtype))
    targets = mixup_targets(patches1, patches2, lam).to(dtype)
    x = torch.cat([flatten_patches(mixed).to(dtype), flatten_patches(targets)], dim=0)
    return isl_loss(x, tau, distributed=distributed)


class HypersphereMixupLoss(nn.Module):
    """Module form of :func:`hypersphere_mixup_loss` (TPAMI 2023 Sec. 3)."""

    def __init__(self, tau: float = 0.1, *, distributed: bool = False) -> None:
        super().__init__()
        self.tau = tau
        self.distributed = distributed

    def forward(
        self, mixed: Tensor, patches1: Tensor, patches2: Tensor, lam: Tensor | float
    ) -> Tensor:
        return hypersphere_mixup_loss(
            mixed, patches1, patches2, lam, self.tau, distributed=self.distributed
        )

    def extra_repr(self) -> str:
        return f"tau={self.tau}, distributed={self.distributed}"
