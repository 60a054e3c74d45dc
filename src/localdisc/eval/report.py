"""Benchmark reports: ``results.json``, ``results.md`` (one table per metric) and figures.

Rows are initialisations (a pre-trained init gives two: its frozen-encoder model and the
fine-tuned one), columns are ``task (labels)``; a cell is the mean +- population standard
deviation (numpy's, ``ddof=0``, as every table recorded in benchmarks/RESULTS.md) over seeds of
the mean over test images, or the value alone for one seed; the best of each column in bold. A
cell over fewer seeds than its runs (a seed without the metric or with NaN) says ``(n=K)`` and is
bold only where no cell of its column has all its seeds.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from localdisc.engine.checkpoint import atomic_write_text
from localdisc.eval.provenance import commit_text, environment_line

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
    """Per metric, row and column: seed means (``seeds``, of the fine-tuning seeds
    ``seed_ids``), their mean and std, and images pooled.

    ``n_seeds`` counts the seeds with a finite mean, ``n_runs`` the runs of the row and column
    (with the metric or not, or skipped as diverged): fewer seeds than runs is a partial cell,
    which says so.
    """
    table: dict[str, dict[str, dict[str, dict[str, Any]]]] = {m: {} for m in METRICS}
    n_runs: Counter[tuple[str, str]] = Counter()
    for run in results["runs"]:
        column = f"{run['task']} ({run['labels']})"
        for row, metrics in _rows_of(run):
            n_runs[row, column] += 1
            for metric in METRICS:
                if metric not in metrics["summary"]:
                    continue
                cell = (
                    table[metric]
                    .setdefault(row, {})
                    .setdefault(column, {"seeds": [], "seed_ids": [], "images": []})
                )
                cell["seeds"].append(metrics["summary"][metric]["mean"])
                cell["seed_ids"].append(run["seed"])  # which: a diverged seed leaves a gap
                cell["images"].extend(r.get(metric) for r in metrics["per_image"])
    # A seed that diverged (skipped, with its seed) is a run of its init's rows too (or of the
    # rows it names: the shape-guided benchmark's).
    for s in results.get("skipped", []):
        if "seed" in s:
            column = f"{s['task']} ({s['labels']})"
            init = s["init"]
            for row in s.get("rows", (init, f"{init} (frozen)", f"{init} (BN recalibrated)")):
                if (row, column) in n_runs:
                    n_runs[row, column] += 1
    for rows in table.values():
        for row, columns in rows.items():
            for column, cell in columns.items():
                seeds, images = _finite(cell["seeds"]), _finite(cell["images"])
                cell["mean"] = float(np.mean(seeds)) if seeds else math.nan
                cell["std"] = float(np.std(seeds)) if seeds else math.nan
                cell["n_seeds"] = len(seeds)
                cell["n_runs"] = n_runs[row, column]
                cell["image_mean"] = float(np.mean(images)) if images else math.nan
                cell["image_std"] = float(np.std(images)) if images else math.nan
                cell["n_images"] = len(images)
    return {m: rows for m, rows in table.items() if rows}


def _columns(rows: dict[str, dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(c for columns in rows.values() for c in columns))


def partial(cell: Mapping[str, Any]) -> bool:
    """Whether ``cell``'s mean is over fewer seeds than it has runs (a cell of an older
    ``results.json``, without ``n_runs``, is taken as whole)."""
    return cell["n_seeds"] < cell.get("n_runs", cell["n_seeds"])


def markdown_table(
    rows: dict[str, dict[str, Any]], *, pooled: bool = False, row_header: str = "init"
) -> str:
    """One metric's table; the best mean of each column in bold, a partial cell marked."""
    columns = _columns(rows)
    key, spread, count = (
        ("image_mean", "image_std", "n_images") if pooled else ("mean", "std", "n_seeds")
    )
    best, whole = {}, {}
    for c in columns:
        finite = [r[c] for r in rows.values() if c in r and math.isfinite(r[c][key])]
        # A mean over fewer seeds is not compared with whole ones: its missing seeds might have
        # been its worst. Only a column without a whole cell compares partial ones.
        whole[c] = [cell for cell in finite if not partial(cell)]
        # As printed: two cells that read the same are both the best, or neither is.
        values = [round(cell[key], 3) for cell in whole[c] or finite]
        best[c] = max(values) if values else None
    lines = [f"| {row_header} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in rows.items():
        cells = []
        for c in columns:
            cell = row.get(c)
            if cell is None or not math.isfinite(cell[key]):
                cells.append("-")
                continue
            # One value has no spread: "+- 0.000" would read as seeds that agreed.
            text = f"{cell[key]:.3f}" + (f" +- {cell[spread]:.3f}" if cell[count] > 1 else "")
            bold = round(cell[key], 3) == best[c] and not (partial(cell) and whole[c])
            text = f"**{text}**" if bold else text
            cells.append(f"{text} (n={cell['n_seeds']})" if partial(cell) else text)
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


def _made_at(env: Mapping[str, Any] | None) -> str:
    if not env:
        return "not recorded"
    return commit_text(env) or f"localdisc {env.get('localdisc') or '?'}, no git checkout"


def runs_made_at(
    records: list[Mapping[str, Any]], current: Mapping[str, Any] | None, what: str = "Runs"
) -> str | None:
    """A line of ``results.md`` naming the commits (modified or not) that ``records`` (a run's
    metrics or ``config.json``: ``environment`` and ``resumed``) were made at, with counts, where
    any differs from the ``current`` call's: reused runs of earlier calls are not this call's.

    ``None`` where all were made as ``current`` or none records its environment (a shape-guided
    benchmark's rows cached before they kept theirs). A resumed run's starts are joined with
    "then"."""
    if not any(r.get("environment") for r in records):
        return None
    states = Counter(
        " then ".join(dict.fromkeys(map(_made_at, [r.get("environment"), *r.get("resumed", [])])))
        for r in records
    )
    if set(states) == {_made_at(current)}:
        return None
    counts = "; ".join(f"{state} ({n} run{'s' * (n != 1)})" for state, n in states.items())
    return (
        f"{what} made at: {counts}. Earlier calls' runs are reused; the environment is this call's."
    )


def _test_images_line(runs: list[dict[str, Any]], config: dict[str, Any]) -> str:
    """How many test images each task's runs were scored on (``results.json`` alone said it),
    and the cap ``config`` (the benchmark's) holds: ``--quick``'s or ``--max-test``'s (not
    named: a --quick run keeps a --max-test given)."""
    counts: dict[str, set[int]] = {}
    for run in runs:
        for _, metrics in _rows_of(run):
            counts.setdefault(run["task"], set()).add(len(metrics["per_image"]))
    shown = ", ".join(
        f"{task} {min(n)}" + (f" to {max(n)}" if len(n) > 1 else "") for task, n in counts.items()
    )
    max_test = config.get("max_test")
    cap = f" (at most the first {max_test} of each test split)" if max_test else ""
    return f"Test images per run: {shown}{cap}."


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
    benchmark started) ends ``results.md`` as one line, after the runs' commits where they are
    not all its own (:func:`runs_made_at`), and the init ``ld``'s pre-training's
    (``results["ld_pretrain"]``: its ``environment`` and ``resumed``); ``results["own_tasks"]``
    (a task label -> its data set, target and test split), where given, is listed before the
    tables. ``intro`` replaces the transfer benchmark's explanation under the ``title``.
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
            "Cells: mean +- population standard deviation (ddof 0) over seeds of the mean over "
            "test images (the value alone for one seed); best of each column in bold. A "
            "pre-trained init has a row for its frozen-encoder model; "
            "'(BN recalibrated)' rows are the same models with batch-norm statistics recomputed "
            "over the training split's images, labels unused (not the paper's protocol).",
        ]
    lines = [f"# {title}", "", *intro, ""]
    if results.get("runs"):  # a --quick or --max-test run scores a few images: say how many
        lines += [_test_images_line(results["runs"], config), ""]
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
    if any(partial(cell) for rows in table.values() for r in rows.values() for cell in r.values()):
        lines += [
            "(n=K): that cell's mean is over K of its seeds (the others lack the metric, gave "
            "NaN or diverged: see Skipped); it is bold only where no cell of its column has all "
            "its seeds.",
            "",
        ]
    if results.get("skipped"):
        lines += ["## Skipped", ""]
        lines += [
            f"- {s['task']} ({s.get('init', 'all')}"
            + (f", labels {s['labels']}" if s.get("labels", "no labels") != "no labels" else "")
            + (f", seed {s['seed']}" if "seed" in s else "")
            + f"): {s['reason']}"
            for s in results["skipped"]
        ]
        lines.append("")
    env = results.get("environment")
    made_at = runs_made_at([run["metrics"] for run in results["runs"]], env)
    if made_at:  # reused runs of earlier calls: their commits, not only this call's
        lines += [made_at, ""]
    if results.get("ld_pretrain"):  # the init ld's pre-training, perhaps an earlier call's
        made_at = runs_made_at([results["ld_pretrain"]], env, what="The LD pre-training (init ld)")
        if made_at:
            lines += [made_at, ""]
    if env:  # where and when this call ran
        lines += [environment_markdown(env), ""]
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
    """Per task and label budget (a table's column): the first test image, its reference, and
    each init's predicted mask (seed 0); the row's label at its left names both and the image.

    Raises:
        LocaldiscError: the image a run scored first is no longer in its data set's test split.
    """
    from PIL import Image

    from localdisc.data.datasets import dataset_class, load_data_spec, parse_data_spec
    from localdisc.errors import LocaldiscError
    from localdisc.eval.figures import _plt, _save, _show, plain

    firsts: dict[tuple[str, str], dict[str, Path]] = {}
    specs: dict[tuple[str, str], tuple[str, str, str]] = {}
    for run in runs:
        if run["seed"] != 0 or not run["metrics"].get("per_image"):
            continue
        name = run["metrics"]["per_image"][0]["image"]
        mask = Path(run["run_dir"]) / "predictions" / f"{name}_mask.png"
        if mask.is_file():
            column = (run["task"], str(run["labels"]))  # each budget's masks, not the first's
            firsts.setdefault(column, {}).setdefault(run["init"], mask)
            transfer = json.loads((Path(run["run_dir"]) / "config.json").read_text())["transfer"]
            specs[column] = (transfer["dataset"], run["metrics"]["target"], name)
    if not firsts:
        return None
    plt = _plt()
    n_cols = 2 + max(len(v) for v in firsts.values())
    fig, axes = plt.subplots(len(firsts), n_cols, figsize=(2.6 * n_cols, 2.8 * len(firsts)))
    axes = np.atleast_2d(axes)
    for row, ((task, labels), masks) in zip(axes, firsts.items(), strict=True):
        spec, target, name = specs[task, labels]
        split = "test" if "test" in dataset_class(parse_data_spec(spec)[0]).splits else None
        test = load_data_spec(spec, split)
        found = [i for i in range(len(test)) if test.items[i].name == name]
        if not found:  # a reused run of data that changed since
            raise LocaldiscError(
                f"{spec}: the test split holds no image {name!r}, which the runs of {task} "
                f"(labels {labels}) scored first, e.g. {masks[next(iter(masks))]}; the data "
                "changed since they ran: run the benchmark again into another --out"
            )
        sample = test[found[0]]
        _show(row[0], sample.image)
        # A row label, not a title: a title wider than its panel was cut at the figure's edge.
        row[0].set_axis_on()
        row[0].set_ylabel(plain(f"{task}, labels {labels}\n{name}"), fontsize=8)
        row[0].set_title("image", fontsize=8)
        # Fixed grey levels: an all-foreground mask drew black, as an empty one.
        row[1].imshow(sample.masks[target], cmap="gray", vmin=0, vmax=1)
        row[1].set_title("reference", fontsize=8)
        for ax, (init, mask) in zip(row[2:], masks.items(), strict=False):
            ax.imshow(np.asarray(Image.open(mask)), cmap="gray", vmin=0, vmax=255)
            ax.set_title(plain(init), fontsize=8)
        for ax in row[2 + len(masks) :]:  # a row with fewer inits than the widest
            ax.set_axis_off()
        for ax in row[: 2 + len(masks)]:  # framed: an all-foreground mask meets the white
            ax.set(xticks=[], yticks=[])
    return _save(fig, path)
