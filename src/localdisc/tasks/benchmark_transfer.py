"""``localdisc benchmark transfer``: every (task, init, labels, seed) with data, one table.

Each run is a :func:`~localdisc.tasks.transfer.run_transfer` into
``OUT/runs/TASK/INIT/labels-L/seed-S``; a run whose ``metrics.json`` exists is reused, so an
interrupted benchmark continues where it stopped. Tasks whose data are missing are reported as
skipped with the reason. The init ``ld`` pre-trains an LD model first with the preset of the mode
(``--quick``: a few steps on synthetic images; ``--cpu-scale``: 4 + 4 minutes on KaggleDR), so
that a whole comparison is one command.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from localdisc.engine.finetune import FinetuneConfig
from localdisc.errors import LocaldiscError
from localdisc.tasks.presets import QUICK_PRETRAIN, pretrain_preset, run_label
from localdisc.tasks.transfer import (
    TransferConfig,
    check_size,
    check_task_data,
    init_modality,
    run_transfer,
)

#: This command's flag for each run setting it sets, named when a run folder holds a run with
#: other settings (tasks.transfer.FLAGS are ``finetune``'s: ``--batch`` or ``--lr``, which this
#: command has not). The rest (the batch, a --quick run's max_test, the data set's folder) are
#: named as settings: to run with other ones, use another --out or delete the run folder.
FLAGS = {
    "init": "--inits", "labels": "--labels", "size": "--size",
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


@dataclass
class BenchmarkConfig:
    """What to run; ``quick`` and ``cpu_scale`` are presets applied by :func:`preset`.

    ``None`` lists take the mode's defaults (see :data:`PRESET_GRIDS`).
    """

    inits: list[str] | None = None
    tasks: list[str] | None = None
    labels: list[str] | None = None
    seeds: int | None = None
    data_root: str | None = None
    size: int = 512
    frozen_epochs: int = 100
    epochs: int = 100
    batch: int = 2
    steps_per_epoch: int | None = None  # None: one pass over the labelled images per epoch
    device: str = "auto"
    max_test: int | None = None
    quick: bool = False
    cpu_scale: bool = False
    # LD pre-training run for the init "ld" (PretrainConfig fields).
    pretrain: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Checked here, not when the first run starts: that may be after an LD pre-training.
        if self.seeds is not None and self.seeds < 1:  # None: the mode's default, 0 is a mistake
            raise LocaldiscError(f"--seeds must be at least 1, not {self.seeds}")
        check_size(self.size)
        self.finetune_config(seed=0)  # the schedule's own checks (epochs, batch, steps)

    def finetune_config(self, seed: int) -> FinetuneConfig:
        """The fine-tuning schedule of every run, with the run's ``seed``."""
        return FinetuneConfig(
            frozen_epochs=self.frozen_epochs, epochs=self.epochs, batch=self.batch,
            steps_per_epoch=self.steps_per_epoch, seed=seed, device=self.device,
            progress=not self.quick,
        )  # fmt: skip


PAPER_TASKS = ["drive", "stare", "chase_db1", "hrf", "scr_lung", "scr_heart", "scr_clavicle"]
#: Default (inits, tasks, labels, seeds) per mode.
PRESET_GRIDS = {
    "full": (["random"], PAPER_TASKS, ["2", "all"], 3),
    "quick": (["random", "ld"], ["synthetic_fundus", "synthetic_xray"], ["2"], 1),
    "cpu_scale": (["random", "ld"], ["drive"], ["2"], 3),
}


def default_data_root() -> str | None:
    return os.environ.get("LOCALDISC_DATA")


def preset(config: BenchmarkConfig) -> BenchmarkConfig:
    """Apply ``--quick`` / ``--cpu-scale`` over the defaults (explicit choices stay)."""
    if config.quick and config.cpu_scale:
        raise LocaldiscError("--quick and --cpu-scale are exclusive")
    mode = "quick" if config.quick else "cpu_scale" if config.cpu_scale else "full"
    inits, tasks, labels, seeds = PRESET_GRIDS[mode]
    config = replace(
        config,
        inits=config.inits or inits,
        tasks=config.tasks or tasks,
        labels=config.labels or labels,
        seeds=seeds if config.seeds is None else config.seeds,
    )
    if config.quick:
        return replace(
            config, size=64, frozen_epochs=2, epochs=2, max_test=2, device="cpu",
            pretrain={**QUICK_PRETRAIN, **config.pretrain},
        )  # fmt: skip
    if config.cpu_scale:
        # The CPU-scale comparison: 4 + 4 minutes of LD pre-training at 128 x 128 with 2
        # items per step on the first 1 000 KaggleDR images, then DRIVE at 256 x 256. The crops
        # are native-scale (20-35% of a 256-pixel image, so vessels are as wide as in DRIVE at
        # 256), not the whole image shrunk to 128: better on average, frozen and fine-tuned, in
        # the CPU-scale transfer runs of benchmarks/RESULTS.md.
        kaggle = Path(config.data_root or ".") / "KaggleDR" / "images"
        return replace(
            config, size=256, device="cpu",
            pretrain={
                "data": [str(kaggle)], "max_images": 1000, "stage1_steps": 20_000,
                "stage2_steps": 80_000, "stage1_seconds": 240.0, "stage2_seconds": 240.0,
                "batch": 2, "size": 128, "pool_size": 256, "crop_scale": (0.2, 0.35),
                "workers": 2, **config.pretrain,
            },
        )  # fmt: skip
    return config


def run_benchmark(
    config: BenchmarkConfig, out_dir: str | Path, *, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run the grid, write ``results.json``, ``results.md`` and figures; return the results."""
    from localdisc.eval.provenance import environment
    from localdisc.eval.report import write_report

    config = preset(config)
    out_dir = Path(out_dir)
    env = environment(config.device)  # at the start, before any training
    unknown = [t for t in config.tasks if t not in TASKS]
    if unknown:
        raise LocaldiscError(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
    data_root = Path(config.data_root).expanduser() if config.data_root else None
    inits = {run_label(i, config.inits): i for i in config.inits}
    if inits.get("ld") == "ld":  # not a run folder that happens to be called ld
        settings = {"device": config.device, "progress": not config.quick, **config.pretrain}
        inits["ld"] = str(pretrain_preset(settings, out_dir / "pretrain", log))

    runs: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for task_name in config.tasks:
        task = TASKS[task_name]
        try:
            spec = task.spec(data_root, config.quick)
            check_task_data(spec, task.target)
        except LocaldiscError as exc:
            log(f"skipped {task_name}: {exc}")
            skipped.append({"task": task_name, "init": "all", "reason": str(exc)})
            continue
        for label, init in inits.items():
            modality = init_modality(init)
            if modality not in (None, task.modality):
                reason = (
                    f"{init} was pre-trained on {modality} images, {task_name} is {task.modality}"
                )
                skipped.append({"task": task_name, "init": label, "reason": reason})
                continue
            for labels in config.labels:
                for seed in range(config.seeds):
                    run_dir = (
                        out_dir / "runs" / task_name / label / f"labels-{labels}" / f"seed-{seed}"
                    )
                    metrics = _run_one(config, task, spec, init, labels, seed, run_dir, log)
                    runs.append(
                        {
                            "task": task_name, "init": label, "labels": labels, "seed": seed,
                            "run_dir": str(run_dir), "metrics": metrics,
                        }
                    )  # fmt: skip
    results = {"config": asdict(config), "environment": env, "runs": runs, "skipped": skipped}
    write_report(results, out_dir)
    return results


def _run_one(
    config: BenchmarkConfig,
    task: Task,
    spec: str,
    init: str,
    labels: str,
    seed: int,
    run_dir: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    transfer = TransferConfig(
        spec, task.target, init, labels, config.size, max_test=config.max_test,
        train=config.finetune_config(seed),
    )  # fmt: skip
    # A finished run with these settings is reused; one with others is refused, naming them
    # by this command's flags.
    return run_transfer(transfer, run_dir, log=log, flags=FLAGS)
