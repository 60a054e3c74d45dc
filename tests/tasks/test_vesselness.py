"""Classical vesselness baselines: tiny synthetic images, plus one check on DRIVE if present."""

from __future__ import annotations

import re

import numpy as np
import pytest

from helpers import shared
from localdisc.data.synthetic import synthetic_fundus
from localdisc.eval.metrics import auc_roc
from localdisc.tasks.vesselness import (
    FILTERS,
    check_method,
    eroded_fov,
    line_detector,
    mean_rank,
    paper_dice,
    prior_fraction,
    remove_specks,
    segment_vessels,
    threshold_fraction,
    threshold_otsu_fov,
    vesselness,
    vesselness_pseudo_label,
)

SIZE = 96


def lines_on_disc() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A bright disc (the FOV) on black, crossed by dark lines in the green channel.

    Returns the RGB image, the FOV and the line pixels.
    """
    yy, xx = np.mgrid[:SIZE, :SIZE]
    fov = np.hypot(yy - SIZE / 2 + 0.5, xx - SIZE / 2 + 0.5) < 44
    lines = np.zeros((SIZE, SIZE), dtype=bool)
    lines[39:42, 18:78] = True  # horizontal, 3 px wide
    lines[20:76, 60:62] = True  # vertical, 2 px wide
    lines &= fov
    green = np.where(fov, 0.8, 0.0)
    green[lines] = 0.4
    red = np.where(fov, 0.9, 0.0)  # no vessel contrast in red: only green must be used
    image = np.stack([red, green, 0.5 * green], axis=-1).astype(np.float32)
    return image, fov, lines


@pytest.mark.parametrize("method", FILTERS)
def test_vesselness_peaks_on_dark_lines_and_is_zero_off_the_eroded_fov(method):
    image, fov, lines = lines_on_disc()
    score = vesselness(image, fov, method=method)
    assert score.dtype == np.float32 and score.shape == (SIZE, SIZE)
    assert score.min() >= 0 and score.max() == pytest.approx(1.0)
    region = eroded_fov(fov, 8)
    assert region.sum() < fov.sum() and not score[~region].any()
    inside = lines & region
    background = region & ~lines
    assert auc_roc(score, lines, region) > 0.97
    if method != "line":  # Hessian filters are ~0 off a ridge; the line detector is linear
        assert score[inside].mean() > 5 * score[background].mean()
    peak = np.unravel_index(np.argmax(score), score.shape)
    # The maximum lies on a line (within 2 pixels, city-block).
    assert np.abs(np.array(np.nonzero(lines)) - np.array(peak)[:, None]).sum(0).min() <= 2
    # Green channel of RGB == the single channel of a grey image holding it.
    grey = vesselness(image[..., 1:2], fov, method=method)
    np.testing.assert_allclose(score, grey, atol=1e-6)


def test_line_detector_sees_every_orientation_and_ignores_the_outside_of_the_fov():
    yy, xx = np.mgrid[:SIZE, :SIZE]
    horizontal, diagonal = np.zeros((SIZE, SIZE), bool), np.abs(yy - xx - 20) <= 1
    horizontal[60:63, 10:86] = True
    diagonal &= (xx > 10) & (xx < 60)
    grey = np.where(horizontal | diagonal, 0.4, 0.8)
    score = line_detector(grey)
    assert score.shape == grey.shape and abs(score.mean()) < 1e-9  # standardised responses
    background = ~(horizontal | diagonal)
    on_h, on_d, off = score[horizontal].mean(), score[diagonal].mean(), score[background].mean()
    assert min(on_h, on_d) > off + 1.5 and abs(on_h - on_d) < 0.25 * on_h
    # Outside the FOV is replaced by the FOV's mean: a black or a white surround gives the same.
    fov = np.hypot(yy - SIZE / 2, xx - SIZE / 2) < 44
    black, white = np.where(fov, grey, 0.0), np.where(fov, grey, 1.0)
    np.testing.assert_allclose(line_detector(black, fov), line_detector(white, fov), atol=1e-9)
    # Without the FOV the black surround dominates the standardisation: the lines fade.
    masked, unmasked = line_detector(black, fov), line_detector(black)
    inside, off = horizontal & fov, background & fov

    def contrast(score: np.ndarray) -> float:
        return score[inside].mean() - score[off].mean()

    assert contrast(masked) > 1.5 * contrast(unmasked)
    assert not line_detector(np.full((SIZE, SIZE), 0.5)).any()
    for bad in ({"window": 14}, {"window": 0}, {"orientations": 0}):
        with pytest.raises(ValueError, match="window|orientations"):
            line_detector(grey, **bad)
    with pytest.raises(ValueError, match="fov is empty"):
        line_detector(grey, np.zeros_like(fov))


def test_filters_joined_by_plus_give_their_mean_rank():
    image, fov, lines = lines_on_disc()
    sato, line = (vesselness(image, fov, method=m) for m in ("sato", "line"))
    both = vesselness(image, fov, method="sato+line")
    np.testing.assert_allclose(both, mean_rank([sato, line], fov))
    assert auc_roc(both, lines, eroded_fov(fov, 8)) > 0.97
    _, mask = segment_vessels(image, fov, method="sato+line", threshold=0.1)
    np.testing.assert_array_equal(mask, threshold_fraction(both, eroded_fov(fov, 8), 0.1))


def test_filters_joined_by_plus_take_no_fov_as_the_whole_image():
    image, _, lines = lines_on_disc()
    whole = np.ones((SIZE, SIZE), bool)
    for method in ("sato", "line", "sato+line"):  # a joined one raised a RuntimeError
        np.testing.assert_array_equal(
            vesselness(image, None, method=method), vesselness(image, whole, method=method)
        )
    _, mask = segment_vessels(image, None, method="sato+line", threshold=0.1)
    assert mask.any() and not mask[~eroded_fov(whole, 8)].any()


def test_vesselness_without_erosion_and_flat_images():
    image, fov, _ = lines_on_disc()
    assert vesselness(image, fov, erode_fov=0)[fov & ~eroded_fov(fov, 8)].any()
    flat = np.full((SIZE, SIZE, 1), 0.5, np.float32)
    assert not vesselness(flat, np.ones((SIZE, SIZE), bool)).any()


def test_bad_arguments_are_refused():
    image, fov, _ = lines_on_disc()
    with pytest.raises(ValueError, match="sato, frangi"):
        vesselness(image, fov, method="hessian")
    with pytest.raises(ValueError, match="sato, frangi"):
        segment_vessels(image, fov, method="meijering")
    with pytest.raises(ValueError, match="joined by"):
        vesselness(image, fov, method="sato+hessian")
    small = np.zeros_like(fov)
    small[40:50, 40:50] = True
    with pytest.raises(ValueError, match="empty after eroding"):
        vesselness(image, small, erode_fov=8)
    with pytest.raises(ValueError, match="fov"):
        vesselness(image, fov[:-1])
    with pytest.raises(ValueError, match="sigmas"):
        vesselness(image, fov, sigmas=())
    for bad in ("mean", 0, 1.0, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match="threshold"):
            segment_vessels(image, fov, threshold=bad)
    with pytest.raises(ValueError, match="fraction"):
        threshold_fraction(np.zeros((4, 4)), None, 1.5)


@pytest.mark.parametrize("fraction", [0.01, 0.12, 0.5, 0.9])
def test_threshold_fraction_keeps_the_expected_count(fraction):
    rng = np.random.default_rng(0)
    score = rng.random((40, 50))  # no ties
    fov = np.zeros_like(score, dtype=bool)
    fov[5:35, 5:45] = True
    mask = threshold_fraction(score, fov, fraction)
    assert mask.sum() == round(fraction * fov.sum())
    assert not mask[~fov].any()
    assert score[mask].min() > score[fov & ~mask].max()


def test_threshold_fraction_ties_and_zeros():
    score = np.repeat(np.array([0.0, 0.0, 0.2, 0.5, 0.5, 1.0]), 10).reshape(6, 10)
    # k = 15: the cut falls on the 0.5 level; the 10 pixels at 1.0 and all 20 tied at 0.5 stay.
    assert threshold_fraction(score, None, 0.25).sum() == 30
    # k = 50 reaches into the zeros, which are never kept.
    assert threshold_fraction(score, None, 50 / 60).sum() == 40
    assert not threshold_fraction(score, None, 0.0).any()


def test_otsu_gives_a_non_trivial_mask_on_the_lines():
    image, fov, lines = lines_on_disc()
    score = vesselness(image, fov)
    region = eroded_fov(fov, 8)
    mask = threshold_otsu_fov(score, region)
    assert 0 < mask.sum() < region.sum() and not mask[~region].any()
    assert (mask & lines).sum() > 0.5 * mask.sum()
    assert not threshold_otsu_fov(np.zeros((8, 8)), None).any()
    _, seg = segment_vessels(image, fov, threshold="otsu")
    np.testing.assert_array_equal(seg, mask)


def test_segment_vessels_fraction_counts_inside_the_eroded_fov():
    image, fov, _ = lines_on_disc()
    score, mask = segment_vessels(image, fov, method="sato", threshold=0.1)
    region = eroded_fov(fov, 8)
    assert mask.sum() == round(0.1 * region.sum())
    assert score.dtype == np.float32 and mask.dtype == bool


def test_pseudo_label_is_sure_at_both_ends_and_silent_between():
    rng = np.random.default_rng(0)
    score = rng.random((60, 60)).astype(np.float32)  # no ties
    fov = np.zeros_like(score, dtype=bool)
    fov[10:50, 10:50] = True
    label, weight = vesselness_pseudo_label(score, fov, 0.1, sure=0.5, unsure=3.0, erode_fov=2)
    region = eroded_fov(fov, 2)
    n = region.sum()
    assert label.sum() == round(0.1 * n) and not label[~region].any()
    ranks = np.argsort(np.argsort(-score[region]))  # 0: most vessel-like
    sure = weight[region] == 1
    np.testing.assert_array_equal(sure, (ranks < round(0.05 * n)) | (ranks >= round(0.3 * n)))
    assert (weight[~fov] == 1).all() and (weight[fov & ~region] == 0).all()
    assert label.dtype == weight.dtype == np.float32
    with pytest.raises(ValueError, match="sure"):
        vesselness_pseudo_label(score, fov, 0.1, sure=1.5)


def test_remove_specks_drops_small_pieces_relative_to_the_fov():
    mask = np.zeros((50, 50), dtype=bool)
    mask[5, 5:45] = True  # a vessel: 40 pixels
    mask[20:23, 20:23] = True  # a speck of 9
    mask[30, 30] = mask[31, 31] = True  # 2 pixels, joined diagonally (8-connected)
    fov = np.ones_like(mask)
    np.testing.assert_array_equal(remove_specks(mask, fov, 0.0), mask)
    kept = remove_specks(mask, fov, 5 / 2500)  # pieces under 5 pixels go
    np.testing.assert_array_equal(kept, mask & ~(np.arange(50)[:, None] >= 30))
    kept = remove_specks(mask, fov, 10 / 2500)  # under 10: the vessel alone stays
    assert kept.sum() == 40 and kept[5, 5:45].all()
    half = np.zeros_like(fov)
    half[:25] = True  # the same share of a smaller FOV is fewer pixels: the 9 stay
    assert remove_specks(mask, half, 10 / 2500).sum() == 49
    assert remove_specks(np.zeros_like(mask), fov, 0.1).dtype == bool
    with pytest.raises(ValueError, match="speck_area"):
        remove_specks(mask, fov, 1.0)


def test_specks_of_the_sure_vessels_are_left_silent_and_dropped_from_the_mask():
    image, fov, lines = lines_on_disc()
    rng = np.random.default_rng(0)
    dots = (rng.random(fov.shape) < 0.01) & eroded_fov(fov, 8) & ~lines
    image[dots, 1] = 0.3  # dark single pixels: specks, not vessels
    score = vesselness(image, fov, method="line")
    plain = vesselness_pseudo_label(score, fov, 0.2)
    label, weight = vesselness_pseudo_label(score, fov, 0.2, speck_area=3e-3)
    np.testing.assert_array_equal(label, plain[0])  # the label is the filter's
    silenced = (plain[1] == 1) & (weight == 0)
    assert silenced.any() and not (silenced & lines).any()  # only specks fall silent
    assert (silenced <= (label == 1)).all() and not (weight > plain[1]).any()
    _, mask = segment_vessels(image, fov, method="line", threshold=0.2)
    _, clean = segment_vessels(image, fov, method="line", threshold=0.2, speck_area=3e-3)
    np.testing.assert_array_equal(clean, remove_specks(mask, fov, 3e-3))
    assert clean.sum() < mask.sum() and (mask & lines).sum() == (clean & lines).sum()


def test_prior_fraction_on_known_masks():
    a = np.zeros((10, 10), bool)
    a[:1] = True  # 10 %
    b = np.zeros((20, 10), bool)
    b[:6] = True  # 30 %
    assert prior_fraction(a) == pytest.approx(0.1)
    assert prior_fraction([a, b]) == pytest.approx(0.2)  # images weigh equally
    assert prior_fraction(np.stack([a, a.T])) == pytest.approx(0.1)
    fov = np.zeros((10, 10), bool)
    fov[:2] = True  # half of the FOV is foreground
    assert prior_fraction([a, b], [fov, None]) == pytest.approx(0.4)
    assert prior_fraction(a.astype(np.uint8) * 255) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="FOVs"):
        prior_fraction([a, b], [fov])
    with pytest.raises(ValueError, match="empty"):
        prior_fraction(a, [np.zeros_like(a)])
    with pytest.raises(ValueError, match="at least one"):
        prior_fraction([])


@pytest.mark.parametrize("method", FILTERS)
@pytest.mark.parametrize("seed", [0, 1])
def test_synthetic_fundus_auc(method, seed):
    fundus = synthetic_fundus(size=128, seed=seed)
    # 8 pixels is ~1.5 % of DRIVE's width; at 128 pixels the same share is about 2-4 pixels.
    score = vesselness(fundus.image, fundus.fov, method=method, erode_fov=4)
    assert auc_roc(score, fundus.vessels, fundus.fov) > 0.8


def test_paper_dice_resizes_both_masks():
    mask = np.zeros((60, 40), bool)
    mask[10:30, 5:20] = True
    assert paper_dice(mask, mask, size=32) == 1.0
    assert paper_dice(mask, ~mask, size=32) == 0.0


def test_sato_at_twelve_percent_on_drive():
    from localdisc.data.datasets import load_dataset

    dataset = load_dataset("drive", shared("DRIVE"), "test")
    dices = []
    for sample in dataset[:2]:
        _, mask = segment_vessels(sample.image, sample.fov, method="sato", threshold=0.12)
        dices.append(paper_dice(mask, sample.masks["vessels"]))
    assert np.mean(dices) > 0.65, dices


def test_eroded_fov_erodes_a_whole_image_fov_from_the_image_border():
    # "Outside the image counts as outside the FOV": a disc of radius 3 fits only 3 pixels in.
    inner = np.zeros((20, 20), bool)
    inner[3:-3, 3:-3] = True
    np.testing.assert_array_equal(eroded_fov(np.ones((20, 20), bool), 3), inner)
    half = np.zeros((20, 20), bool)
    half[:, :10] = True  # touches three borders
    expected = np.zeros_like(half)
    expected[3:-3, 3:7] = True
    np.testing.assert_array_equal(eroded_fov(half, 3), expected)


def _reference_line_detector(grey: np.ndarray, fov: np.ndarray, window: int) -> np.ndarray:
    """The multi-scale line detector at 4 orientations (0, 45, 90, 135 degrees), written from the
    docstring / Nguyen et al. 2013 with shifted copies of the mirrored image, not kernels."""
    inverted = 1.0 - grey
    inverted = np.where(fov, inverted, inverted[fov].mean())
    h, w, r = *grey.shape, window // 2
    padded = np.pad(inverted, r, mode="reflect")

    def shifted(dy: int, dx: int) -> np.ndarray:
        return padded[r + dy : r + dy + h, r + dx : r + dx + w]

    def standardised(x: np.ndarray) -> np.ndarray:
        return (x - x[fov].mean()) / x[fov].std()

    square = np.mean([shifted(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)], 0)
    responses = [standardised(inverted)]
    for length in range(1, window + 1, 2):  # L = 1, 3, ..., window
        half = length // 2
        lines = [
            np.mean([shifted(t * dy, t * dx) for t in range(-half, half + 1)], axis=0)
            for dy, dx in ((0, 1), (1, 1), (1, 0), (1, -1))  # the 4 directions over 180 degrees
        ]
        responses.append(standardised(np.max(lines, axis=0) - square))
    assert len(responses) == window // 2 + 2
    return np.mean(responses, axis=0)  # the responses and the standardised I, averaged


def test_line_detector_matches_its_definition():
    # Window 3 at 4 orientations: lines of 1 and 3 pixels, horizontal, vertical and both
    # diagonals (at larger windows the oblique lines of the kernels are shorter than L pixels).
    rng = np.random.default_rng(3)
    grey = rng.random((14, 13))
    yy, xx = np.mgrid[:14, :13]
    for fov in (np.ones_like(grey, bool), np.hypot(yy - 7, xx - 6) < 6):
        np.testing.assert_allclose(
            line_detector(grey, fov, window=3, orientations=4),
            _reference_line_detector(grey, fov, 3),
            atol=1e-9,
        )


def test_line_score_is_the_detector_shifted_to_zero_at_its_minimum_and_scaled_to_one():
    image, fov, _ = lines_on_disc()
    region = eroded_fov(fov, 8)
    raw = line_detector(image, fov)[region]
    score = vesselness(image, fov, method="line")
    expected = (raw - raw.min()) / (raw.max() - raw.min())
    np.testing.assert_allclose(score[region], expected, atol=1e-6)
    # Shifted, not clipped: only the minimum (and pixels tied with it) is 0 in the eroded FOV.
    assert np.count_nonzero(score[region] == 0) < 0.01 * region.sum()


def test_mean_rank_is_a_mean_and_joined_scores_stay_in_zero_one():
    image, fov, _ = lines_on_disc()
    both = vesselness(image, fov, method="sato+line")
    region = eroded_fov(fov, 8)
    assert both.min() >= 0 and 0.9 < both.max() <= 1.0 and (both[region] > 0).all()
    score = np.random.default_rng(0).random(fov.shape)  # no ties
    # The mean of one rank thrice is that rank: its largest is 1 (the top pixel's rank).
    np.testing.assert_allclose(mean_rank([score] * 3, fov), mean_rank([score], fov))
    assert mean_rank([score] * 3, fov).max() == pytest.approx(1.0)


def test_otsu_mask_is_empty_outside_the_fov_however_high_the_score_there():
    score = np.zeros((10, 10))
    score[:, :5] = np.linspace(0, 1, 50).reshape(10, 5)
    score[:, 5:] = 5.0  # outside the FOV: far above any threshold
    fov = np.zeros((10, 10), bool)
    fov[:, :5] = True
    mask = threshold_otsu_fov(score, fov)
    assert mask.any() and not mask[~fov].any()
    np.testing.assert_array_equal(mask[:, :5], threshold_otsu_fov(score[:, :5], None))


def test_remove_specks_keeps_diagonal_vessels_and_pieces_of_exactly_the_limit():
    diagonal = np.zeros((10, 10), bool)
    diagonal[np.arange(8), np.arange(8)] = True  # one 8-connected piece of 8 pixels
    np.testing.assert_array_equal(remove_specks(diagonal, None, 5 / 100), diagonal)
    square = np.zeros((10, 10), bool)
    square[1:4, 1:4] = True  # 9 pixels: not smaller than 9 (9 % of 100), so kept
    np.testing.assert_array_equal(remove_specks(square, None, 0.09), square)
    assert not remove_specks(square, None, 0.1).any()  # smaller than 10: dropped


def test_prior_fraction_counts_only_the_mask_inside_its_fov():
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True  # 50 pixels, only 5 of them inside the FOV
    fov = np.zeros((10, 10), bool)
    fov[:, 5:] = True
    fov[0, 0] = True  # 51 FOV pixels; 1 of them is foreground
    assert prior_fraction(mask, [fov]) == pytest.approx(1 / 51)
    assert prior_fraction(np.ones((10, 10), bool), [fov]) == pytest.approx(1.0)


def test_check_method_refuses_a_join_with_one_unknown_filter_before_any_filtering():
    # A known filter beside an unknown one is refused by the check itself (as a config's check
    # runs it before any work), not only by the unknown filter's own call later.
    check_method("sato+line")
    with pytest.raises(ValueError, match="'sato\\+hessian'"):
        check_method("sato+hessian")


def test_a_scale_of_zero_or_below_is_refused_naming_the_scales():
    image, fov, _ = lines_on_disc()
    for bad in ((0, 1), (1, -2)):  # skimage would filter at sigma 0 without a word
        with pytest.raises(ValueError, match=re.escape(f"positive scales, got {bad!r}")):
            vesselness(image, fov, sigmas=bad)


def test_a_hessian_score_is_the_response_over_its_maximum_inside_the_eroded_fov():
    from skimage.filters import sato

    image, fov, _ = lines_on_disc()
    region = eroded_fov(fov, 8)
    response = sato(image[..., 1].astype(np.float64), sigmas=[1.0, 2.0, 3.0], black_ridges=True)
    score = vesselness(image, fov, method="sato")
    # Divided by the maximum, not by a percentile and clipped: the order above it is kept.
    np.testing.assert_allclose(score[region], response[region] / response[region].max(), atol=1e-6)


def test_mean_rank_gives_tied_scores_one_rank():
    fov = np.ones((12, 12), bool)
    rank = mean_rank([np.zeros(fov.shape)], fov, erode_fov=2)
    region = eroded_fov(fov, 2)
    # A constant score ranks every pixel alike (the average rank), not in reading order.
    assert np.unique(rank[region]).size == 1 and not rank[~region].any()
    np.testing.assert_allclose(rank[region], (region.sum() + 1) / 2 / region.sum())


def test_prior_fraction_is_the_mean_of_the_masks_fractions_not_their_median():
    masks = [np.zeros((10, 10), bool) for _ in range(3)]
    masks[0][:1] = masks[1][:1] = True  # 10 %, 10 %
    masks[2][:4] = True  # 40 %
    assert prior_fraction(masks) == pytest.approx(0.2)


def test_otsu_thresholds_the_scores_of_the_eroded_fov_only():
    # A textured image: the rim's zeros (score is 0 off the eroded FOV) would pull Otsu's cut down.
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:64, :64]
    fov = np.hypot(yy - 31.5, xx - 31.5) < 30
    grey = np.where(fov, 0.6 + 0.2 * rng.random((64, 64)), 0.0)
    score = vesselness(grey, fov, method="sato")
    region = eroded_fov(fov, 8)
    assert not np.array_equal(threshold_otsu_fov(score, region), threshold_otsu_fov(score, fov))
    _, mask = segment_vessels(grey, fov, method="sato", threshold="otsu")
    np.testing.assert_array_equal(mask, threshold_otsu_fov(score, region))
