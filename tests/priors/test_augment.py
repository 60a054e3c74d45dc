"""Tests for the reference-mask augmentation and bank sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from localdisc.priors import PriorAugment, sample_prior_batch

EIGHT = np.ones((3, 3), bool)


def _disc(size: int, centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def blobs() -> torch.Tensor:
    """[4, 1, 48, 48] bool: discs of different sizes and places."""
    out = np.stack([_disc(48, (10 + 6 * i, 20 + 3 * i), 4 + 2 * i) for i in range(4)])
    return torch.from_numpy(out)[:, None]


def test_output_shape_dtype_and_binary(blobs: torch.Tensor) -> None:
    out = PriorAugment(32)(blobs, _gen(0))
    assert out.shape == (4, 1, 32, 32) and out.dtype == torch.float32
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    assert bool((out.sum(dim=(1, 2, 3)) > 0).all())
    # bool, uint8 and float {0, 1} inputs are the same masks.
    for masks in (blobs.to(torch.uint8), blobs.float()):
        assert torch.equal(PriorAugment(32)(masks, _gen(0)), out)
    assert PriorAugment(32)(blobs[:0], _gen(0)).shape == (0, 1, 32, 32)


def test_deterministic_per_generator_state(blobs: torch.Tensor) -> None:
    aug = PriorAugment(48)
    a, b, c = aug(blobs, _gen(1)), aug(blobs, _gen(1)), aug(blobs, _gen(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    g = _gen(1)
    assert not torch.equal(aug(blobs, g), aug(blobs, g))  # the generator advances


def test_rotation_and_resize_keep_the_area_without_crop() -> None:
    size = 96
    disc = torch.from_numpy(_disc(size, (47.5, 47.5), 30))[None, None].repeat(16, 1, 1, 1)
    out = PriorAugment(size, max_crop=0.0)(disc, _gen(3))
    ratio = out.sum(dim=(1, 2, 3)) / disc[0].sum()
    # Bilinear edges above the 0.1 threshold add ~3% on a 30-px disc.
    assert bool(((ratio > 0.98) & (ratio < 1.05)).all()), ratio
    # Cropping zooms in: up to 1 / 0.8^2 = 1.56 times the area with max_crop 0.1.
    ratio = PriorAugment(size)(disc, _gen(3)).sum(dim=(1, 2, 3)) / disc[0].sum()
    assert bool(((ratio > 0.98) & (ratio < 1.6)).all()) and ratio.mean() > 1.1


def test_thin_lines_stay_connected() -> None:
    line = torch.zeros(8, 1, 64, 64, dtype=torch.bool)
    line[:, :, 32, 8:56] = True
    for mask in PriorAugment(64)(line, _gen(4))[:, 0].numpy():
        assert ndi.label(mask > 0, EIGHT)[1] == 1


def _handedness_and_angle(mask: np.ndarray) -> tuple[float, float]:
    """Orientation of the big -> medium -> small blob triangle, and the big -> medium angle."""
    labels, n = ndi.label(mask)
    assert n == 3
    sizes = np.bincount(labels.ravel())[1:]
    centres = [np.array(ndi.center_of_mass(mask, labels, k + 1)) for k in np.argsort(-sizes)]
    (ay, ax), (by, bx), (cy, cx) = centres
    cross = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    return float(np.sign(cross)), float(np.arctan2(by - ay, bx - ax))


def _chiral_triangle(size: int) -> np.ndarray:
    """Three blobs of different sizes around the centre: mirroring reverses their order."""
    c = (size - 1) / 2
    return (
        _disc(size, (c - 16, c - 8), 9)
        | _disc(size, (c + 16, c - 8), 6)
        | _disc(size, (c - 4, c + 16), 3.5)
    )


def test_flips_and_rotations_happen() -> None:
    """Three blobs of different sizes form a chiral triangle: a rotation keeps its handedness,
    one flip reverses it (both flips are a rotation by 180 degrees), so about half the draws
    come out mirrored, and the triangle points every way."""
    size = 96
    mask = _chiral_triangle(size)
    original, _ = _handedness_and_angle(mask)
    batch = torch.from_numpy(mask)[None, None].repeat(120, 1, 1, 1)
    out = PriorAugment(size)(batch, _gen(5))[:, 0].numpy() > 0
    signs, angles = zip(*(_handedness_and_angle(m) for m in out), strict=True)
    mirrored = np.mean(np.array(signs) != original)
    assert 0.35 < mirrored < 0.65, mirrored
    quadrants = np.floor((np.array(angles) + np.pi) / (np.pi / 2)).astype(int) % 4
    assert np.bincount(quadrants, minlength=4).min() >= 15


def test_a_kept_pose_is_never_mirrored_and_turns_little() -> None:
    """With ``flips=False`` and ``max_rotation=10`` the chiral triangle keeps its handedness
    and its direction within 10 degrees (plus the slack of measuring on pixels)."""
    size = 96
    mask = _chiral_triangle(size)
    original, angle = _handedness_and_angle(mask)
    batch = torch.from_numpy(mask)[None, None].repeat(60, 1, 1, 1)
    augment = PriorAugment(size, max_rotation=10.0, flips=False, max_crop=0.0)
    out = augment(batch, _gen(5))[:, 0].numpy() > 0
    signs, angles = zip(*(_handedness_and_angle(m) for m in out), strict=True)
    assert all(s == original for s in signs)
    turns = np.degrees(np.angle(np.exp(1j * (np.array(angles) - angle))))
    assert np.abs(turns).max() < 13 and np.abs(turns).max() > 5  # it does turn, a little
    # Both ways, U(-10, 10): turning one way only would tilt every prior mask alike, teaching the
    # discriminator a pose the anatomy does not have.
    assert turns.min() < -5 and turns.max() > 5


def test_the_four_crops_are_drawn_independently_and_move_a_kept_pose() -> None:
    """Each side is cropped by its own U(0, max_crop): the crop box's centre moves, so a kept-pose
    prior's masks shift by a few pixels either way. Equal crops on opposite sides would only
    zoom about the centre, and the prior would place the organ at one spot, to the pixel."""
    size = 64
    c = (size - 1) / 2
    batch = torch.from_numpy(_disc(size, (c, c), 12))[None, None].repeat(64, 1, 1, 1)
    augment = PriorAugment(size, max_rotation=0.0, flips=False, max_crop=0.1)
    out = augment(batch, _gen(3))[:, 0].numpy()
    shift = np.array([ndi.center_of_mass(m) for m in out]) - c  # rows (y), columns (x)
    assert (shift.min(0) < -1).all() and (shift.max(0) > 1).all(), shift


def test_sample_prior_batch() -> None:
    bank = torch.from_numpy(np.stack([_disc(40, (20, 20), r) for r in (3, 6, 9, 12, 15)])[:, None])
    aug = PriorAugment(24)
    out = sample_prior_batch(bank, 7, aug, _gen(6))
    assert out.shape == (7, 1, 24, 24) and out.dtype == torch.float32
    assert torch.equal(out, sample_prior_batch(bank, 7, aug, _gen(6)))
    # Draws with replacement from the whole bank: many sizes appear over a big batch.
    areas = sample_prior_batch(bank, 64, PriorAugment(40, max_crop=0.0), _gen(7)).sum((1, 2, 3))
    assert len(areas.unique()) >= 4
    with pytest.raises(ValueError, match="non-empty bank"):
        sample_prior_batch(bank[:0], 2, aug, _gen(0))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_crop"):
        PriorAugment(32, max_crop=0.6)
    with pytest.raises(ValueError, match="max_rotation"):
        PriorAugment(32, max_rotation=200)
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        PriorAugment(32)(torch.zeros(2, 32, 32), _gen(0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(blobs: torch.Tensor) -> None:
    aug = PriorAugment(32)
    on_gpu = aug(blobs.cuda(), _gen(8))
    assert on_gpu.is_cuda
    assert (on_gpu.cpu() != aug(blobs, _gen(8))).float().mean() < 0.01
