"""``localdisc benchmark transfer``: every (task, init, labels, seed) with data, one table.

Each run is a :func:`~localdisc.tasks.transfer.run_transfer` into
``OUT/runs/TASK/INIT/labels-L/seed-S``; a run whose ``metrics.json`` exists is reused, so an
interrupted benchmark continues where it stopped. Tasks whose data are missing are reported as
skipped with the reason, as is a run that diverged (its cell is then over fewer seeds, and says
so), the grid's other runs going on. The init ``ld`` pre-trains an LD model first with the
preset of the mode (``--quick``: a few steps on synthetic images; ``--cpu-scale``: 4 + 4 minutes
on KaggleDR), so that a whole comparison is one command; where no task to run is of its modality
(fundus), it is not pre-trained, and where that pre-training diverges, its runs are skipped
(listed) and the other inits' go on. Every init and run folder is checked before any training.

A task may also be a data set of the user's own (:func:`own_set`): a folder of images and masks
(as ``finetune --dataset`` takes it) or ``NAME:ROOT[:TARGET]`` of a known set, the target
written as prior specs write it. It is named in run folders and tables by its folder's name
(:func:`task_labels`), is tested on :func:`~localdisc.tasks.transfer.held_out_test`'s images where
it has no test split of its own (``test_fraction`` of them, by file name: the same for every init,
label budget and seed), and has the modality its loader gives ``finetune`` (a folder's: guessed
from its images, unless the entry names it, ``fundus=FOLDER``, as ``finetune --modality`` does:
red-free fundus photographs are grey, guessed X-rays). Named explicitly, it is checked before any
work and refused with the problem (no such folder, no masks, a label budget beyond its images),
where a paper task without data under the data root is skipped: that one is a default, this one
the user's typing. A set or an init with runs in ``OUT`` from an earlier call keeps their label,
so a table can grow without redoing them.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

from localdisc.data.datasets import (
    absolute_data_spec,
    absolute_path,
    dataset_class,
    parse_data_spec,
    split_target,
)
from localdisc.engine.finetune import FinetuneConfig, training_plan
from localdisc.errors import DatasetError, DivergedError, LocaldiscError
from localdisc.tasks.presets import (
    QUICK_PRETRAIN,
    check_preset,
    pretrain_preset,
    refuse_device,
    unless_diverged,
)
from localdisc.tasks.transfer import (
    FOLDER_TEST_FRACTION,
    TransferConfig,
    _check_out_dir,
    absolute_init,
    check_max_test,
    check_size,
    check_test_fraction,
    held_out_split,
    init_modality,
    labelled_count,
    load_task_data,
    run_transfer,
)

#: This command's flag for each run setting it sets, named when a run folder holds a run with
#: other settings (tasks.transfer.FLAGS are ``finetune``'s: ``--batch`` or ``--lr``, which this
#: command has not). The rest (the batch, a --quick run's max_test, the data set's folder) are
#: named as settings: to run with other ones, use another --out or delete the run folder.
FLAGS = {
    "init": "--inits", "labels": "--labels", "size": "--size", "test_fraction": "--test-fraction",
    "modality": "--tasks MODALITY=",
    "train.frozen_epochs": "--frozen-epochs", "train.epochs": "--epochs",
    "train.steps_per_epoch": "--steps-per-epoch",
}  # fmt: skip


@dataclass(frozen=True)
class Task:
    """A data set (``NAME`` and its folder under the data root; ``None``: generated) + target."""

    dataset: str
    folder: str | None
    target: str
    modality: str = "fundus"

    def spec(self, data_root: Path | None, quick: bool) -> str:
        if self.folder is None:  # generated: a few images in quick runs
            return f"{self.dataset}:{6 if quick else 20}"
        if data_root is None:
            raise LocaldiscError("no data root: pass --data-root or set LOCALDISC_DATA")
        return f"{self.dataset}:{data_root / self.folder}"


#: The paper's transfer tasks (METHOD.md 4) and two generated ones that need no data.
TASKS: dict[str, Task] = {
    "drive": Task("drive", "DRIVE", "vessels"),
    "stare": Task("stare", "STARE", "vessels"),
    "chase_db1": Task("chase_db1", "CHASE_DB1", "vessels"),
    "hrf": Task("hrf", "HRF", "vessels"),
    # jsrt_scr searches its root recursively for the JSRT images and the SCR masks.
    "scr_lung": Task("jsrt_scr", ".", "lung", "xray"),
    "scr_heart": Task("jsrt_scr", ".", "heart", "xray"),
    "scr_clavicle": Task("jsrt_scr", ".", "clavicle", "xray"),
    "synthetic_fundus": Task("synthetic_fundus", None, "vessels"),
    "synthetic_xray": Task("synthetic_xray", None, "lung", "xray"),
}


#: Each mode's fine-tuning settings, taken where a :class:`BenchmarkConfig` leaves them ``None``
#: (:func:`preset`); ``max_test`` ``None``: every test image.
RUN_DEFAULTS: dict[str, dict[str, int | None]] = {
    "full": {"size": 512, "frozen_epochs": 100, "epochs": 100, "max_test": None},
    "quick": {"size": 64, "frozen_epochs": 2, "epochs": 2, "max_test": 2},
    "cpu_scale": {"size": 256, "frozen_epochs": 100, "epochs": 100, "max_test": None},
}


@dataclass
class BenchmarkConfig:
    """What to run; ``quick`` and ``cpu_scale`` are presets applied by :func:`preset`.

    ``None`` lists take the mode's defaults (see :data:`PRESET_GRIDS`), and so do ``None``
    sizes, epochs and ``max_test`` (:data:`RUN_DEFAULTS`); given ones stay.
    """

    inits: list[str] | None = None
    # Names of TASKS, or data sets of one's own: folders or NAME:ROOT[:TARGET] (own_set).
    tasks: list[str] | None = None
    labels: list[str] | None = None
    seeds: int | None = None
    data_root: str | None = None
    # None: the mode's (RUN_DEFAULTS), as for frozen_epochs, epochs and max_test.
    size: int | None = None
    frozen_epochs: int | None = None
    epochs: int | None = None
    batch: int = 2
    steps_per_epoch: int | None = None  # None: one pass over the labelled images per epoch
    device: str = "auto"
    max_test: int | None = None
    # Of a task without a test split (a folder): the fraction of its images held out for testing.
    test_fraction: float = FOLDER_TEST_FRACTION
    # Each fine-tuning leaves out the images it cannot read (finetune --skip-bad; listed in its
    # metrics.json), instead of stopping the benchmark at the first.
    skip_bad: bool = False
    quick: bool = False
    cpu_scale: bool = False
    # LD pre-training run for the init "ld" (PretrainConfig fields).
    pretrain: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Checked here, not when the first run starts: that may be after an LD pre-training.
        if self.seeds is not None and self.seeds < 1:  # None: the mode's default, 0 is a mistake
            raise LocaldiscError(f"--seeds must be at least 1, not {self.seeds}")
        # A setting left to the mode is checked as it will run.
        check_size(self.run_setting("size"))
        check_max_test(self.max_test)
        check_test_fraction(self.test_fraction)
        if self.test_fraction == 0:  # finetune's "train on all": no test score to tabulate
            raise LocaldiscError(
                "--test-fraction 0 holds out no test image, and a benchmark compares test "
                "scores: give a fraction in (0, 1)"
            )
        schedule = self.finetune_config(seed=0)  # the schedule's own checks (batch, steps)
        # Every phase of 0 epochs was refused by the first fine-tuning: after the LD pre-training.
        for pretrained in {init != "random" for init in self.inits or PRESET_GRIDS[self.mode][0]}:
            training_plan(schedule, pretrained)

    @property
    def mode(self) -> str:
        """The preset whose defaults fill the settings left ``None``: quick, cpu_scale or full."""
        return "quick" if self.quick else "cpu_scale" if self.cpu_scale else "full"

    def run_setting(self, name: str) -> Any:
        """The setting ``name`` of :data:`RUN_DEFAULTS` as the runs take it: as given, else
        the mode's."""
        value = getattr(self, name)
        return RUN_DEFAULTS[self.mode][name] if value is None else value

    def finetune_config(self, seed: int) -> FinetuneConfig:
        """The fine-tuning schedule of every run, with the run's ``seed``."""
        return FinetuneConfig(
            frozen_epochs=self.run_setting("frozen_epochs"), epochs=self.run_setting("epochs"),
            batch=self.batch, steps_per_epoch=self.steps_per_epoch, seed=seed, device=self.device,
            progress=not self.quick,
        )  # fmt: skip


#: The inits named as they are: no pre-training, and the LD run the benchmark makes itself.
BUILT_IN_INITS = ("random", "ld")

PAPER_TASKS = ["drive", "stare", "chase_db1", "hrf", "scr_lung", "scr_heart", "scr_clavicle"]
#: Default (inits, tasks, labels, seeds) per mode.
PRESET_GRIDS = {
    "full": (["random"], PAPER_TASKS, ["2", "all"], 3),
    "quick": (["random", "ld"], ["synthetic_fundus", "synthetic_xray"], ["2"], 1),
    "cpu_scale": (["random", "ld"], ["drive"], ["2"], 3),
}


def default_data_root() -> str | None:
    return os.environ.get("LOCALDISC_DATA")


def _fraction_key(text: str) -> str:
    """``text`` as a float's shortest spelling where it reads as one (``.5``, ``0.50`` ->
    ``0.5``), else in lower case (``ALL``)."""
    try:
        return repr(float(text))
    except ValueError:
        return text.lower()


def preset(config: BenchmarkConfig) -> BenchmarkConfig:
    """Apply ``--quick`` / ``--cpu-scale`` over the defaults (explicit choices stay; both run on
    the CPU, so another ``--device`` is refused)."""
    if config.quick and config.cpu_scale:
        raise LocaldiscError("--quick and --cpu-scale are exclusive")
    refuse_device(config.quick, config.cpu_scale, config.device)
    mode = config.mode
    inits, tasks, labels, seeds = PRESET_GRIDS[mode]
    # One budget given twice ("2,2", "2,02", "all,ALL": one to labelled_count) would list each
    # run twice and count it as two seeds, or train it twice: kept once, a number as a number
    # ("02" as "2", its runs' folder labels-2), a fraction or a word as first spelt ("0.5,.5":
    # one, in labels-0.5).
    once: dict[str, str] = {}
    for budget in config.labels or labels:
        text = str(budget).strip()
        number = str(int(text)) if text.isdecimal() else None  # not "²": int() refuses it
        once.setdefault(number or _fraction_key(text), number or budget)
    config = replace(
        config,
        inits=config.inits or inits,
        tasks=config.tasks or tasks,
        labels=list(once.values()),
        seeds=seeds if config.seeds is None else config.seeds,
        **{name: config.run_setting(name) for name in RUN_DEFAULTS[mode]},
    )
    if config.quick:
        return replace(config, device="cpu", pretrain={**QUICK_PRETRAIN, **config.pretrain})
    if config.cpu_scale:
        # The CPU-scale comparison: 4 + 4 minutes of LD pre-training at 128 x 128 with 2
        # items per step on the first 1 000 KaggleDR images, then DRIVE at 256 x 256. The crops
        # are native-scale (20-35% of a 256-pixel image, so vessels are as wide as in DRIVE at
        # 256), not the whole image shrunk to 128: better on average, frozen and fine-tuned, in
        # the CPU-scale transfer runs of benchmarks/RESULTS.md.
        kaggle = Path(config.data_root or ".") / "KaggleDR" / "images"
        return replace(
            config, device="cpu",
            pretrain={
                "data": [str(kaggle)], "max_images": 1000, "stage1_steps": 20_000,
                "stage2_steps": 80_000, "stage1_seconds": 240.0, "stage2_seconds": 240.0,
                "batch": 2, "size": 128, "pool_size": 256, "crop_scale": (0.2, 0.35),
                "workers": 2, **config.pretrain,
            },
        )  # fmt: skip
    return config


def run_benchmark(
    config: BenchmarkConfig,
    out_dir: str | Path,
    *,
    log: Callable[[str], None] = print,
    plan: TaskPlan | None = None,
    left_out: Collection[str] = (),
) -> dict[str, Any]:
    """Run the grid, write ``results.json``, ``results.md`` and figures; return the results.

    ``plan``: :func:`plan_tasks`'s for this config, when the caller has planned already
    (``benchmark pretrain-methods``, to choose its pools): the tasks are not read again.
    ``left_out``: inits of ``config.inits`` not to run (``benchmark pretrain-methods``'s methods
    whose pre-training diverged), labelled with the others all the same: the others' labels,
    and so their run folders, stay those the caller checked."""
    from localdisc.eval.provenance import environment
    from localdisc.eval.report import write_report

    config = preset(config)
    out_dir = Path(out_dir)
    env = environment(config.device, amp=True)  # at the start, before any training
    # Before the LD pre-training: a mistyped folder is said at once, not an hour later.
    tasks, skipped, own = plan if plan is not None else plan_tasks(config, log, out_dir)
    skipped = list(skipped)  # the runs' skips are added: the caller's plan stays as planned
    inits = init_labels(config.inits, out_dir / "runs")
    inits = {label: init for label, init in inits.items() if init not in left_out}
    pretrain_dir = out_dir / "pretrain"
    ld = inits.get("ld") == "ld"  # not a run folder that happens to be called ld
    settings = {"device": config.device, "progress": not config.quick, **config.pretrain}
    # Each init's modality, now: a mistyped path (or "ld" without a preset) is said before any
    # training, not after the LD pre-training and the runs of the inits before it.
    modalities = {
        label: init_modality(init) for label, init in inits.items() if not (ld and label == "ld")
    }
    if ld:
        modalities["ld"] = check_preset(settings, pretrain_dir).modality
        # As its runs' config.json names it once it is made (TransferConfig: absolute).
        inits["ld"] = str(pretrain_dir.resolve())
    # Every run folder, now: before the LD pre-training and the fine-tunings before it.
    grid, mismatched = plan_grid(config, tasks, inits, modalities, out_dir)
    skipped += mismatched
    pretrained = None  # the LD pre-training's config.json: where it was made
    # The built-in init only: a run folder named ld (pretrain-methods' LD run) is made already.
    if ld and any(label == "ld" for _, label, *_ in grid):
        try:
            pretrain_preset(settings, pretrain_dir, log)
        except DivergedError as exc:  # the init ld is left out, listed: the others' runs go on
            log(f"leaving the init ld out: its pre-training diverged: {exc}")
            for task_label in dict.fromkeys(run[0].label for run in grid if run[1] == "ld"):
                skipped.append({"task": task_label, "init": "ld",
                                "reason": f"its pre-training diverged: {exc}"})  # fmt: skip
            grid = [run for run in grid if run[1] != "ld"]
        else:
            # Its weights exist now: runs of an earlier pre-training in this folder (deleted and
            # made again) are refused before the first fine-tuning, not when the loop gets there.
            _check_run_folders(config, [run for run in grid if run[1] == "ld"])
            if (pretrain_dir / "config.json").is_file():
                pretrained = json.loads((pretrain_dir / "config.json").read_text())
    elif ld:  # all tasks skipped for want of data, or of another modality: minutes for nothing
        log(f"no task to run is {modalities['ld']}; not pre-training the init ld")

    runs: list[dict[str, Any]] = []
    # With --skip-bad, each data set's unreadable images, found by its first run (not one reused):
    # its other runs leave them out without reading every image again (run_transfer).
    unreadable: dict[str, list[tuple[str, Path, str]]] = {}
    for task, label, init, labels, seed, run_dir in grid:
        try:
            metrics = _run_one(config, task, init, labels, seed, run_dir, log, unreadable)
        except DivergedError as exc:  # one seed's: the grid's other runs are not lost to it
            log(f"skipped {task.label} {label} labels-{labels} seed-{seed}: {exc}")
            skipped.append(
                {
                    "task": task.label, "init": label, "labels": labels, "seed": seed,
                    "run_dir": str(run_dir), "reason": str(exc),
                }
            )  # fmt: skip
            continue
        runs.append(
            {
                "task": task.label, "init": label, "labels": labels, "seed": seed,
                "run_dir": str(run_dir), "metrics": metrics,
            }
        )  # fmt: skip
    results = {"config": asdict(config), "environment": env, "runs": runs, "skipped": skipped}
    if own:  # what each own set's label stands for, in results.md too
        results["own_tasks"] = own
    if pretrained is not None:  # a reused one may be an earlier call's, at another commit
        results["ld_pretrain"] = {
            "run_dir": str(pretrain_dir), "environment": pretrained.get("environment"),
            "resumed": pretrained.get("resumed", []),
        }  # fmt: skip
    write_report(results, out_dir)
    return results


def plan_grid(
    config: BenchmarkConfig,
    tasks: list[PlannedTask],
    inits: dict[str, str],
    modalities: dict[str, str | None],
    out_dir: Path,
) -> tuple[list[tuple[PlannedTask, str, str, str, int, Path]], list[dict[str, str]]]:
    """The runs of ``config`` (preset) into ``out_dir``, in run order: each (task, init label,
    init, labels, seed, run folder); and the (task, init) pairs skipped, with why: an init
    pre-trained on another modality than the task's.

    ``inits``: by label (:func:`init_labels`); ``modalities``: each label's (``None``: random).
    Every run folder is checked first: one holding a run of other settings is refused before any
    training (an LD pre-training, the fine-tunings before it), which its advice (another --out)
    would discard. An init still to be made is named as its runs' config.json will name it
    (absolute, links resolved), its modality given: ``benchmark pretrain-methods`` checks its
    grid before its pre-trainings."""
    grid: list[tuple[PlannedTask, str, str, str, int, Path]] = []
    skipped: list[dict[str, str]] = []
    for task in tasks:
        for label, init in inits.items():
            if modalities[label] not in (None, task.modality):
                guessed = task.given_modality is None and parse_data_spec(task.spec)[0] == "folder"
                reason = (
                    f"{init} was pre-trained on {modalities[label]} images, {task.label} is "
                    f"{task.modality}"
                    + (
                        f" (guessed from its images; {modalities[label]}=FOLDER in --tasks "
                        "names it: red-free fundus photographs are grey)"
                        if guessed
                        else ""
                    )
                )
                skipped.append({"task": task.label, "init": label, "reason": reason})
                continue
            for labels in config.labels:
                for seed in range(config.seeds):
                    run_dir = (
                        out_dir / "runs" / task.label / label / f"labels-{labels}" / f"seed-{seed}"
                    )
                    grid.append((task, label, init, labels, seed, run_dir))
    _check_run_folders(config, grid)
    return grid, skipped


def _check_run_folders(
    config: BenchmarkConfig, runs: list[tuple[PlannedTask, str, str, str, int, Path]]
) -> None:
    """Raise unless each of ``runs`` (:func:`plan_grid`'s) is free for its fine-tuning or holds
    it (:func:`~localdisc.tasks.transfer._check_out_dir`), naming every folder refused at once:
    an init trained again refuses all its runs, which were named one per call."""
    refused: list[LocaldiscError] = []
    for task, _, init, labels, seed, run_dir in runs:
        try:
            _check_out_dir(run_dir, _transfer_config(config, task, init, labels, seed), FLAGS)
        except LocaldiscError as exc:
            refused.append(exc)
    if len(refused) == 1:
        raise refused[0]
    if refused:
        raise LocaldiscError(
            f"{len(refused)} run folders cannot be used:\n" + "\n".join(f"- {r}" for r in refused)
        )


@dataclass(frozen=True)
class PlannedTask:
    """A task of a benchmark with its data: ``label`` names its run folders and table columns."""

    label: str
    spec: str
    target: str
    modality: str
    test_fraction: float = FOLDER_TEST_FRACTION  # taken by a set without a test split only
    given_modality: str | None = None  # an own set's MODALITY= (given_modality); None: guessed


#: The forms of a data set of one's own in ``--tasks``.
OWN_FORMS = "a folder (images and masks, as finetune --dataset takes it) or NAME:ROOT[:TARGET]"


def own_set(entry: str) -> tuple[str, str | None]:
    """``(data spec, target)`` of a ``--tasks`` entry naming a data set of one's own, without its
    ``MODALITY=`` (:func:`given_modality`).

    A folder (colons and all) has one target. ``NAME:ROOT[:TARGET]`` is a known set, its target
    written as prior specs write it (:func:`~localdisc.data.datasets.split_target`); ``None``:
    the set's default.
    """
    try:
        return split_target(given_modality(entry)[1])
    except DatasetError as exc:  # a mistyped target
        raise DatasetError(f"--tasks {entry}: {exc}") from None


def given_modality(entry: str) -> tuple[str | None, str]:
    """``(modality, rest)`` of a ``--tasks`` entry: ``fundus=`` or ``xray=`` before a set of
    one's own names its images' modality, as ``finetune --modality`` does (``None``: none
    given, a folder's guessed from its images); ``--pool`` is written so too."""
    prefix, sep, rest = entry.partition("=")
    return (prefix, rest) if sep and prefix in ("fundus", "xray") else (None, entry)


def _is_bare_word(entry: str) -> bool:
    """Whether ``entry`` reads as a name rather than a path (no folder separator, no ``~`` or
    ``.`` start): one that is no task and no folder is a mistyped task name."""
    return not any(c in entry for c in "/\\") and not entry.startswith(("~", "."))


def _label_parts(spec: str, target: str | None) -> tuple[list[str], str]:
    """The folders of an own set's ROOT, last one last (a generated set: its spec), and the
    suffix its label takes (``-TARGET`` when one was given)."""
    name, root = parse_data_spec(spec)
    suffix = f"-{target}" if target else ""
    if root is None or not dataset_class(name).requires_root:
        return [spec.replace(":", "-")], suffix  # synthetic_xray:40: synthetic_xray-40
    path = Path(absolute_path(str(root)))
    return list(path.parts[1:] if path.is_absolute() else path.parts) or [str(root)], suffix


def stable_labels(
    entries: list[str],
    candidates: dict[str, list[str]],
    found: dict[str, int],
    taken: Callable[[str], bool],
    reserved: Collection[str] = (),
) -> tuple[dict[str, str], list[str]]:
    """Labels that stay as an ``--out`` grows (:func:`task_labels`, :func:`init_labels`).

    An entry without ``candidates`` is labelled by itself (a task's name, ``random``). One with
    them (shortest first: a folder's name, then with its parents) takes the first that no other
    entry takes, that is not ``reserved`` (lower case) and that has no earlier runs (``taken``);
    but one whose earlier runs are under its candidate ``found[entry]`` keeps that, so that its
    runs are reused, unless another entry's runs are there too or it is an entry's own name.
    Labels are compared in any letter case: runs/DRIVE and runs/drive are one folder on macOS
    and Windows. Returns the labels, in ``entries`` order, and the entries that still share a
    label or have a reserved one (out of candidates), for the caller to refuse.
    """
    once = Counter(candidates[e][d].lower() for e, d in found.items())
    names = {e.lower() for e in entries if e not in candidates} | set(reserved)
    kept = {
        e: d
        for e, d in found.items()
        if once[label := candidates[e][d].lower()] == 1 and label not in names
    }
    depth = {e: kept.get(e, 0) for e in candidates}
    while True:
        labels = {e: candidates[e][depth[e]] if e in candidates else e for e in entries}
        count = Counter(label.lower() for label in labels.values())
        clash = [
            e for e in candidates if count[labels[e].lower()] > 1 or labels[e].lower() in reserved
        ]
        deeper = [
            e
            for e in candidates
            if e not in kept
            and (e in clash or taken(labels[e]))
            and depth[e] < len(candidates[e]) - 1
        ]
        if not deeper:
            return labels, clash
        for e in deeper:
            depth[e] += 1


def task_labels(
    entries: list[str], own: dict[str, tuple[str, str | None]], runs: Path | None = None
) -> dict[str, str]:
    """Each ``--tasks`` entry's label: a task's name, or an own set's folder name (with
    ``-TARGET`` when a target is given). As :func:`init_labels` names inits, parent folders are
    added while two own sets would share a label, or one would take a task's name (whose runs
    another benchmark into this ``--out`` may have left). Entries that still share a label name
    one folder twice, and are refused.

    ``runs``: the ``OUT/runs`` of earlier calls. A set with runs there keeps their label, the
    shortest where it has several: labels stay as a table grows (a second ``lungs`` folder added
    later relabelled the first ``a/lungs``, and its finished runs were redone). A new set takes
    no label that has runs there. Where two sets' runs are under one label, neither keeps it.
    """
    parts = {e: _label_parts(*own[e]) for e in own}
    candidates = {
        e: ["/".join(folders[-d:]) + suffix for d in range(1, len(folders) + 1)]
        for e, (folders, suffix) in parts.items()
    }

    records = _earlier_runs(runs, "dataset", absolute_data_spec) if runs else []

    @cache
    def ran(label: str) -> set[str]:  # the data sets with runs under this label
        head = tuple(label.split("/"))
        return {data for folders, data in records if folders[: len(head)] == head}

    def earlier(e: str) -> int | None:  # the candidate of this set's runs' label, if any
        data = absolute_data_spec(own[e][0])
        for d, label in enumerate(candidates[e]):
            if label.lower() not in TASKS and data in ran(label):
                return d
        return None

    found = {e: d for e in own if (d := earlier(e)) is not None}
    labels, clash = stable_labels(entries, candidates, found, lambda label: bool(ran(label)), TASKS)
    for e in clash:
        same = [other for other in entries if labels[other].lower() == labels[e].lower()]
        why = "a task's name" if len(same) == 1 else "one folder named twice?"
        raise LocaldiscError(
            f"--tasks: {' and '.join(same)} would be labelled {labels[e]!r} ({why}); list each "
            "data set once, or link it under another folder name"
        )
    return labels


def init_labels(inits: list[str], runs: Path | None = None) -> dict[str, str]:
    """Each init by its label, as run folders and tables name it: ``random`` and ``ld`` as they
    are, an LD run (or weight file) by its folder's name, with parent folders added while two
    would share a label (where one parent tells them apart, the names of
    :func:`~localdisc.tasks.presets.run_label`). One init named twice (two spellings of one
    path) is run once.

    ``runs``: the ``OUT/runs`` of earlier calls. An init with runs there (of any task) keeps
    their label: labels stay as a table grows (a second ``myld`` run added later relabelled the
    first ``x/myld``, and its finished runs were redone). A new init takes no label that has
    runs there. Where two inits' runs are under one label, neither keeps it.
    """
    unique: dict[str, str] = {}  # each init once, by its absolute path, as config.json names it
    for init in inits:
        unique.setdefault(init if init in BUILT_IN_INITS else absolute_init(init), init)
    entries = list(unique.values())
    candidates = {}
    for init in entries:
        if init not in BUILT_IN_INITS:
            # As typed (links kept: runs/latest is "latest"), made absolute for its parents.
            path = Path(os.path.abspath(Path(init).expanduser()))
            folders = path.parts[1:] or (str(path),)
            candidates[init] = ["/".join(folders[-d:]) for d in range(1, len(folders) + 1)]
    records = _earlier_runs(runs, "init", absolute_init) if runs else []

    @cache
    def ran(label: str) -> set[str]:  # the inits with runs under this label, after a task's
        tail = tuple(label.split("/"))
        return {
            i
            for folders, i in records
            if len(folders) > len(tail) and folders[-len(tail) :] == tail
        }

    def earlier(init: str) -> int | None:  # the candidate of this init's runs' label, if any
        # Longest first: runs of x/myld are also under "myld" read as of a task ending in x.
        mine = absolute_init(init)
        for d in reversed(range(len(candidates[init]))):
            if mine in ran(candidates[init][d]):
                return d
        return None

    found = {i: d for i in candidates if (d := earlier(i)) is not None}
    labels, clash = stable_labels(entries, candidates, found, lambda label: bool(ran(label)))
    if clash:
        same = [i for i in entries if labels[i].lower() == labels[clash[0]].lower()]
        raise LocaldiscError(
            f"--inits: {' and '.join(same)} would share the label {labels[clash[0]]!r}; link one "
            "under another folder name"
        )
    return {labels[i]: i for i in entries}


def _earlier_runs(
    runs: Path, key: str, absolute: Callable[[str], str]
) -> list[tuple[tuple[str, ...], str]]:
    """Each fine-tuning in ``runs`` (``OUT/runs``): the folders of its ``TASK/INIT`` labels and
    the ``key`` (``dataset``, ``init``) its ``config.json`` names, made ``absolute`` (as
    :class:`~localdisc.tasks.transfer.TransferConfig` saves it). A record that cannot be read
    is none."""
    found = []
    for record in runs.glob("**/labels-*/seed-*/config.json"):
        try:
            value = absolute(json.loads(record.read_text())["transfer"][key])
        except (OSError, ValueError, KeyError, TypeError, LocaldiscError):
            continue
        found.append((record.parents[2].relative_to(runs).parts, value))
    return found


#: :func:`plan_tasks`'s answer: the tasks to run, the paper tasks skipped (with why), and what
#: each own set's label stands for.
TaskPlan = tuple[list[PlannedTask], list[dict[str, str]], dict[str, str]]


def plan_tasks(
    config: BenchmarkConfig, log: Callable[[str], None], out_dir: Path | None = None
) -> TaskPlan:
    """The tasks to run, in ``config.tasks`` order; the paper tasks skipped for want of data
    under ``config.data_root``, with the reason; and what each own set's label stands for (one with
    runs in ``out_dir`` keeps their label: :func:`task_labels`).

    An own set is checked first and refused with the problem (no such folder, no masks, a
    ``--labels`` budget beyond its training images, too few images to hold some out): the user
    named it, so leaving it out of the table would hide a typing error. A paper task with data
    is refused for a ``--labels`` budget beyond its training split too, before any work: its
    runs would fail at that budget, after those of the budgets before it.
    """
    entries = list(dict.fromkeys(config.tasks or []))
    own = {e: own_set(e) for e in entries if e not in TASKS}
    unknown = [
        e
        for e, (spec, _) in own.items()
        if parse_data_spec(spec)[0] == "folder"
        and _is_bare_word(bare := given_modality(e)[1])
        and not Path(bare).exists()
    ]
    if unknown:
        # A folder named fundus=2020 is read as the modality and the folder 2020.
        prefixed = [e for e in unknown if given_modality(e)[0] and Path(e).exists()]
        hint = (
            f"; {prefixed[0]} is read as MODALITY=FOLDER: write a folder so named as "
            f"./{prefixed[0]}"
            if prefixed
            else ""
        )
        raise LocaldiscError(
            f"unknown task(s) {', '.join(unknown)}: no task and no folder of that name; known "
            f"tasks: {', '.join(TASKS)}; a data set of your own is {OWN_FORMS}{hint}"
        )
    checked = {
        e: _check_own(e, spec, target, config, given_modality(e)[0])
        for e, (spec, target) in own.items()
    }
    data_root = Path(config.data_root).expanduser() if config.data_root else None
    labels = task_labels(entries, own, out_dir / "runs" if out_dir else None)

    tasks: list[PlannedTask] = []
    skipped: list[dict[str, str]] = []
    about: dict[str, str] = {}
    for entry in entries:
        label = labels[entry]
        if entry in checked:
            task, about[label] = checked[entry]
            tasks.append(replace(task, label=label))
            continue
        paper = TASKS[entry]
        try:
            spec = paper.spec(data_root, config.quick)
            train, _, _ = load_task_data(spec, paper.target)
        except LocaldiscError as exc:
            log(f"skipped {entry}: {exc}")
            skipped.append({"task": entry, "init": "all", "reason": str(exc)})
            continue
        task = PlannedTask(entry, spec, paper.target, paper.modality)
        # Every paper task has a test split: all its training images may be labelled.
        _check_labels(f"task {entry}", config.labels or [], len(train))
        tasks.append(task)
    return tasks, skipped, about


def _check_own(
    entry: str, spec: str, target: str | None, config: BenchmarkConfig, modality: str | None
) -> tuple[PlannedTask, str]:
    """An own set as a task (labelled later) and a line on it, or the error naming it.
    ``modality``: the entry's ``MODALITY=`` (:func:`given_modality`)."""
    name = parse_data_spec(spec)[0]
    try:
        train, test, target = load_task_data(spec, target, modality)
    except LocaldiscError as exc:  # names the folder and the problem
        raise DatasetError(f"--tasks: {exc}") from None
    fraction = FOLDER_TEST_FRACTION if test is not None else config.test_fraction
    unlabelled, held = 0, ""
    if test is not None:
        pool = len(train)
        split = f"its own test split ({len(test)} images)"
    else:  # as run_transfer splits it: a folder's images without a mask are unlabelled
        try:
            pool_idx, test_idx, unlabelled_idx = held_out_split(train, target, fraction)
        except LocaldiscError as exc:
            raise LocaldiscError(f"--tasks {entry}: {exc}") from None
        pool, k, unlabelled = len(pool_idx), len(test_idx), len(unlabelled_idx)
        images = f"{pool + k}{' labelled' if unlabelled else ''} images"
        without = f"; {unlabelled} of its {len(train)} have no mask" if unlabelled else ""
        held = (
            f" ({k} of its {images} held out for testing{without}; --test-fraction sets how many)"
        )
        split = (
            f"no test split: {k} of its {images} held out for testing, chosen by file name "
            "(the same for every init, label budget and seed)"
        )
    if unlabelled:
        split += (
            f"; {unlabelled} of its {len(train)} images have no mask: unlabelled, never tested "
            "or trained on (batch norm is recalibrated over them)"
        )
    _check_labels(f"--tasks {entry}", config.labels or [], pool, held)
    # The modality the segmenter is built for, as finetune builds it (a folder's: guessed from
    # its images, grey ones being X-rays), so an init of another is skipped, not refused mid-run.
    guessed = " (guessed from its images)" if name == "folder" and modality is None else ""
    line = f"{absolute_data_spec(spec)}, target {target}, {train.modality}{guessed}; {split}"
    return PlannedTask(entry, spec, target, train.modality, fraction, modality), line


def _check_labels(task: str, labels: list[str], available: int, why: str = "") -> None:
    """Refuse, naming ``task``, a ``--labels`` budget that its ``available`` training images
    cannot give (``why``: what left them so few): said now, not when its runs come."""
    for budget in labels:
        try:
            labelled_count(budget, available)
        except LocaldiscError as exc:
            raise LocaldiscError(f"{task}: {exc}{why}") from None


def _run_one(
    config: BenchmarkConfig,
    task: PlannedTask,
    init: str,
    labels: str,
    seed: int,
    run_dir: Path,
    log: Callable[[str], None],
    unreadable: dict[str, list[tuple[str, Path, str]]] | None = None,
) -> dict[str, Any]:
    transfer = _transfer_config(config, task, init, labels, seed)
    # A finished run with these settings is reused; one with others is refused, naming them
    # by this command's flags.
    return unless_diverged(
        run_dir,
        lambda: run_transfer(transfer, run_dir, log=log, flags=FLAGS, unreadable=unreadable),
        finished=(run_dir / "metrics.json").is_file(),  # finished since it diverged: reused
    )


def _transfer_config(
    config: BenchmarkConfig, task: PlannedTask, init: str, labels: str, seed: int
) -> TransferConfig:
    """The fine-tuning of one cell of the grid (its run folder is checked against it first)."""
    return TransferConfig(
        task.spec, task.target, init, labels, config.size, max_test=config.max_test,
        test_fraction=task.test_fraction, skip_bad=config.skip_bad,
        modality=task.given_modality, train=config.finetune_config(seed),
    )  # fmt: skip
