"""A kept-pose prior used as an atlas for one image: moved onto it, then an intensity model.

A prior that keeps its pose (lungs and heart of a PA radiograph) says where the organ lies in the
simulator's frame, but each radiograph frames the chest its own way: on JSRT the best-matching
poses of the prior spread by 6-8% in scale and 2-4% of the side in shift.
:func:`align_frequency` scales the prior's pixel frequency per axis and shifts it to best match
LD's own map of the image (soft Dice, an exhaustive search on a coarse grid): atlas registration
with LD's map standing in for the image, so no label is involved. :func:`intensity_posterior`
then fits two Gaussians of the image's grey level, mixed pixel by pixel by the moved frequency
(atlas-guided classification, Van Leemput et al., IEEE TMI 18(10), 1999): the organ's own
brightness on this image. Both are votes in the refinement's pseudo-labels
(:mod:`localdisc.tasks.shape_guided`).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F

from localdisc.data.preprocess import stretch_contrast

#: A pose: scale along x, scale along y (about the centre), shift along x, along y (fractions
#: of the side; positive moves right and down).
Pose = tuple[float, float, float, float]

#: The searched grid: each axis scaled by 0.8-1.25 (geometric steps, 1 among them), shifted by
#: up to 1/8 of the side.
SCALES = tuple((1.25 ** np.linspace(-1, 1, 7)).tolist())
SHIFTS = tuple(np.linspace(-0.125, 0.125, 9).tolist())


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
    theta = _theta(torch.tensor([pose], dtype=torch.float32))
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    moved = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return moved[0, 0].clamp(0, 1).numpy()


def align_frequency(
    frequency: np.ndarray, target: np.ndarray, *, side: int = 64
) -> tuple[np.ndarray, Pose]:
    """The pose of ``frequency`` that best matches ``target`` (both H x W in [0, 1], any sizes),
    and ``frequency`` moved by it at its own size.

    Every pose of the grid (:data:`SCALES` per axis x :data:`SHIFTS` per axis) is scored by soft
    Dice at ``side`` x ``side`` pixels in one batch; the first best one wins.
    """
    small = [
        F.interpolate(
            torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None],
            size=(side, side),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        for a in (frequency, target)
    ]
    poses = torch.tensor(list(itertools.product(SCALES, SCALES, SHIFTS, SHIFTS)))
    theta = _theta(poses.float())
    grid = F.affine_grid(theta, [len(poses), 1, side, side], align_corners=False)
    moved = F.grid_sample(
        small[0].expand(len(poses), -1, -1, -1), grid, mode="bilinear", padding_mode="border",
        align_corners=False,
    )  # fmt: skip
    overlap = (moved * small[1]).sum((1, 2, 3))
    dice = 2 * overlap / (moved.sum((1, 2, 3)) + small[1].sum() + 1e-6)
    pose: Pose = tuple(float(v) for v in poses[int(torch.argmax(dice))])  # type: ignore[assignment]
    return move_frequency(frequency, pose), pose


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
    grey = stretch_contrast(image.astype(np.float32))
    grey = grey.mean(-1) if grey.ndim == 3 else grey
    p = np.clip(prior, 0.02, 0.98)
    post = p.copy()
    for _ in range(iterations):
        likelihoods = []
        for w in (post, 1 - post):
            mean = (w * grey).sum() / w.sum()
            var = (w * (grey - mean) ** 2).sum() / w.sum() + 1e-4
            likelihoods.append(np.exp(-((grey - mean) ** 2) / (2 * var)) / np.sqrt(var))
        inside, outside = p * likelihoods[0], (1 - p) * likelihoods[1]
        post = inside / (inside + outside + 1e-12)
    return post.astype(np.float32)
