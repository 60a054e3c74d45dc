"""Segmentation data sets in their official layouts, read lazily.

Each loader lists its files when it is built (cheap: no decoding) and reads one sample per
``dataset[i]``. Listing problems (a missing mask, an image without a partner) raise
:class:`~localdisc.errors.DatasetError` naming the file, or with ``skip_bad=True`` are recorded
in ``dataset.skipped``; :meth:`SegmentationDataset.verify` reads every file and does the same
for files that cannot be decoded or do not fit their image.

Masks must have their image's size, except SCR's (1024 pixels for 2048-pixel JSRT images, or
any other size), which are resized by nearest neighbour: a vessel tracing of another size than
its photograph belongs to another image or another crop, so it is an error, not a resize.

Known names (:data:`DATASETS`): ``drive``, ``stare``, ``chase_db1``, ``hrf``, ``jsrt_scr``,
``montgomery``, ``folder``, ``synthetic_fundus``, ``synthetic_xray``, ``synthetic_xray_hard``.
A *data spec* is ``NAME:ROOT`` for a known name or a plain folder path (see
:func:`parse_data_spec`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, overload

import numpy as np

from localdisc.data.io import (
    IMAGE_SUFFIXES,
    ORIENTATIONS,
    ImageMeta,
    is_image_file,
    mask_labels,
    read_image,
    read_image_meta,
    read_mask,
)
from localdisc.data.preprocess import fov_from_image, resize_mask, to_modality_channels
from localdisc.errors import DatasetError, ImageReadError, LocaldiscError, ReaderSetupError

#: Splits of the data sets that have a train/test split; ``all`` is their union.
SPLITS = ("train", "test", "all")


@dataclass
class Sample:
    """One decoded sample.

    ``image`` is ``float32`` ``H x W x C`` in ``[0, 1]`` with ``C`` the modality's channel count
    (3 for fundus, 1 for X-ray); ``masks`` maps target names to ``bool`` ``H x W`` arrays;
    ``fov`` is the ``bool`` field of view (official mask, derived, or the whole image).
    """

    name: str
    image: np.ndarray
    masks: dict[str, np.ndarray]
    fov: np.ndarray
    image_path: Path


@dataclass(frozen=True)
class Item:
    """The files of one sample, before reading.

    ``masks`` maps each target to the mask files whose union forms it (SCR's ``lung`` is the
    left and the right lung); ``fov`` is ``None`` when the FOV is derived from the image;
    ``seed`` is only used by the synthetic sets.
    """

    name: str
    image: Path
    masks: Mapping[str, tuple[Path, ...]] = field(default_factory=dict)
    fov: Path | None = None
    seed: int | None = None


@cache
def paper_splits() -> dict[str, dict[str, list[str]]]:
    """The paper's train/test file stems per data set (package data ``paper_splits.json``)."""
    text = resources.files("localdisc.data").joinpath("paper_splits.json").read_text("utf-8")
    return json.loads(text)


def image_stem(path: str | Path) -> str:
    """File name without its image suffix, compound suffixes included (``im0001.ppm.gz``).
    A name without one is kept whole: a DICOM file named by its UID
    (``1.2.840.113619.2.55.3.4711``) would otherwise lose its last part, and two files of a
    series would share a name."""
    name = Path(path).name
    lower = name.lower()
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix.lower()):
            return name[: len(name) - len(suffix)]
    return name


def _size_mismatch(
    mask: Path,
    mask_hw: tuple[int, int],
    image: Path,
    meta: ImageMeta | None,
    image_hw: tuple[int, int] | None = None,
) -> str:
    """The error of a mask whose size is not its image's, sizes as width x height (``mask_hw``
    and ``image_hw`` are array shapes, height first), as ``predict`` and image viewers give them:
    DRIVE's photographs are 565x584. Where the image carries an EXIF orientation that turns it
    by 90 degrees and the mask fits the turned image, that is said: viewers show the image
    turned, so the mask drawn on it seemed of the right size."""
    h, w = image_hw if image_hw is not None else (meta.height, meta.width)  # type: ignore[union-attr]
    text = f"{mask}: mask is {mask_hw[1]}x{mask_hw[0]} but its image {image.name} is {w}x{h}"
    turn = meta.orientation if meta is not None else None
    if turn in (5, 6, 7, 8) and tuple(mask_hw) == (w, h):
        text += (
            f" as stored; viewers show it {ORIENTATIONS[turn]} (its EXIF orientation, which "
            "localdisc does not apply), and the mask fits that: save the image as viewers "
            "show it, or turn the mask"
        )
    return text + " (sizes as width x height)"  # datasets inspect gives HxW


def name_key(name: str) -> str:
    """Matching key of a file name or stem: lower case and in Unicode normal form NFC, so that
    a name stored decomposed (NFD, as macOS writes it) matches the same name typed elsewhere."""
    return unicodedata.normalize("NFC", name).lower()


def _index(folder: Path) -> dict[str, Path]:
    """Image files directly in ``folder`` keyed by :func:`name_key` of the stem. Two files of
    one stem are refused, naming both: a converted copy left beside an official file
    (``21_training.png`` by ``21_training.tif``) was taken for it, the first in sorted order,
    without a word. Hidden files are skipped (macOS leaves ``._21_training.tif`` beside each
    file on FAT drives and in zips; they are not images)."""
    out: dict[str, Path] = {}
    if not folder.is_dir():
        return out
    for path in sorted(folder.iterdir()):
        if not path.name.startswith(".") and path.is_file() and is_image_file(path):
            key = name_key(image_stem(path))
            if key in out:
                raise DatasetError(
                    f"{folder}: {out[key].name} and {path.name} are two files of one image "
                    f"({image_stem(path)}); keep one there (move the other out of the folder)"
                )
            out[key] = path
    return out


class SegmentationDataset(Sequence[Sample]):
    """Base class: a list of :class:`Item` read lazily into :class:`Sample`.

    Attributes: ``name``, ``root``, ``split``, ``modality``, ``targets`` (target names of this
    split), ``default_target``, ``items``, ``image_paths``, ``skipped`` (``(path, reason)``),
    ``missing_labels`` (target -> why its label folder is absent; an item without a target's
    file has no such key in ``Sample.masks``, so consumers check ``target in sample.masks``),
    ``repeated`` (image files left out as a second name of another item's: :meth:`notes`).
    Subclasses set the class variables and implement :meth:`_list_items`.
    """

    name: ClassVar[str] = ""
    default_modality: ClassVar[str | None] = "fundus"
    layout: ClassVar[str] = ""
    url: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    splits: ClassVar[tuple[str, ...]] = SPLITS
    #: Every target this loader can provide (``targets`` is what the files on disk give).
    all_targets: ClassVar[tuple[str, ...]] = ("vessels",)
    preferred_target: ClassVar[str | None] = "vessels"
    #: Targets overlaid by ``write_preview``; defaults to the default target.
    preview_targets: ClassVar[tuple[str, ...] | None] = None
    #: Resize masks of another size to the image (SCR); otherwise a size mismatch is an error.
    resize_masks: ClassVar[bool] = False
    requires_root: ClassVar[bool] = True

    def __init__(
        self,
        root: str | Path | None = None,
        split: str | None = None,
        *,
        skip_bad: bool = False,
    ) -> None:
        # str() lets the synthetic sets take a plain int count as ROOT.
        self.root: Path | None = None if root in (None, "") else Path(str(root)).expanduser()
        self.split: str = self.resolve_split(split)
        self.skip_bad = skip_bad
        self.skipped: list[tuple[Path, str]] = []
        self.targets: tuple[str, ...] = ()
        #: Targets of :attr:`all_targets` whose label folder is absent, for some or all items of
        #: this split, with the reason (DRIVE's test tracings are withheld from the download).
        self.missing_labels: dict[str, str] = {}
        #: Images of the official split that are not there (DRIVE: a partial download), which
        #: :meth:`incomplete_note` names: its scores are then not the paper's test set.
        self.missing_images: list[Path] = []
        #: Image files listed under two names (a symbolic or hard link to another image):
        #: ``(name left out, the file as kept)``; :meth:`repeated_note` names them.
        self.repeated: list[tuple[Path, Path]] = []
        self.fov_source = "derived from the image"
        self._modality = self.default_modality or "fundus"
        if self.requires_root:
            self._check_root()
        self.items: list[Item] = self._list_items()
        if not self.items:
            where = self.root if self.root is not None else self.name
            if self.skipped:
                raise DatasetError(
                    f"{where}: every {self.name} {self.split} item was skipped "
                    f"({len(self.skipped)}; first: {self.skipped[0][0]}: {self.skipped[0][1]})"
                )
            raise DatasetError(
                f"{where}: no images found for {self.name} (split {self.split}); "
                f"expected {self.layout}"
            )

    # -- listing -------------------------------------------------------------------------

    @classmethod
    def resolve_split(cls, split: str | None) -> str:
        """``None`` means ``train`` where the set is split, else ``all``; unknown names raise."""
        if split is None:
            return "train" if "train" in cls.splits else "all"
        if split not in cls.splits:
            raise DatasetError(
                f"{cls.name} has no split {split!r}; its splits are: {', '.join(cls.splits)}"
            )
        return split

    def _check_root(self) -> None:
        expected = f"expected the {self.name} layout: {self.layout}"
        if self.root is None:
            raise DatasetError(f"{self.name} needs a ROOT folder ({self.name}:ROOT)"
                               f"{_folder_here_hint(self.name)}; {expected}")  # fmt: skip
        if not self.root.exists():
            hint = _unknown_name_hint(self.root) if self.name == "folder" else ""
            raise DatasetError(f"{self.root}: no such folder{hint}; {expected}")
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: not a folder; {expected}")
        if not any(self.root.iterdir()):
            raise DatasetError(f"{self.root}: the folder is empty; {expected}")

    def _require_dir(self, folder: Path) -> Path:
        """A folder the layout cannot do without: its absence is a layout error, not a bad item,
        named with what ROOT holds instead where that explains it (:meth:`_layout_hint`)."""
        if not folder.is_dir():
            raise DatasetError(
                f"{folder}: missing folder; expected the {self.name} layout: {self.layout}"
                + self._layout_hint(folder)
            )
        return folder

    def _layout_hint(self, folder: Path) -> str:
        """Why ``folder`` (under ROOT) may be missing: an archive in ROOT not extracted, the
        layout one folder down (a zip unpacked into a folder of its name), or the folder in
        another letter case; empty where none is seen."""
        if self.root is None or not self.root.is_dir():
            return ""
        try:
            relative = folder.relative_to(self.root)
        except ValueError:
            return ""
        entries = sorted(p for p in self.root.iterdir() if not p.name.startswith("."))
        archives = [p.name for p in entries if p.name.lower().endswith(ARCHIVE_SUFFIXES)]
        if archives:
            return f" ({self.root} holds {', '.join(archives)}: extract it there first)"
        nested = [p for p in entries if p.is_dir() and (p / relative).is_dir()]
        if nested:
            return f" (it is in {nested[0]}: give that folder as the root)"
        parent = self.root
        for name in relative.parts:  # down to the first folder missing
            if not (parent / name).is_dir():
                other = [p for p in parent.iterdir() if p.name.lower() == name.lower()]
                if other and other[0].is_dir():
                    return f" ({other[0]} differs in letter case: name it {name})"
                break
            parent = parent / name
        return ""

    def incomplete_note(self) -> str | None:
        """A line naming the official images that are missing (``None``: none is)."""
        if not self.missing_images:
            return None
        shown = ", ".join(p.name for p in self.missing_images[:3])
        more = ", ..." if len(self.missing_images) > 3 else ""
        return (
            f"{self.name} {self.split}: {len(self.missing_images)} image(s) of the official split "
            f"missing ({shown}{more}), so its scores are not over the whole set: a partial "
            "download?"
        )

    def repeated_note(self) -> str | None:
        """A line saying how many image files were listed under a second name and left out,
        with an example (``None``: none was)."""
        if not self.repeated:
            return None
        dropped, kept = self.repeated[0]
        if self.root is not None and dropped.is_relative_to(self.root):
            dropped, kept = dropped.relative_to(self.root), kept.relative_to(self.root)
        return (
            f"{self.root or self.name}: {len(self.repeated)} image file(s) have a second name "
            f"here, a symbolic or hard link (first: {dropped}, the same file as {kept}); each "
            "file is used once, under the name kept, so that none is both trained and tested on"
        )

    def notes(self) -> list[str]:
        """What a command using this set says of its listing: :meth:`incomplete_note` and
        :meth:`repeated_note`, those that apply."""
        notes = (self.incomplete_note(), self.repeated_note())
        return [note for note in notes if note is not None]

    def _problem(self, path: Path, reason: str) -> None:
        """Raise for a bad item, or record it when ``skip_bad``."""
        if self.skip_bad:
            self.skipped.append((path, reason))
        else:
            raise DatasetError(f"{path}: {reason}")

    def _stems(self, key: str) -> list[str]:
        """File stems of this split from the paper's splits (``all``: train then test)."""
        table = paper_splits()[key]
        if self.split == "all":
            return [*table["train"], *table["test"]]
        return list(table[self.split])

    def _list_items(self) -> list[Item]:
        raise NotImplementedError

    # -- reading -------------------------------------------------------------------------

    @property
    def modality(self) -> str:
        """``"fundus"`` or ``"xray"``."""
        return self._modality

    @property
    def default_target(self) -> str | None:
        """The target evaluated by default; ``None`` when the files give no target."""
        if self.preferred_target in self.targets:
            return self.preferred_target
        return self.targets[0] if self.targets else None

    @property
    def image_paths(self) -> list[Path]:
        """The image file of every item, in order."""
        return [item.image for item in self.items]

    def __len__(self) -> int:
        return len(self.items)

    @overload
    def __getitem__(self, index: int) -> Sample: ...
    @overload
    def __getitem__(self, index: slice) -> list[Sample]: ...
    def __getitem__(self, index: int | slice) -> Sample | list[Sample]:
        if isinstance(index, slice):
            return [self.load(item) for item in self.items[index]]
        return self.load(self.items[index])

    def __iter__(self) -> Iterator[Sample]:
        for item in self.items:
            yield self.load(item)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
            f"n={len(self)}, targets={self.targets})"
        )

    def check_mask_sizes(self) -> None:
        """Raise :class:`DatasetError`, as :meth:`load` would, for a mask or FOV file whose size
        (read from its header) is not its image's: a fine-tuning reads some masks only after
        training (batch-norm recalibration, the test images), where a wrong one stopped it.
        Sets that resize their masks (SCR) and generated ones are not checked; a header that
        cannot be read is left to :meth:`load`, which names the problem."""
        if self.resize_masks:
            return
        for item in self.items:
            paths = {p for files in item.masks.values() for p in files} | (
                {item.fov} if item.fov is not None else set()
            )
            if item.seed is not None or not paths:
                continue
            try:
                image = read_image_meta(item.image)
                masks = [(path, read_image_meta(path)) for path in sorted(paths)]
            except LocaldiscError:
                continue
            for path, mask in masks:
                if (mask.height, mask.width) != (image.height, image.width):
                    raise DatasetError(
                        _size_mismatch(path, (mask.height, mask.width), item.image, image)
                    )

    def _fit(self, mask: np.ndarray, shape: tuple[int, int], path: Path, image: Path) -> np.ndarray:
        if mask.shape == shape:
            return mask
        if self.resize_masks:
            return resize_mask(mask, shape)
        try:
            meta = read_image_meta(image)
        except LocaldiscError:  # the image was just read: only its orientation is wanted
            meta = None
        raise DatasetError(_size_mismatch(path, mask.shape[:2], image, meta, shape))

    def load(self, item: Item) -> Sample:
        """Read one item: image, target masks (unions where a target has several files), FOV."""
        image = to_modality_channels(_read_image(item.image), self.modality)
        shape = image.shape[:2]
        cache: dict[Path, np.ndarray] = {}  # SCR reads each lung for "lung" and "left_lung"

        def mask(path: Path) -> np.ndarray:
            if path not in cache:
                cache[path] = self._fit(_read_mask(path), shape, path, item.image)
            return cache[path]

        masks: dict[str, np.ndarray] = {}
        for target, paths in item.masks.items():
            union = np.zeros(shape, dtype=bool)
            for path in paths:
                union |= mask(path)
            masks[target] = union
        if item.fov is not None:
            fov = mask(item.fov)
        else:
            fov = fov_from_image(image, modality=self.modality)
        return Sample(item.name, image, masks, fov, item.image)

    def verify(
        self,
        on_sample: Callable[[Sample], None] | None = None,
        on_advance: Callable[[], None] | None = None,
    ) -> None:
        """Read every item, passing each sample to ``on_sample``.

        An unreadable or inconsistent item raises (:class:`DatasetError` or
        :class:`ImageReadError`), or with ``skip_bad`` is removed from ``items`` and recorded in
        ``skipped``. ``on_advance`` is called once per item (for a progress bar).
        """
        kept: list[Item] = []
        for item in self.items:
            try:
                sample = self.load(item)
            except LocaldiscError as exc:
                if not self.skip_bad or isinstance(exc, ReaderSetupError):  # not the file's
                    raise
                path = exc.path if isinstance(exc, ImageReadError) else item.image
                reason = exc.reason if isinstance(exc, ImageReadError) else str(exc)
                self.skipped.append((path, reason))
            else:
                kept.append(item)
                if on_sample is not None:
                    on_sample(sample)
            if on_advance is not None:
                on_advance()
        self.items = kept

    @classmethod
    def describe(cls) -> dict[str, str]:
        """One row of ``localdisc datasets list``."""
        return {
            "name": cls.name,
            "modality": cls.default_modality or "guessed (fundus or xray)",
            "layout": cls.layout,
            "targets": ", ".join(cls.all_targets) or "-",
            "splits": ", ".join(cls.splits),
            "url": cls.url or "-",
            "citation": cls.citation or "-",
        }

    @classmethod
    def pool_paths(cls, root: str | Path | None) -> list[Path]:
        """Image files of every split, for unlabelled pre-training."""
        return cls(root, "all").image_paths


def _read_image(path: Path) -> np.ndarray:
    try:
        return read_image(path)[0]
    except LocaldiscError:
        raise
    except (OSError, ValueError) as exc:  # a decoder error that io did not wrap
        raise ImageReadError(path, str(exc) or type(exc).__name__) from exc


def _read_mask(path: Path) -> np.ndarray:
    try:
        return np.asarray(read_mask(path), dtype=bool)
    except LocaldiscError:
        raise
    except (OSError, ValueError) as exc:
        raise ImageReadError(path, str(exc) or type(exc).__name__) from exc


# -- fundus ------------------------------------------------------------------------------


#: Endings of archives a data set may be downloaded as (named when not extracted).
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".7z", ".rar")

#: A DRIVE image's stem (lower case): its number pairs it with its tracing.
_DRIVE_STEM = re.compile(r"^\d+_(training|test)$")
#: How DRIVE and HRF name the fields of view in their ``mask/`` folders (lower case).
_OFFICIAL_FOV = re.compile(r"^\d+_(training|test|dr|g|h)_mask$")


def official_fov(path: Path) -> str | None:
    """``"drive"`` or ``"hrf"`` where ``path`` is that set's field of view, by its folder
    (``mask/``), its name (``01_test_mask.gif``, ``01_dr_mask.tif``) and its content (more than
    half the image: a label of one's own named so is kept), else ``None``. A folder's
    ``NAME_mask`` naming takes such a file for a label: a fine-tuning learnt the retina's disc."""
    found = _OFFICIAL_FOV.match(name_key(image_stem(path)))
    if path.parent.name.lower() != "mask" or found is None:
        return None
    try:
        if read_mask(path).mean() <= 0.5:
            return None
    except LocaldiscError:  # its own read names it
        return None
    return "drive" if found.group(1) in ("training", "test") else "hrf"


def refuse_official_fov(path: Path, option: str | None = None) -> None:
    """Raise :class:`DatasetError` where ``path``, taken for a label, is DRIVE's or HRF's
    field of view (:func:`official_fov`). ``option``: the command's option of a folder of
    masks, which takes no data spec (``--masks``), else the data spec is advised."""
    known = official_fov(path)
    if known is not None:
        root, labels = ("the folder of training/ and test/", "1st_manual/") if known == "drive" \
            else ("its folder", "manual1/")  # fmt: skip
        advice = f"give {known}:ROOT, ROOT {root}, whose labels are in {labels}"
        if option is not None:  # drive:ROOT is no folder of masks there (a reviewer's run)
            labels = "1st_manual" if known == "drive" else "manual1"
            advice = f"give {option} the {labels}/ folder, and --fov-masks the mask/ folder"
        raise DatasetError(
            f"{path}: {known.upper()}'s field of view, taken for a label (a mask/ folder's "
            f"NAME_mask): {advice}"
        )


class DriveDataset(SegmentationDataset):
    """DRIVE (Staal et al. 2004): the official training/test folders are the paper's split.

    Targets: ``vessels`` (1st_manual) and, where a ``2nd_manual`` folder exists (test half),
    ``vessels_2nd``. FOV: the official ``mask`` folder, derived from the image if it is absent.
    A split without a ``1st_manual`` folder is unlabelled: its samples have no ``vessels``
    mask, and ``missing_labels`` says why. DRIVE as downloaded from grand-challenge.org or
    Kaggle is like that: its ``test`` folder holds only ``images`` and ``mask``.
    """

    name = "drive"
    layout = (
        "training/images/21_training.tif, training/1st_manual/21_manual1.gif, "
        "training/mask/21_training_mask.gif; test/... likewise (+ test/2nd_manual/01_manual2.gif; "
        "test/1st_manual may be absent: the test split is then unlabelled)"
    )
    url = "https://drive.grand-challenge.org/"
    citation = "Staal et al., IEEE TMI 23(4):501-509, 2004"
    all_targets = ("vessels", "vessels_2nd")
    _folders: ClassVar[dict[str, str]] = {"train": "training", "test": "test"}

    def _list_items(self) -> list[Item]:
        assert self.root is not None
        items: list[Item] = []
        targets: set[str] = set()
        fov_files = True
        for split in ("train", "test") if self.split == "all" else (self.split,):
            base = self.root / self._folders[split]
            images = _index(self._require_dir(base / "images"))
            # The public download withholds the test tracings: no 1st_manual is an unlabelled
            # split (as HRF without manual1), not a broken layout.
            manual1 = _index(base / "1st_manual") if (base / "1st_manual").is_dir() else None
            manual2 = _index(base / "2nd_manual") if (base / "2nd_manual").is_dir() else None
            fovs = _index(base / "mask") if (base / "mask").is_dir() else None
            fov_files &= fovs is not None
            if manual1 is not None:
                targets.add("vessels")
            else:
                why = " (the public DRIVE download withholds them)" if split == "test" else ""
                self.missing_labels["vessels"] = (
                    f"{base / '1st_manual'}: no such folder, so the {split} images have no "
                    f"vessels masks{why}"
                )
            if manual2 is not None:
                targets.add("vessels_2nd")
            self.missing_images += [  # a partial download: kept, and said
                base / "images" / f"{stem}.tif"
                for stem in paper_splits()["DRIVE"][split]
                if stem.lower() not in images
            ]
            for key, image in images.items():
                if not _DRIVE_STEM.match(key):  # "21_training_copy" took 21's tracing
                    self._problem(image, "not a DRIVE image name (NN_training or NN_test), so "
                                  "its tracing is unknown")  # fmt: skip
                    continue
                ident = key.split("_")[0]  # "21_training" -> "21"
                masks: dict[str, tuple[Path, ...]] = {}
                wanted: list[tuple[str, dict[str, Path], str, str]] = []
                if manual1 is not None:
                    wanted.append(("vessels", manual1, "1st_manual", f"{ident}_manual1"))
                if manual2 is not None:
                    wanted.append(("vessels_2nd", manual2, "2nd_manual", f"{ident}_manual2"))
                if fovs is not None:
                    wanted.append(("fov", fovs, "mask", f"{key}_mask"))
                ok = True
                for target, index, folder, stem in wanted:
                    path = index.get(stem)
                    if path is None:
                        self._problem(image, f"its mask {base / folder / stem}.gif is missing")
                        ok = False
                        break
                    masks[target] = (path,)
                if ok:
                    fov = masks.pop("fov", (None,))[0]
                    items.append(Item(image_stem(image), image, masks, fov))
        self.targets = tuple(t for t in self.all_targets if t in targets)
        self.fov_source = "official mask files" if fov_files else "derived from the image"
        return items


class StareDataset(SegmentationDataset):
    """STARE (Hoover et al. 2000): the 20 labelled images, split 10/10 as in the paper.

    Targets: ``vessels`` (labels-ah, Hoover) and ``vessels_vk`` (labels-vk, Kouznetsova) where
    that folder exists. Other images in ``stare-images`` (the 377 unlabelled ones of the full
    download) are ignored. STARE has no FOV masks: the FOV is derived from the image.
    """

    name = "stare"
    layout = "stare-images/im0001.ppm(.gz), labels-ah/im0001.ah.ppm(.gz) [, labels-vk/...vk.ppm]"
    url = "https://cecas.clemson.edu/~ahoover/stare/"
    citation = "Hoover et al., IEEE TMI 19(3):203-210, 2000"
    all_targets = ("vessels", "vessels_vk")

    def _list_items(self) -> list[Item]:
        assert self.root is not None
        images = _index(self._require_dir(self.root / "stare-images"))
        observers = [
            ("vessels", "labels-ah", "ah", _index(self._require_dir(self.root / "labels-ah")))
        ]
        if (self.root / "labels-vk").is_dir():
            observers.append(("vessels_vk", "labels-vk", "vk", _index(self.root / "labels-vk")))
        items: list[Item] = []
        for stem in self._stems("STARE"):
            image = images.get(stem.lower())
            if image is None:
                self._problem(
                    self.root / "stare-images" / f"{stem}.ppm.gz",
                    f"image of the paper's STARE {self.split} split is missing",
                )
                continue
            masks: dict[str, tuple[Path, ...]] = {}
            for target, folder, tag, index in observers:
                path = index.get(f"{stem}.{tag}".lower())
                if path is None:
                    self._problem(
                        image, f"its mask {self.root / folder / stem}.{tag}.ppm(.gz) is missing"
                    )
                    break
                masks[target] = (path,)
            else:
                items.append(Item(stem, image, masks))
        self.targets = tuple(target for target, *_ in observers)
        return items


class ChaseDb1Dataset(SegmentationDataset):
    """CHASE_DB1 (Fraz et al. 2012): one folder, split 20/8 as in the paper.

    Targets: ``vessels`` (``*_1stHO.png``) and ``vessels_2nd`` (``*_2ndHO.png``) when the folder
    has second-observer files. The FOV is derived from the image.
    """

    name = "chase_db1"
    layout = "Image_01L.jpg, Image_01L_1stHO.png, Image_01L_2ndHO.png ... in one folder"
    url = "https://blogs.kingston.ac.uk/retinal/chasedb1/"
    citation = "Fraz et al., IEEE TBME 59(9):2538-2548, 2012"
    all_targets = ("vessels", "vessels_2nd")

    def _list_items(self) -> list[Item]:
        assert self.root is not None
        files = _index(self.root)
        observers = [("vessels", "_1stHO")]
        if any(key.endswith("_2ndho") for key in files):
            observers.append(("vessels_2nd", "_2ndHO"))
        items: list[Item] = []
        for stem in self._stems("CHASE_DB1"):
            image = files.get(stem.lower())
            if image is None:
                self._problem(
                    self.root / f"{stem}.jpg",
                    f"image of the paper's CHASE_DB1 {self.split} split is missing",
                )
                continue
            masks: dict[str, tuple[Path, ...]] = {}
            for target, suffix in observers:
                path = files.get(f"{stem}{suffix}".lower())
                if path is None:
                    self._problem(image, f"its mask {self.root / stem}{suffix}.png is missing")
                    break
                masks[target] = (path,)
            else:
                items.append(Item(stem, image, masks))
        self.targets = tuple(target for target, _ in observers)
        return items


class HrfDataset(SegmentationDataset):
    """HRF (Budai et al. 2013): 45 images, split 25/20 as in the paper.

    ``manual1`` gives ``vessels`` and ``mask`` the FOV when those folders exist; with images
    alone the set has no target and the FOV is derived from the image.
    """

    name = "hrf"
    layout = "images/01_h.jpg [, manual1/01_h.tif, mask/01_h_mask.tif]"
    url = "https://www5.cs.fau.de/research/data/fundus-images/"
    citation = "Budai et al., Int J Biomed Imaging 2013:154860"

    def _list_items(self) -> list[Item]:
        assert self.root is not None
        images = _index(self._require_dir(self.root / "images"))
        manual = _index(self.root / "manual1") if (self.root / "manual1").is_dir() else None
        fovs = _index(self.root / "mask") if (self.root / "mask").is_dir() else None
        items: list[Item] = []
        for stem in self._stems("HRF"):
            image = images.get(stem.lower())
            if image is None:
                self._problem(
                    self.root / "images" / f"{stem}.jpg",
                    f"image of the paper's HRF {self.split} split is missing",
                )
                continue
            masks: dict[str, tuple[Path, ...]] = {}
            if manual is not None:
                path = manual.get(stem.lower())
                if path is None:
                    self._problem(image, f"its mask {self.root / 'manual1' / stem}.tif is missing")
                    continue
                masks["vessels"] = (path,)
            fov = None
            if fovs is not None:
                fov = fovs.get(f"{stem}_mask".lower())
                if fov is None:
                    self._problem(image, f"its FOV {self.root / 'mask' / stem}_mask.tif is missing")
                    continue
            items.append(Item(stem, image, masks, fov))
        self.targets = ("vessels",) if manual is not None else ()
        if manual is None:
            self.missing_labels["vessels"] = (
                f"{self.root / 'manual1'}: no such folder, so the images have no vessels masks"
            )
        if fovs is not None:
            self.fov_source = "official mask files"
        return items


# -- chest X-ray -------------------------------------------------------------------------

#: SCR organ folder name -> target name of the single organ.
SCR_ORGANS = {
    "heart": "heart",
    "left lung": "left_lung",
    "right lung": "right_lung",
    "left clavicle": "left_clavicle",
    "right clavicle": "right_clavicle",
}
_JSRT_STEM = re.compile(r"^JPC(LN|NN)\d{3}$", re.IGNORECASE)


class _MasksOptional(SegmentationDataset):
    """A set whose masks are optional: ``masks=False`` lists the images without looking at the
    masks at all, as pre-training pools need (:meth:`pool_paths`)."""

    def __init__(
        self,
        root: str | Path | None = None,
        split: str | None = None,
        *,
        skip_bad: bool = False,
        masks: bool = True,
    ) -> None:
        self._with_masks = masks
        super().__init__(root, split, skip_bad=skip_bad)

    @classmethod
    def pool_paths(cls, root: str | Path | None) -> list[Path]:
        """The images of every split: pre-training needs no mask, so none is read."""
        return cls(root, "all", masks=False).image_paths


class JsrtScrDataset(_MasksOptional):
    """JSRT radiographs with SCR organ masks (van Ginneken et al. 2006), split 124/123.

    ROOT is searched recursively: JSRT images (raw ``.IMG`` or converted, any size) and SCR
    masks in folders named after the organ (``masks/left lung/JPCLN001.gif``; ``left_lung`` is
    accepted too) are matched by file name, so both ``JSRT/images`` + ``SCR/masks`` and the
    official download folders side by side work. Masks of another size are resized (nearest)
    to the image. When a file name occurs twice, the first in sorted path order is used, after
    any outside a folder whose name holds the word mask(s), label(s), manual, gt or
    seg(mentation) (a user's ``Lung_masks/JPCLN001.png`` is no radiograph where another file
    of that name is).
    Targets: ``heart``, ``lung`` (both lungs), ``clavicle`` (both), and each organ alone.
    The masks are optional: JSRT images without any SCR mask under ROOT are an unlabelled set
    (no targets; ``missing_labels`` says why), enough for pre-training and for inspection.
    ``masks=False`` lists the images without looking at the masks at all (pre-training pools).
    """

    name = "jsrt_scr"
    default_modality = "xray"
    layout = (
        "JSRT images JPCLN001.IMG (or .png) and SCR masks "
        "masks/{heart,left lung,right lung,left clavicle,right clavicle}/JPCLN001.gif "
        "anywhere under ROOT (without the masks: unlabelled, for pre-training)"
    )
    url = "http://db.jsrt.or.jp/eng.php ; https://www.isi.uu.nl/Research/Databases/SCR/"
    citation = "Shiraishi et al., AJR 174:71-74, 2000; van Ginneken et al., MedIA 10(1):19-40, 2006"
    all_targets = (
        "heart",
        "lung",
        "clavicle",
        "left_lung",
        "right_lung",
        "left_clavicle",
        "right_clavicle",
    )
    preferred_target = "lung"
    preview_targets = ("lung", "heart", "clavicle")
    resize_masks = True

    def _scan(self) -> tuple[dict[str, Path], dict[str, dict[str, Path]]]:
        """One directory walk: JSRT-named image files, split into images and organ masks."""
        assert self.root is not None
        images: dict[str, Path] = {}
        maskish: dict[str, Path] = {}  # in a folder named like masks: taken only where alone
        masks: dict[str, dict[str, Path]] = {organ: {} for organ in SCR_ORGANS.values()}
        for dirpath, dirnames, filenames in walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            organ = SCR_ORGANS.get(Path(dirpath).name.lower().replace("_", " "))
            words = set(re.split(r"[_\-\s.]+", Path(dirpath).name.lower()))
            found = maskish if organ is None and words & _MASK_FOLDER_WORDS else images
            for filename in sorted(filenames):
                # Cheap name test first: the walk may pass thousands of unrelated files.
                if filename[:3].upper() != "JPC" or not is_image_file(filename):
                    continue
                stem = image_stem(filename).upper()
                if not _JSRT_STEM.match(stem):
                    continue
                target = masks[organ] if organ else found
                target.setdefault(stem, Path(dirpath) / filename)
        for stem, path in maskish.items():  # a data set's own folder may be named so
            images.setdefault(stem, path)
        return images, masks

    def _list_items(self) -> list[Item]:
        assert self.root is not None
        images, organ_masks = self._scan()
        if not images:
            raise DatasetError(f"{self.root}: no JSRT images found; expected {self.layout}")
        labelled = self._with_masks and any(organ_masks.values())
        if self._with_masks and not labelled:  # JSRT alone: unlabelled, as HRF without manual1
            # One reason for every target: `datasets inspect` prints it once.
            why = (
                f"{self.root}: no SCR masks found (masks/<organ>/JPCLN001.gif), so the images "
                "have no organ masks"
            )
            self.missing_labels = dict.fromkeys(self.all_targets, why)
        items: list[Item] = []
        for stem in self._stems("SCR"):
            image = images.get(stem.upper())
            if image is None:
                self._problem(
                    self.root / f"{stem}.IMG",
                    f"no JSRT image {stem} (.IMG or .png) of the paper's SCR {self.split} split "
                    f"under {self.root}",
                )
                continue
            if not labelled:
                items.append(Item(stem, image))
                continue
            organs: dict[str, Path] = {}
            for folder, organ in SCR_ORGANS.items():
                path = organ_masks[organ].get(stem.upper())
                if path is None:
                    self._problem(image, f"its SCR mask {folder}/{stem}.gif is missing")
                    break
                organs[organ] = path
            else:
                masks = {
                    "heart": (organs["heart"],),
                    "lung": (organs["left_lung"], organs["right_lung"]),
                    "clavicle": (organs["left_clavicle"], organs["right_clavicle"]),
                    **{organ: (path,) for organ, path in organs.items() if organ != "heart"},
                }
                items.append(Item(stem, image, masks))
        self.targets = self.all_targets if labelled else ()
        self.fov_source = "whole image"
        return items


#: Montgomery lung target -> its mask folder in ``ManualMask/``.
MONTGOMERY_SIDES = {"left_lung": "leftMask", "right_lung": "rightMask"}
_MONTGOMERY_STEM = re.compile(r"^MCUCXR_\d{4}_[01]$", re.IGNORECASE)


class MontgomeryDataset(_MasksOptional):
    """Montgomery County chest X-rays (Jaeger et al. 2014) with lung masks (Candemir et al. 2014).

    138 radiographs of about 4020x4892 pixels in ``CXR_png/`` (``MCUCXR_0001_0.png``: ``_0``
    normal, ``_1`` tuberculosis; the label and ``ClinicalReadings/`` are not read) and a mask of
    each lung in ``ManualMask/leftMask/`` and ``ManualMask/rightMask/``, named and sized as its
    X-ray. ROOT is the ``MontgomerySet`` folder or a folder above it, searched for the one
    ``CXR_png`` folder holding these X-rays (two such folders are an error: point ROOT at one).
    Targets: ``lung`` (both masks), ``left_lung`` (``leftMask``) and ``right_lung``
    (``rightMask``), named as the distribution's folders. The FOV is the whole image. Without
    ``ManualMask/`` the X-rays are an unlabelled set (``missing_labels`` says why), enough for
    pre-training; an X-ray without either of its lung masks is a bad item.

    The set has no official train/test split, so it has one split, ``all``, as ``folder`` has:
    transfer holds out a fixed part of it for testing, chosen by file name
    (:func:`localdisc.tasks.transfer.held_out_test`).
    """

    name = "montgomery"
    default_modality = "xray"
    layout = (
        "MontgomerySet/CXR_png/MCUCXR_0001_0.png, "
        "MontgomerySet/ManualMask/{leftMask,rightMask}/MCUCXR_0001_0.png "
        "(without ManualMask: unlabelled, for pre-training)"
    )
    url = "https://lhncbc.nlm.nih.gov/LHC-downloads/downloads.html#tuberculosis-image-data-sets"
    citation = (
        "Jaeger et al., Quant Imaging Med Surg 4(6):475-477, 2014; "
        "Candemir et al., IEEE TMI 33(2):577-590, 2014"
    )
    splits = ("all",)
    all_targets = ("lung", "left_lung", "right_lung")
    preferred_target = "lung"

    def _find_images(self) -> tuple[Path, dict[str, Path]]:
        """The set's folder (``CXR_png``'s parent) and its X-rays keyed by :func:`name_key`."""
        assert self.root is not None
        found: dict[Path, dict[str, Path]] = {}
        for dirpath, dirnames, _ in walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            if Path(dirpath).name == "CXR_png":
                dirnames[:] = []
                index = _index(Path(dirpath))
                # Only folders with the set's X-rays: a zip's __MACOSX/ copy holds "._" files.
                images = {k: p for k, p in index.items() if _MONTGOMERY_STEM.match(k)}
                if images:
                    found[Path(dirpath)] = images
        if not found:
            raise DatasetError(
                f"{self.root}: no CXR_png folder with Montgomery X-rays (MCUCXR_0001_0.png) "
                f"found; expected the {self.name} layout: {self.layout}"
            )
        if len(found) > 1:
            raise DatasetError(
                f"{self.root}: {len(found)} CXR_png folders with Montgomery X-rays "
                f"({', '.join(map(str, found))}); give the MontgomerySet folder to read as ROOT"
            )
        folder, images = next(iter(found.items()))
        return folder.parent, images

    def _list_items(self) -> list[Item]:
        base, images = self._find_images()
        manual = base / "ManualMask"
        labelled = self._with_masks and manual.is_dir()
        if self._with_masks and not labelled:  # X-rays alone: unlabelled, as JSRT without SCR
            why = f"{manual}: no such folder, so the X-rays have no lung masks"
            self.missing_labels = dict.fromkeys(self.all_targets, why)
        sides = {
            target: _index(self._require_dir(manual / folder))
            for target, folder in (MONTGOMERY_SIDES.items() if labelled else ())
        }
        items: list[Item] = []
        for key, image in images.items():
            if not labelled:
                items.append(Item(image_stem(image), image))
                continue
            lungs: dict[str, Path] = {}
            for target, folder in MONTGOMERY_SIDES.items():
                path = sides[target].get(key)
                if path is None:
                    self._problem(image, f"its lung mask {manual / folder / image.name} is missing")
                    break
                lungs[target] = path
            else:
                masks = {
                    "lung": (lungs["left_lung"], lungs["right_lung"]),
                    **{target: (path,) for target, path in lungs.items()},
                }
                items.append(Item(image_stem(image), image, masks))
        self.targets = self.all_targets if labelled else ()
        self.fov_source = "whole image"
        return items


# -- any folder --------------------------------------------------------------------------

#: Folders holding masks (never pool images) in the layouts this package knows.
MASK_DIR_NAMES = frozenset(
    {
        "masks",
        "mask",
        "labels",
        "label",
        "manual",
        "manual1",
        "manual2",
        "1st_manual",
        "2nd_manual",
        "labels-ah",
        "labels-vk",
        "gt",
        "groundtruth",
        "ground_truth",
        "annotations",
        # Montgomery County chest X-rays: CXR_png/ beside ManualMask/{leftMask,rightMask}/,
        # lung masks named as their X-rays.
        "manualmask",
        "leftmask",
        "rightmask",
        *SCR_ORGANS,
        *SCR_ORGANS.values(),
    }
)
#: Where ``folder`` looks for masks next to ``images/``, in this order (any letter case).
FOLDER_MASK_DIRS = ("masks", "mask", "labels", "label", "manual", "gt")
#: Words of a folder name (split at ``_``, ``-``, spaces, dots) that make its files a JSRT image
#: only where no other file has the name: a user's ``Lung_masks/JPCLN001.png`` sorted before
#: ``images/`` and stood in for the radiograph.
_MASK_FOLDER_WORDS = frozenset(FOLDER_MASK_DIRS) | {"seg", "segmentation", "segmentations"}
#: Endings a ``folder`` mask may add to its image's stem (``case01_mask.png`` for
#: ``case01.png``), after ``_`` or ``-``, in any letter case.
FOLDER_MASK_SUFFIXES = ("mask", "seg", "label", "labels", "gt", "manual1", "segmentation")
#: File-name endings of mask partners, lower case: every ``folder`` mask ending (so that a
#: folder never pools a file it would take as a mask) plus the data sets' own tracings
#: (DRIVE's second observer ``01_manual2``, CHASE_DB1's ``Image_01L_1stHO``, STARE's
#: ``im0001.ah``).
PARTNER_SUFFIXES = (
    *(f"{sep}{s}" for s in FOLDER_MASK_SUFFIXES for sep in "_-"),
    "_manual2",
    "_1stho",
    "_2ndho",
    ".ah",
    ".vk",
)
_MASK_SUFFIX = re.compile(rf"[_-](?:{'|'.join(FOLDER_MASK_SUFFIXES)})$", re.IGNORECASE)


def mask_suffix_base(stem: str) -> str | None:
    """``stem`` without a mask ending of :data:`FOLDER_MASK_SUFFIXES` (``case01_Mask`` ->
    ``case01``), or ``None`` when it has none."""
    match = _MASK_SUFFIX.search(stem)
    return stem[: match.start()] if match and match.start() > 0 else None


#: The public retinal vessel sets' own names (:func:`name_key` of the stems), matched where no
#: mask has the image's stem, with a mask ending or without: (set, image, mask: its number and
#: its observer). The number is matched whole, so ``01`` never pairs with ``011``.
_OFFICIAL_NAMES = (
    # DRIVE: 01_test.tif, 21_training.tif -> 1st_manual/01_manual1.gif, 2nd_manual/01_manual2.gif
    ("DRIVE", re.compile(r"(\d+)_(?:test|training)"), re.compile(r"(\d+)_(manual[12])")),
    # STARE: im0001.ppm(.gz) -> labels-ah/im0001.ah.ppm.gz (Hoover), labels-vk/im0001.vk.ppm.gz
    ("STARE", re.compile(r"(im\d+)"), re.compile(r"(im\d+)\.(ah|vk)")),
    # CHASE_DB1: Image_01L.jpg -> Image_01L_1stHO.png, Image_01L_2ndHO.png
    ("CHASE_DB1", re.compile(r"(image_\d+[lr])"), re.compile(r"(image_\d+[lr])_(1stho|2ndho)")),
)


def _official_image_key(stem: str) -> str | None:
    """The key of an image named as in DRIVE, STARE or CHASE_DB1 (``01_test`` -> ``DRIVE 01``),
    which its masks' names share (:func:`_official_mask_key`), or ``None``."""
    for name, image, _ in _OFFICIAL_NAMES:
        if match := image.fullmatch(name_key(stem)):
            return f"{name} {match.group(1)}"
    return None


def _official_mask_key(stem: str) -> tuple[str, str] | None:
    """The key of a mask named as in DRIVE, STARE or CHASE_DB1 (``01_manual1`` -> ``DRIVE 01``,
    as :func:`_official_image_key` of its image) and its observer (``manual1``), or ``None``."""
    for name, _, mask in _OFFICIAL_NAMES:
        if match := mask.fullmatch(name_key(stem)):
            return f"{name} {match.group(1)}", match.group(2)
    return None


@dataclass
class _MaskIndex:
    """The image files of a mask folder, keyed for matching (:func:`name_key`).

    ``by_rel``/``by_stem``: by relative path without suffix and by stem; ``suffixed_rel``/
    ``suffixed``: the same for masks named with a mask ending, keyed without it, and
    ``suffixed_key``: each such mask's ``suffixed_rel`` key (the image it sits beside); ``names``:
    every mask's relative path; ``others``: files there that are not images, for messages;
    ``siblings``: other mask-like folders beside it (DRIVE's ``1st_manual`` beside ``mask``);
    ``own``: how many of its files are the images being matched, which are never masks;
    ``clashes``: the masks of each ``by_rel`` key held by two or more files (``001.png`` by
    ``001.tif``, or ``A/001.png`` by ``a/001.png``), none of which is taken; ``official``: masks
    named as in DRIVE, STARE or CHASE_DB1 (``01_manual1``) by :func:`_official_mask_key`, and
    ``official_images``: how many of the images have each such key (:func:`_official_image_key`).
    """

    root: Path
    by_rel: dict[str, Path] = field(default_factory=dict)
    by_stem: dict[str, list[Path]] = field(default_factory=dict)
    suffixed_rel: dict[str, list[Path]] = field(default_factory=dict)
    suffixed: dict[str, list[Path]] = field(default_factory=dict)
    suffixed_key: dict[Path, str] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    others: list[str] = field(default_factory=list)
    siblings: list[str] = field(default_factory=list)
    own: int = 0
    clashes: dict[str, list[Path]] = field(default_factory=dict)
    official: dict[str, list[Path]] = field(default_factory=dict)
    official_images: Counter[str] = field(default_factory=Counter)

    @classmethod
    def build(cls, mask_dir: Path, images: Sequence[Path] = ()) -> _MaskIndex:
        index = cls(mask_dir)
        try:
            index.siblings = [
                p.name
                for p in sorted(mask_dir.parent.iterdir())
                if p != mask_dir
                and p.name.lower() in MASK_DIR_NAMES
                and p.is_dir()
                and not _written_here(p)  # predict --out masks/: outputs, no other labels
            ]
        except OSError:  # a parent that cannot be listed holds no sibling we could know of
            index.siblings = []
        # Images and masks may share a folder (predict --images D --masks D): by resolved folder
        # and name, one resolve per folder rather than per file.
        image_names: dict[Path, set[str]] = {}
        parents: dict[Path, Path] = {}
        for image in images:
            if (key := _official_image_key(image_stem(image))) is not None:
                index.official_images[key] += 1
            if image.parent not in parents:
                parents[image.parent] = image.parent.resolve()
            image_names.setdefault(parents[image.parent], set()).add(image.name)
        for dirpath, dirnames, filenames in walk(mask_dir):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            own = image_names.get(Path(dirpath).resolve(), set()) if image_names else set()
            for f in sorted(filenames):
                if f.startswith("."):
                    continue
                if f in own:
                    index.own += 1
                    continue
                path = Path(dirpath) / f
                if not is_image_file(path):
                    index.others.append(path.relative_to(mask_dir).as_posix())
                    continue
                index.names.append(path.relative_to(mask_dir).as_posix())
                stem = image_stem(path)
                folder = path.parent.relative_to(mask_dir)
                rel = name_key((folder / stem).as_posix())
                if rel in index.by_rel:
                    index.clashes.setdefault(rel, [index.by_rel[rel]]).append(path)
                else:
                    index.by_rel[rel] = path
                index.by_stem.setdefault(name_key(stem), []).append(path)
                base = mask_suffix_base(stem)
                if base is not None:
                    key = name_key((folder / base).as_posix())
                    index.suffixed_key[path] = key
                    index.suffixed_rel.setdefault(key, []).append(path)
                    index.suffixed.setdefault(name_key(base), []).append(path)
                if (official := _official_mask_key(stem)) is not None:
                    index.official.setdefault(official[0], []).append(path)
        return index


class MaskMatch(NamedTuple):
    """One image's mask (:func:`match_masks`): ``mask`` is ``None`` when it has none, and
    ``reason`` then says why, naming the mask folder and what it holds. ``absent``: no mask at
    all, no candidate with its stem (or with it plus a mask ending) but those of other images,
    rather than two candidates, so that a partly labelled folder tells an unlabelled image from
    an ambiguous one (:class:`FolderDataset`)."""

    image: Path
    mask: Path | None
    reason: str = ""
    absent: bool = False


def match_masks(
    images: Sequence[Path], mask_dir: Path, *, image_dirs: Sequence[Path] = ()
) -> list[MaskMatch]:
    """The mask in ``mask_dir`` of each of ``images``, in their order, matched by file name as
    the ``folder`` data set matches them (:class:`FolderDataset`).

    An image's *relative path* is its path below the first of ``image_dirs`` that holds it,
    without suffix (``images/val/001.png`` -> ``val/001``), else its stem alone (a file given
    by itself). Its mask is, in this order: the mask at the same relative path below
    ``mask_dir`` (any image suffix); the one mask anywhere there with its stem, when no other
    image has that stem and that mask is not another image's by relative path; when no mask
    has the stem, one named with the stem plus a mask ending (:data:`FOLDER_MASK_SUFFIXES` after
    ``_`` or ``-``: ``case01_mask.png``), by the same rules; when the masks with its stem are
    not surely its own, such a one at its own relative path; when no mask has its stem, with a
    mask ending or without, the mask named as DRIVE, STARE or CHASE_DB1 name their tracings
    (:func:`_official_fallback`: ``01_test`` -> ``01_manual1`` or ``01_manual2``, ``im0001`` ->
    ``im0001.ah`` or ``.vk``, ``Image_01L`` -> ``Image_01L_1stHO`` or ``_2ndHO``), so that
    ``--masks DRIVE/test/1st_manual`` scores DRIVE. Two candidates are no match (two
    files at its relative path too: ``001.png`` by ``001.tif``, ``A/001.png`` by ``a/001.png``;
    two observers' tracings: ``im0001.ah`` by ``im0001.vk``), and
    neither is a mask ending when another mask-like folder sits beside ``mask_dir`` (DRIVE's
    ``mask/`` holds fields of view beside its labels in ``1st_manual/``). Letter case and
    Unicode form aside (:func:`name_key`). The images themselves are never masks, so images
    and masks may share a folder. ``mask_dir`` must be a folder.
    """
    index = _MaskIndex.build(mask_dir, images)
    rels = [(image, name_key(_relative_stem(image, image_dirs))) for image in images]
    owner = {index.by_rel[rel]: image for image, rel in rels if rel in index.by_rel}
    image_rels = {rel: image for image, rel in rels}
    image_stems = Counter(name_key(image_stem(image)) for image in images)
    matches = []
    for image, rel in rels:
        mask = index.by_rel.get(rel)
        if rel in index.clashes:
            # A converted copy (001.tif by 001.png) or folders differing in letter case (A/, a/):
            # the first in sort order was taken, unsaid, and may be another image's mask.
            names = ", ".join(m.relative_to(index.root).as_posix() for m in index.clashes[rel])
            why = f"{names} in {index.root} are each its mask by name, so none is taken; keep one"
            matches.append(MaskMatch(image, None, why))
        elif mask is not None:
            matches.append(MaskMatch(image, mask))
        else:
            mask, reason, absent = _stem_fallback(image, rel, index, owner, image_stems, image_rels)
            matches.append(MaskMatch(image, mask, reason, absent))
    return matches


def _relative_stem(path: Path, folders: Sequence[Path]) -> str:
    """``path``'s stem after its folders below the first of ``folders`` holding it, if any."""
    for folder in folders:
        try:
            relative = path.relative_to(folder)
        except ValueError:
            continue
        return (relative.parent / image_stem(path)).as_posix()
    return image_stem(path)


def _stem_fallback(
    image: Path,
    rel: str,
    index: _MaskIndex,
    owner: dict[Path, Path],
    image_stems: Counter[str],
    image_rels: dict[str, Path],
) -> tuple[Path | None, str, bool]:
    """The mask of ``image`` by stem alone, or ``None`` and why not, and whether it has none
    at all (every candidate another image's: no doubt, unlike two candidates).

    Only a match that cannot belong to another image counts: one mask with the stem, one
    image with it, and that mask not matched to another image by relative path; otherwise
    ``images/val/001.png`` would get ``masks/train/001.png``. Without any mask of that stem,
    a mask named with the stem plus a mask ending (:func:`_suffix_fallback`); with masks of that
    stem that cannot be told to be its own, one named so at its own relative path (mixed
    naming: ``masks/p2/X_mask.png`` for ``images/p2/X.dcm`` beside ``masks/p1/X.png``).
    """
    key = name_key(image_stem(image))
    candidates = index.by_stem.get(key, [])
    if not candidates:
        return _suffix_fallback(image, rel, index, image_stems, image_rels)
    mask = candidates[0]
    if len(candidates) > 1 or mask in owner or image_stems[key] > 1:
        # None of them is surely its own: one named with a mask ending at its own relative
        # path is.
        suffixed, _, _ = _suffix_fallback(image, rel, index, image_stems, image_rels)
        if suffixed is not None and index.suffixed_key.get(suffixed) == rel:
            return suffixed, "", False
    no_rel = f"no mask at the same relative path in {index.root}"
    if len(candidates) > 1:
        absent = all(m in owner for m in candidates)
        return None, f"{no_rel}, and {len(candidates)} masks elsewhere have its stem", absent
    if mask in owner:
        return None, f"{no_rel}; {mask} has its stem but is the mask of {owner[mask]}", True
    if image_stems[key] > 1:
        why = (
            f"{no_rel}; {mask} has its stem, but so do {image_stems[key]} images, so it "
            "cannot be told whose mask it is"
        )
        return None, why, False
    return mask, "", False


def _suffix_fallback(
    image: Path, rel: str, index: _MaskIndex, image_stems: Counter[str], image_rels: dict[str, Path]
) -> tuple[Path | None, str, bool]:
    """The mask named with ``image``'s stem plus a mask ending (``case01_mask.png``), or
    ``None`` and why not: the one at the same relative path, else the only one anywhere when
    no other image has the stem. A mask whose whole stem is an image's is that image's. Last,
    whether there is no candidate at all (as :func:`_stem_fallback`)."""
    key = name_key(image_stem(image))

    def free(paths: list[Path]) -> list[Path]:
        return [m for m in paths if name_key(image_stem(m)) not in image_stems]

    def several(paths: list[Path]) -> str:
        names = ", ".join(m.relative_to(index.root).as_posix() for m in paths[:4])
        return (
            f"{len(paths)} masks in {index.root} have its stem plus a mask ending "
            f"({names}), so it cannot be told which is its mask; keep one"
        )

    here = free(index.suffixed_rel.get(rel, []))
    found = here or free(index.suffixed.get(key, []))
    if found and index.siblings and not index.own:
        # DRIVE's and HRF's mask/ hold fields of view (21_training_mask.gif) beside the
        # labels in 1st_manual/ or manual1/: with another label folder there, an ending
        # may name another kind of mask, so none is taken. A folder that holds the images
        # themselves is no such mask/ (predict --images D --masks D beside a labels/).
        why = (
            f"no mask with the same file stem in {index.root}; {found[0].name} has its stem "
            f"plus a mask ending but is not taken, because {index.root.parent} also holds "
            f"{', '.join(index.siblings)}: one of them may hold other masks than labels (in "
            "DRIVE and HRF, mask/ holds fields of view beside the labels): use the data set's "
            "loader (drive:ROOT, hrf:ROOT), or keep one mask folder"
        )
        return None, why, False
    if len(here) == 1:
        return here[0], "", False
    if here:
        return None, several(here), False
    anywhere = free(index.suffixed.get(key, []))
    if len(anywhere) > 1:
        return None, several(anywhere), False
    if anywhere and image_stems[key] > 1:
        no_rel = f"no mask at the same relative path in {index.root}; {anywhere[0]} has its stem"
        other = image_rels.get(index.suffixed_key[anywhere[0]])
        if other is not None:
            # At another image's relative path (train/001_mask for train/001): that one's.
            return None, f"{no_rel} plus a mask ending but is the mask of {other}", True
        why = (
            f"{no_rel} plus a mask ending, but so do {image_stems[key]} images, so it cannot "
            "be told whose mask it is"
        )
        return None, why, False
    if anywhere:
        return anywhere[0], "", False
    if index.suffixed.get(key):  # other images' masks (01_mask is image 01_mask's): no new rule
        return None, _no_mask_reason(image, index), True
    return _official_fallback(image, index, image_stems)


def _official_fallback(
    image: Path, index: _MaskIndex, image_stems: Counter[str]
) -> tuple[Path | None, str, bool]:
    """The mask of an image named as in DRIVE, STARE or CHASE_DB1, by that set's own names
    (:data:`_OFFICIAL_NAMES`: ``01_test`` -> ``01_manual1`` or ``01_manual2``), or ``None`` and
    why not, and whether it has no candidate at all (as :func:`_suffix_fallback`). Tried only
    where no mask has the image's stem, with a mask ending or without, so that no match of the
    other rules changes. The number is the image's whole (``01`` is never ``011``), and only
    one image may have it (``01_test`` and ``01_training`` would share ``01_manual1``).

    A folder holding two observers' tracings of the image (``im0001.ah`` and ``im0001.vk``)
    gives it none, naming both: benchmarks score the first observer's, but a folder with both
    was most likely merged by mistake, and a silent pick would score some images against one
    observer and others against the other, or the second observer as if the first."""
    key = _official_image_key(image_stem(image))
    found = [
        m
        for m in index.official.get(key or "", [])
        if name_key(image_stem(m)) not in image_stems  # an image's own name: that image's
    ]
    if key is None or not found:
        return None, _no_mask_reason(image, index), True
    names = ", ".join(m.relative_to(index.root).as_posix() for m in found[:4])
    dataset = key.split()[0]
    if index.official_images[key] > 1:
        why = (
            f"no mask with the same file stem in {index.root}; {names} is the mask of {key} "
            f"by {dataset}'s names, but {index.official_images[key]} images have that number, "
            "so it cannot be told whose mask it is"
        )
        return None, why, False
    if len(found) == 1:
        return found[0], "", False
    observers = {_official_mask_key(image_stem(m)) for m in found}
    if len({o[1] for o in observers if o is not None}) > 1:
        why = (
            f"{names} in {index.root} are each its mask by {dataset}'s names, traced by two "
            "observers, so none is taken; keep one observer's masks there (benchmarks score "
            "the first's: DRIVE's 1st_manual, STARE's labels-ah, CHASE_DB1's _1stHO)"
        )
    else:  # one observer's in two files (01_manual1.gif by 01_manual1.png)
        why = f"{names} in {index.root} are each its mask by {dataset}'s names, so none is taken"
        why += "; keep one"
    return None, why, False


def _no_mask_reason(image: Path, index: _MaskIndex) -> str:
    """Why no mask matched, with what the mask folder holds, so that a naming scheme this
    matcher does not know (``mask_case01.png``) shows at the first image."""
    stem = image_stem(image)
    reason = f"no mask with the same file stem in {index.root}"
    if index.names:
        # Names holding the image's stem first: most likely the mask meant for it.
        names = sorted(index.names, key=lambda n: name_key(stem) not in name_key(n))
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        files = "1 mask file" if len(names) == 1 else f"{len(names)} mask files"
        found = f"it holds {files}: {', '.join(names[:3])}{more}"
    elif index.others:
        more = f" and {len(index.others) - 3} more" if len(index.others) > 3 else ""
        found = f"it holds no image files, only {', '.join(index.others[:3])}{more}"
    elif index.own:
        found = "it holds only the images themselves"
    else:
        found = "it holds no files"
    endings = ", ".join(f"_{s}" for s in FOLDER_MASK_SUFFIXES)
    return (
        f"{reason} ({found}); a mask needs the image's stem ({stem}, any image suffix), or "
        f"that stem plus one of these suffixes: {endings} (or with -, any letter case), or "
        "the official names of DRIVE (01_test: 01_manual1 or 01_manual2), STARE (im0001: "
        "im0001.ah or im0001.vk) or CHASE_DB1 (Image_01L: Image_01L_1stHO or Image_01L_2ndHO)"
    )


def walk(root: str | Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """:func:`os.walk` that follows symbolic links to folders (data sets are often linked in from
    another disk) and enters each real folder once, so a link back up the tree cannot loop.
    Callers may prune ``dirnames`` in place, as with :func:`os.walk`."""
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        info = os.stat(dirpath)
        if (info.st_dev, info.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        yield dirpath, dirnames, filenames


def _mask_dir_candidates(root: Path) -> list[list[Path]]:
    """Folders directly in ``root`` named like :data:`FOLDER_MASK_DIRS` in any letter case
    (``Masks``, ``GT``), grouped by name in that order of preference; hidden ones skipped."""
    found: dict[str, list[Path]] = {}
    for path in sorted(root.iterdir()):
        name = path.name.lower()
        # Name first: is_dir() is a stat, and ROOT may hold thousands of image files.
        if not path.name.startswith(".") and name in FOLDER_MASK_DIRS and path.is_dir():
            found.setdefault(name, []).append(path)
    return [found[name] for name in FOLDER_MASK_DIRS if name in found]


def find_folder_mask_dir(root: Path) -> Path | None:
    """The mask folder of a ``folder`` data set at ``root``, or ``None``.

    Names are compared case-insensitively, because images are told from masks that way too
    (:func:`folder_image_files`): a ``Masks`` folder is never pooled, so it must not be missed
    as the labels either. The first name of :data:`FOLDER_MASK_DIRS` present wins; two
    folders differing only in case (``masks`` and ``Masks``, on a case-sensitive file system)
    raise :class:`DatasetError`, since either could hold the labels.
    """
    groups = _mask_dir_candidates(root)
    if not groups:
        return None
    first = groups[0]
    if len(first) > 1:
        names = " and ".join(p.name for p in first)
        raise DatasetError(
            f"{root}: two mask folders, {names}, differ only in letter case; keep one so that "
            "it is clear which holds the masks"
        )
    return first[0]


def folder_image_dir(root: Path) -> Path:
    """The ``images`` folder of a ``folder`` data set at ``root`` (any letter case: ``Images``),
    else ``root`` itself. Two differing only in case are an error, as for mask folders."""
    found = [p for p in sorted(root.iterdir()) if p.name.lower() == "images" and p.is_dir()]
    if len(found) > 1:
        names = " and ".join(p.name for p in found)
        raise DatasetError(f"{root}: two image folders, {names}, differ only in letter case")
    return found[0] if found else root


def _written_here(folder: Path) -> bool:
    """Whether ``folder`` is wholly the writing of this package: a training run, a benchmark's
    ``--out``, or a folder whose every image is an output its records list
    (:func:`_recorded_outputs`); a user's masks beside such outputs make it no such folder."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return False
    files = [e.name for e in entries if e.is_file()]
    dirs = [e.name for e in entries if e.is_dir()]
    if _run_below(folder, folder.parent, files):
        return True
    outputs = _recorded_outputs(folder, files, dirs)
    return outputs is not None and all(
        f in outputs.files for f in files if not f.startswith(".") and is_image_file(folder / f)
    )


def _run_below(here: Path, root: Path, filenames: list[str]) -> bool:
    """Whether the folder ``here`` of a walk of ``root`` (its ``filenames``) is a training run
    or a benchmark's ``--out`` below it."""
    if here == Path(root):
        return False
    return ("config.json" in filenames and is_training_run(here)) or (
        "results.json" in filenames and is_benchmark_output(here)
    )


def is_benchmark_output(folder: Path) -> bool:
    """Whether ``folder`` is a ``localdisc benchmark`` ``--out``: a ``results.json`` with its
    config and environment (written before its figures: ``benchmark localize`` writes one at
    its start)."""
    try:
        record = json.loads((folder / "results.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(record, dict) and "config" in record and "environment" in record


def is_training_run(folder: Path) -> bool:
    """Whether ``folder`` holds a training run of this package (``pretrain``, ``shape-guided
    train`` or ``finetune``): a ``config.json`` with its settings and environment."""
    try:
        record = json.loads((folder / "config.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return (
        isinstance(record, dict)
        and "environment" in record
        and ("pretrain" in record or "transfer" in record)
    )


#: The records of a folder of outputs (``{"images": [{"name": NAME, ...}, ...]}``): ``predict``'s,
#: ``shape-guided segment``'s and ``localize --overlay``'s; with what the outputs of image NAME
#: append to it (an overlay is ``NAME.png`` itself).
OUTPUT_RECORDS: dict[str, tuple[str, ...]] = {
    "predict.json": ("_prob", "_mask"),
    "segment.json": (
        "_A_prob",
        "_A_mask",
        "_B_prob",
        "_B_mask",
        "_uncertainty",
        "_refined_prob",
        "_refined_mask",
    ),
    "overlays.json": ("",),
}


#: What a command writes into a folder of outputs besides NAME's files: its figure.
_OUTPUT_FIGURE = Path("figures") / "overlay.png"

#: The record of the figures written into a folder by name (``similarity --out``):
#: ``{"localdisc_figures": [FILE NAME, ...]}``, so that a folder of images holding one reads it
#: as no image. Named for this package: a ``figures.json`` of a paper's folder was rewritten.
FIGURE_RECORD = "localdisc-figures.json"


def recorded_figures(folder: Path) -> list[str] | None:
    """The file names :data:`FIGURE_RECORD` in ``folder`` lists: ``[]`` where there is no such
    file, ``None`` where a file of that name is not such a record (another program's)."""
    try:
        saved = json.loads((folder / FIGURE_RECORD).read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        return None
    names = saved.get("localdisc_figures") if isinstance(saved, dict) else None
    return [str(n) for n in names] if isinstance(names, list) else None


class _Outputs(NamedTuple):
    """What a folder's records say a command of this package wrote there: ``files`` (names in
    the folder, and ``figures/overlay.png``) and ``folders`` (its own sub-folders: an
    ensemble's ``run-K`` parts)."""

    files: set[str]
    folders: set[str]


def vessels_network(config: Path) -> dict[str, Any] | None:
    """A ``shape-guided vessels`` network's ``config.json`` (at ``config``) as a dict, or None
    where it is no such network's (another program's, or none)."""
    try:
        saved = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) and "self_trained_vessels" in saved else None


def _recorded_outputs(
    folder: Path, filenames: Sequence[str], dirnames: Sequence[str] = ()
) -> _Outputs | None:
    """The outputs a command of this package wrote in ``folder`` (its ``filenames`` and
    ``dirnames``) for the images its records list, None where there is no record:
    :data:`OUTPUT_RECORDS` (NAME plus the command's endings; an overlay is ``NAME.png``;
    ``segment.json``'s ``parts``), the figures :data:`FIGURE_RECORD` names, ``shape-guided
    vessels``' ``vessels.csv`` (parsed, with its ``image`` column) and the ``"writes"`` of its
    networks' ``config.json`` (its own, and its ``group-K`` ones: a stopped ``--teach-all``
    copied the masks of the groups done), each ``NAME_prob`` and ``NAME_mask``. A user's images
    there of other names stay images."""
    stems: set[str] = set()
    exact: set[str] = set()
    parts: set[str] = set()
    recorded = False
    for record, suffixes in OUTPUT_RECORDS.items():
        if record not in filenames:
            continue
        try:
            saved = json.loads((folder / record).read_text())
            names = {str(e["name"]) for e in saved["images"]}
        except (OSError, ValueError, TypeError, KeyError):
            continue
        recorded = True
        if suffixes == ("",):  # an overlay: NAME.png itself, not the image NAME.jpg
            exact |= {f"{name}.png" for name in names}
        stems |= {name + s for name in names for s in suffixes if s}
        if isinstance(saved.get("parts"), list):
            parts |= {str(p) for p in saved["parts"]}
    if FIGURE_RECORD in filenames and (figures := recorded_figures(folder)):
        exact |= set(figures)
        recorded = True
    vessels: set[str] = set()
    if "vessels.csv" in filenames:
        table = folder / "vessels.csv"
        with (
            contextlib.suppress(OSError, KeyError, UnicodeDecodeError, csv.Error),
            table.open(newline="") as file,
        ):
            listed = {row["image"] for row in csv.DictReader(file)}  # KeyError: another's
            vessels |= listed
            recorded = recorded or bool(listed)  # its table lists every image it segmented
    networks = [folder / "config.json"] if "config.json" in filenames else []
    networks += [folder / d / "config.json" for d in dirnames if re.fullmatch(r"group-\d+", d)]
    for network in filter(None, map(vessels_network, networks)):
        vessels |= {str(name) for name in network.get("writes") or []}  # before its first mask
        recorded = True
    if not recorded:
        return None
    stems |= {name + s for name in vessels for s in ("_prob", "_mask")}
    files = {f for f in filenames if f in exact or image_stem(f) in stems}
    return _Outputs(files | {_OUTPUT_FIGURE.as_posix()}, parts & set(dirnames))


def written_below(root: Path, own: Path | None = None) -> list[Path]:
    """The folders in or below ``root`` that :func:`folder_image_files` leaves out as the
    writing of this package, but ``own`` (a run's own folder): training runs
    (:func:`is_training_run`), benchmarks' ``--out`` and folders of outputs their records list
    (:func:`_recorded_outputs`), each sorted, runs first. Runs started before they were left
    out read them."""
    runs, outputs = [], []
    for dirpath, dirnames, filenames in walk(root):
        here = Path(dirpath)
        if _run_below(here, root, filenames):
            dirnames[:] = []
            runs.append(here)
        elif _recorded_outputs(here, filenames, dirnames) is not None:
            outputs.append(here)
    mine = None if own is None else Path(own).resolve()
    return [p for p in (*sorted(runs), *sorted(outputs)) if p.resolve() != mine]


def folder_image_files(
    root: Path,
    *,
    exclude: Path | None = None,
    on_outputs: Callable[[Path, int], None] | None = None,
) -> list[Path]:
    """Image files under ``root`` (recursive, sorted by path) that are not masks.

    Skips hidden entries, folders named like mask folders (:data:`MASK_DIR_NAMES`), ``exclude``,
    training runs below ``root`` (:func:`is_training_run`: a ``pretrain --out`` inside its
    ``--data`` folder pooled its figures in the next run, a ``finetune --out`` inside its images
    recalibrated batch norm on its predictions) and benchmarks' ``--out`` (their figures;
    :func:`is_benchmark_output`), the outputs of predictions, segmentations and overlays that
    the records beside them list (:func:`_recorded_outputs`: with the record's
    ``figures/overlay.png`` and an ensemble's ``run-K/`` parts; ``similarity``'s figures;
    ``predict --out D/pred``, then ``pretrain --data D`` pooled its probability maps and masks,
    ``finetune`` took them for unlabelled images; ``on_outputs(folder, count)`` hears of each
    folder's files left out), and files whose stem is another image's stem in the same folder
    plus a partner ending (:data:`PARTNER_SUFFIXES`, any letter case:
    CHASE_DB1's ``Image_01L_1stHO.png`` next to ``Image_01L.jpg``, ``case01_seg.png`` or
    ``case01-mask.png`` next to ``case01.png``). A file with such an ending but no image of the
    base stem beside it is an image.
    """
    found: list[Path] = []
    written: set[Path] = set()  # the outputs the records of the folders walked so far list
    for dirpath, dirnames, filenames in walk(root):
        here = Path(dirpath)
        if _run_below(here, root, filenames):
            dirnames[:] = []
            continue
        outputs = _recorded_outputs(here, filenames, dirnames)
        if outputs is not None:  # its figure lies below it
            written |= {here / f for f in outputs.files}
        left_out = {f for f in filenames if here / f in written}
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".")
            and d.lower() not in MASK_DIR_NAMES
            and (exclude is None or here / d != exclude)
            and not (outputs is not None and d in outputs.folders)
        )
        if left_out and on_outputs is not None:
            on_outputs(here, len(left_out))
        # The whole path: a DICOM file named without a suffix is known by its content.
        found.extend(
            here / f
            for f in filenames
            if not f.startswith(".") and f not in left_out and is_image_file(here / f)
        )
    # name_key, as match_masks compares names: letter case and Unicode form aside.
    stems = {(p.parent, name_key(image_stem(p))) for p in found}

    def is_partner(path: Path) -> bool:
        stem = name_key(image_stem(path))
        return any(
            stem.endswith(s) and (path.parent, stem[: -len(s)]) in stems for s in PARTNER_SUFFIXES
        )

    return sorted(p for p in found if not is_partner(p))


class FolderDataset(SegmentationDataset):
    """Any folder of images, optionally with masks matched by file stem (:func:`match_masks`);
    one split, ``all``.

    Layouts: ``ROOT/images/`` with a mask folder beside it (``masks/``, ``mask/``, ``labels/``,
    ``label/``, ``manual/`` or ``gt/``; folder names in any letter case, the first present), or
    images directly in ROOT with such a folder inside, give the target ``mask``: each image needs
    a mask with the same relative path and stem (any image suffix). Failing that, a mask
    anywhere in the mask folder with the same stem matches when that stem is unique among the
    masks and among the images and the mask is not another image's by relative path
    (``images/val/001.png`` never gets ``masks/train/001.png``). When no mask has the stem, one
    named with the stem plus a mask ending (:data:`FOLDER_MASK_SUFFIXES` after ``_`` or ``-``,
    any letter case: ``case01_mask.png``, ``case01-GT.tif``) matches by the same rules: the one
    at the same relative path, else the only one anywhere for a stem no other image has; two
    candidates are an error, not a guess, and so is any when another mask-like folder sits
    beside the mask folder (DRIVE's ``mask/21_training_mask.gif`` is a field of view, its label
    is in ``1st_manual/``). Images without a mask are unlabelled (few are labelled, as a
    rule): their samples have no ``mask``, and ``missing_labels`` names them; but a mask folder
    that gives no image a mask is an error naming the first image and why (masks named in a
    way this matcher does not know). Without a mask folder the set is unlabelled. Images
    are found recursively; an image file listed under a second name (a symbolic or hard link to
    another image) is used once, as its labelled name, else as the name that is not a link, else the
    first (``repeated``): a test image was trained on under its other name. Two files of one
    name, a converted copy beside its image (``X.png`` by ``X.tif``), are an error naming both
    (:meth:`_one_per_name`). The FOV is derived
    from the image; the modality is guessed from the first images unless given (grey:
    ``xray``; :func:`guess_modality`, its note in :meth:`notes` where they disagree).
    """

    name = "folder"
    default_modality = None
    layout = (
        "ROOT/images/*.png + ROOT/masks/*.png (same stems, or stem_mask/_seg/_label/_gt...), "
        "or a folder of images alone"
    )
    splits = ("all",)
    all_targets = ("mask",)
    preferred_target = "mask"

    def __init__(
        self,
        root: str | Path | None = None,
        split: str | None = None,
        *,
        skip_bad: bool = False,
        modality: str | None = None,
    ) -> None:
        if modality is not None and modality not in ("fundus", "xray"):
            raise DatasetError(f"unknown modality {modality!r}; expected 'fundus' or 'xray'")
        self._given_modality = modality
        self._guessed: str | None = None  # guessed_modality()'s, and its note:
        self._guess_note: str | None = None
        self.mask_dir: Path | None = None
        super().__init__(root, split, skip_bad=skip_bad)

    def _list_items(self) -> list[Item]:
        assert self.root is not None
        image_dir = folder_image_dir(self.root)
        self.mask_dir = find_folder_mask_dir(self.root)
        images = folder_image_files(image_dir, exclude=self.mask_dir)
        if self.mask_dir is None:
            self.targets = ()
            items = self._once([Item(self._name(p, image_dir), p) for p in images])
            return self._one_per_name(items, image_dir)
        matches = match_masks(images, self.mask_dir, image_dirs=[image_dir])
        if all(match.mask is None for match in matches):
            # Not one match: the masks are named in a way the matcher does not know, which the
            # first image's reason shows (what the mask folder holds).
            for match in matches:
                self._problem(match.image, match.reason)
            return []
        items: list[Item] = []
        unlabelled: list[MaskMatch] = []
        for match in matches:
            if match.mask is None and not match.absent:
                # Two candidates (or a mask ending beside DRIVE's mask/ folders): a naming
                # problem, not an image left unlabelled.
                self._problem(match.image, match.reason)
                continue
            if match.mask is None:
                unlabelled.append(match)
            masks = {"mask": (match.mask,)} if match.mask is not None else {}
            items.append(Item(self._name(match.image, image_dir), match.image, masks))
        if unlabelled:
            # A few labelled, as is usual: the others are unlabelled images, not bad items;
            # the first one's reason shows what the mask folder holds.
            names = [self._name(m.image, image_dir) for m in unlabelled]
            more = f" and {len(names) - 5} more" if len(names) > 5 else ""
            self.missing_labels["mask"] = (
                f"{len(names)} of the {len(items)} images have no mask in {self.mask_dir}, so "
                f"are unlabelled: {', '.join(names[:5])}{more} ({unlabelled[0].image.name}: "
                f"{unlabelled[0].reason})"
            )
        self.targets = ("mask",)
        return self._one_per_name(self._once(items), image_dir)

    @staticmethod
    def _one_per_name(items: list[Item], image_dir: Path) -> list[Item]:
        """``items``, refused where two of them have one name (:func:`name_key` of
        :meth:`_name`, as masks are matched), naming both files: a converted copy left beside
        its image (``X.png`` by ``X.tif``) was a second item of that name with the same mask;
        the test split is drawn by name, so one copy was tested and the other trained on, and
        ``predictions/`` kept one of each pair. Links of one file are not refused: :meth:`_once`
        has listed each file once before. Files of one stem in different sub-folders have
        different names."""
        seen: dict[str, Item] = {}
        for item in items:
            first = seen.setdefault(name_key(item.name), item)
            if first.image != item.image:
                one, other = (i.image.relative_to(image_dir).as_posix() for i in (first, item))
                if first.name != item.name:  # A/x and a/x: two images, perhaps
                    raise DatasetError(
                        f"{image_dir}: {one} and {other} have one name but for letter case, "
                        "and masks are matched without it: keep one, or rename one"
                    )
                raise DatasetError(
                    f"{image_dir}: {one} and {other} are two files of one image ({item.name}); "
                    "keep one there (remove the copy or move it out of the folder)"
                )
        return items

    def _once(self, items: list[Item]) -> list[Item]:
        """``items`` with each image file once: of the items whose image is the same file (a
        symbolic or hard link to another image), the first labelled one, else the first that is
        not a link, else the first; the others recorded in ``repeated``. Split by name, the
        same file was held out for testing under one name and trained on under another."""
        groups: dict[object, list[int]] = {}
        for i, item in enumerate(items):
            try:  # the file itself: a symbolic link's target, a hard link's inode
                st = item.image.stat()
                key: object = (st.st_dev, st.st_ino)
            except (OSError, RuntimeError):  # gone, a link loop: the reader names it
                key = item.image
            groups.setdefault(key, []).append(i)
        dropped: set[int] = set()
        for members in groups.values():
            if len(members) > 1:
                keep = min(members, key=lambda i: (not items[i].masks, items[i].image.is_symlink()))
                dropped |= set(members) - {keep}
                self.repeated += [(items[i].image, items[keep].image) for i in members if i != keep]
        self.repeated.sort()
        return [item for i, item in enumerate(items) if i not in dropped]

    @staticmethod
    def _name(path: Path, base: Path) -> str:
        return (path.parent.relative_to(base) / image_stem(path)).as_posix()

    @property
    def modality(self) -> str:
        return self._given_modality or self.guessed_modality()

    @property
    def modality_note(self) -> str | None:
        """Where the modality was guessed and grey images came before a colour one, the
        guess's line naming them (:func:`guess_modality`)."""
        if self._given_modality is not None:
            return None
        self.guessed_modality()
        return self._guess_note

    def guessed_modality(self) -> str:
        """The modality the images look like (:func:`guess_modality` of the first ones),
        whatever was given; ``fundus`` where none tells."""
        if self._guessed is None:
            said: list[str] = []
            paths = [item.image for item in self.items[:GUESS_LOOKS_AT]]
            self._guessed = guess_modality(paths, log=said.append) or "fundus"
            self._guess_note = said[0] if said else None
        return self._guessed

    @property
    def label_map_note(self) -> str | None:
        """Where the first mask is a label map (:func:`mask_labels`) of several labels read as
        one foreground (lungs 1 and heart 2: their union), or of labels read as background (85
        of a map scaled for display as 0/85/170/255), a line saying so."""
        first = next((item.masks["mask"][0] for item in self.items if item.masks), None)
        try:
            joined, background = mask_labels(first) if first is not None else ([], [])
        except ImageReadError:  # named where it is read
            return None

        def listed(labels: list[str]) -> str:
            return ", ".join(labels[:5]) + (", ..." if len(labels) > 5 else "")

        if background:
            kept = f"; {listed(joined)} as one foreground" if joined else ""
            return (
                f"{first}: labels {listed(background)} are read as background, being under half "
                f"scale{kept} (every mask of this set is read so); if they mark a structure, save "
                "the masks as 0 and 1, or class indices 0, 1, 2"
            )
        if not joined:
            return None
        return (
            f"{first}: a label map of {len(joined)} labels ({listed(joined)}), read as one "
            "foreground, their union (every mask of this set is read so); to segment one "
            "structure, give masks holding it alone"
        )

    def notes(self) -> list[str]:
        """:meth:`SegmentationDataset.notes`, :attr:`modality_note` and
        :attr:`label_map_note` where they apply."""
        return [*super().notes(), *filter(None, [self.modality_note, self.label_map_note])]

    @classmethod
    def pool_paths(cls, root: str | Path | None) -> list[Path]:
        """Every image under ``ROOT/images`` (when that folder exists) or else under ROOT,
        recursive and sorted by path, except masks (see :func:`folder_image_files`)."""
        if root in (None, ""):
            raise DatasetError(f"folder needs a ROOT folder; expected {cls.layout}")
        root = Path(root).expanduser()
        if not root.is_dir():
            hint = _unknown_name_hint(root)
            raise DatasetError(f"{root}: no such folder{hint}; expected a folder of images")
        image_dir = folder_image_dir(root)
        # Pre-training needs no labels: every mask-named folder is left out, none is an error.
        groups = _mask_dir_candidates(root)
        paths = folder_image_files(image_dir, exclude=groups[0][0] if groups else None)
        if not paths:
            raise DatasetError(f"{root}: no image files found; expected {cls.layout}")
        return paths


# -- synthetic ---------------------------------------------------------------------------


class _SyntheticDataset(SegmentationDataset):
    """Images generated on the fly by :mod:`localdisc.data.synthetic` (size 256).

    ROOT is optional: empty gives 20 train and 10 test images; an integer ``N`` gives ``N``
    train and ``max(1, N // 2)`` test images. Train image ``i`` uses seed ``i``, test image
    ``i`` seed ``100000 + i``, so the splits never share an image.
    """

    requires_root = False
    size: ClassVar[int] = 256
    test_seed_offset: ClassVar[int] = 100_000
    layout = "generated; ROOT is an optional image count N (default 20 train / 10 test)"
    url = "-"
    citation = "-"

    def _counts(self) -> tuple[int, int]:
        if self.root is None:
            return 20, 10
        text = str(self.root)
        if not text.isdigit() or int(text) < 1:
            raise DatasetError(
                f"{self.name}: ROOT must be a positive image count (e.g. {self.name}:40), "
                f"got {text!r}"
            )
        n = int(text)
        return n, max(1, n // 2)

    def _list_items(self) -> list[Item]:
        n_train, n_test = self._counts()
        items: list[Item] = []
        for split, n, offset in (
            ("train", n_train, 0),
            ("test", n_test, self.test_seed_offset),
        ):
            if self.split in (split, "all"):
                for i in range(n):
                    name = f"{self.name}_{split}_{i:03d}"
                    items.append(
                        Item(name, Path(f"<{self.name}>") / split / f"{i:03d}", seed=offset + i)
                    )
        self.targets = self.all_targets
        self.fov_source = self._fov_source
        return items

    _fov_source: ClassVar[str] = "generated"

    def _generate(self, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        raise NotImplementedError

    def load(self, item: Item) -> Sample:
        assert item.seed is not None
        image, masks, fov = self._generate(item.seed)
        image = to_modality_channels(image, self.modality)
        return Sample(item.name, image, masks, fov, item.image)

    @classmethod
    def pool_paths(cls, root: str | Path | None) -> list[Path]:
        raise DatasetError(
            f"{cls.name} images are generated in memory and have no files; use a folder or a "
            "known data set for a pool of image files"
        )


class SyntheticFundusDataset(_SyntheticDataset):
    """Synthetic fundus photographs with vessel masks and a circular FOV."""

    name = "synthetic_fundus"
    all_targets = ("vessels",)

    def _generate(self, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        from localdisc.data.synthetic import synthetic_fundus

        s = synthetic_fundus(size=self.size, seed=seed)
        return s.image, {"vessels": np.asarray(s.vessels, dtype=bool)}, np.asarray(s.fov, bool)


class SyntheticXrayDataset(_SyntheticDataset):
    """Synthetic chest radiographs with lung and heart masks; the FOV is the whole image."""

    name = "synthetic_xray"
    default_modality = "xray"
    all_targets = ("lung", "heart", "left_lung", "right_lung")
    preferred_target = "lung"
    preview_targets = ("lung", "heart")
    _fov_source = "whole image"
    hard: ClassVar[bool] = False

    def _generate(self, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        from localdisc.data.synthetic import synthetic_xray

        s = synthetic_xray(size=self.size, seed=seed, hard=self.hard)
        masks = {
            "lung": np.asarray(s.lungs, dtype=bool),
            "heart": np.asarray(s.heart, dtype=bool),
            "left_lung": np.asarray(s.left_lung, dtype=bool),
            "right_lung": np.asarray(s.right_lung, dtype=bool),
        }
        return s.image, masks, np.ones(s.image.shape[:2], dtype=bool)


class SyntheticHardXrayDataset(SyntheticXrayDataset):
    """Synthetic chest radiographs closer to digitised films (``synthetic_xray(hard=True)``):
    paler lungs, strong ribs, film markers, and organs that leave the simulated prior's pose."""

    name = "synthetic_xray_hard"
    hard = True


# -- registry ----------------------------------------------------------------------------

DATASETS: dict[str, type[SegmentationDataset]] = {
    cls.name: cls
    for cls in (
        DriveDataset,
        StareDataset,
        ChaseDb1Dataset,
        HrfDataset,
        JsrtScrDataset,
        MontgomeryDataset,
        FolderDataset,
        SyntheticFundusDataset,
        SyntheticXrayDataset,
        SyntheticHardXrayDataset,
    )
}


def dataset_class(name: str) -> type[SegmentationDataset]:
    """The loader registered under ``name`` (case-insensitive); unknown names raise."""
    cls = DATASETS.get(name.lower())
    if cls is None:
        raise DatasetError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    return cls


def load_dataset(
    name: str,
    root: str | Path | None = None,
    split: str | None = None,
    *,
    skip_bad: bool = False,
    **options: Any,
) -> SegmentationDataset:
    """Open the data set ``name`` at ``root`` (listing only; samples are read on access;
    generated sets such as ``synthetic_fundus`` take no ``root``).

    ``split`` is ``"train"``, ``"test"`` or ``"all"``; sets without a split (``folder``) only
    have ``"all"``, and ``None`` picks ``"train"`` where it exists, else ``"all"``. ``options``
    go to the loader (``folder`` takes ``modality``).
    """
    return dataset_class(name)(root, split, skip_bad=skip_bad, **options)


def _unknown_name_hint(root: Path) -> str:
    """For a missing folder that reads as ``NAME:ROOT`` (``drvie:/data/DRIVE``): the name is
    no data set's, the likelier mistake than a folder whose name holds a colon."""
    prefix, sep, _ = str(root).partition(":")
    if sep and len(prefix) > 1 and "/" not in prefix and "\\" not in prefix:
        return f" ({prefix!r} is not a known data set; known: {', '.join(DATASETS)})"
    return ""


def _folder_here_hint(name: str) -> str:
    """Where the working directory holds a folder named as the data set ``name`` (any letter
    case: ``DRIVE/``), how to give it: the bare name reads as the set, without its folder."""
    try:
        here = sorted(p.name for p in Path.cwd().iterdir() if p.is_dir() and p.name.lower() == name)
    except OSError:
        return ""
    if not here:
        return ""
    folder = here[0]
    return (f" (the folder {folder} here: {name}:{folder} reads it in the {name} layout, "
            f"./{folder} reads it as a folder of your own)")  # fmt: skip


def parse_data_spec(spec: str | os.PathLike[str]) -> tuple[str, Path | None]:
    """Split a data spec into ``(name, root)``.

    ``NAME:ROOT`` with a known ``NAME`` (``drive:/data/DRIVE``, ``synthetic_fundus:40``) and a
    bare known name (root ``None``) are data sets; anything else is a folder path, colons
    included (``/data/run:2`` is ``("folder", Path("/data/run:2"))``).
    """
    spec = os.fspath(spec)  # a folder as a Path: it had no partition()
    prefix, sep, rest = spec.partition(":")
    if sep and prefix.lower() in DATASETS:
        return prefix.lower(), Path(rest).expanduser() if rest else None
    if spec.lower() in DATASETS:
        return spec.lower(), None
    return "folder", Path(spec).expanduser()


def split_target(spec: str) -> tuple[str, str | None]:
    """``(data spec, target)`` of ``NAME:ROOT[:TARGET]`` (``jsrt_scr:/data:heart`` ->
    ``("jsrt_scr:/data", "heart")``, ``synthetic_xray:heart`` -> ``("synthetic_xray",
    "heart")``); a spec without a target, or not of a known set (a folder, colons and all),
    unchanged with ``None``: the set's default.

    The tail after the last colon is a target only when it names one of the set's targets,
    since ROOT may contain colons (``/data/run:2``). Where ROOT without the tail is a root and
    with it is none, the tail is a mistyped target: :class:`DatasetError` naming the set and its
    targets, for the caller to say where the spec came from.
    """
    prefix, sep, rest = spec.partition(":")
    if not sep or prefix.lower() not in DATASETS:
        return spec, None
    name = prefix.lower()
    cls = dataset_class(name)
    if not cls.requires_root and rest in cls.all_targets:  # synthetic_xray:heart
        return name, rest
    head, sep, tail = rest.rpartition(":")
    if sep and tail in cls.all_targets:
        return f"{name}:{head}", tail
    if sep and tail and _can_be_root(cls, head) and not _can_be_root(cls, rest):
        raise DatasetError(
            f"{name} has no target {tail!r}; its targets are: {', '.join(cls.all_targets)}"
        )
    return spec, None


def _can_be_root(cls: type[SegmentationDataset], text: str) -> bool:
    """Whether ``text`` can be the ROOT of ``cls``: an existing path, or for the generated
    sets nothing or an image count."""
    if not cls.requires_root:
        return text == "" or text.isdigit()
    return bool(text) and Path(text).expanduser().exists()


def absolute_path(text: str, *, missing: bool = False) -> str:
    """``text`` as an absolute path (``~`` expanded, links resolved) where it names something
    that exists, so that a saved config names it from any directory; else as typed, for the
    error that names it (``missing``: made absolute all the same, to compare with a saved one)."""
    try:
        path = Path(text).expanduser()
        return str(path.resolve()) if missing or path.exists() else text
    except RuntimeError:  # ~user of no user
        return text


def absolute_data_spec(spec: str, *, missing: bool = False) -> str:
    """A data spec with its folder absolute (:func:`absolute_path`: ``drive:DRIVE`` ->
    ``drive:/data/DRIVE``, ``mine`` -> ``/data/mine``); generated sets (``synthetic_fundus:40``),
    bare names and missing folders unchanged (``drvie:/data`` keeps its "not a known data set"
    hint only as typed), the latter made absolute too where ``missing``."""
    name, root = parse_data_spec(spec)
    if root is None or not dataset_class(name).requires_root or not (missing or root.exists()):
        return spec
    absolute = absolute_path(str(root), missing=missing)
    # A bare folder stays bare: "folder:" before it reads the same, but is not what was typed.
    return f"{name}:{absolute}" if spec.partition(":")[0].lower() == name else absolute


#: :func:`guess_modality` looks at up to this many images that tell a modality (blank or
#: unreadable ones tell nothing); a folder's first :data:`GUESS_LOOKS_AT` are offered to it.
MODALITY_VOTES = 9
GUESS_LOOKS_AT = 50
#: About this many pixels of each image are compared (a large one is strided).
MODALITY_PIXELS = 1 << 20


def guess_modality(
    paths: Sequence[Path],
    log: Callable[[str], None] | None = None,
    unreadable: list[LocaldiscError] | None = None,
) -> str | None:
    """The modality of the images at ``paths`` (a folder's first few): grey images (one channel,
    or RGB with equal channels as in Kermany's JPEGs) are X-rays, colour images fundus
    photographs; ``None`` where none tells (unreadable or blank). ``unreadable``, when given,
    is filled with the read error of each file looked at that could not be read, in order:
    where none tells, it says whether the files were blank or could not be read at all (a
    clone without git-lfs leaves text pointers in place of the images).

    Fundus at the first colour image among the first :data:`MODALITY_VOTES` that tell, X-ray
    where all of them are grey: a red-free fundus photograph is grey, but no X-ray is in
    colour (the first image alone took a fundus folder whose first file was red-free for
    X-rays, and a majority of them one whose first five were). Where grey images came before
    the colour one, ``log`` hears a line naming them."""
    greys: list[Path] = []
    for path in paths:
        if len(greys) == MODALITY_VOTES:
            break
        try:
            image = _read_image(path)
        except ReaderSetupError:  # this installation's (pydicom missing): every such file
            raise
        except LocaldiscError as exc:
            if unreadable is not None:
                unreadable.append(exc)
            continue  # the bad file is reported when it is read
        # Every 2nd to 4th pixel of a large photograph tells its colour as well as all do, in
        # a fraction of the time (nine 10-megapixel fundus JPEGs: seconds).
        step = max(1, int((image.shape[0] * image.shape[1] / MODALITY_PIXELS) ** 0.5))
        found = image_modality(image[::step, ::step])
        if found == "xray":
            greys.append(path)
        elif found == "fundus":
            if greys and log is not None:
                more = f" and {len(greys) - 3} more" if len(greys) > 3 else ""
                log(
                    f"{path.name} is a colour image, and {len(greys)} grey one(s) came before it "
                    f"({', '.join(p.name for p in greys[:3])}{more}; first: {greys[0]}): all "
                    "taken for fundus images, red-free photographs being grey and X-rays never "
                    "in colour; give --modality where that is wrong"
                )
            return "fundus"
    return "xray" if greys else None


def image_modality(image: np.ndarray) -> str | None:
    """The modality an image (H x W x C in [0, 1]) looks like: ``xray`` where grey (one
    channel, or RGB with equal channels), ``fundus`` where coloured, ``None`` where blank RGB
    (all black, say: no colour either way)."""
    if image.shape[2] == 1:
        return "xray"
    if image.max() == image.min():
        return None
    spread = np.abs(image[:, :, :3] - image[:, :, :3].mean(axis=2, keepdims=True))
    return "xray" if float(spread.mean()) < 2 / 255 else "fundus"


def load_data_spec(
    spec: str | os.PathLike[str],
    split: str | None = None,
    *,
    skip_bad: bool = False,
    modality: str | None = None,
) -> SegmentationDataset:
    """:func:`load_dataset` on a data spec (see :func:`parse_data_spec`). ``modality``: a
    folder's images are of it (``None``: guessed from them); a known data set's are of its own,
    and another is refused."""
    name, root = parse_data_spec(spec)
    if modality is None or name == "folder":
        options = {} if modality is None else {"modality": modality}
        return load_dataset(name, root, split, skip_bad=skip_bad, **options)
    own = dataset_class(name).default_modality
    if modality != own:
        raise DatasetError(f"{spec}: {name} holds {own} images, not {modality}")
    return load_dataset(name, root, split, skip_bad=skip_bad)


def pool_image_paths(spec: str) -> list[Path]:
    """All image files of a data spec for unlabelled pre-training (labels unused).

    A folder gives every image under it, recursively and sorted by path, except masks (mask
    folders and mask partners, see :func:`folder_image_files`); a known data set gives the
    images of all its splits. KaggleDR and CXR_Kermany are plain folders.
    """
    name, root = parse_data_spec(spec)
    return dataset_class(name).pool_paths(root)
