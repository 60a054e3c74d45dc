"""Segmentation metrics on tiny hand-made arrays whose values are worked out in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from localdisc.eval.metrics import (
    auc_roc,
    best_cluster_dice,
    cldice,
    confusion_counts,
    dice_score,
    segmentation_metrics,
    summarize,
    vessel_metrics,
)

# ----------------------------------------------------------------------------------- helpers


def _bar(thickness: int, cols: tuple[int, int] = (3, 27), shape=(15, 30), centre=7) -> np.ndarray:
    """Horizontal bar of odd ``thickness`` rows centred on row ``centre``, columns [c0, c1)."""
    a = np.zeros(shape, dtype=bool)
    h = thickness // 2
    a[centre - h : centre + h + 1, cols[0] : cols[1]] = True
    return a


def _pairwise_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score_pos > score_neg) + 0.5 P(tie) over all positive/negative pairs (brute force)."""
    pos, neg = scores[labels][:, None], scores[~labels][None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


def _vessel_example() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2 x 10 image; row 0 is the FOV, row 1 (outside) is all false positives at prob 1.

    Inside the FOV: target 1 1 1 0 0 0 0 0 0 0
                    prob   .9 .8 .3 .6 .1 .1 .1 .1 .1 .1  -> pred 1 1 0 1 0 0 0 0 0 0
    so tp = 2, fn = 1, fp = 1, tn = 6.
    """
    prob = np.ones((2, 10))
    prob[0] = [0.9, 0.8, 0.3, 0.6, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    target = np.zeros((2, 10), dtype=bool)
    target[0, :3] = True
    fov = np.zeros((2, 10), dtype=bool)
    fov[0] = True
    return prob, target, fov


# ---------------------------------------------------------------------------------- dice_score


def test_dice_perfect_and_disjoint():
    t = np.array([[1, 0], [0, 1]], dtype=bool)
    assert dice_score(t.astype(float), t) == 1.0
    assert dice_score((~t).astype(float), t) == 0.0


def test_dice_hand_example():
    # P = {(0,0), (1,0)}, T = {(0,0), (0,1)}: tp 1, fp 1, fn 1 -> 2*1 / (2 + 2) = 0.5
    prob = np.array([[0.9, 0.1], [0.8, 0.2]])
    target = np.array([[1, 1], [0, 0]], dtype=bool)
    assert dice_score(prob, target) == pytest.approx(0.5)


def test_dice_threshold_boundary_is_inclusive():
    target = np.array([[True]])
    assert dice_score(np.array([[0.5]]), target) == 1.0  # 0.5 >= 0.5 -> foreground
    assert dice_score(np.array([[0.4999]]), target) == 0.0  # empty prediction, non-empty target
    assert dice_score(np.array([[0.3]]), target, threshold=0.3) == 1.0


def test_dice_empty_conventions():
    empty = np.zeros((3, 3), dtype=bool)
    assert dice_score(np.zeros((3, 3)), empty) == 1.0  # both empty
    assert dice_score(np.full((3, 3), 0.9), empty) == 0.0  # only the prediction is non-empty


# ------------------------------------------------------------------------------------ auc_roc


def test_auc_perfect_reversed_tied():
    labels = np.array([0, 0, 1, 1], dtype=bool)
    assert auc_roc(np.array([0.1, 0.2, 0.8, 0.9]), labels) == 1.0
    assert auc_roc(np.array([0.9, 0.8, 0.2, 0.1]), labels) == 0.0
    assert auc_roc(np.full(4, 0.3), labels) == 0.5  # every pair tied -> 1/2 each


def test_auc_hand_examples():
    labels = np.array([0, 0, 1, 1], dtype=bool)
    # pos 0.35 beats 0.1, loses to 0.4; pos 0.8 beats both -> 3 of 4 pairs
    assert auc_roc(np.array([0.1, 0.4, 0.35, 0.8]), labels) == pytest.approx(0.75)
    # pos 0.5 beats 0.2, ties 0.5 (counts 1/2); pos 0.9 beats both -> 3.5 / 4
    assert auc_roc(np.array([0.2, 0.5, 0.5, 0.9]), labels) == pytest.approx(0.875)


def test_auc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.random((12, 25)) < 0.3
    scores = np.round(np.clip(0.3 * labels + 0.7 * rng.random(labels.shape), 0, 1), 1)  # ties
    expected = _pairwise_auc(scores.ravel(), labels.ravel())
    assert 0.5 < expected < 1.0
    assert auc_roc(scores, labels) == pytest.approx(expected, abs=1e-12)


def test_auc_nan_with_one_class():
    assert math.isnan(auc_roc(np.array([0.1, 0.9]), np.array([True, True])))
    assert math.isnan(auc_roc(np.array([0.1, 0.9]), np.array([False, False])))
    # both classes present overall, but only negatives inside the mask
    mask = np.array([True, False])
    assert math.isnan(auc_roc(np.array([0.1, 0.9]), np.array([False, True]), mask))


def test_auc_ignores_pixels_outside_mask():
    scores = np.array([[0.1, 0.9], [0.8, 0.95]])
    labels = np.array([[0, 1], [0, 0]], dtype=bool)
    # all pixels: positive 0.9 beats 0.1 and 0.8 but loses to 0.95 -> 2/3
    assert auc_roc(scores, labels) == pytest.approx(2 / 3)
    mask = np.array([[True, True], [True, False]])  # drop the 0.95 negative -> 2/2
    assert auc_roc(scores, labels, mask) == 1.0


def test_auc_rejects_nan_and_shape_mismatch():
    with pytest.raises(ValueError, match="NaN"):
        auc_roc(np.array([0.1, np.nan]), np.array([True, False]))
    with pytest.raises(ValueError, match="shapes differ"):
        auc_roc(np.zeros(3), np.zeros(4, dtype=bool))


# --------------------------------------------------------------------------- confusion_counts


def test_confusion_counts():
    pred = np.array([[1, 0, 1], [0, 1, 0]], dtype=bool)
    target = np.array([[1, 1, 0], [0, 1, 0]], dtype=bool)
    # tp (0,0),(1,1); fp (0,2); tn (1,0),(1,2); fn (0,1)
    assert confusion_counts(pred, target) == (2, 1, 2, 1)
    mask = np.array([[1, 1, 0], [1, 1, 0]], dtype=bool)  # drop column 2: the fp and one tn
    assert confusion_counts(pred, target, mask) == (2, 0, 1, 1)
    assert all(type(c) is int for c in confusion_counts(pred, target))


def test_confusion_counts_rejects_probabilities():
    with pytest.raises(ValueError, match="pred_bool"):
        confusion_counts(np.array([0.2, 0.7]), np.array([False, True]))
    # 0/1 integers are accepted as booleans
    assert confusion_counts(np.array([0, 1]), np.array([0, 1])) == (1, 0, 1, 0)


# -------------------------------------------------------------------------------------- cldice


def test_cldice_thin_line_exact():
    line = _bar(1)
    assert cldice(line, line) == 1.0


def test_cldice_thinner_bar_on_same_centreline():
    target, pred = _bar(5), _bar(3)
    # each skeleton lies inside the other mask -> Tprec = Tsens = 1
    assert cldice(pred, target) == 1.0
    # but Dice penalises the missing border rows: 2 * 72 / (72 + 120) = 0.75
    assert dice_score(pred.astype(float), target) == pytest.approx(0.75)


def test_cldice_prefers_thickening_to_breaking():
    target = _bar(3)
    broken = target.copy()
    broken[:, 14:16] = False  # 2-column gap in the middle
    thick = _bar(5)
    # Dice prefers the broken vessel: 2*66/(66+72) = 0.957 vs 2*72/(120+72) = 0.75 ...
    assert dice_score(broken * 1.0, target) > dice_score(thick * 1.0, target)
    # ... clDice prefers the connected one: the target's centreline crosses the gap
    assert cldice(thick, target) == 1.0
    assert cldice(broken, target) < cldice(thick, target)


def test_cldice_empty_conventions():
    empty = np.zeros((5, 5), dtype=bool)
    line = empty.copy()
    line[2, 1:4] = True
    assert cldice(empty, empty) == 1.0
    assert cldice(line, empty) == 0.0
    assert cldice(empty, line) == 0.0
    other = empty.copy()
    other[0, :] = True  # disjoint line: Tprec = Tsens = 0
    assert cldice(other, line) == 0.0


def test_cldice_takes_h_w_1_masks_as_2d():
    # read_image gives grey masks as H x W x 1: skeletonized in 3-D they scored 0.563, not 0.603
    pred = np.zeros((40, 40), dtype=bool)
    pred[5:35, 18:23] = pred[18:23, 5:35] = True
    target = np.zeros((40, 40), dtype=bool)
    target[5:35, 19:22] = target[10:13, 5:35] = True
    assert cldice(pred[..., None], target[..., None]) == cldice(pred, target)
    assert cldice(pred[..., None], target) == cldice(pred, target)


def test_cldice_is_the_harmonic_mean_of_topology_precision_and_sensitivity():
    # Every other case had Tprec = Tsens (or 0 or 1): their plain mean passed every test
    target = np.zeros((20, 20), dtype=bool)
    target[5, 2:18] = True  # 16 px of centreline
    pred = np.zeros((20, 20), dtype=bool)
    pred[5, 2:10] = True  # half of it found
    pred[12, 2:6] = True  # and a vessel that is not there
    tprec, tsens = 8 / 12, 8 / 16
    assert cldice(pred, target) == pytest.approx(2 * tprec * tsens / (tprec + tsens))  # 4/7


def test_cldice_rejects_1d():
    with pytest.raises(ValueError, match="2-D or 3-D"):
        cldice(np.ones(4, dtype=bool), np.ones(4, dtype=bool))


# ------------------------------------------------------------------------------ vessel_metrics


def test_vessel_metrics_hand_counts():
    prob, target, fov = _vessel_example()
    m = vessel_metrics(prob, target, fov)
    assert set(m) == {"f1", "auc", "accuracy", "sensitivity", "specificity", "cldice"}
    assert m["f1"] == pytest.approx(2 / 3)  # 2*2 / (2*2 + 1 + 1)
    assert m["accuracy"] == pytest.approx(0.8)  # (2 + 6) / 10
    assert m["sensitivity"] == pytest.approx(2 / 3)  # 2 / (2 + 1)
    assert m["specificity"] == pytest.approx(6 / 7)  # 6 / (6 + 1)
    # positives .9 and .8 beat all 7 negatives, .3 beats 6 of them (not .6) -> 20 / 21
    assert m["auc"] == pytest.approx(20 / 21)
    # restricted to row 0: pred skeleton {0,1,3} hits target at 0,1 -> Tprec 2/3;
    # target skeleton {0,1,2} hit by pred at 0,1 -> Tsens 2/3; clDice 2/3
    assert m["cldice"] == pytest.approx(2 / 3)


def test_vessel_metrics_ignore_pixels_outside_fov():
    rng = np.random.default_rng(1)
    prob = rng.random((16, 16))
    target = rng.random((16, 16)) < 0.3
    yy, xx = np.mgrid[:16, :16]
    fov = (yy - 7.5) ** 2 + (xx - 7.5) ** 2 < 36
    base = vessel_metrics(prob, target, fov)
    prob2, target2 = prob.copy(), target.copy()
    prob2[~fov] = rng.random(int((~fov).sum()))
    target2[~fov] = ~target2[~fov]
    assert vessel_metrics(prob2, target2, fov) == base
    assert vessel_metrics(prob2, target, fov) == base


def test_vessel_metrics_zero_division():
    prob = np.array([[0.2, 0.7]])
    no_pos = vessel_metrics(prob, np.zeros((1, 2), dtype=bool))
    assert math.isnan(no_pos["sensitivity"]) and math.isnan(no_pos["auc"])
    assert no_pos["specificity"] == 0.5 and no_pos["f1"] == 0.0
    no_neg = vessel_metrics(prob, np.ones((1, 2), dtype=bool))
    assert math.isnan(no_neg["specificity"]) and no_neg["sensitivity"] == 0.5
    nothing = vessel_metrics(np.zeros((1, 2)), np.zeros((1, 2), dtype=bool))
    assert nothing["f1"] == 1.0 and nothing["cldice"] == 1.0 and nothing["accuracy"] == 1.0
    with pytest.raises(ValueError, match="fov is empty"):
        vessel_metrics(prob, np.zeros((1, 2), dtype=bool), np.zeros((1, 2), dtype=bool))


# ------------------------------------------------------------------------ segmentation_metrics


def test_segmentation_metrics_keys_and_whole_image_dice():
    prob, target, fov = _vessel_example()
    m = segmentation_metrics(prob, target, fov)
    assert set(m) == {"dice", "f1", "auc", "accuracy", "sensitivity", "specificity"}
    # whole image adds the 10 outside false positives: 2*2 / (2*2 + 11 + 1) = 0.25
    assert m["dice"] == pytest.approx(0.25)
    assert m["dice"] == dice_score(prob, target)
    assert m["f1"] == pytest.approx(2 / 3)
    topo = segmentation_metrics(prob, target, fov, topology=True)
    assert topo == {**m, "cldice": vessel_metrics(prob, target, fov)["cldice"]}
    # no FOV: everything on the whole image, f1 equals dice
    whole = segmentation_metrics(prob, target)
    assert whole["f1"] == whole["dice"]


def test_segmentation_metrics_validation():
    prob, target, fov = _vessel_example()
    with pytest.raises(ValueError, match="shapes differ"):
        segmentation_metrics(prob[:, :5], target)
    with pytest.raises(ValueError, match="shapes differ"):
        segmentation_metrics(prob, target, fov[:, :5])
    bad = prob.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        segmentation_metrics(bad, target)
    # Beyond float32 round-off (a resize that overshoots, logits): refused, however little.
    for value in (1.01, -0.01, 1 + 1e-5, -1e-5):
        bad[0, 0] = value
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            segmentation_metrics(bad, target)
    bad[0, 0] = 1 + 1e-7  # float round-off is tolerated
    segmentation_metrics(bad, target)
    with pytest.raises(ValueError, match="target"):
        segmentation_metrics(prob, target * 0.5)


def test_segmentation_metrics_takes_one_channel_arrays_as_h_x_w(tmp_path):
    # read_image gives a grey mask file as H x W x 1 floats 0.0/1.0; it was refused as
    # "shapes differ: prob (2, 10), target (2, 10, 1)".
    from localdisc import read_image, read_mask
    from localdisc.data.io import write_png

    prob, target, fov = _vessel_example()
    path = write_png(tmp_path / "mask.png", target.astype(np.uint8) * 255)
    image, _ = read_image(path)
    assert image.shape == (*target.shape, 1)
    expected = segmentation_metrics(prob, target, fov)
    assert segmentation_metrics(prob, image, fov) == expected
    assert segmentation_metrics(prob[..., None], target, fov[..., None]) == expected
    assert vessel_metrics(prob, image, fov) == vessel_metrics(prob, target, fov)
    # The advice in the 0/255 message is right: read_mask gives the mask as bool H x W.
    assert segmentation_metrics(prob, read_mask(path), fov) == expected
    # Only a one-channel axis is dropped: an RGB mask is still a shape error.
    with pytest.raises(ValueError, match="shapes differ"):
        segmentation_metrics(prob, np.repeat(target[..., None], 3, axis=2))


def test_a_0_255_mask_is_refused_with_the_way_to_read_it():
    # Not converted silently (0..255 could be an image given by mistake), but the message says
    # how to fix it; it only said "target must be boolean or contain only 0 and 1".
    prob, target, fov = _vessel_example()
    with pytest.raises(ValueError, match="target must be boolean") as caught:
        segmentation_metrics(prob, target.astype(np.uint8) * 255, fov)
    message = str(caught.value)
    assert "got values 0, 255 (uint8)" in message
    assert "localdisc.read_mask(path)" in message and "target > 0" in message
    with pytest.raises(ValueError, match=r"fov must be .*fov > 0"):
        segmentation_metrics(prob, target, fov.astype(np.uint8) * 255)


@pytest.mark.parametrize(
    "call",
    [
        lambda p, t, f: segmentation_metrics(p[:, :5], t),
        lambda p, t, f: vessel_metrics(p * 2, t, f),
        lambda p, t, f: dice_score(p, t * 0.5),
        lambda p, t, f: segmentation_metrics(p, t, np.zeros_like(f)),
        lambda p, t, f: dice_score(p, t, threshold=float("nan")),
        lambda p, t, f: cldice(t.ravel(), t.ravel()),
    ],
)
def test_bad_input_is_a_localdisc_error_that_is_still_a_value_error(call):
    # A plain ValueError: the CLI printed a traceback, and `except LocaldiscError` missed it.
    from localdisc.errors import InputError, LocaldiscError

    prob, target, fov = _vessel_example()
    with pytest.raises(InputError) as caught:
        call(prob, target, fov)
    assert isinstance(caught.value, LocaldiscError) and isinstance(caught.value, ValueError)


# ----------------------------------------------------------------------------------- summarize


def test_summarize():
    rows = [
        {"dice": 0.5, "auc": float("nan")},
        {"dice": 1.0, "auc": 0.8},
        {"dice": 0.0, "auc": 0.6, "cldice": float("nan")},
    ]
    s = summarize(rows)
    assert list(s) == ["dice", "auc", "cldice"]
    # dice: mean 0.5, population std sqrt((0 + 0.25 + 0.25) / 3) = sqrt(1/6)
    assert s["dice"]["mean"] == pytest.approx(0.5)
    assert s["dice"]["std"] == pytest.approx(math.sqrt(1 / 6))
    assert s["dice"]["n"] == 3
    # auc: NaN ignored -> mean of (0.8, 0.6) = 0.7, std 0.1, n 2
    assert s["auc"]["mean"] == pytest.approx(0.7)
    assert s["auc"]["std"] == pytest.approx(0.1)
    assert s["auc"]["n"] == 2
    # no finite value at all
    assert math.isnan(s["cldice"]["mean"]) and math.isnan(s["cldice"]["std"])
    assert s["cldice"]["n"] == 0
    assert summarize([]) == {}


def test_best_cluster_dice_wants_one_cluster_for_all_images():
    region = np.zeros((4, 4), bool)
    region[:2] = True
    first = np.where(region, 3, 0)
    assert best_cluster_dice([first, first], [region, region]) == (3, 1.0)
    # The structure under cluster 3 in one image and cluster 1 in the other: no cluster follows it.
    other = np.where(region, 1, 0)
    k, score = best_cluster_dice([first, other], [region, region])
    assert k in (1, 3) and score == pytest.approx(0.5)
    # A cluster absent from the first image counts too: 5 marks the structure in the second
    # (Dice 0, 1), where 0, everywhere in the first, scores 2/3 and 0.
    everywhere = np.zeros((4, 4), int)
    assert best_cluster_dice([everywhere, np.where(region, 5, 0)], [region, region]) == (5, 0.5)
    with pytest.raises(ValueError, match="one region mask per cluster map"):
        best_cluster_dice([first], [region, region])
    with pytest.raises(ValueError, match="shapes differ"):
        best_cluster_dice([first], [region[:3]])


# ------------------------------------------------------------- input checks shared by all metrics


def test_paper_dice_refuses_a_probability_map_and_takes_one_channel_masks():
    # A 0.3 probability map was cast to bool (all foreground): Dice 0.0 against an empty target,
    # where dice_score at 0.5 gives 1.0. It is now refused as the other binary metrics refuse it.
    from localdisc.errors import InputError
    from localdisc.eval.metrics import paper_dice

    prob = np.full((8, 8), 0.3, dtype=np.float32)
    empty = np.zeros((8, 8), dtype=bool)
    with pytest.raises(InputError, match=r"mask must be boolean .*got values 0\.3"):
        paper_dice(prob, empty, size=8)
    with pytest.raises(InputError, match="target must be boolean"):
        paper_dice(empty, (~empty).astype(np.uint8) * 255, size=8)
    assert paper_dice(prob >= 0.5, empty, size=8) == dice_score(prob, empty) == 1.0
    # H x W x 1 (read_image's grey masks) is taken as H x W; it was "shapes differ".
    bar = _bar(3)
    assert paper_dice(bar[..., None], bar, size=16) == 1.0
    assert paper_dice(bar.astype(np.uint8), bar[..., None].astype(np.float32), size=16) == 1.0


def test_auc_roc_takes_one_channel_arrays_as_h_x_w():
    # segmentation_metrics took H x W x 1 while auc_roc said "shapes differ".
    prob, target, fov = _vessel_example()
    expected = auc_roc(prob, target, fov)
    assert auc_roc(prob[..., None], target, fov) == expected
    assert auc_roc(prob, target[..., None].astype(np.float32), fov[..., None]) == expected
    with pytest.raises(ValueError, match="shapes differ"):
        auc_roc(np.repeat(prob[..., None], 3, axis=2), target)


@pytest.mark.parametrize(
    "call",
    [
        lambda p, t, f, th: vessel_metrics(p, t, f, threshold=th),
        lambda p, t, f, th: segmentation_metrics(p, t, f, threshold=th),
        lambda p, t, f, th: dice_score(p, t, threshold=th),
    ],
)
def test_a_threshold_outside_0_1_is_refused(call):
    # threshold=128 (a 0-255 habit) gave sensitivity 0 silently.
    from localdisc.errors import InputError

    prob, target, fov = _vessel_example()
    for bad in (128, -0.1, 1.5):
        with pytest.raises(InputError, match=rf"threshold must be in \[0, 1\].*got {bad:g}"):
            call(prob, target, fov, bad)
    for edge in (0.0, 1.0):  # the ends are valid: all foreground, only certain pixels
        call(prob, target, fov, edge)


def test_paper_dice_is_the_dice_of_both_masks_at_its_size():
    # Without the resize (or at another size) it passed: the tests' Dice was 1 or 0 at any size
    # (reviewer's mutation). A one-pixel line against a two-pixel one: 2/3 at 8 x 8, and at
    # 4 x 4, where nearest neighbour keeps every other row, both are the same line.
    from localdisc.eval.metrics import paper_dice

    mask, target = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    mask[3], target[2:4] = True, True
    assert paper_dice(mask, target, size=8) == pytest.approx(2 * 8 / (8 + 16))
    assert paper_dice(mask, target, size=4) == 1.0
    assert paper_dice(mask, target, size=16) == pytest.approx(2 * 32 / (32 + 64))


def test_paper_dice_takes_the_whole_image_at_512_by_default():
    # METHOD.md 4: Dice on the whole image at 512 x 512 (the vesselness docstring's numbers)
    from localdisc.eval.metrics import paper_dice

    rng = np.random.default_rng(0)
    mask, target = rng.random((300, 300)) < 0.5, rng.random((300, 300)) < 0.5
    at = ((np.arange(512) + 0.5) * 300 / 512).astype(int)  # nearest, by pixel centres
    m, t = mask[np.ix_(at, at)], target[np.ix_(at, at)]
    assert paper_dice(mask, target) == pytest.approx(2 * (m & t).sum() / (m.sum() + t.sum()))
    assert paper_dice(mask, target) != paper_dice(mask, target, size=256)


def test_dice_score_takes_one_channel_arrays_as_h_x_w():
    # read_image gives a grey file as H x W x 1: segmentation_metrics, auc_roc, cldice and
    # paper_dice take that layout, and dice_score refused it ("shapes differ") beside a H x W
    # mask from read_mask.
    prob = np.array([[0.9, 0.2], [0.7, 0.1]])
    target = np.array([[True, False], [False, False]])
    expected = dice_score(prob, target)  # 2 * 1 / (2 + 1)
    assert expected == pytest.approx(2 / 3)
    assert dice_score(prob[..., None], target) == expected
    assert dice_score(prob, target[..., None]) == expected
    assert dice_score(prob[..., None], target[..., None]) == expected


def test_vessel_metrics_threshold_the_probabilities_at_one_half_by_default():
    # The default threshold is 0.5, inclusive, as segmentation_metrics' and the written masks':
    # another default would score vessel tables on other masks than those the user sees.
    prob = np.array([[0.45, 0.5, 0.1, 0.1]])
    target = np.array([[False, True, False, True]])
    m = vessel_metrics(prob, target)
    assert m["f1"] == pytest.approx(2 / 3)  # 0.45 is no vessel: tp 1, fp 0, fn 1
    assert m["f1"] == segmentation_metrics(prob, target)["f1"]
    assert m == vessel_metrics(prob, target, threshold=0.5)


def test_summarize_ignores_infinities_as_it_ignores_nan():
    # A metric of inf (a ratio over nothing) would make the mean and std inf, and the table cell
    # a dash, instead of the mean over the images that have the metric.
    s = summarize([{"x": 1.0}, {"x": math.inf}, {"x": 3.0}, {"x": -math.inf}])
    assert s["x"] == {"mean": 2.0, "std": 1.0, "n": 2}
