"""``localdisc benchmark pretrain-methods``: LD against peer pre-training methods, fairly.

Every method pre-trains the same network (VGG16-BN quarter width, METHOD.md 1) on the same pool
for the same wall-clock budget; LD splits its budget 1:4 between its two stages (as the published
20 000 + 80 000 steps), a peer runs one stage for all of it. The steps and images each reached
are reported beside the table. Then the transfer benchmark
(:mod:`localdisc.tasks.benchmark_transfer`: same tasks, labels, seeds, protocol) runs with random
init as the floor and every method's encoder, into one table.

A pool is ``MODALITY=SPEC`` (``fundus=KaggleDR/images``, ``xray=jsrt_scr:/data``) or a bare spec
(fundus, unless it names an X-ray data set), one per modality; each method pre-trains once per
pool, and each task uses the pool of its modality (``--quick``: 8 generated images of each
modality a task has): a data set of one's own in ``--tasks`` has the one it is written with
(``fundus=FOLDER``) or else its loader's (a folder's: guessed from its images), the tasks being
planned once, as the transfer benchmark plans them, before any pre-training. Finished
pre-training runs are reused; a folder holding a run with other settings (a pre-training's, or a
fine-tuning's of the transfer grid) is refused, not reused, before the first pre-training. A
method whose pre-training diverges is left out of the tables and listed, with why; the others go
on.

``--cpu-scale`` is the comparison of ``benchmarks/RESULTS.md`` on 2 CPU cores: 240 s per method
at 128 x 128 with 2 items per step on the first 1 000 images of ``KaggleDR/images`` (fundus) and
``CXR_Kermany/train/NORMAL`` (X-ray) under ``--data-root``, then the transfer protocol of
``benchmark transfer --cpu-scale`` (256 x 256, 2 labels, 3 seeds).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from localdisc.data.datasets import DATASETS
from localdisc.engine.checkpoint import atomic_write_text
from localdisc.errors import DivergedError, LocaldiscError
from localdisc.eval.report import collect, environment_markdown, jsonable, runs_made_at
from localdisc.tasks.benchmark_transfer import (
    BenchmarkConfig,
    TaskPlan,
    given_modality,
    init_labels,
    plan_grid,
    plan_tasks,
    run_benchmark,
)
from localdisc.tasks.benchmark_transfer import preset as transfer_preset
from localdisc.tasks.presets import DIVERGED_FILE, refuse_device, unless_diverged
from localdisc.tasks.transfer import init_fingerprint, init_weights_file

METHODS = ("ld", "simclr", "densecl", "pixpro", "genesis")


@dataclass
class MethodsBenchmarkConfig:
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    pools: list[str] = field(default_factory=list)
    budget_seconds: float | None = None  # None: 200 (--cpu-scale: 240)
    # None: drive, scr_clavicle (quick: synthetic_fundus); own data sets as benchmark transfer's
    tasks: list[str] | None = None
    labels: list[str] | None = None  # None: 2, all
    seeds: int | None = None
    data_root: str | None = None
    size: int | None = None  # pre-training crop [448; --cpu-scale 128] (transfer: transfer.size)
    batch: int | None = None  # pre-training items per step [4; --cpu-scale 2]
    device: str = "auto"
    quick: bool = False
    cpu_scale: bool = False
    pretrain: dict[str, Any] = field(default_factory=dict)  # extra PretrainConfig fields
    transfer: dict[str, Any] = field(default_factory=dict)  # extra BenchmarkConfig fields


def parse_pool(spec: str) -> tuple[str, str]:
    """``(modality, data spec)`` of a ``--pool``."""
    modality, rest = given_modality(spec)
    if modality is not None:
        return modality, rest
    known = DATASETS.get(spec.partition(":")[0].lower())  # its own modality; a folder: fundus
    return (known.default_modality if known and known.default_modality else "fundus"), spec


#: ``--cpu-scale`` pools under ``--data-root`` (those of benchmarks/compare_methods.sh).
CPU_SCALE_POOLS = {"fundus": "KaggleDR/images", "xray": "CXR_Kermany/train/NORMAL"}
#: ``--cpu-scale`` fundus pools: LD's native-scale crops of ``benchmark transfer --cpu-scale``
#: (vessels as wide as in DRIVE at 256), which Models Genesis takes too; SimCLR, DenseCL and PixPro
#: keep their own, 0.2-1 (localdisc.methods).
CPU_SCALE_FUNDUS = {"pool_size": 256, "crop_scale": (0.2, 0.35)}


def cpu_scale_pools(data_root: str | None, modalities: set[str]) -> list[str]:
    """``--cpu-scale``'s pools under ``data_root`` for the tasks' ``modalities`` only: a missing
    X-ray pool must not stop DRIVE."""
    root = Path(data_root or ".")
    return [f"{m}={root / CPU_SCALE_POOLS[m]}" for m in sorted(modalities)]


#: ``--quick`` pools, a few generated images each (:func:`parse_pool` reads their modality from
#: their names): for the tasks' modalities only, as ``--cpu-scale``'s, so that an X-ray task has
#: its methods pre-trained too.
QUICK_POOLS = {"fundus": "synthetic_fundus:8", "xray": "synthetic_xray:8"}


def _given(value: Any, default: Any) -> Any:
    return default if value is None else value


def preset(config: MethodsBenchmarkConfig) -> MethodsBenchmarkConfig:
    """Apply ``--quick`` / ``--cpu-scale`` over the defaults (explicit choices stay; both run on
    the CPU, so another ``--device`` is refused)."""
    if config.quick and config.cpu_scale:
        raise LocaldiscError("--quick and --cpu-scale are exclusive")
    if config.budget_seconds is not None and not config.budget_seconds > 0:
        raise LocaldiscError(f"--budget-seconds must be positive, not {config.budget_seconds}")
    if config.quick and config.budget_seconds is not None:
        raise LocaldiscError("--quick pre-trains a few fixed steps: --budget-seconds is not for it")
    refuse_device(config.quick, config.cpu_scale, config.device)
    if config.quick:
        return replace(
            # pools: given ones, or QUICK_POOLS of the tasks' modalities (as --cpu-scale's)
            config, tasks=config.tasks or ["synthetic_fundus"], labels=config.labels or ["2"],
            seeds=_given(config.seeds, 1), size=_given(config.size, 48),
            batch=_given(config.batch, 1), device="cpu", budget_seconds=None,
            pretrain={"stage1_steps": 2, "stage2_steps": 2, "pool_size": 64, "val_images": 1,
                      "workers": 1, **config.pretrain},
        )  # fmt: skip
    tasks = config.tasks or ["drive", "scr_clavicle"]
    if config.cpu_scale:
        # pools: given ones, or those of the tasks' modalities (cpu_scale_pools), chosen by
        # run_methods_benchmark once the tasks are read (an own set's modality is its data's).
        return replace(
            config, tasks=tasks, labels=config.labels or ["2"],
            budget_seconds=_given(config.budget_seconds, 240.0), size=_given(config.size, 128),
            batch=_given(config.batch, 2), device="cpu",
            # checkpoint_every: a 4-minute run is cheaper to rerun than to checkpoint in its budget
            pretrain={"max_images": 1000, "workers": 2, "checkpoint_every": 100_000,
                      **config.pretrain},
            transfer={"size": 256, **config.transfer},
        )  # fmt: skip
    if not config.pools:
        raise LocaldiscError("give the pre-training pool(s): --pool fundus=KaggleDR/images ...")
    return replace(
        config, tasks=tasks, budget_seconds=_given(config.budget_seconds, 200.0),
        size=_given(config.size, 448), batch=_given(config.batch, 4),
    )  # fmt: skip


def _settings(config: MethodsBenchmarkConfig, method: str, modality: str, spec: str) -> dict:
    budget = config.budget_seconds  # None: --quick's fixed steps
    settings: dict[str, Any] = {
        "data": [spec], "modality": modality, "method": method, "size": config.size,
        "batch": config.batch, "device": config.device, "progress": not config.quick,
    }  # fmt: skip
    if budget is not None:  # step counts as published, the budget ends the stages
        settings.update(stage1_steps=20_000, stage2_steps=80_000,
                        stage1_seconds=budget / 5, stage2_seconds=budget * 4 / 5)  # fmt: skip
    if config.cpu_scale and modality == "fundus":
        settings.update(CPU_SCALE_FUNDUS)
    return {**settings, **config.pretrain}


def _pretrain(settings: dict[str, Any], run_dir: Path, log: Callable[[str], None]) -> dict:
    """Pre-train (or reuse) one method; returns what it reached."""
    from localdisc.engine.pretrain import PretrainConfig, pretrain, refuse_other_settings

    config = PretrainConfig(**settings)
    refuse_other_settings(run_dir, config)  # reused, another experiment's encoder in the table
    record = run_dir / "reached.json"
    if _finished(run_dir):
        log(f"reusing {run_dir}")
        return _reused(json.loads(record.read_text()), run_dir, log)
    # config.json: a run started here (stopped before its first checkpoint or not) continues
    resume = (run_dir / "config.json").is_file()
    result = unless_diverged(
        run_dir,
        lambda: pretrain(config, run_dir, resume=resume, log=log),
        finished=(run_dir / "encoder.safetensors").is_file(),  # finished by hand: read back
    )
    # Over all the run's starts, as its steps and images: a resumed run's own result counts
    # the seconds and images/s of its last start. None: an older checkpoint did not say.
    seconds = result.elapsed
    reached = {
        "steps": result.trained_steps,
        "images": result.images,
        "seconds": None if seconds is None else round(seconds, 1),
        "images_per_s": None if seconds is None else round(result.images / max(seconds, 1e-9), 2),
        "final_loss": result.final_loss,
        "seconds_of": ALL_STARTS,
    }
    atomic_write_text(record, json.dumps(jsonable(reached), indent=2))
    return reached


def _finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished pre-training of :func:`_pretrain` (reused as it is)."""
    return (run_dir / "reached.json").is_file() and (run_dir / "encoder.safetensors").is_file()


def _trains(run_dir: Path) -> bool:
    """Whether :func:`_pretrain` trains in ``run_dir``, reading its pool: not where it reuses a
    finished run, nor where it raises the divergence recorded there (:func:`unless_diverged`)."""
    if _finished(run_dir):
        return False
    recorded = (run_dir / DIVERGED_FILE).is_file()
    return not recorded or (run_dir / "encoder.safetensors").is_file()  # finished by hand


def _check_pool(settings: dict[str, Any]) -> None:
    """Refuse a pool that a pre-training of ``settings`` could not read (no such folder, no
    image, a generated set of the other modality), as its run would: its files are listed and
    one image decoded, not all of them twice."""
    from localdisc.data.pool import resolve_pool
    from localdisc.engine.pretrain import PretrainConfig

    config = PretrainConfig(**settings)
    resolve_pool(config.data, config.modality, config.resolved_pool_size, seed=config.seed,
                 workers=1, max_images=1, skip_bad=config.skip_bad,
                 log=lambda _: None)  # fmt: skip


#: What ``reached.json``'s seconds cover since they cover all of a run's starts.
ALL_STARTS = "all starts"


def _reused(reached: dict[str, Any], run_dir: Path, log: Callable[[str], None]) -> dict:
    """A ``reached.json`` read back. One written before its seconds covered all of a run's
    starts (no ``seconds_of``) has the last start's: for a resumed run they are not the run's."""
    if reached.get("seconds_of") != ALL_STARTS and reached.get("seconds") is not None:
        config = run_dir / "config.json"
        if config.is_file() and json.loads(config.read_text()).get("resumed"):
            log(f"{run_dir / 'reached.json'}: written by an older version, its seconds are the "
                "last start's of a resumed run: reported as unknown")  # fmt: skip
            reached = {**reached, "seconds": None, "images_per_s": None}
    return reached


#: The table's seconds and images/s of a run resumed from a checkpoint without its time.
UNKNOWN_TIME = "unknown (resumed from an older checkpoint)"


def reached_row(name: str, reached: dict[str, Any]) -> str:
    """The row of the pre-training table for one method's run (``_pretrain``'s record)."""
    seconds, rate = (
        (UNKNOWN_TIME, UNKNOWN_TIME)
        if reached["seconds"] is None
        else (reached["seconds"], reached["images_per_s"])
    )
    # A NaN loss (a budget that ended a resumed run before its first log row) is saved as null.
    loss = reached["final_loss"]
    return (
        f"| {name} | {reached['steps']} | {reached['images']} | {seconds} | {rate} | "
        f"{math.nan if loss is None else loss:.4f} |"
    )


def pools_by_modality(specs: list[str]) -> dict[str, str]:
    """``--pool``s by their modality (:func:`parse_pool`); two of one modality are refused,
    where the last silently replaced the first."""
    pools: dict[str, str] = {}
    given: dict[str, str] = {}
    for spec in specs:
        modality, data = parse_pool(spec)
        if modality in pools:
            raise LocaldiscError(
                f"--pool {given[modality]} and --pool {spec} are both {modality} pools: each "
                "method pre-trains on one pool per modality; give one"
            )
        pools[modality], given[modality] = data, spec
    return pools


def plan_transfer(
    transfer: BenchmarkConfig, log: Callable[[str], None], out_dir: Path | None = None
) -> TaskPlan:
    """The transfer benchmark's tasks, planned once as it plans them (:func:`plan_tasks`): their
    modalities choose the pools to pre-train on, and the plan goes to the transfer benchmark.

    Planned before the pre-trainings, so that a task it would refuse (a data set of one's own
    that cannot run, a ``--labels`` budget beyond a task's images) is refused before them, not
    after; an own set's modality is the one its loader gives (a folder's: guessed from its
    images). A paper task without data needs no pool: it is skipped (and said so, now).
    ``out_dir``: the transfer benchmark's, whose earlier runs keep their own sets' labels.
    """
    return plan_tasks(transfer_preset(transfer), log, out_dir)


def check_transfer_grid(
    config: MethodsBenchmarkConfig,
    transfer: BenchmarkConfig,
    plan: TaskPlan,
    pools: dict[str, str],
    out_dir: Path,
) -> list[str]:
    """The pre-training runs to make, as inits of the transfer benchmark (in run order), once
    its run folders are checked (:func:`plan_grid`): one holding a run of other settings (an
    earlier call's ``--labels``, ``--size``, schedule) was refused by it after every method had
    pre-trained. The runs are not made yet: each is named as its fine-tunings' config.json will
    name it (absolute, links resolved; the same name is passed on, so its label is the same)
    and has its pool's modality."""
    needed = {task.modality for task in plan[0]}
    runs = {
        str((out_dir / "pretrain" / modality / method).resolve()): modality
        for modality in pools
        if modality in needed
        for method in config.methods
    }
    # The config the transfer benchmark will run (preset), with these inits.
    grid_config = transfer_preset(replace(transfer, inits=["random", *runs]))
    inits = init_labels(grid_config.inits or [], out_dir / "transfer" / "runs")
    modalities = {label: runs.get(init) for label, init in inits.items()}  # random: None
    grid, _ = plan_grid(grid_config, plan[0], inits, modalities, out_dir / "transfer")
    if config.budget_seconds is not None:
        _refuse_orphaned_finetunings(grid, runs)
    return list(runs)


def _refuse_orphaned_finetunings(grid: list[tuple[Any, ...]], runs: dict[str, str]) -> None:
    """Refuse, before any pre-training, a fine-tuning of the ``grid`` that recorded the weights
    of a pre-training ``runs`` names whose weight file is gone (the run deleted): the run would
    train again under its time budget, to other weights (its steps depend on the machine's
    pace), and the fine-tuning would then be refused as one of other weights, minutes later.
    (At --quick's fixed steps the weights may come back the same: the check after is enough.)"""
    for _task, label, init, _labels, _seed, run_dir in grid:
        if init not in runs or init_fingerprint(init) is not None:
            continue
        try:
            recorded = json.loads((run_dir / "config.json").read_text())["init_weights"]
            old = str(recorded["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # no fine-tuning there, or one recorded before init_weights existed
        raise LocaldiscError(
            f"{run_dir}: holds a fine-tuning of the pre-training {init} (SHA-256 {old[:12]}... "
            f"of its weights), whose {init_weights_file(init)} is gone: it would pre-train again "
            "under its time budget, to other weights, and the fine-tuning would then be "
            f"refused; restore the pre-training, or delete its fine-tunings (each task's {label} "
            f"folder under {run_dir.parents[3]}), or choose another --out (nothing was deleted)"
        )


def run_methods_benchmark(
    config: MethodsBenchmarkConfig, out_dir: str | Path, *, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Pre-train every method on every pool, then one transfer table; write the report."""
    from localdisc.engine.pretrain import PretrainConfig, refuse_other_settings
    from localdisc.eval.provenance import environment

    config = preset(config)
    config = replace(config, methods=list(dict.fromkeys(config.methods)))  # each once
    out_dir = Path(out_dir)
    env = environment(config.device, amp=True)  # at the start, before any pre-training
    unknown = [m for m in config.methods if m not in METHODS]
    if unknown:
        raise LocaldiscError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    # The transfer settings are checked now (sizes, seeds, schedule), not after the pre-trainings.
    transfer = BenchmarkConfig(
        inits=["random"], tasks=config.tasks, labels=config.labels, seeds=config.seeds,
        data_root=config.data_root, device=config.device, quick=config.quick,
        **config.transfer,
    )  # fmt: skip
    pools_by_modality(config.pools)  # two of one modality: refused before the tasks are read
    plan = plan_transfer(transfer, log, out_dir / "transfer")
    needed = {task.modality for task in plan[0]}
    if config.cpu_scale and not config.pools:
        config = replace(config, pools=cpu_scale_pools(config.data_root, needed))
    if config.quick and not config.pools:
        config = replace(config, pools=[QUICK_POOLS[m] for m in sorted(needed)])
    pools = pools_by_modality(config.pools)
    # A task of a modality without a pool had the random init alone, its methods unsaid.
    unpooled = sorted({t.label for t in plan[0] if t.modality not in pools})
    if unpooled:
        missing = sorted({t.modality for t in plan[0] if t.modality not in pools})
        raise LocaldiscError(
            f"no --pool of modality {', '.join(missing)} for task(s) {', '.join(unpooled)}: "
            f"the methods would be pre-trained on nothing for them; add --pool "
            f"{missing[0]}=FOLDER|DATASET:ROOT, or leave the task out"
        )
    # Before any pre-training, each run folder holding another experiment's run, and each pool
    # a run still has to read: they were found only after the methods before them had trained.
    for modality, spec in pools.items():
        if modality not in needed:
            continue
        for method in config.methods:
            settings = _settings(config, method, modality, spec)
            refuse_other_settings(
                out_dir / "pretrain" / modality / method, PretrainConfig(**settings)
            )
        training = [m for m in config.methods if _trains(out_dir / "pretrain" / modality / m)]
        if training:
            _check_pool(_settings(config, training[0], modality, spec))
    inits = ["random", *check_transfer_grid(config, transfer, plan, pools, out_dir)]
    reached: dict[str, dict[str, Any]] = {}
    diverged: dict[str, str] = {}  # the methods left out of the tables, and why
    left_out: list[str] = []  # their inits
    records: list[dict[str, Any]] = []  # the runs' config.json: where they were made
    for modality, spec in pools.items():
        if modality not in needed:
            log(f"no task needs the {modality} pool {spec}; not pre-training on it")
            continue
        for method in config.methods:
            run_dir = out_dir / "pretrain" / modality / method
            log(f"pre-training {method} on {spec} ({modality})")
            settings = _settings(config, method, modality, spec)
            try:
                reached[f"{method} ({modality})"] = _pretrain(settings, run_dir, log)
            except DivergedError as exc:  # one method's: the others' tables are not lost to it
                log(f"leaving {method} ({modality}) out of the tables: {exc}")
                diverged[f"{method} ({modality})"] = str(exc)
                left_out.append(str(run_dir.resolve()))  # as check_transfer_grid named it
                continue
            if (run_dir / "config.json").is_file():
                records.append(json.loads((run_dir / "config.json").read_text()))
    results = run_benchmark(
        replace(transfer, inits=inits), out_dir / "transfer", log=log, plan=plan,
        left_out=left_out,
    )  # fmt: skip
    summary = {"config": asdict(config), "environment": env, "pretraining": reached,
               "diverged": diverged, "transfer": collect(results)}  # fmt: skip
    atomic_write_text(out_dir / "results.json", json.dumps(jsonable(summary), indent=2))
    lines = [
        "# Pre-training methods: same network, pool, budget and transfer protocol",
        "",
        (
            "Budget per method: --quick, fixed steps (the table's)"
            if config.budget_seconds is None
            else f"Budget per method: {config.budget_seconds:.0f} s of pre-training; LD: 1:4 "
            "between its stages"
        )
        + ". Rows of the transfer tables are named by the method's run "
        "folder (its name is the method; MODALITY/METHOD with two pools, but a method that has "
        "runs under its name from an earlier call keeps it); `random` is the floor: "
        "no pre-training, the network trained from scratch.",
        "",
        "| method (pool) | steps | images | seconds | images/s | final loss |",
        "|---|---|---|---|---|---|",
    ]
    lines += [reached_row(name, r) for name, r in reached.items()]
    if diverged:
        lines += ["", "Diverged, not in the tables (leave it out with --methods, or try another "
                  "--pretrain-seed and --out):", ""]  # fmt: skip
        lines += [f"- {name}: {why}" for name, why in diverged.items()]
    made_at = runs_made_at(records, env, what="Pre-training runs")
    if made_at:  # reused runs of earlier calls: their commits, not only this call's
        lines += ["", made_at]
    # The transfer report ends with the environment of its part; this one, of the whole.
    lines += ["", (out_dir / "transfer" / "results.md").read_text(), environment_markdown(env), ""]
    atomic_write_text(out_dir / "results.md", "\n".join(lines))
    return summary
