"""Pool runs of `benchmark pretrain-methods` (e.g. one per pre-training seed) into one table.

Each run's ``results.json`` holds, per metric, init row and task, the fine-tuning seeds' values
(the mean over test images of each). This prints, per task, each row's values run by run, their
mean +- std over every (run, seed) pair (the population std, as the benchmark's tables), and how
often the reference init (default ``ld``) is ahead of it, like with like (its fine-tuned row
against fine-tuned rows, its frozen row against frozen ones, recalibrated against recalibrated),
with the same labelled images (the same fine-tuning seed) and in the same run (rows named by
their pool, ``fundus/ld``, against their own pool's reference):

    python benchmarks/methods_table.py /tmp/s32/cm/methods /tmp/s32/cm1/methods
    python benchmarks/methods_table.py RUN... --metric auc --reference pixpro

A row missing from a run (or a task) is left out of that run's cells, never filled in, and so
is a seed missing from a row (a fine-tuning that diverged) or without a value (NaN): pairs are of
the seeds both rows have.

Runs whose settings (``results.json``'s ``config``) differ in more than the pre-training seed
(and the worker count and ``skip_bad``, which change no number) are refused, each difference named;
``--allow-other-settings`` pools them anyway and prints the differences above the tables.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def load(run: Path, metric: str) -> dict[str, dict[str, dict[int, float]]]:
    """``{row: {task: {fine-tuning seed: value}}}`` of one run's ``results.json`` (one written
    before cells named their seeds has them in order, from 0)."""
    path = run / "results.json" if run.is_dir() else run
    table = json.loads(path.read_text())["transfer"][metric]

    def by_seed(cell: dict) -> dict[int, float]:  # a NaN mean (null in the file) left out
        seeds = cell.get("seed_ids", range(len(cell["seeds"])))
        return {s: v for s, v in zip(seeds, cell["seeds"], strict=True) if v is not None}

    return {row: {task: by_seed(c) for task, c in cells.items()} for row, cells in table.items()}


#: Settings that pooled runs may differ in: the draw's pre-training seed, the number of
#: pool-decoding workers and ``skip_bad`` (no number depends on them: a finished run without
#: ``skip_bad`` read every image, and the CLI records it where compare_methods.sh does not).
FREE_SETTINGS = (
    ("pretrain", "seed"),
    ("pretrain", "workers"),
    ("pretrain", "skip_bad"),
    ("transfer", "skip_bad"),
)


def _flat(settings: dict, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
    flat: dict[tuple[str, ...], object] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flat(value, (*prefix, key)))
        else:
            flat[(*prefix, key)] = value
    return flat


def setting_differences(configs: list[dict]) -> list[str]:
    """``"key: value / value / ..."`` (run by run) for each setting of the runs' ``config`` that is
    not the same in all, but :data:`FREE_SETTINGS`; ``(absent)`` where a run does not have it."""
    flats = [_flat(config) for config in configs]
    differences = []
    for key in dict.fromkeys(k for flat in flats for k in flat):
        values = [json.dumps(flat[key]) if key in flat else "(absent)" for flat in flats]
        if key not in FREE_SETTINGS and len(set(values)) > 1:
            differences.append(f"{'.'.join(key)}: {' / '.join(values)}")
    return differences


#: PretrainConfig's default seed, that of a run recording none (a test keeps them equal; importing
#: localdisc.engine.pretrain here would take torch's seconds).
DEFAULT_PRETRAIN_SEED = 0


def _draw(config: dict) -> dict:
    """What makes a run's pre-trainings: its pre-training settings and seed, its budget and
    methods (not the fine-tunings' settings); empty where the run records no pre-training
    settings (no ``config``: nothing to compare).

    A run that records no seed pre-trained at :data:`DEFAULT_PRETRAIN_SEED`:
    benchmarks/compare_methods.sh with its default ``PRETRAIN='{}'`` records none, and taking that
    for no draw let its copy through, its pairs counted twice (reviewer)."""
    if not isinstance(config.get("pretrain"), dict):
        return {}
    pretrain = {k: v for k, v in config["pretrain"].items() if k not in ("workers", "skip_bad")}
    if pretrain.get("seed") is None:
        pretrain["seed"] = DEFAULT_PRETRAIN_SEED
    shaping = (
        "budget_seconds",
        "methods",
        "pools",
        "data_root",
        "size",
        "batch",
        "device",
        "cpu_scale",
    )  # outside "pretrain", these shape the pre-trainings too
    return {**pretrain, **{key: config.get(key) for key in shaping}}


def _reference_init(run: dict[str, dict[str, dict[int, float]]], task: str, reference: str) -> str:
    """The row of ``reference`` in ``task``'s cells of ``run``: as named, else the one of the
    task's pool (runs of two modalities name the methods' rows by pool, ``fundus/ld``; the
    built-in ``random`` keeps its name)."""
    inits = {row.split(" (", 1)[0] for row, cells in run.items() if task in cells}
    if reference in inits or "/" in reference:
        return reference
    pooled = sorted(i for i in inits if i.endswith(f"/{reference}"))
    return pooled[0] if len(pooled) == 1 else reference


def pooled_table(
    runs: list[dict[str, dict[str, dict[int, float]]]], task: str, reference: str
) -> str:
    rows = list(dict.fromkeys(row for run in runs for row, cells in run.items() if task in cells))
    lines = [
        f"| init ({task}) | per run: seeds | mean +- std | {reference} ahead |",
        "|---|---|---|---|",
    ]
    for row in rows:
        init, kind = row.split(" (", 1) if " (" in row else (row, "")
        cells, pooled, ahead, pairs = [], [], 0, 0
        for run in runs:
            values = run.get(row, {}).get(task)
            if values is None:
                cells.append("-")
                continue
            cells.append(", ".join(f"{v:.3f}" for v in values.values()))
            pooled += values.values()
            ref_init = _reference_init(run, task, reference)
            counterpart = f"{ref_init} ({kind}" if kind else ref_init  # like with like
            ref = run.get(counterpart, {}).get(task)
            if ref is not None and init != ref_init:
                paired = [seed for seed in values if seed in ref]  # the same labelled images
                ahead += sum(ref[seed] > values[seed] for seed in paired)
                pairs += len(paired)
        mean, std = float(np.mean(pooled)), float(np.std(pooled))
        # One value alone: "+- 0.000" read as values that agreed.
        summary = f"{mean:.3f}" if len(pooled) == 1 else f"{mean:.3f} +- {std:.3f}"
        wins = f"{ahead} of {pairs}" if pairs else ""
        lines.append(f"| {row} | {' / '.join(cells)} | {summary} | {wins} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="folders holding results.json")
    parser.add_argument("--metric", default="dice", help="dice, f1, auc, cldice, ...")
    parser.add_argument("--reference", default="ld", help="the row counted against the others")
    parser.add_argument(
        "--allow-other-settings", action="store_true",
        help="pool runs whose settings differ in more than the pre-training seed",
    )  # fmt: skip
    args = parser.parse_args()
    files = [(run / "results.json" if run.is_dir() else run).resolve() for run in args.runs]
    twice = sorted({str(f) for f in files if files.count(f) > 1})
    if twice:  # its seeds would count as pairs twice
        parser.error(f"{twice[0]} is given twice")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:  # an unfinished run writes it last
        parser.error(f"{missing[0]}: no such file (is that run finished?)")
    configs = [json.loads(f.read_text()).get("config", {}) for f in files]
    differences = setting_differences(configs)
    if differences and not args.allow_other_settings:
        parser.error(
            f"the runs' settings differ ({'; '.join(differences)}); pool them anyway with "
            "--allow-other-settings"
        )
    runs = [load(run, args.metric) for run in args.runs]
    # Runs of one pre-training seed and pre-training settings are one draw, whatever their
    # fine-tuning settings (seeds, labels): a copy, or a run with more fine-tuning seeds, counted
    # its pairs twice, the means unchanged, nothing looked wrong (reviewer). Of disjoint tasks
    # (one pre-training, tasks fine-tuned apart) nothing is counted twice.
    draws = [json.dumps(_draw(c), sort_keys=True) for c in configs]
    covered = [{task for cells in run.values() for task in cells} for run in runs]
    again = next(
        ((i, j) for i in range(len(runs)) for j in range(i)
         if _draw(configs[i]) and draws[i] == draws[j] and covered[i] & covered[j]),
        None,
    )  # fmt: skip
    if again is not None:
        i, j = again
        parser.error(
            f"{files[i]} and {files[j]} are runs of one pre-training seed "
            f"({_draw(configs[i]).get('seed')}) and settings on the same task(s): the same draw "
            "counted twice (a copy?); give each draw once"
        )
    tasks = list(dict.fromkeys(task for run in runs for cells in run.values() for task in cells))
    print(f"{args.metric}; runs: {', '.join(str(run) for run in args.runs)}\n")
    if differences:
        print(f"settings that differ (run by run): {'; '.join(differences)}\n")
    for task in tasks:
        print(pooled_table(runs, task, args.reference) + "\n")


if __name__ == "__main__":
    main()
