"""Patch discrimination: aligned patches of two views are positives, all other patches negatives.

Chen et al., "Unsupervised Local Discrimination for Medical Images", TPAMI 2023 (arXiv
2108.09440), Sec. 3 (patch embeddings and patch discrimination); METHOD.md Sec. 3.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from localdisc.losses.isl import _compute_dtype, isl_loss

__all__ = [
    "PatchDiscriminationLoss",
    "flatten_patches",
    "patch_discrimination_loss",
    "patch_embeddings",
    "center_weights",
]

#: Default width of the center-sensitive kernel, as a fraction of the cell side.
CENTER_SIGMA = 0.25


def center_weights(cells: int, length: int, sigma: float, device=None) -> Tensor:
    """``[cells, length]`` pooling weights along one axis: a Gaussian peaked at each cell centre.

    Center-sensitive averaging (TPAMI 2023, Sec. 6) weights pixel embeddings by how close they are
    to the patch centre, so that the patch embedding moves when the centre moves. The paper does
    not publish its kernel; ours is a Gaussian of standard deviation ``sigma`` times the cell side,
    truncated to the cell: the support stays that of uniform pooling (neighbouring patches share
    no pixel, so ISL negatives stay independent), and with the default 0.25 the cell's border
    still gets ``exp(-2) = 0.14`` of the centre's weight, so the whole cell contributes. The 2-D
    kernel is the outer product of the two axes' weights. Rows sum to 1, for any ``sigma`` > 0:
    they are a softmax of the log-weights, so a narrow Gaussian weights the pixels nearest the
    centre (its plain exponentials underflow to 0 / 0 below about 0.04 px).
    """
    if not 0 < sigma < math.inf:  # 0 gave NaN weights, a negative one was taken as its size
        raise ValueError(f"center_sigma must be positive and finite, got {sigma}")
    edges = torch.linspace(0, length, cells + 1, device=device)
    pos = torch.arange(length, device=device, dtype=torch.float32) + 0.5
    lo, hi = edges[:-1, None], edges[1:, None]
    centre, side = (lo + hi) / 2, (hi - lo)
    inside = (pos >= lo) & (pos < hi)
    log_w = (-0.5 * ((pos - centre) / (sigma * side)) ** 2).masked_fill(~inside, -math.inf)
    return torch.softmax(log_w, dim=1)


def patch_embeddings(v: Tensor, grid: int = 8, center_sigma: float | None = None) -> Tensor:
    """Patch embeddings ``P = L2norm(adaptive_avg_pool(v, grid x grid))`` (paper Sec. 3).

    Args:
        v: ``[N, D, H, W]`` pixel embeddings (unit vectors per pixel in the paper's network).
        grid: cells per side (paper: 8, i.e. 64 patches per image).
        center_sigma: ``None`` for the paper's uniform average; a number for center-sensitive
            averaging with a Gaussian of that width (fraction of the cell side), see
            :func:`center_weights`.

    Returns:
        ``[N, D, grid, grid]``, unit-norm over ``D``, in the compute dtype (float32 for bf16/fp16
        input).
    """
    if v.dim() != 4:
        raise ValueError(f"patch_embeddings expects v of shape [N, D, H, W], got {tuple(v.shape)}")
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    with torch.autocast(device_type=v.device.type, enabled=False):
        v = v.to(_compute_dtype(v.dtype))
        n, d, h, w = v.shape
        if center_sigma is not None:
            wy = center_weights(grid, h, center_sigma, v.device).to(v.dtype)
            wx = center_weights(grid, w, center_sigma, v.device).to(v.dtype)
            pooled = torch.einsum("ndhw,gh,kw->ndgk", v, wy, wx)
        elif h % grid == 0 and w % grid == 0:
            # Equal cells: a plain reduction, several times faster on GPU than the adaptive-pool
            # kernel with 56 x 56 windows, and the same numbers.
            pooled = v.reshape(n, d, grid, h // grid, grid, w // grid).mean((3, 5))
        else:
            pooled = F.adaptive_avg_pool2d(v, grid)
        return F.normalize(pooled, dim=1)


def flatten_patches(p: Tensor) -> Tensor:
    """``[M, D, g, g] -> [M * g * g, D]``, rows ordered by image, then grid row, then column."""
    if p.dim() != 4:
        raise ValueError(f"expected patches of shape [M, D, g, g], got {tuple(p.shape)}")
    return p.permute(0, 2, 3, 1).reshape(-1, p.shape[1])


def patch_discrimination_loss(
    view1: Tensor, view2: Tensor, tau: float = 0.1, *, distributed: bool = False
) -> Tensor:
    """Patch discrimination ``L_PD = ISL([P(view1) ; P(view2)]; tau)`` (paper Sec. 3).

    Patch ``(m, u, w)`` of ``view1`` is the positive of patch ``(m, u, w)`` of ``view2``; every
    other patch of either view, of any image, is a negative. So ``N = 2 * M * g * g`` vectors.

    Args:
        view1: ``[M, D, g, g]`` patch embeddings of the first views.
        view2: ``[M, D, g, g]`` patch embeddings of the second views, *already* flipped/rotated
            back by the caller so that cell ``(u, w)`` covers the same tissue as in ``view1``.
        tau: temperature (paper: 0.1).
        distributed: negatives over all ranks (each rank passes its own views), see
            :func:`~localdisc.losses.isl.isl_loss`.
    """
    if view1.shape != view2.shape or view1.dim() != 4:
        raise ValueError(
            "view1 and view2 must both be [M, D, g, g] of the same shape, got "
            f"{tuple(view1.shape)} and {tuple(view2.shape)}"
        )
    x = torch.cat([flatten_patches(view1), flatten_patches(view2)], dim=0)
    return isl_loss(x, tau, distributed=distributed)


class PatchDiscriminationLoss(nn.Module):
    """Module form of :func:`patch_discrimination_loss` (TPAMI 2023 Sec. 3)."""

    def __init__(self, tau: float = 0.1, *, distributed: bool = False) -> None:
        super().__init__()
        self.tau = tau
        self.distributed = distributed

    def forward(self, view1: Tensor, view2: Tensor) -> Tensor:
        return patch_discrimination_loss(view1, view2, self.tau, distributed=self.distributed)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, distributed={self.distributed}"
