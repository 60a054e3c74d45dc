"""What a training run shows while it runs: log.csv (+ TensorBoard), a progress bar, figures."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from localdisc.engine.checkpoint import atomic_write_text
from localdisc.models.ld import LDModel


class TrainingLog:
    """``log.csv`` (one row per logged step or validation) and TensorBoard when installed."""

    COLUMNS = (
        "step", "stage", "lr", "loss", "pd", "mix", "rd", "ent", "adv", "disc",  # LD
        "nt_xent", "global", "dense", "pixpro", "positives", "restoration",  # peer methods
        "val_loss", "img_per_s",
    )  # fmt: skip

    def __init__(self, run_dir: Path, resume_step: int) -> None:
        path = run_dir / "log.csv"
        rows = []
        if path.exists() and resume_step > 0:
            # Keep only rows up to the checkpoint being resumed: later ones will be redone.
            # A run killed mid-write can leave a partial last row: keep whole rows only.
            with open(path, newline="") as f:
                rows = [
                    r
                    for r in csv.DictReader(f)
                    if None not in r.values()
                    and r["step"].isdigit()
                    and int(r["step"]) <= resume_step
                ]
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
        self.writer.writerow({k: row.get(k, "") for k in self.COLUMNS})
        self.file.flush()
        if self.tensorboard is not None:
            for key, value in row.items():
                if key not in ("step", "stage") and value != "":
                    self.tensorboard.add_scalar(key, value, row["step"])

    def close(self) -> None:
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def write_figures(
    model: LDModel, images: Tensor, folder: Path, step: int, *, clusters: bool
) -> None:
    """Pixel-similarity maps (and cluster maps when ``clusters``) on a few uint8 pool images."""
    from localdisc.eval.figures import cluster_figure, similarity_figure

    arrays = [im.permute(1, 2, 0).float().cpu().numpy() / 255.0 for im in images[:4]]
    if clusters:
        cluster_figure(model, arrays, folder / f"clusters_{step:08d}.png")
    similarity_figure(model, arrays, folder / f"similarity_{step:08d}.png")


def time_left(task: Any) -> float | None:
    """Seconds a rich progress ``task`` has left: the ``time_left`` its loop gave at the time
    ``time_left_at``, counted down since, else rich's estimate from the pace of its steps."""
    given = task.fields.get("time_left")
    if given is None:
        return task.time_remaining
    return max(0.0, given - (task.get_time() - task.fields["time_left_at"]))


class ProgressBar:
    """A rich progress bar of a training loop: ``title`` and the phase (a stage, an epoch's
    phase), steps done of ``total``, time spent and left, and a line of ``info`` (the losses).
    Silent when not ``enabled``; a context manager that stops it. ``clock``: seconds, for the
    times shown (default: rich's monotonic clock; tests give their own)."""

    def __init__(
        self,
        total: int,
        start: int = 0,
        enabled: bool = True,
        title: str = "",
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.bar = None
        self.phase = ""
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.text import Text

        class TimeLeftColumn(ProgressColumn):
            """rich's TimeRemainingColumn, but of :func:`time_left`."""

            def render(self, task: Any) -> Text:
                seconds = time_left(task)
                if seconds is None:
                    return Text("-:--:--", style="progress.remaining")
                minutes, secs = divmod(int(seconds), 60)
                hours, minutes = divmod(minutes, 60)
                return Text(f"{hours}:{minutes:02d}:{secs:02d}", style="progress.remaining")

        self.bar = Progress(
            TextColumn(f"[bold]{title}[/] {{task.fields[phase]}}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeLeftColumn(),
            TextColumn("{task.fields[info]}"),
            get_time=clock,
        )
        self.task = self.bar.add_task(
            "", total=total, completed=start, phase="", info="", time_left=None, time_left_at=0.0
        )
        self.bar.start()

    def time_left(self) -> float | None:
        """Seconds left as the bar shows them (``None``: unknown, or no bar)."""
        if self.bar is None:
            return None
        return time_left(next(t for t in self.bar.tasks if t.id == self.task))

    def update(
        self,
        completed: int,
        phase: str | None = None,
        info: str | None = None,
        *,
        time_left: float | None = None,
    ) -> None:
        """Steps done; ``phase`` and ``info``, when given, replace those shown (a new phase
        restarts the estimate of the time left, and the time shown as elapsed).

        ``time_left``: the seconds left when the loop knows better than the pace of its steps
        (a wall-clock budget ends it sooner); the bar counts them down until the next update.
        ``None``: estimated from the pace of the steps."""
        if self.bar is None:
            return
        fields: dict[str, Any] = {
            k: v for k, v in (("phase", phase), ("info", info)) if v is not None
        }
        fields.update(time_left=time_left, time_left_at=self.bar.get_time())  # the tasks' clock
        if phase is not None and phase != self.phase:
            # A new phase has its own pace, and a stage ended by its time budget jumps over its
            # remaining steps, which would count as steps done at once (time left near zero).
            self.phase = phase
            shown = next(t.fields for t in self.bar.tasks if t.id == self.task)
            self.bar.reset(self.task, completed=completed, **{**shown, **fields})
        else:
            self.bar.update(self.task, completed=completed, **fields)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
