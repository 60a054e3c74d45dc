"""Transfer to segmentation with few labels: the paper's protocol end to end (METHOD.md 4).

:func:`run_transfer` picks the labelled images (the first N of the paper's training split after a
seeded shuffle), holds 20% of them out for validation, fine-tunes a :class:`Segmenter` from an LD
run's encoder or from scratch, and evaluates it on the test split two ways:

- the paper's: per-image Dice at 0.5 on the whole image at the training size (``dice``);
- the field's: F1, AUC-ROC, accuracy, sensitivity, specificity inside the field of view at the
  original resolution, plus clDice for vessels.

The fine-tuned model is also evaluated with its batch-norm statistics recomputed over every image
of the training split, labelled or not (no label is used; "precise BN" as in
:mod:`localdisc.engine.batch_norm`): with 2 labelled images, the statistics of training are those
of 2 images. ``recalibrate_bn`` chooses which of the two models is saved; ``metrics.json`` holds
both (``recalibrated`` or ``as_trained`` for the other one).

A set without a test split (a ``folder``) is split here: :func:`held_out_test` keeps
``test_fraction`` (20%) of its labelled images (at least one) for testing, chosen by file name
alone, so that every ``labels``, seed and init is scored on the same test images; the rest are its
training split (labels drawn from them, batch norm recalibrated over them). Its images without a
mask (a few labelled, as is usual) are unlabelled: never tested or trained on, and not in the
test split's draw, but in the batch-norm recalibration, which uses no label; ``metrics.json``
lists them (``unlabelled``) and the log says how many. ``test_fraction`` 0
holds out none: the model is trained (and validated) on every labelled image, to segment new ones
with ``localdisc predict``, and ``metrics.json`` says there was no test split (``test_images``
0; no ``summary``, ``per_image`` or other test evaluation; the validation Dice is in ``phases``);
no ``predictions/`` or ``figures/overlay.png`` either, both being of test images.

Every file the run reads only after the training (the test images and masks, the batch-norm
recalibration's images) is read once before it, so that an unreadable one stops the run at the
start, naming it (``skip_bad`` reads every image first anyway). The labelled images' headers
are looked at too: a warning names those that carry an EXIF orientation, which is not applied,
so that a mask drawn on the image as a viewer shows it is paired with turned pixels.

Its output folder holds ``model.safetensors`` + ``config.json`` (loadable by ``localdisc
predict``), ``metrics.json``, ``history.csv``, ``predictions/`` and ``figures/overlay.png``. The
test images are segmented in float32 exactly as ``localdisc predict`` segments them (training and
validation may run in bf16 autocast), so ``metrics.json`` describes what that command outputs.
``config.json`` is written before the training, and ``checkpoint/`` during it (see
:mod:`localdisc.engine.finetune`; deleted once ``metrics.json`` is written). A folder that holds
another run's outputs is refused (nothing is deleted), except a run with the same settings: running
the same command again continues an interrupted one (``config.json`` without ``metrics.json``)
from its checkpoint, or redoes it where it has none, replacing its outputs; a finished one is left
as it is, its ``metrics.json`` returned (a job requeued after it finished has nothing to do).
The init counts as a setting by its weights too: ``config.json`` (and ``metrics.json``) record
the SHA-256 of the weight file loaded (``init_weights``), and a run of an init trained again
under the same path is refused, finished or interrupted (one recorded before this has none, and
is taken as it is).
"""

from __future__ import annotations

import copy
import csv
import functools
import hashlib
import io
import itertools
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import torch

from localdisc.data.datasets import (
    FOLDER_MASK_DIRS,
    FolderDataset,
    Sample,
    SegmentationDataset,
    absolute_data_spec,
    absolute_path,
    dataset_class,
    load_data_spec,
    parse_data_spec,
    refuse_official_fov,
    written_below,
)
from localdisc.data.io import (
    dim_note,
    frames_note,
    header_metas,
    orientation_note,
    write_png,
)
from localdisc.data.preprocess import resize_image, resize_mask
from localdisc.engine.batch_norm import recalibrate_batch_norm
from localdisc.engine.checkpoint import RunFolderLock, atomic_write_text, sha256
from localdisc.engine.finetune import (
    RUNTIME_FIELDS,
    FinetuneConfig,
    as_bool,
    checkpoint_position,
    finetune,
    training_plan,
)
from localdisc.engine.monitor import ProgressBar
from localdisc.engine.rng import keeps_global_rng
from localdisc.errors import DatasetError, ImageReadError, LocaldiscError
from localdisc.eval.metrics import summarize
from localdisc.eval.provenance import environment, resumed
from localdisc.eval.report import jsonable
from localdisc.models.ld import LDConfig, run_method, split_weights_path
from localdisc.models.segmenter import Segmenter
from localdisc.tasks.predict import SkippedImages, mask_png, prob_png, score_prediction

#: Targets evaluated with topology (clDice).
TUBULAR_TARGETS = frozenset({"vessels"})
#: Fewer labelled images than this: validate on the training images (as the paper's 2-label runs).
MIN_LABELS_FOR_HOLDOUT = 5
#: The fraction of a split-less set's (a folder's) labelled images held out for testing, by
#: default (``TransferConfig.test_fraction``, ``--test-fraction``).
FOLDER_TEST_FRACTION = 0.2
#: At most this many of a folder's unlabelled images join the batch-norm recalibration.
UNLABELLED_BN = 100
#: The fine-tuning's checkpoint folder in an output folder, while the run is unfinished.
CHECKPOINT = "checkpoint"
#: What :func:`run_transfer` writes in its output folder (``config.json`` first, ``metrics.json``
#: last: a folder with the first and without the last holds an interrupted run).
OUTPUTS = (
    "config.json", CHECKPOINT, "model.safetensors", "history.csv", "predictions",
    "figures/overlay.png", "metrics.json",
)  # fmt: skip
#: The U-Net pools four times: sides must divide by 16. At 16 px the bottleneck is 1 x 1, and
#: batch norm cannot train on a batch of one such image, hence at least 32.
SIZE_MULTIPLE, MIN_SIZE = 16, 32


def check_size(size: int) -> None:
    """Raise unless ``size`` is a side the segmenter trains at (a multiple of 16, >= 32).

    Shared by ``finetune``, ``benchmark transfer`` and the Python API, so that a bad size fails
    at once with this message, not deep in the network (after a pre-training, even).
    """
    # numbers.Integral: numpy's too (a size computed with numpy was refused as no size)
    if not isinstance(size, Integral) or size < MIN_SIZE or size % SIZE_MULTIPLE:
        raise LocaldiscError(
            f"--size must be a multiple of {SIZE_MULTIPLE}, at least {MIN_SIZE}, not {size!r}"
        )


@dataclass
class TransferConfig:
    """One fine-tuning run: data, target, initialisation, label budget, size and schedule."""

    dataset: str  # NAME:ROOT or a folder (a Path is taken too)
    target: str | None = None  # None: the data set's default target
    init: str = "random"  # "random", an LD run directory or one of its weight files
    labels: str = "all"  # N images, a fraction in (0, 1), or "all"
    size: int = 512
    # Of the labelled images (5 or more), the fraction that validates, in [0, 1); 0 holds out
    # none: validated on the training images, as fewer than 5 labelled images always are.
    val_fraction: float = 0.2
    # A set without a test split (a folder): the fraction of its images held out for testing, in
    # [0, 1); 0 trains on all of them and tests none. A set with its own split takes only this.
    test_fraction: float = FOLDER_TEST_FRACTION
    max_test: int | None = None  # evaluate on the first N >= 1 test images only (quick runs)
    predictions: bool = True  # write probability maps and masks of the test images
    # Save the model with batch-norm statistics recomputed over the training split's images (not
    # the paper's protocol, which keeps those of training; both are evaluated either way).
    recalibrate_bn: bool = False
    # Leave out each image that cannot be read (a truncated file, a DICOM without pixel data),
    # every image read once first, before the split is drawn; listed under "skipped" in
    # metrics.json. Without, the first one stops the run. Not compared on a rerun (protocol).
    skip_bad: bool = False
    # A folder's images are of this modality, "fundus" or "xray" (None: guessed from them, grey
    # ones taken for X-rays; red-free fundus photographs are grey). Records without it guessed.
    modality: str | None = None
    train: FinetuneConfig = field(default_factory=FinetuneConfig)

    def __post_init__(self) -> None:
        # Paths as str: the config is saved as JSON in config.json, after the training, where a
        # Path failed ("not JSON serializable") and left the weights without their config. And
        # absolute, so that config.json names the data and init from any working directory.
        self.dataset = absolute_data_spec(str(self.dataset))
        self.init = absolute_init(str(self.init))
        check_size(self.size)
        check_test_fraction(self.test_fraction)
        check_val_fraction(self.val_fraction)
        check_max_test(self.max_test)
        # numpy's numbers as Python's: config.json is JSON
        self.size, self.test_fraction = int(self.size), float(self.test_fraction)
        self.val_fraction = float(self.val_fraction)
        for name in ("predictions", "recalibrate_bn", "skip_bad"):
            setattr(self, name, as_bool(getattr(self, name), name))
        self.max_test = None if self.max_test is None else int(self.max_test)
        if self.modality not in (None, "fundus", "xray"):
            raise LocaldiscError(f"--modality must be fundus or xray, not {self.modality!r}")


def check_test_fraction(fraction: object) -> None:
    """Raise unless ``fraction`` is a fraction of images to hold out for testing: in [0, 1)."""
    if isinstance(fraction, bool) or not isinstance(fraction, Real) or not 0 <= fraction < 1:
        raise LocaldiscError(
            f"--test-fraction must be in [0, 1) (0: no test split, every labelled image for "
            f"training), not {fraction!r}"
        )


def check_val_fraction(fraction: object) -> None:
    """Raise unless ``fraction`` is a fraction of the labelled images to validate on: in
    [0, 1), 0 holding out none (validated on the training images). -0.5 and 0 gave one
    validation image without a word, 1 and above none left to train on, NaN a bare
    ``ValueError``."""
    # numbers.Real: numpy's too (a fraction computed with numpy was refused as no number)
    if isinstance(fraction, bool) or not isinstance(fraction, Real) or not 0 <= fraction < 1:
        raise LocaldiscError(
            f"val_fraction must be in [0, 1) (0: validated on the training images, none held "
            f"out), not {fraction!r}"
        )


def check_max_test(max_test: object) -> None:
    """Raise unless ``max_test`` is ``None`` (every test image) or a count of at least 1: -1
    dropped the last test image (a slice), and 0 tested none, saying "--test-fraction 0"."""
    if max_test is not None and (
        isinstance(max_test, bool) or not isinstance(max_test, Integral) or max_test < 1
    ):
        raise LocaldiscError(
            f"max_test (the test images evaluated) must be at least 1, or None for every one, "
            f"not {max_test!r}"
        )


def absolute_init(init: str) -> str:
    """``random``, or the LD run (or weight file) ``init`` as an absolute path where it exists."""
    return init if init == "random" else absolute_path(init)


def protocol(transfer: dict[str, Any]) -> dict[str, Any]:
    """What defines a run's result, from a ``config.json``'s ``transfer`` section (or
    :func:`dataclasses.asdict` of a :class:`TransferConfig`): not where or how visibly it ran
    (``device``, ``progress``, ``checkpoint_seconds``: finetune.RUNTIME_FIELDS, absent from older
    records), and paths made absolute as :class:`TransferConfig` makes them,
    so a record written with relative paths (before they were saved absolute) still compares
    equal from the working directory it ran in. A record without ``test_fraction`` (written
    before it was a setting) held out :data:`FOLDER_TEST_FRACTION`. With ``init`` random,
    ``train.frozen_epochs`` is left out: there is no encoder to freeze (one phase of ``epochs``).
    ``skip_bad`` is left out too: where every image reads it changes nothing, and a run without
    it cannot finish past an unreadable one; an interrupted run's checkpoint is continued only
    on the same training and validation images (it holds their hash: engine.finetune), and a
    finished run's ``metrics.json`` lists what it skipped. So a run written before the setting
    existed, or with the other value, is reused as it is."""
    train = {k: v for k, v in transfer.get("train", {}).items() if k not in RUNTIME_FIELDS}
    out = {"test_fraction": FOLDER_TEST_FRACTION, **transfer, "train": train}
    out.pop("skip_bad", None)
    if isinstance(out.get("dataset"), str):
        out["dataset"] = absolute_data_spec(out["dataset"])
    if isinstance(out.get("init"), str):
        out["init"] = absolute_init(out["init"])
    if out.get("init") == "random":
        train.pop("frozen_epochs", None)
    return out


def fraction_count(fraction: str | float, n: int) -> int:
    """``fraction`` of ``n`` images, at least 1, halves rounded up, for every fraction of a
    set's images (``--labels F``, ``--test-fraction``, ``val_fraction``): one fraction of one
    folder is one count (round() sent halves to the even count, and the test and validation
    images were counted so: 0.1 of 25 was 3 labelled images but 2 test images). The fraction as
    typed (a float by its shortest decimal form): 0.29 of 50 is 14.5 exactly, 14.499... in
    binary."""
    try:
        exact = Decimal(str(fraction))
    except InvalidOperation:  # a Real without a decimal form (Fraction: "1/10")
        exact = Decimal(repr(float(fraction)))
    return max(1, int((exact * n).to_integral_value(ROUND_HALF_UP)))


def labelled_count(labels: str | int | float, available: int) -> int:
    """Resolve ``labels`` (``"all"``, a count ``N`` or a fraction in (0, 1)) to a count."""
    text = str(labels).strip().lower()
    try:
        if text == "all":
            n = available
        elif text.isdigit():
            n = int(text)
        else:
            fraction = float(text)
            if not 0 < fraction < 1:
                raise ValueError
            n = fraction_count(text, available)
    except ValueError:
        raise LocaldiscError(
            f"--labels must be a count, a fraction in (0, 1) or 'all', not {labels!r}"
        ) from None
    if n < 1:
        raise LocaldiscError("--labels must be at least 1")
    if n > available:
        raise LocaldiscError(f"--labels {n}: only {available} labelled training images exist")
    return n


def split_labelled(
    available: int, labels: str | int | float, seed: int, val_fraction: float = 0.2
) -> tuple[list[int], list[int], str]:
    """Indices of the training and validation images, and a note on how validation was chosen.

    The first N indices after a seeded shuffle are labelled, so every init sees the same images
    for a given seed; ``val_fraction`` (20%) of them (:func:`fraction_count`), at least one,
    validate. With fewer than 5 there is nothing to spare: validation uses the training images,
    and the note says so; so it does with ``val_fraction`` 0. A fraction that leaves no training
    image is refused.
    """
    check_val_fraction(val_fraction)
    n = labelled_count(labels, available)
    order = torch.randperm(available, generator=torch.Generator().manual_seed(seed)).tolist()
    chosen = order[:n]
    if n < MIN_LABELS_FOR_HOLDOUT or val_fraction == 0:
        why = "val_fraction 0: no hold-out" if n >= MIN_LABELS_FOR_HOLDOUT else "no hold-out"
        note = f"{n} labelled image(s): validated on the training images ({why})"
        return chosen, chosen, note
    n_val = fraction_count(val_fraction, n)
    if n_val >= n:
        raise LocaldiscError(
            f"val_fraction {val_fraction:g} holds out {n_val} of {n} labelled images for "
            "validation: no training image is left; choose a smaller fraction"
        )
    return chosen[n_val:], chosen[:n_val], f"{n - n_val} train + {n_val} validation images"


def held_out_test(names: list[str], fraction: float = FOLDER_TEST_FRACTION) -> list[int]:
    """Indices (in order) of the test images of a set without a test split, by image name.

    The ``fraction`` of the images (:func:`fraction_count`: at least 1, halves rounded up)
    whose names hash lowest: fixed by the names alone, not by ``--labels``, ``--seed`` or the
    listing order, so every run on the folder is scored on the same images; an image added to
    the folder changes at most one of them.
    ``fraction`` 0 holds out none. Fewer than 2 images cannot be split, nor can all be held out.
    """
    check_test_fraction(fraction)
    n = len(names)
    if fraction == 0:
        return []
    if n < 2:
        raise LocaldiscError(
            f"{n} labelled image(s): a set without a test split needs at least 2, one of them "
            "held out for testing (--test-fraction 0: none held out)"
        )
    k = fraction_count(fraction, n)
    if k >= n:
        raise LocaldiscError(
            f"--test-fraction {fraction:g} holds out {k} of {n} images for testing: no training "
            "image is left; choose a smaller fraction"
        )
    rank = sorted(range(n), key=lambda i: (hashlib.sha256(names[i].encode()).hexdigest(), i))
    return sorted(rank[:k])


def labelled_indices(dataset: SegmentationDataset, target: str) -> list[int]:
    """Indices of the items of ``dataset`` with a ``target`` mask. A folder's images without a
    mask are unlabelled: their items name no mask file (a generated set's name none either, but
    give every target)."""
    if not dataset.requires_root:
        return list(range(len(dataset)))
    return [i for i, item in enumerate(dataset.items) if target in item.masks]


def held_out_split(
    dataset: SegmentationDataset, target: str, fraction: float = FOLDER_TEST_FRACTION
) -> tuple[list[int], list[int], list[int]]:
    """Indices of the training pool, the test images and the unlabelled images of a set without
    a test split (a folder), as :func:`run_transfer` splits it.

    The test images are :func:`held_out_test`'s of the labelled images (those with a ``target``
    mask), by name; the pool is the other labelled images. Unlabelled images are never tested
    or trained on, and do not move the test split; the training split's batch-norm statistics
    are recomputed over them too, since that uses no label.
    """
    labelled = labelled_indices(dataset, target)
    names = [dataset.items[i].name for i in labelled]
    test = [labelled[i] for i in held_out_test(names, fraction)]
    held = set(test)
    pool = [i for i in labelled if i not in held]
    unlabelled = sorted(set(range(len(dataset))).difference(labelled))
    return pool, test, unlabelled


def _tensors(
    dataset: SegmentationDataset, indices: list[int], target: str | None, size: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images ``[N, C, S, S]`` and, with a ``target``, masks ``[N, 1, S, S]`` at ``size``."""
    images, masks = [], []
    for i in indices:
        sample = dataset[i]
        images.append(resize_image(sample.image, size))
        if target is not None:
            masks.append(resize_mask(sample.masks[target], size))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(np.stack(masks)).float()[:, None] if masks else None
    return x, y


def _splits(spec: str) -> tuple[str, ...]:
    return dataset_class(parse_data_spec(spec)[0]).splits


def _resolve_target(dataset: SegmentationDataset, target: str | None) -> str:
    # An unlabelled set has no default target: name the one it usually has, and why it is absent.
    target = target or dataset.default_target or dataset.preferred_target
    if target not in dataset.targets:
        available = ", ".join(dataset.targets) or "none"
        why = dataset.missing_labels.get(target)
        where = dataset.root if dataset.requires_root else f"{dataset.name} (generated)"
        raise DatasetError(
            f"{where} ({dataset.split} split): no masks for target {target!r} (available: "
            f"{available})" + (f"; {why}" if why else "")
        )
    return target


def _known_layout(root: Path) -> str | None:
    """The name of an official data set whose layout ``root`` has (its masks found as that set's
    reader finds them), else ``None``: a set's folder given without ``NAME:`` reads as a folder
    of images, whose masks are not where a folder's are."""
    for name in ("drive", "stare", "chase_db1", "hrf", "jsrt_scr", "montgomery"):
        try:
            if load_data_spec(f"{name}:{root}", None).targets:
                return name
        except (LocaldiscError, OSError):
            continue
    return None


def _refuse_fields_of_view(train: SegmentationDataset) -> None:
    """Refuse a folder whose masks are DRIVE's or HRF's fields of view (its first mask in a
    ``mask/`` folder named so, :func:`~localdisc.data.datasets.official_fov`): without the
    labels' folder (the public DRIVE test split, HRF's ``manual1/`` not downloaded) a
    fine-tuning learnt the retina's disc."""
    for item in train.items:
        for files in item.masks.values():
            for path in files:
                if path.parent.name.lower() == "mask":
                    refuse_official_fov(path)
                    return


def load_task_data(
    spec: str, target: str | None, modality: str | None = None
) -> tuple[SegmentationDataset, SegmentationDataset | None, str]:
    """A task's training images (all of a set without splits) and its test split (``None``:
    it has none), each loaded once, and its target; or the error naming the folder and the
    problem: no masks, none of ``target`` (in the test split too where there is one: DRIVE's
    public download has no test tracings), a mask of another size than its image (from the
    headers: a fine-tuning reads some masks only after training): what a benchmark checks
    before any training, its plan then counting the images. ``modality``: a folder's images
    are of it (``None``: guessed; :func:`~localdisc.data.datasets.load_data_spec`)."""
    name = parse_data_spec(spec)[0]
    splits = _splits(spec)
    train = load_data_spec(spec, "train" if "train" in splits else None, modality=modality)
    if name == "folder" and not train.targets:  # images alone: fine to pre-train on
        known = _known_layout(train.root) if train.root is not None else None
        hint = (
            f"; it is laid out as {known} is: give {known}:{train.root}"
            if known
            else f"; put them in a folder beside the images named {', '.join(FOLDER_MASK_DIRS)}, "
            "with the images' file names"
        )
        raise DatasetError(f"{train.root}: no masks{hint}")
    if name == "folder" and train.root is not None:
        _refuse_fields_of_view(train)
    target = _resolve_target(train, target)
    test = load_data_spec(spec, "test", modality=modality) if "test" in splits else None
    if test is not None:
        _resolve_target(test, target)
    for dataset in (train, test):
        if dataset is not None:
            dataset.check_mask_sizes()
    return train, test, target


def init_modality(init: str | Path) -> str | None:
    """The modality an LD run (or one of its weight files) was pre-trained on (``None`` for
    ``random``)."""
    if str(init) == "random":
        return None
    return LDConfig.from_run(init).modality


def build_model(
    init: str | Path, modality: str, size: int, guessed: str = ""
) -> tuple[Segmenter, bool]:
    """A segmenter from the encoder of an LD run (or of one of its weight files, as
    :meth:`Segmenter.from_ld_run` takes them), or randomly initialised; and whether
    pre-trained. ``guessed``: what the error of another modality adds where the data set's
    was guessed."""
    if str(init) == "random":
        return Segmenter(modality=modality, size=size), False
    model = Segmenter.from_ld_run(init, size=size)
    if model.config.modality != modality:
        raise LocaldiscError(
            f"{init}: pre-trained on {model.config.modality} images, but the data set is {modality}"
            + guessed
        )
    return model, True


def init_weights_file(init: str | Path) -> Path | None:
    """The weight file :func:`build_model` loads for ``init`` (as :meth:`Segmenter.from_ld_run`
    resolves it): an LD run's ``encoder.safetensors``, or the weight file named; ``None`` for
    ``random``."""
    if str(init) == "random":
        return None
    run_dir, weights = split_weights_path(init, "encoder.safetensors")
    return run_dir / weights


def init_fingerprint(init: str | Path) -> dict[str, str] | None:
    """``{"file", "sha256"}`` of the weights a fine-tuning from ``init`` loads, recorded in its
    ``config.json``: an init is named by its path, and a run folder of an init trained again
    under that path holds a fine-tuning of other weights (:func:`_check_out_dir`). ``None`` for
    ``random``, and where the file is not there (yet: a benchmark's LD init before its
    pre-training)."""
    path = init_weights_file(init)
    if path is None:
        return None
    try:
        info = path.stat()
    except OSError:
        return None
    stamp = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    return {"file": str(path), "sha256": _file_sha256(str(path), stamp)}


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, stamp: tuple[int, ...]) -> str:
    """:func:`sha256` of ``path``, once while its ``stamp`` (device, inode, size, times) stays:
    a benchmark checks every run folder of an init twice (plan, run), and a file written again
    has another stamp."""
    return sha256(Path(path))


def image_metrics(
    prob: np.ndarray,
    sample: Sample,
    target: str,
    size: int,
    *,
    prob_at_size: np.ndarray | None = None,
) -> dict[str, float]:
    """The metrics of one prediction at the image's own size (see the module docstring).

    The paper's ``dice`` compares at ``size x size``: ``prob_at_size`` when the model predicted
    at that size, else :func:`~localdisc.eval.metrics.paper_dice` of ``prob >= 0.5``.
    """
    return score_prediction(prob, sample.masks[target], sample.fov,
                            topology=target in TUBULAR_TARGETS, prob_at_size=prob_at_size,
                            size=size)  # fmt: skip


def evaluate(
    model: Segmenter,
    dataset: SegmentationDataset,
    indices: list[int],
    target: str,
    *,
    on_prediction: Callable[[Sample, np.ndarray], None] | None = None,
) -> list[dict[str, Any]]:
    """Per-image metrics of ``model`` on ``dataset[indices]`` (see the module docstring).

    The maps are :meth:`Segmenter.predict_maps`'s: float32, the very path of ``localdisc
    predict``, so the metrics and saved predictions are those of the saved model as users run it
    (not of the bf16 autocast that training may use for speed).
    """
    size = model.config.size
    rows = []
    for i in indices:
        sample = dataset[i]
        prob_small, prob = model.predict_maps(sample.image)
        metrics = image_metrics(prob, sample, target, size, prob_at_size=prob_small)
        rows.append({"image": sample.name, **metrics})
        if on_prediction is not None:
            on_prediction(sample, prob)
    return rows


def _evaluate_state(
    model: Segmenter,
    state: dict[str, torch.Tensor],
    dataset: SegmentationDataset,
    indices: list[int],
    target: str,
) -> dict[str, Any]:
    """``summary`` and ``per_image`` of ``model`` holding ``state``; the model's own state is
    restored afterwards."""
    kept = copy.deepcopy(model.state_dict())
    model.load_state_dict(state)
    rows = evaluate(model, dataset, indices, target)
    model.load_state_dict(kept)
    return {"summary": _summary(rows), "per_image": rows}


def _summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    return summarize([{k: v for k, v in r.items() if k != "image"} for r in rows])


def _history_csv(phases: list) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["phase", "epoch", "loss", "val_dice"])
    for phase in phases:
        for row in phase.history:
            writer.writerow(
                [phase.name, row["epoch"], f"{row['loss']:.6f}", f"{row['val_dice']:.6f}"]
            )
    return buffer.getvalue()


#: ``localdisc finetune``'s flag for each setting it sets: a refusal names what users typed
#: (another command passes its own to :func:`run_transfer`).
FLAGS = {
    "dataset": "--dataset", "target": "--target", "init": "--init", "labels": "--labels",
    "test_fraction": "--test-fraction", "size": "--size", "recalibrate_bn": "--recalibrate-bn",
    "modality": "--modality",
    "train.frozen_epochs": "--frozen-epochs", "train.epochs": "--epochs", "train.batch": "--batch",
    "train.steps_per_epoch": "--steps-per-epoch", "train.lr": "--lr", "train.seed": "--seed",
}  # fmt: skip


def _differences(
    saved: dict[str, Any], given: dict[str, Any], flags: dict[str, str], prefix: str = ""
) -> list[str]:
    """``"[FLAG (]KEY[)]: SAVED there, GIVEN now"`` for each setting that differs (nested
    ``train``), with its flag in ``flags`` where the command has one."""
    out = []
    for key in sorted(set(saved) | set(given)):
        a, b = saved.get(key), given.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, flags, f"{prefix}{key}.")
        elif a != b:
            name = f"{prefix}{key}"
            name = f"{flags[name]} ({name})" if name in flags else name
            out.append(f"{name}: {a!r} there, {b!r} now")
    return out


def _check_out_dir(
    out_dir: Path, config: TransferConfig, flags: dict[str, str] = FLAGS
) -> str | None:
    """Raise unless ``out_dir`` is free for this run or holds this run: ``None`` when free,
    ``"interrupted"`` for an interrupted run with the same settings, which the run continues
    from its checkpoint (or redoes without one), replacing its outputs, and ``"finished"`` for a
    finished one (``metrics.json``) with the same settings, left as it is: running the same
    command again is how an interrupted fine-tuning goes on, and does nothing after it finished
    (as ``pretrain --resume``).

    A run with other settings and another command's outputs (an LD run's
    ``model.safetensors``) are refused, nothing deleted: writing over them mixed two runs (the
    first run's predictions of images the second did not test).
    """
    if out_dir.exists() and not out_dir.is_dir():  # said now, not after the training
        raise LocaldiscError(f"{out_dir}: a file, not a folder; choose another --out")
    found = [name for name in OUTPUTS if (out_dir / name).exists()]
    if not found:
        return None
    advice = "choose another --out, or delete the folder to run here (nothing was deleted)"
    try:
        saved = json.loads((out_dir / "config.json").read_text())["transfer"]
        if not isinstance(saved, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        # Another command's folder (an LD run's weights, predict's metrics.json): not to be
        # deleted for this, either, nor called a finished fine-tuning.
        raise LocaldiscError(
            f"{out_dir}: holds {', '.join(found)}, not of a fine-tuning (no 'transfer' settings "
            "in config.json); choose another --out (nothing was deleted)"
        ) from None
    differences = _differences(protocol(saved), protocol(asdict(config)), flags)
    state = "finished" if "metrics.json" in found else "interrupted"
    if not differences:
        _check_init_weights(out_dir, config, state, flags)
    if state == "finished":
        if differences:
            raise LocaldiscError(
                f"{out_dir}: holds a finished fine-tuning with other settings "
                f"({'; '.join(differences)}); {advice}"
            )
        _check_listing(out_dir, config, advice)
        return "finished"
    if differences:
        # Its command continues it from its checkpoint, where it has one.
        goes_on = (
            "continue it from its checkpoint"
            if checkpoint_position(out_dir / CHECKPOINT)
            else "redo it"
        )
        raise LocaldiscError(
            f"{out_dir}: holds an interrupted fine-tuning (config.json, no metrics.json) with "
            f"other settings ({'; '.join(differences)}); run its own command again to "
            f"{goes_on}, or {advice}"
        )
    return "interrupted"


def data_listing(
    train_set: SegmentationDataset, test: SegmentationDataset | None
) -> dict[str, Any]:
    """What a fine-tuning's ``config.json`` keeps of its data: the images of the training and
    test sets it uses, counted, and a hash of their names (beside it, those it skipped as
    unreadable: :func:`_check_listing`)."""
    names = {"train": [item.name for item in train_set.items],
             "test": [item.name for item in test.items] if test is not None else []}  # fmt: skip
    digest = hashlib.sha256(json.dumps(names).encode()).hexdigest()
    return {"train": len(names["train"]), "test": len(names["test"]), "sha256": digest}


def _check_listing(out_dir: Path, config: TransferConfig, advice: str) -> None:
    """Raise where the finished run in ``out_dir`` found other images in its data set than are
    there now (a partial download completed), or skipped as unreadable one that reads now: its
    scores were reused beside runs scored on the new test set, a table comparing inits over
    different images. Runs of before the record (no ``listing``) are reused as they were."""
    try:
        saved = json.loads((out_dir / "config.json").read_text())["data"]["listing"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    try:
        train_set, test, _ = load_task_data(config.dataset, config.target, config.modality)
    except LocaldiscError:
        return  # the run itself says what is wrong with the data
    skipped = set(saved.get("skipped", []))
    for dataset in [train_set] if test is None else [train_set, test]:
        for item in [item for item in dataset.items if item.name in skipped]:
            try:  # left out as the run left it, unless it reads now (a download completed)
                dataset.load(item)
            except ImageReadError:
                continue
            raise LocaldiscError(
                f"{out_dir}: holds a finished fine-tuning that skipped {item.image} as "
                f"unreadable, which reads now: its scores are not of this data; {advice}"
            )
        dataset.items = [item for item in dataset.items if item.name not in skipped]
    now = {**data_listing(train_set, test), "skipped": saved.get("skipped", [])}
    if now != {"skipped": [], **saved}:
        counts = (
            f"{saved.get('train')} images then, {now['train']} now"  # its test images among them
            if test is None
            else f"{saved.get('train')} training and {saved.get('test')} test images then, "
            f"{now['train']} and {now['test']} now"
        )
        # Data sets leave out the runs and outputs of localdisc inside them since 2026-12-07:
        # a run of before may have read them, though the data are as they were.
        root = train_set.root if isinstance(train_set, FolderDataset) else None
        # (its own outputs came after its listing)
        held = [] if root is None else written_below(root, own=out_dir)
        shown = ", ".join(str(p) for p in held[:3]) + (", ..." if len(held) > 3 else "")
        why = (
            f" The data hold runs or outputs of localdisc ({shown}), which a run before "
            "2026-12-07 read as images and data sets have left out since: then only a new run "
            "goes on."
            if held
            else ""
        )
        raise LocaldiscError(
            f"{out_dir}: holds a finished fine-tuning of other images of {config.dataset} "
            f"({counts}): its scores are not of this data; {advice}.{why}"
        )


def _check_init_weights(
    out_dir: Path, config: TransferConfig, state: str, flags: dict[str, str]
) -> None:
    """Raise where the run in ``out_dir`` (``state``: finished or interrupted), of the same
    settings as ``config``, loaded other weights than ``config.init``'s file holds now (its
    ``config.json``'s ``init_weights``): the init trained again under the same path. Its
    results (or checkpoint) are of the old weights, so it is refused as a run of other settings
    is. A run recorded before ``init_weights`` existed, and an init whose file is not there
    (yet), are not compared."""
    try:
        saved = json.loads((out_dir / "config.json").read_text()).get("init_weights")
        old = saved["sha256"]
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return
    now = init_fingerprint(config.init)
    if now is None or now["sha256"] == old:
        return
    what = (
        "a finished fine-tuning"
        if state == "finished"
        else "an interrupted fine-tuning (config.json, no metrics.json)"
    )
    raise LocaldiscError(
        f"{out_dir}: holds {what} of other init weights: those of {flags.get('init', 'init')} "
        f"{config.init} ({now['file']}) have changed since that fine-tuning started (SHA-256 "
        f"{str(old)[:12]}... there, {now['sha256'][:12]}... now: trained again?); choose "
        "another --out, or delete the folder (and any other run of the old weights) to run "
        "here (nothing was deleted)"
    )


def _clear_outputs(out_dir: Path, keep: tuple[str, ...] = ()) -> None:
    """Delete what :func:`run_transfer` writes (:data:`OUTPUTS`) but ``keep``, nothing else of
    the folder."""
    for name in OUTPUTS:
        path = out_dir / name
        if name in keep:
            continue
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


@keeps_global_rng
def run_transfer(
    config: TransferConfig,
    out_dir: str | Path,
    *,
    log: Callable[[str], None] = print,
    flags: dict[str, str] = FLAGS,
    unreadable: dict[str, list[tuple[str, Path, str]]] | None = None,
) -> dict[str, Any]:
    """Fine-tune and evaluate as described in the module docstring; returns ``metrics.json``.

    ``flags``: the calling command's flag for each setting (``"train.epochs"``: ``"--epochs"``),
    which a refusal of ``out_dir`` names; a setting without one is named alone (default: those
    of ``localdisc finetune``, :data:`FLAGS`).

    ``config.skip_bad``: every image is read first, and one that cannot be read (its own error:
    :class:`~localdisc.tasks.predict.SkippedImages`) is named in ``log`` and left out before the
    split is drawn, listed under ``skipped`` in ``metrics.json``; an unreadable or ill-sized
    mask, a :class:`~localdisc.errors.ReaderSetupError`, or no readable image left, still stops
    the run. Without it, an image's read error stops the run, saying that ``--skip-bad`` skips
    it (:data:`~localdisc.tasks.predict.SKIP_BAD_HINT`).

    ``unreadable``: with ``config.skip_bad``, the unreadable images found by earlier runs on
    the same data, by ``config.dataset`` (``(name, file, reason)`` as
    :attr:`SkippedImages.skipped`; a benchmark passes one dict to all its runs): a data set
    found there is not read first again, its images listed there left out without a word
    (said by the run that found them); one not there is read as above and its finds added.

    A second process started into ``out_dir`` while this one runs is refused
    (:class:`~localdisc.engine.checkpoint.RunFolderLock`)."""
    with RunFolderLock(out_dir, log=log) as lock:
        return _run_transfer(config, Path(out_dir), lock, log, flags, unreadable)


def _run_transfer(
    config: TransferConfig,
    out_dir: Path,
    lock: RunFolderLock,
    log: Callable[[str], None],
    flags: dict[str, str],
    unreadable: dict[str, list[tuple[str, Path, str]]] | None,
) -> dict[str, Any]:
    """:func:`run_transfer`, ``lock`` held from the start where ``out_dir`` exists, else from
    where it is made."""
    state = _check_out_dir(out_dir, config, flags)
    if state == "finished":
        metrics_path = out_dir / "metrics.json"
        log(f"reusing {metrics_path}: finished already, with the same settings; nothing to do")
        try:
            return json.loads(metrics_path.read_text())
        except (OSError, ValueError) as exc:
            raise LocaldiscError(
                f"{metrics_path}: unreadable ({exc}); choose another --out, or delete the "
                "folder to run here again"
            ) from None
    interrupted = state == "interrupted"
    checkpoint_dir = out_dir / CHECKPOINT
    where = checkpoint_position(checkpoint_dir) if interrupted else None
    if interrupted:  # with a checkpoint, finetune() says where it continues
        redo = "" if where else "; it kept no checkpoint: redoing it"
        log(f"{out_dir}: an interrupted fine-tuning with the same settings{redo}")
    t0 = time.perf_counter()
    # where and when; outside "transfer": never compared
    env = environment(config.train.device, amp=config.train.amp)
    train_set, test, target = load_task_data(config.dataset, config.target, config.modality)
    if test is not None and config.test_fraction != FOLDER_TEST_FRACTION:
        raise LocaldiscError(
            f"{config.dataset} has its own test split ({len(test)} images): --test-fraction "
            f"{config.test_fraction:g} is only for a set without one (a folder); leave it out"
        )
    sets = [train_set] if test is None else [train_set, test]
    total = sum(len(s) for s in sets)
    skips = SkippedImages(config.skip_bad, log, total)
    known = unreadable.get(config.dataset) if unreadable is not None else None
    if config.skip_bad and known is not None:  # found by an earlier run: the same images
        skips.skipped = list(known)
        left_out = {path for _, path, _ in known}
        for dataset in sets:
            dataset.items = [item for item in dataset.items if item.image not in left_out]
    elif config.skip_bad:  # without, those read only after training are read first (_transfer)
        # Every image decoded first: minutes for a large folder, shown.
        with ProgressBar(total, 0, config.train.progress, "check images", unit="image") as bar:
            read = itertools.count(1)
            for dataset in sets:
                _leave_out_unreadable(dataset, skips, lambda: bar.update(next(read)))
        if unreadable is not None:  # and no bad mask (that stops the run): for the next runs
            unreadable[config.dataset] = list(skips.skipped)
    # The images used, and those skipped as unreadable: one repaired since is another data set.
    listing = {**data_listing(train_set, test), "skipped": [name for name, _, _ in skips.skipped]}
    try:
        return _transfer(config, out_dir, log, (train_set, test, target), skips,
                         interrupted=interrupted, where=where, t0=t0, env=env,
                         lock=lock, listing=listing)  # fmt: skip
    except ImageReadError as exc:  # an image's own error says --skip-bad skips it; a mask's not
        image = any(Path(exc.path) == item.image for s in sets for item in s.items)
        hinted = skips.hinted(Path(exc.path), exc) if image else exc
        if hinted is exc:
            raise
        raise hinted from exc


def _leave_out_unreadable(
    dataset: SegmentationDataset, skips: SkippedImages, on_read: Callable[[], None]
) -> None:
    """Read every item of ``dataset`` and leave out of its ``items`` those whose image cannot be
    read, recorded in ``skips`` (enabled) and named in its log; raise for any other problem (a
    mask's, the installation's: :meth:`SkippedImages.unreadable`), and where none is left.
    ``on_read`` is called after each item (a progress bar)."""
    kept = []
    for item in dataset.items:
        try:
            dataset.load(item)  # the masks too: a bad one stops the run now, not after training
        except ImageReadError as exc:
            skips.unreadable(item.name, item.image, exc)
        else:
            kept.append(item)
        on_read()
    if not kept:
        _, path, reason = skips.skipped[-len(dataset.items)]  # this set's first
        raise LocaldiscError(
            f"{dataset.root or dataset.name} ({dataset.split} split): every image was skipped as "
            f"unreadable ({len(dataset.items)}; first: {path}: {reason})"
        )
    dataset.items = kept


def pairing_notes(images: list[Path]) -> list[str]:
    """What a fine-tuning says of the headers of its labelled ``images`` (those it trains,
    validates and tests on): a warning where some carry an EXIF orientation, which localdisc
    does not apply (where the sizes agree, a turn of 180 degrees or a square image, nothing
    else says so), and a note where some hold several frames (the lines of
    :func:`~localdisc.data.io.header_notes`, ``"dataset"``)."""
    metas = header_metas(sorted(set(images)))
    lines = (("warning", orientation_note(metas, "dataset")), ("note", frames_note(metas)))
    return [f"{kind}: {line}" for kind, line in lines if line is not None]


def _read_first(reads: list[tuple[SegmentationDataset, list[int]]], progress: bool) -> None:
    """Read each item of ``reads`` (a data set and indices of its items), image and masks, and
    let it go (one at a time: nothing more is held): an unreadable file stops the run here,
    before the training, naming it (:func:`run_transfer` adds that ``--skip-bad`` skips an
    image)."""
    total = sum(len(indices) for _, indices in reads)
    if not total:
        return
    with ProgressBar(total, 0, progress, "check images", unit="image") as bar:
        read = itertools.count(1)
        for dataset, indices in reads:
            for i in indices:
                dataset.load(dataset.items[i])
                bar.update(next(read))


def _transfer(
    config: TransferConfig,
    out_dir: Path,
    log: Callable[[str], None],
    data: tuple[SegmentationDataset, SegmentationDataset | None, str],
    skips: SkippedImages,
    *,
    interrupted: bool,
    where: str | None,
    t0: float,
    env: dict[str, Any],
    lock: RunFolderLock,
    listing: dict[str, Any],
) -> dict[str, Any]:
    """:func:`run_transfer` once ``out_dir`` is checked and the data loaded (``data``: the
    training set, the test set or ``None``, the target; unreadable images left out where
    ``skips`` is enabled; ``listing``: :func:`data_listing` of the sets as found): split,
    fine-tune, evaluate and write the outputs."""
    train_set, test, target = data
    for dataset in (train_set, test):
        for note in dataset.notes() if dataset is not None else []:
            log(f"note: {note}")
    checkpoint_dir = out_dir / CHECKPOINT
    self_split = test is None  # a set without a test split is split here
    test_set = train_set if test is None else test
    seed = config.train.seed
    unlabelled: list[int] = []
    images = f"{len(train_set)} images"
    if self_split:
        # No official test split: a fixed part of the labelled images is the test split, the
        # rest the training split, whatever --labels and --seed (see held_out_split).
        try:
            pool, test_idx, unlabelled = held_out_split(train_set, target, config.test_fraction)
        except LocaldiscError as exc:
            raise LocaldiscError(f"{config.dataset}: {exc}") from None
        # "labelled" only where some are not, so that the note reads as before otherwise.
        images = f"{len(pool) + len(test_idx)}{' labelled' if unlabelled else ''} images"
        split_note = (
            f"no test split: {len(test_idx)} of its {images} held out for testing (by file "
            "name, the same for every --labels and --seed)"
            if test_idx
            # Not "all N for training": --labels may take fewer of them.
            else f"no test split: none of its {images} held out for testing (--test-fraction 0)"
        )
        try:
            labelled_count(config.labels, len(pool))
        except LocaldiscError as exc:  # "only 6 exist" of 8 images: say where the 2 went
            if not test_idx and not unlabelled:
                raise
            why = []
            if unlabelled:
                why.append(
                    f"{len(unlabelled)} of its {len(train_set)} images have no mask (unlabelled)"
                )
            if test_idx:
                why.append(
                    f"{'it' if unlabelled else config.dataset} has no test split, so "
                    f"{len(test_idx)} of its {images} are held out for testing (--labels all "
                    "takes the rest; --test-fraction sets how many)"
                )
            prefix = f"{config.dataset}: " if unlabelled else ""
            raise LocaldiscError(f"{exc}: {prefix}{', and '.join(why)}") from None
        picked, picked_val, val_note = split_labelled(
            len(pool), config.labels, seed, config.val_fraction
        )
        train_idx, val_idx = [pool[i] for i in picked], [pool[i] for i in picked_val]
    else:
        train_idx, val_idx, val_note = split_labelled(
            len(train_set), config.labels, seed, config.val_fraction
        )
        test_idx = list(range(len(test_set)))
        pool, split_note = list(range(len(train_set))), None
    unlabelled_names = [train_set.items[i].name for i in unlabelled]
    if unlabelled:
        # The folder set's reason names them and what its mask folder holds: a misnamed mask
        # shows here.
        more = f" and {len(unlabelled) - 5} more" if len(unlabelled) > 5 else ""
        reason = train_set.missing_labels.get(target) or (
            f"{len(unlabelled)} of its {len(train_set)} images have no mask, so are unlabelled: "
            f"{', '.join(unlabelled_names[:5])}{more}"
        )
        log(
            f"{train_set.name} {target}: {reason}; they are never tested or trained on, and batch "
            f"norm is recalibrated over them (at most {UNLABELLED_BN}, spread by name) with the "
            "training images"
        )
    if config.max_test is not None:
        test_idx = test_idx[: config.max_test]
    log(
        f"{train_set.name} {target}: "
        + (f"{split_note}; " if split_note else "")
        + f"{val_note}; {len(test_idx)} test images; init {config.init}; "
        f"{config.size}x{config.size}"
    )
    labelled_files = [train_set.items[i].image for i in [*train_idx, *val_idx]]
    for note in pairing_notes(labelled_files + [test_set.items[i].image for i in test_idx]):
        log(note)

    torch.manual_seed(seed)  # the new decoder's initial weights
    # The init's weights as loaded, for a later call into this folder (_check_init_weights).
    init_weights = init_fingerprint(config.init)
    guessed = (
        f" (guessed from its images: {'grey' if train_set.modality == 'xray' else 'colour'}; "
        "red-free fundus photographs are grey: give --modality, TransferConfig.modality)"
        if isinstance(train_set, FolderDataset) and config.modality is None
        else ""
    )
    model, pretrained = build_model(config.init, train_set.modality, config.size, guessed)
    train = _tensors(train_set, train_idx, target, config.size)
    val = _tensors(train_set, val_idx, target, config.size)
    peaks = dict(  # by name: with few labels, the validation images are the training ones
        zip(
            [train_set.items[i].name for i in [*train_idx, *val_idx]],
            torch.cat([train[0], val[0]]).flatten(1).amax(1).tolist(),
            strict=True,
        )
    )
    note = dim_note(list(peaks.items()), "training image(s)", "the network sees them near black")
    if note is not None:
        log(f"note: {note}")
    training_plan(config.train, pretrained)  # "nothing to train" before config.json is written
    # Batch norm is recalibrated over the training split, unlabelled images too (see below), at
    # most UNLABELLED_BN of them spread by name: a folder of thousands, stacked in memory, does not
    # fit, and a hundred give stable statistics.
    step = max(1, -(-len(unlabelled) // UNLABELLED_BN))
    bn_unlabelled = unlabelled[::step]
    bn_idx = sorted(pool + bn_unlabelled)
    if not skips.enabled:  # with --skip-bad every image was read at the start
        # The test images and those of the recalibration but not of training are read after
        # it, where an unreadable one (or its mask) stopped the run, its training lost.
        used = {*train_idx, *val_idx}
        later = [i for i in bn_idx if i not in used]
        reads = (
            [(train_set, later + test_idx)]
            if self_split
            else [(train_set, later), (test_set, test_idx)]
        )
        _read_first(reads, config.train.progress)
    looks = (
        train_set.guessed_modality() if isinstance(train_set, FolderDataset) else train_set.modality
    )
    meta = {
        "transfer": asdict(config),
        **({"init_weights": init_weights} if init_weights else {}),
        "data": {
            "dataset": train_set.name,
            "target": target,
            "modality": train_set.modality,
            # Grey photographs given as fundus (red-free): predict's note of images unlike the
            # model's compares with these
            **({"images_look": looks} if looks != train_set.modality else {}),
            "train_images": [train_set.items[i].name for i in train_idx],
            "val_images": [train_set.items[i].name for i in val_idx],
            "validation": val_note,
            "bn_images": len(bn_idx),
            "listing": listing,
            **({"test_split": split_note} if split_note else {}),
            **({"unlabelled": unlabelled_names} if unlabelled else {}),
            **({"skipped": skips.record()} if skips.enabled else {}),
        },
        "environment": env,
    }
    if interrupted:  # its outputs (predictions of other images maybe) but what goes on from
        # The first start's environment stays; this one is added to "resumed", with where it
        # went on from (as pre-training's says its step).
        saved = json.loads((out_dir / "config.json").read_text())
        meta.update(resumed(saved, env, continued_from=where or "the start (no checkpoint kept)"))
        _clear_outputs(out_dir, keep=("config.json", CHECKPOINT))
    # Written first, as the record of the run in progress (the model's config, for `predict`,
    # once model.safetensors is there): an interrupted run is recognised by its settings.
    record = json.dumps({**meta, "segmenter": asdict(model.config)}, indent=2)
    out_dir.mkdir(parents=True, exist_ok=True)
    lock.hold()  # a second fine-tuning started at once into this --out is refused here
    atomic_write_text(out_dir / "config.json", record)
    result = finetune(
        model, train, val, config.train, pretrained=pretrained, log=log,
        checkpoint_dir=checkpoint_dir,
    )  # fmt: skip
    # Back to the layout a loaded model has, so that evaluating here computes exactly what
    # `localdisc predict` will with the saved weights (channels_last may round differently).
    model.to(memory_format=torch.contiguous_format)

    # Batch-norm statistics over the training split's images (labels unused); a folder's held-out
    # test images are not among them.
    trained = copy.deepcopy(model.state_dict())
    recalibrate_batch_norm(model, _tensors(train_set, bn_idx, None, config.size)[0])
    recalibrated = copy.deepcopy(model.state_dict())
    kept, other_key, other_state = (trained, "recalibrated", recalibrated)
    if config.recalibrate_bn:
        kept, other_key, other_state = (recalibrated, "as_trained", trained)
    model.load_state_dict(kept)

    model.save(out_dir, meta)
    atomic_write_text(out_dir / "history.csv", _history_csv(result.phases))

    predictions = out_dir / "predictions"
    overlays: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []

    def keep(sample: Sample, prob: np.ndarray) -> None:
        if config.predictions:
            write_png(predictions / f"{sample.name}_prob.png", prob_png(prob))
            write_png(predictions / f"{sample.name}_mask.png", mask_png(prob))
        if len(overlays) < 4:
            overlays.append((sample.name, sample.image, prob >= 0.5, sample.masks[target]))

    metrics: dict[str, Any] = {
        "dataset": train_set.name,
        "target": target,
        "init": config.init,
        # which pre-training made the encoder: "ld", or a peer method of `pretrain --method`
        **({"init_method": run_method(split_weights_path(config.init)[0])} if pretrained else {}),
        # its file and SHA-256, as config.json has them: which weights these results are of
        **({"init_weights": init_weights} if init_weights else {}),
        "labels": len(train_idx) + (len(val_idx) if val_idx != train_idx else 0),
        "seed": seed,
        "size": config.size,
        "validation": val_note,
        **({"test_split": split_note} if split_note else {}),
        "test_images": len(test_idx),
        "recalibrated_bn": config.recalibrate_bn,
        "bn_images": len(bn_idx),
        # A folder's images without a mask: never tested or trained on, in bn_images.
        **({"unlabelled": unlabelled_names} if unlabelled else {}),
        # --skip-bad: the images left out as unreadable (name, file, reason); [] where none was.
        **({"skipped": skips.record()} if skips.enabled else {}),
        "environment": meta["environment"],
        **({"resumed": meta["resumed"]} if "resumed" in meta else {}),
    }
    metrics["phases"] = [
        {k: v for k, v in asdict(p).items() if k != "history"} for p in result.phases
    ]
    if test_idx:  # --test-fraction 0 (a folder's images all trained on): nothing to test
        per_image = evaluate(model, test_set, test_idx, target, on_prediction=keep)
        metrics["summary"], metrics["per_image"] = _summary(per_image), per_image
        if result.frozen_state is not None:  # the frozen-encoder model, as the paper reports
            metrics["frozen"] = _evaluate_state(
                model, result.frozen_state, test_set, test_idx, target
            )
        metrics[other_key] = _evaluate_state(model, other_state, test_set, test_idx, target)
        # Before metrics.json, the last output (OUTPUTS): a stop while drawing left a run
        # called finished, without its figure, that the same command refused.
        from localdisc.eval.figures import overlay_figure

        overlay_figure(overlays, out_dir / "figures" / "overlay.png")
    # With the time interrupted runs spent on the fine-tuning (their data loading aside).
    metrics["seconds"] = round(time.perf_counter() - t0 + result.earlier_seconds, 1)
    atomic_write_text(out_dir / "metrics.json", json.dumps(jsonable(metrics), indent=2))
    # Finished: model.safetensors is the result, and a checkpoint (some 5 copies of the weights,
    # per run of a benchmark) could only continue a run that metrics.json marks as done.
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    if not test_idx:
        # The saved model is the last phase's best one (engine.finetune).
        log(
            f"no test split (--test-fraction 0): none of the {images} held out for testing; "
            f"validation Dice {result.phases[-1].best_val_dice:.4f} ({val_note}) -> {out_dir}"
        )
        return metrics

    dice, other = metrics["summary"]["dice"], metrics[other_key]["summary"]["dice"]["mean"]
    recalibrated = f"batch norm recalibrated over {len(bn_idx)} training images" + (
        f" ({len(bn_unlabelled)} unlabelled)" if unlabelled else ""
    )
    saved, other_name = (
        ("", recalibrated)
        if other_key == "recalibrated"
        else (f", {recalibrated}", "training's batch norm")
    )
    spread = f" +- {dice['std']:.4f}" if dice["n"] > 1 else ""  # one image's std says nothing
    log(
        f"test Dice {dice['mean']:.4f}{spread} over {dice['n']} image(s){saved} "
        f"({other_name}: {other:.4f}) -> {out_dir}"
    )
    return metrics
