"""Tests for localdisc.data.preprocess: FOV, ROI crop, resizing, channels, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import IMAGENET_MEAN, IMAGENET_STD
from localdisc.data.preprocess import (
    MODALITY_CHANNELS,
    as_raw_image,
    background_level,
    fov_from_image,
    largest_component,
    normalize,
    raw_intensities,
    resize_image,
    resize_inside,
    resize_mask,
    roi_box,
    roi_crop,
    stretch_contrast,
    to_modality_channels,
)
from localdisc.errors import InputError


def fundus_like(h: int = 80, w: int = 100, radius: float = 30.0) -> np.ndarray:
    """A bright disc (the fundus) centred in a black frame, with a dark hole and a speck."""
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= radius**2
    image = np.zeros((h, w, 3), dtype=np.float32)
    image[disc] = (0.6, 0.3, 0.1)
    image[int(h / 2) - 2 : int(h / 2) + 2, int(w / 2) - 2 : int(w / 2) + 2] = 0.0  # dark lesion
    image[1, 1] = 0.9  # isolated bright speck outside the disc
    return image


def test_fov_is_largest_component_with_holes_filled() -> None:
    image = fundus_like()
    fov = fov_from_image(image)
    assert fov.dtype == bool and fov.shape == (80, 100)
    assert not fov[1, 1], "a speck outside the disc is not the FOV"
    assert fov[40, 50], "a dark lesion inside the disc belongs to the FOV"
    yy, xx = np.mgrid[:80, :100]
    disc = (yy - 40) ** 2 + (xx - 50) ** 2 <= 30**2
    assert np.array_equal(fov, disc)


def test_fov_threshold_is_any_channel_above_20_of_255() -> None:
    image = np.zeros((10, 10, 3), dtype=np.float32)
    image[2:8, 2:8, 2] = 21 / 255  # only the blue channel passes
    image[0, :, :] = 19 / 255  # below the threshold in every channel
    fov = fov_from_image(image)
    # The square but its 4 corner pixels, which the opening against speckle rounds off.
    assert fov[3:7, 2:8].all() and fov[2:8, 3:7].all() and fov.sum() == 32


def test_fov_ignores_a_noisy_grey_surround() -> None:
    """STARE's scanned photographs sit on grey film, not black: the threshold follows it."""
    rng = np.random.default_rng(0)
    image = fundus_like()
    yy, xx = np.mgrid[:80, :100]
    disc = (yy - 40) ** 2 + (xx - 50) ** 2 <= 30**2
    film = np.clip(0.09 + 0.01 * rng.standard_normal((80, 100, 3)), 0, 1).astype(np.float32)
    image[~disc] = film[~disc]
    assert background_level(image) == pytest.approx(0.09, abs=0.01)
    assert np.array_equal(fov_from_image(image), disc)
    # The fixed paper threshold would take the whole film into the FOV.
    assert fov_from_image(image, threshold=20 / 255).mean() > 0.95
    assert background_level(fundus_like()) < 1 / 255


@pytest.mark.parametrize("shape", [(120, 160), (600, 640)])  # opened in full / reduced
def test_fov_and_roi_ignore_bright_speckle_touching_the_disc(shape: tuple[int, int]) -> None:
    """About 4 % of KaggleDR photographs have bright speckle in the black surround: 8-connected,
    it touched the disc diagonally and the largest component took in most of the surround."""
    h, w = shape
    radius = 0.4 * h
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= radius**2
    image = np.zeros((h, w, 3), dtype=np.float32)
    image[disc] = (0.6, 0.3, 0.1)
    salt = ~disc & ((yy + xx) % 2 == 0)  # every pixel touches its neighbours diagonally
    image[salt] = 0.5
    # The disc, give or take a fringe of the speckle next to its edge, not the surround.
    fov = fov_from_image(image)
    inner = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= (radius - 2) ** 2
    outer = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= (radius + 5) ** 2
    assert fov[inner].all() and not fov[~outer].any()
    rows, cols = np.flatnonzero(disc.any(axis=1)), np.flatnonzero(disc.any(axis=0))
    y0, y1, x0, x1 = roi_box(image, margin=4)
    assert abs(y0 - (rows[0] - 4)) <= 5 and abs(y1 - (rows[-1] + 5)) <= 5
    assert abs(x0 - (cols[0] - 4)) <= 5 and abs(x1 - (cols[-1] + 5)) <= 5
    # A bright image with no surround stays whole: outside the image is not background there.
    assert fov_from_image(np.full((h, w, 3), 0.5, dtype=np.float32)).all()
    # Thin structures alone are still a foreground: the opening never empties it.
    line = np.zeros((h, w, 3), dtype=np.float32)
    line[h // 2, 10:-10] = 0.8
    assert np.array_equal(fov_from_image(line), line[:, :, 0] > 0)


@pytest.mark.parametrize(("h", "w", "radius"), [(80, 100, 30), (600, 640, 250)])
def test_the_fov_of_a_plain_disc_is_the_disc(h: int, w: int, radius: int) -> None:
    # Also where the opening works on a reduced mask (600 px): the disc's rim, which the
    # reduced opening rounds off, comes back at full resolution. Without the reduced core grown
    # by one block, an 800 x 800 photograph's FOV lost 741 rim pixels (reviewer's mutation).
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2 - 0.3) ** 2 + (xx - w / 2 + 0.2) ** 2 <= radius**2
    image = np.zeros((h, w, 3), np.float32)
    image[disc] = (0.6, 0.3, 0.1)
    np.testing.assert_array_equal(fov_from_image(image), disc)


def test_a_tinted_surround_is_measured_in_its_brightest_channel() -> None:
    # background_level reads the brightest channel, as the FOV rule does (a pixel is foreground
    # when any channel passes): a surround of (0.15, 0.02, 0.02) lies at 0.15. Its channel mean,
    # 0.06, set a FOV threshold below the red film, and the FOV took in most of it.
    yy, xx = np.mgrid[:80, :100]
    disc = (yy - 40) ** 2 + (xx - 50) ** 2 <= 30**2
    image = np.zeros((80, 100, 3), np.float32)
    image[disc] = (0.6, 0.3, 0.1)
    image[~disc] = (0.15, 0.02, 0.02)
    noise = np.random.default_rng(0).normal(0, 0.01, image.shape)
    image = np.clip(image + noise, 0, 1).astype(np.float32)
    assert background_level(image) == pytest.approx(0.15, abs=1 / 256)
    np.testing.assert_array_equal(fov_from_image(image), disc)


def test_fov_of_xray_and_of_black_image_is_whole_image() -> None:
    image = fundus_like()[:, :, :1]
    assert fov_from_image(image, modality="xray").all()
    assert fov_from_image(np.zeros((6, 7, 3), np.float32)).all()
    with pytest.raises(ValueError, match="modality"):
        fov_from_image(image, modality="ct")


def test_largest_component_keeps_biggest_blob() -> None:
    mask = np.zeros((10, 10), bool)
    mask[0:2, 0:2] = True
    mask[5:9, 5:9] = True
    out = largest_component(mask)
    assert out.sum() == 16 and out[6, 6] and not out[0, 0]
    assert not largest_component(np.zeros((3, 3), bool)).any()


def test_roi_box_margin_and_clipping() -> None:
    image = np.zeros((100, 120, 3), np.float32)
    image[30:60, 40:90] = 0.5
    assert roi_box(image, margin=16) == (14, 76, 24, 106)
    assert roi_box(image, margin=0) == (30, 60, 40, 90)
    image[1, 1] = 1.0  # a speck does not widen the box: only the largest component counts
    assert roi_box(image, margin=16) == (14, 76, 24, 106)
    near_edge = np.zeros((50, 50, 1), np.float32)
    near_edge[2:48, 5:45] = 1.0
    assert roi_box(near_edge, margin=16) == (0, 50, 0, 50)
    assert roi_box(np.zeros((8, 9, 3), np.float32)) == (0, 8, 0, 9)


def test_roi_crop_crops_image_and_masks_alike() -> None:
    image = np.zeros((100, 120, 3), np.float32)
    image[30:60, 40:90] = 0.5
    vessels = np.zeros((100, 120), bool)
    vessels[45, 50] = True
    fov = image[:, :, 0] > 0
    out_image, out_vessels, out_fov = roi_crop(image, vessels, fov)
    assert out_image.shape == (62, 82, 3)
    # The crop is roi_box's for the threshold given: a dim frame below it is left out.
    framed = image.copy()
    framed[5:95, 5:115] = np.maximum(framed[5:95, 5:115], 0.2)
    assert roi_crop(framed, threshold=0.3, margin=0)[0].shape == (30, 50, 3)
    assert roi_crop(framed, margin=0)[0].shape == (90, 110, 3)
    assert out_vessels.shape == out_fov.shape == (62, 82)
    assert out_vessels[45 - 14, 50 - 24] and out_vessels.sum() == 1
    assert out_fov.sum() == fov.sum()
    with pytest.raises(ValueError, match="mask 0"):
        roi_crop(image, np.zeros((5, 5), bool))


def test_resize_area_is_block_mean_for_integer_factors() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((8, 12, 3), dtype=np.float32)
    out = resize_image(image, (4, 3), method="area")
    expected = image.reshape(4, 2, 3, 4, 3).mean(axis=(1, 3))
    assert out.shape == (4, 3, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_resize_area_fractional_factor_preserves_mean_and_constants() -> None:
    rng = np.random.default_rng(1)
    image = rng.random((30, 30), dtype=np.float32)
    out = resize_image(image, 7)
    assert out.shape == (7, 7)
    assert out.mean() == pytest.approx(image.mean(), rel=1e-5)  # a box filter keeps the mean
    flat = np.full((13, 17, 1), 0.25, np.float32)
    np.testing.assert_allclose(resize_image(flat, (5, 29)), 0.25, rtol=1e-6)


def test_resize_bilinear_values() -> None:
    image = np.array([[0.0, 1.0]], np.float32)
    out = resize_image(image, (1, 4), method="bilinear")
    # Pixel centres at 0.25-pixel steps: -0.25 -> clamped 0, 0.25, 0.75, 1.25 -> clamped 1.
    np.testing.assert_allclose(out, [[0.0, 0.25, 0.75, 1.0]], atol=1e-6)
    # Area upscaling interpolates linearly too.
    np.testing.assert_allclose(resize_image(image, (1, 4), method="area"), out)
    with pytest.raises(ValueError, match="method"):
        resize_image(image, 4, method="cubic")  # type: ignore[arg-type]


def test_resize_mask_nearest_keeps_labels() -> None:
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    up = resize_mask(mask, 8)
    assert up.dtype == bool and up.sum() == 16 and up[:4, :4].all()
    down = resize_mask(up, (4, 4))
    assert np.array_equal(down, mask)
    labels = np.arange(12).reshape(3, 4)
    assert set(np.unique(resize_mask(labels, (7, 5)))) <= set(range(12))
    # Output pixel centres land on the input grid: shrinking 9 -> 3 picks the centre pixel of
    # each 3 x 3 block, not its top-left corner (which shifted every mask by a pixel, and here
    # lost every one of a mask's pixels).
    grid = np.arange(81).reshape(9, 9)
    np.testing.assert_array_equal(resize_mask(grid, 3), grid[1::3, 1::3])
    np.testing.assert_array_equal(resize_mask(grid, (3, 9)), grid[1::3])


def test_resize_inside_takes_a_map_from_its_field_of_view_alone() -> None:
    yy, xx = np.mgrid[:40, :48]
    inside = (yy - 20) ** 2 + (xx - 24) ** 2 < 18**2
    shape = (97, 113)
    big = resize_mask(inside, shape)
    ones = resize_inside(inside.astype(np.float32), inside, shape)
    np.testing.assert_allclose(ones[big], 1.0, rtol=1e-6)  # to the edge of the field of view
    assert resize_image(inside.astype(np.float32), shape, "bilinear")[big].min() < 0.6
    # What lies outside does not count; inside, the values stay within their own range.
    ramp = np.where(inside, xx / 47, 5.0).astype(np.float32)
    out = resize_inside(ramp, inside, shape)[big]
    assert out.min() >= ramp[inside].min() - 1e-6 and out.max() <= ramp[inside].max() + 1e-6
    # Where no inside pixel is near: 0. A map without an outside: a plain bilinear resize.
    assert resize_inside(ramp, inside, shape)[0, 0] == 0
    np.testing.assert_allclose(resize_inside(ramp, inside.astype(np.uint8) * 255, shape),
                               resize_inside(ramp, inside, shape))  # fmt: skip
    full = np.ones_like(inside)
    np.testing.assert_allclose(resize_inside(ramp, full, shape),
                               resize_image(ramp, shape, "bilinear"), atol=1e-6)  # fmt: skip


def test_to_modality_channels() -> None:
    rgb = np.zeros((2, 2, 3), np.float32)
    rgb[..., 0] = 1.0
    grey = to_modality_channels(rgb, "xray")
    assert grey.shape == (2, 2, 1)
    np.testing.assert_allclose(grey, 0.299, rtol=1e-6)
    assert to_modality_channels(grey, "fundus").shape == (2, 2, 3)
    assert np.array_equal(to_modality_channels(rgb, "fundus"), rgb)
    rgba = np.ones((2, 2, 4), np.float32)
    assert to_modality_channels(rgba, "fundus").shape == (2, 2, 3)
    assert to_modality_channels(np.ones((3, 3), np.float32), "xray").shape == (3, 3, 1)
    assert MODALITY_CHANNELS == {"fundus": 3, "xray": 1}


def test_stretch_contrast_undoes_a_squeezed_range() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((40, 40, 1)).astype(np.float32)
    washed_out = 0.84 + 0.16 * image  # JSRT's worst: grey levels 213-255 of 255
    out = stretch_contrast(washed_out)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_allclose(out, stretch_contrast(image), atol=1e-5)
    # The extreme 0.5 % on either side is clipped, not stretched over.
    assert (out == 1.0).mean() == pytest.approx(0.005, abs=0.002)
    flat = np.full((4, 4), 0.7, np.float32)
    assert np.array_equal(stretch_contrast(flat), flat)


def test_normalize_fundus_and_xray() -> None:
    rgb = np.stack([np.full((2, 2), m, np.float32) for m in IMAGENET_MEAN], axis=2) + np.asarray(
        IMAGENET_STD, np.float32
    )
    out = normalize(rgb, "fundus")
    np.testing.assert_allclose(out, 1.0, rtol=1e-5)
    xray = np.array([[0.0, 0.5, 1.0]], np.float32)
    np.testing.assert_allclose(normalize(xray, "xray")[..., 0], [[-1.0, 0.0, 1.0]])
    # An RGB X-ray (Kermany's JPEGs) becomes one channel first.
    assert normalize(np.full((3, 3, 3), 0.5, np.float32), "xray").shape == (3, 3, 1)
    with pytest.raises(ValueError, match="modality"):
        normalize(xray, "mri")


def test_resize_area_averages_when_shrinking_by_less_than_half() -> None:
    # DRIVE's 584 x 565 -> 512 shrinks by 1.1-1.14: sampled bilinearly instead, a vessel of a
    # pixel between two sample points would be thinned or skipped (aliasing) rather than averaged.
    out = resize_image(np.array([[0.0, 1.0, 0.0]], np.float32), (1, 2), method="area")
    # Each output pixel covers 1.5 input pixels: 1 of its own and half of the middle one.
    np.testing.assert_allclose(out, [[1 / 3, 1 / 3]], rtol=1e-6)  # bilinear: 0.25, 0.25
    rng = np.random.default_rng(0)
    image = rng.random((73, 70), dtype=np.float32)
    assert resize_image(image, 64).mean() == pytest.approx(image.mean(), rel=1e-5)


def test_float_intensities_slightly_outside_0_1_are_clipped() -> None:
    # A resampling overshoot (1.2, -0.2) is clipped as read_image clips a float file's: else the
    # network saw other intensities from memory than from the same image on disc.
    values = np.array([-0.2, 0.0, 0.5, 1.0, 1.2], np.float32)
    np.testing.assert_array_equal(raw_intensities(values), [0.0, 0.0, 0.5, 1.0, 1.0])
    image = as_raw_image(values[1:].reshape(2, 2) * 1.2 - 0.1)
    assert image.shape == (2, 2, 1) and image.min() == 0.0 and image.max() == 1.0
    # Up to FLOAT_SLACK = 0.5 outside; further out the values are in other units (a 0-2 image,
    # an image in percent of 180) and are refused, not clipped to white.
    np.testing.assert_array_equal(raw_intensities(np.float32([-0.5, 1.5])), [0.0, 1.0])
    for wrong in ([0.0, 1.6], [-0.6, 1.0], [0.0, 0.9, 1.8]):
        with pytest.raises(InputError, match="not intensities in"):
            raw_intensities(np.float32(wrong))


def test_fov_opening_radius_follows_the_short_side() -> None:
    # 1 % of the short side (1 px at 100 x 500): a 5-px-wide part of the foreground is kept. A
    # radius from the long side (5 px) would cut it off a wide photograph's FOV.
    h, w = 100, 500
    yy, xx = np.mgrid[:h, :w]
    image = np.zeros((h, w, 3), np.float32)
    image[(yy - 50) ** 2 + (xx - 250) ** 2 <= 40**2] = 0.6
    image[48:53, 100:215] = 0.6  # a bar 5 px wide joined to the disc
    fov = fov_from_image(image)
    assert fov[48:53, 101:215].all()  # but the bar end's two corner pixels, rounded off
    assert fov.sum() == (image[..., 0] > 0).sum() - 2


def test_largest_component_joins_pixels_touching_at_a_corner() -> None:
    # 8-connected: a FOV whose two parts meet diagonally stays whole (4-connected, the smaller
    # part would be cut off the field of view).
    mask = np.zeros((6, 6), bool)
    mask[0:2, 0:2] = True
    mask[2:5, 2:5] = True
    assert np.array_equal(largest_component(mask), mask)


@pytest.mark.parametrize("level", [(5 + 0.9) / 256, (25 + 0.9) / 256, (51 + 0.1) / 256])
def test_background_level_is_within_half_a_histogram_bin_of_the_surround(level: float) -> None:
    # The level is the centre of the commonest bin, not its lower edge (which is up to a whole
    # bin, 1/256, too dark: a FOV threshold half a grey level too low on a grey surround).
    image = np.full((40, 40, 3), level, np.float32)
    image[10:30, 10:30] = 0.6
    assert abs(background_level(image) - level) <= 0.5 / 256


def test_a_surround_brighter_than_a_quarter_is_no_background() -> None:
    # Above 0.25 the dark part is FOV content (an image with no dark surround): taking it for
    # film would raise the FOV threshold and cut the dark half of the fundus out of the FOV.
    image = np.full((40, 40, 3), 0.3, np.float32)
    image[10:30, 10:30] = 0.9
    assert background_level(image) == 0.0
    image[image == 0.3] = 0.2  # a grey film (STARE's are 0.05-0.15) is still one
    assert background_level(image) == pytest.approx(0.2, abs=0.5 / 256)


def test_roi_box_default_margin_is_16_pixels() -> None:
    # METHOD.md section 2: the ROI is the foreground's box grown by 16 px; another default would
    # crop every fundus image of the benchmarks differently from the paper.
    image = np.zeros((100, 120, 3), np.float32)
    image[30:60, 40:90] = 0.5
    assert roi_box(image) == (14, 76, 24, 106)
    assert roi_crop(image)[0].shape == (62, 82, 3)


def test_alpha_is_the_last_channel_and_is_dropped() -> None:
    # RGBA and grey + alpha (PNG's LA) lose their last channel: dropping the first would turn a
    # red RGBA image into a blue-green one, and leave a grey + alpha image two channels.
    rgba = np.zeros((2, 2, 4), np.float32)
    rgba[..., 0] = rgba[..., 3] = 1.0
    np.testing.assert_allclose(to_modality_channels(rgba, "xray"), 0.299, rtol=1e-6)
    np.testing.assert_array_equal(to_modality_channels(rgba, "fundus"), rgba[..., :3])
    grey_alpha = np.stack([np.full((2, 3), 0.4), np.ones((2, 3))], axis=2).astype(np.float32)
    out = as_raw_image(grey_alpha)
    assert out.shape == (2, 3, 1)
    np.testing.assert_allclose(out, 0.4, rtol=1e-6)


def test_an_ambiguous_layout_is_channels_first_for_tensors_and_last_for_arrays() -> None:
    # 3 x 5 x 3 could be C x H x W or H x W x C: torchvision's tensors are channels-first and
    # Pillow's arrays channels-last, so a tensor of width 3 must not be read as 3 rows.
    tensor = torch.zeros(3, 5, 3)
    tensor[0] = 1.0  # the red channel
    out = as_raw_image(tensor)
    assert out.shape == (5, 3, 3)
    assert (out[..., 0] == 1).all() and (out[..., 1:] == 0).all()
    assert as_raw_image(tensor.numpy()).shape == (3, 5, 3)
