"""What a training run shows while it runs: log.csv (+ TensorBoard), a progress bar, figures."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from localdisc.engine.checkpoint import atomic_write_text
from localdisc.errors import CheckpointError
from localdisc.models.ld import LDModel

if TYPE_CHECKING:
    from rich.console import Console


class TrainingLog:
    """``log.csv`` (one row per logged step or validation) and TensorBoard when installed.

    Each row's ``time`` is the wall-clock time it was written (ISO 8601, to the second, with the
    UTC offset), to line a run's log up with a cluster's or another run's; its ``elapsed`` the
    seconds the run had trained by then, in all its starts (as the progress lines' elapsed time,
    and like ``step`` counted over both stages). Rows of a log written before a column have it
    empty; new columns go last, so that the older ones keep their places."""

    COLUMNS = (
        "step", "stage", "lr", "loss", "pd", "mix", "rd", "ent", "adv", "disc",  # LD
        "nt_xent", "global", "dense", "pixpro", "positives", "restoration",  # peer methods
        "val_loss", "img_per_s", "time", "elapsed",
    )  # fmt: skip

    def __init__(self, run_dir: Path, resume_step: int) -> None:
        path = run_dir / "log.csv"
        rows = []
        if path.exists() and resume_step > 0:
            # Keep only rows up to the checkpoint being resumed: later ones will be redone.
            # A run killed mid-write can leave a partial last row: keep whole rows only.
            try:
                with open(path, newline="") as f:
                    rows = [
                        r
                        for r in csv.DictReader(f)
                        if None not in r.values()
                        and None not in r  # a row of more fields than the header
                        and r["step"].isdigit()
                        and int(r["step"]) <= resume_step
                    ]
            except (UnicodeDecodeError, csv.Error, KeyError) as exc:  # a traceback, no file named
                raise CheckpointError(
                    f"{path}: damaged ({type(exc).__name__}: {exc}), so the resume cannot keep "
                    "its rows; restore it, or delete it to resume with a log of the rows from "
                    "here on (the checkpoints are not affected)"
                ) from exc
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, self.COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(path, buffer.getvalue())
        self.file = open(path, "a", newline="")  # noqa: SIM115 - kept open for the run
        self.writer = csv.DictWriter(self.file, self.COLUMNS)
        self.tensorboard = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step)
        except ImportError:  # tensorboard is optional
            pass

    def write(self, **row: Any) -> None:
        """Append a row (its ``time`` is now); columns not given are left empty."""
        row.setdefault("time", datetime.now().astimezone().isoformat(timespec="seconds"))
        self.writer.writerow({k: row.get(k, "") for k in self.COLUMNS})
        self.file.flush()
        if self.tensorboard is not None:  # which keeps its own wall time
            for key, value in row.items():
                if key not in ("step", "stage", "time", "elapsed") and value != "":
                    self.tensorboard.add_scalar(key, value, row["step"])

    def close(self) -> None:
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def write_figures(
    model: LDModel,
    images: Tensor,
    folder: Path,
    step: int,
    *,
    clusters: bool,
    names: list[str] | None = None,
) -> None:
    """Pixel-similarity maps (and cluster maps when ``clusters``) on the first four of a few
    uint8 pool images, titled with the step and ``names`` (one per image; default
    ``image 0`` ...)."""
    from localdisc.eval.figures import cluster_figure, similarity_figure

    arrays = [im.permute(1, 2, 0).float().cpu().numpy() / 255.0 for im in images[:4]]
    shown = None if names is None else names[:4]
    if clusters:
        cluster_figure(model, arrays, folder / f"clusters_{step:08d}.png", names=shown, step=step)
    similarity_figure(model, arrays, folder / f"similarity_{step:08d}.png", names=shown, step=step)


def time_left(task: Any) -> float | None:
    """Seconds a rich progress ``task`` of a :class:`ProgressBar` has left: the ``time_left`` of
    its last update (given by its loop, or estimated from the pace of the steps) at the time
    ``time_left_at``, counted down since (``None``: unknown)."""
    given = task.fields.get("time_left")
    if given is None:
        return None
    return max(0.0, given - (task.get_time() - task.fields["time_left_at"]))


def elapsed(task: Any) -> float:
    """Seconds of the work of a rich progress ``task`` of a :class:`ProgressBar`: since the bar
    started (its field ``started_at``), up to its last update once it is finished, plus those
    spent before it (its field ``before``: the earlier starts of a resumed run)."""
    end = task.fields["updated_at"] if task.finished else task.get_time()
    return task.fields["before"] + max(0.0, end - task.fields["started_at"])


def clock_text(seconds: float | None) -> str:
    """``seconds`` as ``H:MM:SS`` (``-:--:--`` when unknown), as rich's time columns show them."""
    if seconds is None:
        return "-:--:--"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class ProgressBar:
    """The progress display of a training loop: ``title`` and the phase (a stage, an epoch's
    phase), steps done of ``total``, time spent and left, and a line of ``info`` (the losses).

    Steps, time spent (elapsed) and time left are all of the whole loop, every phase of it:
    ``step 30/40, 0:00:30 elapsed`` in stage 2 (an elapsed time of stage 2 alone beside a step
    count of both stages read as a clock restarted). ``start`` steps and ``before`` seconds were
    done before this bar (by the earlier starts of a resumed run; ``before`` 0 when unknown).

    On a terminal, a rich progress bar. When ``console`` (default: rich's, on stdout) is not
    one (a log file, a pipe, nohup, a cluster job's output), a live bar would show nothing until
    the end, and then only cut to 80 columns: plain lines instead, each whole, at the first
    update of each phase, every ``interval`` seconds, at each tenth of the steps (5 s apart at
    least), and at the last step, each starting with the wall-clock time it was written, date
    included (``YYYY-MM-DD HH:MM:SS``, local time): a job runs for days, and a line read alone
    (grep, tail) still says when. Silent when not ``enabled``; a context manager that stops it.
    ``clock``: seconds, for the times shown (default: rich's monotonic clock; tests give their
    own); ``now``: the wall clock of the plain lines (default: ``datetime.now``); ``unit``: what
    the plain lines count.
    """

    #: Plain lines at every 1/LINES of the steps (besides every ``interval`` seconds)...
    LINES = 10
    #: ... when at least this many seconds have passed since the last line: a phase of seconds
    #: (decoding 20 images) printed ten lines within one.
    TENTH_GAP = 5.0

    def __init__(
        self,
        total: int,
        start: int = 0,
        enabled: bool = True,
        title: str = "",
        *,
        clock: Callable[[], float] | None = None,
        now: Callable[[], datetime] = datetime.now,
        console: Console | None = None,
        interval: float = 30.0,
        unit: str = "step",
        before: float = 0.0,
    ) -> None:
        self.bar = None
        self.phase = ""
        self.title = title
        self.unit = unit
        self.interval = interval
        self.now = now
        if not enabled:
            return
        from rich import get_console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
        )
        from rich.text import Text

        class TimeLeftColumn(ProgressColumn):
            """rich's TimeRemainingColumn, but of :func:`time_left`."""

            def render(self, task: Any) -> Text:
                return Text(clock_text(time_left(task)), style="progress.remaining")

        class ElapsedColumn(ProgressColumn):
            """rich's TimeElapsedColumn, but of :func:`elapsed` (with the time before)."""

            def render(self, task: Any) -> Text:
                return Text(clock_text(elapsed(task)), style="progress.elapsed")

        console = console or get_console()
        # A dumb terminal, like a file, shows a live display only once it stops.
        self.live = console.is_jupyter or (console.is_terminal and not console.is_dumb_terminal)
        self.console = console
        # Plain lines or not, the rich task keeps the counts and the times (never drawn then).
        self.bar = Progress(
            TextColumn(f"[bold]{title}[/] {{task.fields[phase]}}"),
            BarColumn(),
            MofNCompleteColumn(),
            ElapsedColumn(),
            TimeLeftColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            get_time=clock,
        )
        # Times are kept here, not by rich: its elapsed time restarts at a task's reset (the
        # first update of a phase), and its pace needs two updates within 30 s (so a slow loop
        # never had one).
        now = self.bar.get_time()
        self.last_step, self.last_at = start, now  # the last update
        self.pace_step, self.pace_at = start, now  # the phase's first update: its pace since
        self.task = self.bar.add_task(
            "",
            total=total,
            completed=start,
            phase="",
            info="",
            time_left=None,
            time_left_at=now,
            started_at=now,
            before=before,
            updated_at=now,
        )
        # The last plain line: its step and time; a phase starts with one.
        self.printed_step, self.printed_at = start, now
        if self.live:
            self.bar.start()

    def _task(self) -> Any:
        return next(t for t in self.bar.tasks if t.id == self.task)

    def time_left(self) -> float | None:
        """Seconds left as the bar shows them (``None``: unknown, or no bar)."""
        if self.bar is None:
            return None
        return time_left(self._task())

    def line(self) -> str:
        """The state as one plain line: title and phase, steps, elapsed, left, info (empty when
        not ``enabled``)."""
        if self.bar is None:
            return ""
        task = self._task()
        total = max(1, int(task.total or 0))
        done = int(task.completed)
        head = " ".join(p for p in (self.title, task.fields["phase"]) if p)
        text = (
            f"{head}: {self.unit} {done}/{total} ({done / total:.0%}), "
            f"{clock_text(elapsed(task))} elapsed, {clock_text(time_left(task))} left"
        )
        info = task.fields["info"]
        return f"{text}, {info}" if info else text

    def update(
        self,
        completed: int,
        phase: str | None = None,
        info: str | None = None,
        *,
        time_left: float | None = None,
    ) -> None:
        """Steps done; ``phase`` and ``info``, when given, replace those shown. A new phase's
        time left is estimated from its own pace: that of its steps since its first update (at
        that update, that of the steps since the update before, when its first step started).

        ``time_left``: the seconds left when the loop knows better than the pace of its steps
        (a wall-clock budget ends it sooner, or jumps over a stage's remaining steps, which the
        pace would count as steps done at once); the bar counts them down until the next
        update. ``None``: estimated from the pace of the steps."""
        if self.bar is None:
            return
        now = self.bar.get_time()  # the tasks' clock
        new_phase = phase is not None and phase != self.phase
        if new_phase:
            self.phase = phase
            since_step, since_at = self.last_step, self.last_at
        else:
            since_step, since_at = self.pace_step, self.pace_at
        if time_left is None:
            time_left = self._estimate(completed, completed - since_step, now - since_at)
        fields: dict[str, Any] = {
            k: v for k, v in (("phase", phase), ("info", info)) if v is not None
        }
        fields.update(time_left=time_left, time_left_at=now, updated_at=now)
        self.bar.update(self.task, completed=completed, **fields)
        if new_phase:  # later updates: the pace since this one, of this phase's steps only
            self.pace_step, self.pace_at = completed, now
        self.last_step, self.last_at = completed, now
        if self.live:
            return
        total = max(1, int(self._task().total or 0))
        due = (
            new_phase
            or now - self.printed_at >= self.interval
            or (
                completed * self.LINES // total > self.printed_step * self.LINES // total
                and now - self.printed_at >= self.TENTH_GAP
            )
            or (completed >= total > self.printed_step)
        )
        if due:
            self._print_line()
            self.printed_step, self.printed_at = completed, now

    def _print_line(self) -> None:
        """:meth:`line` as a plain line, after the wall-clock time."""
        stamp = self.now().strftime("%Y-%m-%d %H:%M:%S")
        self.console.out(f"{stamp} {self.line()}", highlight=False)  # no markup, wrapping, cropping

    def _estimate(self, completed: int, steps: int, seconds: float) -> float | None:
        """Seconds left after ``completed`` steps at the pace of ``steps`` in ``seconds``."""
        left = int(self._task().total or 0) - completed
        if left <= 0:
            return 0.0
        if steps <= 0 or seconds <= 0:
            return None
        return left * seconds / steps

    def close(self) -> None:
        """Stops the bar; plain lines end with the last step done, if not printed yet (a loop
        stopped early, or a last update that was not due)."""
        if self.bar is None:
            return
        if self.live:
            self.bar.stop()
        elif self._task().completed > self.printed_step:
            self._print_line()
            self.printed_step = int(self._task().completed)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
