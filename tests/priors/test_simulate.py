"""Tests for the simulated shape priors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.morphology import convex_hull_image

from localdisc.data.synthetic import _circle, vessel_tree
from localdisc.priors import SIMULATORS, simulate_mask, simulate_masks
from localdisc.priors.simulate import _eye

EIGHT = np.ones((3, 3), bool)  # one-pixel vessels are diagonal chains: 8-connectivity


def _components(mask: np.ndarray, structure: np.ndarray | None = None) -> np.ndarray:
    """Sizes of the connected components, largest first."""
    labels, n = ndi.label(mask, structure)
    return np.sort(np.bincount(labels.ravel(), minlength=n + 1)[1:])[::-1]


def _fov(size: int, seed: int) -> np.ndarray:
    eye = _eye(size, seed)
    return _circle(size, eye.centre, eye.fov_radius)


@pytest.mark.parametrize("name", SIMULATORS)
def test_every_simulator_is_a_reproducible_nonempty_bool_mask(name: str) -> None:
    a, b, c = simulate_mask(name, 64, 3), simulate_mask(name, 64, 3), simulate_mask(name, 64, 4)
    assert a.dtype == bool and a.shape == (64, 64)
    assert a.any() and not a.all()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("name", SIMULATORS)
def test_tiny_sizes_still_give_a_mask(name: str) -> None:
    assert simulate_mask(name, 8, 0).any()


def test_unknown_simulator_and_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="known: vessels, lungs, heart, optic_disc, fovea"):
        simulate_mask("kidney", 64, 0)
    with pytest.raises(ValueError, match="seed"):
        simulate_mask("heart", 64, -1)
    with pytest.raises(ValueError, match="size"):
        simulate_mask("heart", 4, 0)


def test_vessels_are_one_tree_from_the_disc_inside_the_fov() -> None:
    size = 128
    for seed in range(3):
        mask = simulate_mask("vessels", size, seed)
        eye = _eye(size, seed)
        np.testing.assert_array_equal(mask, vessel_tree(size, seed)[0])
        # Measured: always a single 8-connected tree (100% of the pixels in 20 seeds).
        sizes = _components(mask, EIGHT)
        assert sizes[0] >= 0.98 * mask.sum(), sizes[:5]
        # The tree leaves the disc: its largest component reaches the disc centre.
        labels, _ = ndi.label(mask, EIGHT)
        biggest = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
        assert (biggest & _circle(size, eye.disc, 0.5 * eye.disc_radius)).any()
        assert not (mask & ~_fov(size, seed)).any()
        # A retina, not a scribble: DRIVE has ~12.6% of the FOV as vessel.
        assert 0.08 < mask[_fov(size, seed)].mean() < 0.2


def test_vessels_taper_away_from_the_disc() -> None:
    size = 128
    yy, xx = np.mgrid[:size, :size]
    for seed in range(3):
        mask, calibre = vessel_tree(size, seed)
        eye = _eye(size, seed)
        dist = np.hypot(xx - eye.disc[0], yy - eye.disc[1]) / eye.disc_radius
        near = calibre[mask & (dist < 1.5)].mean()
        far = calibre[mask & (dist > 4.0)].mean()
        # Measured at 128 px over 20 seeds: near / far is 1.46-2.0.
        assert near > 1.3 * far, (seed, near, far)


def test_lungs_are_two_large_fields_left_and_right() -> None:
    size = 96
    for seed in range(4):
        mask = simulate_mask("lungs", size, seed)
        labels, n = ndi.label(mask)
        assert n == 2
        xs = sorted(np.nonzero(labels == k)[1].mean() / size for k in (1, 2))
        assert xs[0] < 0.4 and xs[1] > 0.6
        for k in (1, 2):
            assert (labels == k).mean() > 0.1  # each lung >10% of the image (measured 14-20%)
        assert 0.2 < mask.mean() < 0.45


def test_heart_is_one_blob_central_and_low() -> None:
    size = 96
    for seed in range(4):
        mask = simulate_mask("heart", size, seed)
        assert len(_components(mask)) == 1
        ys, xs = np.nonzero(mask)
        assert 0.4 < xs.mean() / size < 0.7  # apex towards the image right
        assert 0.5 < ys.mean() / size < 0.72
        assert 0.04 < mask.mean() < 0.15


def _convex_and_single(mask: np.ndarray) -> None:
    assert len(_components(mask, EIGHT)) == 1
    hull = convex_hull_image(mask, offset_coordinates=False)
    assert mask.sum() >= 0.97 * hull.sum()


def test_optic_disc_is_a_tall_ellipse_on_the_nasal_side() -> None:
    size, sides = 96, set()
    for seed in range(12):
        mask = simulate_mask("optic_disc", size, seed)
        eye = _eye(size, seed)
        _convex_and_single(mask)
        assert not (mask & ~_fov(size, seed)).any()
        ys, xs = np.nonzero(mask)
        # Slightly taller than wide.
        assert ys.max() - ys.min() >= xs.max() - xs.min()
        # Area of a disc of the eye's disc radius, within the jitter.
        assert 0.6 < mask.sum() / (np.pi * eye.disc_radius**2) < 1.6
        # DRIVE's discs sit at 0.66-0.77 FOV radii from the centre (median 0.71).
        offset = (xs.mean() - eye.centre[0]) / eye.fov_radius
        assert 0.45 < abs(offset) < 0.8
        assert abs(ys.mean() - eye.centre[1]) / eye.fov_radius < 0.25
        sides.add(np.sign(offset))
    assert sides == {-1.0, 1.0}  # both eyes


def test_fovea_sits_temporal_of_the_disc() -> None:
    size = 96
    for seed in range(12):
        mask = simulate_mask("fovea", size, seed)
        disc = simulate_mask("optic_disc", size, seed)
        eye = _eye(size, seed)
        _convex_and_single(mask)
        assert not (mask & ~_fov(size, seed)).any()
        ys, xs = np.nonzero(mask)
        dys, dxs = np.nonzero(disc)
        # ~2.5 disc diameters from the disc, on the side of the image centre.
        dist = np.hypot(xs.mean() - dxs.mean(), ys.mean() - dys.mean()) / eye.disc_radius
        assert 4.0 < dist < 6.0
        assert np.sign(xs.mean() - dxs.mean()) == np.sign(eye.centre[0] - dxs.mean())
        radius = np.sqrt(mask.sum() / np.pi) / eye.disc_radius
        assert 0.9 < radius < 1.65


def test_simulate_masks_stacks_seed_plus_i() -> None:
    stack = simulate_masks("heart", 48, 4, seed=10)
    assert stack.shape == (4, 48, 48) and stack.dtype == bool
    for i in range(4):
        np.testing.assert_array_equal(stack[i], simulate_mask("heart", 48, 10 + i))
    np.testing.assert_array_equal(stack, simulate_masks("heart", 48, 4, seed=10))
    assert simulate_masks("fovea", 32, 0).shape == (0, 32, 32)
    with pytest.raises(ValueError, match="count"):
        simulate_masks("heart", 32, -1)
