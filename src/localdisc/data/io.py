"""Reading images and masks from every file format medical-imaging users hand us.

:func:`read_image` returns a float32 array in [0, 1] of shape H x W x C (C = 1 or 3) plus an
:class:`ImageMeta`; :func:`read_mask` returns a bool H x W array; :func:`read_image_meta` the
:class:`ImageMeta` alone, from the file's header where its format allows (the size and pixel
spacing of large images without decoding them). They decide the decoder by the file's content
where it can be sniffed (a JPEG named ``.png`` is read as a JPEG) and by suffix where it cannot
(headerless JSRT ``.IMG``). Bad input never escapes as a raw library exception:
every failure is an :class:`~localdisc.errors.ImageReadError` naming the file.

Supported: PNG (an animated one: its first frame), JPEG, BMP, GIF (first frame), PPM/PGM/PBM
(8 and 16 bit; also gzipped as ``.ppm.gz``/``.pgm.gz``, as STARE ships them), TIFF (first page;
tifffile, falling back to Pillow), DICOM (needs the optional ``pydicom``; first frame), JSRT raw
``.IMG`` and NumPy ``.npy``; :attr:`ImageMeta.frames` counts the frames of a file that holds
several. DICOM files named without a suffix, as PACS exports name them (``IM0001``, or their
UID ``1.2.840.113619.2.55.3.4711``, whose last part is no suffix), are taken by their content
(``DICM`` at byte 128).

Size guard: images with more than ``max_pixels`` pixels (H x W) are refused from the header,
before any pixel is decoded. The limit is, in order of precedence, the ``max_pixels`` argument,
the value given to :func:`set_max_pixels`, the environment variable ``LOCALDISC_MAX_PIXELS``, or
:data:`MAX_PIXELS`.

Value conventions:

* unsigned integer samples are divided by their full-scale value: ``2**bits - 1`` where the true
  bit depth is known (12-bit JSRT: 4095; a 16-bit PGM with maxval 4095: 4095), otherwise the
  dtype maximum (16-bit PNG/TIFF: 65535), so 16-bit range is preserved for grey PNGs, 16-bit
  TIFFs (any channel count), 16-bit PGM/PPM and DICOM. Exception: 16-bit *colour* PNGs (RGB or
  RGBA) are reduced to 8 bits per sample by Pillow, the only PNG decoder among the
  dependencies, and their :class:`ImageMeta` says ``bit_depth=8``; save such images as 16-bit
  TIFF to keep their precision;
* signed integers without negative values are divided by the dtype maximum; with negative values
  they are min-max scaled;
* floats must be finite; they are clipped to [0, 1] within 0.5 of it (resampling overshoot, as
  an array in memory is) and min-max scaled further out (a constant image there becomes all
  zeros);
* alpha is dropped from images (RGBA -> RGB, LA -> L; :func:`read_mask` reads it where the
  colour is constant); palette images become RGB, or grey when the palette is grey; a
  MINISWHITE TIFF is inverted for display (not in :func:`read_mask`); EXIF orientation is
  ignored so that images stay aligned with their masks (:attr:`ImageMeta.orientation` says
  where a file has one).
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import re
import struct
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from localdisc.data.preprocess import FLOAT_SLACK
from localdisc.errors import ImageReadError, ReaderSetupError

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "SPACING_SOURCES",
    "ImageMeta",
    "is_image_file",
    "read_image",
    "read_image_meta",
    "read_mask",
    "set_max_pixels",
]

#: Lower-case suffixes :func:`read_image` accepts (double suffixes included).
IMAGE_SUFFIXES: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
    ".pbm",
    ".ppm.gz",
    ".pgm.gz",
    ".dcm",
    ".dicom",
    ".ima",
    ".img",
    ".npy",
)

#: Default pixel limit (H x W), about 268 M pixels: far above any 2-D medical image, far below
#: what a crafted header can claim.
MAX_PIXELS: int = 2**28

MAX_PIXELS_ENV = "LOCALDISC_MAX_PIXELS"

JSRT_SIZE = 2048
JSRT_BITS = 12
#: JSRT's pixel spacing (mm, rows and columns) at its 2048 x 2048: the raw files have no header.
JSRT_SPACING = 0.175

#: :attr:`ImageMeta.spacing_source`'s values: DICOM's top-level PixelSpacing; that of an
#: enhanced multi-frame file's Pixel Measures functional group, shared by its frames or its
#: first frame's; ImagerPixelSpacing divided by the magnification factor (at the patient), or
#: alone (at the detector); JSRT's published spacing.
SPACING_SOURCES: tuple[str, ...] = (
    "PixelSpacing",
    "SharedFunctionalGroupsSequence PixelSpacing",
    "PerFrameFunctionalGroupsSequence PixelSpacing",
    "ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor",
    "ImagerPixelSpacing",
    "JSRT",
)

_GZ_SUFFIXES = (".ppm.gz", ".pgm.gz")
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")  # .ima: Siemens exports
# The index file of a DICOM medium (PS3.10): DICOM content, but no image.
_DICOMDIR = "dicomdir"
_DICM_OFFSET = 128
# Enough to hold any sane netpbm header (comments included) and the DICOM preamble.
_HEAD_BYTES = 65536
# Slack for headers and comments when bounding gzip output.
_GZ_SLACK = 1 << 20
# Pillow formats we let it sniff (its JPEG opener also returns multi-picture "MPO" files).
_PIL_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "PPM", "TIFF")
_PIL_FORMAT_NAMES = {
    "PNG": "png",
    "JPEG": "jpeg",
    "MPO": "jpeg",
    "BMP": "bmp",
    "GIF": "gif",
    "TIFF": "tiff",
}
_WHITESPACE = b" \t\r\n\x0b\x0c"

_max_pixels_override: int | None = None
# Guards our temporary changes to Pillow's module-level settings.
_PIL_LOCK = threading.Lock()

_ORIENTATION_TAG = 274  # EXIF and TIFF Orientation
#: How a viewer that applies an Orientation tag shows the stored pixels.
ORIENTATIONS = {
    2: "mirrored left-right",
    3: "turned 180 degrees",
    4: "mirrored top-bottom",
    5: "transposed (mirrored about the main diagonal)",
    6: "turned 90 degrees clockwise",
    7: "transposed about the other diagonal",
    8: "turned 90 degrees anticlockwise",
}


def _orientation(value: object) -> int | None:
    """An Orientation tag's value where it asks to turn or mirror (2-8); else ``None``."""
    return int(value) if isinstance(value, int) and value in ORIENTATIONS else None


@dataclass(frozen=True)
class ImageMeta:
    """What a file held before conversion to float [0, 1].

    Attributes:
        path: the file read.
        format: the format found by content: ``"png"``, ``"jpeg"``, ``"tiff"``, ``"gif"``,
            ``"bmp"``, ``"ppm"``, ``"pgm"``, ``"pbm"``, ``"dicom"``, ``"jsrt_img"`` or ``"npy"``.
        bit_depth: bits per sample as stored (1, 8, 12 for JSRT, 16, 32, ...).
        height: rows.
        width: columns.
        channels: samples per pixel as stored, alpha included (1, 2, 3 or 4).
        spacing: (row, column) mm per pixel of the file as read (row: between the centres of
            adjacent rows, i.e. along y; column: along x), where the file says it: DICOM's
            PixelSpacing (0028,0030); else, in an enhanced multi-frame file, the PixelSpacing
            of its Pixel Measures functional group (shared, else the first frame's); else
            ImagerPixelSpacing (0018,1164), the spacing at the detector that projection
            radiographs without a calibrated PixelSpacing carry, divided by the
            EstimatedRadiographicMagnificationFactor (0018,1114, source-to-detector over
            source-to-patient distance) where the file gives one of 1 or more: the spacing at the
            patient (DICOM PS3.3 C.8.11.7); without it, the detector's (which includes the
            X-ray magnification: anatomy measures a few per cent smaller); and JSRT's raw
            ``.IMG`` (0.175, 0.175). A value that is not two positive finite numbers (one
            number, text, zero) is ignored, as if absent, as is a factor that is not one
            finite number of 1 or more, so that a malformed header never stops the image being
            read. ``None`` otherwise: PNG's pHYs and TIFF's resolution are dots per inch for
            printing or display, which screenshots and converters set at will, not the size
            of the anatomy in a pixel.
        spacing_source: where ``spacing`` came from, to say it beside a measure: one of
            :data:`SPACING_SOURCES` (``"PixelSpacing"``, ``"ImagerPixelSpacing /
            EstimatedRadiographicMagnificationFactor"``, ``"JSRT"``, ...); ``None`` where
            ``spacing`` is.
        orientation: the EXIF (or TIFF) Orientation tag where it is one of 2-8, i.e. the file
            asks viewers to turn or mirror it (phone photographs do); ``None`` for upright (1)
            or no tag. Not applied: height, width and the pixels are as stored (its masks are
            drawn on those), so points taken in a viewer that applies it are in another frame
            (:func:`orientation_note`).
        frames: the frames the file holds, of which the first is read (:func:`frames_note`):
            a multi-frame DICOM's NumberOfFrames (a cine, a tomosynthesis series); a TIFF's
            pages of the first page's shape that are not reduced-resolution images (a z-stack,
            a time series, an ImageJ or OME stack; not a thumbnail or pyramid level:
            :func:`_tiff_frames`); an animated GIF's or PNG's frames. 1 for the rest (a
            JPEG's embedded previews, MPO, are no frames).
    """

    path: Path
    format: str
    bit_depth: int
    height: int
    width: int
    channels: int
    spacing: tuple[float, float] | None = None
    spacing_source: str | None = None
    orientation: int | None = None
    frames: int = 1


@dataclass
class _Decoded:
    """Pixels as decoded, before conversion: what read_image and read_mask share."""

    pixels: np.ndarray  # H x W or H x W x C (C = 1 or 3), stored values, alpha apart
    scale: float | None  # value meaning "full white"; None: data-driven (floats)
    meta: ImageMeta
    palette: np.ndarray | None = None  # (256, 3) uint8 when pixels are palette indices
    # MINISWHITE TIFF: read_image flips the scaled values for display; read_mask does not
    # (a mask means its stored values: tifffile, scikit-image and ImageJ read them so).
    invert: bool = False
    # H x W alpha (of ``scale``), where the file has one: images drop it, but a mask drawn
    # as an overlay of one colour holds its label there alone.
    alpha: np.ndarray | None = None
    # DICOM: ``pixels`` are windowed to [0, 1] for display, which would turn the labels
    # 0/1/2/3 into 0/.33/.67/1; a mask means its values before the window (and before the
    # MONOCHROME1 flip), so read_mask reads the (values, scale) this gives instead
    # (:func:`_mask_source`); a function, so that read_image does not compute them.
    stored: Callable[[], tuple[np.ndarray, float | None] | None] | None = None


# --------------------------------------------------------------------------- public API


def set_max_pixels(n: int | None) -> None:
    """Set the process-wide pixel limit (H x W) for reads without ``max_pixels``.

    ``None`` restores the default (``LOCALDISC_MAX_PIXELS`` if set, else :data:`MAX_PIXELS`).
    """
    global _max_pixels_override
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n <= 0):
        raise ValueError(f"max_pixels must be a positive integer, got {n!r}")
    _max_pixels_override = n


def is_image_file(path: str | Path) -> bool:
    """Whether :func:`read_image` takes ``path``: a suffix it accepts (case-insensitive), or an
    existing file named without a suffix (or with a number as its last part: a UID) that holds
    DICOM (``DICM`` at byte 128; not a ``DICOMDIR``). Only such names are opened, so that
    listing a folder does not read every other file in it."""
    path = Path(path)
    if _matching_suffix(path) is not None:
        return True
    # Regular files only: opening a named pipe would block.
    if not _may_be_unnamed_dicom(path) or not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            return _is_dicom_head(f.read(_DICM_OFFSET + 4))
    except OSError:  # missing, a folder, unreadable: not an image file
        return False


def read_image(path: str | Path, *, max_pixels: int | None = None) -> tuple[np.ndarray, ImageMeta]:
    """Read an image as float32 H x W x C in [0, 1], C = 1 (grey) or 3 (RGB).

    Args:
        path: the file; the decoder is chosen by content where possible, else by suffix.
        max_pixels: refuse images with more than this many pixels (H x W); see the module doc.

    Raises:
        ImageReadError: the file is missing, unsupported, corrupt, truncated or too large;
            its subclass :class:`~localdisc.errors.ReaderSetupError` where this installation
            or its settings cannot read it (pydicom, or a decoder for the DICOM file's
            compression, is not installed; ``max_pixels`` or ``LOCALDISC_MAX_PIXELS`` is no
            positive integer), whatever the file holds.
    """
    path = Path(path)
    decoded = _decode(path, max_pixels)
    return _to_float_image(path, decoded), decoded.meta


def read_mask(path: str | Path, *, max_pixels: int | None = None) -> np.ndarray:
    """Read a binary mask as a bool H x W array.

    Foreground is decided so that the usual encodings all come out right:

    * grey or RGB (RGB: the brightest channel counts): values in {0, 1} -> value 1;
      exactly two values, one of them 0 (0/255, 0/k) -> non-zero; a label map (integer
      samples, 0 and at most ``_MAX_LABEL_MAP_LEVELS - 1`` other values of which none is
      above the threshold below, where it would read as empty: 0/1/2 class indices, labels
      0..20, 16-bit labels 0/300/600, a 12-bit mask 0/2000/4095 in a 16-bit PNG; or at most
      ``_MAX_LABEL_LEVELS`` levels up to 255 in a 16-bit file) -> non-zero, as for label
      palettes (a map of more levels under half scale, a probability map saved as a mask, is
      empty; the level count alone tells them apart, so a label map of 64 or more labels
      under half scale reads as empty, and a soft map of fewer levels as labels); otherwise
      (anti-aliased or JPEG-compressed masks) -> above half of full scale, 127.5 for values up
      to 255 stored in 16 bits (an anti-aliased 8-bit mask);
    * palette images (GIF/PNG "P"): a grey palette is read as grey (above); with a single
      colour used, or exactly two of which one is dark and one bright, the bright colour
      (brightest channel > 127; DRIVE's second-observer GIFs use near-black (4, 2, 4) and
      near-white, and GIF encoders reorder palettes, so the index alone means nothing there);
      otherwise index != 0 (label palettes, where index 0 is background whatever its colour);
    * alpha (RGBA, LA, PA, a palette's transparency, TIFF alpha, 4-channel ``.npy``): where
      the colour is the same in every pixel and the alpha is not, the alpha decides, by the
      grey rules above (an overlay exported as one colour with alpha = label would read as
      all or nothing);
    * a MINISWHITE TIFF (what ``tifffile.imwrite`` makes of a bool array; ImageJ's masks
      with an inverted LUT) is read as stored (1 or 255 = foreground), as tifffile,
      scikit-image and ImageJ read it, not inverted for display as :func:`read_image` does;
    * DICOM: by the rules above, from its values after the modality LUT (rescale slope and
      intercept: the real labels), of the full scale of its BitsStored (of the LUT's entries)
      passed through it, as a PNG of that bit depth; not through its VOI LUT or window, nor
      min-maxed, nor flipped for MONOCHROME1, as :func:`read_image` shows it (a label map
      0/1/2/3 shown as 0/.33/.67/1 would lose label 1 at half scale; a 0/1 mask with its CT's
      window shows both values under half). An RGB DICOM is read as an RGB PNG.

    Raises:
        ImageReadError: as :func:`read_image`.
    """
    return _mask_of(_mask_source(_decode(Path(path), max_pixels)))


def _mask_source(d: _Decoded) -> _Decoded:
    """What a mask is read from: a DICOM's stored values (:attr:`_Decoded.stored`), the
    decoded pixels of every other file."""
    found = None if d.stored is None else d.stored()
    if found is None:
        return d
    values, scale = found
    return replace(d, pixels=values, scale=scale, stored=None)


def _mask_of(d: _Decoded) -> np.ndarray:
    """:func:`read_mask`'s foreground of a decoded file."""
    colours = d.pixels if d.palette is None else d.palette[d.pixels]
    if d.alpha is not None and _constant(colours) and _levels(d.alpha).size > 1:
        mask = _binarize(d.alpha, d.scale)
    elif d.palette is not None:
        mask = _palette_mask(d.pixels, d.palette)
    else:
        values = d.pixels if d.pixels.ndim == 2 else d.pixels.max(axis=2)
        mask = _binarize(values, d.scale)  # MINISWHITE: stored values, not inverted
    return np.ascontiguousarray(mask, dtype=bool)


#: Least share of a level's pixels that have their 3 x 3 neighbourhood all of that level, for
#: :func:`mask_labels` to take it for a label of a mask read at half scale: a label fills a
#: region, while the levels that anti-aliasing, box or bilinear resizing and JPEG leave at a
#: mask's edges lie in bands a pixel or two wide or in specks (under 4% of their pixels so in the
#: data sets' masks; a vessel of a vessel map has over 25%, a 3 x 3 square 11%).
_LABEL_FILL = 0.1

#: Least step, as a share of the highest grey level, from the levels a thin label is drawn
#: over (:func:`_label_levels`): a map scaled for display of up to 16 labels has steps of a
#: 15th or more, JPEG's ripples of a mask a few grey levels (1% of 255).
_THIN_LABEL_STEP = 0.03


class MaskLabels(NamedTuple):
    """What :func:`mask_labels` finds: ``joined``, the labels :func:`read_mask` takes together
    as one foreground (two or more; else empty); ``background``, the labels (the background's
    level apart) that it reads as background, being under half scale (85 of 0/85/170/255, a
    dark colour of a colour map)."""

    joined: list[str]
    background: list[str]


def mask_labels(path: str | Path, *, max_pixels: int | None = None) -> MaskLabels:
    """The labels of a label map that :func:`read_mask` joins or drops: the grey values (``1``,
    ``2``), palette indices (``index 3``) or colours (``(255, 0, 0)``) above the background's
    (the lowest level, 0 or black). Lungs 1 and heart 2 in one map are trained as one structure,
    their union, and the labels of a map scaled for display (0/85/170/255; 1..9 as 0/28/.../252)
    under half scale, or the dark colours of a colour map, as background, which a command says
    rather than leaving unsaid.

    Where :func:`read_mask` takes every level but the lowest as foreground, by its own rules
    (class indices, a label palette, colours, a mask of one label), those levels are the labels.
    Where it reads at half scale, it takes the file for an anti-aliased or compressed mask, whose
    edges hold levels of their own (0/64/128/191/255 of a 0/255 mask halved by box averaging):
    there only levels that fill a region or draw a thin structure count (:func:`_label_levels`;
    the lowest of them is the background), so that such a mask has one label and a map scaled
    for display its labels (also where halved by box averaging or saved as a JPEG of high
    quality). Both are empty for a mask of one label, a soft map (floats between its levels;
    more than :data:`_MAX_LABEL_MAP_LEVELS` levels: blurred, resampled far up) and a palette
    read by its colours (one dark, one bright: DRIVE's second observer, whose index is no
    label).

    Raises:
        ImageReadError: as :func:`read_image`.
    """
    d = _mask_source(_decode(Path(path), max_pixels))
    mask = _mask_of(d)  # decoded once
    name: Callable[[int], str] = "{}".format
    label_palette = d.palette is not None and not _is_grey(d.palette[np.unique(d.pixels)])
    ids = True  # values that name labels (indices, colours), not grey levels
    if label_palette:
        values, name = d.pixels, "index {}".format
    elif d.pixels.ndim == 3 and not _is_grey(d.pixels.reshape(-1, d.pixels.shape[2])):
        values, colours = _colour_ids(d.pixels)
        name = [str(tuple(int(c) for c in colour)) for colour in colours].__getitem__
    else:
        ids = False
        values = d.palette[:, 0][d.pixels] if d.palette is not None else d.pixels
        values = values if values.ndim == 2 else values[..., 0]
    levels = _levels(values)
    if values.dtype.kind not in "iu" and not bool((levels == np.round(levels)).all()):
        return MaskLabels([], [])  # a soft map of floats: no labels
    if not 1 < levels.size <= _MAX_LABEL_MAP_LEVELS:
        return MaskLabels([], [])  # one level; or a soft map, a blurred or resampled mask
    # Read at half scale: only levels that fill a region or draw a thin structure are labels
    # (no edge of an anti-aliased or compressed mask), the lowest of them the background (0;
    # the 3 of a near-black background that JPEG specks with 0-2).
    every = np.array_equal(mask, values != levels[0])
    step = 1 if ids else max(1, _THIN_LABEL_STEP * float(levels[-1]))
    labels = levels[1:] if every else _label_levels(values, step)[1:]
    is_kept = np.isin(labels, _levels(values[mask]))
    kept, dropped = labels[is_kept], labels[~is_kept]
    if label_palette:
        # read_mask reads every index of a label palette but 0 as foreground; where it decides
        # by the colours (one colour, or one dark and one bright), the dark one is background
        # at whatever index: no index of a palette is a label read as background.
        dropped = dropped[:0]
    joined = [name(int(label)) for label in kept] if kept.size > 1 else []
    return MaskLabels(joined, [name(int(label)) for label in dropped])


def _label_levels(values: np.ndarray, step: float) -> np.ndarray:
    """The levels of ``values`` (H x W) that are labels, not the edges an anti-aliased, resized
    or JPEG-compressed mask holds between its levels: those that fill a region (at least
    :data:`_LABEL_FILL` of their pixels with their 3 x 3 neighbourhood all of their level; the
    image's border pixels, lacking one, none), and thin ones drawn over lower levels (a contour,
    a line, spots of 2 x 2): most of their pixels have two neighbours of their level (no
    specks), none higher (an edge lies between a lower and a higher level; JPEG's ripples of a
    level lie below it) and the highest lower one a level that fills a region (not an edge's:
    a resized line of 255 has 64 beside it) at least ``step`` below (JPEG's ripples of the
    background lie a few grey levels above it). A level within ``step`` of the next one found
    is taken for its ripple. Thin labels are looked for only in a map with two labels or more
    that fill regions (a binary mask's resized lines are lines of their own levels). So a thin
    label beside one filling label, one bordering a higher one (a 1-pixel rim of a label around
    another, a line across a higher label), or one whose edges fill no region once halved or
    compressed is not named."""
    height, width = values.shape
    if min(height, width) < 3:
        return values.ravel()[:0]
    centre = values[1:-1, 1:-1]
    wide = centre.astype(np.float64)
    inner = np.ones(centre.shape, dtype=bool)
    alike = np.zeros(centre.shape, dtype=np.int8)  # of the 3 x 3 neighbourhood, itself too
    higher = np.zeros(centre.shape, dtype=bool)
    below = np.full(centre.shape, -np.inf)  # the highest neighbouring level under it
    for dy in range(3):
        for dx in range(3):
            near = values[dy : dy + height - 2, dx : dx + width - 2]
            inner &= near == centre
            alike += near == centre
            higher |= near > centre
            below = np.maximum(below, np.where(near < centre, near, -np.inf))
    levels, counts = np.unique(values, return_counts=True)

    def share(of: np.ndarray) -> np.ndarray:
        """The share of each level's pixels where ``of`` holds."""
        found, found_counts = np.unique(centre[of], return_counts=True)
        out = np.zeros(levels.size)
        at = np.searchsorted(levels, found)
        out[at] = found_counts / counts[at]
        return out

    fills = share(inner) >= _LABEL_FILL
    # Drawn over a label (a level that fills a region), not over an edge's level (the 64 that
    # resizing leaves beside a line of 255).
    over_label = np.isin(below, levels[fills])
    thin = share((alike >= 3) & ~higher & (wide - below >= step) & over_label) >= 0.5
    # Only in a map of two labels or more that fill regions: a binary mask's thin structures,
    # resized, leave lines of their own levels (128 and 255 of 1-pixel lines shrunk by 0.6).
    found = levels[fills | (thin & (fills.sum() > 2))]
    # A level within ``step`` of the next one found is that one's ripple (254 of 255).
    apart = np.append(np.diff(found.astype(np.float64)) >= step, True)
    return found[apart[: found.size]]  # none found: none


def _colour_ids(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An H x W array of ints that tells the colours of ``pixels`` (H x W x C) apart, ordered
    as the colours (black, where used, lowest), and the colours by id."""
    colours, ids = np.unique(pixels.reshape(-1, pixels.shape[2]), axis=0, return_inverse=True)
    return ids.reshape(pixels.shape[:2]), colours


def _constant(pixels: np.ndarray) -> bool:
    """Whether every pixel holds the same sample(s) (index, grey or colour)."""
    return bool((pixels == pixels[0, 0]).all())


def read_image_meta(path: str | Path, *, max_pixels: int | None = None) -> ImageMeta:
    """The :class:`ImageMeta` that :func:`read_image` returns for ``path`` (its height and width
    are those of the array), read from the header alone where the format allows, so that
    checking the size or the pixel spacing of many large images decodes none of them.

    From the header: DICOM (its pixel data skipped over, not read; the spacing as
    :func:`read_image` finds it), JSRT ``.IMG`` (its size is fixed), TIFF that tifffile reads,
    and what Pillow opens (PNG, JPEG, BMP, GIF, PPM/PGM/PBM) but palette and 32-bit ``"I"``
    images, whose channels and bit depth the pixels decide. Decoded: those, gzipped netpbm,
    ``.npy`` and TIFF layouts that tifffile leaves to Pillow.

    Raises:
        ImageReadError: as :func:`read_image` for whatever the header shows (a missing or
            unsupported file, DICOM without pixel data, an image too large ...); damaged pixel
            data may pass here and fail only in :func:`read_image`.
    """
    path = Path(path)
    limit, head, kind, decoder = _sniff(path, max_pixels)
    header = _HEADER_READERS.get(decoder)
    meta = None if header is None else _guarded(path, kind, header, head, limit)
    if meta is None:  # the format (or this file's layout) needs its pixels
        decoded = _guarded(path, kind, decoder, head, limit)
        _validate(path, decoded, limit)
        meta = decoded.meta
    return meta


#: What :func:`orientation_note` says follows from the tag, by what the command does with the
#: pixels as stored (``{frame}``: the first such image's width and height).
_ORIENTATION_CONSEQUENCES = {
    "points": "points are (x, y) in the pixels as stored, {frame}; points taken in a viewer that "
    "applies the tag are in another frame",
    "masks": "masks are written in the pixels as stored, {frame}; a viewer that applies the tag "
    "shows the image turned against its mask",
    "pool": "pre-training takes the pixels as stored, {frame}, not turned as a viewer that "
    "applies the tag shows them",
    "dataset": "masks are read against the pixels as stored, {frame}: a mask made by a program "
    "from them fits, and one drawn on the image as a viewer that applies the tag shows it lies "
    "turned against its image; save such images as viewers show them (without the tag), or "
    "turn their masks back",
}


def orientation_note(metas: Sequence[ImageMeta], outputs: str = "points") -> str | None:
    """A line saying that images carry an Orientation tag localdisc does not apply (``None``
    where none of ``metas`` does). ``outputs``: what the command takes or writes in the pixels
    as stored, ``"points"`` (a viewer that applies the tag shows another frame: a phone
    photograph turned 90 degrees has (x, y) swapped), ``"masks"`` (written without the tag: a
    viewer that applies it shows the image turned against its mask), ``"pool"`` (pre-training
    learns from the pixels as stored) or ``"dataset"`` (a labelled set, whose masks are read
    against the pixels as stored: one drawn in a viewer that turns the image does not fit)."""
    if outputs not in _ORIENTATION_CONSEQUENCES:
        shown = ", ".join(repr(k) for k in _ORIENTATION_CONSEQUENCES)
        raise ValueError(f"outputs must be one of {shown}, got {outputs!r}")
    turned = [m for m in metas if m.orientation is not None]
    if not turned:
        return None
    first = turned[0]
    frame = f"{first.width} wide and {first.height} high there"
    consequence = _ORIENTATION_CONSEQUENCES[outputs].format(frame=frame)
    return (
        f"{len(turned)} image(s) carry an EXIF orientation that localdisc does not apply (first: "
        f"{first.path}, {first.orientation}: viewers show it {ORIENTATIONS[first.orientation]}): "
        + consequence
    )


def frames_note(metas: Sequence[ImageMeta]) -> str | None:
    """A line saying that files hold several frames, of which only the first is read
    (``None`` where none of ``metas`` does): a multi-frame DICOM, a TIFF stack or an animated
    GIF was read as its first frame without a word."""
    stacked = [m for m in metas if m.frames > 1]
    if not stacked:
        return None
    first = stacked[0]
    return (
        f"{len(stacked)} file(s) hold several frames, and localdisc reads the first of each "
        f"(first: {first.path}, {first.frames} frames): a stack, series, cine or animation is not "
        "a single image; save the frame you mean as a file of its own"
    )


def header_notes(metas: Sequence[ImageMeta], outputs: str = "points") -> list[str]:
    """What a command says of its images' headers: :func:`orientation_note` (``outputs`` as
    there) and :func:`frames_note`, those that apply. :func:`read_image_meta` gives them from
    the headers alone for most files (:func:`header_metas`); :func:`read_image` with its
    pixels."""
    notes = (orientation_note(metas, outputs), frames_note(metas))
    return [note for note in notes if note is not None]


#: An image whose brightest value is below this (of [0, 1]) uses under 1/8 of the range.
DIM_BELOW = 1 / 8


def dim_note(peaks: Sequence[tuple[str, float]], what: str, consequence: str) -> str | None:
    """A line naming the images of ``peaks`` (name, brightest value in [0, 1]) that use under
    1/8 of the intensity range (``None`` where none does): 12-bit data in a 16-bit file reads
    as 0 to 1/16 (16-bit values are scaled by 65535; the bits a PNG or TIFF uses are not
    stored), so the network sees a near-black image, unlike the same data stored in 8 bits.
    ``what`` names the images (``"pool image(s)"``); ``consequence`` says what follows. The
    cause is stated, not asked: a dark 8-bit image is dim too, and its bit depth is not known
    here."""
    dim = [name for name, peak in peaks if peak < DIM_BELOW]
    if not dim:
        return None
    shown = ", ".join(dim[:3]) + (", ..." if len(dim) > 3 else "")
    return (
        f"{len(dim)} {what} use under 1/8 of the intensity range ({shown}): {consequence}; "
        "rescale them to the full range (12-bit data in a 16-bit file reads so)"
    )


def header_metas(paths: Iterable[Path]) -> list[ImageMeta]:
    """The headers (:func:`read_image_meta`) of the ``paths`` that can be read (those that
    cannot are left to the reads that follow, which name them or skip them)."""
    metas = []
    for path in paths:
        with suppress(ImageReadError):
            metas.append(read_image_meta(path))
    return metas


# --------------------------------------------------------------------------- dispatch


def write_png(path: str | Path, array: np.ndarray) -> Path:
    """Write a ``uint8`` H x W (x C) array as PNG, atomically (temp file + rename)."""
    from localdisc.engine.checkpoint import atomic_write_bytes

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def _may_be_unnamed_dicom(path: Path) -> bool:
    """A name PACS exports give DICOM files: no suffix (``IM0001``), or a UID whose last part
    reads as one (``1.2.840.113619.2.55.3.4711``); not hidden, not a ``DICOMDIR``."""
    name = path.name
    suffix = path.suffix[1:]
    return (
        not name.startswith(".")
        and name.lower() != _DICOMDIR
        and (suffix == "" or suffix.isdigit())
    )


def _is_dicom_head(head: bytes) -> bool:
    return head[_DICM_OFFSET : _DICM_OFFSET + 4] == b"DICM"


def _matching_suffix(path: Path) -> str | None:
    name = path.name.lower()
    # Longest first so that ".ppm.gz" wins over a hypothetical ".gz".
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return None


def _resolve_limit(path: Path, max_pixels: int | None) -> int:
    if max_pixels is not None:
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
            raise ReaderSetupError(
                path, f"max_pixels must be a positive integer, got {max_pixels!r}"
            )
        return max_pixels
    if _max_pixels_override is not None:
        return _max_pixels_override
    env = os.environ.get(MAX_PIXELS_ENV)
    if env:
        try:
            value = int(env.replace("_", ""))
        except ValueError:
            value = 0
        if value <= 0:
            raise ReaderSetupError(
                path, f"environment variable {MAX_PIXELS_ENV}={env!r} is not a positive integer"
            )
        return value
    return MAX_PIXELS


def _check_pixels(path: Path, width: int, height: int, limit: int) -> None:
    """Refuse absurd or over-limit sizes before anything is decoded."""
    if width <= 0 or height <= 0:
        raise ImageReadError(path, f"invalid image size {width}x{height}")
    n = width * height
    if n > limit:
        raise ImageReadError(
            path,
            f"image is {width}x{height} = {n:,} pixels, over the limit of {limit:,} pixels "
            "(a guard against decompression bombs); raise it with read_image(..., max_pixels=N), "
            f"localdisc.data.io.set_max_pixels(N) or the environment variable {MAX_PIXELS_ENV}=N",
        )


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= 300 else text[:297] + "..."


def _decode(path: Path, max_pixels: int | None) -> _Decoded:
    """Check the path, sniff the content and run the right decoder."""
    limit, head, kind, decoder = _sniff(path, max_pixels)
    decoded = _guarded(path, kind, decoder, head, limit)
    _validate(path, decoded, limit)
    return decoded


def _sniff(path: Path, max_pixels: int | None) -> tuple[int, bytes, str, Any]:
    """Check the path and read its head: the pixel limit, the head, and the format's name and
    decoder (:func:`_choose_decoder`)."""
    limit = _resolve_limit(path, max_pixels)
    if not path.exists():
        raise ImageReadError(path, "file not found")
    if path.is_dir():
        raise ImageReadError(path, "is a directory, not an image file")
    if not path.is_file():
        raise ImageReadError(path, "not a regular file")
    suffix = _matching_suffix(path)
    unnamed = suffix is None and _may_be_unnamed_dicom(path)
    if suffix is None and not unnamed:
        if path.name.lower() == _DICOMDIR:
            raise ImageReadError(path, "a DICOMDIR is the index of a DICOM medium, not an image")
        shown = "".join(path.suffixes[-2:]) if path.suffix.lower() == ".gz" else path.suffix
        raise ImageReadError(
            path, f"unsupported file type {shown or '(no suffix)'!r}; {_SUPPORTED}"
        )
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES)
    except OSError as exc:
        raise ImageReadError(path, f"cannot open: {_describe(exc)}") from exc
    if unnamed and not _is_dicom_head(head):
        shown = path.suffix or "(no suffix)"
        raise ImageReadError(
            path,
            f"unsupported file type {shown!r}: files named without a suffix (or with a "
            "number as its last part) are read only when they hold DICOM (DICM at byte 128); "
            + _SUPPORTED,
        )
    if not head:
        raise ImageReadError(path, "file is empty (0 bytes)")
    if head.startswith(_LFS_POINTER):  # what a clone without git-lfs holds in an image's place
        raise ImageReadError(
            path,
            "a Git LFS pointer, not the image: its repository was cloned without the LFS files "
            "(run `git lfs pull` there)",
        )
    kind, decoder = _choose_decoder(path, suffix, head)
    return limit, head, kind, decoder


def _guarded(path: Path, kind: str, reader: Any, head: bytes, limit: int) -> Any:
    """``reader(path, head, limit)`` (a decoder, or a header reader), whatever it raises on bad
    input turned into an :class:`ImageReadError` naming ``path``."""
    try:
        return reader(path, head, limit)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"image too large: {exc}") from exc
    except UnidentifiedImageError as exc:
        damaged = _damaged(path, head)
        raise ImageReadError(
            path, damaged or "content is not a PNG, JPEG, BMP, GIF, PPM/PGM/PBM or TIFF image"
        ) from exc
    except Exception as exc:  # decoders raise anything from OSError to struct.error on bad input
        reason = f"cannot decode as {kind}: {_describe(exc)}"
        raise ImageReadError(path, _with_damage(path, head, reason)) from exc


#: The first line of a Git LFS pointer file (git-lfs docs/spec.md).
_LFS_POINTER = b"version https://git-lfs.github.com/spec/"

#: TIFF's and BigTIFF's signatures, little- and big-endian.
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: Signatures of the formats Pillow and tifffile read: a file that starts with one and cannot
#: be decoded is most likely cut short (an interrupted download), which the decoders rarely say.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"\xff\xd8\xff", "JPEG"),
    *((magic, "TIFF") for magic in _TIFF_MAGIC),
)  # fmt: skip


#: Words of a decoder's reason for a whole file it cannot read (a codec not installed, a
#: variant not supported): no truncation to suggest then.
_NOT_DAMAGE = ("truncat", "imagecodecs", "requires ", "not supported", "cannot handle")


def _with_damage(path: Path, head: bytes, reason: str, last: str | None = None) -> str:
    """``reason`` led by :func:`_damaged`'s words where the decoder's (``last``: the last
    decoder's, where several tried) say neither truncated nor a missing codec or unsupported
    variant."""
    lower = (reason if last is None else last).lower()
    damaged = "" if any(word in lower for word in _NOT_DAMAGE) else _damaged(path, head)
    return f"{damaged} ({reason})" if damaged else reason


def _damaged(path: Path, head: bytes) -> str:
    """What to say of a file that starts as an image format and cannot be decoded (``""``
    where it does not start as one)."""
    for signature, name in _SIGNATURES:
        if head.startswith(signature):
            try:
                size = f" ({path.stat().st_size:,} bytes)"
            except OSError:
                size = ""
            return (
                f"starts as a {name} file but cannot be decoded: truncated, damaged or of a "
                f"variant the decoders do not read{size}"
            )
    return ""


_SUPPORTED = "supported: " + ", ".join(sorted(IMAGE_SUFFIXES))


def _choose_decoder(path: Path, suffix: str | None, head: bytes) -> tuple[str, Any]:
    if suffix in _GZ_SUFFIXES:
        if not head.startswith(b"\x1f\x8b"):
            raise ImageReadError(path, f"not gzip data although the name ends in {suffix!r}")
        return "gzipped netpbm", _decode_gzip_netpbm
    if head.startswith(b"\x1f\x8b"):
        raise ImageReadError(
            path, "file is gzip-compressed; only names ending in .ppm.gz or .pgm.gz are unpacked"
        )
    if head.startswith(b"\x93NUMPY"):
        return "npy", _decode_npy
    if _is_dicom_head(head):
        return "DICOM", _decode_dicom
    if head[:4] in _TIFF_MAGIC:
        return "TIFF", _decode_tiff
    # Headerless formats cannot be sniffed: trust the suffix. (12-bit raw data can never start
    # with any of the magic numbers above, so sniffing first is safe for JSRT.)
    if suffix == ".img":
        return "JSRT raw .IMG", _decode_jsrt
    if suffix in _DICOM_SUFFIXES:
        return "DICOM", _decode_dicom
    if suffix == ".npy":
        return "npy", _decode_npy
    return "image", _decode_pil_file


def _validate(path: Path, d: _Decoded, limit: int) -> None:
    """Last line of defence against decoders returning something other than one image."""
    px = d.pixels
    if px.ndim not in (2, 3) or (px.ndim == 3 and px.shape[2] not in (1, 3)):
        raise ImageReadError(path, f"decoded to an unexpected shape {px.shape}")
    _check_pixels(path, int(px.shape[1]), int(px.shape[0]), limit)
    if px.dtype.kind not in "biuf":
        raise ImageReadError(path, f"decoded to unsupported sample type {px.dtype}")
    if px.dtype.kind == "f" and not np.isfinite(px).all():
        raise ImageReadError(path, "image contains NaN or infinite values")
    if d.alpha is not None and d.alpha.shape != px.shape[:2]:
        raise ImageReadError(path, f"decoded alpha of shape {d.alpha.shape} for {px.shape}")


# --------------------------------------------------------------------------- Pillow


@contextmanager
def _pil_settings(
    *, no_pixel_limit: bool = False, strict_truncation: bool = False
) -> Iterator[None]:
    """Temporarily adjust Pillow's process-wide settings, under a lock.

    Pillow's own decompression-bomb limit would refuse images our (possibly higher) limit
    allows, so it is lifted while a header is parsed; we then check the size ourselves before
    decoding. If someone set ``ImageFile.LOAD_TRUNCATED_IMAGES``, it is switched off while we
    decode, because a truncated file must be an error, not a half-grey image.
    """
    with _PIL_LOCK:
        saved_limit = Image.MAX_IMAGE_PIXELS
        saved_truncated = ImageFile.LOAD_TRUNCATED_IMAGES
        if no_pixel_limit:
            Image.MAX_IMAGE_PIXELS = None
        if strict_truncation:
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved_limit
            ImageFile.LOAD_TRUNCATED_IMAGES = saved_truncated


def _pil_load(im: Image.Image) -> None:
    # Some plugins (TIFF) check Pillow's bomb limit again when loading; our own limit has been
    # checked already. Hold the lock only in these rare cases, and when someone enabled
    # truncated loading, so that decoding in threads stays parallel otherwise.
    width, height = im.size
    pil_limit = Image.MAX_IMAGE_PIXELS
    if ImageFile.LOAD_TRUNCATED_IMAGES or (pil_limit is not None and width * height > pil_limit):
        with _pil_settings(no_pixel_limit=True, strict_truncation=True):
            im.load()
    else:
        im.load()


def _decode_pil_file(path: Path, head: bytes, limit: int) -> _Decoded:
    if head[:2] in (b"P5", b"P6"):
        header = _parse_netpbm_header(head)
        if header[3] > 255:
            with open(path, "rb") as f:
                return _decode_netpbm16(path, header, f, limit)
    return _decode_pil(path, path, limit, _PIL_FORMATS)


def _header_pil_file(path: Path, head: bytes, limit: int) -> ImageMeta | None:
    """:func:`_decode_pil_file`'s meta from the header (``None``: the pixels decide it)."""
    if head[:2] in (b"P5", b"P6"):
        header = _parse_netpbm_header(head)
        if header[3] > 255:
            return _netpbm16_meta(path, header, limit)
    with _open_pil(path, path, limit, _PIL_FORMATS) as im:
        layout = _pil_layout(im)
        if layout is None:
            return None
        orientation = _pil_orientation(im)
        if orientation is None and im.format == "PNG":
            orientation = _png_late_orientation(path)
        meta = _pil_meta(path, im, *layout, orientation)
        return replace(meta, frames=_pil_frames(im))  # last: it may seek through the file


@contextmanager
def _open_pil(
    path: Path, source: Path | BinaryIO, limit: int, formats: tuple[str, ...]
) -> Iterator[Image.Image]:
    """A Pillow image of ``source`` opened (its header read, no pixels) and its size checked."""
    with _pil_settings(no_pixel_limit=True):
        im = Image.open(source, formats=list(formats))
    try:
        _keep_tiff_as_stored(im)
        width, height = im.size
        _check_pixels(path, width, height, limit)
        yield im
    finally:
        im.close()


def _keep_tiff_as_stored(im: Image.Image) -> None:
    """Keep Pillow from applying a TIFF's Orientation tag, as no other reader here does (the
    pixels as stored: their masks are drawn on those). Pillow swaps such an image's size on
    opening (5-8: a palette TIFF then decoded into the swapped frame came out scrambled) and
    transposes it on load (``exif_transpose`` in ``load_end``, which reads ``getexif()``)."""
    tags = getattr(im, "tag_v2", None)
    if tags is None or _orientation(tags.get(_ORIENTATION_TAG)) is None:
        return
    im._size = im._tile_size  # the stored width and height
    untagged = Image.Exif()
    untagged._loaded = True  # getexif() returns it as read: no Orientation to apply
    im._exif = untagged


def _decode_pil(
    path: Path, source: Path | BinaryIO, limit: int, formats: tuple[str, ...]
) -> _Decoded:
    with _open_pil(path, source, limit, formats) as im:
        # Before the pixels, as the header read sees it (Pillow's TIFF load drops the tag).
        orientation = _pil_orientation(im)
        _pil_load(im)
        if orientation is None:  # a PNG's eXIf chunk after the pixels is read on loading
            orientation = _pil_orientation(im)
        decoded = _from_pil(path, im, orientation)
        # After the pixels are copied out: counting seeks through the frames.
        decoded.meta = replace(decoded.meta, frames=_pil_frames(im))
        return decoded


def _pil_frames(im: Image.Image) -> int:
    """The frames of an opened Pillow image that are images of their own: an animated GIF's or
    PNG's, a multi-page TIFF's (read through Pillow where tifffile cannot open it). Not a
    JPEG's (MPO: a phone's preview or depth map beside the photograph). Counting them reads
    the frames' headers (a GIF's: it skips over each frame's data), not their pixels; a file
    whose later frames are damaged counts 1, as a note is no reason to refuse its first."""
    if im.format not in ("GIF", "PNG", "TIFF"):
        return 1
    try:
        return max(1, int(getattr(im, "n_frames", 1)))
    except Exception:
        return 1


def _pil_layout(im: Image.Image) -> tuple[int, int] | None:
    """(bits per sample, channels) of an opened Pillow image as :class:`ImageMeta` gives them,
    from its mode alone; ``None`` where the pixels decide them (a palette: grey or colour by the
    colours used; ``"I"``: 16 or 32 bit by the values)."""
    mode = im.mode
    if mode in ("P", "PA", "I"):
        return None
    if mode == "1":
        return 1, 1
    if mode.startswith("I;16"):
        return 16, 1
    if mode == "F":
        return 32, 1
    return 8, len(im.getbands())  # L, LA, RGB, RGBA (alpha counted), CMYK, YCbCr ...


def _pil_meta(
    path: Path, im: Image.Image, bits: int, channels: int, orientation: int | None
) -> ImageMeta:
    fmt = im.format or "?"
    if fmt == "PPM":
        name = {"1": "pbm", "F": "pfm"}.get(im.mode, "ppm" if channels >= 3 else "pgm")
    else:
        name = _PIL_FORMAT_NAMES.get(fmt, fmt.lower())
    width, height = im.size
    return ImageMeta(path, name, bits, height, width, channels, orientation=orientation)


def _pil_orientation(im: Image.Image) -> int | None:
    """The Orientation tag of an opened Pillow image (no pixel decoded), from what the header
    holds: a TIFF's directory; else the EXIF block (JPEG; a PNG's eXIf chunk where it comes
    before the pixels, or ImageMagick's hex "Raw profile type exif"); else XMP's
    ``tiff:Orientation``. Not ``im.getexif()``: on a PNG without EXIF it decodes every pixel, and
    it warns of malformed blocks, which are a note's matter, never a reason not to read."""
    try:
        tags = getattr(im, "tag_v2", None)
        if tags is not None:
            return _orientation(tags.get(_ORIENTATION_TAG))
        raw = im.info.get("exif")
        profile = im.info.get("Raw profile type exif")
        if not raw and isinstance(profile, str):  # "\nexif\n  LENGTH\nHEX ..."
            raw = bytes.fromhex("".join(profile.split("\n")[3:]))
        if raw:
            return _orientation(_exif_orientation(bytes(raw)))
        xmp = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp") or b""
        xmp = xmp.decode("utf-8", "replace") if isinstance(xmp, bytes) else str(xmp)
        found = re.search(r'tiff:Orientation(?:="|>)([0-9])', xmp)
        return _orientation(int(found.group(1))) if found else None
    except Exception:
        return None


def _png_late_orientation(path: Path) -> int | None:
    """The Orientation of a PNG's eXIf chunk that comes after the pixels (the PNG standard
    allows it; Pillow reads it only on decoding), found by walking the chunk headers."""
    try:
        with open(path, "rb") as f:
            f.seek(8)  # the signature
            after_pixels = False
            while len(head := f.read(8)) == 8:
                length, kind = struct.unpack(">I4s", head)
                if kind == b"IEND":
                    return None
                if kind == b"eXIf" and after_pixels:
                    return _orientation(_exif_orientation(f.read(length)))
                after_pixels |= kind == b"IDAT"
                f.seek(length + 4, 1)  # the data and the CRC
    except Exception:
        return None
    return None


def _exif_orientation(raw: bytes) -> int | None:
    """The Orientation entry of an EXIF block's first directory (IFD0), read alone."""
    data = raw[6:] if raw.startswith(b"Exif\x00\x00") else raw
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None:
        return None
    (first,) = struct.unpack_from(order + "I", data, 4)
    (count,) = struct.unpack_from(order + "H", data, first)
    for k in range(count):
        tag, kind = struct.unpack_from(order + "HH", data, first + 2 + 12 * k)
        if tag == _ORIENTATION_TAG:  # one SHORT (kind 3), held in the entry's value field
            entry = first + 10 + 12 * k
            return struct.unpack_from(order + "H", data, entry)[0] if kind == 3 else None
    return None


def _from_pil(path: Path, im: Image.Image, orientation: int | None) -> _Decoded:
    """Map a loaded Pillow image to samples, full scale and metadata."""
    mode = im.mode
    palette = alpha = None
    scale: float | None = 255.0
    # Palette and "I" images: set below, from the pixels.
    bits, channels = _pil_layout(im) or (8, 1)
    if mode == "1":
        pixels, scale = np.asarray(im, dtype=np.uint8), 1.0
    elif mode == "L":
        pixels = np.asarray(im)
    elif mode in ("LA", "La"):  # La: associated alpha (a TIFF's, through Pillow)
        alpha = np.asarray(im)[..., 1]
        pixels = np.asarray(im)[..., 0]
    elif mode in ("P", "PA"):
        index = np.asarray(im)
        pixels = index if index.ndim == 2 else index[..., 0]
        alpha = index[..., 1] if index.ndim == 3 else _palette_alpha(im, pixels)
        palette = _pil_palette(im)
        used = palette[np.flatnonzero(np.bincount(pixels.ravel(), minlength=256))]
        channels = 1 if _is_grey(used) else 3
    elif mode == "RGB":
        pixels = np.asarray(im)
    elif mode in ("RGBA", "RGBX", "RGBa"):
        alpha = None if mode == "RGBX" else np.asarray(im)[..., 3]  # X: padding
        pixels = np.asarray(im)[..., :3]
    elif mode.startswith("I;16"):
        pixels, scale = np.asarray(im).astype(np.uint16), 65535.0
    elif mode == "I":
        pixels = np.asarray(im)
        # Pillow widens 16-bit data to 32-bit "I" in places; treat in-range data as 16 bit.
        if pixels.size and pixels.min() >= 0 and pixels.max() <= 65535:
            pixels, scale, bits = pixels.astype(np.uint16), 65535.0, 16
        else:
            scale, bits = float(np.iinfo(np.int32).max), 32
    elif mode == "F":
        pixels, scale = np.asarray(im), None
    else:  # CMYK, YCbCr, LAB, HSV, packed 16-bit RGB variants: let Pillow convert
        pixels = np.asarray(im.convert("RGB"))
    invert = _pil_miniswhite(im)
    if invert and mode in ("1", "L"):  # Pillow inverted them for display: back to as stored
        pixels = (1 if mode == "1" else 255) - pixels
    meta = _pil_meta(path, im, bits, channels, orientation)
    if alpha is not None:
        alpha = np.ascontiguousarray(alpha)
    return _Decoded(
        np.ascontiguousarray(pixels), scale, meta, palette=palette, invert=invert, alpha=alpha
    )


def _pil_miniswhite(im: Image.Image) -> bool:
    """Whether Pillow read a MINISWHITE TIFF (photometric 0): it inverts 1- to 8-bit ones as
    it decodes them, not 16-bit or float ones; tifffile's reading keeps all as stored."""
    tags = getattr(im, "tag_v2", None)
    return tags is not None and tags.get(262) == 0 and im.mode in ("1", "L", "I;16", "F")


def _pil_palette(im: Image.Image) -> np.ndarray:
    """The palette as (256, 3) uint8; entries beyond the stored palette are black."""
    out = np.zeros((256, 3), dtype=np.uint8)
    raw = im.getpalette("RGB")
    if raw is None:  # no palette stored: Pillow displays indices as grey levels
        out[:] = np.arange(256, dtype=np.uint8)[:, None]
        return out
    colours = np.asarray(raw, dtype=np.uint8).reshape(-1, 3)[:256]
    out[: len(colours)] = colours
    return out


def _palette_alpha(im: Image.Image, index: np.ndarray) -> np.ndarray | None:
    """A palette image's alpha from its transparency (PNG tRNS: one value per entry; GIF: one
    transparent index), where it has one: what a viewer shows, and pngquant or Pillow's
    ``quantize`` make of an RGBA overlay."""
    given = im.info.get("transparency")
    if given is None:
        return None
    table = np.full(256, 255, dtype=np.uint8)
    if isinstance(given, bytes):
        entries = np.frombuffer(given, dtype=np.uint8)[:256]
        table[: entries.size] = entries
    elif isinstance(given, int) and 0 <= given < 256:
        table[given] = 0
    else:
        return None
    return table[index]


def _is_grey(colours: np.ndarray) -> bool:
    return bool((colours == colours[:, :1]).all())


# --------------------------------------------------------------------------- netpbm / gzip


def _parse_netpbm_header(data: bytes) -> tuple[bytes, int, int, int, int]:
    """Parse a P1-P6 header: (magic, width, height, maxval, offset of the raster)."""
    magic = data[:2]
    if magic not in (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6"):
        raise ValueError("not a PBM/PGM/PPM header")
    need = 2 if magic in (b"P1", b"P4") else 3
    values: list[int] = []
    pos = 2
    while len(values) < need:
        while pos < len(data) and (data[pos] in _WHITESPACE or data[pos] == ord("#")):
            if data[pos] == ord("#"):
                end = data.find(b"\n", pos)
                if end < 0:
                    raise ValueError("netpbm header comment runs past the header")
                pos = end
            pos += 1
        start = pos
        while pos < len(data) and 48 <= data[pos] <= 57:
            pos += 1
        if start == pos or pos - start > 9:
            raise ValueError("malformed netpbm header")
        values.append(int(data[start:pos]))
    if pos >= len(data) or data[pos] not in _WHITESPACE:
        raise ValueError("malformed netpbm header")
    width, height = values[0], values[1]
    maxval = values[2] if need == 3 else 1
    if not 0 < maxval < 65536:
        raise ValueError(f"netpbm maxval {maxval} outside 1..65535")
    return magic, width, height, maxval, pos + 1


def _decode_netpbm16(
    path: Path, header: tuple[bytes, int, int, int, int], source: BinaryIO, limit: int
) -> _Decoded:
    """Binary PGM/PPM with maxval > 255: Pillow would drop colour data to 8 bits, so read it
    directly and scale by maxval, the true full-scale value."""
    meta = _netpbm16_meta(path, header, limit)
    maxval, offset = header[3], header[4]
    width, height, channels = meta.width, meta.height, meta.channels
    count = width * height * channels
    # Check the length first: read(n) allocates n bytes even when the file holds fewer.
    available = source.seek(0, os.SEEK_END) - offset
    if available < 2 * count:
        raise ImageReadError(
            path,
            f"truncated: {width}x{height} needs {2 * count} bytes of samples, "
            f"found {max(available, 0)}",
        )
    source.seek(offset)
    data = source.read(2 * count)
    pixels = np.frombuffer(data, dtype=">u2").reshape(height, width, channels)
    top = int(pixels.max())
    if top > maxval:
        raise ImageReadError(path, f"sample value {top} exceeds the header's maxval {maxval}")
    pixels = pixels.astype(np.uint16)
    if channels == 1:
        pixels = pixels[..., 0]
    return _Decoded(np.ascontiguousarray(pixels), float(maxval), meta)


def _netpbm16_meta(path: Path, header: tuple[bytes, int, int, int, int], limit: int) -> ImageMeta:
    """The meta of a binary PGM/PPM with maxval > 255 (:func:`_decode_netpbm16`), its size
    checked."""
    magic, width, height, maxval, _ = header
    _check_pixels(path, width, height, limit)
    channels = 1 if magic == b"P5" else 3
    name = "pgm" if channels == 1 else "ppm"
    return ImageMeta(path, name, maxval.bit_length(), height, width, channels)


def _decode_gzip_netpbm(path: Path, head: bytes, limit: int) -> _Decoded:
    """Unpack a gzipped PPM/PGM in memory, never more than its header says it needs."""
    with open(path, "rb") as f, gzip.GzipFile(fileobj=f) as gz:
        start = gz.read(_HEAD_BYTES)
        try:
            header = _parse_netpbm_header(start)
        except ValueError as exc:
            raise ImageReadError(path, f"gzip content is not a PPM/PGM/PBM image ({exc})") from exc
        magic, width, height, maxval, offset = header
        _check_pixels(path, width, height, limit)
        channels = 3 if magic in (b"P3", b"P6") else 1
        samples = width * height * channels
        if magic == b"P4":
            needed = (width + 7) // 8 * height
        elif magic in (b"P1", b"P2", b"P3"):
            needed = samples * (len(str(maxval)) + 1)  # digits plus a separator per sample
        else:
            needed = samples * (1 if maxval < 256 else 2)
        budget = offset + needed + _GZ_SLACK
        # In chunks: read(n) allocates n bytes up front, however little the stream holds.
        chunks = [start]
        left = max(budget - len(start), 0) + 1
        while left > 0:
            chunk = gz.read(min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    data = b"".join(chunks)
    if len(data) > budget:
        raise ImageReadError(
            path, f"gzip content is larger than the {budget:,} bytes a {width}x{height} image needs"
        )
    if magic in (b"P5", b"P6") and maxval > 255:
        return _decode_netpbm16(path, header, io.BytesIO(data), limit)
    return _decode_pil(path, io.BytesIO(data), limit, ("PPM",))


# --------------------------------------------------------------------------- TIFF


class _TiffUnsupported(Exception):
    """tifffile read the file but we do not interpret this layout: let Pillow try."""


class _InvalidOrientationFilter(logging.Filter):
    """Drop tifffile's line for an Orientation outside 1-8 ("12 is not a valid ORIENTATION"),
    logged on every read of such a file: the value asks for no turn (:func:`_orientation`), so
    the file reads as any other."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(f"<tifffile.TiffTag {_ORIENTATION_TAG} @")


#: Set in a thread while :func:`_tiff_frames` walks a file's pages.
_COUNTING_PAGES = threading.local()


class _CountingPagesFilter(logging.Filter):
    """Drop what tifffile logs while :func:`_tiff_frames` counts pages ("invalid page offset"
    of a damaged chain after the first page): the count is a note's, the first page is read
    all the same, and the line names no file."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_COUNTING_PAGES, "on", False)


def _open_tifffile(path: Path) -> Any:
    import tifffile

    log = logging.getLogger("tifffile")  # tifffile.logger()
    for kind in (_InvalidOrientationFilter, _CountingPagesFilter):
        if not any(isinstance(f, kind) for f in log.filters):
            log.addFilter(kind())
    return tifffile.TiffFile(path)


def _decode_tiff(path: Path, head: bytes, limit: int) -> _Decoded:
    try:
        return _decode_tifffile(path, limit)
    except ImageReadError:
        raise
    except Exception as first:  # e.g. LZW without imagecodecs (DRIVE), odd layouts, damage
        try:
            decoded = _decode_pil(path, path, limit, ("TIFF",))
        except ImageReadError:
            raise
        except Exception as second:
            pil = _describe(second)
            reason = f"cannot decode as TIFF: tifffile: {_describe(first)}; Pillow: {pil}"
            # Pillow's words: tifffile's "requires imagecodecs" (DRIVE's LZW) hid the damage
            # Pillow, which has that codec, met.
            raise ImageReadError(path, _with_damage(path, head, reason, pil)) from second
        # Pillow counts every page, a thumbnail too: count as the header read does, where
        # tifffile opens the file (its header; the pixels are what it could not decode).
        with suppress(Exception), _open_tifffile(path) as tf:
            decoded.meta = replace(decoded.meta, frames=_tiff_frames(tf, tf.pages[0]))
        return decoded


def _header_tiff(path: Path, head: bytes, limit: int) -> ImageMeta | None:
    """:func:`_decode_tiff`'s meta from the header where tifffile reads the file (``None``:
    Pillow's layouts, or a file tifffile cannot open, which decoding tells)."""
    try:
        with _open_tifffile(path) as tf:
            return _tiff_page(tf, path, limit)[1]
    except ImageReadError:
        raise
    except Exception:  # _TiffUnsupported, damage: _decode_tiff's fallback to Pillow decides
        return None


def _decode_tifffile(path: Path, limit: int) -> _Decoded:
    with _open_tifffile(path) as tf:
        page, meta, photometric = _tiff_page(tf, path, limit)
        axes = page.axes
        extra = tuple(int(e) for e in page.extrasamples)
        pixels = page.asarray()

    if axes == "SYX":
        pixels = np.moveaxis(pixels, 0, -1)
    if pixels.shape[:2] != (meta.height, meta.width):
        raise _TiffUnsupported(f"decoded shape {pixels.shape} does not match header")
    alpha = None
    if pixels.ndim == 3:
        keep = 3 if photometric == 2 else 1  # drop alpha and other extra samples
        # The first extra sample, where it is alpha (1 associated, 2 unassociated).
        if pixels.shape[2] > keep and extra[:1] in ((1,), (2,)):
            alpha = np.ascontiguousarray(pixels[..., keep])
        pixels = pixels[..., :keep]
        if keep == 1:
            pixels = pixels[..., 0]
    scale = _integer_scale(pixels.dtype, meta.bit_depth)
    return _Decoded(np.ascontiguousarray(pixels), scale, meta, invert=photometric == 0, alpha=alpha)


def _tiff_page(tf: Any, path: Path, limit: int) -> tuple[Any, ImageMeta, int]:
    """The first page of an open ``tifffile.TiffFile``, its meta and photometric, where we
    interpret its layout (else :class:`_TiffUnsupported`: Pillow is to read it), its size and
    data extents checked against the limit and the file."""
    import tifffile

    if not tf.pages:
        raise _TiffUnsupported("no pages")
    page = tf.pages[0]
    if not isinstance(page, tifffile.TiffPage):
        raise _TiffUnsupported("first page is not a plain image page")
    height, width = int(page.imagelength), int(page.imagewidth)
    _check_pixels(path, width, height, limit)
    # tifffile allocates what the header claims before reading it, so a corrupt byte count
    # or size in a tiny file would cost gigabytes: check the claims against the file first.
    size = tf.filehandle.size
    for offset, count in zip(page.dataoffsets, page.databytecounts, strict=False):
        if offset + count > size:
            raise ImageReadError(
                path,
                f"truncated or corrupt: image data at bytes {offset:,} to {offset + count:,} "
                f"lie beyond the end of the file ({size:,} bytes)",
            )
    bits, spp = int(page.bitspersample), int(page.samplesperpixel)
    raw = (width * bits + 7) // 8 * height * spp
    if int(page.compression) == 1 and raw > size:
        raise ImageReadError(
            path,
            f"truncated: an uncompressed {width}x{height} image needs {raw:,} bytes, "
            f"the file has {size:,}",
        )
    photometric = int(page.photometric)
    # 0 MINISWHITE, 1 MINISBLACK, 2 RGB; palette, CMYK, YCbCr ... go to Pillow.
    if photometric not in (0, 1, 2) or page.imagedepth > 1:
        raise _TiffUnsupported(f"photometric {photometric}")
    axes = page.axes
    if axes not in ("YX", "YXS", "SYX"):
        raise _TiffUnsupported(f"axes {axes}")
    samples = 1 if axes == "YX" else int(page.shape[0 if axes == "SYX" else 2])
    if photometric == 2 and samples < 3 and axes != "YX":  # RGB of fewer samples
        raise _TiffUnsupported(f"{samples} samples for photometric {photometric}")
    tag = page.tags.get(_ORIENTATION_TAG)
    orientation = _orientation(None if tag is None else tag.value)
    frames = _tiff_frames(tf, page)
    return (
        page,
        ImageMeta(path, "tiff", bits, height, width, spp, orientation=orientation, frames=frames),
        photometric,
    )


#: NewSubfileType (254) bits of a page that is no frame of its own: 0 a reduced-resolution
#: version of another page (a thumbnail, a pyramid level), 2 a transparency mask.
_NOT_A_FRAME = 0b101


def _tiff_frames(tf: Any, first: Any) -> int:
    """The images of ``first``'s shape that an open ``tifffile.TiffFile`` holds, ``first``
    (its first page) one of them: its top-level pages of that shape that are not marked
    reduced-resolution or a mask (:data:`_NOT_A_FRAME`): the planes of a z-stack, a time
    series, an ImageJ hyperstack or OME-TIFF; not a scanner's or slide's thumbnail or the
    levels of a pyramid (marked, or of other sizes; an OME pyramid keeps its levels in
    SubIFDs, which are no top-level pages). An ImageJ file that describes more images than it
    has pages (one page for a whole hyperstack, as ImageJ writes files over 4 GB) counts its
    description's. Headers only; a single page (most files) costs one look at the chain of
    pages."""
    import tifffile

    pages = tf.pages
    useframes = pages.useframes
    _COUNTING_PAGES.on = True
    try:
        count = len(pages)
        if count > 1:
            pages.useframes = False  # TiffPages, whose tags tell a thumbnail from a frame
            count = sum(
                1
                for page in pages
                if isinstance(page, tifffile.TiffPage)
                and page.shape == first.shape
                and not int(page.subfiletype) & _NOT_A_FRAME
            )
        if tf.is_imagej:
            count = max(count, int((tf.imagej_metadata or {}).get("images", 1)))
    except Exception:  # damage after the first page: a count is no reason not to read it
        count = 1
    finally:
        pages.useframes = useframes
        _COUNTING_PAGES.on = False
    return max(1, count)


def _integer_scale(dtype: np.dtype, bits: int) -> float | None:
    """Full-scale value for integer samples: from the stored bit depth when it is narrower
    than the container (12-bit data in uint16), else the dtype maximum."""
    if dtype.kind == "b":
        return 1.0
    if dtype.kind == "u":
        container = dtype.itemsize * 8
        return float(2**bits - 1) if 0 < bits < container else float(np.iinfo(dtype).max)
    if dtype.kind == "i":
        return float(np.iinfo(dtype).max)
    return None


# --------------------------------------------------------------------------- JSRT


def _decode_jsrt(path: Path, head: bytes, limit: int) -> _Decoded:
    """JSRT raw: 2048 x 2048 big-endian 16-bit words with 12-bit values, no header.

    The raw values are film-density-like (high = dark), so they are flipped to 4095 - raw:
    bones come out bright, as in the PNG conversions everyone uses.
    """
    meta = _header_jsrt(path, head, limit)
    expected = JSRT_SIZE * JSRT_SIZE * 2
    raw = np.fromfile(path, dtype=">u2")
    if raw.size != JSRT_SIZE * JSRT_SIZE:
        raise ImageReadError(path, f"read {raw.size * 2} bytes, expected {expected}")
    top = int(raw.max())
    full = 2**JSRT_BITS - 1
    if top > full:
        raise ImageReadError(
            path,
            f"value {top} exceeds 12 bits: not a JSRT image (or not big-endian as JSRT stores it)",
        )
    pixels = (full - raw.astype(np.uint16)).reshape(JSRT_SIZE, JSRT_SIZE)
    return _Decoded(pixels, float(full), meta)


def _header_jsrt(path: Path, head: bytes, limit: int) -> ImageMeta:
    """A JSRT ``.IMG``'s meta: its size is fixed, so the file's length is its only header."""
    expected = JSRT_SIZE * JSRT_SIZE * 2
    actual = path.stat().st_size
    if actual != expected:
        raise ImageReadError(
            path,
            f"a JSRT .IMG file must be exactly {expected:,} bytes (2048x2048 big-endian 16-bit "
            f"words, no header) but this one is {actual:,} bytes; other raw .img formats "
            "(e.g. Analyze) are not supported",
        )
    _check_pixels(path, JSRT_SIZE, JSRT_SIZE, limit)
    spacing = (JSRT_SPACING, JSRT_SPACING)
    return ImageMeta(path, "jsrt_img", JSRT_BITS, JSRT_SIZE, JSRT_SIZE, 1, spacing, "JSRT")


# --------------------------------------------------------------------------- npy


def _decode_npy(path: Path, head: bytes, limit: int) -> _Decoded:
    fmt = np.lib.format
    with open(path, "rb") as f:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            raise ImageReadError(path, f"unsupported .npy format version {version}")
        if dtype.hasobject or dtype.fields is not None or dtype.kind not in "biuf":
            raise ImageReadError(path, f"unsupported array dtype {dtype}: need bool, int or float")
        if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3, 4)):
            raise ImageReadError(
                path, f"array shape {shape} is not an image: need H x W or H x W x C, C in 1, 3, 4"
            )
        height, width = int(shape[0]), int(shape[1])
        _check_pixels(path, width, height, limit)
        needed = int(np.prod(shape)) * dtype.itemsize
        available = path.stat().st_size - f.tell()
        if available < needed:
            raise ImageReadError(
                path, f"truncated: array data need {needed:,} bytes, file holds {available:,}"
            )
        f.seek(0)
        array = np.load(f, allow_pickle=False)
    channels = 1 if array.ndim == 2 else int(array.shape[2])
    alpha = array[..., 3] if channels == 4 else None
    if channels == 4:
        array = array[..., :3]
    elif channels == 1 and array.ndim == 3:
        array = array[..., 0]
    if array.dtype.kind in "iu":
        array = array.astype(array.dtype.newbyteorder("="), copy=False)
    if alpha is not None:
        alpha = np.ascontiguousarray(alpha, dtype=array.dtype)
    bits = 1 if dtype.kind == "b" else dtype.itemsize * 8
    meta = ImageMeta(path, "npy", bits, height, width, channels)
    scale = _integer_scale(array.dtype, bits)
    return _Decoded(np.ascontiguousarray(array), scale, meta, alpha=alpha)


# --------------------------------------------------------------------------- DICOM


def _decode_dicom(path: Path, head: bytes, limit: int) -> _Decoded:
    """DICOM: modality LUT (rescale), then VOI LUT or window, else min-max; MONOCHROME1 flipped.

    The result is already in [0, 1]. The linear/sigmoid window is computed here rather than
    with pydicom's ``apply_windowing`` because that maps into a bit-depth-dependent output range
    we would have to reconstruct; the formulas are those of DICOM PS3.3 C.11.2.1.2.

    A mask is read from the values before the window and the flip (``stored``): a label map
    0/1/2/3 windowed, or min-maxed, to 0/.33/.67/1 would lose label 1 at half scale.
    """
    ds, meta = _dicom_dataset(path, head, limit, pixels=True)
    from pydicom.pixels import apply_modality_lut, apply_voi, pixel_array  # pydicom 3

    photometric = str(ds.PhotometricInterpretation).strip().upper()
    bits = meta.bit_depth

    pixels = pixel_array(ds, index=0)  # first frame only: no need to decode the rest

    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        if pixels.ndim != 2:
            raise ImageReadError(path, f"grey DICOM decoded to shape {pixels.shape}")
        values = np.asarray(apply_modality_lut(pixels, ds))
        stored = partial(_dicom_stored, ds, pixels, values, bits, apply_modality_lut)
        values = _dicom_voi(ds, values, apply_voi)
        if photometric == "MONOCHROME1":  # low values are white
            values = 1.0 - values
        out = values
    else:  # colour (_dicom_dataset refused the rest); pydicom converts YBR to RGB
        if pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ImageReadError(path, f"colour DICOM decoded to shape {pixels.shape}")
        # A mask: as a PNG's (label colours named (255, 0, 0), not (1.0, 0, 0)).
        stored = partial(_dicom_stored, ds, pixels, pixels, bits, apply_modality_lut)
        out = pixels.astype(np.float64) / float(2**bits - 1)
    out = np.clip(out, 0.0, 1.0)
    return _Decoded(np.ascontiguousarray(out, dtype=np.float32), 1.0, meta, stored=stored)


def _dicom_stored(
    ds: Any, pixels: np.ndarray, values: np.ndarray, bits: int, apply_modality_lut: Any
) -> tuple[np.ndarray, float | None] | None:
    """A DICOM's values as a mask means them (:attr:`_Decoded.stored`): after the modality
    LUT or rescale (which gives the real labels), before any window, with the stored full scale
    (``BitsStored``, as a PNG's bit depth) passed through it, so that :func:`_binarize`'s
    rules apply as for a PNG (a modality LUT's: its entries' bit depth). A rescale's integer
    results are integers again (label maps); a real-valued one gives floats of no scale (a
    probability map); ``None`` where a value is not finite (the mask is then read from the
    displayed values, which are checked)."""
    if pixels.dtype.kind not in "iu":
        return None
    container = pixels.dtype.itemsize * 8
    signed = int(pixels.dtype.kind == "i")
    full = 2 ** (bits - signed) - 1 if 0 < bits <= container else int(np.iinfo(pixels.dtype).max)
    if values is pixels:  # no modality LUT or rescale: the stored values themselves
        return pixels, float(full)
    if values.dtype.kind in "iu":  # a modality LUT's entries, of its bit depth (8 or 16)
        return values, float(np.iinfo(values.dtype).max)
    if values.dtype.kind == "f":
        if not np.isfinite(values).all():
            return None
        if not ((np.abs(values) < 2**53).all() and (values == np.round(values)).all()):
            return values, None
        values = values.astype(np.int64)
    top = float(np.max(apply_modality_lut(np.array([full], dtype=pixels.dtype), ds)))
    return values, top if np.isfinite(top) and top > 0 else None


def _header_dicom(path: Path, head: bytes, limit: int) -> ImageMeta:
    """:func:`_decode_dicom`'s meta, its pixel data skipped over, not read."""
    return _dicom_dataset(path, head, limit, pixels=False)[1]


#: Values longer than this are skipped over when a DICOM file is read for its header.
_DICOM_HEADER_DEFER = 1 << 16


def _dicom_dataset(path: Path, head: bytes, limit: int, *, pixels: bool) -> tuple[Any, ImageMeta]:
    """A DICOM file as pydicom reads it, and its :class:`ImageMeta`, after every check that
    needs no pixel: pixel data present, the attributes needed, the size, the photometric
    interpretation, a decoder for its compression. ``pixels=False``: long values (the pixel
    data) are skipped over, not read; ``stop_before_pixels`` would hide whether there are
    any."""
    try:
        # pydicom.pixels (decoding's) is new in pydicom 3: a 2.x is refused for a header too.
        import pydicom.pixels
    except ImportError as exc:  # pydicom absent, or 2.x (another package's, say)
        found = getattr(sys.modules.get("pydicom"), "__version__", None)
        raise ReaderSetupError(
            path,
            "reading DICOM needs pydicom 3 or newer"
            + (f" (found {found})" if found else "")
            + ": pip install -U pydicom python-gdcm (localdisc's [dicom] extra)",
        ) from exc

    defer = None if pixels else _DICOM_HEADER_DEFER
    with _ClampedReader(path) as f:
        ds = pydicom.dcmread(f, force=not _is_dicom_head(head), defer_size=defer)
    if "PixelData" not in ds:
        raise ImageReadError(path, _no_pixel_data(ds))
    for tag in ("Rows", "Columns", "BitsStored", "PhotometricInterpretation"):
        if tag not in ds:
            raise ImageReadError(path, f"DICOM attribute {tag} is missing")
    height, width = int(ds.Rows), int(ds.Columns)
    _check_pixels(path, width, height, limit)
    bits = int(ds.BitsStored)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    colour = photometric in ("RGB", "YBR_FULL", "YBR_FULL_422") and spp == 3
    if photometric not in ("MONOCHROME1", "MONOCHROME2") and not colour:
        raise ImageReadError(
            path, f"unsupported DICOM photometric interpretation {photometric!r} ({spp} samples)"
        )
    _check_decoder(path, ds)
    try:  # IS, text: a malformed value is taken for one frame, as pixel_array reads one
        frames = max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        frames = 1
    meta = ImageMeta(path, "dicom", bits, height, width, spp, *_dicom_spacing(ds), frames=frames)
    return ds, meta


def _no_pixel_data(ds: Any) -> str:
    """Why a DICOM file without pixel data is no image, naming what it is (a structured
    report, an RT structure set, a presentation state: PACS exports hold them beside the
    images), or, for an image class, that it is an image whose pixels are missing."""
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        return "float pixel data (FloatPixelData) is not supported"
    sop = ds.get("SOPClassUID") or getattr(ds.get("file_meta"), "MediaStorageSOPClassUID", None)
    name = getattr(sop, "name", None) or (str(sop) if sop else "")
    what = f"a {name} object" if name else "a DICOM object"
    modality = str(ds.get("Modality", "") or "").strip()
    of = f" (modality {modality})" if modality else ""
    if "Image Storage" in name:  # a CT slice whose pixels a header-only export or a cut left out
        return (
            f"no pixel data: {what}{of} without its pixels (stripped or cut short); fetch it again"
        )
    return f"no pixel data: {what}{of}, not an image"


def _check_decoder(path: Path, ds: Any) -> None:
    """Refuse compressed pixel data that no installed plugin decodes, naming the compression
    and what to install (pydicom's own message is several lines naming its plugins, and its
    gdcm plugin's package is ``python-gdcm``, not ``gdcm``): a :class:`ReaderSetupError`, as
    installing it reads the file. A compression pydicom has no plugin for at all is the file's
    (nothing to install): a plain :class:`ImageReadError`."""
    syntax = getattr(ds.get("file_meta"), "TransferSyntaxUID", None)
    try:
        if syntax is None or not syntax.is_compressed:
            return
    except ValueError:  # a UID that is no transfer syntax: pydicom's decoding says so
        return
    from pydicom.pixels import get_decoder  # pydicom 3

    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ImageReadError(
            path, f"pixel data compressed as {syntax.name} ({syntax}), which pydicom cannot decode"
        ) from None
    if not decoder.is_available:
        raise ReaderSetupError(
            path,
            f"pixel data compressed as {syntax.name} ({syntax}) and no decoder for it is "
            "installed: pip install python-gdcm (what localdisc's [dicom] extra installs), or "
            "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg",
        )


def _dicom_spacing(ds: Any) -> tuple[tuple[float, float] | None, str | None]:
    """(row, column) mm per pixel and where it came from (:class:`ImageMeta`'s ``spacing`` and
    ``spacing_source``): the first of PixelSpacing, the enhanced multi-frame Pixel Measures
    group's (shared, else the first frame's: the frame read), and ImagerPixelSpacing (divided
    by EstimatedRadiographicMagnificationFactor where it is one finite number of 1 or more) that
    holds two positive finite numbers; ``(None, None)`` where none does."""
    spacing = _spacing_value(ds, "PixelSpacing")
    if spacing is not None:
        return (spacing[0], spacing[1]), "PixelSpacing"
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        measures = _first_item(_first_item(ds, groups), "PixelMeasuresSequence")
        spacing = _spacing_value(measures, "PixelSpacing")
        if spacing is not None:
            return (spacing[0], spacing[1]), f"{groups} PixelSpacing"
    spacing = _spacing_value(ds, "ImagerPixelSpacing")
    if spacing is None:
        return None, None
    factor = _spacing_value(ds, "EstimatedRadiographicMagnificationFactor", count=1)
    if factor is None or factor[0] < 1:  # SID / SOD: at least 1, else malformed
        return (spacing[0], spacing[1]), "ImagerPixelSpacing"
    at_patient = (spacing[0] / factor[0], spacing[1] / factor[0])
    return at_patient, "ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor"


def _first_item(ds: Any, keyword: str) -> Any:
    """The first item of sequence ``keyword`` of ``ds`` (``None`` where ``ds`` is ``None``, or
    the sequence is absent, empty or malformed)."""
    try:
        value = None if ds is None else ds.get(keyword)
        return value[0] if value else None
    except Exception:  # a malformed sequence: as if absent
        return None


def _spacing_value(ds: Any, keyword: str, count: int = 2) -> tuple[float, ...] | None:
    """``count`` positive finite numbers in ``ds``'s ``keyword``, or ``None`` (absent, or any
    other value: one number where two are due, text, zero)."""
    try:
        value = None if ds is None else ds.get(keyword)
        if value is None:
            return None
        if count == 1 and not isinstance(value, Sequence | str | bytes):
            value = [value]  # a single-valued DS reads as one number
        # A sequence of values (PixelSpacing's VM 2); a lone "12" would otherwise be read as
        # its characters 1 and 2.
        if not isinstance(value, Sequence) or isinstance(value, str | bytes):
            return None
        numbers = tuple(float(v) for v in value)
    except Exception:  # whatever a malformed value raises (text, overflow): ignored
        return None
    if len(numbers) == count and all(np.isfinite(v) and v > 0 for v in numbers):
        return numbers
    return None


class _ClampedReader(io.BufferedReader):
    """A binary file whose ``read(n)`` never asks for more than what is left in the file.

    Python allocates ``n`` bytes before reading, so a corrupt DICOM length field claiming
    gigabytes would make pydicom allocate gigabytes for a file of a few hundred bytes.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(io.FileIO(path, "rb"))
        self._size = os.fstat(self.fileno()).st_size

    def read(self, n: int | None = -1) -> bytes:
        if n is not None and n > 0:
            n = min(n, max(self._size - self.tell(), 0))
            if n == 0:
                return b""
        return super().read(n)


def _dicom_voi(ds: Any, values: np.ndarray, apply_voi: Any) -> np.ndarray:
    """Map modality values to [0, 1]: VOI LUT table, else first window, else min-max."""
    seq = ds.get("VOILUTSequence")
    if seq and "LUTDescriptor" in seq[0] and "LUTData" in seq[0]:
        if np.issubdtype(values.dtype, np.floating) and np.all(values == np.round(values)):
            values = values.astype(np.int64)  # the LUT is indexed by integer modality values
        lut_bits = int(seq[0].LUTDescriptor[2])
        return np.asarray(apply_voi(values, ds), dtype=np.float64) / float(2**lut_bits - 1)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center = _first_value(ds.WindowCenter)
        width = _first_value(ds.WindowWidth)
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        windowed = _window(values.astype(np.float64), center, width, function)
        if windowed is not None:
            return windowed
    return _min_max(values.astype(np.float64))


def _first_value(value: Any) -> float:
    # Window centre/width may be multi-valued (several suggested windows): use the first.
    if hasattr(value, "__len__") and not isinstance(value, str):
        value = value[0]
    return float(value)


def _window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray | None:
    """DICOM PS3.3 C.11.2.1.2 windowing into [0, 1]; None if the width is invalid."""
    if function == "SIGMOID":
        if width <= 0:
            return None
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        if width <= 0:
            return None
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if width < 1:
        return None
    if width == 1:  # degenerate window: a threshold at center - 0.5
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


# --------------------------------------------------------------------------- conversion


def _min_max(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros_like(x, dtype=np.float64)
    return (x - lo) / (hi - lo)


def _to_float_image(path: Path, d: _Decoded) -> np.ndarray:
    """Samples -> float32 H x W x C in [0, 1] following the module's value conventions."""
    px = d.pixels
    if d.palette is not None:
        colours = d.palette[px]
        px = colours[..., :1] if d.meta.channels == 1 else colours
    if px.dtype.kind == "b":
        out = px.astype(np.float32)
    elif px.dtype.kind in "iu":
        lo, hi = (int(px.min()), int(px.max())) if px.size else (0, 0)
        if lo < 0:
            out = _min_max(px.astype(np.float64))
        else:
            scale = d.scale if d.scale is not None else float(np.iinfo(px.dtype).max)
            if hi > scale:
                raise ImageReadError(
                    path,
                    f"sample value {hi} exceeds the {d.meta.bit_depth}-bit full scale {scale:g}",
                )
            out = px.astype(np.float32) / np.float32(scale)
    else:
        if d.scale is not None:  # already normalised by the decoder (DICOM)
            out = px
        else:
            lo, hi = float(px.min()), float(px.max())
            # Within FLOAT_SLACK of [0, 1]: intensities that overshoot (resampling), clipped
            # below, as an array passed in memory is (as_raw_image); further out, other units.
            within = lo >= -FLOAT_SLACK and hi <= 1.0 + FLOAT_SLACK
            out = px if within else _min_max(px.astype(np.float64))
    if d.invert:
        out = 1.0 - out
    if out.ndim == 2:
        out = out[..., None]
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0), dtype=np.float32)


#: Most distinct values (background included) of a grey mask whose labels, up to 255 in a 16-bit
#: file, are read as non-zero although some lie above 127.5 (where more: an anti-aliased 8-bit
#: mask stored in 16 bits).
_MAX_LABEL_LEVELS = 16
#: Most distinct values (background included) of a mask none of whose values reaches half scale
#: to be read as a label map (non-zero); one of more levels is a soft map, empty below half.
_MAX_LABEL_MAP_LEVELS = 64


def _binarize(values: np.ndarray, scale: float | None) -> np.ndarray:
    """Grey values -> foreground, in this order (see also :func:`read_mask`):

    1. only 0 and 1 -> value 1;
    2. exactly two values, the lower 0 (0/255, 0/k) -> non-zero;
    3. a label map of few levels -> non-zero: integer samples with at most
       :data:`_MAX_LABEL_LEVELS` distinct values, 0 among them, none above half of full scale
       and none above 255 (0/1/2 class indices stored as grey ``L`` or ``I;16``);
    4. the threshold of rule 5, where it would leave nothing: integer samples of at most
       :data:`_MAX_LABEL_MAP_LEVELS` distinct values, 0 among them, none above it -> non-zero
       (a label map of more labels: 0..20; 16-bit labels 0/300/600; a 12-bit mask 0/2000/4095
       in a 16-bit PNG, whose bit depth is not stored). A map of more levels is a soft one (a
       probability map saved as a mask): below half scale everywhere, it is empty;
    5. otherwise above half of full scale (``scale``; for floats 0.5, or half the maximum when
       values exceed 1): anti-aliased and JPEG masks, which have values above half scale; an
       anti-aliased 8-bit mask (values up to 255, more levels than rule 3's) stored in 16
       bits, above 127.5 (half of 65535 read it as empty).
    """
    if values.dtype.kind == "b":
        return values
    levels = _levels(values)
    if levels.size <= 2 and np.isin(levels, (0, 1)).all():
        return values == 1
    if levels.size == 2 and levels[0] == 0:
        return values != 0
    if (
        values.dtype.kind in "iu"
        and scale is not None
        and 1 < levels.size <= _MAX_LABEL_LEVELS
        and levels[0] == 0
        and levels[-1] <= min(scale / 2, 255)
    ):
        # Nothing reaches half scale, so the threshold below would give an empty mask: small
        # integer levels are class indices (0 background), as in label palettes.
        return values != 0
    if scale is None:  # floats: 0.5 for probabilities, half the maximum otherwise
        top = float(levels[-1])
        scale = 1.0 if top <= 1.0 else top
    elif values.dtype.kind in "iu" and scale > 255 and levels[-1] <= 255:
        scale = 255.0  # (a label map of few levels is taken by rule 3)
    # Rule 4: integer labels of which none is above the threshold, which would read as empty.
    if (
        values.dtype.kind in "iu"
        and 1 < levels.size <= _MAX_LABEL_MAP_LEVELS
        and levels[0] == 0
        and levels[-1] <= scale / 2
    ):
        return values != 0
    return values > scale / 2


def _levels(values: np.ndarray) -> np.ndarray:
    """Distinct values, sorted (bincount is much faster than unique for 8-bit masks)."""
    if values.dtype == np.uint8:
        return np.flatnonzero(np.bincount(values.ravel(), minlength=256))
    return np.unique(values)


def _palette_mask(index: np.ndarray, palette: np.ndarray) -> np.ndarray:
    used = np.flatnonzero(np.bincount(index.ravel(), minlength=256))
    colours = palette[used]
    if _is_grey(colours):
        return _binarize(palette[:, 0][index], 255.0)
    brightness = palette.max(axis=1)
    dark = brightness[used] <= 127
    # One colour, or one dark and one bright: the colours say it (GIF encoders reorder
    # palettes, so there the index means nothing). Otherwise a label map: index 0 = background.
    if used.size == 1 or (used.size == 2 and dark.any() and not dark.all()):
        return brightness[index] > 127
    return index != 0


#: The header readers of :func:`read_image_meta`, by the decoder :func:`_choose_decoder` picks
#: (one not here: the file is decoded). A reader returns the decoder's :class:`ImageMeta`, or
#: ``None`` where this file's pixels decide it.
_HEADER_READERS: dict[Any, Any] = {
    _decode_pil_file: _header_pil_file,
    _decode_tiff: _header_tiff,
    _decode_jsrt: _header_jsrt,
    _decode_dicom: _header_dicom,
}
