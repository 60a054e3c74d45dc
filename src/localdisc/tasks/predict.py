"""Segment new images with a fine-tuned model (``localdisc predict``)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from localdisc.data.datasets import (
    MaskMatch,
    folder_image_files,
    image_modality,
    image_stem,
    match_masks,
    name_key,
    refuse_official_fov,
    vessels_network,
)
from localdisc.data.io import (
    ImageMeta,
    dim_note,
    header_metas,
    header_notes,
    is_image_file,
    read_image,
    read_image_meta,
    read_mask,
    write_png,
)
from localdisc.data.preprocess import fov_from_image, resize_mask, to_modality_channels
from localdisc.engine.checkpoint import atomic_write_text
from localdisc.engine.distributed import resolve_device
from localdisc.engine.monitor import ProgressBar
from localdisc.errors import ImageReadError, InputError, LocaldiscError, ReaderSetupError
from localdisc.eval.provenance import environment
from localdisc.models.segmenter import Segmenter, read_config


def as_inputs(paths: Sequence[str | Path] | str | Path) -> list[str | Path]:
    """Files and folders given as a list, or one given alone: a folder's path as a string was
    read letter by letter ("w: no such file or folder")."""
    return [paths] if isinstance(paths, str | os.PathLike) else list(paths)


def collect_images(
    paths: Sequence[str | Path],
    *,
    out_dir: str | Path | None = None,
    suffixes: Sequence[str] = ("_prob", "_mask"),
    log: Callable[[str], None] | None = None,
    guard: bool = True,
) -> list[tuple[str, Path]]:
    """``(output name, file)`` for every image file given or found under a given folder.

    Names are file stems; files found in sub-folders are prefixed by their relative folder
    (``a/b/x.png`` -> ``a_b_x``) so that outputs never overwrite each other.

    ``out_dir``: where the outputs go. Found in a given folder, it is skipped; when it is the
    given folder itself, what a command wrote there is (:func:`_without_outputs`: files named
    ``NAME`` + one of the command's ``suffixes``, and ``figures/``): else a second run would
    segment the first run's outputs (``x_prob_prob.png``, ...). With ``guard``, where ``out_dir``
    holds a given image (its folder, or a file in it), an output that would replace a file no
    earlier run wrote (:func:`_written_before`) is refused: a true mask beside its image.
    ``shape-guided segment`` passes ``guard=False``: its names (``NAME_A_mask``) are no one's
    masks, and a stopped segment's record lists its images' names alone. The
    outputs that a record lists in a given folder or below it are left out as well, as every
    folder of images leaves them out (:func:`~localdisc.data.datasets.folder_image_files`:
    ``--out D/run1``, then ``--out D/run2``), said through ``log`` where given; the images there
    are kept (a predict into its images' own folder).
    """
    paths = as_inputs(paths)
    out = Path(out_dir).expanduser().resolve() if out_dir is not None else None
    found: list[tuple[str, Path]] = []
    given: list[int] = []  # which of ``paths`` each of ``found`` came from
    among = False  # the outputs go among the images: into a given folder, or a given file's
    for index, raw in enumerate(paths):
        path = Path(raw).expanduser()
        if path.is_dir():
            here: list[tuple[str, Path]] = []

            def said(folder: Path, left_out: int) -> None:
                if log is not None:
                    log(f"left out {left_out} file(s) in {folder}: the outputs of an earlier run "
                        "there, not images to segment")  # fmt: skip

            files = folder_image_files(path, exclude=_below(out, path), on_outputs=said)
            for file in files:
                parts = [*file.relative_to(path).parent.parts, image_stem(file)]
                here.append(("_".join(parts), file))
            if out is not None and path.resolve() == out:
                here = _without_outputs(here, path, suffixes)
                among = True
            found.extend(here)
            given.extend([index] * len(here))
        elif path.is_file():
            if not is_image_file(path):
                raise LocaldiscError(f"{path}: not an image file this reader takes")
            found.append((image_stem(path), path))
            given.append(index)
            among = among or path.parent.resolve() == out
        else:
            raise LocaldiscError(f"{path}: no such file or folder")
    if guard and among:
        # NAME_mask.png beside NAME.png (left out as its mask, or as an output) that no run
        # wrote: a true mask, which the outputs replaced (exit 0, lost); given as files too.
        before = _written_before(out)
        taken = ((name, out / f"{name}{s}.png") for name, _ in found for s in suffixes
                 if before is not None and name not in before)  # fmt: skip
        name, first = next(((n, f) for n, f in taken if f.exists()), ("", None))
        if first is not None:
            raise LocaldiscError(
                f"{first}: an output of this run would replace it, and no earlier run there "
                f"wrote it (no predict.json, nor shape-guided vessels' vessels.csv, lists {name}): "
                "a true mask? write the outputs to another --out"
            )
    names = [name for name, _ in found]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        same = [(path, g) for (name, path), g in zip(found, given, strict=True)
                if name == duplicates[0]]  # fmt: skip
        shown = ", ".join(str(p) for p in dict.fromkeys(p for p, _ in same[:3]))
        if len({p.resolve() for p, _ in same}) < len(same):
            why = "a file given twice (as a file and in its folder?): give it once"
        elif len({p.parent.resolve() for p, _ in same}) == 1:
            why = "files of one folder whose names differ only in their suffix: rename one"
        elif len({g for _, g in same}) == 1:  # D/a_x.png and D/a/x.png: both a_x
            why = "names join a sub-folder and a file name with _: rename one"
        else:  # PACS series each holding an IM0001: named by their sub-folders below one
            why = "give the folder that holds them all (names then include its sub-folders)"
        raise LocaldiscError(f"several inputs would be written as {duplicates[0]} ({shown}): {why}")
    if not found:
        raise LocaldiscError("no image files in " + ", ".join(str(p) for p in paths))
    return found


def _written_before(folder: Path) -> set[str] | None:
    """The names of the images whose outputs an earlier run wrote in ``folder``: those its
    records list (``predict.json``, ``vessels.csv``, a ``group-K``'s of
    ``shape-guided vessels --teach-all``, the ``"writes"`` of its network's ``config.json``,
    written before its first mask); ``None`` (every name) where a network of ``shape-guided
    vessels`` of before that record is there. Another program's ``config.json`` is no
    record."""
    names: set[str] = set()
    # NAME_mask's writers: not segment (NAME_A_mask, ...), nor localize (NAME.png)
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        names |= {e["name"] for e in json.loads((folder / "predict.json").read_text())["images"]}
    for table in (folder / "vessels.csv", *folder.glob("group-*/vessels.csv")):
        with contextlib.suppress(OSError, KeyError, csv.Error), table.open(newline="") as file:
            names |= {row["image"] for row in csv.DictReader(file)}
    for network in _vessels_networks(folder):
        if not isinstance(network.get("writes"), list):
            return None
        names |= set(network["writes"])
    return names


#: What the error of an unreadable image adds where the command has other images to go on with.
SKIP_BAD_HINT = "--skip-bad skips unreadable images"

_Read = TypeVar("_Read")


class SkippedImages:
    """The unreadable images among a command's inputs (``--skip-bad``).

    With ``enabled``, an image the reader refuses (:class:`~localdisc.errors.ImageReadError`
    naming it: a DICOM structured report or RT structure set, a truncated file) is recorded
    with the reader's reason and named in ``log``, and the command goes on without it; without,
    the reader's error is raised, ending with :data:`SKIP_BAD_HINT` where the command has other
    images (``count``) it could go on with. Only an image's own read counts: an unreadable or
    ill-sized mask, or an image too small, still stops the command; so does a
    :class:`~localdisc.errors.ReaderSetupError` (pydicom or a DICOM decoder not installed, a
    bad pixel limit), this installation's and not the file's: skipped, it would drop every
    file of its kind, when its message says what to install to read them all.
    """

    def __init__(
        self, enabled: bool = False, log: Callable[[str], None] = print, count: int = 2
    ) -> None:
        self.enabled = enabled
        self.log = log
        self.count = count
        #: ``(name, file, reason)`` of each image skipped, in the order met.
        self.skipped: list[tuple[str, Path, str]] = []

    def unreadable(self, name: str, path: Path, error: ImageReadError) -> None:
        """Record ``error``, raised reading image ``path`` (named ``name``), or raise it
        (:meth:`hinted`: not ``enabled``, an error of another file, or a
        :class:`~localdisc.errors.ReaderSetupError`)."""
        if not self.enabled or not self._skippable(path, error):
            raise self.hinted(path, error)
        self.skipped.append((name, Path(path), error.reason))
        self.log(f"skipped {path}: {error.reason}")

    def hinted(self, path: Path, error: ImageReadError) -> ImageReadError:
        """What to raise for ``error``, raised reading image ``path``: with
        :data:`SKIP_BAD_HINT` where skipping it would let the command go on (not ``enabled``,
        other images, and the image's own error, not its mask's nor the installation's); else
        ``error`` itself."""
        if self.enabled or self.count < 2 or not self._skippable(path, error):
            return error
        hinted = ImageReadError(error.path, f"{error.reason}; {SKIP_BAD_HINT}")
        hinted.__cause__ = error
        return hinted

    @staticmethod
    def _skippable(path: Path, error: ImageReadError) -> bool:
        """Whether ``error``, raised reading image ``path``, is the image's own: of that file,
        and not a :class:`~localdisc.errors.ReaderSetupError`."""
        return Path(error.path) == Path(path) and not isinstance(error, ReaderSetupError)

    @property
    def names(self) -> set[str]:
        """The names of the images skipped."""
        return {name for name, _, _ in self.skipped}

    def read(self, name: str, path: Path) -> tuple[np.ndarray, ImageMeta] | None:
        """:func:`~localdisc.data.io.read_image` of ``path``, or ``None`` where it is skipped."""
        try:
            return read_image(path)
        except ImageReadError as exc:
            self.unreadable(name, path, exc)
            return None

    def read_replacing(
        self,
        name: str,
        path: Path,
        out_dir: Path,
        files: Sequence[tuple[str, Path]],
        reader: Callable[[Path], _Read],
    ) -> _Read | None:
        """``reader(path)`` (image ``path``, named ``name``, among ``files``), read before
        anything is written for it into ``out_dir``; ``None`` where it is skipped
        (:meth:`unreadable`), the outputs an earlier run wrote of it there then removed
        (:func:`remove_outputs`): they are not this run's."""
        try:
            return reader(path)
        except ImageReadError as exc:
            self.unreadable(name, path, exc)
            remove_outputs(out_dir, [name], [f for f in files if f[0] != name])
            return None

    def kept(self, files: Sequence[tuple[str, Path]]) -> list[tuple[str, Path]]:
        """``files`` (:func:`collect_images`) less those skipped; refused when none is left."""
        skipped = self.names
        kept = [(name, path) for name, path in files if name not in skipped]
        if not kept and self.skipped:
            _, path, reason = self.skipped[0]
            raise LocaldiscError(f"every image was skipped as unreadable ({len(self.skipped)}; "
                                 f"first: {path}: {reason})")  # fmt: skip
        return kept

    def record(self) -> list[dict[str, str]]:
        """What a command's record lists under ``skipped``: each image's name, file and reason."""
        return [{"name": name, "path": str(path.resolve()), "reason": reason}
                for name, path, reason in self.skipped]  # fmt: skip

    def summary(self, where: str | Path) -> str:
        """:func:`skipped_clause` of the images skipped, listed in ``where``."""
        return skipped_clause(len(self.skipped), where)


def note_headers(files: Sequence[tuple[str, Path]], log: Callable[[str], None]) -> None:
    """Log a note where an image of ``files`` carries an EXIF orientation (its masks are written
    in its pixels as stored, turned against the image in a viewer that applies the tag:
    :func:`~localdisc.data.io.orientation_note`) or holds several frames, the first read
    (:func:`~localdisc.data.io.frames_note`)."""
    for note in header_notes(header_metas(path for _, path in files), "masks"):
        log(f"note: {note}")


def skipped_clause(count: int, where: str | Path) -> str:
    """What a command's last line adds where it skipped ``count`` unreadable images (listed in
    ``where``, its record); empty where it skipped none."""
    if not count:
        return ""
    return f"; {count} unreadable image(s) skipped, listed under skipped in {where}"


class Written(list[Path]):
    """The masks a command wrote, and what its last words say of them, so that they are not
    read back from its files: ``skipped``, its record's (:meth:`SkippedImages.record`), and
    ``metrics``, what :func:`write_scores` wrote (``None`` without ``--masks``)."""

    def __init__(
        self, paths: Sequence[Path], skipped: list[dict[str, str]], metrics: dict | None = None
    ) -> None:
        super().__init__(paths)
        self.skipped, self.metrics = skipped, metrics


def _below(out: Path | None, folder: Path) -> Path | None:
    """``out`` spelt from ``folder`` as the folder walk spells its sub-folders, if it is one of
    them (strictly below ``folder``); else ``None``. Resolved first: ``--out`` may be given
    relative to the working directory and ``--images`` absolute, or through a link."""
    if out is None:
        return None
    try:
        relative = out.relative_to(folder.resolve())
    except ValueError:
        return None
    return folder / relative if relative.parts else None


#: The sub-folders commands write among their outputs: an ensemble's runs, ``--teach-all``'s
#: groups, the network of unusual images.
_OUTPUT_FOLDER = re.compile(r"(run|group)-\d+|unusual")


def _without_outputs(
    found: list[tuple[str, Path]],
    folder: Path,
    suffixes: Sequence[str],
    names: set[str] | None = None,
) -> list[tuple[str, Path]]:
    """``found`` (the images of ``folder``, also the output folder) less the outputs written
    there for them (or for ``names``, where given: those an output record lists): files named
    ``NAME`` + one of ``suffixes``, in ``folder`` or in a sub-folder a command writes
    (``group-K/``, ``run-K/``, ``unusual/``), and the figures in ``figures/``, its own or such a
    sub-folder's (a rerun of ``shape-guided vessels --teach-all`` took ``group-1/figures/``'s
    for images, and taught a group more)."""
    names = {name for name, _ in found} if names is None else names

    def output(file: Path) -> bool:
        relative = file.relative_to(folder).parts
        stem = image_stem(file)
        folders = relative[:-1]  # figures/..., or group-K/figures/...
        figures = folders[:1] == ("figures",) or (
            folders[1:2] == ("figures",) and _OUTPUT_FOLDER.fullmatch(folders[0]) is not None
        )
        return figures or any(stem.endswith(s) and stem[: -len(s)] in names for s in suffixes)

    return [(name, file) for name, file in found if not output(file)]


def prob_png(prob: np.ndarray) -> np.ndarray:
    """``uint16`` probability map (probability x 65535, rounded), as a 16-bit PNG stores it.

    Scores are computed from these files (``shape-guided segment --masks``, an ensemble's mean):
    at 8 bits, every value under 0.002 read as 0, and the ties at 0 lowered the AUC (0.871
    against 0.891 of the same map in float on a DRIVE image)."""
    return np.round(np.clip(prob, 0, 1) * 65535).astype(np.uint16)


def mask_png(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """``uint8`` 0/255 mask of ``prob >= threshold``."""
    return ((prob >= threshold) * 255).astype(np.uint8)


def check_threshold(threshold: float) -> float:
    """``threshold`` as a Python ``float``, refused where it is no probability in [0, 1]
    (:func:`mask_png` takes it as is): 128, a 0-255 threshold, wrote empty masks, a negative one
    full masks, and NaN empty masks with a ``predict.json`` that is no JSON, all without a word.
    numpy's numbers (``threshold_otsu``'s float32) are taken, as ``float``, for that JSON."""
    real = isinstance(threshold, int | float | np.integer | np.floating)
    if isinstance(threshold, bool) or not real or not 0.0 <= threshold <= 1.0:  # NaN too
        raise InputError(
            f"threshold must be a probability in [0, 1], not {threshold!r}: the mask is "
            "prob >= threshold (a 0-255 threshold such as 128 marks no pixel, a negative one "
            "every pixel); give e.g. 0.5, or 128 / 255 for a 0-255 one"
        )
    return float(threshold)


def predict_images(
    model_dir: str | Path,
    images: Sequence[str | Path],
    out_dir: str | Path,
    *,
    threshold: float = 0.5,
    fov_masks: str | Path | None = None,
    masks: str | Path | None = None,
    device: str = "auto",
    progress: bool = False,
    log: Callable[[str], None] = print,
    skip_bad: bool = False,
) -> Written:
    """Segment every image (:func:`collect_images`) into ``out_dir``, at its own size.

    Writes two files per image: ``NAME_prob.png``, the probability map (:func:`prob_png`: 16 bits),
    and ``NAME_mask.png``, the mask (0/255, ``prob >= threshold``), and ``predict.json``, what
    produced them (the model folder, the threshold, the FOV and target mask folders, each
    image's file; where and when: :func:`~localdisc.eval.provenance.environment`; ``finished``:
    false until every image is written, as it is written first). Returns the masks' paths only,
    in the order of the images (:class:`Written`, with what was skipped and scored); each
    probability map lies beside its mask (``NAME_prob.png`` for ``NAME_mask.png``). An
    ``out_dir`` holding a ``localdisc shape-guided vessels`` run is refused
    (:func:`_check_not_a_run`).

    ``fov_masks``: a folder of FOV masks named as the images (:func:`fov_mask_files`); the
    probability is 0 outside them. A network of ``localdisc shape-guided vessels`` segments as
    that command did (:func:`~localdisc.tasks.vessels.predict_vessels`, which also writes
    ``vessels.csv``). ``progress`` shows a progress bar.

    ``masks``: a folder of true masks (:func:`target_mask_files`) to score the outputs against:
    ``metrics.json`` in ``out_dir`` then holds ``summary`` and ``per_image`` as ``localdisc
    finetune`` writes them (:func:`score_prediction`); images without a mask are named through
    ``log`` and listed under ``unscored``. Every mask is read and checked against its image's
    size before the model loads (:func:`true_masks`); one at 2 to 4 times it
    (SCR's 1024-pixel masks of JSRT's 512-pixel PNGs) is resized to it as ``localdisc
    finetune`` resizes SCR's (:func:`sized_mask`), said in a note.

    ``skip_bad``: an image the reader refuses (a DICOM structured report, a truncated file:
    :class:`SkippedImages`) is skipped where it is read, before anything is written for it,
    named in ``log`` and listed under ``skipped`` (name, file, reason) in ``predict.json``;
    an earlier predict's outputs of it are removed, as those of any image not segmented again.
    Without it, such an image stops the command there (the images before it are written).

    Raises:
        InputError: ``threshold`` is not in [0, 1] (:func:`check_threshold`).
        LocaldiscError: no image has a mask in ``masks``, or a mask cannot be read or its size
            is not its image's (nor 2 to 4 times it); an image cannot be read
            (without ``skip_bad``), or none can.
    """
    threshold = check_threshold(threshold)
    images = as_inputs(images)
    groups = sorted(Path(model_dir).glob("group-*/config.json"))
    if groups and not (Path(model_dir) / "config.json").is_file():
        raise LocaldiscError(f"{model_dir}: a network per group of images (`shape-guided "
                             f"vessels --teach-all`); give one as the model, e.g. "
                             f"{groups[0].parent}")  # fmt: skip
    config = read_config(model_dir)
    _check_finished(Path(model_dir), config)
    device = str(resolve_device(device))  # a misspelt device is named before any work
    env = environment(device)  # at the start: where and when these outputs were made
    files = collect_images(images, out_dir=out_dir, log=log)
    note_headers(files, log)
    skips = SkippedImages(skip_bad, log, len(files))
    scoring = masks is not None
    check_metrics(Path(out_dir), scoring)
    _check_not_a_run(Path(out_dir), "self_trained_vessels" in config)
    matched = true_masks(files, images, masks, skips, log=log) if masks is not None else None
    files = skips.kept(files)  # those whose size could not be read for their masks
    targets = None
    if matched is not None:
        targets = {name: m.mask for name, m in matched.items() if m.mask is not None}
    fovs = fov_mask_files([path for _, path in files], fov_masks) if fov_masks else None
    out_dir = Path(out_dir)
    _check_outputs_not_inputs(out_dir, files, matched, fovs)
    if fovs is not None:
        check_fov_masks(files, fovs)
    # Loaded before anything in --out is removed: damaged weights fail here and an earlier
    # predict's outputs stay.
    model = Segmenter.from_pretrained(model_dir, device=device)
    _remove_earlier_outputs(out_dir, files, scoring, log, "self_trained_vessels" in config)
    record: dict[str, Any] = {
        "model": str(Path(model_dir).expanduser().resolve()),
        "threshold": threshold,
        "fov_masks": str(Path(fov_masks).resolve()) if fov_masks else None,
        "masks": str(Path(masks).resolve()) if masks is not None else None,
        "images": [{"name": name, "image": str(path.resolve())} for name, path in files],
        "environment": env,
        "finished": False,
    }
    # Before the first output, and again at the end: a predict stopped midway has its outputs
    # listed, so that the next one into out_dir removes those it does not write again.
    atomic_write_text(out_dir / "predict.json", json.dumps(record, indent=2))
    scores: dict[str, dict[str, float]] = {}
    if "self_trained_vessels" in config:
        from localdisc.tasks.vessels import predict_vessels, score_vessel_files

        written = predict_vessels(model_dir, images, out_dir, fov_masks=fov_masks,
                                  threshold=threshold, device=device, log=log,
                                  progress=progress, model=model, files=files,
                                  skips=skips)  # fmt: skip
        if targets is not None:  # as `shape-guided vessels --masks` scored them: the same
            max_size = config["self_trained_vessels"].get("max_size", 768)  # its own
            scores = score_vessel_files(skips.kept(files), out_dir, targets,
                                        fov_masks=fov_masks, max_size=max_size,
                                        threshold=threshold)  # fmt: skip
    else:
        from localdisc.tasks.transfer import TUBULAR_TARGETS  # it imports this module

        target_name = config.get("data", {}).get("target")
        written = []
        peaks: list[tuple[str, float]] = []
        unlike: list[str] = []  # images that look of another modality than the model's
        # its training images' look: red-free photographs are grey, for a fundus model
        trained_on = (config.get("data") or {}).get("images_look", model.config.modality)
        with ProgressBar(len(files), 0, progress, "predict", unit="image") as bar:
            for i, (name, path) in enumerate(files):
                read = skips.read_replacing(name, path, out_dir, files, read_image)
                if read is None:
                    bar.update(i + 1)
                    continue
                image = read[0]
                peaks.append((name, float(image.max())))
                if image_modality(image) not in (None, trained_on):
                    unlike.append(name)
                prob_small, prob = model.predict_maps(image)
                if fovs is not None:  # the outputs; the paper's Dice takes the model's whole
                    # map at its size (prob_small), as finetune's and METHOD.md's
                    prob *= read_fov_mask(fovs[i], image.shape[:2], path)
                write_png(out_dir / f"{name}_prob.png", prob_png(prob))
                written.append(write_png(out_dir / f"{name}_mask.png", mask_png(prob, threshold)))
                if targets is not None and name in targets:
                    fov = _fov(path, fovs, i, model.config.modality, image)
                    scores[name] = score_prediction(
                        prob, sized_mask(targets[name], path, image.shape), fov,
                        threshold=threshold,
                        topology=target_name in TUBULAR_TARGETS, prob_at_size=prob_small,
                        size=model.config.size,
                    )  # fmt: skip
                bar.update(i + 1)
        note = dim_note(peaks, "image(s)", "the network saw them near black")
        if note is not None:
            log(f"note: {note}")
        if unlike:  # a fundus model on radiographs was run without a word
            looks, trained = (("grey", "colour") if trained_on == "fundus"
                              else ("colour", "grey"))  # fmt: skip
            log(f"note: {len(unlike)} of {len(peaks)} image(s) are {looks} (first: {unlike[0]}), "
                f"and the model was trained on {trained} {model.config.modality} images: its "
                "masks of them may mean little")  # fmt: skip
    files = skips.kept(files)  # refused when none was read: predict.json says unfinished
    record["images"] = [{"name": name, "image": str(path.resolve())} for name, path in files]
    record["skipped"] = skips.record()
    record["finished"] = True
    atomic_write_text(out_dir / "predict.json", json.dumps(record, indent=2))
    metrics = None
    if matched is not None:
        rows = [{"image": name, **scores[name]} for name, _ in files if name in scores]
        header = {k: record[k] for k in ("model", "masks", "threshold")}
        metrics = write_scores(out_dir, header, rows, files, matched, record["environment"], log)
    return Written(written, record["skipped"], metrics)


def _check_finished(model_dir: Path, config: dict[str, Any]) -> None:
    """Raise, saying how to finish it, where ``model_dir`` holds a fine-tuning that has not
    finished: its config.json is written first, model.safetensors at the end (it said only
    "model.safetensors: weights file not found")."""
    if "transfer" not in config or (model_dir / "model.safetensors").is_file():
        return
    from localdisc.eval.provenance import command_text

    argv = config.get("environment", {}).get("argv")
    command = f" (`{command_text(argv)}`)" if isinstance(argv, list) and argv else ""
    raise LocaldiscError(
        f"{model_dir}: an unfinished fine-tuning (no model.safetensors yet): interrupted, or "
        f"still running; run its command{command} again to finish it, then predict"
    )


def metrics_command(path: Path) -> str | None:
    """The command whose ``--masks`` scores the ``metrics.json`` at ``path`` are (they list
    ``masks_used`` and ``unscored``): its ``command`` (``shape-guided segment``), ``predict``
    where it names none (:func:`write_scores`); None for any other file (a fine-tuning's
    test results) or none."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not (isinstance(saved, dict) and "masks_used" in saved and "unscored" in saved):
        return None
    command = saved.get("command", "predict")
    return command if isinstance(command, str) else None


#: The scores a command writes with ``--masks`` in its output folder (:func:`metrics_command`).
METRICS = "metrics.json"


def check_metrics(out_dir: Path, scoring: bool, command: str = "predict") -> None:
    """Before any work: refuse to score (``scoring``: ``--masks``) into an ``out_dir`` whose
    ``metrics.json`` another command than ``command`` wrote (a fine-tuning's test results:
    ``--out`` its own model folder replaced them)."""
    path = out_dir / METRICS
    other = metrics_command(path) if scoring and path.is_file() else command
    if other != command:
        whose = f"`{other}`'s scores" if other else "a fine-tuning's test results?"
        raise LocaldiscError(
            f"{out_dir}: holds metrics.json, not one `{command}` wrote ({whose}), which --masks "
            "would replace; choose another --out (nothing was written)"
        )


def remove_metrics(out_dir: Path, command: str, why: str, log: Callable[[str], None]) -> None:
    """Remove the ``metrics.json`` in ``out_dir`` that an earlier call of ``command`` wrote
    (:func:`metrics_command`; another command's is left alone): scores of outputs this call
    replaces. Logged as ``removed PATH: why``."""
    path = out_dir / METRICS
    if path.is_file() and metrics_command(path) == command:
        path.unlink()
        log(f"removed {path}: {why}")


def _vessels_networks(folder: Path) -> list[dict[str, Any]]:
    """The ``config.json`` of each ``localdisc shape-guided vessels`` network in ``folder``:
    its own, or those of its groups (``--teach-all``: ``group-K/``)."""
    paths = (folder / "config.json", *sorted(folder.glob("group-*/config.json")))
    return list(filter(None, map(vessels_network, paths)))


def _check_not_a_run(out_dir: Path, vessels_model: bool) -> None:
    """Before any work: refuse an ``out_dir`` where this predict would write over another
    command's outputs. A ``shape-guided vessels`` run's folder holds masks named as predict's
    and its ``vessels.csv`` and ``figures/overlay.png`` (what it was taught on, which
    ``vessels_model``, a network of that command, writes again); a fine-tuning's holds its
    ``figures/overlay.png``. (A fine-tuned model may predict into its own folder: its
    predictions lie in ``predictions/``, and :func:`check_metrics` keeps its metrics.)"""
    if _vessels_networks(out_dir):
        raise LocaldiscError(
            f"{out_dir}: holds a `shape-guided vessels` run, whose masks, vessels.csv and "
            "figures/overlay.png this predict would write over or mix with; choose another "
            "--out (nothing was written)"
        )
    if vessels_model and (out_dir / "config.json").is_file():
        raise LocaldiscError(
            f"{out_dir}: holds the run of another command (config.json), whose "
            "figures/overlay.png this network's predict would replace; choose another --out "
            "(nothing was written)"
        )


def _remove_earlier_outputs(
    out_dir: Path,
    files: Sequence[tuple[str, Path]],
    scoring: bool,
    log: Callable[[str], None],
    vessels_model: bool = False,
) -> None:
    """Remove what an earlier predict wrote in ``out_dir`` that would stay beside this run's
    outputs, mixing two runs: without ``scoring`` its ``metrics.json`` (scores of the outputs
    this run replaces), the ``NAME_prob.png``/``NAME_mask.png`` its ``predict.json`` lists
    and this run does not write again, and, unless this model is a ``shape-guided vessels``
    network too (``vessels_model``: it writes them again), the ``vessels.csv`` and
    ``figures/overlay.png`` such a network's predict wrote. Only those files: names that are not
    a plain file name, and this run's own images, are left alone. Called once the model is
    loaded and the inputs are found, so that a run that fails at those removes nothing."""
    if not scoring:
        remove_metrics(out_dir, "predict",
                       "an earlier predict's scores, not of the outputs this one writes",
                       log)  # fmt: skip
    try:
        record = json.loads((out_dir / "predict.json").read_text())
        listed = [entry["name"] for entry in record["images"]]
    except (OSError, ValueError, TypeError, KeyError):
        return  # no predict.json, or not one predict wrote
    removed = remove_outputs(out_dir, listed, files)
    if removed:
        log(f"removed {removed} file(s) of an earlier predict from {out_dir}: outputs of "
            "images this one does not segment")  # fmt: skip
    if not vessels_model and (out_dir / "vessels.csv").is_file():
        for stale in (out_dir / "vessels.csv", out_dir / "figures" / "overlay.png"):
            if stale.is_file():
                stale.unlink()
                log(f"removed {stale}: an earlier predict's with a vessels network, not of "
                    "the masks this one writes")  # fmt: skip


def remove_outputs(
    out_dir: Path,
    listed: Sequence[object],
    files: Sequence[tuple[str, Path]],
    suffixes: Sequence[str] = ("_prob", "_mask"),
    *,
    every: bool = False,
) -> int:
    """Remove the ``NAME{suffix}.png`` (``NAME_prob.png`` and ``NAME_mask.png``) in ``out_dir``
    of each name of ``listed`` (an earlier run's images) that this run's ``files``
    (:func:`collect_images`) do not write again, so that two runs' outputs do not mix; with
    ``every``, those of this run's images too (a folder it does not write to). Names that are
    not a plain file name, and this run's input files, are left alone. Returns how many files
    were removed."""
    keep = set() if every else {name for name, _ in files}
    inputs = {path.resolve() for _, path in files}
    removed = 0
    for name in listed:
        if not isinstance(name, str) or name in keep or Path(name).name != name:
            continue
        for suffix in suffixes:
            path = out_dir / f"{name}{suffix}.png"
            if path.is_file() and path.resolve() not in inputs:
                path.unlink()
                removed += 1
    return removed


def score_prediction(
    prob: np.ndarray,
    target: np.ndarray,
    fov: np.ndarray,
    *,
    threshold: float = 0.5,
    topology: bool = False,
    prob_at_size: np.ndarray | None = None,
    size: int | None = None,
    binary: np.ndarray | None = None,
) -> dict[str, float]:
    """The metrics of one prediction, as ``localdisc finetune`` scores its test images
    (:func:`~localdisc.tasks.transfer.image_metrics` at threshold 0.5 calls it):
    :func:`~localdisc.eval.metrics.segmentation_metrics` at the image's own size inside
    ``fov``, and ``dice``, the paper's, at the model's ``size`` (``prob_at_size`` when the
    model predicted at that size, else the mask resized there); without ``size``, ``dice`` is
    at the image's size.

    ``binary``: the mask written, when it is not ``prob >= threshold`` (specks dropped); the
    binary metrics are its, ``auc`` is ``prob``'s.
    """
    from localdisc.eval.metrics import auc_roc, dice_score, paper_dice, segmentation_metrics

    if binary is None:
        metrics = segmentation_metrics(prob, target, fov, threshold=threshold, topology=topology)
    else:
        metrics = segmentation_metrics(binary.astype(np.float32), target, fov, topology=topology)
        metrics["auc"] = auc_roc(prob, target, fov)
    pred = prob >= threshold if binary is None else binary
    if prob_at_size is not None and size is not None:
        metrics["dice"] = dice_score(prob_at_size, resize_mask(target, size), threshold)
    elif size is not None:
        metrics["dice"] = paper_dice(pred, target, size)
    return {k: float(v) for k, v in metrics.items()}


def image_mask(path: Path, image: Path, resized: list[str] | None = None) -> np.ndarray:
    """The true mask at ``path`` as a bool array at its image's size (read from its header
    where the format allows: :func:`~localdisc.data.io.read_image_meta`), as
    :func:`sized_mask` makes it."""
    meta = read_image_meta(image)
    return sized_mask(path, image, (meta.height, meta.width), resized)


#: The scales at which a mask is taken for its image's, drawn before the image was shrunk.
MASK_SCALES = (2, 3, 4)


def whole_multiple(mask: tuple[int, ...], image: tuple[int, ...]) -> bool:
    """Whether a mask of shape ``mask`` (height, width, ...) is ``image``'s drawn at a higher
    resolution: 2 to 4 times its size (:data:`MASK_SCALES`), the same on both axes, as SCR's
    1024-pixel masks are of the 512-pixel PNGs JSRT is shared as. Not smaller: a mask of
    another crop or a thumbnail (a 1 x 1 placeholder fits every square image) is refused."""
    (mh, mw), (h, w) = mask[:2], image[:2]
    return any(mh == k * h and mw == k * w for k in MASK_SCALES)


def sized_mask(
    path: Path, image: Path, shape: tuple[int, ...], resized: list[str] | None = None
) -> np.ndarray:
    """The true mask at ``path`` as a bool array at the ``shape`` (height, width, ...) of its
    ``image``, already decoded (not read again). A mask at 2 to 4 times its image's size
    (:func:`whole_multiple`) is resized to it as ``localdisc finetune`` resizes
    SCR's (:func:`~localdisc.data.preprocess.resize_mask`, nearest neighbour), so that its
    scores are a fine-tuning's, and named in ``resized`` (``"FILE, WxH for WxH"``) where given;
    any other size is refused: a mask of another image or another crop."""
    mask = np.asarray(read_mask(path), dtype=bool)
    height, width = shape[:2]
    if mask.shape == (height, width):
        return mask
    size = f"{mask.shape[1]}x{mask.shape[0]}"
    if not whole_multiple(mask.shape, (height, width)):
        raise LocaldiscError(f"{path}: mask is {size}, its image {image} is {width}x{height} "
                             "(nor 2 to 4 times it, to be resized)")  # fmt: skip
    if resized is not None:
        resized.append(f"{path}, {size} for {width}x{height}")
    return resize_mask(mask, (height, width))


def true_masks(
    files: Sequence[tuple[str, Path]],
    images: Sequence[str | Path],
    masks: str | Path,
    skips: SkippedImages | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, MaskMatch]:
    """Each of ``files``' true mask in ``masks`` or why it has none (:func:`target_mask_files`),
    every mask found read and checked against its image's size now (:func:`image_mask`): a
    wrong one is named, with both sizes, before any work, not after the outputs are written
    (or hours of refinement). Each mask is read again when scored: masks are small to decode,
    and holding them all could take more memory than the images.

    ``skips``: what becomes of an image whose size cannot be read (:class:`SkippedImages`;
    default: its error is raised, saying ``--skip-bad`` exists). ``shapes``: each name's image
    shape, where the images are already decoded (:func:`sized_mask`: not opened again). Masks
    at 2 to 4 times their image's size, resized to it (:func:`sized_mask`),
    are said in one note to ``log`` (default: ``skips``' log).

    Raises:
        LocaldiscError: as :func:`target_mask_files`, or a mask cannot be read (naming it) or
            is not its image's size (nor 2 to 4 times it).
    """
    skips = skips or SkippedImages(count=len(files))
    matched = target_mask_files(files, images, masks)
    resized: list[str] = []
    for name, match in matched.items():
        if match.mask is not None:
            try:
                if shapes is not None:
                    sized_mask(match.mask, match.image, shapes[name], resized)
                else:
                    image_mask(match.mask, match.image, resized)
            except ImageReadError as exc:  # the image's own (a mask's is raised on)
                skips.unreadable(name, match.image, exc)
    if resized:
        (log or skips.log)(
            f"note: {len(resized)} mask(s) are 2 to 4 times their image's size (first: "
            f"{resized[0]}): resized to it by nearest neighbour, as localdisc finetune resizes "
            "SCR's masks of JSRT"
        )
    return matched


def _fov(
    path: Path,
    fovs: Sequence[Path] | None,
    index: int,
    modality: str,
    image: np.ndarray | None = None,
) -> np.ndarray:
    """The FOV an image is scored in: its FOV mask, else found in the image as the ``folder``
    data set finds it (so that scores match ``localdisc finetune``'s)."""
    if image is None:
        image = read_image(path)[0]
    if fovs is not None:
        return read_fov_mask(fovs[index], image.shape[:2], path)
    return fov_from_image(to_modality_channels(image, modality), modality=modality)


def write_scores(
    out_dir: Path,
    header: dict[str, Any],
    rows: list[dict[str, Any]] | dict[str, list[dict[str, Any]]],
    files: Sequence[tuple[str, Path]],
    matched: dict[str, MaskMatch],
    env: dict[str, Any] | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Write ``out_dir/metrics.json``, every command's ``--masks`` scores in one form: ``header``
    (its ``masks``: the true masks' folder), ``summary`` (as ``localdisc finetune``'s) of
    ``per_image`` (``rows``, ``{"image": name, **scores}``; by output where a command scores
    several), :func:`masks_used` and ``environment``. Returns it (NaN where the file has null)."""
    from localdisc.eval.metrics import summarize
    from localdisc.eval.report import jsonable

    def summary(found: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
        return summarize([{k: v for k, v in r.items() if k != "image"} for r in found])

    metrics = {
        **header,
        "summary": {k: summary(v) for k, v in rows.items()} if isinstance(rows, dict)
        else summary(rows),
        "per_image": rows,
        **masks_used(files, matched, header["masks"], log),
        "environment": env,
    }  # fmt: skip
    atomic_write_text(out_dir / METRICS, json.dumps(jsonable(metrics), indent=2))
    return metrics


def masks_used(
    files: Sequence[tuple[str, Path]],
    matched: dict[str, MaskMatch],
    masks: str | Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """What a ``metrics.json`` says of the true masks of ``files`` (:func:`target_mask_files`'
    ``matched`` in ``masks``): ``masks_used``, each scored image's mask by name, and
    ``unscored``, the images without one (named in ``log``, the first one's reason too)."""
    missing = [matched[name] for name, _ in files if matched[name].mask is None]
    unscored = [str(match.image) for match in missing]
    if missing:
        log(f"{len(unscored)} image(s) without a mask in {masks}, not scored: "
            + ", ".join(unscored) + f" ({missing[0].image.name}: {missing[0].reason})")  # fmt: skip
    return {
        "masks_used": {name: str(Path(mask).resolve()) for name, _ in files
                       if (mask := matched[name].mask) is not None},
        "unscored": unscored,
    }  # fmt: skip


def target_mask_files(
    files: Sequence[tuple[str, Path]], images: Sequence[str | Path], folder: str | Path
) -> dict[str, MaskMatch]:
    """Each image of ``files`` (:func:`collect_images`) by name, with its true mask in ``folder``
    or why it has none, matched as the ``folder`` data set matches them
    (:func:`~localdisc.data.datasets.match_masks`: the same relative path, else a unique stem,
    else the stem plus a mask ending such as ``case01_mask.png``). An image's relative path is
    the one below the folder of ``images`` (``--images``) it was found in; a file given by
    itself has its stem alone. Images and masks may share a folder.

    Raises:
        LocaldiscError: ``folder`` is missing, or no image has a mask there.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise LocaldiscError(f"{folder}: no such folder of masks")
    roots = [Path(p).expanduser() for p in images if Path(p).expanduser().is_dir()]
    matches = match_masks([path for _, path in files], folder, image_dirs=roots)
    if all(match.mask is None for match in matches):
        first = matches[0]  # its reason says what the folder holds and how masks are named
        raise LocaldiscError(f"{folder}: no image has a mask there; {first.image}: {first.reason}")
    # --masks DRIVE/test matched mask/01_test_mask.gif, the field of view, beside 1st_manual/.
    # Every match: --masks DRIVE matches test/'s labels by DRIVE's names, training/'s FOVs.
    for match in matches:
        if match.mask is not None:
            refuse_official_fov(match.mask, "--masks")
    return {name: match for (name, _), match in zip(files, matches, strict=True)}


# What may follow an image's stem in its FOV mask's name: DRIVE's and HRF's ``01_test_mask.gif``.
FOV_MASK_ENDINGS = ("", "_mask", "-mask", "_fov", "-fov")


def fov_mask_files(images: Sequence[Path], folder: str | Path) -> list[Path]:
    """Each image's FOV mask in ``folder``: the image file there whose stem is the image's, or
    the image's followed by one of :data:`FOV_MASK_ENDINGS` (letter case and Unicode form aside:
    :func:`~localdisc.data.datasets.name_key`; the image itself never, so images and masks may
    share a folder).

    Raises:
        LocaldiscError: ``folder`` is missing, or an image has no mask there or several.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise LocaldiscError(f"{folder}: no such folder of FOV masks")
    by_stem: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(".") and is_image_file(path):
            by_stem.setdefault(name_key(image_stem(path)), []).append(path)
    found = []
    for image in images:
        stem = image_stem(image)
        matches = [m for end in FOV_MASK_ENDINGS for m in by_stem.get(name_key(stem + end), [])]
        matches = [m for m in matches if m.resolve() != Path(image).resolve()]
        if len(matches) != 1:
            problem = "no FOV mask" if not matches else f"{len(matches)} FOV masks"
            wanted = " or ".join(f"{stem}{end}.*" for end in FOV_MASK_ENDINGS)
            raise LocaldiscError(f"{image}: {problem} in {folder} (looked for {wanted})")
        found.append(matches[0])
    return found


def check_fov_masks(files: Sequence[tuple[str, Path]], fovs: Sequence[Path]) -> None:
    """Before any work, each FOV mask of ``fovs`` (:func:`fov_mask_files`) against its image's
    size from its header (:func:`read_fov_mask`): a wrong one stopped the run at its image,
    after the earlier outputs were removed or rewritten. An image whose header cannot be read
    is left to its own read (skipped or refused there)."""
    for (_, image), fov in zip(files, fovs, strict=True):
        try:
            meta = read_image_meta(image)
        except ImageReadError:
            continue
        read_fov_mask(fov, (meta.height, meta.width), image)


def _check_outputs_not_inputs(
    out_dir: Path,
    files: Sequence[tuple[str, Path]],
    matched: Mapping[str, MaskMatch] | None,
    fovs: Sequence[Path] | None,
) -> None:
    """Before any work: refuse an ``out_dir`` where an output would be written over an input
    file (the images' own folder: a true mask ``NAME_mask.png`` was replaced by the prediction,
    then scored against itself, Dice 1; an FOV mask replaced, the next run's FOV)."""
    inputs = {path.resolve(): "image" for _, path in files}
    for match in (matched or {}).values():
        if match.mask is not None:
            inputs[match.mask.resolve()] = "true mask"
    inputs.update((fov.resolve(), "FOV mask") for fov in fovs or ())
    for name, _ in files:
        for suffix in ("_prob", "_mask"):
            path = out_dir / f"{name}{suffix}.png"
            kind = inputs.get(path.resolve())
            if kind is not None:
                raise LocaldiscError(
                    f"{out_dir}: this predict's {path.name} would overwrite the {kind} {path}, "
                    "an input; choose another --out (nothing was written)"
                )


def read_fov_mask(path: Path, shape: tuple[int, ...], image: Path) -> np.ndarray:
    """The FOV mask at ``path``, checked against the size (``shape``) of its ``image``.

    Raises:
        LocaldiscError: the mask is of another size, or empty.
    """
    fov = read_mask(path)
    if fov.shape != tuple(shape):
        size = "x".join(map(str, fov.shape[::-1]))
        raise LocaldiscError(f"{path}: FOV mask is {size}, its image {image} is "
                             f"{shape[1]}x{shape[0]}")  # fmt: skip
    if not fov.any():
        raise LocaldiscError(f"{path}: the FOV mask is empty")
    return fov
