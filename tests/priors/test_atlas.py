"""Tests for the prior used as an atlas: moved onto an image, its best-matching masks fused, and
its intensity posterior."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from localdisc.data.preprocess import stretch_contrast
from localdisc.priors.atlas import (
    SCALES,
    SHIFTS,
    align_frequency,
    fuse_atlases,
    intensity_posterior,
    move_frequency,
    shift_sideways,
    sideways_offset,
)
from localdisc.priors.simulate import simulate_masks


@pytest.fixture(scope="module")
def lungs() -> np.ndarray:
    return simulate_masks("lungs", 96, 20).mean(0).astype(np.float32)


def _centroid(a: np.ndarray) -> np.ndarray:
    return np.array(ndi.center_of_mass(a))


def test_move_frequency_scales_about_the_centre_and_shifts(lungs: np.ndarray) -> None:
    np.testing.assert_allclose(move_frequency(lungs, (1.0, 1.0, 0.0, 0.0)), lungs, atol=1e-5)
    moved = move_frequency(lungs, (1.0, 1.0, 0.1, -0.05))  # right by 9.6 px, up by 4.8
    np.testing.assert_allclose(_centroid(moved) - _centroid(lungs), [-4.8, 9.6], atol=0.5)
    wider = move_frequency(lungs, (1.2, 1.0, 0.0, 0.0))
    assert wider.sum() == pytest.approx(1.2 * lungs.sum(), rel=0.03)
    assert wider.min() >= 0 and wider.max() <= 1


def test_align_frequency_finds_the_pose_of_a_moved_copy(lungs: np.ndarray) -> None:
    assert align_frequency(lungs, lungs)[1] == (1.0, 1.0, 0.0, 0.0)
    pose = (SCALES[4], SCALES[2], SHIFTS[6], SHIFTS[3])
    target = move_frequency(lungs, pose)
    moved, found = align_frequency(lungs, np.kron(target, np.ones((2, 2))))  # any target size
    np.testing.assert_allclose(found, pose, atol=1e-6)
    assert moved.shape == lungs.shape
    np.testing.assert_allclose(moved, target, atol=1e-5)


def test_an_empty_map_keeps_the_prior_where_it_is(lungs: np.ndarray) -> None:
    # Every pose matches an empty map alike (soft Dice 0): the grid's first pose won, scaled by
    # 0.8 and shifted up-left by 1/8 of the side, and the prior's vote went there (reviewer).
    empty = np.zeros((48, 48), np.float32)
    moved, pose = align_frequency(lungs, empty)
    assert pose == (1.0, 1.0, 0.0, 0.0)
    np.testing.assert_allclose(moved, lungs, atol=1e-5)
    masks = simulate_masks("lungs", 96, 6, seed=1).astype(np.float32)
    fused, pose = fuse_atlases(masks, empty, k=6)
    assert pose == (1.0, 1.0, 0.0, 0.0)
    np.testing.assert_allclose(fused, masks.mean(0), atol=1e-5)


def test_fuse_atlases_picks_the_masks_shaped_like_the_target() -> None:
    masks = simulate_masks("lungs", 96, 40, seed=3).astype(np.float32)
    # The target: one mask, moved off the mean shape's pose.
    pose = (SCALES[4], SCALES[3], SHIFTS[5], SHIFTS[3])
    target = move_frequency(masks[7], pose)

    def dice(a: np.ndarray) -> float:
        return 2 * np.minimum(a, target).sum() / (a.sum() + target.sum())

    alone, found = fuse_atlases(masks, np.kron(target, np.ones((2, 2))), k=1)  # any target size
    assert alone.shape == (96, 96) and alone.dtype == np.float32
    # A mask shaped like it: mask 7 itself where the mean shape's pose lands on the target's (each
    # mask only tries poses near that one), else a close one (0.94 with this simulator's masks).
    assert dice(alone) > 0.93
    np.testing.assert_allclose(found, align_frequency(masks.mean(0), target)[1])
    # More atlases: a softer map, still closer to this shape than the mean shape moved onto it.
    fused = fuse_atlases(masks, target, k=10)[0]
    assert fused.min() >= 0 and fused.max() <= 1
    assert dice(alone) > dice(fused) > dice(align_frequency(masks.mean(0), target)[0]) + 0.01
    # k above the number of masks: all of them, each in its best pose.
    np.testing.assert_array_equal(
        fuse_atlases(masks, target, k=100)[0], fuse_atlases(masks, target, k=40)[0]
    )
    with pytest.raises(ValueError, match="N x S x S"):
        fuse_atlases(masks[0], target)
    with pytest.raises(ValueError, match="k must be"):
        fuse_atlases(masks, target, k=0)


def _square(cy: int, cx: int, r: int, side: int = 64) -> np.ndarray:
    out = np.zeros((side, side), np.float32)
    out[cy - r : cy + r, cx - r : cx + r] = 1
    return out


def test_fuse_atlases_moves_the_k_best_masks_by_the_mean_shapes_pose() -> None:
    # The target lies 6 px (0.094 of the side) right of the masks, beyond the 3 % each mask
    # searches on its own: the masks are moved there by the mean shape's pose, then the best
    # one (k = 1) alone is the fused map, here the target exactly. Reviewer's mutations left
    # every test passing with the local search about the unshifted masks (the fused map 4 px
    # short of the target), or with one mask more than k averaged in.
    masks = np.stack([_square(32, 32, r) for r in (8, 10, 12, 14)])
    target = _square(32, 38, 12)
    fused, pose = fuse_atlases(masks, target, k=1)
    np.testing.assert_allclose(pose, (1.0, 1.0, 6 / 64, 0.0), atol=1e-6)
    np.testing.assert_allclose(fused, target, atol=1e-5)


def test_intensity_posterior_is_bayes_rule_with_the_prior_and_the_fitted_gaussians() -> None:
    # Atlas-guided classification (Van Leemput et al. 1999): P(inside | grey) is the prior
    # (held to [0.02, 0.98]) times the inside Gaussian, normalised, the Gaussians fitted to the
    # grey levels weighted by that posterior (EM's fixed point). Mixing by the previous
    # posterior instead drove a weak contrast to near-certain 0 and 1 (reviewer's mutation).
    organ = _square(32, 32, 16).astype(bool)
    rng = np.random.default_rng(1)
    image = np.clip(np.where(organ, 0.55, 0.45) + rng.normal(0, 0.1, organ.shape), 0, 1)
    image = image.astype(np.float32)
    prior = np.where(organ, 0.7, 0.3).astype(np.float32)
    post = intensity_posterior(image, prior)
    grey = stretch_contrast(image)  # the image's grey level, stretched to its own range
    likelihood = []
    for w in (post, 1 - post):
        mean = (w * grey).sum() / w.sum()
        var = (w * (grey - mean) ** 2).sum() / w.sum()
        likelihood.append(np.exp(-((grey - mean) ** 2) / (2 * var)) / np.sqrt(var))
    inside, outside = prior * likelihood[0], (1 - prior) * likelihood[1]
    np.testing.assert_allclose(post, inside / (inside + outside), atol=0.02)
    # A featureless image leaves the prior as it is, held to [0.02, 0.98] (the image can
    # overrule it anywhere, but nothing here does): not [0.2, 0.8].
    noise = np.random.default_rng(2).uniform(0.4, 0.6, organ.shape).astype(np.float32)
    post = intensity_posterior(noise, organ.astype(np.float32))
    assert abs(post[organ].mean() - 0.98) < 0.005 and abs(post[~organ].mean() - 0.02) < 0.005
    # Colour images: the channels averaged, so an organ that differs in green alone is found.
    rgb = np.stack(
        [np.full(organ.shape, 0.5), np.where(organ, 0.8, 0.2), np.full(organ.shape, 0.5)], -1
    )
    rgb = np.clip(rgb + rng.normal(0, 0.02, rgb.shape), 0, 1).astype(np.float32)
    post = intensity_posterior(rgb, np.where(organ, 0.7, 0.5).astype(np.float32))
    assert post[organ].min() > 0.9 and post[~organ].max() < 0.1


def test_intensity_posterior_follows_the_image_where_the_prior_is_off() -> None:
    yy, xx = np.mgrid[:64, :64]
    organ = (yy - 32) ** 2 + (xx - 30) ** 2 < 14**2
    rng = np.random.default_rng(0)
    image = np.where(organ, 0.3, 0.7) + rng.normal(0, 0.05, organ.shape)
    prior = ndi.gaussian_filter(np.roll(organ, 6, axis=1).astype(np.float32), 3)

    def dice(mask: np.ndarray) -> float:
        return 2 * (mask & organ).sum() / (mask.sum() + organ.sum())

    post = intensity_posterior(np.clip(image, 0, 1)[..., None], prior)
    assert post.dtype == np.float32 and post.shape == organ.shape
    assert dice(prior > 0.5) < 0.85 < 0.97 < dice(post > 0.5)
    with pytest.raises(ValueError, match="prior of shape"):
        intensity_posterior(image, prior[:10])


def test_intensity_posterior_overrules_a_prior_of_exactly_0_or_1() -> None:
    # The prior is held to [0.02, 0.98]: a fused atlas of 0 or 1 (every chosen mask agreeing)
    # would otherwise fix the posterior there, whatever the image says.
    yy, xx = np.mgrid[:32, :32]
    rng = np.random.default_rng(0)
    image = np.where(xx >= 16, 0.8, 0.2) + rng.normal(0, 0.03, (32, 32))  # the organ: right
    prior = (xx >= 12).astype(np.float32)  # sure of 4 dark columns outside the organ too
    post = intensity_posterior(np.clip(image, 0, 1).astype(np.float32), prior)
    assert post[:, 12:16].max() < 0.5 < post[:, 16:].min()


def test_shift_sideways_moves_right_and_repeats_the_edge() -> None:
    row = np.arange(5.0)[None]
    np.testing.assert_array_equal(shift_sideways(row, 2), [[0, 0, 0, 1, 2]])
    np.testing.assert_array_equal(shift_sideways(row, -1), [[1, 2, 3, 4, 4]])
    assert shift_sideways(row, 0) is row


def _dark_organs(n: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Radiograph-like images (a dark organ, noise) at 256 px and their exact masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:256, :256]
    images, masks = [], []
    for _ in range(n):
        cy, cx, ry, rx = rng.uniform([110, 100, 50, 30], [150, 160, 80, 50])
        organ = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        image = np.where(organ, 0.35, 0.65) + rng.normal(0, 0.08, organ.shape)
        images.append(np.clip(image, 0, 1).astype(np.float32)[..., None])
        masks.append(organ)
    return images, masks


def test_sideways_offset_finds_the_shift_of_a_whole_run() -> None:
    images, masks = _dark_organs(6)
    # LD's maps: soft, each moved 8 px (4 at 128, 1/32 of the width) to the left of its organ.
    maps = [ndi.gaussian_filter(np.roll(m, -8, axis=1).astype(np.float32), 3) for m in masks]
    assert sideways_offset(images, maps) == 1 / 32
    assert sideways_offset(images, [shift_sideways(m, 8) for m in maps]) == 0.0
    # Beyond the search (6 px at 128): the best shift is its end, so nothing is moved.
    far = [ndi.gaussian_filter(np.roll(m, -24, axis=1).astype(np.float32), 3) for m in masks]
    assert sideways_offset(images, far) == 0.0
    with pytest.raises(ValueError, match="as many maps as images"):
        sideways_offset(images, maps[:2])
