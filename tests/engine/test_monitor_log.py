"""Tests for localdisc.engine.monitor's TrainingLog: the rows a resume keeps in log.csv."""

from __future__ import annotations

import csv
from pathlib import Path

from localdisc.engine.monitor import TrainingLog


def _log(run_dir: Path, steps: range) -> Path:
    log = TrainingLog(run_dir, 0)
    for step in steps:
        log.write(step=step, stage=1, loss=1.0 / step)
    log.close()
    return run_dir / "log.csv"


def _steps(path: Path) -> list[str]:
    with open(path, newline="") as f:
        return [row["step"] for row in csv.DictReader(f)]


def test_a_resume_keeps_the_rows_up_to_and_with_the_checkpoint_step(tmp_path: Path) -> None:
    # The checkpoint of step 5 holds step 5's update: the resumed run starts at step 6, so the
    # row of step 5 is not written again, and dropping it would leave a gap in the loss curve.
    path = _log(tmp_path, range(1, 11))
    TrainingLog(tmp_path, 5).close()
    assert _steps(path) == ["1", "2", "3", "4", "5"]


def test_a_row_with_more_fields_than_the_header_is_dropped_on_resume(tmp_path: Path) -> None:
    # A damaged row (a field too many, e.g. two writes run together) is left out like a partial
    # one, instead of a crash of csv.DictWriter that stopped the resume of a sound checkpoint.
    path = _log(tmp_path, range(1, 4))
    lines = path.read_text().splitlines()
    lines[2] += ",x"  # the row of step 2
    path.write_text("\n".join(lines) + "\n")
    TrainingLog(tmp_path, 3).close()
    assert _steps(path) == ["1", "3"]


def test_each_row_is_in_the_file_as_soon_as_it_is_written(tmp_path):
    # Flushed per row: a run watched with `tail -f log.csv`, or killed (SIGKILL, no close),
    # shows every logged step, not the last buffer's worth of them.
    log = TrainingLog(tmp_path, 0)
    log.write(step=1, stage=1, loss=2.5)
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["loss"]) for r in rows] == [("1", "2.5")]
    log.close()
