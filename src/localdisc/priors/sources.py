"""Where reference masks come from: a folder, a known data set's masks, or a simulator.

A *prior spec* is one of

* a folder of mask images (``/data/octa_vessels``), searched recursively;
* ``NAME:ROOT[:TARGET]``, the masks of a known data set (``drive:/data/DRIVE``,
  ``jsrt_scr:/data:heart``, ``synthetic_fundus:40``), every split, the set's default target
  unless ``TARGET`` is given;
* ``simulated:NAME`` with ``NAME`` one of :data:`~localdisc.priors.simulate.SIMULATORS`.

Masks are padded to a square (centred, background) so that shapes keep their proportions, then
resized to the requested size by nearest neighbour; for a prior that keeps its pose
(``pose="kept"``) they are stretched to the square instead, as the images are, so that a mask
lies where the structure lies in an image of the same shape. Nearest keeps thin vessels' area:
with area averaging thresholded at 0.5, DRIVE, OCTA and DSA masks at 256 px lose 4-14% of their
vessel pixels, while nearest keeps the vessel fraction within 1%. Neither keeps a thin tree in one
piece at a small size (a DSA tree of 1 piece makes about 4 at 256 px and 22 at 128 with nearest).
The augmentation smooths the steps anyway. Masks that are empty, or all foreground (a blank white
image), after resizing are left out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from localdisc.data.datasets import (
    DATASETS,
    Item,
    SegmentationDataset,
    absolute_path,
    dataset_class,
    load_dataset,
    parse_data_spec,
    split_target,
    walk,
)
from localdisc.data.io import read_image, read_mask
from localdisc.data.preprocess import resize_mask
from localdisc.errors import DatasetError, ImageReadError, LocaldiscError
from localdisc.priors.simulate import SIMULATORS, simulate_mask

#: File endings read from a mask folder (lower case; others, e.g. ``README.txt``, are ignored).
MASK_SUFFIXES: tuple[str, ...] = (
    ".png",
    ".gif",
    ".bmp",
    ".tif",
    ".tiff",
    ".jpg",
    ".jpeg",
    ".ppm",
    ".pgm",
    ".pbm",
    ".ppm.gz",
    ".pgm.gz",
)

_FORMS = "a folder of mask images, NAME:ROOT[:TARGET] with a known data set, or simulated:NAME"
_SIMULATED = "simulated"


@dataclass(frozen=True)
class _Spec:
    kind: str  # "folder", "dataset" or "simulated"
    name: str = ""  # data set or simulator name
    root: Path | None = None
    target: str | None = None


def _parse(spec: str | os.PathLike[str]) -> _Spec:
    """Split a prior spec into its form and parts (no file system access beyond ``exists``);
    a folder may be a ``Path`` (it was called an empty spec)."""
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise DatasetError(f"empty shape prior spec {spec!r}; expected {_FORMS}")
    prefix, sep, rest = spec.partition(":")
    if sep and prefix.lower() == _SIMULATED:
        name = rest.strip().lower()
        if name not in SIMULATORS:
            raise DatasetError(
                f"shape prior {spec!r}: unknown simulator {rest!r}; known: {', '.join(SIMULATORS)}"
            )
        return _Spec("simulated", name)
    if sep and prefix.lower() in DATASETS:
        try:
            data, target = split_target(spec)
        except DatasetError as exc:  # a mistyped target
            raise DatasetError(f"shape prior {spec!r}: {exc}") from None
        name, root = parse_data_spec(data)
        return _Spec("dataset", name, root, target)
    return _Spec("folder", root=Path(spec).expanduser())


def absolute_prior_spec(spec: str, *, missing: bool = False) -> str:
    """A prior spec with its folder or ROOT absolute (:func:`absolute_path`; a ``:TARGET``
    kept); simulators, generated sets and specs that name nothing that exists unchanged (made
    absolute too where ``missing``)."""
    try:
        p = _parse(spec)
    except DatasetError:  # left for the prior's reader to name
        return spec
    if p.root is None or not (missing or p.root.exists()):
        return spec
    if p.kind == "dataset" and not dataset_class(p.name).requires_root:
        return spec  # synthetic_xray:40: a count, not a folder
    root = absolute_path(str(p.root), missing=missing)
    if p.kind == "folder":
        return root
    return f"{p.name}:{root}" + (f":{p.target}" if p.target else "")


def _is_mask_file(name: str) -> bool:
    lower = name.lower()
    return any(lower.endswith(s) and len(lower) > len(s) for s in MASK_SUFFIXES)


def _mask_files(folder: Path, spec: str) -> list[Path]:
    """Mask files under ``folder``, recursive, sorted by path; hidden entries skipped."""
    if not folder.exists():
        hint = ""
        prefix = spec.partition(":")[0]
        if ":" in spec and prefix and "/" not in prefix and "\\" not in prefix:
            hint = f" ({prefix!r} is not a known data set; known: {', '.join(DATASETS)})"
        raise DatasetError(f"{folder}: no such folder for the shape prior{hint}; expected {_FORMS}")
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder; a shape prior folder holds mask images")
    found: list[Path] = []
    for dirpath, dirnames, filenames in walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(
            Path(dirpath) / f for f in filenames if not f.startswith(".") and _is_mask_file(f)
        )
    if not found:
        raise DatasetError(
            f"{folder}: no mask images found for the shape prior (searched recursively for "
            f"{', '.join(MASK_SUFFIXES)})"
        )
    return sorted(found)


def _square(mask: np.ndarray, size: int, stretch: bool = False) -> np.ndarray:
    """Pad to a centred square (``stretch``: not), then nearest-neighbour resize to
    ``size x size``."""
    h, w = mask.shape
    side = max(h, w)
    if h != w and not stretch:
        padded = np.zeros((side, side), dtype=bool)
        top, left = (side - h) // 2, (side - w) // 2
        padded[top : top + h, left : left + w] = mask
        mask = padded
    return resize_mask(mask, size)


#: A mask file with more than this share of its pixels :data:`GREY_MARGIN` or more of full
#: scale away from both its darkest and its brightest level is no mask but a photograph:
#: radiographs and fundus photographs measured 0.17-0.88 (most above 0.38), masks 0 (blurred or
#: downsampled vessel masks up to 0.22, JPEG-compressed ones 0.01).
GREY_SHARE = 0.3
GREY_MARGIN = 0.15


def grey_share(image: np.ndarray) -> float:
    """The share of the pixels of ``image`` (``read_image``'s, in [0, 1]; colour: the
    brightest channel, as :func:`read_mask` takes it) at grey levels :data:`GREY_MARGIN` or more
    away from both its darkest and its brightest level: 0 for a mask of any two levels, a few
    per cent on the edges of an anti-aliased one, most of a photograph."""
    values = image.max(axis=2) if image.ndim == 3 else image
    low, high = values.min(), values.max()
    return float(((values - low >= GREY_MARGIN) & (high - values >= GREY_MARGIN)).mean())


def _folder_masks(folder: Path, spec: str) -> list[tuple[str, np.ndarray]]:
    out = []
    for path in _mask_files(folder, spec):
        try:
            mask = read_mask(path)
            share = grey_share(read_image(path)[0])
        except ImageReadError as exc:
            raise DatasetError(f"{path}: cannot read this shape prior mask: {exc.reason}") from exc
        except (OSError, ValueError) as exc:  # a decoder error that io did not wrap
            raise DatasetError(f"{path}: cannot read this shape prior mask: {exc}") from exc
        if share > GREY_SHARE:
            # read_mask would threshold it at half scale, and the discriminator would learn the
            # bright parts of photographs (the image folder given as the prior, say) as shapes.
            raise DatasetError(
                f"{path}: not a mask: {share:.0%} of its pixels are grey levels between its "
                f"darkest and brightest (a photograph? {folder} given as the prior?); a shape "
                "prior folder holds binary masks, foreground bright (or non-zero) on black"
            )
        out.append((str(path), mask))
    return out


def _open_dataset(p: _Spec, spec: str) -> tuple[SegmentationDataset, str]:
    try:
        ds = load_dataset(p.name, p.root, "all")
    except (ImageReadError, DatasetError) as exc:  # a missing ROOT read as if --data's
        raise DatasetError(f"shape prior {spec!r}: {exc}") from exc
    target = p.target or ds.default_target
    if target is None:
        raise DatasetError(
            f"shape prior {spec!r}: {p.name} at {p.root} has no masks to use as references "
            f"(found images only)"
        )
    if target not in ds.targets:
        have = ", ".join(ds.targets) or "none"
        raise DatasetError(
            f"shape prior {spec!r}: {p.name} at {p.root} has no {target!r} masks; "
            f"targets found: {have}"
        )
    return ds, target


def _has(item: Item, target: str) -> bool:
    """Whether ``item`` can give ``target`` (DRIVE's second observer covers the test half
    only); generated items list no mask files and give every target."""
    return not item.masks or target in item.masks


def _dataset_masks(p: _Spec, spec: str) -> list[tuple[str, np.ndarray]]:
    ds, target = _open_dataset(p, spec)
    out = []
    for item in ds.items:
        if not _has(item, target):
            continue
        try:
            sample = ds.load(item)
        except ImageReadError as exc:
            raise DatasetError(f"shape prior {spec!r}: {exc}") from exc
        if target in sample.masks:
            out.append((item.name, sample.masks[target]))
    return out


#: How a prior treats pose (engine.shape_prior says what each means).
PRIOR_POSES = ("free", "kept")


def _memory_bytes() -> int | None:
    """This machine's physical memory, where the system tells it."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):  # Windows has no sysconf
        return None


def load_prior(
    spec: str | os.PathLike[str], size: int, *, count: int = 200, seed: int = 0, pose: str = "free"
) -> torch.Tensor:
    """Reference masks of a prior spec as a ``bool`` tensor ``[N, 1, size, size]``.

    ``pose="kept"`` (organs in a standard pose): masks that are not square are stretched to
    the square, as the pool and ``segment`` stretch the images, not padded (which keeps a free
    shape's proportions but moved a kept pose's organs inwards from where images of that shape
    have them).

    Folders are read recursively (:data:`MASK_SUFFIXES`). Foreground follows
    :func:`localdisc.data.io.read_mask`: masks of 0/1 -> 1, of exactly two levels with 0 (0/255,
    0/k) -> non-zero, anything else (anti-aliased, JPEG) -> above half of full scale; for RGB the
    brightest channel counts, so a mask drawn in any colour on black works. ``count`` and
    ``seed`` only apply to ``simulated:NAME`` (masks ``seed`` ... ``seed + count - 1``).

    Raises:
        DatasetError: missing or empty folder, an unreadable mask file (named), unknown
            simulator, data set or target, or no mask with any foreground.
    """
    if isinstance(spec, os.PathLike):  # a folder as a Path (_parse)
        spec = os.fspath(spec)
    if isinstance(size, bool) or int(size) != size or size < 8:
        raise ValueError(f"prior mask size must be an integer >= 8, got {size!r}")
    if pose not in PRIOR_POSES:  # before any mask is read
        raise ValueError(f"prior pose must be {' or '.join(map(repr, PRIOR_POSES))}, got {pose!r}")
    size = int(size)
    p = _parse(spec)
    if p.kind == "simulated":
        if isinstance(count, bool) or int(count) != count or count < 1:
            raise ValueError(f"simulated prior count must be a positive integer, got {count!r}")
        if isinstance(seed, bool) or int(seed) != seed or seed < 0:
            raise ValueError(f"simulated prior seed must be a non-negative integer, got {seed!r}")
        # A --prior-count of 100 000 000 drew masks for hours, without a word, to run out of memory.
        need, memory = 2 * count * size * size, _memory_bytes()  # the masks, then their stack
        if memory is not None and need > memory:
            raise LocaldiscError(
                f"shape prior {spec!r}: {count} masks at {size} x {size} need about "
                f"{need / 2**30:.1f} GiB, more than this machine's {memory / 2**30:.1f} GiB of "
                "memory: give a smaller --prior-count (default 200)"
            )
        named = [(f"seed {seed + i}", simulate_mask(p.name, size, seed + i)) for i in range(count)]
    elif p.kind == "dataset":
        try:
            named = _dataset_masks(p, spec)
        except DatasetError:
            raise
        except LocaldiscError as exc:
            raise DatasetError(f"shape prior {spec!r}: {exc}") from exc
    else:
        assert p.root is not None
        named = _folder_masks(p.root, spec)

    stretch = pose == "kept"
    # A blank white image (all foreground) outlines no shape, as an empty one does.
    kept = [m for m in (_square(mask, size, stretch) for _, mask in named) if 0 < m.mean() < 1]
    if not kept:
        raw_empty = all(not mask.any() for _, mask in named)
        why = (
            "every mask is empty"
            if raw_empty
            else f"every mask is empty or all foreground at {size} x {size}"
        )
        raise DatasetError(
            f"shape prior {spec!r}: {why} ({len(named)} masks, e.g. {named[0][0]}); "
            "check that foreground is non-zero or bright on a black background"
        )
    return torch.from_numpy(np.stack(kept)[:, None])


def prior_masks(
    spec: str, size: int, *, count: int = 200, seed: int = 0, pose: str = "free"
) -> np.ndarray:
    """A prior's masks (:func:`load_prior` with ``count``, ``seed`` and ``pose``) as ``bool``
    ``N x size x size`` (200 at 512 px: 52 MB). Cached and read-only, since every image of a run
    (and every run of one prior bank) shares them.

    ``count`` and ``seed`` must be the ones the run was trained with: they pick a simulated
    prior's masks. For other specs they change nothing, so they do not split the cache.
    """
    if not is_simulated(spec):
        count, seed = 200, 0
    return _prior_masks(spec, size, count, seed, pose)


def is_simulated(spec: str) -> bool:
    """Whether ``spec`` names a simulator (``simulated:NAME``), whose masks ``count`` and
    ``seed`` pick; raises as :func:`load_prior` does for a spec that cannot be parsed."""
    return _parse(spec).kind == "simulated"


@lru_cache(maxsize=4)
def _prior_masks(spec: str, size: int, count: int, seed: int, pose: str) -> np.ndarray:
    # Keyed on every argument of load_prior: two runs of one simulator with other counts or
    # seeds were trained against other masks.
    masks = load_prior(spec, size, count=count, seed=seed, pose=pose)[:, 0].numpy()
    masks.setflags(write=False)
    return masks


def prior_frequency(
    spec: str, size: int, *, count: int = 200, seed: int = 0, pose: str = "free"
) -> np.ndarray:
    """How often each pixel is foreground in a prior's masks (:func:`prior_masks`, ``pose``
    as there: ``"kept"`` stretches masks that are not square as the images are): ``float32``
    ``size x size`` in [0, 1]."""
    return prior_masks(spec, size, count=count, seed=seed, pose=pose).mean(0, dtype=np.float32)


def describe_prior(spec: str, used: torch.Tensor | None = None) -> str:
    """One line for logs, e.g. ``10 masks from /data/octa_vessels``; with ``used``, the bank
    :func:`load_prior` made of them, how many it holds where it left out empty ones
    (``10 masks from /data/octa_vessels (8 used: the others are empty at 64 x 64)``).

    Lists files or data set items without decoding them; raises as :func:`load_prior` does
    for a spec that cannot be listed.
    """
    p = _parse(spec)
    if p.kind == "simulated":
        return f"{p.name} masks simulated by localdisc.data.synthetic"
    if p.kind == "dataset":
        ds, target = _open_dataset(p, spec)
        n = sum(_has(item, target) for item in ds.items)
        where = f"at {p.root}" if ds.requires_root else "(generated)"
        text = f"{n} {target} masks of {p.name} {where}"
    else:
        assert p.root is not None
        n = len(_mask_files(p.root, spec))
        text = f"{n} masks from {p.root}"
    if used is not None and len(used) != n:
        side = used.shape[-1]
        text += f" ({len(used)} used: the others are empty or all foreground at {side} x {side})"
    return text
