"""Benchmark reports: ``results.json``, ``results.md`` (one table per metric) and figures.

Rows are initialisations (a pre-trained init gives two: its frozen-encoder model and the
fine-tuned one), columns are ``task (labels)``; a cell is the mean +- standard deviation over
seeds of the mean over test images, the best of each column in bold.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from localdisc.engine.checkpoint import atomic_write_text
from localdisc.eval.provenance import environment_line

#: Metrics in table order, with what they mean.
METRICS = {
    "dice": "paper: per-image Dice at 0.5 on the whole resized image",
    "f1": "F1 (Dice) inside the FOV at the original resolution",
    "auc": "AUC-ROC inside the FOV at the original resolution",
    "cldice": "centreline Dice (topology; vessels only)",
    "accuracy": "accuracy inside the FOV",
    "sensitivity": "sensitivity inside the FOV",
    "specificity": "specificity inside the FOV",
}


def _rows_of(run: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(row name, metrics with summary/per_image)`` of one run; frozen models and those with
    recalibrated batch norm (see :mod:`localdisc.tasks.transfer`) get their rows."""
    metrics, init = run["metrics"], run["init"]
    rows = []
    if "frozen" in metrics:
        rows.append((f"{init} (frozen)", metrics["frozen"]))
    if "as_trained" in metrics:  # the run saved its batch-norm-recalibrated model
        rows += [(init, metrics["as_trained"]), (f"{init} (BN recalibrated)", metrics)]
    else:
        rows.append((init, metrics))
        if "recalibrated" in metrics:
            rows.append((f"{init} (BN recalibrated)", metrics["recalibrated"]))
    return rows


def _finite(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def collect(results: dict[str, Any]) -> dict[str, Any]:
    """Per metric, row and column: seed means, their mean and std, and images pooled."""
    table: dict[str, dict[str, dict[str, dict[str, Any]]]] = {m: {} for m in METRICS}
    for run in results["runs"]:
        column = f"{run['task']} ({run['labels']})"
        for row, metrics in _rows_of(run):
            for metric in METRICS:
                if metric not in metrics["summary"]:
                    continue
                cell = (
                    table[metric]
                    .setdefault(row, {})
                    .setdefault(column, {"seeds": [], "images": []})
                )
                cell["seeds"].append(metrics["summary"][metric]["mean"])
                cell["images"].extend(r.get(metric) for r in metrics["per_image"])
    for rows in table.values():
        for columns in rows.values():
            for cell in columns.values():
                seeds, images = _finite(cell["seeds"]), _finite(cell["images"])
                cell["mean"] = float(np.mean(seeds)) if seeds else math.nan
                cell["std"] = float(np.std(seeds)) if seeds else math.nan
                cell["n_seeds"] = len(seeds)
                cell["image_mean"] = float(np.mean(images)) if images else math.nan
                cell["image_std"] = float(np.std(images)) if images else math.nan
                cell["n_images"] = len(images)
    return {m: rows for m, rows in table.items() if rows}


def _columns(rows: dict[str, dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(c for columns in rows.values() for c in columns))


def markdown_table(
    rows: dict[str, dict[str, Any]], *, pooled: bool = False, row_header: str = "init"
) -> str:
    """One metric's table; the best mean of each column in bold."""
    columns = _columns(rows)
    key, spread = ("image_mean", "image_std") if pooled else ("mean", "std")
    best = {}
    for c in columns:
        # As printed: two cells that read the same are both the best, or neither is.
        values = [round(r[c][key], 3) for r in rows.values() if c in r and math.isfinite(r[c][key])]
        best[c] = max(values) if values else None
    lines = [f"| {row_header} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in rows.items():
        cells = []
        for c in columns:
            cell = row.get(c)
            if cell is None or not math.isfinite(cell[key]):
                cells.append("-")
                continue
            text = f"{cell[key]:.3f} +- {cell[spread]:.3f}"
            cells.append(f"**{text}**" if round(cell[key], 3) == best[c] else text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def jsonable(value: Any) -> Any:
    """NaN and infinities -> None, so that the output is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def environment_markdown(env: dict[str, Any]) -> str:
    """The last line of a benchmark's ``results.md``: its :func:`environment_line`."""
    return f"Environment: {environment_line(env)}"


def write_report(
    results: dict[str, Any],
    out_dir: str | Path,
    *,
    title: str = "Transfer benchmark",
    intro: list[str] | None = None,
    row_header: str = "init",
) -> dict[str, Path]:
    """Write ``results.json``, ``results.md``, ``figures/dice_bars.png`` and predictions.

    ``results["environment"]`` (:func:`~localdisc.eval.provenance.environment`, taken when the
    benchmark started) ends ``results.md`` as one line; ``results["own_tasks"]`` (a task label ->
    its data set, target and test split), where given, is listed before the tables. ``intro``
    replaces the transfer benchmark's explanation under the ``title``.
    """
    out_dir = Path(out_dir)
    table = collect(results)
    results = {**results, "table": table}
    written = {"json": out_dir / "results.json", "markdown": out_dir / "results.md"}
    atomic_write_text(written["json"], json.dumps(jsonable(results), indent=2))

    config = results.get("config", {})
    if intro is None:
        intro = [
            f"Seeds: {config.get('seeds', '?')}; size {config.get('size', '?')}; epochs "
            f"{config.get('frozen_epochs', '?')} frozen + {config.get('epochs', '?')} "
            "(pre-trained inits) or the latter from scratch (random).",
            "Cells: mean +- standard deviation over seeds of the mean over test images; best of "
            "each column in bold. A pre-trained init has a row for its frozen-encoder model; "
            "'(BN recalibrated)' rows are the same models with batch-norm statistics recomputed "
            "over the training split's images, labels unused (not the paper's protocol).",
        ]
    lines = [f"# {title}", "", *intro, ""]
    if results.get("own_tasks"):  # the columns' labels of data sets named by their folders
        lines += ["## Data sets of your own", ""]
        lines += [f"- {label}: {about}" for label, about in results["own_tasks"].items()]
        lines.append("")
    for metric, rows in table.items():
        lines += [
            f"## {metric}: {METRICS[metric]}", "", markdown_table(rows, row_header=row_header), "",
        ]  # fmt: skip
    if "dice" in table:
        lines += [
            "## dice, pooled: mean +- std over all test images of all seeds (the paper's way)",
            "",
            markdown_table(table["dice"], pooled=True, row_header=row_header),
            "",
        ]
    if results.get("skipped"):
        lines += ["## Skipped", ""]
        lines += [
            f"- {s['task']} ({s.get('init', 'all')}): {s['reason']}" for s in results["skipped"]
        ]
        lines.append("")
    if results.get("environment"):  # where and when the numbers were made
        lines += [environment_markdown(results["environment"]), ""]
    atomic_write_text(written["markdown"], "\n".join(lines))
    if "dice" in table:
        written["bars"] = dice_bars(table["dice"], out_dir / "figures" / "dice_bars.png")
    predictions = prediction_grid(results["runs"], out_dir / "figures" / "predictions.png")
    if predictions is not None:
        written["predictions"] = predictions
    return written


def dice_bars(rows: dict[str, dict[str, Any]], path: Path) -> Path:
    """Grouped bar chart: one group per column, one bar per init, seed std as error bars."""
    from localdisc.eval.figures import _plt, _save, plain

    plt = _plt()
    columns = _columns(rows)
    fig, ax = plt.subplots(figsize=(max(5, 1.8 * len(columns) * max(1, len(rows)) / 2), 4))
    width = 0.8 / max(len(rows), 1)
    x = np.arange(len(columns))
    for i, (name, row) in enumerate(rows.items()):
        means = [row[c]["mean"] if c in row else np.nan for c in columns]
        stds = [row[c]["std"] if c in row else np.nan for c in columns]
        ax.bar(
            x + (i - (len(rows) - 1) / 2) * width,
            means,
            width,
            yerr=stds,
            label=plain(name),
            capsize=3,
        )
    ax.set_xticks(x, [plain(c) for c in columns], rotation=20, ha="right")
    ax.set_ylabel("Dice (paper)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    return _save(fig, path)


def prediction_grid(runs: list[dict[str, Any]], path: Path) -> Path | None:
    """Per task: the first test image, its reference, and each init's predicted mask (seed 0)."""
    from PIL import Image

    from localdisc.data.datasets import dataset_class, load_data_spec, parse_data_spec
    from localdisc.eval.figures import _plt, _save, _show, plain

    firsts: dict[str, dict[str, Path]] = {}
    specs: dict[str, tuple[str, str, str]] = {}
    for run in runs:
        if run["seed"] != 0 or not run["metrics"].get("per_image"):
            continue
        name = run["metrics"]["per_image"][0]["image"]
        mask = Path(run["run_dir"]) / "predictions" / f"{name}_mask.png"
        if mask.is_file():
            firsts.setdefault(run["task"], {}).setdefault(run["init"], mask)
            transfer = json.loads((Path(run["run_dir"]) / "config.json").read_text())["transfer"]
            specs[run["task"]] = (transfer["dataset"], run["metrics"]["target"], name)
    if not firsts:
        return None
    plt = _plt()
    n_cols = 2 + max(len(v) for v in firsts.values())
    fig, axes = plt.subplots(len(firsts), n_cols, figsize=(2.6 * n_cols, 2.8 * len(firsts)))
    axes = np.atleast_2d(axes)
    for row, (task, masks) in zip(axes, firsts.items(), strict=True):
        spec, target, name = specs[task]
        split = "test" if "test" in dataset_class(parse_data_spec(spec)[0]).splits else None
        test = load_data_spec(spec, split)
        sample = next(test[i] for i in range(len(test)) if test.items[i].name == name)
        _show(row[0], sample.image)
        row[0].set_title(plain(f"{task}: {name}"), fontsize=8)
        row[1].imshow(sample.masks[target], cmap="gray")
        row[1].set_title("reference", fontsize=8)
        for ax, (init, mask) in zip(row[2:], masks.items(), strict=False):
            ax.imshow(np.asarray(Image.open(mask)), cmap="gray")
            ax.set_title(plain(init), fontsize=8)
        for ax in row[1:]:
            ax.set_axis_off()
    return _save(fig, path)
