"""The topology a shape prior implies, and a mask made to obey it.

A prior's masks say more than "looks like this": both lung fields are two pieces without holes, a
heart is one. A segmentation without labels (shape-guided output A, the refinement) can break
that, mostly with extra pieces beside the organ, now and then with a hole;
:func:`enforce_topology` keeps the prior's number of pieces (the largest) and fills the holes the
prior never has. Meant for organs (:attr:`PriorTopology.solid`): a tree's masks have loops, and
a thin tree falls into pieces at any threshold, so counting its pieces describes the threshold
rather than the anatomy. A tree without loops (no vessel crossing in its masks) is told from an
organ by its width: an erosion of a few pixels leaves little of it.

Pieces are 8-connected (pixels touching at a corner are one piece) and holes 4-connected
(:func:`scipy.ndimage.binary_fill_holes`' background), the pairing under which the two agree: a
ring closed at a corner is one piece with a hole, and a lobe joined at a corner stays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

# Pieces smaller than this fraction of a mask are specks of drawing or resizing, not anatomy.
_MIN_PIECE = 0.01
# A mask is thin when an erosion by 1/64 of its side keeps less than this share of it: at 128 px
# (2 px) the simulated and real vessel priors keep 0 to 4 %, a loop-free drawn tree 1 %, the
# simulated organs 54 % (optic disc) to 85 % (lungs).
_THIN_KEEPS = 0.25
# 8-connected foreground: scipy's default (a cross) split a rasterised line at every diagonal
# step (a simulated vessel tree of one piece counted 19) and cut corner-joined lobes away.
_PIECES = np.ones((3, 3), bool)


@dataclass(frozen=True)
class PriorTopology:
    """``components``: how many pieces a mask has; ``holes``: whether it may enclose background;
    ``thin``: whether its shapes are lines a few pixels wide (a tree, with loops or without)."""

    components: int
    holes: bool
    thin: bool = False

    @property
    def solid(self) -> bool:
        """Whether the prior is made of solid shapes (organs), the ones to enforce it on."""
        return not (self.holes or self.thin)

    def __str__(self) -> str:
        """As a message says it, e.g. ``2 pieces, no holes`` (the repr read as code)."""
        pieces = "1 piece" if self.components == 1 else f"{self.components} pieces"
        thin = ", thin (a tree)" if self.thin else ""
        return f"{pieces}, {'with holes' if self.holes else 'no holes'}{thin}"


def _pieces(mask: np.ndarray) -> int:
    labels, n = ndimage.label(mask, structure=_PIECES)
    sizes = ndimage.sum_labels(mask, labels, range(1, n + 1))
    return int((sizes >= _MIN_PIECE * sizes.sum()).sum())


def _has_holes(mask: np.ndarray) -> bool:
    filled = ndimage.binary_fill_holes(mask)
    return bool((filled & ~mask).sum() >= _MIN_PIECE * mask.sum())


def _kept_by_erosion(mask: np.ndarray) -> float:
    """The share of ``mask`` an erosion by 1/64 of its side (at least a pixel) keeps."""
    steps = max(1, round(max(mask.shape) / 64))
    return float(ndimage.binary_erosion(mask, iterations=steps).sum() / mask.sum())


def measure_topology(masks: torch.Tensor | np.ndarray) -> PriorTopology:
    """The topology of a bank of prior masks (``[N, 1, S, S]`` or ``[N, S, S]``, any dtype).

    Pieces are counted without specks under 1 % of the mask; the prior's count is the median over
    masks (a tie between two counts: the larger, so that no organ is taken for a speck), and it
    has holes when at least half of its masks do. It is thin when an erosion by
    1/64 of the side keeps under a quarter of the median mask (a tree drawn without crossings
    has no holes, but is no organ).
    """
    array = masks.numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    stack = array.reshape(-1, *array.shape[-2:]).astype(bool)
    stack = [m for m in stack if m.any()]
    if not stack:
        raise ValueError("cannot measure the topology of empty masks")
    components = int(np.ceil(np.median([_pieces(m) for m in stack])))
    holes = 2 * sum(_has_holes(m) for m in stack) >= len(stack)
    thin = float(np.median([_kept_by_erosion(m) for m in stack])) < _THIN_KEEPS
    return PriorTopology(max(components, 1), holes, thin)


def enforce_topology(
    prob: np.ndarray, topology: PriorTopology, threshold: float = 0.5
) -> np.ndarray:
    """``prob`` (H x W in [0, 1]) with its mask (``>= threshold``) made to obey ``topology``.

    Pieces beyond the ``topology.components`` largest go to 0, holes (unless the prior has them)
    to 1; every other pixel keeps its value, so the ranking inside the kept pieces stays the
    network's.
    """
    # At or above, as the written masks (predict.mask_png) and the metrics count foreground: a
    # piece exactly at 0.5 (two runs' mean where one says 1 and the other 0) is in the mask.
    mask = prob >= threshold
    labels, n = ndimage.label(mask, structure=_PIECES)
    out = np.array(prob, dtype=np.float32, copy=True)
    if n > topology.components:
        sizes = ndimage.sum_labels(mask, labels, range(1, n + 1))
        kept = np.argsort(sizes)[::-1][: topology.components] + 1
        removed = mask & ~np.isin(labels, kept)
        out[removed] = 0.0
        mask &= ~removed
    if not topology.holes:
        out[ndimage.binary_fill_holes(mask) & ~mask] = 1.0
    return out


def prior_topology(spec: str) -> PriorTopology:
    """The topology of a prior spec (:func:`~localdisc.priors.load_prior`): 32 masks at 128 px."""
    from localdisc.priors.sources import load_prior

    return measure_topology(load_prior(spec, 128, count=32, seed=0))
