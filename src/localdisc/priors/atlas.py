"""A kept-pose prior used as an atlas for one image: moved onto it, then an intensity model.

A prior that keeps its pose (lungs and heart of a PA radiograph) says where the organ lies in the
simulator's frame, but each radiograph frames the chest its own way: on JSRT the best-matching
poses of the prior spread by 6-8% in scale and 2-4% of the side in shift.
:func:`align_frequency` scales the prior's pixel frequency per axis and shifts it to best match
LD's own map of the image (soft Dice, an exhaustive search on a coarse grid): atlas registration
with LD's map standing in for the image, so no label is involved. :func:`fuse_atlases` goes one
step further with the prior's masks themselves: each moved near that pose to match the map, the
best-matching ones averaged (multi-atlas selection), an organ shaped like this image's rather
than the mean shape. :func:`intensity_posterior` then fits two Gaussians of the image's grey
level, mixed pixel by pixel by that map (atlas-guided classification, Van Leemput et al., IEEE
TMI 18(10), 1999): the organ's own brightness on this image. Both are votes in the refinement's
pseudo-labels (:mod:`localdisc.tasks.shape_guided`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from localdisc.data.preprocess import resize_image, stretch_contrast

#: A pose: scale along x, scale along y (about the centre), shift along x, along y (fractions
#: of the side; positive moves right and down).
Pose = tuple[float, float, float, float]

#: The searched grid: each axis scaled by 0.8-1.25 (geometric steps, 1 among them), shifted by
#: up to 1/8 of the side.
SCALES = tuple((1.25 ** np.linspace(-1, 1, 7)).tolist())
SHIFTS = tuple(np.linspace(-0.125, 0.125, 9).tolist())


def _grid(scales: Sequence[float], shifts: Sequence[float]) -> torch.Tensor:
    """The poses of ``scales`` per axis x ``shifts`` per axis, [N, 4], nearest the identity
    first: of poses that match equally (an empty map matches all of them with a soft Dice of
    0), the first wins, so a tie keeps the prior where it is, not at the grid's corner."""
    poses = torch.tensor(list(itertools.product(scales, scales, shifts, shifts)))
    away = poses[:, :2].log().abs().sum(1) + poses[:, 2:].abs().sum(1)
    return poses[torch.argsort(away, stable=True)]


def _theta(poses: torch.Tensor) -> torch.Tensor:
    """``affine_grid`` matrices [N, 2, 3] that move a map by ``poses`` [N, 4]: an output point
    p (normalised, -1..1) samples the input at (p - 2 shift) / scale."""
    sx, sy, dx, dy = poses.unbind(1)
    zero = torch.zeros_like(sx)
    rows = [
        torch.stack([1 / sx, zero, -2 * dx / sx], 1),
        torch.stack([zero, 1 / sy, -2 * dy / sy], 1),
    ]
    return torch.stack(rows, 1)


def move_frequency(frequency: np.ndarray, pose: Pose) -> np.ndarray:
    """``frequency`` (H x W) scaled about its centre and shifted by ``pose`` (bilinear; edge
    values carry on beyond the border), in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frequency, dtype=np.float32))[None, None]
    return _move(x, torch.tensor([pose]))[0, 0].clamp(0, 1).numpy()


def _small(array: np.ndarray, side: int) -> torch.Tensor:
    """``array`` (H x W, or N x H x W) as ``[N, 1, side, side]`` (bilinear, anti-aliased)."""
    x = torch.tensor(array, dtype=torch.float32)  # a copy: the prior's masks are read-only
    x = x[None, None] if x.ndim == 2 else x[:, None]
    return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)


def _move(maps: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
    """Each of ``maps`` [N, 1, H, W] moved by its row of ``poses`` [N, 4]."""
    grid = F.affine_grid(_theta(poses.float()), list(maps.shape), align_corners=False)
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _soft_dice(maps: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice of each of ``maps`` [N, 1, H, W] with ``target`` [1, 1, H, W]: [N]."""
    overlap = (maps * target).sum((1, 2, 3))
    return 2 * overlap / (maps.sum((1, 2, 3)) + target.sum() + 1e-6)


def align_frequency(
    frequency: np.ndarray, target: np.ndarray, *, side: int = 64
) -> tuple[np.ndarray, Pose]:
    """The pose of ``frequency`` that best matches ``target`` (both H x W in [0, 1], any sizes),
    and ``frequency`` moved by it at its own size.

    Every pose of the grid (:data:`SCALES` per axis x :data:`SHIFTS` per axis) is scored by soft
    Dice at ``side`` x ``side`` pixels in one batch; of equal ones, the nearest the identity.
    """
    small, goal = _small(frequency, side), _small(target, side)
    poses = _grid(SCALES, SHIFTS)
    dice = _soft_dice(_move(small.expand(len(poses), -1, -1, -1), poses), goal)
    pose: Pose = tuple(float(v) for v in poses[int(torch.argmax(dice))])  # type: ignore[assignment]
    return move_frequency(frequency, pose), pose


#: The search of each atlas around the mean shape's pose: each axis scaled by a further
#: 0.95-1.05 and shifted by up to 3% of the side (3 x 3 x 3 x 3 poses).
LOCAL_SCALES = (1 / 1.05, 1.0, 1.05)
LOCAL_SHIFTS = (-0.03, 0.0, 0.03)


def fuse_atlases(
    masks: np.ndarray, target: np.ndarray, *, k: int = 50, side: int = 64
) -> tuple[np.ndarray, Pose]:
    """The ``k`` of ``masks`` (N x S x S in [0, 1]: a prior's masks) that best match ``target``
    (H x W in [0, 1]: LD's map of one image), each moved by its own pose, averaged: multi-atlas
    selection (Aljabar et al., NeuroImage 46(3), 2009) with LD's map standing in for the image.

    The masks' mean (their pixel frequency) is aligned to ``target`` first
    (:func:`align_frequency`); each mask then tries the poses of :data:`LOCAL_SCALES` and
    :data:`LOCAL_SHIFTS` around that one, and keeps its best by soft Dice at ``side`` px. Returns
    the mean of the ``k`` best-matching masks so moved (``float32`` S x S, the pixel frequency of
    organs shaped like this one) and the mean shape's pose.
    """
    if masks.ndim != 3 or not len(masks):
        raise ValueError(f"masks must be N x S x S with N >= 1, got shape {masks.shape}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    _, pose = align_frequency(masks.mean(0), target, side=side)
    local = _grid(LOCAL_SCALES, LOCAL_SHIFTS)
    poses = torch.cat(
        [torch.tensor(pose[:2]) * local[:, :2], torch.tensor(pose[2:]) + local[:, 2:]], 1
    )
    small, goal = _small(masks, side), _small(target, side)
    dice = torch.cat([  # 16 masks x 81 poses at a time: ~50 MB
        _soft_dice(_move(chunk.repeat_interleave(len(poses), 0), poses.repeat(len(chunk), 1)), goal)
        for chunk in small.split(16)
    ])  # fmt: skip
    best, which = dice.view(len(masks), len(poses)).max(1)
    chosen = torch.argsort(best, descending=True, stable=True)[:k]
    full = torch.from_numpy(np.ascontiguousarray(masks[chosen.numpy()], dtype=np.float32))[:, None]
    fused = _move(full, poses[which[chosen]]).mean(0)[0].clamp(0, 1).numpy()
    return fused, pose


def _grey(image: np.ndarray) -> np.ndarray:
    """The image's grey level (channels averaged), stretched to its own range."""
    grey = stretch_contrast(image.astype(np.float32))
    return grey.mean(-1) if grey.ndim == 3 else grey


def _two_gaussians(
    grey: np.ndarray, p: np.ndarray, iterations: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EM for two Gaussians of ``grey`` mixed pixel by pixel by ``p``: the posterior of inside
    and the inside and outside likelihoods of each pixel."""
    post = p.copy()
    likelihoods = [np.ones_like(p), np.ones_like(p)]
    for _ in range(iterations):
        likelihoods = []
        for w in (post, 1 - post):
            mean = (w * grey).sum() / w.sum()
            var = (w * (grey - mean) ** 2).sum() / w.sum() + 1e-4
            likelihoods.append(np.exp(-((grey - mean) ** 2) / (2 * var)) / np.sqrt(var))
        inside, outside = p * likelihoods[0], (1 - p) * likelihoods[1]
        post = inside / (inside + outside + 1e-12)
    return post, likelihoods[0], likelihoods[1]


def intensity_posterior(
    image: np.ndarray, prior: np.ndarray, *, iterations: int = 15
) -> np.ndarray:
    """P(inside | grey level) for each pixel of ``image`` (H x W (x C) in [0, 1]) under two
    Gaussians of its grey level (channels averaged, stretched to its own range), mixed pixel by
    pixel by ``prior`` (H x W: the probability of inside before looking), fitted by EM.

    Returns ``float32`` H x W in [0, 1]. The prior is kept within [0.02, 0.98] so that the image
    can overrule it anywhere.
    """
    if prior.shape != image.shape[:2]:
        raise ValueError(f"prior of shape {prior.shape} for an image of {image.shape[:2]}")
    p = np.clip(prior, 0.02, 0.98)
    return _two_gaussians(_grey(image), p, iterations)[0].astype(np.float32)


def shift_sideways(maps: np.ndarray, pixels: int) -> np.ndarray:
    """``maps`` (..., H x W) moved ``pixels`` to the right (left if negative), the edge column
    repeated into the gap."""
    if pixels == 0:
        return maps
    index = np.clip(np.arange(maps.shape[-1]) - pixels, 0, maps.shape[-1] - 1)
    return maps[..., index]


def sideways_offset(
    images: Sequence[np.ndarray],
    maps: Sequence[np.ndarray],
    *,
    side: int = 128,
    max_shift: int = 6,
    iterations: int = 15,
) -> float:
    """The one horizontal shift of all of ``maps`` (each H x W in [0, 1]: an organ's map of
    the same-index image of ``images``) under which the images' grey levels are most likely,
    as a fraction of the width (positive: move the maps right); 0 when the best shift is at the
    end of the search, where the intensities do not place the organ.

    Each image's grey level (at ``side`` x ``side``) gets two Gaussians mixed pixel by pixel by
    its map (:func:`intensity_posterior`, fitted once with the map in place); each shift of up
    to ``max_shift`` pixels (at ``side``) is scored by the log-likelihood of every pixel under
    that mixture with the shifted map, summed over all images: atlas registration by maximum
    likelihood (Van Leemput et al., IEEE TMI 18(10), 1999), one translation for a whole run.
    Why one for all and sideways only: LD's shape-guided lung maps sit 1-4 pixels (at 128) to
    one side, the same for every image of a run and different between runs, while this
    estimate of the vertical shift missed by 3 pixels (benchmarks/RESULTS.md, "One sideways
    shift per run").
    """
    if len(images) != len(maps) or not len(maps):
        raise ValueError(f"need as many maps as images (at least one), got {len(maps)} and "
                         f"{len(images)}")  # fmt: skip
    shifts = np.arange(-max_shift, max_shift + 1)
    score = np.zeros(len(shifts))
    for image, prob in zip(images, maps, strict=True):
        grey = _grey(resize_image(image, side))
        p = np.clip(resize_image(np.asarray(prob, np.float32), side), 0.02, 0.98)
        _, inside, outside = _two_gaussians(grey, p, iterations)
        moved = np.stack([shift_sideways(p, int(s)) for s in shifts])
        score += np.log(moved * inside + (1 - moved) * outside + 1e-12).mean((1, 2))
    best = int(np.argmax(score))
    return 0.0 if best in (0, len(shifts) - 1) else float(shifts[best]) / side
