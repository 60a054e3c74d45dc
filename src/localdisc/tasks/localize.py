"""One-shot landmark localisation with LD patch embeddings (TPAMI 2023 Sec. 6; METHOD.md 6).

One template image with named landmark points. Each landmark is described by the patch
embeddings centred on it (center-sensitive for runs pre-trained with ``--center-sensitive``);
in a new image the location whose patch embedding is most similar (cosine) is the prediction,
searched coarse to fine:

1. coarse: over the whole image at 1/``stride`` resolution, the sum of the similarities at the
   patch scale and at twice it (the larger patch brings context that tells, e.g., the left lung
   from the right);
2. fine: at full resolution, in a window of one patch side around the coarse match, the
   similarity at the patch scale.

The confidence is the fine cosine similarity at the prediction (1: identical embeddings).
Template and images are worked on as the model saw its pre-training pool: a fundus photograph
cut to its field of view, then resized to the working size
(:func:`~localdisc.tasks.similarity.working_image`; a camera's wide black frame no longer
changes the retina's scale); predictions are in each image's own pixels.
:func:`ncc_localize` is the classical baseline, normalised cross-correlation template matching.
"""

from __future__ import annotations

import json
import math
import numbers
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from localdisc.data.io import ImageMeta, dim_note, read_image_meta
from localdisc.data.preprocess import LUMA
from localdisc.engine.checkpoint import atomic_write_text
from localdisc.errors import ImageReadError, InputError, LocaldiscError
from localdisc.tasks.predict import SkippedImages
from localdisc.tasks.similarity import (
    Framing,
    ModelLike,
    PatchKernel,
    Point,
    as_image,
    check_inside,
    check_size,
    dense_patch_embeddings,
    nearest_pixel,
    resolve_model,
    to_resized,
    working_image,
)


@dataclass(frozen=True)
class Prediction:
    x: float
    y: float
    confidence: float


@dataclass(frozen=True)
class SearchConfig:
    """Coarse-to-fine search settings; ``size`` is the working size (longer side, pixels)."""

    size: int | None = None  # None: the model's pre-training pool size
    stride: int = 4
    context: float = 2.0  # the coarse step also compares patches this many times larger
    uniform: bool = False  # ignore a center-sensitive kernel (uniform pooling, for ablations)
    # Also match the mirrored template and keep the better match: left and right eyes are mirror
    # images of each other (a one-shot fundus template is one of the two).
    mirror: bool = False

    def __post_init__(self) -> None:
        check_size(self.size)
        # Unchecked, a stride of 0, -2 or 2.5 failed in torch's pooling, and a context of 0 or
        # below compared the patches alone (a kernel of one pixel), without a word.
        stride, context = self.stride, self.context
        if isinstance(stride, bool) or not isinstance(stride, numbers.Integral) or stride < 1:
            raise InputError(
                f"stride must be a whole number of pixels >= 1 (the coarse step's cell side), "
                f"not {stride!r}; the default is 4"
            )
        real = isinstance(context, numbers.Real) and not isinstance(context, bool)
        # Below 1 the "larger" patch is smaller: at 0.01 a kernel of one pixel again.
        if not (real and math.isfinite(context) and context >= 1):
            raise InputError(
                f"context must be a finite number >= 1 (how many times larger than the patch the "
                f"coarse step's second patch is), not {context!r}; the default is 2.0"
            )


def read_landmarks(path: str | Path) -> dict[str, Point]:
    """``{"name": [x, y], ...}`` (pixels of the template image) from a JSON file."""
    path = Path(path)
    shape = 'landmarks must be a JSON object {"name": [x, y], ...}'
    raw = _read_json(path, "landmarks")
    if not isinstance(raw, dict):
        raise LocaldiscError(f"{path}: {shape}")
    return _points(raw, path, shape)


def _read_json(path: Path, what: str) -> object:
    """The JSON in ``path``, refused where an object names a key twice: json keeps the last, so
    a landmark pasted twice under one name lost the first's point (or a truth's), unsaid."""

    def once(pairs: list[tuple[str, object]]) -> dict[str, object]:
        seen = Counter(key for key, _ in pairs)
        twice = [key for key, n in seen.items() if n > 1]
        if twice:
            names = ", ".join(map(repr, twice))
            raise LocaldiscError(
                f"{path}: {names} given twice in one object of the {what}; keep one"
            )
        return dict(pairs)

    try:
        # Bytes: json finds UTF-8 with or without a BOM and UTF-16/32 (Windows editors and
        # PowerShell write those), whatever the system's default encoding; else that encoding
        # (a Windows code page, as read before).
        try:
            return json.loads(path.read_bytes(), object_pairs_hook=once)
        except UnicodeDecodeError:
            return json.loads(path.read_text(), object_pairs_hook=once)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LocaldiscError(f"{path}: cannot read {what} ({exc})") from exc


def _points(raw: dict, path: Path, shape: str, entry: str = "") -> dict[str, Point]:
    """``name -> (x, y)`` from a JSON object of ``[x, y]`` pairs; errors name ``path``, the
    expected ``shape`` and ``entry`` (e.g. ``"image 'a' "``: where in the file the object is)."""
    points = {}
    for name, value in raw.items():
        # Exactly two numbers: indexing would take "34" as (3, 4) and drop a third value.
        if not (isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)):
            raise LocaldiscError(f"{path}: {shape}; {entry}landmark {name!r} is {_shown(value)}")
        points[str(name)] = (float(value[0]), float(value[1]))
    if not points:
        raise LocaldiscError(
            f"{path}: {entry}has no landmarks" if entry else f"{path}: no landmarks"
        )
    return points


def _shown(value: object) -> str:
    """A JSON value as an error message quotes it (at most 40 characters)."""
    found = json.dumps(value)
    return found if len(found) <= 40 else found[:37] + "..."


def _first(items: Sequence[str], n: int) -> str:
    """The first ``n`` of ``items`` as an error message lists them, with ", ..." for more."""
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def _is_number(value: object) -> bool:
    """A finite JSON number (bool is an int in Python, but true is no coordinate)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


class Localizer:
    """Match a template's landmarks in new images (see the module docstring).

    Args:
        model: an LD run directory (or one of its weight files), an
            :class:`~localdisc.models.ld.LDModel`, or
            :func:`~localdisc.tasks.similarity.load_model`'s result.
        template: the template image: a file, or in memory as
            :func:`~localdisc.tasks.similarity.as_image` takes it.
        landmarks: name -> (x, y) in the template's pixels.
        config: search settings.
        device: where the network runs (``None``: the CPU for a run given as a path, else
            where the model is).
    """

    def __init__(
        self,
        model: ModelLike,
        template: np.ndarray | Tensor | str | Path,
        landmarks: dict[str, Point],
        config: SearchConfig | None = None,
        *,
        device: str | None = None,
    ) -> None:
        # Template and landmarks first: a landmark outside it is refused before a model loads.
        image = as_image(template, "the template")
        source = str(template) if isinstance(template, str | Path) else "the template"
        check_landmarks(landmarks, image, source)
        #: The template image as read (H x W x C in [0, 1]).
        self.template = image
        self.loaded = resolve_model(model, device)
        self.config = config or SearchConfig()
        kernel = self.loaded.kernel
        self.kernel = PatchKernel(kernel.side) if self.config.uniform else kernel
        self.size = self.config.size or self.loaded.pool_size
        self.landmarks = dict(landmarks)
        # Per landmark, one (coarse [2, D], fine [D]) descriptor per template variant.
        self.descriptors: dict[str, list[tuple[Tensor, Tensor]]] = {k: [] for k in landmarks}
        variants = [(image, landmarks)]
        if self.config.mirror:
            variants.append(
                (np.ascontiguousarray(image[:, ::-1]), mirrored(landmarks, image.shape[1]))
            )
        s = self.config.stride
        for variant, points in variants:
            coarse, fine, framing = self._maps(variant)
            for name, (x, y) in points.items():
                xs, ys = framing.to_working((x, y))
                # Coarse cell c averages pixels c*s .. c*s+s-1: its centre is c*s + (s-1)/2.
                yc = nearest_pixel((ys - (s - 1) / 2) / s, coarse.shape[-2])
                xc = nearest_pixel((xs - (s - 1) / 2) / s, coarse.shape[-1])
                yf, xf = nearest_pixel(ys, fine.shape[1]), nearest_pixel(xs, fine.shape[2])
                fine_vector = fine[:, yf, xf]
                self.descriptors[name].append((coarse[:, :, yc, xc], fine_vector))

    def _maps(self, image: np.ndarray) -> tuple[Tensor, Tensor, Framing]:
        """Coarse maps ``[2, D, H/s, W/s]`` (patch, context), fine map ``[D, H, W]`` of the
        working image (a fundus photograph's field of view, resized:
        :func:`~localdisc.tasks.similarity.working_image`), and how it was framed."""
        small, framing = working_image(self.loaded, image, self.size)
        v = self.loaded.model.embed(small)
        s = self.config.stride
        vc = F.normalize(F.avg_pool2d(v[None], s, ceil_mode=True)[0], dim=0)
        coarse = torch.stack(
            [
                dense_patch_embeddings(vc, self.kernel, 1 / s),
                dense_patch_embeddings(vc, self.kernel, self.config.context / s),
            ]
        )
        return coarse, dense_patch_embeddings(v, self.kernel), framing

    @torch.no_grad()
    def __call__(self, image: np.ndarray | Tensor | str | Path) -> dict[str, Prediction]:
        """Each landmark's predicted (x, y) in the image's own pixels, with a confidence."""
        image = as_image(image)
        height, width = image.shape[:2]
        coarse, fine, framing = self._maps(image)
        s = self.config.stride
        radius = self.kernel.side
        h, w = fine.shape[1:]
        yy = torch.arange(h, device=fine.device)[:, None]
        xx = torch.arange(w, device=fine.device)[None, :]
        out = {}
        for name, descriptors in self.descriptors.items():
            best = None
            for coarse_vectors, fine_vector in descriptors:
                score = torch.einsum("kd,kdhw->hw", coarse_vectors, coarse)
                yc, xc = divmod(int(torch.argmax(score)), score.shape[1])
                cy, cx = yc * s + (s - 1) / 2, xc * s + (s - 1) / 2
                sim = torch.einsum("d,dhw->hw", fine_vector, fine)
                window = ((yy - cy).abs() <= radius) & ((xx - cx).abs() <= radius)
                sim = torch.where(window, sim, torch.tensor(-2.0, device=sim.device))
                y, x = divmod(int(torch.argmax(sim)), w)
                # Worked on larger than the image, an edge pixel's centre maps back to just
                # outside it (-0.1 at a scale of 1.25): keep to the image's pixels.
                px, py = framing.from_working((x, y))
                px, py = min(max(px, 0.0), width - 1.0), min(max(py, 0.0), height - 1.0)
                found = Prediction(px, py, float(sim[y, x]))
                if best is None or found.confidence > best.confidence:
                    best = found
            out[name] = best
        return out


def _grey(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image
    if image.shape[-1] == 1:
        return image[..., 0]
    return np.tensordot(image[..., :3], np.asarray(LUMA, np.float32), axes=([2], [0]))


def check_landmarks(
    landmarks: dict[str, Point], template: np.ndarray, source: str = "the template"
) -> None:
    """Raise :class:`~localdisc.errors.LocaldiscError` naming a landmark outside ``template``
    (``source``: how the message names it, e.g. its file; see
    :func:`~localdisc.tasks.similarity.check_inside`)."""
    for name, point in landmarks.items():
        check_inside(f"landmark {name!r}", point, template.shape, source)


def mirrored(landmarks: dict[str, Point], width: int) -> dict[str, Point]:
    """``landmarks`` on the image flipped left-right (``width`` pixels wide)."""
    return {k: (width - 1 - x, y) for k, (x, y) in landmarks.items()}


def ncc_localize(
    template: np.ndarray,
    landmarks: dict[str, Point],
    image: np.ndarray,
    patch: int,
    *,
    mirror: bool = False,
) -> dict[str, Prediction]:
    """Baseline: normalised cross-correlation of the ``patch`` x ``patch`` template patch around
    each landmark (clipped at the border) with the image (``skimage.feature.match_template``).

    The template is resized to the image's shape, a scale per axis (as the LD localiser maps
    points with :func:`~localdisc.tasks.similarity.to_resized`); ``patch`` is in template pixels
    and scales with it. With ``mirror`` the mirrored template is tried too and the higher
    correlation kept.
    """
    template, image = as_image(template, "the template"), as_image(image)
    check_landmarks(landmarks, template)
    th, tw = template.shape[:2]
    if mirror:
        a = ncc_localize(template, landmarks, image, patch)
        b = ncc_localize(
            np.ascontiguousarray(template[:, ::-1]), mirrored(landmarks, tw), image, patch
        )
        return {k: a[k] if a[k].confidence >= b[k].confidence else b[k] for k in a}
    from skimage.feature import match_template
    from skimage.transform import resize

    t_grey, i_grey = _grey(template), _grey(image)
    ih, iw = i_grey.shape
    # One ratio (the widths') for both axes put the template's rows at another scale than the
    # image's when their aspect ratios differ, and a patch taller than a wide image crashed.
    scale = (iw / tw, ih / th)
    if scale != (1.0, 1.0):
        t_grey = resize(t_grey, (ih, iw), order=1, anti_aliasing=min(scale) < 1)
    half_x = max(1, round(patch * scale[0]) // 2)
    half_y = max(1, round(patch * scale[1]) // 2)
    out = {}
    for name, point in landmarks.items():
        x, y = to_resized(point, scale)
        xs, ys = nearest_pixel(x, iw), nearest_pixel(y, ih)
        y0, y1 = max(0, ys - half_y), min(ih, ys + half_y)
        x0, x1 = max(0, xs - half_x), min(iw, xs + half_x)
        response = match_template(i_grey, t_grey[y0:y1, x0:x1])
        r, c = np.unravel_index(int(np.argmax(response)), response.shape)
        # The landmark's own offset in the patch, its fraction of a pixel kept.
        out[name] = Prediction(float(c + x - x0), float(r + y - y0), float(response[r, c]))
    return out


#: What the x and y of ``localdisc localize``'s predictions are (written into its JSON).
COORDINATES = (
    "x: column, y: row, in pixels of each image file as read (0, 0: the centre of the top-left "
    "pixel); the landmarks likewise in the template file's pixels"
)


#: The record of an overlay folder: the images its figures ``NAME.png`` are of
#: (:data:`~localdisc.data.datasets.OUTPUT_RECORDS`).
OVERLAY_RECORD = "overlays.json"


def localize_images(
    model: ModelLike,
    template: str | Path,
    landmarks: dict[str, Point],
    images: list[tuple[str, Path]],
    *,
    config: SearchConfig | None = None,
    overlay_dir: Path | None = None,
    device: str | None = None,
    truth: Mapping[str, Mapping[str, Point]] | None = None,
    skips: SkippedImages | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """``{image name: {landmark: {x, y, confidence}}}`` (the ``images`` of ``localdisc
    localize``'s JSON), with optional overlays ``overlay_dir/NAME.png`` (checked first,
    :func:`check_overlay_dir`; ``truth``, ``{image name: {landmark: (x, y)}}``, drawn on them
    too: :func:`score_predictions` scores it); ``model`` and ``device`` as :class:`Localizer`
    takes them. ``log``, where given, gets a note naming dim images (the template too;
    :func:`~localdisc.data.io.dim_note`: 12-bit data in 16-bit files).

    ``skips``: what becomes of an image that cannot be read
    (:class:`~localdisc.tasks.predict.SkippedImages`; default: it stops the call). One it
    skips, where it is read or before (:func:`read_truth`), has no predictions, and its
    overlay of an earlier call is removed (and its truth, where ``truth`` is a :class:`Truth`:
    read_truth checked its header alone); the template is never skipped."""
    skips = skips or SkippedImages(count=len(images))
    if overlay_dir is not None:
        check_overlay_dir(overlay_dir, images, template)
        # Before the first figure: an overlay folder inside a folder of images is its
        # outputs, not images (pooled, localised, fine-tuned on), however far a call got.
        Path(overlay_dir).mkdir(parents=True, exist_ok=True)
        record = {"images": [{"name": name} for name, _ in images]}
        atomic_write_text(Path(overlay_dir) / OVERLAY_RECORD, json.dumps(record, indent=1))
    # Given the file, the localiser reads it once and names it in a landmark's error.
    localizer = Localizer(model, template, landmarks, config, device=device)
    template_image = localizer.template
    template_name = Path(template).name
    results: dict[str, dict[str, dict[str, float]]] = {}
    earlier = skips.names  # read_truth's: not read again
    peaks = [(template_name, float(template_image.max()))]
    for name, path in images:
        read = None if name in earlier else skips.read(name, path)
        if read is None:  # no figure of it: an earlier call's is not of this one
            if overlay_dir is not None:
                (Path(overlay_dir) / f"{name}.png").unlink(missing_ok=True)
            if isinstance(truth, Truth):
                # Unreadable past the header read_truth checked: left out, not scored.
                truth.drop(name)
            continue
        image = read[0]
        peaks.append((name, float(image.max())))
        found = localizer(image)
        results[name] = {
            k: {"x": p.x, "y": p.y, "confidence": p.confidence} for k, p in found.items()
        }
        if overlay_dir is not None:
            landmark_figure(
                template_image, landmarks, image, {"LD": found}, overlay_dir / f"{name}.png",
                truth=dict((truth or {}).get(name, {})), names=(template_name, path.name),
            )  # fmt: skip
    skips.kept(images)  # refused when none could be read
    note = dim_note(peaks, "image(s)", "the network saw them near black")
    if log is not None and note is not None:
        log(f"note: {note}")
    return results


# --- scoring against true landmarks ------------------------------------------------------------
#: What a truth file holds (``localdisc localize --truth``; its refusals quote it).
TRUTH_SHAPE = 'truth must be a JSON object {"IMAGE": {"LANDMARK": [x, y], ...}, ...}'


class Truth(dict[str, dict[str, Point]]):
    """:func:`read_truth`'s true landmarks, ``{image name: {landmark: (x, y)}}``, and in
    ``metas`` each annotated image's :class:`~localdisc.data.io.ImageMeta` (from its header,
    :func:`~localdisc.data.io.read_image_meta`: its size checks the points, its pixel spacing
    gives the errors in mm)."""

    def __init__(
        self, points: Mapping[str, dict[str, Point]], metas: Mapping[str, ImageMeta]
    ) -> None:
        super().__init__(points)
        self.metas = dict(metas)

    @property
    def spacings(self) -> dict[str, tuple[float, float] | None]:
        """Each annotated image's (row, column) mm per pixel from its file
        (:class:`~localdisc.data.io.ImageMeta`'s ``spacing``; its ``spacing_source`` says which
        header gave it), ``None`` where it has none: the ``spacings`` of
        :func:`score_predictions`."""
        return {name: meta.spacing for name, meta in self.metas.items()}

    def drop(self, name: str) -> None:
        """Leave out image ``name`` (skipped as unreadable when localised)."""
        self.pop(name, None)
        self.metas.pop(name, None)


def read_truth(
    path: str | Path,
    images: list[tuple[str, Path]],
    landmarks: Iterable[str],
    skips: SkippedImages | None = None,
) -> Truth:
    """The true landmarks of a truth file (``localdisc localize --truth``), by image name.

    The file is ``{IMAGE: {LANDMARK: [x, y], ...}, ...}`` in each image file's pixels (x the
    column, y the row, as the template's landmarks). IMAGE is an image's name as the predictions
    give it (``images``' names: :func:`~localdisc.tasks.predict.collect_images`) or, where no
    name is that, the file name with its extension of one of ``images``. An image without an
    entry is not scored. Refused, naming the file: entries that match no image (or an image
    another entry matched, or several files of that name), landmarks that ``landmarks`` (the
    template's) do not have, and points outside their image (each annotated image's header is
    read here, :func:`~localdisc.data.io.read_image_meta`, no pixel decoded where its format
    allows: for its size, so that a (row, column) mix-up stops the command before any model
    work, and for its pixel spacing: :attr:`Truth.spacings`). ``skips``: what becomes of an
    annotated image that cannot be read (:class:`~localdisc.tasks.predict.SkippedImages`:
    skipped, its truth left out; default: its error is raised); one whose pixels alone are
    damaged is found when :func:`localize_images` reads it.
    """
    skips = skips or SkippedImages(count=len(images))
    path = Path(path)
    raw = _read_json(path, "truth")
    if not isinstance(raw, dict):
        raise LocaldiscError(f"{path}: {TRUTH_SHAPE}")
    if not raw:
        raise LocaldiscError(f"{path}: no images")
    files = dict(images)
    by_file: dict[str, list[str]] = {}
    for name, file in images:
        by_file.setdefault(file.name, []).append(name)
    truth: dict[str, dict[str, Point]] = {}
    entry: dict[str, str] = {}  # image name -> the file's key for it
    unknown = []
    for key, value in raw.items():
        if not isinstance(value, dict):
            raise LocaldiscError(f"{path}: {TRUTH_SHAPE}; image {key!r} is {_shown(value)}")
        points = _points(value, path, TRUTH_SHAPE, f"image {key!r} ")
        if key in files:
            name = key
        elif len(by_file.get(key, [])) == 1:
            name = by_file[key][0]
        elif key in by_file:
            raise LocaldiscError(
                f"{path}: image {key!r} is the file name of {len(by_file[key])} images "
                f"({', '.join(str(files[n]) for n in by_file[key])}); give its name instead "
                f"({', '.join(by_file[key])})"
            )
        else:
            unknown.append(key)
            continue
        if name in entry:
            raise LocaldiscError(
                f"{path}: images {entry[name]!r} and {key!r} are both {files[name]}; keep one"
            )
        entry[name], truth[name] = key, points
    if unknown:
        raise LocaldiscError(
            f"{path}: {len(unknown)} image(s) match none of the {len(images)} images given "
            f"({_first([repr(k) for k in unknown], 5)}): name an image as the predictions do "
            "(its file name without extension; found in a sub-folder of a folder given, the "
            "sub-folders and it joined by _: a_b_x for a/b/x.png) or by its file name (x.png)"
        )
    known = list(landmarks)
    for name, points in truth.items():
        other = [k for k in points if k not in known]
        if other:
            raise LocaldiscError(
                f"{path}: image {entry[name]!r} has landmark(s) "
                f"{', '.join(repr(k) for k in other)} that the template has not "
                f"(it has {', '.join(repr(k) for k in known)})"
            )
    metas = {}
    for name, points in list(truth.items()):
        try:
            meta = metas[name] = read_image_meta(files[name])
        except ImageReadError as exc:
            skips.unreadable(name, files[name], exc)  # raised unless it is skipped
            del truth[name]
            continue
        for k, point in points.items():
            check_inside(f"{path}: image {entry[name]!r} landmark {k!r}", point,
                         (meta.height, meta.width), str(files[name]))  # fmt: skip
    return Truth(truth, metas)


def check_pixel_spacing(spacing: float | None, name: str = "pixel_spacing") -> None:
    """Refuse a pixel spacing (mm per pixel) that is not a positive finite number (``name``: how
    the caller calls it, e.g. ``--pixel-spacing``); ``None`` (pixels only) passes."""
    if spacing is not None and not (_is_number(spacing) and spacing > 0):
        raise LocaldiscError(f"{name} must be a positive number of mm per pixel, not {spacing}")


def _spacing_pair(value: object, name: str) -> tuple[float, float]:
    """An image's (row, column) mm per pixel, checked (``name``: the image, for the error)."""
    what = f"the spacing of image {name!r}"
    if not (isinstance(value, tuple | list) and len(value) == 2):
        raise LocaldiscError(f"{what} must be (row, column) mm per pixel, not {value!r}")
    for v in value:
        check_pixel_spacing(v, what)
    return float(value[0]), float(value[1])


def radial_error(found: Point, true: Point, spacing: tuple[float, float] | None = None) -> float:
    """The distance between a predicted and a true (x, y): in pixels, or given the image's
    ``spacing``, (row, column) mm per pixel, in mm. x steps from column to column, so its pixels
    are the column spacing apart, y's the row spacing: ``hypot(dx * column, dy * row)``, right
    for anisotropic pixels too."""
    dx, dy = found[0] - true[0], found[1] - true[1]
    if spacing is None:
        return math.hypot(dx, dy)
    row, column = spacing
    return math.hypot(dx * column, dy * row)


def radial_summary(
    errors: Sequence[float], *, mm: Sequence[float] | None = None
) -> dict[str, float | None]:
    """Mean, median and std of radial errors in pixels; given ``mm``, the same errors in mm
    (:func:`radial_error` with each image's spacing), their mean, median and std and the
    fractions within each of :data:`SUCCESS_RADII_MM` too (``within_2_5mm`` for 2.5 mm)."""
    px = np.asarray(errors, dtype=float)
    out: dict[str, float | None] = {
        "n": len(px),
        "mean_px": float(px.mean()),
        "median_px": float(np.median(px)),
        "std_px": float(px.std()),
    }
    if mm is None:
        return out
    in_mm = np.asarray(mm, dtype=float)
    if in_mm.shape != px.shape:  # one mm error per px error, else the two summaries differ
        raise ValueError(f"{len(in_mm)} errors in mm for {len(px)} in px")
    out.update(
        mean_mm=float(in_mm.mean()),
        median_mm=float(np.median(in_mm)),
        std_mm=float(in_mm.std()),
    )
    out.update({success_key(r): float((in_mm <= r).mean()) for r in SUCCESS_RADII_MM})
    return out


#: The radii of the success rates (the share of errors within r mm): 2, 2.5, 3 and 4 mm as
#: cephalometric work reports them (ISBI 2015 challenge, Wang et al., Med. Image Anal. 2016),
#: 5 and 10 mm for the coarser landmarks of chest radiographs.
SUCCESS_RADII_MM = (2.0, 2.5, 3.0, 4.0, 5.0, 10.0)


def success_key(radius_mm: float) -> str:
    """The summary's key of the share within ``radius_mm``: ``within_5mm``, ``within_2_5mm``."""
    return f"within_{radius_mm:g}mm".replace(".", "_")


def score_predictions(
    predictions: Mapping[str, Mapping[str, Prediction | Mapping[str, float]]],
    truth: Mapping[str, Mapping[str, Point]],
    pixel_spacing: float | None = None,
    *,
    spacings: Mapping[str, tuple[float, float] | None] | None = None,
) -> dict[str, Any]:
    """Radial errors of one-shot landmark predictions against true landmarks.

    Args:
        predictions: ``{image: {landmark: prediction}}``, as :func:`localize_images` returns
            them (``{x, y, confidence}``) or a :class:`Localizer` finds them
            (:class:`Prediction`).
        truth: ``{image: {landmark: (x, y)}}`` in the same pixels (:func:`read_truth` reads a
            file of them). An image or landmark without truth is not scored; truth for one
            without a prediction is refused.
        pixel_spacing: mm per pixel of every image (rows and columns), to give the errors in mm
            too.
        spacings: instead, each image's own (row, column) mm per pixel, ``None`` where unknown
            (:attr:`Truth.spacings`: from the files' headers): mm errors are
            ``hypot(dx * column spacing, dy * row spacing)``. They are given only where every
            scored image has a spacing, so that the mm summaries cover the same errors as the
            px ones; otherwise px only, and ``summary["without_spacing"]`` names the scored
            images without one.

    Returns:
        ``{"errors": {image: {landmark: {"px": error, "mm": error}}}, "summary": {"images":
        scored images, "pixel_spacing": ..., "spacings": {image: [row, column]} where the mm
        come from ``spacings`` (else None), "without_spacing": [image, ...], "landmarks":
        {landmark: summary}, "all": summary over every landmark}}``, a summary being
        :func:`radial_summary`'s (``n``, mean, median and std in px; with spacings in mm too,
        and the fractions within 5 and 10 mm).
    """
    check_pixel_spacing(pixel_spacing)
    if pixel_spacing is not None and spacings is not None:
        raise LocaldiscError(
            "give pixel_spacing (one for every image) or spacings (each image's own), not both"
        )
    missing = [name for name in truth if name not in predictions]
    if missing:
        raise LocaldiscError(
            f"truth for {len(missing)} image(s) without predictions: "
            + _first([repr(n) for n in missing], 5)
        )
    scored = [name for name in predictions if truth.get(name)]
    per_image: dict[str, tuple[float, float]] = {}  # (row, column) mm per pixel of a scored image
    without: list[str] = []
    if pixel_spacing is not None:
        per_image = dict.fromkeys(scored, (pixel_spacing, pixel_spacing))
    elif spacings is not None:
        without = [name for name in scored if spacings.get(name) is None]
        if not without:
            per_image = {name: _spacing_pair(spacings[name], name) for name in scored}
    errors: dict[str, dict[str, dict[str, float]]] = {}
    by_landmark: dict[str, list[float]] = {}
    mm_by_landmark: dict[str, list[float]] = {}
    for name, found in predictions.items():
        for landmark, point in truth.get(name, {}).items():
            if landmark not in found:
                raise LocaldiscError(
                    f"truth of image {name!r} has landmark {landmark!r}, not predicted (predicted: "
                    f"{', '.join(repr(k) for k in found)})"
                )
            p = found[landmark]
            xy = (p.x, p.y) if isinstance(p, Prediction) else (p["x"], p["y"])
            px = radial_error(xy, point)
            errors.setdefault(name, {})[landmark] = {"px": px}
            by_landmark.setdefault(landmark, []).append(px)
            if per_image:
                mm = radial_error(xy, point, per_image[name])
                errors[name][landmark]["mm"] = mm
                mm_by_landmark.setdefault(landmark, []).append(mm)
    if not errors:
        raise LocaldiscError("no truth to score: no image has a true landmark")
    # In the predictions' landmark order (the template's), as predictions.json lists them.
    every = dict.fromkeys(k for found in predictions.values() for k in found)
    order = [k for k in every if k in by_landmark]

    def summary(keys: list[str]) -> dict[str, float | None]:
        px = [e for k in keys for e in by_landmark[k]]
        mm = [e for k in keys for e in mm_by_landmark[k]] if per_image else None
        return radial_summary(px, mm=mm)

    from_files = spacings is not None and bool(per_image)
    return {
        "errors": errors,
        "summary": {
            "images": len(errors),
            "pixel_spacing": pixel_spacing,
            "spacings": {n: list(per_image[n]) for n in scored} if from_files else None,
            "without_spacing": without,
            "landmarks": {k: summary([k]) for k in order},
            "all": summary(order),
        },
    }


def spacing_note(summary: Mapping[str, Any], metas: Mapping[str, ImageMeta] | None = None) -> str:
    """How :func:`score_predictions`' ``summary`` gives the errors, for ``localdisc localize``'s
    log: in mm at ``--pixel-spacing``, in mm from the images' own spacing (where the files hold
    it: ``metas``, :attr:`Truth.metas`), or in px only (naming images without a spacing)."""
    if summary["pixel_spacing"] is not None:
        return f"in px and in mm at --pixel-spacing {summary['pixel_spacing']:g} mm"
    if summary["spacings"]:
        metas = metas or {}
        # The tags that gave them (ImageMeta.spacing_source), each once; the detector's spacing
        # measures anatomy a few per cent large (X-ray magnification): said.
        found = [
            f"{source} (at the detector: errors a few per cent high)"
            if source == "ImagerPixelSpacing" else source
            for source in dict.fromkeys(
                metas[n].spacing_source for n in summary["spacings"] if n in metas
            )
            if source
        ]  # fmt: skip
        values = {tuple(s) for s in summary["spacings"].values()}
        if len(values) == 1:  # one spacing for all: say it
            row, column = values.pop()
            found.append(f"{row:g} x {column:g} mm, row x column")
        where = f" ({'; '.join(found)})" if found else ""
        return f"in px and in mm from the images' own pixel spacing{where}"
    without = summary["without_spacing"]
    if without:
        return (
            f"in px only: {len(without)} image(s) have no pixel spacing in their files "
            f"({_first(without, 3)}); "
            "--pixel-spacing MM gives one for every image"
        )
    return "in px"


def score_table(summary: Mapping[str, Any]) -> str:
    """:func:`score_predictions`' ``summary`` as a plain-text table: per landmark and over all,
    n, mean and median error in px (and in mm where the summary has them)."""
    rows = {**summary["landmarks"], "all landmarks": summary["all"]}
    mm = "mean_mm" in summary["all"]
    keys = ["mean_px", "median_px"] + (["mean_mm", "median_mm"] if mm else [])
    width = max(len("landmark"), *(len(k) for k in rows))
    lines = [
        f"{'landmark':<{width}} {'n':>5} " + " ".join(f"{k.replace('_', ' '):>9}" for k in keys)
    ]
    for name, s in rows.items():
        lines.append(f"{name:<{width}} {s['n']:>5} " + " ".join(f"{s[k]:>9.2f}" for k in keys))
    return "\n".join(lines)


def check_overlay_dir(folder: Path, images: list[tuple[str, Path]], template: str | Path) -> None:
    """Refuse an overlay folder where a figure ``NAME.png`` would overwrite an input (an image or
    the template: the folder of PNG inputs given as the overlay folder lost them all), or that
    holds PNGs other than this run's (a rerun on other images would mix two runs' figures)."""
    folder = Path(folder)
    inputs = {Path(template).resolve(), *(path.resolve() for _, path in images)}
    for name, _ in images:
        figure = folder / f"{name}.png"
        if figure.resolve() in inputs:
            raise LocaldiscError(
                f"overlay folder {folder}: its figure {figure.name} would overwrite the input "
                f"image {figure}; give a folder of its own"
            )
    written = {f"{name}.png" for name, _ in images}
    others = sorted(p.name for p in folder.glob("*.png") if p.name not in written)
    if others:
        raise LocaldiscError(
            f"overlay folder {folder} holds {len(others)} PNG(s) that are not overlays of these "
            f"images ({_first(others, 3)}): figures of another run? Give a new or empty "
            "folder, or remove them"
        )


def landmark_figure(
    template: np.ndarray,
    landmarks: dict[str, Point],
    image: np.ndarray,
    predictions: dict[str, dict[str, Prediction]],
    path: str | Path,
    truth: dict[str, Point] | None = None,
    names: tuple[str, str] | None = None,
) -> Path:
    """Template with its landmarks, and the image with each method's predictions (and truth);
    ``names``: the template's and the image's file names, for the panels' titles."""
    from localdisc.eval.figures import _plt, _save, _show, plain

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6))
    _show(axes[0], template)
    template_title, image_title = (
        (f"template {plain(names[0])}", f"{plain(names[1])}: predictions")
        if names
        else ("template", "predictions")
    )
    axes[0].set_title(template_title, fontsize=9)
    colours = {name: f"C{i % 10}" for i, name in enumerate(landmarks)}
    for name, (x, y) in landmarks.items():
        axes[0].plot([x], [y], "+", color=colours[name], markersize=12, mew=2)
        axes[0].annotate(name, (x, y), color=colours[name], fontsize=7, xytext=(4, 4),
                         textcoords="offset points")  # fmt: skip
    _show(axes[1], image)
    axes[1].set_title(image_title, fontsize=9)
    # One marker shape per method, one colour per landmark (as in the template's labels).
    markers = ["o", "s", "^", "D"]
    for i, (method, found) in enumerate(predictions.items()):
        for name, p in found.items():
            axes[1].plot([p.x], [p.y], markers[i % 4], mfc="none", mec=colours.get(name, "w"),
                         markersize=9, mew=1.5)  # fmt: skip
        axes[1].plot([], [], markers[i % 4], mfc="none", mec="w", label=method)
    if truth:
        for name, (x, y) in truth.items():
            axes[1].plot([x], [y], "+", color=colours.get(name, "lime"), markersize=12, mew=2)
        axes[1].plot([], [], "+", color="w", label="truth")
    for name, colour in colours.items():
        axes[1].plot([], [], "s", color=colour, label=name)
    axes[1].legend(fontsize=6, loc="lower right", facecolor="0.3", labelcolor="w")
    return _save(fig, path)
