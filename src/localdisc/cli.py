"""The ``localdisc`` command line: ``localdisc --help`` lists the commands."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from localdisc.errors import LocaldiscError

app = typer.Typer(
    help="Unsupervised local discrimination for medical images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
datasets_app = typer.Typer(help="List and check the supported data sets.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")

console = Console()
err_console = Console(stderr=True)


# --- datasets ----------------------------------------------------------------------------------
@datasets_app.command("list")
def datasets_list() -> None:
    """List the supported data sets: modality, layout, targets, splits, source and citation."""
    from rich.markup import escape
    from rich.table import Table

    from localdisc.data.datasets import DATASETS

    fields = ("modality", "layout", "targets", "splits", "url", "citation")
    rows = [{k: escape(v) for k, v in cls.describe().items()} for cls in DATASETS.values()]
    table = Table(title="localdisc data sets", show_lines=True)
    # Names stay whole (users type them); long fields fold.
    table.add_column("name", no_wrap=True, style="bold")
    if console.width >= 150:  # one column per field
        for field in fields:
            table.add_column("download" if field == "url" else field, overflow="fold")
        for row in rows:
            table.add_row(row["name"], *(row[f] for f in fields))
    else:  # narrow terminal: the fields stacked in one column
        table.add_column("details", overflow="fold")
        for row in rows:
            details = "\n".join(
                f"[dim]{'download' if f == 'url' else f}:[/] {row[f]}" for f in fields
            )
            table.add_row(row["name"], details)
    console.print(table, highlight=False)
    console.print(
        "Give a set as NAME ROOT (or NAME:ROOT); any other folder is read as [bold]folder[/]."
    )


@datasets_app.command("inspect")
def datasets_inspect(
    name: str = typer.Argument(
        ..., help="Data set name (see `localdisc datasets list`), NAME:ROOT, or a folder."
    ),
    root: Path | None = typer.Argument(None, help="The data set's folder, in its official layout."),
    json_out: bool = typer.Option(False, "--json", help="Print only the JSON report to stdout."),
    preview: Path | None = typer.Option(
        None, "--preview", help="Also save a PNG grid of images with masks and FOV outline."
    ),
    skip_bad: bool = typer.Option(
        False, "--skip-bad", help="Skip and list bad items instead of stopping at the first."
    ),
) -> None:
    """Read every image and mask of a data set and report counts, sizes and mask coverage."""
    import json

    from localdisc.data.datasets import parse_data_spec
    from localdisc.data.inspect import inspect_dataset, write_preview

    if root is None:
        name, root = parse_data_spec(name)
    report = inspect_dataset(name, root, skip_bad=skip_bad, progress=err_console.is_terminal)
    if preview is not None:
        split = next(iter(report["splits"]))
        written = write_preview(name, preview, root=root, split=split, skip_bad=skip_bad)
        (err_console if json_out else console).print(f"preview: {written}", markup=False)
    if json_out:
        typer.echo(json.dumps(report, indent=2))
        return
    _print_inspection(report)


def _print_inspection(report: dict) -> None:
    """The report of ``datasets inspect`` as rich tables."""
    from rich.markup import escape
    from rich.table import Table

    console.print(
        f"[bold]{report['name']}[/] at {escape(report['root'] or '(generated)')}, "
        f"modality {report['modality']}",
        highlight=False,
    )
    table = Table(show_lines=True)
    for column in ("split", "images", "masks", "FOV", "sizes", "coverage"):
        table.add_column(column, overflow="fold")
    for split, s in report["splits"].items():
        fov = f"{s['fov']} ({s['fov_source']}"
        fov += f", {s['fov_fraction']:.0%} of image)" if s["fov_fraction"] is not None else ")"
        table.add_row(
            split,
            str(s["images"]),
            "\n".join(f"{t}: {n}" for t, n in s["masks"].items()) or "-",
            fov,
            "\n".join(f"{size}: {n}" for size, n in s["sizes"].items()),
            "\n".join(f"{t}: {c:.1%}" for t, c in s["coverage"].items()) or "-",
        )
    console.print(table)
    if report["skipped"]:
        skipped = Table(title=f"skipped ({len(report['skipped'])})")
        skipped.add_column("file", overflow="fold")
        skipped.add_column("reason", overflow="fold")
        for entry in report["skipped"]:
            skipped.add_row(escape(entry["path"]), escape(entry["reason"]))
        console.print(skipped)


def main() -> None:
    """Entry point: known errors become one red line and exit code 2, not a traceback."""
    try:
        app()
    except LocaldiscError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


# --- pre-training ------------------------------------------------------------------------------
@app.command()
def pretrain(
    data: list[str] = typer.Option(
        ..., "--data", help="A folder of images (recursive) or NAME:ROOT; repeatable."
    ),
    out: Path = typer.Option(..., "--out", help="Run directory."),
    modality: str = typer.Option("fundus", help="fundus (3 channels) or xray (1 channel)."),
    stage1_steps: int = typer.Option(20_000, help="Stage 1 steps (PD + mixup)."),
    stage2_steps: int = typer.Option(80_000, help="Stage 2 steps (+ region discrimination)."),
    batch: int = typer.Option(4, help="Items per step (each feeds 5 images)."),
    size: int = typer.Option(448, help="Crop size S (multiple of 16)."),
    clusters: int = typer.Option(16, help="Clusters K."),
    dim: int = typer.Option(32, help="Embedding dimension D."),
    lr: float = typer.Option(1e-3, help="Adam learning rate (halved every 10 000 steps)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    workers: int = typer.Option(4, help="Threads decoding the pool."),
    max_images: int | None = typer.Option(None, help="Use only the first N pool images."),
    checkpoint_every: int = typer.Option(1000, help="Steps between checkpoints."),
    seed: int = typer.Option(0),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable pool images."),
    sync_bn: bool = typer.Option(False, "--sync-bn", help="SyncBatchNorm across processes."),
    padding: str = typer.Option("zeros", help="Convolution padding: zeros (published), circular."),
) -> None:
    """Pre-train an LD model (stage 1, then stage 2) on unlabelled images."""
    from localdisc.engine.pretrain import PretrainConfig
    from localdisc.engine.pretrain import pretrain as run_pretrain

    config = PretrainConfig(
        data=list(data), modality=modality, stage1_steps=stage1_steps,
        stage2_steps=stage2_steps, batch=batch, size=size, clusters=clusters, dim=dim, lr=lr,
        device=device, workers=workers, max_images=max_images, seed=seed,
        checkpoint_every=checkpoint_every, skip_bad=skip_bad, sync_bn=sync_bn, padding=padding,
    )  # fmt: skip
    from localdisc.engine import distributed

    result = run_pretrain(config, out, resume=resume, log=console.print)
    distributed.cleanup()
    if distributed.is_main_process():
        console.print(
            f"done: {result.steps} steps, {result.images_per_s:.1f} images/s, "
            f"final loss {result.final_loss:.4f}; outputs in [bold]{out}[/]"
        )


@app.command()
def demo(
    out: Path = typer.Option(Path("localdisc-demo"), "--out", help="Output folder."),
    quick: bool = typer.Option(False, "--quick", help="A few steps at tiny size (seconds)."),
    data: list[str] | None = typer.Option(
        None, "--data", help="Your own images (folder or NAME:ROOT) instead of the built-in ones."
    ),
    modality: str = typer.Option("fundus", help="fundus or xray."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    seed: int = typer.Option(0),
) -> None:
    """Pre-train a small LD model (about 2.5 minutes on 2 CPU cores) and draw what it learnt."""
    from localdisc.demo import run_demo

    written = run_demo(
        out, quick=quick, data=data or None, modality=modality, device=device, seed=seed,
        log=console.print,
    )  # fmt: skip
    console.print("[bold green]demo finished.[/] Outputs:")
    for name, path in written.items():
        console.print(f"  {name:>10}: {path}")
