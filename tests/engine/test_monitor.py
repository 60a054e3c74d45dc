"""Tests for localdisc.engine.monitor's progress bar."""

from __future__ import annotations

import pytest

from localdisc.engine.monitor import ProgressBar


def test_time_left_ignores_the_steps_a_time_budget_skipped() -> None:
    with ProgressBar(2000, 0, True, "pretrain") as bar:
        clock = [0.0]
        bar.bar.get_time = lambda: clock[0]
        for step in range(10, 110, 10):  # 10 steps a second
            clock[0] += 1
            bar.update(step, "stage 1")
        # Stage 1's budget is spent at step 100: stage 2 starts at step 1000, at the same pace.
        for step in range(1010, 1060, 10):
            clock[0] += 1
            bar.update(step, "stage 2")
        task = bar.bar.tasks[0]
        assert task.time_remaining == pytest.approx((2000 - 1050) / 10, rel=0.05)


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
