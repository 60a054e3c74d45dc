"""The ``localdisc`` command line: ``localdisc --help`` lists the commands."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from localdisc.errors import LocaldiscError

# Help texts are plain text: as Rich markup, "[default: 2,all]" or "[fundus=|xray=]" vanished.
PLAIN = {"rich_markup_mode": None}
app = typer.Typer(
    help="Unsupervised local discrimination for medical images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    **PLAIN,
)
datasets_app = typer.Typer(
    help="List and check the supported data sets.", no_args_is_help=True, **PLAIN
)
app.add_typer(datasets_app, name="datasets")

console = Console()
# Not a terminal (a log file, a pipe): long lines stay whole for grep, not wrapped at 80 columns.
console.soft_wrap = not console.is_terminal
err_console = Console(stderr=True)


def _print_version(ctx: typer.Context, value: bool) -> None:
    if value and not ctx.resilient_parsing:  # not while the shell asks for completions
        from localdisc.eval.provenance import version_line

        console.print(version_line(), markup=False, highlight=False)
        raise typer.Exit()


#: The commands that spread over torchrun's processes (pre-training); every other one runs in
#: one process, and its copies under torchrun raced on one --out.
TORCHRUN_COMMANDS = ("pretrain", "shape-guided train")


def _refuse_torchrun(command: str) -> None:
    """Refuse ``command`` under torchrun (``WORLD_SIZE`` > 1) unless it is pre-training, a help
    page or ``datasets`` (which only reads): a second fine-tuning took the first's folder lock
    for another user's run and stopped both."""
    world = os.environ.get("WORLD_SIZE", "1")
    asked_help = "--help" in sys.argv[1:]  # the groups' callbacks run before a command's --help
    single = command not in TORCHRUN_COMMANDS and not command.startswith("datasets")
    if single and not asked_help and world.isdigit() and int(world) > 1:
        raise LocaldiscError(
            f"{command} runs in one process, not under torchrun ({world} processes here): run "
            f"it without torchrun; {' and '.join(TORCHRUN_COMMANDS)} spread over processes"
        )


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,  # before the command Click would ask for
        help="Print the versions of localdisc (and its commit), Python, torch, MONAI and NumPy, "
        "and exit.",
    ),
) -> None:
    """Unsupervised local discrimination for medical images."""
    if ctx.invoked_subcommand not in (None, "shape-guided", "benchmark"):  # theirs say
        _refuse_torchrun(ctx.invoked_subcommand)


def _log(text: str) -> None:
    """Print a library progress message: plain text, so paths and ``[...]`` print as they are."""
    console.print(text, markup=False)


def _path(path: str | Path) -> str:
    """A path for a Rich markup string: ``[...]`` in a file name is text, not markup."""
    return escape(str(path))


def _check_parent(option: str, path: Path) -> None:
    """Refuse an output file under a file (``--out A_FILE/x.png``) before the work: its folder
    cannot be made, which was found only when the output was written, after the work."""
    above = next(p for p in path.absolute().parents if p.exists())
    if not above.is_dir():
        raise LocaldiscError(f"{option} {path}: {above} is a file, not a folder")


def _check_not_an_input(option: str, path: Path, inputs: Iterable[Path]) -> None:
    """Refuse an output file that is one of the command's input files (by name or by link),
    before the work: it was overwritten when the output was written, the input lost."""
    if not path.is_file():
        return
    for given in inputs:
        try:
            same = given.is_file() and given.samefile(path)
        except OSError:  # unreadable: not the output, which was just seen
            same = False
        if same:
            raise LocaldiscError(
                f"{option} {path} is an input of this command ({given}): writing it would "
                "overwrite that file; give another output"
            )


def _summary_text(summary: dict[str, dict[str, float]], scored: int) -> str:
    """A metrics summary (``summarize``'s ``{metric: {mean, std, n}}``) in one line: ``mean +-
    std`` over two or more images, the value alone over one (a std of 0 read as images that
    agreed), and ``(n=K)`` where a metric has fewer images than the ``scored`` ones (AUC is
    undefined on an image of one class)."""
    parts = []
    for name, v in summary.items():
        n = int(v["n"])
        if not n:
            continue
        text = f"{name} {v['mean']:.4f}" + (f" +- {v['std']:.4f}" if n > 1 else "")
        parts.append(text + (f" (n={n})" if n < scored else ""))
    return ", ".join(parts)


# --- datasets ----------------------------------------------------------------------------------
@datasets_app.command("list")
def datasets_list() -> None:
    """List the supported data sets: modality, layout, targets, splits, source and citation."""
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
        False,
        "--skip-bad",
        help="Skip and list bad items instead of stopping at the first; the report is printed "
        "in full and the exit code is 1 if any item was skipped.",
    ),
) -> None:
    """Read every image and mask of a data set and report counts, sizes and mask coverage.

    Exit codes: 0 every item read; 1 with --skip-bad, some items were bad (listed, and under
    "skipped" in the JSON); 2 an error stopped the inspection (without --skip-bad, the first
    bad item)."""
    import json

    from localdisc.data.datasets import parse_data_spec
    from localdisc.data.inspect import inspect_dataset, write_preview

    if preview is not None:  # checked before the data set, which may take minutes to read
        if preview.is_dir():
            raise LocaldiscError(
                f"--preview {preview} is a folder; give the preview's PNG file name"
            )
        if preview.suffix.lower() != ".png":  # it is written as PNG, whatever its name
            raise LocaldiscError(f"--preview {preview}: the preview is a PNG; name it .png")
        _check_parent("--preview", preview)
    if root is None:
        name, root = parse_data_spec(name)
    if (
        preview is not None
        and root is not None
        and Path(root).resolve() in preview.resolve().parents
    ):
        # It would overwrite a file of the data set, or be read as one of its images.
        raise LocaldiscError(
            f"--preview {preview} lies in the data set's folder {root}; write it elsewhere"
        )
    with _skip_bad_hint(skip_bad):
        report = inspect_dataset(name, root, skip_bad=skip_bad, progress=err_console.is_terminal)
    if preview is not None:
        split = next(iter(report["splits"]))
        written = write_preview(name, preview, root=root, split=split, skip_bad=skip_bad)
        (err_console if json_out else console).print(f"preview: {written}", markup=False)
    if json_out:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print_inspection(report)
    if report["skipped"]:
        # A script must tell a clean download from one with bad files without parsing the report.
        count = len(report["skipped"])
        err_console.print(
            f"{count} bad item(s) skipped; exit code 1", markup=False, highlight=False
        )
        raise typer.Exit(1)


def _print_inspection(report: dict) -> None:
    """The report of ``datasets inspect`` as rich tables."""
    from rich.table import Table

    from localdisc.data.inspect import coverage_header

    console.print(
        f"[bold]{escape(report['name'])}[/] at {escape(report['root'] or '(generated)')}, "
        f"modality {report['modality']}",
        highlight=False,
    )
    table = Table(show_lines=True)
    # Height first (DRIVE's 565-wide photographs are 584x565), as the JSON report's "HxW".
    # The coverage is of the FOV (DRIVE), beside the FOV's share of the image: say which.
    for column in ("split", "images", "masks", "FOV", "sizes (HxW)", coverage_header(report)):
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
    # Why a mask column is empty (HRF without manual1/, ...): once per reason, with its splits.
    missing: dict[str, list[str]] = {}
    for split, s in report["splits"].items():
        for why in s.get("missing_labels", {}).values():
            splits = missing.setdefault(why, [])
            if split not in splits:  # several targets may share a reason (JSRT without SCR)
                splits.append(split)
    for why, splits in missing.items():
        console.print(f"no masks in {', '.join(splits)}: {why}", markup=False, highlight=False)
    for split, s in report["splits"].items():
        if s.get("missing_images"):
            names = ", ".join(Path(p).name for p in s["missing_images"])
            console.print(
                f"{split}: {len(s['missing_images'])} image(s) of the official split missing: "
                f"{names}",
                markup=False,
                highlight=False,
            )
    for split, s in report["splits"].items():
        if s["low_contrast"]:
            names = ", ".join(s["low_contrast"])
            console.print(
                f"[yellow]low contrast[/] in {split} ({len(s['low_contrast'])}: 98 % of the "
                f"intensities within a tenth of the range): {escape(names)}",
                highlight=False,
            )
    for note in report.get("notes", []):  # links, the modality guess, frames, orientation
        console.print(f"note: {note}", markup=False, highlight=False)
    if report["skipped"]:
        root = report["root"]
        skipped = Table(
            title=f"skipped ({len(report['skipped'])}), paths under {_path(root or '.')}"
        )
        skipped.add_column("file", overflow="fold")
        skipped.add_column("reason", overflow="fold")
        for entry in report["skipped"]:
            path = Path(entry["path"])
            shown = path.relative_to(root) if root and path.is_relative_to(root) else path
            skipped.add_row(_path(shown), escape(entry["reason"]))
        console.print(skipped)


#: The signal that stopped the command (set by :func:`_stop_on_signal`), else ``None``: Ctrl-C.
_stopped_by: int | None = None
#: The process whose main thread installed :func:`_stop_on_signal`.
_handler_pid: int | None = None
#: Whether :func:`_on_interrupt` has said what a stop kept (else :func:`main` says it stopped).
_interrupt_said = False


def _stop_on_signal(signum: int, frame: object) -> None:
    """SIGTERM (a scheduler's time limit, ``kill``) stops a command as Ctrl-C does: it raises
    KeyboardInterrupt, so that every command's cleanup and :func:`_on_interrupt`'s hint run,
    instead of the silent death of the default action."""
    global _stopped_by
    if os.getpid() != _handler_pid:  # a forked child inherited the handler: die as before
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _stopped_by is not None:
        # A second one while the first is handled (under srun, torchrun's workers get SLURM's
        # and torchrun's): the cleanup goes on; SIGKILL remains for a process that hangs.
        return
    _stopped_by = signum
    raise KeyboardInterrupt


def install_signal_handlers() -> None:
    """Have SIGTERM take Ctrl-C's path (:func:`_stop_on_signal`). Only the main thread may
    install a handler, and only the CLI's process wants it (not a library user's)."""
    global _handler_pid, _stopped_by
    if threading.current_thread() is not threading.main_thread():
        return
    _handler_pid, _stopped_by = os.getpid(), None
    signal.signal(signal.SIGTERM, _stop_on_signal)


def _rank() -> str:
    """What leads an error line under torchrun: ``[rank N] `` but on rank 0 (escaped for
    Rich). Each process says its own error: one may meet it alone (a process without a GPU of
    its own, a disk of its node), and saying it on rank 0 alone lost it."""
    rank = os.environ.get("RANK", "0")
    return "" if rank == "0" else escape(f"[rank {rank}] ")


def _interrupt_exit_code() -> int:
    """128 + the signal's number, as shells report a process it killed: 130 for Ctrl-C
    (SIGINT), 143 for SIGTERM, which schedulers and scripts check for."""
    return 128 + (_stopped_by or signal.SIGINT)


def main() -> None:
    """Entry point: known errors become one red line and exit code 2, not a traceback; SIGTERM
    stops a command as Ctrl-C does (:func:`install_signal_handlers`)."""
    import errno

    global _interrupt_said
    _interrupt_said = False
    install_signal_handlers()
    try:
        app()
    except SystemExit as exc:
        # Stopped outside _on_interrupt (a short command, or while starting: Ctrl-C while
        # torch loads): Typer ends a KeyboardInterrupt with exit code 130 and no word (older
        # versions: "Aborted!", 1), which left a Ctrl-C unanswered.
        ctrl_c = _stopped_by is None and exc.code == 130 and not _interrupt_said
        if (_stopped_by is not None and exc.code in (1, 130)) or ctrl_c:
            if os.environ.get("RANK", "0") == "0":
                name = signal.Signals(_stopped_by or signal.SIGINT).name
                err_console.print(f"interrupted by {name}", markup=False, highlight=False)
            sys.exit(_interrupt_exit_code())
        raise
    except LocaldiscError as exc:
        # Messages name files and flags: a path with [...] in it is text, not Rich markup.
        err_console.print(
            f"{_rank()}[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        sys.exit(2)
    except MemoryError:  # a --size of 100 000 asked numpy for hundreds of GiB: a traceback
        err_console.print(
            f"{_rank()}[bold red]error:[/] {escape(_out_of_memory(sys.argv[1:]))}",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(2)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            # A full disk can also strike a log row or a figure, outside the checkpoint writers.
            message = (
                f"{where}disk full ({exc.strerror}); checkpoints already written are intact. "
                "Free some space and run again (--resume continues)."
            )
        elif exc.filename:  # a path the user gave or can fix: --out a file, no permission, ...
            folder = exc.errno in (errno.EEXIST, errno.ENOTDIR)  # --out FILE, or FILE/...
            hint = " (a file where a folder is needed)" if folder else ""
            message = f"{where}{exc.strerror}{hint}"
        else:
            raise
        err_console.print(
            f"{_rank()}[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True
        )
        sys.exit(2)


@contextmanager
def _on_interrupt(hint: Callable[[], str]) -> Iterator[None]:
    """Ctrl-C in a long run: one line on what is kept and how to go on, and exit code 130
    (128 + SIGINT, as shells report it) instead of a silent stop; SIGTERM, turned into
    KeyboardInterrupt by :func:`_stop_on_signal`, the same with exit code 143. ``hint`` is
    called then, so that it can look at what the run left on disk."""
    global _interrupt_said
    try:
        yield
    except KeyboardInterrupt:
        _interrupt_said = True
        if os.environ.get("RANK", "0") == "0":  # under torchrun: once, not once per process
            how = "" if _stopped_by is None else f" by {signal.Signals(_stopped_by).name}"
            err_console.print(
                f"interrupted{how}: {hint()}", markup=False, highlight=False, soft_wrap=True
            )
        raise typer.Exit(_interrupt_exit_code()) from None


@contextmanager
def _skip_bad_hint(skip_bad: bool) -> Iterator[None]:
    """An unreadable image that stops a command with ``--skip-bad`` (``pretrain``, ``datasets
    inspect``) says that the option skips it, as ``finetune``'s and ``predict``'s do. Not where
    it was given, nor for the installation's errors (pydicom missing), which it does not skip;
    the pool alone cannot say it: ``demo`` and ``shape-guided train`` read it too, without it."""
    from localdisc.errors import ImageReadError, ReaderSetupError

    try:
        yield
    except ImageReadError as exc:
        from localdisc.tasks.predict import SKIP_BAD_HINT

        if skip_bad or isinstance(exc, ReaderSetupError) or SKIP_BAD_HINT in exc.reason:
            raise
        raise ImageReadError(exc.path, f"{exc.reason}; {SKIP_BAD_HINT}") from exc


#: The options whose values set how much memory a command needs.
SIZE_OPTIONS = ("--size", "--pool-size", "--max-size", "--refine-size", "--batch", "--prior-count")


def _out_of_memory(argv: list[str]) -> str:
    """The line for a command that ran out of memory, naming the sizes it was given (every
    command's line named --size and --max-size, which pretrain has not)."""
    given = []
    for i, arg in enumerate(argv):
        option, equals, value = arg.partition("=")
        if option in SIZE_OPTIONS:
            given.append(f"{option} {value if equals else ' '.join(argv[i + 1 : i + 2])}")
    if not given:
        return "out of memory"
    return f"out of memory: smaller values of {', '.join(given)} need less"


def _resume_hint(out: Path) -> str:
    """How a `pretrain` or `shape-guided train` stopped in ``out`` goes on: --resume continues
    from its last checkpoint, once config.json is written (before that nothing is kept)."""
    from localdisc.engine.checkpoint import CHECKPOINT_PREFIX, list_checkpoints

    if not (out / "config.json").is_file():  # stopped while reading the pool, say
        return (
            f"the run had not started ({out / 'config.json'} not written); run the same "
            "command again"
        )
    kept = list_checkpoints(out / "checkpoints")
    if not kept:
        return (
            f"no checkpoint of the run in {out} yet; the same command with --resume starts it "
            "again from step 0"
        )
    step = int(kept[-1].name.removeprefix(CHECKPOINT_PREFIX))
    return (
        f"the last checkpoint (step {step}, {kept[-1]}) is kept; continue with the same command "
        "and --resume"
    )


# --- pre-training ------------------------------------------------------------------------------
#: `pretrain` and `shape-guided train` continue a run the same way.
RESUME_OPTION = typer.Option(
    False,
    "--resume",
    help="Continue from the last checkpoint, with the run's saved settings and number of "
    "processes; a finished run is left as it is. Without it, an --out holding a run is refused.",
)


@app.command()
def pretrain(
    data: list[str] = typer.Option(
        ...,
        "--data",
        help="A folder of images (recursive) or NAME:ROOT; repeatable (an image that two "
        "sources share, as a folder and its sub-folder, is used once).",
    ),
    out: Path = typer.Option(..., "--out", help="Run directory."),
    modality: str | None = typer.Option(
        None,
        help="fundus (3 channels) or xray (1 channel); default: that of --data (a known set's, "
        "else guessed from a folder's first images: grey ones are X-rays).",
    ),
    method: str = typer.Option(
        "ld",
        help="ld, or a peer method on the same network: simclr, densecl, pixpro, genesis "
        "(one stage of stage1 + stage2 steps, within the sum of both stages' budgets).",
    ),
    stage1_steps: int = typer.Option(20_000, help="Stage 1 steps (PD + mixup)."),
    stage2_steps: int = typer.Option(80_000, help="Stage 2 steps (+ region discrimination)."),
    stage1_seconds: float | None = typer.Option(
        None, help="End stage 1 after this many seconds, if its steps are not done by then."
    ),
    stage2_seconds: float | None = typer.Option(None, help="The same for stage 2."),
    batch: int = typer.Option(
        4,
        help="Items per step and process (each feeds 5 images; under torchrun the global batch "
        "is this times the processes).",
    ),
    size: int = typer.Option(448, help="Crop size S (multiple of 16)."),
    pool_size: int | None = typer.Option(
        None, help="Side of the pool images, cropped to S (default S x 8/7: 512 for 448)."
    ),
    crop_scale: tuple[float, float] = typer.Option(
        (0.9, 1.0),
        help="Area fraction of LD's random resized crop: MIN MAX (Models Genesis takes it too; "
        "SimCLR, DenseCL and PixPro keep theirs, 0.2 to 1).",
    ),
    clusters: int = typer.Option(16, help="Clusters K."),
    dim: int = typer.Option(32, help="Embedding dimension D."),
    width: int = typer.Option(16, help="Channels of the first VGG block (16: published)."),
    lr: float = typer.Option(1e-3, help="Adam learning rate (halved every 10 000 steps)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
    workers: int = typer.Option(4, help="Threads decoding the pool."),
    max_images: int | None = typer.Option(
        None,
        help="Use only the first N pool images, in the order of the --data sources (a folder's "
        "files sorted by path), generated images included. With --skip-bad, the files after the "
        "first N take the places of skipped ones.",
    ),
    checkpoint_every: int = typer.Option(1000, help="Steps between checkpoints."),
    seed: int = typer.Option(0),
    sampler: str = typer.Option(
        "epoch",
        help="How a step draws its pool images: epoch (each image once per epoch, a step's "
        "images distinct) or replacement (uniformly with replacement: how runs before this "
        "option drew).",
    ),
    resume: bool = RESUME_OPTION,
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable pool images."),
    sync_bn: bool = typer.Option(
        False, "--sync-bn", help="SyncBatchNorm across torchrun processes (CUDA GPUs only)."
    ),
    compile_model: bool = typer.Option(
        False, "--compile", help="torch.compile the network (GPU; compiles in the first steps)."
    ),
    amp: bool = typer.Option(
        True,
        "--amp/--no-amp",
        help="bf16 autocast where it pays: GPUs, and CPUs with bf16 instructions (AVX512-BF16, "
        "AMX); --no-amp trains in float32 everywhere.",
    ),
    padding: str = typer.Option("zeros", help="Convolution padding: zeros (published), circular."),
    depth: int = typer.Option(
        5,
        help="VGG16 blocks in the encoder (5: published; 2-3 for small images, see README).",
    ),
    center_sensitive: bool = typer.Option(
        False,
        "--center-sensitive",
        help="Gaussian (center-sensitive) patch pooling, for landmarks.",
    ),
    center_sigma: float = typer.Option(
        0.25,  # losses.patch.CENTER_SIGMA (not imported: torch would load for --help)
        help="Width of the center-sensitive Gaussian, as a fraction of the patch side.",
    ),
) -> None:
    """Pre-train an LD model (stage 1, then stage 2), or a peer method, on unlabelled images."""
    _check_parent("--out", out)  # --out A_FILE/x was found after the pool was decoded
    from localdisc.engine.pretrain import PretrainConfig
    from localdisc.engine.pretrain import pretrain as run_pretrain

    config = PretrainConfig(
        data=list(data), modality=modality or _data_modality(data, out if resume else None),
        method=method,
        stage1_steps=stage1_steps,
        stage2_steps=stage2_steps, stage1_seconds=stage1_seconds, stage2_seconds=stage2_seconds,
        batch=batch, size=size, pool_size=pool_size, crop_scale=crop_scale, clusters=clusters,
        dim=dim, width=width, lr=lr, device=device, workers=workers, max_images=max_images,
        seed=seed, sampler=sampler, checkpoint_every=checkpoint_every, skip_bad=skip_bad,
        sync_bn=sync_bn, padding=padding, compile=compile_model, amp=amp, depth=depth,
        center_sigma=center_sigma if center_sensitive else None,
    )  # fmt: skip
    from localdisc.engine import distributed

    with _on_interrupt(lambda: _resume_hint(out)), _skip_bad_hint(skip_bad):
        result = run_pretrain(config, out, resume=resume, log=_log)
    distributed.cleanup()
    if distributed.is_main_process():
        # A time budget that ends stage 1 early skips step numbers: say how many steps ran.
        numbering = "" if result.trained_steps == result.steps else f" (last step {result.steps})"
        speed = (
            "already finished" if result.already_finished else f"{result.images_per_s:.1f} images/s"
        )
        console.print(
            f"done: {result.trained_steps} steps{numbering}, {speed}, "
            f"final loss {result.final_loss:.4f}; outputs in [bold]{_path(out)}[/]"
        )


def _data_modality(data: list[str], out: Path | None = None) -> str:
    """The modality of ``--data`` where ``--modality`` is not given, said in the log (it was
    fundus, and a folder of radiographs was pre-trained as photographs without a word); a run
    in ``out`` to resume keeps its own."""
    import contextlib
    import json

    from localdisc.data.pool import guess_pool_modality
    from localdisc.engine import distributed

    # A run that goes on (a checkpoint or its weights there), not a config.json left by a run
    # stopped before its first checkpoint, which starts again on the data given.
    going_on = out is not None and (
        any((out / "checkpoints").glob("step_*")) or (out / "model.safetensors").is_file()
    )
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):
        if going_on:
            saved = json.loads((out / "config.json").read_text())["pretrain"]["modality"]
            if saved in ("fundus", "xray"):
                return saved
    main = distributed.is_main_process()  # under torchrun, said once
    modality = guess_pool_modality(data, _log if main else None)
    if main:
        _log(f"modality {modality}: that of --data (--modality chooses)")
    return modality


@app.command()
def demo(
    out: Path = typer.Option(Path("localdisc-demo"), "--out", help="Output folder."),
    quick: bool = typer.Option(False, "--quick", help="A few steps at tiny size (seconds)."),
    data: list[str] | None = typer.Option(
        None, "--data", help="Your own images (folder or NAME:ROOT) instead of the built-in ones."
    ),
    modality: str | None = typer.Option(
        None, help="fundus or xray; default: that of --data (fundus for the built-in images)."
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
    seed: int = typer.Option(0),
) -> None:
    """Pre-train a small LD model and draw what it learnt (4-6 minutes on 2 CPU cores)."""
    _check_parent("--out", out)  # --out A_FILE/x was found after the pool was decoded
    if modality is None:  # a demo in --out goes on with its own
        modality = _data_modality(data, out) if data else "fundus"
    from localdisc.demo import run_demo

    # The demo continues its own pre-training in --out when run again (no --resume needed).
    hint = (
        f"run the same command again: the pre-training in {out} continues from its last checkpoint"
    )
    with _on_interrupt(lambda: hint):
        written = run_demo(
            out, quick=quick, data=data or None, modality=modality, device=device, seed=seed,
            log=_log,
        )  # fmt: skip
    console.print("[bold green]demo finished.[/] Outputs:")
    for name, path in written.items():
        console.print(f"  {name:>10}: {_path(path)}")


# --- transfer ----------------------------------------------------------------------------------
def _finetune_hint(out: Path) -> str:
    """How a `finetune` stopped in ``out`` goes on: the same command continues from the
    checkpoint the run wrote (at the signal, or its last one), else redoes it."""
    from localdisc.engine.finetune import checkpoint_position
    from localdisc.tasks.transfer import CHECKPOINT

    if (out / "metrics.json").is_file():  # stopped after its last output
        return f"the fine-tuning had finished ({out / 'metrics.json'} is written)"
    where = checkpoint_position(out / CHECKPOINT)
    if where is None:
        return "no checkpoint of the fine-tuning yet; run the same command again to redo it"
    return (
        f"its checkpoint is kept in {out / CHECKPOINT}; run the same command again to continue "
        f"from there ({where})"
    )


@app.command()
def finetune(
    dataset: str = typer.Option(
        ...,
        "--dataset",
        help="Labelled data: NAME:ROOT or a folder (a folder has no test split: --test-fraction "
        "of its labelled images, chosen by file name, are held out for testing, the same for "
        "every --labels and --seed; its images without a mask are unlabelled: never tested or "
        "trained on, but in the batch-norm recalibration, and listed in metrics.json).",
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        help="Output folder (model, metrics, predictions); an interrupted run of the same "
        "settings there continues from its checkpoint, a finished one is left as it is (its "
        "metrics shown), one with other settings is refused.",
    ),
    target: str | None = typer.Option(None, help="Mask to learn (default: the set's default)."),
    init: str = typer.Option(
        "random", help="An LD run directory (or one of its weight files), or random."
    ),
    labels: str = typer.Option(
        "all",
        help="Labelled images: N, a fraction in (0, 1), or all, of the training split (of a "
        "folder: the images with a mask not held out for testing).",
    ),
    test_fraction: float = typer.Option(
        0.2,
        help="Of a set without a test split (a folder): the fraction of its labelled images held "
        "out for testing, in [0, 1); 0 holds out none: every labelled image is for training and "
        "validation (no test metrics then). A set with its own test split refuses another "
        "value.",
    ),
    frozen_epochs: int = typer.Option(100, help="Epochs with the pre-trained encoder frozen."),
    epochs: int = typer.Option(100, help="Epochs of full fine-tuning (or from scratch)."),
    size: int = typer.Option(512, help="Resize to SIZE x SIZE (a multiple of 16, at least 32)."),
    batch: int = typer.Option(2),
    steps_per_epoch: int | None = typer.Option(
        None, help="Steps per epoch (default: one pass over the labelled images, as published)."
    ),
    lr: float = typer.Option(1e-3, help="Adam learning rate."),
    seed: int = typer.Option(0, help="Picks the labelled images and seeds training."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
    recalibrate_bn: bool = typer.Option(
        False,
        help="Save the model with batch-norm statistics recomputed over every training-split "
        "image, labels unused (the paper keeps training's; metrics.json reports both).",
    ),
    skip_bad: bool = typer.Option(
        False,
        "--skip-bad",
        help="Read every image first and leave out the unreadable ones (truncated files, DICOM "
        "without pixel data) before the split is drawn, each named in the log and listed under "
        '"skipped" in metrics.json, instead of stopping at the first; an unreadable mask still '
        "stops the run.",
    ),
    modality: str | None = typer.Option(
        None,
        help="fundus or xray: a folder's images are of it; default: guessed from them (grey "
        "ones are taken for X-rays: give fundus for red-free fundus photographs). A known data "
        "set's are of its own.",
    ),
) -> None:
    """Fine-tune a segmentation model with few labels (the paper's protocol) and evaluate it."""
    from localdisc.engine.finetune import FinetuneConfig
    from localdisc.tasks.predict import skipped_clause
    from localdisc.tasks.transfer import TransferConfig, run_transfer

    train = FinetuneConfig(
        frozen_epochs=frozen_epochs, epochs=epochs, batch=batch, steps_per_epoch=steps_per_epoch,
        lr=lr, seed=seed, device=device,
    )  # fmt: skip
    config = TransferConfig(
        dataset, target, init, labels, size, train=train, recalibrate_bn=recalibrate_bn,
        test_fraction=test_fraction, skip_bad=skip_bad, modality=modality,
    )  # fmt: skip
    # No --resume: the same command continues an interrupted run (its settings are checked).
    with _on_interrupt(lambda: _finetune_hint(out)):
        metrics = run_transfer(config, out, log=_log)
    # The images --skip-bad left out (a run reused as finished: those it left out).
    skipped = escape(skipped_clause(len(metrics.get("skipped", [])), out / "metrics.json"))
    if "summary" not in metrics:  # --test-fraction 0: no image held out, nothing tested
        dice, validation = metrics["phases"][-1]["best_val_dice"], metrics["validation"]
        # Not "N labelled image(s) trained on": a fifth of them validate (the validation note).
        console.print(
            f"[bold green]no test split[/] (--test-fraction 0): no image tested; validation "
            f"Dice {dice:.4f} ({escape(validation)})"
        )
        console.print(
            f"model in [bold]{_path(out)}[/] (segment new images with `localdisc predict --model "
            f"{_path(out)}`; metrics.json, history.csv){skipped}"
        )
        return
    summary = metrics["summary"]
    shown = _summary_text(summary, summary["dice"]["n"])
    console.print(f"[bold green]test[/] ({summary['dice']['n']} images): {shown}")
    console.print(
        f"outputs in [bold]{_path(out)}[/] (metrics.json, predictions/, figures/){skipped}"
    )


@app.command()
def predict(
    model: Path = typer.Option(
        ...,
        "--model",
        help="A folder written by `localdisc finetune` or `localdisc shape-guided vessels` "
        "(which segments as that command did: flips, specks dropped).",
    ),
    images: list[Path] = typer.Option(
        ..., "--images", help="Image files or folders (recursive); repeatable."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder."),
    threshold: float = typer.Option(
        0.5, min=0.0, max=1.0, help="Probability at or above which a pixel is foreground."
    ),
    fov_masks: Path | None = typer.Option(
        None, help="A folder of FOV masks named as the images: background outside them."
    ),
    masks: Path | None = typer.Option(
        None,
        "--masks",
        help="A folder of true masks named as the images (as the folder data set matches them; "
        "DRIVE's 1st_manual/, STARE's labels-ah/ and CHASE_DB1's as they are): "
        "score the outputs against them into OUT/metrics.json, as `finetune` does, inside the "
        "--fov-masks (else a FOV found in each fundus image); images without one are named "
        "and not scored.",
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
    skip_bad: bool = typer.Option(
        False,
        "--skip-bad",
        help="Skip unreadable images (DICOM without pixel data such as structured reports, "
        'truncated files), each named in the log and listed under "skipped" in predict.json, '
        "instead of stopping at the first; the exit code stays 0.",
    ),
) -> None:
    """Segment new images at their own size: NAME_prob.png and NAME_mask.png per image, and
    predict.json (what produced them)."""
    from localdisc.tasks.predict import predict_images, skipped_clause

    def hint() -> str:  # outputs are written one image at a time; predict.json lists them all
        return (
            f"the images segmented so far are in {out} (its predict.json says finished: false); "
            "run the same command again to segment them all"
        )

    with _on_interrupt(hint):
        written = predict_images(
            model, images, out, threshold=threshold, fov_masks=fov_masks, masks=masks,
            device=device, progress=True, log=_log, skip_bad=skip_bad,
        )  # fmt: skip
    console.print(
        f"segmented {len(written)} image(s) into [bold]{_path(out)}[/]"
        + escape(skipped_clause(len(written.skipped), out / "predict.json"))
    )
    if (metrics := written.metrics) is not None:
        shown = _summary_text(metrics["summary"], len(metrics["per_image"]))
        console.print(f"[bold green]scored[/] ({len(metrics['per_image'])} images): {shown}")
        console.print(f"per image in [bold]{_path(out / 'metrics.json')}[/]")


# --- similarity and landmarks ------------------------------------------------------------------
@app.command()
def similarity(
    model: Path = typer.Option(
        ...,
        "--model",
        help="An LD run directory, or one of its weight files (RUN/stage1.safetensors).",
    ),
    image: Path = typer.Option(..., "--image", help="The query image."),
    point: list[str] = typer.Option(
        ..., "--point", help="Query point X,Y in pixels of --image (x: column, y: row); repeatable."
    ),
    targets: list[Path] = typer.Option(
        [],
        "--targets",
        help="Other images, or folders of them (recursive, as localize --images; one found in a "
        "folder is named as localize names it: a/x.png -> a_x); repeatable.",
    ),
    out: Path = typer.Option(
        Path("similarity.png"),
        "--out",
        help="Figure to write; localdisc-figures.json beside it lists it, so that no command "
        "reads it as an image of that folder.",
    ),
    level: str = typer.Option("pixel", help="pixel, or patch (pooled as in pre-training)."),
    size: int | None = typer.Option(
        None,
        help="Resize images to this longer side first (default: the model's pre-training pool "
        "size, as localize and view).",
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
) -> None:
    """Cosine-similarity maps of query points on their image and on other images: each point's
    best match in every target, and a figure (a row per point: the image with the point, then its
    map on each image, best match circled, a colour bar from -1 to 1)."""
    from localdisc.engine.distributed import resolve_device
    from localdisc.tasks.predict import collect_images
    from localdisc.tasks.similarity import (
        check_inside,
        check_size,
        figure_path,
        figures_listed,
        load_model,
        parse_point,
        read_images,
        similarity_figure,
    )
    from localdisc.tasks.similarity import similarity as similarity_maps

    # Checked before the work: a bad size, figure suffix, --out under a file or point would
    # otherwise fail later.
    check_size(size, "--size")
    out = figure_path(out)
    _check_parent("--out", out)
    figures_listed(out.parent)  # another program's record there is refused: before the work
    # A folder's images as localize finds and names them, but the query image and the figure
    # of an earlier call (--out in it: a rerun was refused, or scored the figure); a file
    # keeps its file name.
    named: list[tuple[str, Path]] = []
    own = {image.resolve(), out.resolve()}
    for target in targets:
        if target.is_dir():
            found = collect_images([target], suffixes=(), log=_log)
            named += [(n, f) for n, f in found if f.resolve() not in own]
        else:
            named.append((target.name, target))
    files = [file for _, file in named]
    _check_not_an_input("--out", out, [image, *files, model])
    query, *others = read_images([image, *files], _log)
    points = [parse_point(p) for p in point]
    for xy in points:
        check_inside("--point", xy, query.shape, str(image))
    loaded = load_model(model, device=str(resolve_device(device)))
    result = similarity_maps(loaded, query, points, others, level=level, size=size)
    names = [image.name, *(name for name, _ in named)]
    written = similarity_figure(result, query, others, out, names)
    console.print(
        "points and best matches: (x, y) = (column, row) in each file's pixels; cosine "
        f"similarity of {level} embeddings at the match (1: the same)"
    )
    for p, (x, y) in enumerate(points):
        best = ", ".join(
            f"{_path(t)} ({bx:.0f}, {by:.0f}) cosine {sim[p][int(by), int(bx)]:.3f}"
            for (t, _), b, sim in zip(named, result.best, result.targets, strict=True)
            for bx, by in [b[p]]
        )  # fmt: skip
        console.print(f"point ({x:g}, {y:g}): best match {best or '-'}")
    console.print(f"figure: [bold]{_path(written)}[/]")


@app.command()
def localize(
    model: Path = typer.Option(
        ...,
        "--model",
        help="An LD run directory, or one of its weight files (RUN/stage1.safetensors).",
    ),
    template: Path = typer.Option(..., "--template", help="The annotated template image."),
    landmarks: Path = typer.Option(
        ...,
        "--landmarks",
        help='JSON {"name": [x, y], ...}: x the column, y the row, in the template file\'s pixels.',
    ),
    images: list[Path] = typer.Option(..., "--images", help="Images or folders; repeatable."),
    out: Path = typer.Option(
        Path("predictions.json"),
        "--out",
        help='Predictions (JSON): {"images": {NAME: {LANDMARK: {x, y, confidence}}}, "files": '
        '{NAME: file}, "coordinates": x column, y row in each file\'s pixels, the template, '
        'landmarks, model, size and mirror used, "environment": where and when}.',
    ),
    overlay: Path | None = typer.Option(
        None, "--overlay", help="Folder of its own for overlay figures (NAME.png)."
    ),
    size: int | None = typer.Option(
        None, help="Working size (default: the pre-training pool size)."
    ),
    mirror: bool = typer.Option(
        False, "--mirror", help="Also try the template mirrored left-right (left and right eyes)."
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
    truth: Path | None = typer.Option(
        None,
        "--truth",
        help='True landmarks to score against, JSON {IMAGE: {"name": [x, y], ...}, ...} in each '
        "file's pixels; IMAGE: the image's name in the predictions, or its file name (x.png). "
        'Adds "errors" and "summary" to --out; images without truth are not scored. In mm too '
        "where every scored image's file gives its pixel spacing (DICOM PixelSpacing, JSRT .IMG).",
    ),
    pixel_spacing: float | None = typer.Option(
        None,
        "--pixel-spacing",
        help="With --truth: mm per pixel of every image, for mm errors, instead of the spacing "
        "the image files give.",
    ),
    skip_bad: bool = typer.Option(
        False,
        "--skip-bad",
        help="Skip unreadable images (DICOM without pixel data such as structured reports, "
        'truncated files), each named in the log and listed under "skipped" in --out, instead '
        "of stopping at the first; the exit code stays 0. Never the template.",
    ),
) -> None:
    """One-shot landmark localisation: find the template's landmarks in new images."""
    import filecmp
    import json

    from localdisc.data.io import header_metas, header_notes
    from localdisc.engine.checkpoint import atomic_write_text
    from localdisc.engine.distributed import resolve_device
    from localdisc.eval.provenance import environment
    from localdisc.tasks.localize import (
        COORDINATES,
        SearchConfig,
        check_pixel_spacing,
        localize_images,
        read_landmarks,
        read_truth,
        score_predictions,
        score_table,
        spacing_note,
    )
    from localdisc.tasks.predict import SkippedImages, collect_images, skipped_clause
    from localdisc.tasks.similarity import check_size, load_model

    # Checked before the work, which a bad size or output would otherwise waste.
    check_size(size, "--size")
    check_pixel_spacing(pixel_spacing, "--pixel-spacing")
    if pixel_spacing is not None and truth is None:
        raise LocaldiscError("--pixel-spacing gives the errors in mm: it needs --truth")
    if out.is_dir():
        raise LocaldiscError(f"--out {out} is a folder; give the predictions' JSON file")
    _check_parent("--out", out)
    if overlay is not None and overlay.exists() and not overlay.is_dir():
        raise LocaldiscError(f"--overlay {overlay} is a file; give a folder for the figures")
    if overlay is not None:
        _check_parent("--overlay", overlay)
    if (
        overlay is not None
        and overlay.is_dir()
        and any(p.is_dir() and p.samefile(overlay) for p in images)
    ):
        raise LocaldiscError(f"--overlay {overlay} is an --images folder; give a folder of its own")
    if overlay is not None and overlay.absolute() == out.absolute():
        # all the work ran, then the predictions' file was a folder of overlays
        raise LocaldiscError(f"--overlay {overlay} is --out {out}; give each its own place")
    spots = read_landmarks(landmarks)
    # Overlays in a sub-folder of an --images folder are not images to localise on a rerun.
    found = collect_images(images, out_dir=overlay, suffixes=(), log=_log)
    inputs = [template, landmarks, model, *([truth] if truth else []), *(p for _, p in found)]
    _check_not_an_input("--out", out, inputs)
    skips = SkippedImages(skip_bad, _log, len(found))
    # A phone photograph's EXIF turn is not applied: said before any point is checked.
    for note in header_notes(header_metas([template, *(path for _, path in found)])):
        _log(f"note: {note}")
    # Before the model: an unknown image or landmark, or a point outside its image, is refused.
    true = read_truth(truth, found, spots, skips) if truth is not None else None
    skips.kept(found)  # every image skipped reading the truth: refused before the model
    # The template among the images (a folder of annotated images and one truth file) found its
    # own points, near 0 px, in every summary (a reviewer's 6 images: mean 175 px, 210 without).
    itself = next((n for n, p in found if filecmp.cmp(p, template, shallow=False)), None)
    if true is not None and itself in true:
        true.drop(itself)
        if not true:
            raise LocaldiscError(
                f"{truth}: its only annotated image, {itself}, is the template's file: it would "
                "find its own points; give other annotated images to score"
            )
        _log(f"note: the template is among --images ({itself}): localised, not scored (it "
             "finds its own points)")  # fmt: skip
    else:
        itself = None  # nothing left out of the scores
    resolved = resolve_device(device)
    env = environment(resolved)  # at the start: where and when the predictions were made
    loaded = load_model(model, device=str(resolved))
    results = localize_images(
        loaded, template, spots, found, config=SearchConfig(size=size, mirror=mirror),
        overlay_dir=overlay, truth=true, skips=skips, log=_log,
    )  # fmt: skip
    found = skips.kept(found)
    # mm at --pixel-spacing for every image, else at each one's own (its file's) where all have one.
    own = true.spacings if true is not None and pixel_spacing is None else None
    scores = (
        score_predictions(results, true, pixel_spacing, spacings=own) if true is not None else {}
    )
    record = {
        # The images under a key of their own: an image named "environment" cannot clash.
        "images": results, "coordinates": COORDINATES,
        "files": {name: str(path.absolute()) for name, path in found},
        "template": str(template.absolute()),
        "landmarks": {k: list(v) for k, v in spots.items()}, "model": str(model.absolute()),
        "size": size or loaded.pool_size, "mirror": mirror, "environment": env,
        "skipped": skips.record(),
    }  # fmt: skip
    if truth is not None:
        if scores["summary"]["spacings"]:  # which header tag gave each image's mm
            scores["summary"]["spacing_sources"] = {
                n: true.metas[n].spacing_source for n in scores["summary"]["spacings"]
            }
        record.update(truth=str(truth.absolute()), **scores)
        if itself is not None:
            record["template_not_scored"] = itself
    atomic_write_text(out, json.dumps(record, indent=2))
    console.print(
        f"localised {len(results)} image(s): [bold]{_path(out)}[/]"
        + escape(skipped_clause(len(skips.skipped), out))
    )
    if scores and true is not None:
        unscored = len(results) - scores["summary"]["images"] - (itself is not None)
        _log(
            f"scored {scores['summary']['images']} image(s) against {truth}"
            + (f" ({unscored} without truth: not scored)" if unscored else "")
            + f"; radial errors {spacing_note(scores['summary'], true.metas)}:"
        )
        _log(score_table(scores["summary"]))


# --- benchmarks --------------------------------------------------------------------------------
# --- shape-guided segmentation -----------------------------------------------------------------
shape_app = typer.Typer(
    help="Segment anatomy without labels: LD clustering guided by a shape prior.",
    no_args_is_help=True,
    **PLAIN,
)
app.add_typer(shape_app, name="shape-guided")


@shape_app.callback()
def _shape_guided(ctx: typer.Context) -> None:
    """Segment anatomy without labels: LD clustering guided by a shape prior."""
    _refuse_torchrun(f"shape-guided {ctx.invoked_subcommand}")


@shape_app.command("train")
def shape_guided_train(
    data: list[str] = typer.Option(
        ..., "--data", help="Unlabelled images: a folder or NAME:ROOT; repeatable."
    ),
    prior: str = typer.Option(
        ...,
        "--prior",
        help="Reference shapes: a folder of masks, NAME:ROOT[:TARGET], or "
        "simulated:vessels|lungs|heart|optic_disc|fovea.",
    ),
    out: Path = typer.Option(..., "--out", help="Run directory."),
    init: Path | None = typer.Option(
        None,
        "--from",
        help="A pre-training run to start from (then stage 1 is skipped); "
        "RUN/stage1.safetensors starts from its stage-1 weights, as the method does.",
    ),
    modality: str | None = typer.Option(
        None,
        help="fundus (3 channels) or xray (1 channel); default: that of --data, as pretrain "
        "takes it; with --from, the run's.",
    ),
    clusters: int = typer.Option(8, help="Clusters K; cluster 0 is the target."),
    stage1_steps: int = typer.Option(2_000, help="Stage 1 steps (ignored with --from)."),
    stage2_steps: int = typer.Option(4_000, help="Stage 2 steps, with the shape prior."),
    stage1_seconds: float | None = typer.Option(None, help="Time budget of stage 1."),
    stage2_seconds: float | None = typer.Option(None, help="Time budget of stage 2."),
    batch: int = typer.Option(
        4,
        help="Items per step and process (each feeds 5 images; under torchrun the global batch "
        "is this times the processes).",
    ),
    size: int = typer.Option(448, help="Crop size S (multiple of 16)."),
    pool_size: int | None = typer.Option(
        None, help="Side of the images, cropped to S (default S x 8/7: 512 for 448)."
    ),
    crop_scale: tuple[float, float] = typer.Option(
        (0.9, 1.0), help="Area fraction of the random resized crop: MIN MAX."
    ),
    depth: int = typer.Option(
        5, help="VGG blocks of the encoder (5: published); with --from, the run's."
    ),
    width: int = typer.Option(
        16, help="Channels of the first VGG block (16: published); with --from, the run's."
    ),
    prior_weight: float = typer.Option(1.0, help="Weight of the adversarial shape term."),
    lr: float = typer.Option(
        1e-3, help="Adam learning rate (halved every 10 000 steps within each stage)."
    ),
    prior_count: int = typer.Option(
        200, help="Masks drawn from a simulated prior (segment votes with the same bank)."
    ),
    prior_pose: str = typer.Option(
        "free",
        help="free: reference masks at any angle (published, vessels); kept: prior and views "
        "keep the pose and the discriminator sees positions (organs of PA radiographs).",
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
    seed: int = typer.Option(0),
    resume: bool = RESUME_OPTION,
) -> None:
    """Train LD with an adversarial shape prior on cluster 0 (shape-guided clustering)."""
    _check_parent("--out", out)  # --out A_FILE/x was found after the pool was decoded
    from localdisc.engine import distributed
    from localdisc.engine.pretrain import PretrainConfig
    from localdisc.engine.pretrain import pretrain as run_pretrain

    # A resumed run's checkpoint holds every weight, and its config.json the network: the
    # --from run is not read then, and may be gone (it was refused).
    resuming = resume and (out / "config.json").is_file()
    if modality is None and not init:  # with --from, the run's (below)
        modality = _data_modality(data, out if resume else None)
    architecture = {"modality": modality, "depth": depth, "width": width}
    if init:  # the architecture of the run it starts from
        from localdisc.models.ld import BACKBONE_FIELDS, LDConfig

        source = LDConfig.from_run(out if resuming else init)
        architecture = {k: getattr(source, k) for k in BACKBONE_FIELDS}
        # The log said nothing of it: which weights, that stage 1 is skipped, and that the
        # network is the run's whatever --modality, --depth or --width said.
        taken = ", ".join(f"{k} {v}" for k, v in architecture.items())
        if not resuming:
            _log(f"stage 2 from the weights of {init} (stage 1 skipped); the network is "
                 f"that run's: {taken}")  # fmt: skip
    config = PretrainConfig(
        data=list(data), stage1_steps=0 if init else stage1_steps, stage2_steps=stage2_steps,
        stage1_seconds=stage1_seconds, stage2_seconds=stage2_seconds, batch=batch, size=size,
        pool_size=pool_size, crop_scale=crop_scale, clusters=clusters, device=device, seed=seed,
        prior=prior, prior_weight=prior_weight, prior_count=prior_count, prior_pose=prior_pose,
        lr=lr, init_from=str(init) if init else None, **architecture,
    )  # fmt: skip
    with _on_interrupt(lambda: _resume_hint(out)):
        result = run_pretrain(config, out, resume=resume, log=_log)
    distributed.cleanup()
    if distributed.is_main_process():
        console.print(f"done: {result.steps} steps; model in [bold]{_path(out)}[/]")


@shape_app.command("segment")
def shape_guided_segment(
    model: list[Path] = typer.Option(
        ...,
        "--model",
        help="A shape-guided training run; repeat it for an ensemble (e.g. the seeds of one "
        "recipe): each run's outputs in OUT/run-K, their mean in OUT.",
    ),
    images: list[Path] = typer.Option(..., "--images", help="Image files or folders."),
    out: Path = typer.Option(..., "--out", help="Output folder."),
    size: int | None = typer.Option(None, help="Working size (default: the run's pool size)."),
    refine_steps: int = typer.Option(
        0, help="Train a refinement network on the pseudo-labels for this many steps (0: no)."
    ),
    topology: bool = typer.Option(
        True, help="Hold A and refined to an organ prior's pieces, with no holes."
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
    masks: Path | None = typer.Option(
        None,
        "--masks",
        help="A folder of true masks named as the images (matched as `predict --masks` matches "
        "them): score every output in OUT against them into OUT/metrics.json and the log; "
        "images without one are named and not scored.",
    ),
    skip_bad: bool = typer.Option(
        False,
        "--skip-bad",
        help="Skip unreadable images (DICOM without pixel data such as structured reports, "
        'truncated files), each named in the log and listed under "skipped" in '
        "OUT/segment.json, instead of stopping at the first; the exit code stays 0.",
    ),
) -> None:
    """Write outputs A (cluster 0) and B (region similarity) per image, and refined masks.

    With a kept-pose prior (--prior-pose kept), A and B are first moved sideways by one shift
    estimated from all the images given (logged), as the run's maps drift to one side."""
    from localdisc.engine.pseudo_label import kept_checkpoints
    from localdisc.tasks.predict import skipped_clause
    from localdisc.tasks.shape_guided import REFINE_CHECKPOINT, SEGMENT_RECORD, segment_images

    def hint() -> str:  # a stopped refinement continues from its checkpoint
        kept = kept_checkpoints(out, REFINE_CHECKPOINT)
        if not kept:
            return (
                "run the same command again (same --out): it segments again (an ensemble "
                "keeps the runs it finished)"
            )
        return (
            f"the refinement's checkpoint is kept in {'; '.join(kept)}; run the same command "
            "again (same --out) to continue from there"
        )

    with _on_interrupt(hint):
        written = segment_images(
            model, images, out, size=size, refine_steps=refine_steps, topology=topology,
            device=device, log=_log, progress=True, masks=masks, skip_bad=skip_bad,
        )  # fmt: skip
    console.print(
        f"{len(written)} mask(s) written to [bold]{_path(out)}[/]"
        + escape(skipped_clause(len(written.skipped), out / SEGMENT_RECORD))
    )


@shape_app.command("vessels")
def shape_guided_vessels(
    images: list[Path] = typer.Option(..., "--images", help="Fundus photographs, or folders."),
    out: Path = typer.Option(
        ..., "--out", help="Output folder (masks, the network, vessels.csv, a figure)."
    ),
    prior: str = typer.Option(
        "simulated:vessels",
        "--prior",
        help="Vessel masks whose vessel fraction the teacher keeps: a folder, NAME:ROOT:TARGET "
        "or simulated:vessels.",
    ),
    fraction: float | None = typer.Option(
        None, help="The expected vessel share of the FOV instead of the prior's."
    ),
    teacher: str = typer.Option(
        "line", help="The filter that teaches: line, sato, frangi, or several joined by +."
    ),
    painted: int = typer.Option(2, help="Copies of each image with a simulated tree painted on."),
    steps: int = typer.Option(1200, help="Training steps (1 200: about 6 min on 2 CPU cores)."),
    speck_area: float = typer.Option(
        6e-4, help="Mask pieces smaller than this share of the FOV are dropped (0: none)."
    ),
    max_size: int = typer.Option(768, help="Larger images are shrunk to this longer side."),
    fov_masks: Path | None = typer.Option(
        None,
        help="A folder of FOV masks named as the images (01_test.gif or 01_test_mask.gif); "
        "without it each FOV is found in its image.",
    ),
    train_images: int = typer.Option(
        50, help="Taught on this many of the images at most (seeded draw); all are segmented."
    ),
    reteach_unusual: bool = typer.Option(
        False,
        help="Images not taught on that the log names as unusual get a run of their own (a "
        "second network, in OUT/unusual), whose masks replace theirs.",
    ),
    teach_all: bool = typer.Option(
        False,
        help="Teach on every image: more than --train-images are split into seeded groups of at "
        "most that many, each with a network of its own (OUT/group-K).",
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
    seed: int = typer.Option(0),
    masks: Path | None = typer.Option(
        None,
        "--masks",
        help="A folder of true vessel masks named as the images (matched as `predict --masks` "
        "matches them): score the masks written against them into OUT/metrics.json and the "
        "log; images without one are named and not scored. Not a training setting: a finished "
        "run is kept and scored.",
    ),
    skip_bad: bool = typer.Option(
        False,
        "--skip-bad",
        help="Skip unreadable images (DICOM without pixel data such as structured reports, "
        'truncated files), each named in the log and listed under "skipped" in the network\'s '
        "OUT/config.json (OUT/group-K/config.json with --teach-all), instead of stopping at the "
        "first; the exit code stays 0.",
    ),
) -> None:
    """Segment retinal vessels with no label: a network taught on the images themselves by a
    filter's sure pixels and by simulated trees painted on them."""
    from localdisc.engine.pseudo_label import kept_checkpoints
    from localdisc.tasks.self_training import STUDENT_CHECKPOINT, StudentConfig
    from localdisc.tasks.vessels import segment_vessels_self_trained

    config = StudentConfig(method=teacher, painted=painted, steps=steps, seed=seed, device=device)

    def hint() -> str:  # what a rerun takes up: saved networks, a training's checkpoint
        networks = [out / "model.safetensors", *sorted(out.glob("*/model.safetensors"))]
        saved = [str(path.parent) for path in networks if path.is_file()]
        kept = kept_checkpoints(out, STUDENT_CHECKPOINT)
        said = [f"the network(s) saved in {', '.join(saved)} are kept"] if saved else []
        if kept:
            said.append(f"the checkpoint of the network in training in {'; '.join(kept)}")
        if not said:
            return (
                "no network was saved yet; run the same command again (same --out): it teaches "
                "the network again"
            )
        if not saved:  # nothing to segment with yet: the training goes on first
            rerun = "it continues the training from its checkpoint, then segments"
        else:
            rerun = "it segments with a saved network of the same settings" + (
                ", and continues the training from its checkpoint" if kept else ""
            )
        return f"{', and '.join(said)}; run the same command again (same --out): {rerun}"

    with _on_interrupt(hint):
        segment_vessels_self_trained(
            images, out, prior=prior, fraction=fraction, config=config, speck_area=speck_area,
            max_size=max_size, fov_masks=fov_masks, train_images=train_images,
            reteach_unusual=reteach_unusual, teach_all=teach_all, masks=masks, log=_log,
            skip_bad=skip_bad,
        )  # fmt: skip


benchmark_app = typer.Typer(help="Reproducible comparisons with tables and figures.", **PLAIN)
app.add_typer(benchmark_app, name="benchmark")


@benchmark_app.callback()
def _benchmark(ctx: typer.Context) -> None:
    _refuse_torchrun(f"benchmark {ctx.invoked_subcommand}")


def _csv(option: str, text: str | None) -> list[str] | None:
    """The items of a comma-separated option, ``None`` where it is not given. One given empty
    (``--tasks ""``, or only commas) is refused: as ``[]`` it was read as not given, and the
    whole default ran."""
    if text is None:
        return None
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise LocaldiscError(f"{option} is empty: give comma-separated values, or leave it out")
    return items


@benchmark_app.command("transfer")
def benchmark_transfer(
    inits: str | None = typer.Option(
        None,
        help="Comma-separated: random, LD run folders, or ld (pre-trained here with the --quick "
        "or --cpu-scale preset; refused without one) [default: random; --quick and --cpu-scale: "
        "random,ld].",
    ),
    tasks: str | None = typer.Option(
        None,
        help="Comma-separated: drive, stare, chase_db1, hrf, scr_lung, scr_heart, scr_clavicle, "
        "synthetic_fundus, synthetic_xray [default: the paper's seven; --quick: the synthetic "
        "two; --cpu-scale: drive]; or data sets of your own, as finetune --dataset takes them: "
        "a folder (images + masks; labelled by its name, with its parent's where two share one; "
        "fundus=FOLDER or xray=FOLDER names its modality, else guessed: grey is X-ray) "
        "or NAME:ROOT[:TARGET] (jsrt_scr:/data/JSRT:heart). One of those that does not exist "
        "or has no masks is refused before any training; a paper task without data under "
        "--data-root is skipped.",
    ),
    labels: str | None = typer.Option(
        None, help="Comma-separated label budgets: N, fraction or all [default: 2,all; presets: 2]."
    ),
    seeds: int | None = typer.Option(
        None, help="Seeds per setting; they pick the labelled images [default: 3; --quick: 1]."
    ),
    data_root: str | None = typer.Option(
        None, help="Folder laid out like shared/data (default: $LOCALDISC_DATA)."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder (results.json, results.md)."),
    size: int | None = typer.Option(
        None,
        help="Image size (a multiple of 16, at least 32) [default: 512; --quick: 64; "
        "--cpu-scale: 256].",
    ),
    frozen_epochs: int | None = typer.Option(
        None, help="Epochs with the encoder frozen [default: 100; --quick: 2]."
    ),
    epochs: int | None = typer.Option(
        None, help="Epochs of full fine-tuning [default: 100; --quick: 2]."
    ),
    steps_per_epoch: int | None = typer.Option(
        None, help="Steps per epoch (default: one pass over the labelled images)."
    ),
    test_fraction: float = typer.Option(
        0.2,
        help="Of a task without a test split (a folder of yours): the fraction of its images "
        "held out for testing, in (0, 1), chosen by file name: the same for every init, "
        "--labels and seed.",
    ),
    device: str = typer.Option(
        "auto", help="auto, cpu, cuda, cuda:N or mps (--quick and --cpu-scale run on the CPU)."
    ),
    quick: bool = typer.Option(False, "--quick", help="Tiny sizes, 2 epochs, CPU (tests)."),
    cpu_scale: bool = typer.Option(
        False,
        "--cpu-scale",
        help="The 2-core CPU comparison: pre-train 4 + 4 min on KaggleDR, DRIVE at 256.",
    ),
    skip_bad: bool = typer.Option(
        False,
        "--skip-bad",
        help="Each fine-tuning leaves out the images it cannot read, as finetune --skip-bad "
        "does (listed in its metrics.json), instead of stopping at the first.",
    ),
) -> None:
    """Fine-tune every (task, init, labels, seed) that has data; write the comparison table."""
    from localdisc.tasks.benchmark_transfer import (
        BenchmarkConfig,
        default_data_root,
        run_benchmark,
    )

    config = BenchmarkConfig(
        inits=_csv("--inits", inits), tasks=_csv("--tasks", tasks),
        labels=_csv("--labels", labels), seeds=seeds,
        data_root=data_root or default_data_root(), size=size, frozen_epochs=frozen_epochs,
        epochs=epochs, steps_per_epoch=steps_per_epoch, device=device, quick=quick,
        cpu_scale=cpu_scale, test_fraction=test_fraction, skip_bad=skip_bad,
    )  # fmt: skip
    hint = (
        f"finished fine-tunings in {out} are kept; run the same command again (same --out) to "
        "reuse them: an interrupted fine-tuning or pre-training (ld) continues from its last "
        "checkpoint"
    )
    with _on_interrupt(lambda: hint):
        results = run_benchmark(config, out, log=_log)
    console.print((out / "results.md").read_text(), markup=False, highlight=False, soft_wrap=True)
    console.print(
        f"{len(results['runs'])} run(s), {len(results['skipped'])} skipped; "
        f"see [bold]{_path(out)}[/]"
    )


@benchmark_app.command("localize")
def benchmark_localize(
    models: str | None = typer.Option(
        None, help="Comma-separated LD run folders [--quick: one pre-trained here]."
    ),
    tasks: str | None = typer.Option(
        None, help="Comma-separated: jsrt, drive, synthetic_fundus [default: jsrt,drive]."
    ),
    data_root: str | None = typer.Option(
        None, help="Folder laid out like shared/data (default: $LOCALDISC_DATA)."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder (results.json, results.md)."),
    size: int | None = typer.Option(None, help="Working size (default: each model's own)."),
    max_test: int | None = typer.Option(None, help="Use only the first N test images."),
    seeds: int = typer.Option(
        1, help="Templates: seed 0 the documented one, the others distinct random training images."
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
    quick: bool = typer.Option(False, "--quick", help="Generated images, tiny model (tests)."),
) -> None:
    """One-shot landmark localisation: LD models against template matching."""
    from localdisc.tasks.benchmark_localize import LocalizeBenchmarkConfig, run_localize_benchmark
    from localdisc.tasks.benchmark_transfer import default_data_root

    config = LocalizeBenchmarkConfig(
        models=_csv("--models", models) or [], tasks=_csv("--tasks", tasks),
        data_root=data_root or default_data_root(), size=size, max_test=max_test, device=device,
        quick=quick, seeds=seeds,
    )  # fmt: skip
    # Results are written at the end; only the --quick pre-training is kept (and reused).
    kept = f"the --quick pre-training in {out / 'pretrain'} is kept (reused or continued)"
    hint = f"{kept if quick else 'nothing is kept'}; run the same command again"
    with _on_interrupt(lambda: hint):
        run_localize_benchmark(config, out, log=_log)
    console.print((out / "results.md").read_text(), markup=False, highlight=False, soft_wrap=True)
    console.print(f"see [bold]{_path(out)}[/]")


@benchmark_app.command("shape-guided")
def benchmark_shape_guided(
    tasks: str | None = typer.Option(
        None,
        help="Comma-separated: drive, stare, chase_db1, scr_lung, scr_heart, synthetic_fundus, "
        "synthetic_xray (lungs), synthetic_heart, synthetic_xray_hard, synthetic_heart_hard "
        "[default: drive,stare,scr_lung,scr_heart; "
        "--quick: synthetic_fundus].",
    ),
    priors: str | None = typer.Option(
        None, help="Comma-separated: octa, dsa, other (another data set), simulated [all]."
    ),
    seeds: int = typer.Option(1, help="Training seeds per prior."),
    data_root: str | None = typer.Option(
        None, help="Folder laid out like shared/data (default: $LOCALDISC_DATA)."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder (results.json, results.md)."),
    init: Path | None = typer.Option(
        None, "--from", help="A pre-training run to start stage 2 from (skips stage 1)."
    ),
    size: int | None = typer.Option(None, help="Training crop size [default: 448; --quick: 48]."),
    pool_size: int | None = typer.Option(
        None,
        help="Side the images are read at, cropped to --size [default: size x 8/7; --quick "
        "without --size: 64].",
    ),
    crop_scale: tuple[float, float] = typer.Option(
        (0.9, 1.0), help="Area fraction of the training views' random resized crop: MIN MAX."
    ),
    stage1_steps: int | None = typer.Option(
        None, help="Stage 1 steps [default: 2000; --quick: 3]."
    ),
    stage2_steps: int | None = typer.Option(
        None, help="Steps of each stage 2 [default: 4000; --quick: 3]."
    ),
    stage1_seconds: float | None = typer.Option(None, help="Time budget of stage 1."),
    stage2_seconds: float | None = typer.Option(None, help="Time budget of each stage 2."),
    batch: int | None = typer.Option(None, help="Items per step [default: 4; --quick: 1]."),
    refine_steps: int | None = typer.Option(
        None, help="Refinement network steps (0: no refinement) [default: 600; --quick: 2]."
    ),
    refine_size: int | None = typer.Option(
        None, help="Side the refinement network sees (default: the LD run's pool size)."
    ),
    student_steps: int | None = typer.Option(
        None,
        help="Steps of the network taught by a filter (vessels; 0: no such rows) [default: "
        "1200; --quick: 2].",
    ),
    student_teacher: str = typer.Option(
        "line", help="Its teacher: sato, frangi, line, or several joined by '+' (mean rank)."
    ),
    student_painted: int = typer.Option(
        2,
        help="Copies of each image with a simulated tree painted on, teaching a second such "
        "network (0: no such rows).",
    ),
    speck_area: float = typer.Option(
        6e-4, help="Vessels: rows without mask pieces below this share of the FOV (0: none)."
    ),
    max_test: int | None = typer.Option(
        None, help="Use only the first N test images [default: all; --quick: 2]."
    ),
    device: str = typer.Option(
        "auto", help="auto, cpu, cuda, cuda:N or mps (--quick runs on the CPU)."
    ),
    quick: bool = typer.Option(False, "--quick", help="Generated images, tiny sizes (tests)."),
    depth: int = typer.Option(5, help="VGG blocks of the LD encoder (5: published)."),
    width: int = typer.Option(16, help="Channels of its first block (16: published)."),
    prior_weight: float = typer.Option(1.0, help="Weight of the adversarial shape term."),
    prior_pose: str = typer.Option(
        "free",
        help="free: reference masks at any angle (published, vessels); kept: prior and views "
        "keep the pose and the discriminator sees positions (organs of PA radiographs).",
    ),
) -> None:
    """Segmentation without labels: LD + each prior against k-means and vesselness filters."""
    from localdisc.tasks.benchmark_shape_guided import ShapeBenchmarkConfig, run_shape_benchmark
    from localdisc.tasks.benchmark_transfer import default_data_root

    config = ShapeBenchmarkConfig(
        tasks=_csv("--tasks", tasks), priors=_csv("--priors", priors), seeds=seeds,
        data_root=data_root or default_data_root(), init=str(init) if init else None, size=size,
        pool_size=pool_size, stage1_steps=stage1_steps, stage2_steps=stage2_steps,
        stage1_seconds=stage1_seconds, stage2_seconds=stage2_seconds, batch=batch,
        refine_steps=refine_steps, refine_size=refine_size, student_steps=student_steps,
        student_teacher=student_teacher, student_painted=student_painted, speck_area=speck_area,
        max_test=max_test, device=device,
        quick=quick, pretrain={
            "depth": depth, "width": width, "prior_weight": prior_weight, "prior_pose": prior_pose,
            "crop_scale": crop_scale,
        },
    )  # fmt: skip
    hint = (
        f"finished trainings and evaluations in {out} are kept; run the same command again "
        "(same --out) to reuse them: an interrupted training continues from its last checkpoint"
    )
    with _on_interrupt(lambda: hint):
        run_shape_benchmark(config, out, log=_log)
    console.print((out / "results.md").read_text(), markup=False, highlight=False, soft_wrap=True)
    console.print(f"see [bold]{_path(out)}[/]")


@benchmark_app.command("pretrain-methods")
def benchmark_pretrain_methods(
    methods: str = typer.Option(
        ",".join(("ld", "simclr", "densecl", "pixpro", "genesis")), help="Comma-separated."
    ),
    pool: list[str] | None = typer.Option(
        None,
        "--pool",
        help="Pre-training images: [fundus=|xray=]SPEC (folder or NAME:ROOT); one per modality.",
    ),
    budget_seconds: float | None = typer.Option(
        None, help="Pre-training seconds per method [200; --cpu-scale: 240]."
    ),
    tasks: str | None = typer.Option(
        None,
        help="Transfer tasks, comma-separated [drive,scr_clavicle; --quick: synthetic]; or data "
        "sets of your own, as benchmark transfer --tasks takes them (a folder of images + masks, "
        "or NAME:ROOT[:TARGET]): each uses the pool of its modality (a folder's guessed from its "
        "images). One that cannot run, or a --labels budget beyond a task's images, is refused "
        "before any pre-training.",
    ),
    labels: str | None = typer.Option(None, help="Label budgets [2,all; --quick, --cpu-scale: 2]."),
    seeds: int | None = typer.Option(None, help="Seeds per setting [3; --quick: 1]."),
    data_root: str | None = typer.Option(
        None, help="Folder laid out like shared/data (default: $LOCALDISC_DATA)."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder (results.json, results.md)."),
    size: int | None = typer.Option(None, help="Pre-training crop size [448; --cpu-scale: 128]."),
    batch: int | None = typer.Option(None, help="Pre-training items per step [4; --cpu-scale: 2]."),
    pretrain_seed: int = typer.Option(
        0, help="Seed of every pre-training: another seed (and --out) is another draw."
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
    quick: bool = typer.Option(False, "--quick", help="Generated images, a few steps (tests)."),
    cpu_scale: bool = typer.Option(
        False,
        "--cpu-scale",
        help="The 2-core CPU comparison: 240 s per method at 128 px on the first 1 000 images of "
        "KaggleDR/images and CXR_Kermany/train/NORMAL under --data-root, then 2 labels at 256 px.",
    ),
    skip_bad: bool = typer.Option(
        False,
        "--skip-bad",
        help="Each pre-training leaves out the pool images it cannot read, and each fine-tuning "
        "the task images, as pretrain and benchmark transfer --skip-bad do.",
    ),
) -> None:
    """Pre-train LD and peer methods for the same budget, then one transfer table."""
    from localdisc.tasks.benchmark_methods import MethodsBenchmarkConfig, run_methods_benchmark
    from localdisc.tasks.benchmark_transfer import default_data_root

    config = MethodsBenchmarkConfig(
        methods=_csv("--methods", methods), pools=list(pool or []), budget_seconds=budget_seconds,
        tasks=_csv("--tasks", tasks), labels=_csv("--labels", labels), seeds=seeds,
        data_root=data_root or default_data_root(), size=size, batch=batch, device=device,
        quick=quick, cpu_scale=cpu_scale, pretrain={"seed": pretrain_seed, "skip_bad": skip_bad},
        transfer={"skip_bad": skip_bad},
    )  # fmt: skip
    hint = (
        f"finished pre-trainings and fine-tunings in {out} are kept; run the same command again "
        "(same --out) to reuse them: an interrupted pre-training or fine-tuning continues from "
        "its last checkpoint"
    )
    with _on_interrupt(lambda: hint):
        run_methods_benchmark(config, out, log=_log)
    console.print((out / "results.md").read_text(), markup=False, highlight=False, soft_wrap=True)
    console.print(f"see [bold]{_path(out)}[/]")


# --- viewer ------------------------------------------------------------------------------------
@app.command()
def view(
    model: Path = typer.Option(..., "--model", help="An LD run directory."),
    images: list[Path] = typer.Option(
        ..., "--images", help="Image files or folders (recursive); repeatable."
    ),
    segmenter: Path | None = typer.Option(
        None, "--segmenter", help="A folder written by `localdisc finetune`: adds its overlay."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (default: this machine)."),
    port: int = typer.Option(8765, help="Port to listen on (0: any free port)."),
    size: int | None = typer.Option(
        None,
        help="Working size: the model sees every image at this longer side (smaller ones "
        "enlarged, as similarity and localize); larger images are shown shrunk to it "
        "(default: the model's pool size).",
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
    cache_mb: float = typer.Option(
        2048,
        "--cache-mb",
        help="MiB kept in memory: embeddings, similarity maps, images (least recently used go).",
    ),  # fmt: skip
) -> None:
    """Explore a model in the browser: clusters, similarity maps, segmentation."""
    from localdisc.engine.distributed import resolve_device
    from localdisc.viewer.server import serve

    serve(
        model, images, segmenter=segmenter, host=host, port=port, size=size,
        device=str(resolve_device(device)), log=_log, cache_mb=cache_mb,
    )  # fmt: skip
