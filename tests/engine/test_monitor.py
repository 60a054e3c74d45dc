"""Tests for localdisc.engine.monitor's progress bar."""

from __future__ import annotations

import io
import re
from datetime import datetime, timedelta

import pytest
from rich.console import Console

from localdisc.engine.monitor import ProgressBar

#: The wall-clock time of the plain lines in these tests, and how they start with it.
WALL = datetime(2024, 5, 1, 14, 20, 0)
STAMP = "2024-05-01 14:20:00 "


def test_time_left_ignores_the_steps_a_time_budget_skipped() -> None:
    clock = [0.0]
    with ProgressBar(2000, 0, True, "pretrain", clock=lambda: clock[0]) as bar:
        for step in range(10, 110, 10):  # 10 steps a second
            clock[0] += 1
            bar.update(step, "stage 1")
        # Stage 1's budget is spent at step 100: stage 2 starts at step 1000, at the same pace.
        for step in range(1010, 1060, 10):
            clock[0] += 1
            bar.update(step, "stage 2")
        assert bar.time_left() == pytest.approx((2000 - 1050) / 10, rel=0.05)


def test_elapsed_counts_the_whole_run_and_the_first_lines_know_the_time_left():
    # A run output to a file said "0:00:00 elapsed, -:--:-- left" at step 10 after 10 s, and
    # again at step 30: a phase's first update restarted rich's task, so its first 10 steps
    # were not counted. Then stage 2 said "step 30/40, 0:00:10 elapsed" 30 s into the run: the
    # steps counted both stages, the elapsed time stage 2 alone. Here 40 steps of 1 s, a line
    # every 10 (log_every), stage 1 to step 20.
    console, out = _file_console(terminal=False)
    clock = [0.0]
    with ProgressBar(40, 0, True, "pretrain", clock=lambda: clock[0], console=console,
                     now=lambda: WALL + timedelta(seconds=clock[0])) as bar:  # fmt: skip
        for step in range(10, 41, 10):
            clock[0] += 10
            bar.update(step, "stage 1" if step <= 20 else "stage 2", "loss 1.0")
    assert out.getvalue().splitlines() == [
        "2024-05-01 14:20:10 pretrain stage 1: step 10/40 (25%), 0:00:10 elapsed, 0:00:30 left, "
        "loss 1.0",
        "2024-05-01 14:20:20 pretrain stage 1: step 20/40 (50%), 0:00:20 elapsed, 0:00:20 left, "
        "loss 1.0",
        "2024-05-01 14:20:30 pretrain stage 2: step 30/40 (75%), 0:00:30 elapsed, 0:00:10 left, "
        "loss 1.0",
        "2024-05-01 14:20:40 pretrain stage 2: step 40/40 (100%), 0:00:40 elapsed, 0:00:00 left, "
        "loss 1.0",
    ]


def test_the_terminal_bar_shows_the_same_elapsed_time_and_stops_it_when_done():
    console, _ = _file_console(terminal=True)
    clock = [0.0]
    with ProgressBar(40, 0, True, "pretrain", clock=lambda: clock[0], console=console) as bar:
        elapsed_column = bar.bar.columns[3]
        for step in (10, 20, 30):
            clock[0] += 10
            bar.update(step, "stage 1" if step <= 20 else "stage 2")
        clock[0] += 5
        assert elapsed_column.render(bar.bar.tasks[0]).plain == "0:00:35"  # both stages
        clock[0] += 5
        bar.update(40)
        clock[0] += 60  # finished: the time stays that of the last step
        assert elapsed_column.render(bar.bar.tasks[0]).plain == "0:00:40"


def test_a_resumed_loop_counts_the_time_before_it_as_it_counts_the_steps() -> None:
    # Resumed at step 500 of 1000 after 50 s: "step 510/1000, 0:00:01 elapsed" read as a clock
    # restarted; the steps and the time both count the earlier start.
    console, out = _file_console(terminal=False)
    clock = [0.0]
    with ProgressBar(1000, 500, True, "pretrain", clock=lambda: clock[0], console=console,
                     now=lambda: WALL, before=50.0) as bar:  # fmt: skip
        clock[0] += 1
        bar.update(510, "stage 2")
    assert out.getvalue().splitlines() == [
        STAMP + "pretrain stage 2: step 510/1000 (51%), 0:00:51 elapsed, 0:00:49 left"
    ]


def test_a_loop_slower_than_30_s_between_updates_has_a_time_left() -> None:
    # rich estimates the pace from the updates of the last 30 s: with one a minute, it had none.
    console, out = _file_console(terminal=False)
    clock = [0.0]
    with ProgressBar(100, 0, True, "finetune", clock=lambda: clock[0], console=console,
                     now=lambda: WALL) as bar:  # fmt: skip
        for step in range(10, 101, 10):
            clock[0] += 60
            bar.update(step)
    lines = out.getvalue().splitlines()
    assert lines[0] == STAMP + "finetune: step 10/100 (10%), 0:01:00 elapsed, 0:09:00 left"
    assert lines[4] == STAMP + "finetune: step 50/100 (50%), 0:05:00 elapsed, 0:05:00 left"


def test_a_time_left_given_by_the_loop_is_shown_and_counted_down() -> None:
    # A run that a wall-clock budget ends: the pace of its steps says 1 990 s are left, the
    # budget 30 s; the loop knows (engine.pretrain.budget_time_left) and the bar shows that.
    clock = [0.0]
    with ProgressBar(2000, 0, True, "pretrain", clock=lambda: clock[0]) as bar:
        for step in range(1, 11):  # 1 step a second
            clock[0] += 1
            bar.update(step, "stage 1", time_left=40.0 - clock[0])
        assert bar.time_left() == pytest.approx(30.0)
        clock[0] += 5  # between two updates the bar counts down, and stops at zero
        assert bar.time_left() == pytest.approx(25.0)
        task = bar.bar.tasks[0]
        column = bar.bar.columns[4]
        assert column.render(task).plain == "0:00:25"
        clock[0] += 25
        assert bar.time_left() == 0.0
        bar.update(40)  # none given: the pace of the steps again (1 a second)
        assert bar.time_left() == pytest.approx(2000 - 40, rel=0.05)


def test_a_disabled_bar_knows_no_time_left() -> None:
    bar = ProgressBar(10, 0, False)
    bar.update(3, "stage 1", time_left=5.0)
    assert bar.time_left() is None


def _file_console(terminal: bool) -> tuple[Console, io.StringIO]:
    """A rich console writing to a string, 80 columns wide, a terminal or not (a log file)."""
    out = io.StringIO()
    return Console(file=out, width=80, force_terminal=terminal, color_system=None), out


def test_not_a_terminal_prints_whole_plain_lines_at_each_tenth_and_the_last_step() -> None:
    # A run whose output is a log file: the live bar showed nothing until the end, and then one
    # line cut at 80 columns ("pretrain stage 1 ━━━━━ 400… 0:07… 0:0… loss 6.712 ...").
    console, out = _file_console(terminal=False)
    clock = [0.0]
    info = "loss 6.712 pd 5.836 mix 4.993 rd 0.343 ent 0.750 adv 0.603 disc 0.700 | 159.1 img/s"
    with ProgressBar(1000, 0, True, "pretrain", clock=lambda: clock[0], console=console,
                     now=lambda: WALL) as bar:  # fmt: skip
        assert not bar.bar.live.is_started  # nothing of rich's live display
        for step in range(10, 1010, 10):  # 10 steps a second: a tenth every 10 s, not 30 s
            clock[0] += 1
            bar.update(step, "stage 1" if step <= 500 else "stage 2", f"{info} {step}")
    stamped = out.getvalue().splitlines()
    assert all(line.startswith(STAMP + "pretrain stage ") for line in stamped)
    lines = [line.removeprefix(STAMP) for line in stamped]
    steps = [int(line.split("step ")[1].split("/")[0]) for line in lines]
    # Each phase's first update, each tenth of the steps, the last step; nothing twice.
    assert steps == [10, 100, 200, 300, 400, 500, 510, 600, 700, 800, 900, 1000]
    # Whole (longer than the console's 80 columns): elapsed in all, left at the phase's pace.
    assert lines[2] == (
        f"pretrain stage 1: step 200/1000 (20%), 0:00:20 elapsed, 0:01:20 left, {info} 200"
    )
    assert all(line.endswith(f"{info} {n}") for line, n in zip(lines, steps, strict=True))
    assert lines[-1].startswith("pretrain stage 2: step 1000/1000 (100%), 0:01:40 elapsed")
    assert "━" not in out.getvalue()


def test_not_a_terminal_prints_a_line_every_interval_of_a_slow_run() -> None:
    console, out = _file_console(terminal=False)
    clock = [0.0]
    with ProgressBar(100, 0, True, "finetune", clock=lambda: clock[0], console=console,
                     now=lambda: WALL + timedelta(seconds=clock[0])) as bar:  # fmt: skip
        for step in range(1, 8):  # 10 s a step: a tenth of the steps every 100 s
            clock[0] += 10
            bar.update(step, info=f"loss {1 / step:.4f}")
    assert out.getvalue().splitlines() == [
        "2024-05-01 14:20:30 finetune: step 3/100 (3%), 0:00:30 elapsed, 0:16:10 left, loss 0.3333",
        "2024-05-01 14:21:00 finetune: step 6/100 (6%), 0:01:00 elapsed, 0:15:40 left, loss 0.1667",
        "2024-05-01 14:21:10 finetune: step 7/100 (7%), 0:01:10 elapsed, 0:15:30 left, "
        "loss 0.1429",  # at close
    ]


def test_a_disabled_bar_prints_nothing_on_a_file() -> None:
    console, out = _file_console(terminal=False)
    with ProgressBar(10, 0, False, "pretrain", console=console) as bar:
        bar.update(10, "stage 1", "loss 1.0")
    assert out.getvalue() == ""


def test_a_terminal_keeps_the_rich_bar() -> None:
    console, out = _file_console(terminal=True)
    with ProgressBar(10, 0, True, "pretrain", console=console) as bar:
        assert bar.bar.live.is_started
        for step in range(1, 11):
            bar.update(step, "stage 1", "loss 1.0")
    assert "━" in out.getvalue()
    assert "step 10/10" not in out.getvalue()


def test_plain_lines_start_with_the_wall_clock_time_and_date() -> None:
    # A cluster job's output said how long a run had taken, never when: it could not be lined
    # up with the cluster's logs, or with log.csv's times. A job of days: the date too.
    console, out = _file_console(terminal=False)
    clock = [0.0]

    def now() -> datetime:  # the last minute of a day, then the next day
        return datetime(2024, 5, 1, 23, 59, 0) + timedelta(seconds=clock[0])

    with ProgressBar(3, 0, True, "pretrain", clock=lambda: clock[0], console=console, now=now,
                     interval=0) as bar:  # fmt: skip
        for step in (1, 2, 3):
            clock[0] += 40
            bar.update(step, "stage 1")
    stamps = [line[:20] for line in out.getvalue().splitlines()]
    assert stamps == ["2024-05-01 23:59:40 ", "2024-05-02 00:00:20 ", "2024-05-02 00:01:00 "]
    # Not the bar's clock (seconds from any origin): the wall clock, by default the real one.
    console, out = _file_console(terminal=False)
    before = datetime.now().replace(microsecond=0)
    with ProgressBar(1, 0, True, "pretrain", clock=lambda: 0.0, console=console) as bar:
        bar.update(1, "stage 1")
    line = out.getvalue()
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d pretrain stage 1: step 1/1 ", line), line
    assert before <= datetime.fromisoformat(line[:19]) <= datetime.now()


def test_the_terminal_bar_shows_no_wall_clock_time() -> None:
    console, out = _file_console(terminal=True)
    with ProgressBar(10, 0, True, "pretrain", console=console, now=lambda: WALL) as bar:
        bar.update(10, "stage 1", "loss 1.0")
    assert "━" in out.getvalue() and "2024-05-01" not in out.getvalue()


def test_a_phase_of_seconds_prints_no_line_per_tenth() -> None:
    # Decoding 20 images in a second printed ten lines (one per tenth) within that second; now
    # its last (a named phase would also print its first).
    console, out = _file_console(terminal=False)
    clock = [0.0]
    with ProgressBar(20, 0, True, "decoding", clock=lambda: clock[0], console=console,
                     now=lambda: WALL, unit="image") as bar:  # fmt: skip
        for step in range(1, 21):
            clock[0] += 0.05
            bar.update(step)
    lines = [line.removeprefix(STAMP) for line in out.getvalue().splitlines()]
    assert [line.split(",")[0] for line in lines] == ["decoding: image 20/20 (100%)"]
