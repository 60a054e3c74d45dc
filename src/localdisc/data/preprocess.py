"""Image preprocessing shared by the data sets: field of view, ROI crop, resizing, normalisation.

Images are ``float32`` arrays ``H x W x C`` with values in ``[0, 1]`` (as returned by
:func:`localdisc.data.io.read_image`); masks are ``bool`` arrays ``H x W``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import ndimage, sparse
from skimage.filters import threshold_otsu

from localdisc.errors import InputError

if TYPE_CHECKING:
    import torch

#: Channels the models see for each modality: colour fundus photographs are RGB, X-rays grey.
MODALITY_CHANNELS: dict[str, int] = {"fundus": 3, "xray": 1}

#: Per-channel mean and std of the network input (METHOD.md section 1): ImageNet statistics on
#: RGB fundus photographs; X-rays are one channel normalised to ``[-1, 1]``.
MODALITY_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fundus": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "xray": ((0.5,), (0.5,)),
}

#: ITU-R BT.601 luma weights, for RGB -> grey.
LUMA = (0.299, 0.587, 0.114)

#: The paper's fundus foreground rule: a pixel brighter than 20/255 in any channel.
FOV_THRESHOLD = 20 / 255

#: A "background" brighter than this is FOV content: the image has no dark surround.
_MAX_BACKGROUND = 0.25

#: ITU-R BT.601 luma weights (the ones PIL uses for ``convert("L")``).


def _as_hwc(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as ``H x W x C`` (a 2-D array gets one channel)."""
    image = np.asarray(image)
    if image.ndim == 2:
        return image[:, :, None]
    if image.ndim != 3:
        raise ValueError(f"expected an H x W or H x W x C image, got shape {image.shape}")
    return image


def _check_modality(modality: str) -> None:
    if modality not in MODALITY_CHANNELS:
        known = ", ".join(sorted(MODALITY_CHANNELS))
        raise ValueError(f"unknown modality {modality!r}; expected one of: {known}")


def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    """An ``int`` means a square ``size x size``; a tuple is ``(height, width)``."""
    if isinstance(size, int | np.integer):
        h = w = int(size)
    else:
        h, w = (int(s) for s in size)
    if h < 1 or w < 1:
        raise ValueError(f"output size must be positive, got {size!r}")
    return h, w


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 8-connected component of a boolean mask (an empty mask stays empty)."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0  # background
    return labels == int(np.argmax(sizes))


#: Radius of the opening that cuts speckle off the foreground, as a fraction of the short side.
_OPENING_FRACTION = 0.01

#: Opening radius (pixels) at which :func:`_open_thin_parts` works on a reduced mask instead.
_OPENING_REDUCED_RADIUS = 3


def _open_thin_parts(mask: np.ndarray) -> np.ndarray:
    """Binary opening of ``mask`` by a disc of radius ~1 % of its short side.

    It cuts the thin 8-connected chains of bright speckle by which the black surround of some
    fundus photographs (about 4 % of EyePACS) touches the disc, which otherwise join the
    "largest component" and spread the FOV over the surround. A disc that large costs seconds on
    a 3000 x 2000 mask, so past a radius of ``_OPENING_REDUCED_RADIUS`` pixels the mask is
    reduced by a factor ``f`` (strict majority of each ``f x f`` block: speckle of 50 % drops
    out) and opened there by a disc of that radius; the opening's largest component grown by one
    block then selects the full-size pixels, so that the boundary stays at full resolution. A
    mask that the opening would empty is kept as it is.
    """
    h, w = mask.shape
    radius = max(1, round(_OPENING_FRACTION * min(h, w)))
    factor = max(1, radius // _OPENING_REDUCED_RADIUS)
    small = mask
    if factor > 1:
        hp, wp = -(-h // factor) * factor, -(-w // factor) * factor
        padded = np.ones((hp, wp), dtype=np.uint8)  # outside is foreground, as below
        padded[:h, :w] = mask
        counts = np.zeros((hp // factor, wp // factor), dtype=np.int32)
        for dy in range(factor):  # strided sums: much faster than a reshape-and-sum
            for dx in range(factor):
                counts += padded[dy::factor, dx::factor]
        small = counts * 2 > factor * factor
    r = round(radius / factor)
    yy, xx = np.ogrid[-r : r + 1, -r : r + 1]
    disc = xx * xx + yy * yy <= r * r
    # Outside the image counts as foreground when eroding: a FOV cut by the frame keeps its
    # corners, and an image bright everywhere stays whole.
    opened = ndimage.binary_dilation(ndimage.binary_erosion(small, disc, border_value=1), disc)
    if not opened.any():
        return mask
    if factor == 1:
        return opened
    core = ndimage.binary_dilation(largest_component(opened), np.ones((3, 3), dtype=bool))
    return mask & np.repeat(np.repeat(core, factor, axis=0), factor, axis=1)[:h, :w]


def foreground(image: np.ndarray, threshold: float = FOV_THRESHOLD) -> np.ndarray:
    """Largest connected region of pixels brighter than ``threshold`` in any channel, after a
    binary opening (:func:`_open_thin_parts`) that cuts bright speckle in the surround off it."""
    return largest_component(_open_thin_parts((_as_hwc(image) > threshold).any(axis=2)))


def background_level(image: np.ndarray) -> float:
    """Level of a fundus photograph's background (the dark surround of the FOV), in ``[0, 1]``.

    The commonest value of the brightest channel among pixels below Otsu's threshold: about 0
    for the black borders of DRIVE, HRF or EyePACS, but 0.05-0.15 for the grey film around
    STARE's scanned photographs. Above 0.25 the image has no dark surround and 0 is returned.
    """
    brightest = _as_hwc(image).max(axis=2)
    if brightest.min() == brightest.max():
        return 0.0
    dark = brightest[brightest < threshold_otsu(brightest)]
    if dark.size == 0:
        return 0.0
    hist, edges = np.histogram(dark, bins=256, range=(0.0, 1.0))
    level = float(edges[int(np.argmax(hist))] + 0.5 / 256)
    return level if level <= _MAX_BACKGROUND else 0.0


def fov_threshold(image: np.ndarray) -> float:
    """The FOV threshold for ``image``: 20/255 above :func:`background_level`, at least 20/255.

    On a black surround this is the paper's 20/255 rule; on STARE's noisy grey film, a fixed
    20/255 would take most of the film into the FOV (a FOV of 95 % of the image instead of 73 %).
    """
    return max(FOV_THRESHOLD, background_level(image) + FOV_THRESHOLD)


def fov_from_image(
    image: np.ndarray, *, modality: str = "fundus", threshold: float | None = None
) -> np.ndarray:
    """Derive a field-of-view mask from an image.

    Fundus: pixels brighter than ``threshold`` in any channel (default :func:`fov_threshold`:
    the paper's 20/255 above the background level), opened by a disc of 1 % of the short side
    so that bright speckle in the surround cannot join the disc, the largest connected
    component, holes filled (dark vessels or lesions inside the disc belong to the FOV). If
    nothing passes the threshold the whole image is returned, so that a black or odd image
    never yields an empty FOV. X-ray: the whole image (radiographs have no circular aperture).
    """
    _check_modality(modality)
    image = _as_hwc(image)
    h, w = image.shape[:2]
    if modality == "xray":
        return np.ones((h, w), dtype=bool)
    if threshold is None:
        threshold = fov_threshold(image)
    fov = ndimage.binary_fill_holes(foreground(image, threshold))
    if not fov.any():
        return np.ones((h, w), dtype=bool)
    return fov


def roi_box(
    image: np.ndarray, threshold: float = FOV_THRESHOLD, margin: int = 16
) -> tuple[int, int, int, int]:
    """The paper's fundus ROI: bounding box ``(y0, y1, x0, x1)`` (half-open) of the foreground.

    Foreground is the largest connected component of pixels brighter than ``threshold`` in any
    channel, after the opening of :func:`foreground` against speckle; the box is grown by
    ``margin`` pixels on every side and clipped to the image. An image with no foreground gives
    the whole image.
    """
    image = _as_hwc(image)
    h, w = image.shape[:2]
    fg = foreground(image, threshold)
    if not fg.any():
        return 0, h, 0, w
    rows = np.flatnonzero(fg.any(axis=1))
    cols = np.flatnonzero(fg.any(axis=0))
    y0 = max(int(rows[0]) - margin, 0)
    y1 = min(int(rows[-1]) + 1 + margin, h)
    x0 = max(int(cols[0]) - margin, 0)
    x1 = min(int(cols[-1]) + 1 + margin, w)
    return y0, y1, x0, x1


def roi_crop(
    image: np.ndarray,
    *masks: np.ndarray,
    threshold: float = FOV_THRESHOLD,
    margin: int = 16,
) -> tuple[np.ndarray, ...]:
    """Crop ``image`` and any ``masks`` (same ``H x W``) to :func:`roi_box` of the image.

    Returns ``(image, *masks)`` cropped, e.g. ``img, vessels, fov = roi_crop(img, vessels, fov)``.
    """
    h, w = np.asarray(image).shape[:2]
    for i, m in enumerate(masks):
        if np.asarray(m).shape[:2] != (h, w):
            raise ValueError(f"mask {i} has shape {np.asarray(m).shape[:2]}, the image is {(h, w)}")
    y0, y1, x0, x1 = roi_box(image, threshold=threshold, margin=margin)
    return tuple(np.asarray(a)[y0:y1, x0:x1] for a in (image, *masks))


def _linear_weights(n_out: int, n_in: int) -> sparse.csr_matrix:
    """``n_out x n_in`` linear interpolation matrix, pixel centres aligned (align_corners=False)."""
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    rows = np.repeat(np.arange(n_out), 2)
    cols = np.stack([i0, i1], axis=1).ravel()
    vals = np.stack([1 - frac, frac], axis=1).ravel()
    return sparse.csr_matrix((vals, (rows, cols)), shape=(n_out, n_in))


def _area_weights(n_out: int, n_in: int) -> sparse.csr_matrix:
    """``n_out x n_in`` area-averaging matrix: each output pixel is the mean of the input area
    it covers, fractional pixels weighted by their overlap (an exact box filter)."""
    scale = n_in / n_out
    rows, cols, vals = [], [], []
    for i in range(n_out):
        start, stop = i * scale, (i + 1) * scale
        j0, j1 = int(np.floor(start)), min(int(np.ceil(stop)), n_in)
        for j in range(j0, j1):
            overlap = min(stop, j + 1) - max(start, j)
            if overlap > 1e-12:
                rows.append(i)
                cols.append(j)
                vals.append(overlap / scale)
    return sparse.csr_matrix((vals, (rows, cols)), shape=(n_out, n_in))


def _axis_weights(n_out: int, n_in: int, method: str) -> sparse.csr_matrix:
    # Area averaging only makes sense when shrinking; when enlarging an axis both methods
    # interpolate linearly.
    if method == "area" and n_out < n_in:
        return _area_weights(n_out, n_in)
    return _linear_weights(n_out, n_in)


def resize_image(
    image: np.ndarray,
    size: int | tuple[int, int],
    method: Literal["area", "bilinear"] = "area",
) -> np.ndarray:
    """Resize an ``H x W (x C)`` float image to ``size`` (``int``: square; tuple: ``(h, w)``).

    ``"area"`` averages the input pixels each output pixel covers (no aliasing when
    downscaling, like OpenCV's ``INTER_AREA``) and interpolates linearly along axes that grow;
    ``"bilinear"`` interpolates linearly everywhere. Both are separable sparse matrix products,
    so the result is exact and deterministic. Returns ``float32`` with the input's layout.
    """
    if method not in ("area", "bilinear"):
        raise ValueError(f"unknown resize method {method!r}; expected 'area' or 'bilinear'")
    arr = np.asarray(image)
    squeeze = arr.ndim == 2
    arr = _as_hwc(arr).astype(np.float32, copy=False)
    h, w, c = arr.shape
    oh, ow = _size_hw(size)
    if (oh, ow) == (h, w):
        out = arr.copy()
    else:
        wy = _axis_weights(oh, h, method)
        wx = _axis_weights(ow, w, method)
        # Rows first: (oh x h) @ (h x w*c), then columns on the transposed layout.
        tmp = (wy @ arr.reshape(h, w * c)).reshape(oh, w, c)
        tmp = tmp.transpose(1, 0, 2).reshape(w, oh * c)
        out = (wx @ tmp).reshape(ow, oh, c).transpose(1, 0, 2)
        out = np.ascontiguousarray(out, dtype=np.float32)
    return out[:, :, 0] if squeeze else out


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a mask (``int`` size: square; tuple: ``(h, w)``).

    Output pixel centres are mapped onto the input grid, so labels never blend; ``bool`` in,
    ``bool`` out.
    """
    arr = np.asarray(mask)
    h, w = arr.shape[:2]
    oh, ow = _size_hw(size)
    if (oh, ow) == (h, w):
        return arr.copy()
    ys = np.minimum(((np.arange(oh) + 0.5) * (h / oh)).astype(np.int64), h - 1)
    xs = np.minimum(((np.arange(ow) + 0.5) * (w / ow)).astype(np.int64), w - 1)
    return arr[ys[:, None], xs[None, :]]


def resize_inside(
    values: np.ndarray, inside: np.ndarray, size: int | tuple[int, int]
) -> np.ndarray:
    """Bilinear resize of an ``H x W`` map that holds only where ``inside`` (``bool``, a field of
    view) from those pixels alone: each output pixel is the weighted mean of the inside pixels
    it interpolates, 0 where there are none. A plain resize blends the border's values with
    what lies outside (a vessel probability of 1 at the edge of the FOV came back below 1).
    Returns ``float32``, not masked: the caller holds it to the resized FOV."""
    inside = np.asarray(inside, dtype=bool)  # a 0/255 mask would weigh 255 times
    weight = resize_image(inside.astype(np.float32), size, "bilinear")
    spread = resize_image(np.where(inside, values, 0).astype(np.float32), size, "bilinear")
    return np.divide(spread, weight, out=np.zeros_like(spread), where=weight > 1e-6)


def to_modality_channels(image: np.ndarray, modality: str) -> np.ndarray:
    """Give ``image`` the channel count of ``modality`` (:data:`MODALITY_CHANNELS`).

    X-ray: RGB (e.g. Kermany's JPEGs) becomes one channel by BT.601 luminance. Fundus: a grey
    image is repeated to three channels. An RGBA image drops alpha first. Returns ``float32``
    ``H x W x C``.
    """
    _check_modality(modality)
    arr = _as_hwc(image).astype(np.float32, copy=False)
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    c = arr.shape[2]
    want = MODALITY_CHANNELS[modality]
    if c == want:
        return arr
    if want == 1 and c == 3:
        return np.tensordot(arr, np.asarray(LUMA, np.float32), axes=([2], [0]))[:, :, None].astype(
            np.float32
        )
    if want == 3 and c == 1:
        return np.repeat(arr, 3, axis=2)
    raise ValueError(f"cannot convert a {c}-channel image to {modality} ({want} channels)")


def stretch_contrast(image: np.ndarray, lower: float = 0.5, upper: float = 99.5) -> np.ndarray:
    """Map the image's ``lower``-``upper`` percentile range onto [0, 1], clipping the rest.

    For radiographs whose exposure or 8-bit conversion squeezed the anatomy into a sliver of the
    range (7 of the 247 JSRT images here hold 17-41 grey levels, all above 212 of 255). An image
    of one value is returned as it is. Returns ``float32``.
    """
    lo, hi = np.percentile(image, [lower, upper])
    if hi - lo < 1e-6:
        return np.asarray(image, dtype=np.float32)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def normalize(image: np.ndarray, modality: str) -> np.ndarray:
    """Normalise an image in ``[0, 1]`` for the network.

    Fundus: RGB with ImageNet mean and std. X-ray: one channel, mean 0.5 and std 0.5. Channels
    are first converted with :func:`to_modality_channels`. Returns ``float32`` ``H x W x C``.
    """
    arr = to_modality_channels(image, modality)
    mean, std = (np.asarray(m, dtype=np.float32) for m in MODALITY_STATS[modality])
    return ((arr - mean) / std).astype(np.float32)


# --- raw images ----------------------------------------------------------------------------------
#: Channel counts of a raw image: grey, grey + alpha, RGB, RGBA (alpha is dropped).
IMAGE_CHANNELS = (1, 2, 3, 4)
#: Float images are intensities in [0, 1]. Up to this far outside (resampling overshoots) they
#: are clipped to it, in memory and in files alike; further out an array is refused (0-255
#: values stored as floats, or a standardised image, gave embeddings and masks of nonsense
#: without a word) and a file's values are stretched to [0, 1] (other units).
FLOAT_SLACK = 0.5
#: Integer types scaled by their maximum, as :func:`~localdisc.data.io.read_image` scales 8- and
#: 16-bit files. Wider or signed integers have no known full scale (Pillow's 32-bit "I" mode
#: holds 12- or 16-bit data), so they are refused rather than guessed.
SCALED_INTEGERS = (np.uint8, np.uint16)


def as_raw_image(image: np.ndarray | torch.Tensor, name: str = "image") -> np.ndarray:
    """One raw image as ``float32`` ``H x W x C`` (C = 1 or 3) in [0, 1]: the one rule of every
    function that takes an image in memory (:meth:`LDModel.embed`, :meth:`LDModel.cluster`,
    :meth:`~localdisc.models.segmenter.Segmenter.predict`,
    :func:`~localdisc.tasks.similarity.similarity`, :class:`~localdisc.tasks.localize.Localizer`).

    - Layout: ``H x W``, ``H x W x C`` or ``C x H x W``, C = 1 to 4 (alpha dropped), as a numpy
      array (or anything ``np.asarray`` takes, a PIL image too) or a torch tensor. The channel
      axis is the one of size 1 to 4; when both ends are, the last for numpy and the first for
      tensors (the layouts of Pillow and of torchvision). A batch ``[N, C, H, W]`` is refused:
      the network itself takes batches (``model(normalize(x, modality))``).
    - Values: ``uint8`` are divided by 255 and ``uint16`` by 65535 (as ``read_image`` reads such
      files), ``bool`` give 0 and 1, floats are clipped to [0, 1] (within :data:`FLOAT_SLACK` of
      it). Other integer types are refused: their full scale is unknown.

    ``name`` names the image in errors (:class:`~localdisc.errors.InputError`).
    """
    import torch  # here: reading data sets needs no torch

    channels_first = isinstance(image, torch.Tensor)
    arr = _tensor_values(image, name) if channels_first else np.asarray(image)
    arr = _channels_last(arr, name, channels_first)
    if arr.shape[2] in (2, 4):
        arr = arr[..., :-1]  # alpha
    return raw_intensities(arr, name)


def raw_intensities(values: np.ndarray | torch.Tensor, name: str = "image") -> np.ndarray:
    """Pixel values, of any shape, as ``float32`` intensities in [0, 1] by :func:`as_raw_image`'s
    rule (``uint8`` / 255, ``uint16`` / 65535, ``bool`` 0 and 1, floats within
    :data:`FLOAT_SLACK` of [0, 1]; the rest refused, naming ``name``): its one statement, which
    fine-tuning's image batches (engine.finetune) share, so that a model trains on the
    intensities that prediction later gives it."""
    import torch  # here: reading data sets needs no torch

    arr = _tensor_values(values, name) if isinstance(values, torch.Tensor) else np.asarray(values)
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if arr.dtype in SCALED_INTEGERS:
        return arr.astype(np.float32) / np.float32(np.iinfo(arr.dtype).max)
    if arr.dtype.kind in "iu":
        raise InputError(
            f"{name} is {arr.dtype}, whose full scale is unknown: give uint8 (0-255), uint16 "
            "(0-65535) or floats in [0, 1] (e.g. image / 4095 for 12-bit values)"
        )
    if arr.dtype.kind != "f":
        raise InputError(f"{name} is {arr.dtype}, not an image of numbers")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InputError(f"{name} contains NaN or infinite values")
    if lo < -FLOAT_SLACK or hi > 1 + FLOAT_SLACK:
        raise InputError(
            f"{name} holds values in [{lo:g}, {hi:g}], not intensities in [0, 1]: scale it first "
            "(8-bit values: / 255; 16-bit: / 65535), or pass the uint8 or uint16 array itself"
        )
    # An overshoot clipped, as read_image clips a float file's: the network sees one image
    # alike from a file and from memory.
    return np.clip(arr, 0.0, 1.0) if lo < 0.0 or hi > 1.0 else arr


def _tensor_values(tensor: torch.Tensor, name: str) -> np.ndarray:
    """A tensor's values as a numpy array (on the CPU)."""
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point():
        tensor = tensor.float()  # bfloat16 and half have no numpy counterpart here
    try:
        return tensor.numpy()
    except TypeError as exc:
        raise InputError(f"{name}: a {tensor.dtype} tensor cannot be read; give uint8, uint16 "
                         "or float values") from exc  # fmt: skip


def _channels_last(arr: np.ndarray, name: str, channels_first: bool) -> np.ndarray:
    """``arr`` as ``H x W x C`` (see :func:`as_raw_image` for which axis holds the channels)."""
    shape = " x ".join(map(str, arr.shape)) or "a scalar"
    if arr.ndim == 4:
        raise InputError(
            f"{name} is {shape}, a batch: this takes one image at a time (H x W, H x W x C or "
            "C x H x W). For a batch call the network itself: model(normalize(x, modality)), "
            "normalize from localdisc.data.views, sides a multiple of 16"
        )
    if arr.ndim == 2:
        arr = arr[..., None]
    elif arr.ndim == 3:
        first, last = arr.shape[0] in IMAGE_CHANNELS, arr.shape[2] in IMAGE_CHANNELS
        if first and (channels_first or not last):
            arr = arr.transpose(1, 2, 0)
        elif not last:
            raise InputError(f"{name} is {shape}: which axis holds the channels? Expected "
                             "H x W x C or C x H x W with C = 1, 3 or 4")  # fmt: skip
    else:
        raise InputError(f"{name} is {shape}: expected one image, H x W, H x W x C or C x H x W")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{name} is {shape}: an image without pixels")
    return arr
