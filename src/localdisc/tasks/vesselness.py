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
* a threshold that keeps the expected vessel fraction of the FOV (:func:`threshold_fraction`,
  the fraction taken from prior masks with :func:`prior_fraction`, never from target labels),
  or, knowing nothing about the fraction, Otsu's threshold (:func:`threshold_otsu_fov`).

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
at 12%: 0.636 +- 0.037, FOV AUC 0.861. Resizing the image to 512 first and filtering there
lowers Sato (0.721 +- 0.030 at 12%) and raises Frangi (0.663 +- 0.034), see
``benchmarks/vesselness_drive.py``. The filters' scales are in pixels: ``sigmas=(1, 2, 3)``
suits DRIVE-sized fundus images (vessels 1-10 pixels wide).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import frangi, sato, threshold_otsu
from skimage.morphology import disk

from localdisc.eval.metrics import paper_dice

__all__ = [
    "FILTERS",
    "eroded_fov",
    "paper_dice",
    "prior_fraction",
    "segment_vessels",
    "threshold_fraction",
    "threshold_otsu_fov",
    "vesselness",
    "vesselness_pseudo_label",
]

#: Known vesselness filters (``method`` of :func:`vesselness`).
FILTERS = ("sato", "frangi")

#: Fundus photographs are RGB; vessel contrast is highest in green.
GREEN = 1


def _check_method(method: str) -> None:
    if method not in FILTERS:
        raise ValueError(f"unknown vesselness method {method!r}; known: {', '.join(FILTERS)}")


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
    fov: np.ndarray,
    *,
    method: str = "sato",
    sigmas: Sequence[float] = (1, 2, 3),
    erode_fov: int = 8,
) -> np.ndarray:
    """Hessian vesselness of the dark vessels of ``image``, in ``[0, 1]``, 0 off the FOV.

    ``image``: float ``H x W x C`` in ``[0, 1]`` (RGB fundus: the green channel is filtered;
    one channel: that channel; a plain ``H x W`` array is accepted too). ``fov``: bool
    ``H x W``. ``method``: ``"sato"`` (Sato et al., MedIA 1998) or ``"frangi"`` (Frangi et al.,
    MICCAI 1998), both scikit-image's implementations (:func:`skimage.filters.sato`,
    :func:`skimage.filters.frangi`) with ``black_ridges=True`` and scales ``sigmas`` (pixels).

    Returns ``float32`` ``H x W``: the filter response divided by its maximum inside the FOV
    eroded by ``erode_fov`` pixels (:func:`eroded_fov`), and 0 outside that eroded FOV (the FOV
    rim is a strong dark edge: its huge false responses would otherwise dominate). All zeros
    when the response is 0 everywhere inside the eroded FOV (a flat image).

    Raises ``ValueError`` for an unknown method (listing the known ones), a bad image shape,
    empty ``sigmas``, a FOV of another shape or a FOV that the erosion leaves empty.
    """
    _check_method(method)
    grey = _channel(image)
    region = eroded_fov(_fov_or_all(fov, grey.shape), erode_fov)
    if not region.any():
        raise ValueError(
            f"the FOV is empty after eroding it by {erode_fov} pixels; "
            "pass a smaller erode_fov for small images"
        )
    scales = [float(s) for s in sigmas]
    if not scales or min(scales) <= 0:
        raise ValueError(f"sigmas must be a non-empty list of positive scales, got {sigmas!r}")
    filt = sato if method == "sato" else frangi
    response = np.asarray(filt(grey, sigmas=scales, black_ridges=True), dtype=np.float64)
    response = np.where(region, np.nan_to_num(response, nan=0.0), 0.0)
    peak = float(response[region].max())
    if peak <= 0:
        return np.zeros(grey.shape, dtype=np.float32)
    return np.clip(response / peak, 0.0, 1.0).astype(np.float32)


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
) -> tuple[np.ndarray, np.ndarray]:
    """``(label, weight)`` to train a network on a filter's output, no label used.

    ``label``: the ``fraction`` most vessel-like pixels of the eroded FOV
    (:func:`threshold_fraction`, as :func:`segment_vessels`). ``weight``: 1 where the filter is
    sure, 0 where the network is left to decide: sure vessel are the ``sure * fraction`` most
    vessel-like pixels, sure background every eroded-FOV pixel outside the ``unsure *
    fraction`` most vessel-like, and everything outside the FOV; the band between and the FOV's
    rim (where :func:`vesselness` is undefined) weigh 0. Both ``float32`` ``H x W``.
    """
    if not 0.0 < sure <= 1.0 <= unsure:
        raise ValueError(f"need 0 < sure <= 1 <= unsure, got sure={sure!r}, unsure={unsure!r}")
    fov = _fov_or_all(fov, np.shape(score))
    region = eroded_fov(fov, erode_fov)
    label = threshold_fraction(score, region, fraction)
    vessel = threshold_fraction(score, region, sure * fraction)
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
) -> tuple[np.ndarray, np.ndarray]:
    """Label-free vessel segmentation: :func:`vesselness`, then a threshold.

    ``threshold``: ``"otsu"`` (:func:`threshold_otsu_fov`) or a fraction in ``(0, 1)``, the
    expected vessel fraction (:func:`threshold_fraction`, e.g. from :func:`prior_fraction` of a
    prior's masks). Both threshold inside the eroded FOV, where the score is defined. Otsu
    knows nothing about the expected fraction and does poorly on these heavy-tailed scores
    (Frangi on DRIVE: Dice 0.23); a prior fraction of 0.12 gives Sato 0.74.

    Returns ``(score, mask)``: the ``float32`` vesselness in ``[0, 1]`` (a probability-like
    score for AUC) and the bool mask, both at the image's own resolution (resize the mask for
    Dice at another size, see :func:`paper_dice`).
    """
    score = vesselness(image, fov, method=method, sigmas=sigmas, erode_fov=erode_fov)
    region = eroded_fov(_fov_or_all(fov, score.shape), erode_fov)
    if isinstance(threshold, str):
        if threshold != "otsu":
            raise ValueError(f"threshold must be 'otsu' or a fraction in (0, 1), not {threshold!r}")
        return score, threshold_otsu_fov(score, region)
    if isinstance(threshold, bool) or not (
        math.isfinite(float(threshold)) and 0.0 < float(threshold) < 1.0
    ):
        raise ValueError(f"threshold must be 'otsu' or a fraction in (0, 1), not {threshold!r}")
    return score, threshold_fraction(score, region, float(threshold))
