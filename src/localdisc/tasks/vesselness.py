"""Classical vesselness baselines for label-free (shape-guided) vessel segmentation.

The learnt shape-guided method knows two things about its target and nothing else: vessels are
thin, elongated structures (the shape prior) and they cover roughly a known share of the field of
view (the prior masks' foreground fraction). The baselines here get exactly that knowledge:

* a Hessian vesselness filter, which encodes "thin, elongated, darker than the background";
  we use scikit-image's implementations, :func:`skimage.filters.sato` (Sato et al., "Three-
  dimensional multi-scale line filter for segmentation and visualization of curvilinear
  structures in medical images", Medical Image Analysis 2(2), 1998) and
  :func:`skimage.filters.frangi` (Frangi et al., "Multiscale vessel enhancement filtering",
  MICCAI 1998), at scales ``sigmas`` with ``black_ridges=True`` (vessels are dark);
* the multi-scale line detector (:func:`line_detector`; Nguyen et al., Pattern Recognition
  2013), which encodes "straight, darker than the surroundings, at every length up to 15
  pixels"; or several filters at once, their :func:`mean_rank`;
* a threshold that keeps the expected vessel fraction of the FOV (:func:`threshold_fraction`,
  the fraction taken from prior masks with :func:`prior_fraction`, never from target labels),
  or, knowing nothing about the fraction, Otsu's threshold (:func:`threshold_otsu_fov`);
* optionally, that vessels form a tree: pieces of the mask too small to be part of one are
  dropped (:func:`remove_specks`).

The FOV rim is a strong dark edge and gives huge false responses, so the score is set to 0
outside the FOV eroded by ``erode_fov`` pixels (:func:`eroded_fov`) and normalised by its
maximum inside the eroded FOV. :func:`segment_vessels` thresholds inside that eroded FOV.

Usage and resolution. Filter at the image's own resolution (DRIVE: 565 x 584), then resize the
binary mask to the evaluation size for the paper's Dice (:func:`paper_dice`, which reuses
:func:`~localdisc.data.preprocess.resize_mask` and :func:`~localdisc.eval.metrics.dice_score`,
as :func:`localdisc.tasks.transfer.evaluate` does); the AUC is taken at the native resolution
inside the official FOV::

    score, mask = segment_vessels(sample.image, sample.fov, method="sato", threshold=0.12)
    dice = paper_dice(mask, sample.masks["vessels"])            # whole image at 512 x 512
    auc = auc_roc(score, sample.masks["vessels"], sample.fov)    # inside the FOV, native size

On the 20 DRIVE test images this gives Sato at 12%: Dice 0.738 +- 0.032, FOV AUC 0.922; Frangi
at 12%: 0.636 +- 0.037, FOV AUC 0.861; the line detector at 12%: 0.757 +- 0.030, FOV AUC 0.912;
Sato and the line detector joined (``"sato+line"``) at 12%: 0.761 +- 0.029, FOV AUC 0.923.
Resizing the image to 512 first and filtering there lowers Sato (0.721 +- 0.030 at 12%) and
raises Frangi (0.663 +- 0.034), see ``benchmarks/vesselness_drive.py``. The filters' scales are
in pixels: ``sigmas=(1, 2, 3)`` and the line detector's 15-pixel window suit DRIVE-sized fundus
images (vessels 1-10 pixels wide).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy.signal import fftconvolve
from scipy.stats import rankdata
from skimage.draw import line as draw_line
from skimage.filters import frangi, sato, threshold_otsu
from skimage.morphology import disk

from localdisc.errors import InputError
from localdisc.eval.metrics import paper_dice

__all__ = [
    "FILTERS",
    "check_method",
    "eroded_fov",
    "line_detector",
    "mean_rank",
    "paper_dice",
    "prior_fraction",
    "remove_specks",
    "segment_vessels",
    "threshold_fraction",
    "threshold_otsu_fov",
    "threshold_vessels",
    "vesselness",
    "vesselness_pseudo_label",
]

#: Known vesselness filters (``method`` of :func:`vesselness`).
FILTERS = ("sato", "frangi", "line")

#: Fundus photographs are RGB; vessel contrast is highest in green.
GREEN = 1


def check_method(method: str) -> None:
    """Raise :class:`~localdisc.errors.InputError` (a ``ValueError``) unless ``method`` is one of
    :data:`FILTERS` or several joined by ``+``."""
    if any(m not in FILTERS for m in method.split("+")):
        raise InputError(
            f"unknown vesselness method {method!r}; known: {', '.join(FILTERS)}, "
            "or several joined by '+' (their mean rank)"
        )


def _fov_or_all(fov: np.ndarray | None, shape: tuple[int, ...], name: str = "fov") -> np.ndarray:
    """``fov`` as a bool array of ``shape`` (``None``: the whole image)."""
    if fov is None:
        return np.ones(shape, dtype=bool)
    f = np.asarray(fov)
    if f.shape != shape:
        raise ValueError(f"{name} is {f.shape} but the image/score is {shape}")
    return f.astype(bool, copy=False)


def _channel(image: np.ndarray) -> np.ndarray:
    """The filtered channel: green of an RGB(A) image, the only channel of a grey one."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        grey = arr
    elif arr.ndim == 3 and arr.shape[2] == 1:
        grey = arr[:, :, 0]
    elif arr.ndim == 3 and arr.shape[2] in (3, 4):
        grey = arr[:, :, GREEN]
    else:
        raise ValueError(
            f"image must be H x W, H x W x 1 or H x W x 3 (RGB), got shape {arr.shape}"
        )
    grey = grey.astype(np.float64, copy=False)
    if not np.isfinite(grey).all():
        raise ValueError("image contains NaN or infinite values")
    return grey


def eroded_fov(fov: np.ndarray, erode_fov: int = 8) -> np.ndarray:
    """The FOV eroded by a disc of radius ``erode_fov`` pixels (0: unchanged).

    Outside the image counts as outside the FOV, so a FOV touching the border (or the whole
    image) is eroded from the border too.
    """
    f = np.asarray(fov, dtype=bool)
    if erode_fov < 0:
        raise ValueError(f"erode_fov must be >= 0, got {erode_fov}")
    if erode_fov == 0:
        return f.copy()
    return ndi.binary_erosion(f, structure=disk(int(erode_fov)), border_value=0)


def vesselness(
    image: np.ndarray,
    fov: np.ndarray | None,
    *,
    method: str = "sato",
    sigmas: Sequence[float] = (1, 2, 3),
    erode_fov: int = 8,
) -> np.ndarray:
    """Hessian vesselness of the dark vessels of ``image``, in ``[0, 1]``, 0 off the FOV.

    ``image``: float ``H x W x C`` in ``[0, 1]`` (RGB fundus: the green channel is filtered;
    one channel: that channel; a plain ``H x W`` array is accepted too). ``fov``: bool
    ``H x W`` (``None``: the whole image). ``method``: ``"sato"`` (Sato et al., MedIA 1998) or
    ``"frangi"`` (Frangi et al., MICCAI 1998), both scikit-image's implementations
    (:func:`skimage.filters.sato`, :func:`skimage.filters.frangi`) with ``black_ridges=True`` and
    scales ``sigmas`` (pixels); or ``"line"``, the multi-scale line detector
    (:func:`line_detector`, which ignores ``sigmas``), shifted to 0 at its minimum inside the
    eroded FOV. Several joined by ``+`` (``"sato+line"``): their :func:`mean_rank`.

    Returns ``float32`` ``H x W``: the filter response divided by its maximum inside the FOV
    eroded by ``erode_fov`` pixels (:func:`eroded_fov`), and 0 outside that eroded FOV (the FOV
    rim is a strong dark edge: its huge false responses would otherwise dominate). All zeros
    when the response is 0 everywhere inside the eroded FOV (a flat image).

    Raises ``ValueError`` for an unknown method (listing the known ones), a bad image shape,
    empty ``sigmas``, a FOV of another shape or a FOV that the erosion leaves empty.
    """
    check_method(method)
    grey = _channel(image)
    fov = _fov_or_all(fov, grey.shape)  # None: the whole image, for each filter and their ranks
    region = eroded_fov(fov, erode_fov)
    if not region.any():
        raise ValueError(
            f"the FOV is empty after eroding it by {erode_fov} pixels; "
            "pass a smaller erode_fov for small images"
        )
    scales = [float(s) for s in sigmas]
    if not scales or min(scales) <= 0:
        raise ValueError(f"sigmas must be a non-empty list of positive scales, got {sigmas!r}")
    if "+" in method:
        parts = [vesselness(image, fov, method=m, sigmas=scales, erode_fov=erode_fov)
                 for m in method.split("+")]  # fmt: skip
        return mean_rank(parts, fov, erode_fov)
    if method == "line":
        response = line_detector(grey, fov)
        response = np.where(region, response - response[region].min(), 0.0)
    else:
        filt = sato if method == "sato" else frangi
        response = np.asarray(filt(grey, sigmas=scales, black_ridges=True), dtype=np.float64)
        response = np.where(region, np.nan_to_num(response, nan=0.0), 0.0)
    peak = float(response[region].max())
    if peak <= 0:
        return np.zeros(grey.shape, dtype=np.float32)
    return np.clip(response / peak, 0.0, 1.0).astype(np.float32)


def _line_kernels(length: int, orientations: int, size: int) -> list[np.ndarray]:
    """``size x size`` kernels averaging along a centred line of Euclidean length ``length``
    (``length`` pixels horizontal or vertical, fewer slanted: 11 of 15 at 45 degrees), at
    ``orientations`` angles evenly spread over 180 degrees."""
    c, half = size // 2, length // 2
    kernels = []
    for k in range(orientations):
        angle = math.pi * k / orientations
        dy, dx = half * math.sin(angle), half * math.cos(angle)
        kernel = np.zeros((size, size))
        kernel[draw_line(round(c - dy), round(c - dx), round(c + dy), round(c + dx))] = 1.0
        kernels.append(kernel / kernel.sum())
    return kernels


def line_detector(
    image: np.ndarray, fov: np.ndarray | None = None, *, window: int = 15, orientations: int = 12
) -> np.ndarray:
    """The multi-scale line detector of dark vessels (Nguyen et al., "An effective retinal blood
    vessel segmentation method using multi-scale line detection", Pattern Recognition 46(3),
    2013; after Ricci & Perfetti, IEEE TMI 26(10), 2007).

    On the inverted channel ``I`` (green of RGB, see :func:`vesselness`), for each line length
    ``L = 1, 3, ..., window``: the largest mean of ``I`` along a line of length ``L`` through
    the pixel (over ``orientations`` angles) minus the mean of ``I`` in the ``window`` square
    around it, standardised over the FOV; the output is the mean of these ``window // 2 + 1``
    responses and the standardised ``I`` itself. Pixels outside ``fov`` (``None``: the whole
    image) are set to the FOV's mean first, so its dark rim does not read as a vessel, and the
    image is mirrored at its border.
    Returns ``float64`` ``H x W`` (zero mean over the FOV, not bounded); ``window`` must be odd.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number of pixels, got {window}")
    if orientations < 1:
        raise ValueError(f"orientations must be >= 1, got {orientations}")
    inverted = 1.0 - _channel(image)
    f = _fov_or_all(fov, inverted.shape)
    if not f.any():
        raise ValueError("fov is empty: no pixel to filter")
    inverted = np.where(f, inverted, inverted[f].mean())

    def standardised(r: np.ndarray) -> np.ndarray:
        std = float(r[f].std())  # ~1e-17 on a flat image: rounding noise, not a response
        return (r - r[f].mean()) / std if std > 1e-9 else np.zeros_like(r)

    padded = np.pad(inverted, window // 2, mode="reflect")
    average = ndi.uniform_filter(inverted, size=window, mode="mirror")  # = np.pad's "reflect"
    total = standardised(inverted)
    for length in range(1, window + 1, 2):
        kernels = _line_kernels(length, orientations, window)
        best = np.max([fftconvolve(padded, k, mode="valid") for k in kernels], axis=0)
        total += standardised(best - average)
    return total / (window // 2 + 2)


def mean_rank(scores: Sequence[np.ndarray], fov: np.ndarray, erode_fov: int = 8) -> np.ndarray:
    """The mean of each score's rank in (0, 1] over the FOV eroded by ``erode_fov`` pixels (0
    elsewhere): scores of different scales fused, as their thresholds at a fraction are."""
    if not scores:
        raise ValueError("mean_rank needs at least one score")
    region = eroded_fov(fov, erode_fov)
    out = np.zeros(np.shape(fov), dtype=np.float32)
    for score in scores:
        out[region] += rankdata(np.asarray(score)[region]) / max(1, region.sum())
    return out / len(scores)


def threshold_fraction(score: np.ndarray, fov: np.ndarray | None, fraction: float) -> np.ndarray:
    """The ``fraction`` most vessel-like FOV pixels: ``round(fraction * |FOV|)`` of them.

    The cut is the score of the k-th highest FOV pixel; pixels tied with it are all kept (so the
    count can exceed k by the ties), except that a score of 0 is never kept (zero vesselness is
    no evidence; with fewer than k positive scores, fewer pixels are returned). ``fov`` ``None``
    is the whole image. Returns a bool ``H x W`` mask, False outside the FOV.
    """
    if isinstance(fraction, bool) or not (0.0 <= float(fraction) <= 1.0):
        raise ValueError(f"fraction must lie in [0, 1], got {fraction!r}")
    s = np.asarray(score, dtype=np.float64)
    f = _fov_or_all(fov, s.shape)
    values = s[f]
    k = int(round(float(fraction) * values.size))
    if k == 0:
        return np.zeros(s.shape, dtype=bool)
    cut = float(np.partition(values, values.size - k)[values.size - k])  # k-th highest
    keep = s > 0 if cut <= 0 else s >= cut
    return keep & f


def vesselness_pseudo_label(
    score: np.ndarray,
    fov: np.ndarray,
    fraction: float,
    *,
    sure: float = 0.6,
    unsure: float = 2.0,
    erode_fov: int = 8,
    speck_area: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """``(label, weight)`` to train a network on a filter's output, no label used.

    ``label``: the ``fraction`` most vessel-like pixels of the eroded FOV
    (:func:`threshold_fraction`, as :func:`segment_vessels`). ``weight``: 1 where the filter is
    sure, 0 where the network is left to decide: sure vessel are the ``sure * fraction`` most
    vessel-like pixels, sure background every eroded-FOV pixel outside the ``unsure *
    fraction`` most vessel-like, and everything outside the FOV; the band between and the FOV's
    rim (where :func:`vesselness` is undefined) weigh 0. Sure-vessel pieces smaller than
    ``speck_area`` of the FOV (:func:`remove_specks`) weigh 0 too: a network taught that specks
    are vessels marks specks. Both ``float32`` ``H x W``.
    """
    if not 0.0 < sure <= 1.0 <= unsure:
        raise ValueError(f"need 0 < sure <= 1 <= unsure, got sure={sure!r}, unsure={unsure!r}")
    fov = _fov_or_all(fov, np.shape(score))
    region = eroded_fov(fov, erode_fov)
    label = threshold_fraction(score, region, fraction)
    vessel = remove_specks(threshold_fraction(score, region, sure * fraction), fov, speck_area)
    background = region & ~threshold_fraction(score, region, min(1.0, unsure * fraction))
    weight = vessel | background | ~fov
    return label.astype(np.float32), weight.astype(np.float32)


def threshold_otsu_fov(score: np.ndarray, fov: np.ndarray | None) -> np.ndarray:
    """Otsu's threshold (:func:`skimage.filters.threshold_otsu`) of the FOV pixels' scores.

    Returns the bool mask ``score > t`` inside ``fov`` (``None``: the whole image); empty when
    the FOV scores are all equal.
    """
    s = np.asarray(score, dtype=np.float64)
    f = _fov_or_all(fov, s.shape)
    values = s[f]
    if values.size == 0:
        raise ValueError("fov is empty: no pixel to threshold")
    if values.min() == values.max():
        return np.zeros(s.shape, dtype=bool)
    return (s > threshold_otsu(values)) & f


def _as_list(arrays: np.ndarray | Sequence[np.ndarray], name: str) -> list[np.ndarray]:
    if isinstance(arrays, np.ndarray):
        if arrays.ndim == 2:
            return [arrays]
        if arrays.ndim == 3:
            return list(arrays)
        raise ValueError(f"{name} must be H x W, N x H x W or a sequence of H x W arrays")
    return [np.asarray(a) for a in arrays]


def prior_fraction(
    masks: np.ndarray | Sequence[np.ndarray],
    fovs: np.ndarray | Sequence[np.ndarray | None] | None = None,
) -> float:
    """Mean foreground fraction of reference masks inside their FOVs (whole image if ``None``).

    How a prior's "expected vessel fraction" is obtained without target labels: from the prior
    masks themselves (e.g. OCTA or DSA vessel masks, or another data set's tracings), each
    image weighted equally. ``masks``: one ``H x W`` mask, an ``N x H x W`` stack or a sequence
    of masks (sizes may differ); ``fovs`` likewise, one per mask, or ``None`` (an element may
    also be ``None``). Raises ``ValueError`` on no masks, mismatched counts or shapes, or an
    empty FOV.
    """
    mask_list = _as_list(masks, "masks")
    if not mask_list:
        raise ValueError("prior_fraction needs at least one mask")
    if fovs is None:
        fov_list: list[np.ndarray | None] = [None] * len(mask_list)
    elif isinstance(fovs, np.ndarray):
        fov_list = list(_as_list(fovs, "fovs"))
    else:
        fov_list = [None if f is None else np.asarray(f) for f in fovs]
    if len(fov_list) != len(mask_list):
        raise ValueError(f"{len(mask_list)} masks but {len(fov_list)} FOVs")
    fractions = []
    for i, (mask, fov) in enumerate(zip(mask_list, fov_list, strict=True)):
        m = np.asarray(mask).astype(bool, copy=False)
        if m.ndim != 2:
            raise ValueError(f"mask {i} must be H x W, got shape {m.shape}")
        f = _fov_or_all(fov, m.shape, name=f"fov {i}")
        n = int(np.count_nonzero(f))
        if n == 0:
            raise ValueError(f"fov {i} is empty")
        fractions.append(np.count_nonzero(m & f) / n)
    return float(np.mean(fractions))


def segment_vessels(
    image: np.ndarray,
    fov: np.ndarray,
    *,
    method: str = "sato",
    threshold: str | float = "otsu",
    sigmas: Sequence[float] = (1, 2, 3),
    erode_fov: int = 8,
    speck_area: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Label-free vessel segmentation: :func:`vesselness`, then a threshold.

    ``threshold``: ``"otsu"`` (:func:`threshold_otsu_fov`) or a fraction in ``(0, 1)``, the
    expected vessel fraction (:func:`threshold_fraction`, e.g. from :func:`prior_fraction` of a
    prior's masks). Both threshold inside the eroded FOV, where the score is defined. Otsu
    knows nothing about the expected fraction and does poorly on these heavy-tailed scores
    (Frangi on DRIVE: Dice 0.23); a prior fraction of 0.12 gives Sato 0.74. ``speck_area``:
    pieces of the mask smaller than that share of the FOV are dropped (:func:`remove_specks`).

    Returns ``(score, mask)``: the ``float32`` vesselness in ``[0, 1]`` (a probability-like
    score for AUC) and the bool mask, both at the image's own resolution (resize the mask for
    Dice at another size, see :func:`paper_dice`).
    """
    score = vesselness(image, fov, method=method, sigmas=sigmas, erode_fov=erode_fov)
    return score, threshold_vessels(score, fov, threshold, erode_fov, speck_area)


def remove_specks(mask: np.ndarray, fov: np.ndarray | None, speck_area: float) -> np.ndarray:
    """``mask`` without its 8-connected pieces smaller than ``speck_area`` times the FOV's area.

    The retinal vessels form a tree, so an isolated piece much smaller than it is a speck of
    texture, a lesion's edge or noise that a filter took for a vessel. ``6e-4`` (136 pixels of
    a DRIVE FOV, a 12 x 12 square; chosen on STARE, where 4e-4 to 1e-3 do alike for the filters)
    lifts the line detector at a prior's fraction larger than the data set's own by 0.01 to 0.05
    Dice (STARE at 0.150: 0.691 to 0.736; DRIVE: 0.737 to 0.762), and costs a little at a
    smaller one, where thin vessels' ends are pieces too (``benchmarks/RESULTS.md``). ``fov``
    ``None`` is the whole image; ``speck_area`` 0 keeps every piece.
    Returns a bool mask.
    """
    if not 0.0 <= speck_area < 1.0:
        raise ValueError(f"speck_area must lie in [0, 1), got {speck_area!r}")
    mask = np.asarray(mask, dtype=bool)
    if speck_area == 0.0 or not mask.any():
        return mask
    pieces, _ = ndi.label(mask, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(pieces.ravel())
    keep = sizes >= round(speck_area * _fov_or_all(fov, mask.shape).sum())
    keep[0] = False
    return keep[pieces]


def threshold_vessels(
    score: np.ndarray,
    fov: np.ndarray,
    threshold: str | float,
    erode_fov: int = 8,
    speck_area: float = 0.0,
) -> np.ndarray:
    """The bool vessel mask of a :func:`vesselness` ``score``: ``threshold`` ``"otsu"``
    (:func:`threshold_otsu_fov`) or a fraction in ``(0, 1)`` (:func:`threshold_fraction`), both
    inside the FOV eroded by ``erode_fov`` pixels, where the score is defined; then its pieces
    below ``speck_area`` of the FOV dropped (:func:`remove_specks`)."""
    region = eroded_fov(_fov_or_all(fov, np.shape(score)), erode_fov)
    if isinstance(threshold, str):
        if threshold != "otsu":
            raise ValueError(f"threshold must be 'otsu' or a fraction in (0, 1), not {threshold!r}")
        mask = threshold_otsu_fov(score, region)
    elif isinstance(threshold, bool) or not (
        math.isfinite(float(threshold)) and 0.0 < float(threshold) < 1.0
    ):
        raise ValueError(f"threshold must be 'otsu' or a fraction in (0, 1), not {threshold!r}")
    else:
        mask = threshold_fraction(score, region, float(threshold))
    return remove_specks(mask, fov, speck_area)
