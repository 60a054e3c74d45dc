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
