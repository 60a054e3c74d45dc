"""Binary segmentation metrics: Dice, ROC AUC, confusion-matrix rates and clDice.

Conventions used throughout:

* ``prob`` is the predicted foreground probability, a float array in [0, 1]; ``target`` is the
  ground-truth mask (bool, or 0/1); ``fov``/``mask`` is an optional bool field of view, ``None``
  meaning the whole image.
* A pixel is predicted foreground when ``prob >= threshold`` (so exactly 0.5 counts as
  foreground at the default threshold 0.5); ``threshold`` must lie in [0, 1].
* Ratios whose denominator is zero are NaN (sensitivity without positives, specificity without
  negatives, AUC with a single class), except overlap scores (Dice/F1, clDice), which follow the
  usual convention (e.g. MONAI's ``ignore_empty=False``): prediction and target both empty gives
  1.0, exactly one empty gives 0.0.

References:

* Dice, "Measures of the Amount of Ecologic Association Between Species", Ecology 1945.
* Chen et al., "Unsupervised Local Discrimination for Medical Images", TPAMI 2023 (per-image
  Dice at threshold 0.5 on the whole image).
* Hanley & McNeil, "The meaning and use of the area under a receiver operating characteristic
  (ROC) curve", Radiology 1982 (AUC equals the normalised Mann-Whitney U statistic).
* Shit et al., "clDice - a Novel Topology-Preserving Loss Function for Tubular Structure
  Segmentation", CVPR 2021.
* Fraz et al., "Blood vessel segmentation methodologies in retinal images - a survey", Computer
  Methods and Programs in Biomedicine 2012 (accuracy/sensitivity/specificity/AUC inside the FOV).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import rankdata
from skimage.morphology import skeletonize

from localdisc.errors import InputError

__all__ = [
    "auc_roc",
    "cldice",
    "confusion_counts",
    "dice_score",
    "paper_dice",
    "segmentation_metrics",
    "summarize",
    "vessel_metrics",
]

# Tolerance on the [0, 1] range of probabilities (float32 softmax/sigmoid round-off).
PROB_EPS = 1e-6


# --------------------------------------------------------------------------- validation helpers
def _as_bool(x: ArrayLike, name: str) -> np.ndarray:
    """``x`` as a bool array; non-bool input must contain only 0 and 1."""
    a = np.asarray(x)
    if a.dtype == np.bool_:
        return a
    if not np.all((a == 0) | (a == 1)):
        # Not converted silently: 0/255 is a mask, but 0..255 could be an image passed by mistake.
        values = np.unique(a).tolist()
        shown = ", ".join(map(str, values[:4])) + (", ..." if len(values) > 4 else "")
        raise InputError(
            f"{name} must be boolean or contain only 0 and 1, got values {shown} ({a.dtype}); "
            "read a mask file with localdisc.read_mask(path) (bool H x W), or pass "
            f"{name} > 0 for a 0/255 mask"
        )
    return a.astype(bool)


def _check_shapes(**arrays: np.ndarray | None) -> None:
    shapes = {name: a.shape for name, a in arrays.items() if a is not None}
    if len(set(shapes.values())) > 1:
        detail = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise InputError(f"shapes differ: {detail}")


def _as_prob(prob: ArrayLike) -> np.ndarray:
    """``prob`` as a float array, checked to be free of NaN and inside [0, 1] (up to PROB_EPS)."""
    p = np.asarray(prob)
    if p.dtype == np.bool_ or not np.issubdtype(p.dtype, np.number):
        raise InputError(f"prob must be a numeric array of probabilities, got dtype {p.dtype}")
    p = p.astype(np.float64, copy=False) if not np.issubdtype(p.dtype, np.floating) else p
    if p.size == 0:
        raise InputError("prob is empty")
    if np.isnan(p).any():
        raise InputError("prob contains NaN")
    lo, hi = float(p.min()), float(p.max())
    if lo < -PROB_EPS or hi > 1 + PROB_EPS:
        raise InputError(f"prob must lie in [0, 1], got values in [{lo:g}, {hi:g}]")
    return p


def _binarize(prob: np.ndarray, threshold: float) -> np.ndarray:
    """``prob >= threshold``, the one place the metrics binarise, so the check is everywhere."""
    if not math.isfinite(threshold):
        raise InputError(f"threshold must be finite, got {threshold}")
    if not 0.0 <= threshold <= 1.0:
        # A 0-255 threshold (e.g. 128) on probabilities would silently predict nothing.
        raise InputError(
            f"threshold must be in [0, 1] (a probability), got {threshold:g}; "
            "a 0-255 threshold such as 128 would mark no pixel as foreground"
        )
    return prob >= threshold


def _overlap(tp: int, fp: int, fn: int) -> float:
    """Dice/F1 = 2 tp / (2 tp + fp + fn); 1.0 when prediction and target are both empty."""
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2.0 * tp / denom


def _ratio(num: int, den: int) -> float:
    return float("nan") if den == 0 else num / den


# ----------------------------------------------------------------------------------- metrics
def dice_score(prob: ArrayLike, target: ArrayLike, threshold: float = 0.5) -> float:
    """Per-image Dice on the whole image, as reported by Chen et al. (TPAMI 2023).

    The prediction is ``prob >= threshold``; Dice = 2|P ∩ T| / (|P| + |T|) (Dice 1945).
    Returns 1.0 when prediction and target are both empty. Arrays are H x W, or H x W x 1 taken
    as H x W (as :func:`~localdisc.data.io.read_image` returns a grey file, and as in
    :func:`segmentation_metrics`).
    """
    p = _as_prob(_drop_channel(prob))
    t = _as_bool(_drop_channel(target), "target")
    _check_shapes(prob=p, target=t)
    pred = _binarize(p, threshold)
    tp = int(np.count_nonzero(pred & t))
    return _overlap(tp, int(np.count_nonzero(pred)) - tp, int(np.count_nonzero(t)) - tp)


def auc_roc(prob: ArrayLike, target: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Exact area under the ROC curve of the pixels inside ``mask`` (all pixels if ``None``).

    Computed as the normalised Mann-Whitney U statistic (Hanley & McNeil 1982),
    AUC = (R+ - n+ (n+ + 1) / 2) / (n+ n-), with R+ the sum of the ranks of the positive pixels
    and tied scores given their average rank, which is exactly the trapezoidal ROC AUC (as in
    scikit-learn's ``roc_auc_score``). ``prob`` may be any real score (only its order matters).
    Returns NaN when the pixels inside the mask hold only one class. Arrays are H x W, or
    H x W x 1 taken as H x W (as in :func:`segmentation_metrics`).
    """
    # Not monai.metrics.compute_roc_auc: it walks the sorted scores in a Python loop (~5x slower
    # at 10^6 pixels, and float32-rounded); rankdata is one vectorised sort.
    s = _drop_channel(prob)
    t = _as_bool(_drop_channel(target), "target")
    m = None if mask is None else _as_bool(_drop_channel(mask), "mask")
    _check_shapes(prob=s, target=t, mask=m)
    if m is not None:
        s, t = s[m], t[m]
    s, t = s.ravel(), t.ravel()
    if np.isnan(s).any():
        raise InputError("prob contains NaN")
    n_pos = int(np.count_nonzero(t))
    n_neg = t.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)  # average ranks for ties, float64
    u = float(ranks[t].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def confusion_counts(
    pred_bool: ArrayLike, target: ArrayLike, mask: ArrayLike | None = None
) -> tuple[int, int, int, int]:
    """``(tp, fp, tn, fn)`` of a binary prediction over the pixels inside ``mask``."""
    p = _as_bool(pred_bool, "pred_bool")
    t = _as_bool(target, "target")
    m = None if mask is None else _as_bool(mask, "mask")
    _check_shapes(pred_bool=p, target=t, mask=m)
    if m is not None:
        p, t = p[m], t[m]
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    tn = int(p.size) - tp - fp - fn
    return tp, fp, tn, fn


def cldice(pred_bool: ArrayLike, target: ArrayLike) -> float:
    """Centerline Dice of two binary masks (Shit et al., CVPR 2021).

    Tprec = |S(P) ∩ T| / |S(P)|, Tsens = |S(T) ∩ P| / |S(T)| and
    clDice = 2 Tprec Tsens / (Tprec + Tsens), with the skeletons S from
    ``skimage.morphology.skeletonize`` (2-D or 3-D masks; H x W x 1 masks, as ``read_image``
    gives grey ones, are 2-D: skeletonized in 3-D they gave another clDice). Both skeletons
    empty gives 1.0, one empty gives 0.0, and Tprec + Tsens = 0 gives 0.0.
    """
    p = _as_bool(_drop_channel(pred_bool), "pred_bool")
    t = _as_bool(_drop_channel(target), "target")
    _check_shapes(pred_bool=p, target=t)
    if p.ndim not in (2, 3):
        raise InputError(f"cldice needs 2-D or 3-D masks, got {p.ndim}-D")
    sp = skeletonize(p) if p.any() else p
    st = skeletonize(t) if t.any() else t
    n_sp, n_st = int(np.count_nonzero(sp)), int(np.count_nonzero(st))
    if n_sp == 0 and n_st == 0:
        return 1.0
    if n_sp == 0 or n_st == 0:
        return 0.0
    tprec = np.count_nonzero(sp & t) / n_sp
    tsens = np.count_nonzero(st & p) / n_st
    if tprec + tsens == 0:
        return 0.0
    return float(2.0 * tprec * tsens / (tprec + tsens))


def _fov_metrics(
    p: np.ndarray, t: np.ndarray, fov: np.ndarray | None, threshold: float, topology: bool
) -> dict[str, float]:
    """FOV metrics of already validated arrays (see :func:`vessel_metrics`)."""
    pred = _binarize(p, threshold)
    tp, fp, tn, fn = confusion_counts(pred, t, fov)
    if tp + fp + tn + fn == 0:
        raise InputError("fov is empty: no pixel to evaluate")
    out = {
        "f1": _overlap(tp, fp, fn),
        "auc": auc_roc(p, t, fov),
        "accuracy": (tp + tn) / (tp + fp + tn + fn),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
    }
    if topology:
        if fov is not None:
            pred, t = pred & fov, t & fov
        out["cldice"] = cldice(pred, t)
    return out


def _drop_channel(x: ArrayLike) -> np.ndarray:
    """``x`` as an array, an H x W x 1 one as H x W (``read_image`` gives grey masks that way)."""
    a = np.asarray(x)
    return a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a


def _validate(
    prob: ArrayLike, target: ArrayLike, fov: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Checked arrays of one image; H x W x 1 inputs are taken as H x W."""
    p = _as_prob(_drop_channel(prob))
    t = _as_bool(_drop_channel(target), "target")
    f = None if fov is None else _as_bool(_drop_channel(fov), "fov")
    _check_shapes(prob=p, target=t, fov=f)
    return p, t, f


def vessel_metrics(
    prob: ArrayLike, target: ArrayLike, fov: ArrayLike | None = None, threshold: float = 0.5
) -> dict[str, float]:
    """Standard retinal-vessel evaluation inside the FOV, at the original resolution.

    Keys (all computed on the pixels inside ``fov``, the whole image if ``None``; see Fraz et al.
    2012 for the protocol and Shit et al. 2021 for clDice):

    * ``f1``: Dice/F1 = 2 tp / (2 tp + fp + fn) of ``prob >= threshold``; 1.0 if no positives
      are predicted nor present.
    * ``auc``: ROC AUC of ``prob`` (:func:`auc_roc`); NaN if the FOV holds a single class.
    * ``accuracy``: (tp + tn) / n.
    * ``sensitivity``: tp / (tp + fn); NaN if the FOV holds no positive pixel.
    * ``specificity``: tn / (tn + fp); NaN if the FOV holds no negative pixel.
    * ``cldice``: :func:`cldice` of the binarised prediction and the target, both set to False
      outside the FOV.

    Arrays are H x W, or H x W x 1 taken as H x W (as in :func:`segmentation_metrics`). Raises
    :class:`~localdisc.errors.InputError` (a ``ValueError``) on mismatched shapes, invalid
    probabilities, non-binary masks or an empty FOV.
    """
    p, t, f = _validate(prob, target, fov)
    return _fov_metrics(p, t, f, threshold, topology=True)


def segmentation_metrics(
    prob: ArrayLike,
    target: ArrayLike,
    fov: ArrayLike | None = None,
    *,
    threshold: float = 0.5,
    topology: bool = False,
) -> dict[str, float]:
    """All metrics of one image in one call.

    Returns ``dice`` (the paper's whole-image :func:`dice_score`, ignoring ``fov``) and ``f1``,
    ``auc``, ``accuracy``, ``sensitivity``, ``specificity`` inside the FOV (as in
    :func:`vessel_metrics`), plus ``cldice`` when ``topology`` is True (tubular structures).

    Each array is H x W, or H x W x 1 (as :func:`~localdisc.data.io.read_image` returns a grey
    file), taken as H x W. Raises :class:`~localdisc.errors.InputError` (a ``ValueError``) when
    shapes differ, ``prob`` contains NaN or values outside [0, 1] (beyond a tolerance of
    ``PROB_EPS``), ``target``/``fov`` are not binary (a 0/255 mask is refused rather than
    guessed: read it with :func:`~localdisc.data.io.read_mask`, or pass ``mask > 0``), or the FOV
    is empty.
    """
    p, t, f = _validate(prob, target, fov)
    pred = _binarize(p, threshold)
    tp = int(np.count_nonzero(pred & t))
    dice = _overlap(tp, int(np.count_nonzero(pred)) - tp, int(np.count_nonzero(t)) - tp)
    return {"dice": dice, **_fov_metrics(p, t, f, threshold, topology)}


def summarize(per_image: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Mean, standard deviation and count of every metric over images.

    For each key (in first-seen order) returns ``{"mean", "std", "n"}`` over the finite values
    only: NaN/inf values (and images lacking the key) are ignored and not counted in ``n``. The
    std is the population one (ddof=0). A key without any finite value gets NaN mean/std, n=0.
    """
    keys: dict[str, None] = {}
    for row in per_image:
        keys.update(dict.fromkeys(row))
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        values = np.array([row.get(key, np.nan) for row in per_image], dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            out[key] = {"mean": float("nan"), "std": float("nan"), "n": 0}
        else:
            out[key] = {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=0)),
                "n": int(values.size),
            }
    return out


def paper_dice(mask: ArrayLike, target: ArrayLike, size: int = 512) -> float:
    """The paper's Dice of a prediction made at another size: whole image, the binary ``mask``
    and the reference both resized to ``size x size`` (nearest neighbour), then :func:`dice_score`.

    Resizing probabilities instead would thin vessels of a pixel or two below 0.5.

    ``mask`` and ``target`` must be binary (bool, or 0/1), H x W or H x W x 1: a probability
    map is refused rather than cast (any value above 0 would count as foreground); pass
    ``prob >= 0.5``.
    """
    from localdisc.data.preprocess import resize_mask

    m = _as_bool(_drop_channel(mask), "mask")
    t = _as_bool(_drop_channel(target), "target")
    return dice_score(resize_mask(m, size).astype(np.float32), resize_mask(t, size))


def best_cluster_dice(
    cluster_maps: Sequence[ArrayLike], regions: Sequence[ArrayLike]
) -> tuple[int, float]:
    """The one cluster that best covers a structure over several images, and its mean Dice.

    ``cluster_maps`` are arg-max cluster label maps (int H x W), ``regions`` the structure's masks
    on the same images. Every cluster ``k`` is scored by the mean over images of
    Dice(``map == k``, region); the best ``(k, mean Dice)`` is returned. One cluster for all
    images, because a clustering follows anatomy when the same cluster marks the same structure
    everywhere.
    """
    maps = [np.asarray(m) for m in cluster_maps]
    masks = [_as_bool(r, "region") for r in regions]
    if not maps or len(maps) != len(masks):
        raise InputError("need one region mask per cluster map, and at least one of each")
    for m, r in zip(maps, masks, strict=True):
        _check_shapes(cluster_map=m, region=r)
    scores = {}
    for k in np.unique(np.concatenate([m.ravel() for m in maps])):
        per_image = [
            dice_score((m == k).astype(np.float32), r) for m, r in zip(maps, masks, strict=True)
        ]
        scores[int(k)] = float(np.mean(per_image))
    best = max(scores, key=scores.__getitem__)
    return best, scores[best]
