"""How similar are two local regions? Cosine similarity of LD embeddings, pixel or patch level.

LD embeds every pixel on a hypersphere (METHOD.md 1-3); similar tissue gets similar vectors, within
an image and across images. At ``pixel`` level the map is the cosine similarity of one pixel's
embedding with every pixel's; at ``patch`` level the embeddings are first pooled over a patch
around every pixel, as in training (uniform, or Gaussian for center-sensitive runs; TPAMI Sec. 6).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from localdisc.data.io import dim_note, header_notes, read_image
from localdisc.data.preprocess import as_raw_image, resize_image, roi_box
from localdisc.errors import InputError, LocaldiscError
from localdisc.models.ld import LDModel, refuse_peer_run, split_weights_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Points are (x, y) = (column, row) in pixels of the image as given.
Point = tuple[float, float]

#: The smallest working size (longer side, pixels): the network's multiple of 16.
MIN_SIZE = 16


def check_size(size: int | None, name: str = "size") -> None:
    """Refuse a working size below :data:`MIN_SIZE` (``name``: how the caller calls it, e.g.
    ``--size``); ``None`` (the model's own size) passes."""
    # bool is an int: True would otherwise pass as a size of 1 and fail far inside.
    if size is not None and (isinstance(size, bool) or size < MIN_SIZE):
        raise LocaldiscError(f"{name} must be at least {MIN_SIZE} pixels, not {size}")


@dataclass(frozen=True)
class PatchKernel:
    """The pooling that makes a patch embedding: a side in pixels and, if center-sensitive, the
    Gaussian's width as a fraction of the side (``None``: uniform, the published LD)."""

    side: int
    center_sigma: float | None = None

    def weights(self, scale: float = 1.0) -> Tensor:
        """1-D weights of the (separable) kernel, for images resized by ``scale``."""
        side = max(1, round(self.side * scale)) | 1  # odd: centred on a pixel
        pos = torch.arange(side, dtype=torch.float32) - side // 2
        if self.center_sigma is None:
            w = torch.ones(side)
        else:  # the width of pre-training's cells (losses.patch), not of the odd side
            w = torch.exp(-0.5 * (pos / (self.center_sigma * self.side * scale)) ** 2)
        return w / w.sum()


@dataclass
class LoadedModel:
    """An LD model with the patch kernel of its pre-training (from ``config.json``)."""

    model: LDModel
    kernel: PatchKernel
    pool_size: int = 512  # the size pool images had in pre-training: the scale it knows
    run_dir: Path | None = None
    #: Crop a fundus model's images to their field of view first (False: resize them whole,
    #: e.g. the baseline of ``benchmarks/fundus_framing.py``).
    frame_fundus: bool = True

    @property
    def frames_fov(self) -> bool:
        """Whether images are cropped to their field of view before resizing, as pre-training
        cropped its pool (:func:`~localdisc.data.pool.prepare_pool_image`): fundus models."""
        config = getattr(self.model, "config", None)  # stand-in models in tests may have none
        return self.frame_fundus and getattr(config, "modality", None) == "fundus"


def load_model(run_dir: str | Path, *, device: str = "cpu") -> LoadedModel:
    """Load an LD run and the patch kernel it was trained with (cell side = crop size / 8).

    ``run_dir`` may also name one of the run's weight files (``RUN/stage1.safetensors``,
    ``RUN/model_best.safetensors``), as :meth:`LDModel.from_pretrained` takes it.
    """
    refuse_peer_run(run_dir)  # said now, not at the first image (the viewer's: in the page)
    model = LDModel.from_pretrained(run_dir, device=device)
    # A weight file's settings are those of the run folder it lies in.
    folder, _ = split_weights_path(run_dir)
    return _with_run_settings(model, folder)


def _with_run_settings(model: LDModel, folder: Path | None) -> LoadedModel:
    """``model`` with the patch kernel and pool size of its run's pre-training (``folder``'s
    ``config.json``), or of the default pre-training settings without a run."""
    from localdisc.engine.pretrain import PretrainConfig

    raw = json.loads((folder / "config.json").read_text()).get("pretrain") if folder else None
    pretrain = PretrainConfig.from_dict(raw) if raw else PretrainConfig()
    kernel = PatchKernel(max(1, pretrain.size // 8), pretrain.center_sigma)
    return LoadedModel(model, kernel, pretrain.resolved_pool_size, folder)


#: What the similarity tools take as a model.
ModelLike = LoadedModel | LDModel | str | Path


def resolve_model(model: ModelLike, device: str | None = None) -> LoadedModel:
    """``model`` as a :class:`LoadedModel`: a run folder or weight file is loaded
    (:func:`load_model`) on ``device`` (``None``: the CPU, as :func:`load_model`); an
    :class:`LDModel` gets the settings of the run it was loaded from (the defaults of
    pre-training if it was built in memory). A model given in memory is moved to ``device``
    when one is given, else used where it is. ``device``: ``auto``, ``cpu``, ``cuda``,
    ``cuda:N`` or ``mps`` (:func:`~localdisc.engine.distributed.resolve_device`)."""
    from localdisc.engine.distributed import resolve_device

    if isinstance(model, str | Path):  # LDModel.from_pretrained resolves the device
        return load_model(model, device=device or "cpu")
    if isinstance(model, LDModel):
        model = _with_run_settings(model, model.run_dir)
    if not isinstance(model, LoadedModel):
        raise InputError(f"model must be an LD run folder, one of its weight files, an LDModel "
                         f"or load_model's result, not {type(model).__name__}")  # fmt: skip
    if device is not None:  # "auto" too; a misspelt one named, not torch's RuntimeError
        model.model.to(resolve_device(device, other=True))
    return model


def dense_patch_embeddings(v: Tensor, kernel: PatchKernel, scale: float = 1.0) -> Tensor:
    """Patch embedding centred on every pixel: ``[D, H, W]`` pixel embeddings pooled with the
    kernel (a separable depthwise convolution), then L2-normalised."""
    w = kernel.weights(scale).to(v.device, v.dtype)
    d, r = v.shape[0], w.numel() // 2
    x = v[None]
    x = F.conv2d(x, w.view(1, 1, 1, -1).expand(d, 1, 1, -1), padding=(0, r), groups=d)
    x = F.conv2d(x, w.view(1, 1, -1, 1).expand(d, 1, -1, 1), padding=(r, 0), groups=d)
    return F.normalize(x[0], dim=0)


def as_image(image: np.ndarray | Tensor | str | Path, name: str = "image") -> np.ndarray:
    """A raw ``H x W x C`` image in [0, 1] from a file (:func:`~localdisc.data.io.read_image`)
    or from memory (:func:`~localdisc.data.preprocess.as_raw_image`: ``uint8`` and ``uint16`` are
    scaled, ``[C, H, W]`` tensors taken; ``name`` names it in errors)."""
    if isinstance(image, str | Path):
        return read_image(image)[0]
    return as_raw_image(image, name)


def read_images(paths: Sequence[Path], log: Callable[[str], None]) -> list[np.ndarray]:
    """Each file's raw image, as :func:`as_image` reads it, with a line in ``log`` where any
    carries an EXIF orientation, which is not applied (:func:`~localdisc.data.io.orientation_note`:
    points taken in a viewer that applies it are in another frame), and where any is dim
    (:func:`~localdisc.data.io.dim_note`: 12-bit data in a 16-bit file)."""
    read = [read_image(path) for path in paths]
    peaks = [(path.name, float(image.max())) for path, (image, _) in zip(paths, read, strict=True)]
    notes = [
        *header_notes([meta for _, meta in read]),
        dim_note(peaks, "image(s)", "the network sees them near black"),
    ]
    for note in notes:
        if note is not None:
            log(f"note: {note}")
    return [image for image, _ in read]


def as_points(points: object) -> list[Point]:
    """Query points as ``[(x, y), ...]`` floats: from a list of pairs, an ``N x 2`` array or a
    single ``(x, y)`` pair."""
    try:
        arr = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.empty(0)
    if arr.ndim == 1 and arr.size == 2:  # one point
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 2 or not len(arr):
        raise InputError(
            f"points must be (x, y) pixels, one pair or a list of them, not {points!r}"
        )
    if not np.isfinite(arr).all():
        raise InputError(f"points must be finite, not {points!r}")
    return [(float(x), float(y)) for x, y in arr]


#: Scale factors (x, y) from an image's pixels to its resized pixels.
Scale = tuple[float, float]


def resized_shape(shape: tuple[int, ...], size: int | None) -> tuple[tuple[int, int], Scale]:
    """The (height, width) of an image of ``shape`` with its longer side ``size`` (``None``: as
    is), and the (x, y) scale from its pixels to those.

    Each side is rounded to whole pixels on its own, so the shorter side's scale differs from
    the longer side's (97 x 203 at 64: 31 / 97 = 0.3196 vs 64 / 203 = 0.3153): one scale for both
    would misplace points near the far edge of the shorter side by up to half a resized pixel.
    No side rounds to nothing: a strip thinner than ``max(h, w) / size / 2`` keeps one pixel.
    """
    h, w = shape[:2]
    if size is None or size == max(h, w):
        return (h, w), (1.0, 1.0)
    scale = size / max(h, w)
    rh, rw = max(1, round(h * scale)), max(1, round(w * scale))
    return (rh, rw), (rw / w, rh / h)


#: The top-left pixel (x, y) of a crop, in the pixels of the image it was cut from.
Offset = tuple[int, int]


def to_resized(point: Point, scale: Scale, offset: Offset = (0, 0)) -> Point:
    """(x, y) in an image's pixels -> the same place in its resized pixels (pixel centres at
    integer coordinates in both, as in ``resize_image`` and bilinear ``align_corners=False``);
    ``offset``: the image resized is a crop of it from that pixel on."""
    x, y = point[0] - offset[0], point[1] - offset[1]
    return (x + 0.5) * scale[0] - 0.5, (y + 0.5) * scale[1] - 0.5


def from_resized(point: Point, scale: Scale, offset: Offset = (0, 0)) -> Point:
    """The inverse of :func:`to_resized`."""
    x, y = (point[0] + 0.5) / scale[0] - 0.5, (point[1] + 0.5) / scale[1] - 0.5
    return x + offset[0], y + offset[1]


@dataclass(frozen=True)
class Framing:
    """How a working image was made from an image: cut to ``box`` (``y0, y1, x0, x1``,
    half-open, in the image's pixels), then resized by ``scale`` (x, y)."""

    box: tuple[int, int, int, int]
    scale: Scale

    @property
    def offset(self) -> Offset:
        return self.box[2], self.box[0]

    def apply(self, image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """The working image of ``image``: cut to ``box``, resized to ``shape`` (its size,
        :func:`working_framing`'s) unless the scale is 1."""
        h, w = image.shape[:2]
        y0, y1, x0, x1 = self.box
        crop = image if self.box == (0, h, 0, w) else image[y0:y1, x0:x1]
        return crop if self.scale == (1.0, 1.0) else resize_image(crop, shape)

    def to_working(self, point: Point) -> Point:
        """(x, y) in the image's pixels -> the working image's (:func:`to_resized`)."""
        return to_resized(point, self.scale, self.offset)

    def from_working(self, point: Point) -> Point:
        """(x, y) in the working image's pixels -> the image's (:func:`from_resized`)."""
        return from_resized(point, self.scale, self.offset)

    def grid_to_working(
        self, image_shape: tuple[int, int], grid_shape: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Where the pixel centres of a grid of ``grid_shape`` laid over the whole image of
        ``image_shape`` (e.g. the viewer's display image) lie in the working image: its x per
        grid column and y per grid row, in working pixels (outside ``[0, w)`` beyond the
        crop)."""
        h, w = image_shape
        grid_scale = (grid_shape[1] / w, grid_shape[0] / h)
        xs, _ = self.to_working(from_resized((np.arange(grid_shape[1]), 0.0), grid_scale))
        _, ys = self.to_working(from_resized((0.0, np.arange(grid_shape[0])), grid_scale))
        return np.asarray(xs), np.asarray(ys)

    def to_grid(
        self, maps: Tensor, image_shape: tuple[int, int], grid_shape: tuple[int, int]
    ) -> Tensor:
        """``[P, h, w]`` maps on the working image -> ``[P, *grid_shape]`` on a grid laid over the
        whole image of ``image_shape`` (the viewer's display image): bilinear at the grid's
        pixel centres (:meth:`grid_to_working`), beyond the crop the nearest crop pixel's. Where
        the working image is no larger than the crop, on the image's own grid this is
        :meth:`to_image` (to rounding); on a smaller grid, the same map sampled there."""
        xs, ys = self.grid_to_working(image_shape, grid_shape)
        h, w = maps.shape[-2:]
        # grid_sample's coordinates (align_corners=False): -1 and 1 are the outer pixel edges.
        u = torch.as_tensor((xs + 0.5) / w * 2 - 1, dtype=maps.dtype)
        t = torch.as_tensor((ys + 0.5) / h * 2 - 1, dtype=maps.dtype)
        grid = torch.stack(torch.meshgrid(u, t, indexing="xy"), -1)[None].to(maps.device)
        return F.grid_sample(maps[None], grid, mode="bilinear", padding_mode="border",
                             align_corners=False)[0]  # fmt: skip

    def to_image(self, maps: Tensor, shape: tuple[int, int]) -> Tensor:
        """``[P, h, w]`` maps on the working image -> ``[P, H, W]`` on the image of ``shape``:
        interpolated back to the crop (bilinear, the pixel-centre convention of
        :func:`to_resized`); outside the crop, the nearest crop pixel's value (the black margin
        :func:`~localdisc.data.preprocess.roi_box` keeps around the FOV, for a fundus image)."""
        y0, y1, x0, x1 = self.box
        if maps.shape[-2:] != (y1 - y0, x1 - x0):
            maps = F.interpolate(maps[None], size=(y1 - y0, x1 - x0), mode="bilinear",
                                 align_corners=False)[0]  # fmt: skip
        pad = (x0, shape[1] - x1, y0, shape[0] - y1)
        return F.pad(maps[None], pad, mode="replicate")[0] if any(pad) else maps


def working_image(
    loaded: LoadedModel, image: np.ndarray, size: int | None
) -> tuple[np.ndarray, Framing]:
    """``image`` as the model is shown it, with its :class:`Framing`: for a fundus model cut to
    its field of view first (:func:`~localdisc.data.preprocess.roi_box`, as pre-training's
    pool), then resized to the longer side ``size``, a smaller crop enlarged
    (:func:`resized_shape`).

    Why: the pool's photographs were cropped to the FOV before resizing, and embeddings are
    not scale-invariant: a camera's 3:2 frame with wide black borders, resized whole, showed
    the retina smaller than in pre-training (DRIVE photographs padded to 3:2 had their optic
    discs localised 161 px off, median, against 18 unpadded). Radiographs are resized whole,
    as in pre-training.
    """
    framing, shape = working_framing(loaded, image, size)
    return framing.apply(image, shape), framing


def working_framing(
    loaded: LoadedModel, image: np.ndarray, size: int | None
) -> tuple[Framing, tuple[int, int]]:
    """The :class:`Framing` and (height, width) of :func:`working_image`'s image, without
    resizing (the viewer sizes its caches with it before any image is embedded)."""
    h, w = image.shape[:2]
    box = roi_box(image) if loaded.frames_fov else (0, h, 0, w)
    y0, y1, x0, x1 = box
    shape, scale = resized_shape((y1 - y0, x1 - x0), size)
    return Framing(box, scale), shape


def check_inside(what: str, point: Point, shape: tuple[int, ...], source: str) -> None:
    """Raise :class:`~localdisc.errors.LocaldiscError` when ``point`` (x, y) is outside an image
    of ``shape`` (``what``: the point as the message names it, e.g. ``landmark 'heart'``;
    ``source``: the image, e.g. its file), saying the (x, y) order; where the point's numbers
    swapped would be inside, it asks whether they are (row, column), the order of numpy indices
    and of many annotation tools. Pixel ``(i, j)``'s centre is at ``(i, j)``: an image ``w``
    wide spans ``-0.5 <= x <= w - 0.5`` (closed: a point and its mirror image ``w - 1 - x``
    are inside together)."""
    h, w = shape[:2]
    x, y = point

    def inside(x: float, y: float) -> bool:
        return -0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5

    if inside(x, y):
        return
    swapped = inside(y, x)
    hint = f"; ({y:g}, {x:g}) would be inside: given as (row, column)?" if swapped else ""
    raise LocaldiscError(
        f"{what} ({x:g}, {y:g}) is outside {source} ({w} wide, {h} high): x is the column, y "
        f"the row, in its pixels{hint}"
    )


def nearest_pixel(coordinate: float, length: int) -> int:
    """The pixel whose centre is nearest ``coordinate``, inside ``[0, length)``."""
    return min(max(round(coordinate), 0), length - 1)


def embedding_map(loaded: LoadedModel, image: np.ndarray, level: str = "pixel") -> Tensor:
    """``[D, H, W]`` unit vectors of ``image`` at ``pixel`` or ``patch`` level."""
    if level not in ("pixel", "patch"):
        raise LocaldiscError(f"level must be pixel or patch, not {level!r}")
    v = loaded.model.embed(image)
    return v if level == "pixel" else dense_patch_embeddings(v, loaded.kernel)


@dataclass
class SimilarityMaps:
    """``query``: ``[P, H, W]`` maps on the query image, one per point; ``targets``: the same on
    each target image; ``best``: per target, the (x, y) best match of each point; ``level``:
    ``pixel`` or ``patch``, the embeddings compared."""

    points: list[Point]
    query: np.ndarray
    targets: list[np.ndarray]
    best: list[list[Point]]
    level: str = "pixel"


def similarity(
    model: ModelLike,
    image: np.ndarray | Tensor | str | Path,
    points: list[Point] | Point | np.ndarray,
    targets: Sequence[np.ndarray | Tensor | str | Path] | np.ndarray | Tensor | str | Path = (),
    *,
    level: str = "pixel",
    size: int | None = None,
    device: str | None = None,
) -> SimilarityMaps:
    """Cosine-similarity maps of each query point of ``image`` on ``image`` and on ``targets``.

    Args:
        model: an LD run directory (or one of its weight files), an :class:`LDModel`, or
            :func:`load_model`'s result (:func:`resolve_model`).
        image: the query image: a file, or in memory as :func:`as_image` takes it.
        points: query points as (x, y) pixels of ``image``: a list of pairs or one pair.
        targets: other images (in memory or files); their maps are at their own sizes. One
            file, or a grey H x W array or tensor, may be given alone (an array of more axes,
            which may be a stack, is refused alone: give a list).
        level: ``pixel`` or ``patch`` (see the module docstring).
        size: resize every image (for a fundus model: its field of view,
            :func:`working_image`) to this longer side first (``None``: the size of the
            model's pre-training pool, as :mod:`localdisc.tasks.localize` and the viewer do:
            embeddings are not scale-invariant, and a 2048-pixel target of a 512-pixel query
            at their own sizes matched 400 pixels off); maps and points stay in the images'
            own pixels.
        device: where the network runs (``None``: the CPU for a run given as a path, else
            where the model is).
    """
    check_size(size)
    points = as_points(points)
    # One target alone: an array was iterated row by row (a "target" per row), a file name
    # character by character. An array of more than two axes may be one image or a stack of
    # them (3 x H x W: three grey images, or one colour one, blended): a list says which.
    if isinstance(targets, str | Path) or (
        isinstance(targets, np.ndarray | Tensor) and targets.ndim == 2
    ):
        targets = [targets]
    elif isinstance(targets, np.ndarray | Tensor):
        raise InputError(
            f"targets: an array of shape {tuple(targets.shape)} given alone may be one image or "
            "a stack of them: give a list, [image] for one, list(stack) for each of a stack"
        )
    loaded = resolve_model(model, device)
    size = size or loaded.pool_size
    raw = as_image(image, "the query image")
    h, w = raw.shape[:2]
    source = str(image) if isinstance(image, str | Path) else "the query image"
    for point in points:
        check_inside("query point", point, raw.shape, source)
    small, framing = working_image(loaded, raw, size)
    v = embedding_map(loaded, small, level)
    # The resized pixel nearest the point, the one the maps below (interpolated back with the
    # same pixel-centre convention) peak at.
    resized_points = [framing.to_working(point) for point in points]
    queries = torch.stack(
        [v[:, nearest_pixel(y, v.shape[1]), nearest_pixel(x, v.shape[2])]
         for x, y in resized_points]
    )  # fmt: skip

    def maps(vectors: Tensor, framing: Framing, shape: tuple[int, int]) -> Tensor:
        sim = torch.einsum("pd,dhw->phw", queries, vectors)
        return framing.to_image(sim, shape).clamp(-1, 1)

    query_maps = maps(v, framing, (h, w)).cpu().numpy()
    target_maps, best = [], []
    for i, target in enumerate(targets):
        t_raw = as_image(target, f"target {i + 1}")
        t_small, t_framing = working_image(loaded, t_raw, size)
        sim = embedding_map(loaded, t_small, level)
        sim = maps(sim, t_framing, t_raw.shape[:2]).cpu().numpy()
        target_maps.append(sim)
        best.append([_argmax_xy(m) for m in sim])
    return SimilarityMaps(points, query_maps, target_maps, best, level)


def _argmax_xy(sim: np.ndarray) -> Point:
    y, x = np.unravel_index(int(np.argmax(sim)), sim.shape)
    return float(x), float(y)


def similarity_plot(
    result: SimilarityMaps,
    image: np.ndarray,
    targets: list[np.ndarray],
    names: list[str] | None = None,
) -> Figure:
    """The figure of :func:`similarity_figure`, unsaved (a matplotlib ``Figure``)."""
    from localdisc.eval.figures import similarity_maps_plot

    queries = [(0, y, x, f"point {p + 1} ({x:g}, {y:g})") for p, (x, y) in enumerate(result.points)]
    maps = [[result.query[p], *(t[p] for t in result.targets)] for p in range(len(queries))]
    embeddings = (
        "patch embeddings (pooled as in pre-training)"
        if result.level == "patch"
        else "pixel embeddings"
    )
    return similarity_maps_plot(
        [image, *targets],
        queries,
        maps,
        names=names or ["query", *(f"target {i + 1}" for i in range(len(targets)))],
        title=f"Cosine similarity of each pixel to the query point (white x), {embeddings}",
    )


def similarity_figure(
    result: SimilarityMaps,
    image: np.ndarray,
    targets: list[np.ndarray],
    path: str | Path,
    names: list[str] | None = None,
) -> Path:
    """One row per query point: the query image with the point marked, then the point's
    similarity map on the query image and on each target (best match marked: cyan circle), with
    a colour bar from -1 to 1, as pre-training's similarity figures
    (:func:`~localdisc.eval.figures.similarity_maps_plot`). ``names`` title the images (the
    command gives their file names; default ``query``, ``target 1`` ...). Returns the file
    written (``.png`` added to a path without a suffix, see :func:`figure_path`). Before it,
    the folder's :data:`~localdisc.data.datasets.FIGURE_RECORD` lists it: a figure written
    among images is read as no image by the commands that read that folder (``--targets``, a
    pool), whatever its name."""
    from localdisc.data.datasets import FIGURE_RECORD
    from localdisc.engine.checkpoint import atomic_write_text
    from localdisc.eval.figures import _save

    path = figure_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figures = sorted({*figures_listed(path.parent), path.name})
    record = {"localdisc_figures": figures}
    atomic_write_text(path.parent / FIGURE_RECORD, json.dumps(record, indent=1))
    return _save(similarity_plot(result, image, targets, names), path)


def figures_listed(folder: Path) -> list[str]:
    """The figures the record in ``folder`` lists
    (:func:`~localdisc.data.datasets.recorded_figures`); a file of its name that another
    program wrote is refused, left as it is."""
    from localdisc.data.datasets import FIGURE_RECORD, recorded_figures

    listed = recorded_figures(folder)
    if listed is None:
        raise LocaldiscError(
            f"{folder / FIGURE_RECORD}: not the record of figures this package writes; write "
            "the figure into another folder (nothing was written)"
        )
    return listed


def figure_path(path: str | Path) -> Path:
    """``path`` as a figure file: ``.png`` added when it has no suffix (matplotlib would add it
    too, unseen by the caller), refused when matplotlib cannot write its suffix or when it is a
    folder (``FOLDER.png`` was written beside it). Check it before the work, not after."""
    from matplotlib.backend_bases import FigureCanvasBase

    path = Path(path)
    if not path.suffix and not path.is_dir():
        path = path.with_name(path.name + ".png")
    if path.is_dir():
        raise LocaldiscError(f"--out {path} is a folder; give the figure's file name")
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix[1:].lower() not in formats:
        raise LocaldiscError(
            f"{path}: cannot write a figure as {path.suffix}; use one of "
            f"{', '.join('.' + f for f in sorted(formats))}"
        )
    return path


def parse_point(text: str) -> Point:
    """``"X,Y"`` -> (x, y)."""
    try:
        x, y = (float(part) for part in text.split(","))
    except ValueError:
        raise LocaldiscError(f"a point is X,Y in pixels (e.g. 120,88), not {text!r}") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise LocaldiscError(f"point {text!r} is not finite")
    return x, y
