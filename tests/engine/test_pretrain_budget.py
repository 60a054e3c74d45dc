"""The last log rows of a stage (ended by its steps or its time budget) and a peer's folders."""

import csv
import itertools

import pytest

from helpers import tiny_pretrain_config
from localdisc.engine.pretrain import pretrain


@pytest.fixture(scope="module")
def pool():
    from localdisc.data.pool import synthetic_pool

    return synthetic_pool(6, "fundus", 48)


def loss_rows(run_dir):
    """``(step, stage, has rd)`` of each training row of ``run_dir``'s log.csv."""
    rows = csv.DictReader((run_dir / "log.csv").read_text().splitlines())
    return [(int(r["step"]), int(r["stage"]), bool(r["rd"])) for r in rows if r["loss"]]


def untimed_rows(run_dir):
    timed = ("img_per_s", "time", "elapsed")
    rows = csv.DictReader((run_dir / "log.csv").read_text().splitlines())
    return [{k: v for k, v in r.items() if k not in timed} for r in rows]


def budget_spent_at(monkeypatch, *calls):
    """Make the stage's budget spent at these readings (1, 2, ...) of it: one as a fresh run
    starts and one after each step, so reading k + 1 ends the stage after k steps, whatever the
    machine's speed."""
    import localdisc.engine.pretrain as engine

    count = itertools.count(1)
    monkeypatch.setattr(engine, "_budget_spent", lambda start, budget: next(count) in calls)


BUDGETED = dict(stage1_steps=10_000, stage2_steps=10_000, stage1_seconds=100.0,
                stage2_seconds=100.0, log_every=4, checkpoint_every=10_000,
                val_every=10_000)  # fmt: skip


def test_a_stage_ended_by_its_budget_logs_its_last_steps(tmp_path, pool, monkeypatch):
    # Stage 1 ends after 6 steps, stage 2 after 5: its steps 5-6 were carried into stage 2's
    # first row (LD's stage-1 terms averaged with stage 2's), the last step was never logged.
    budget_spent_at(monkeypatch, 7, 12)
    result = pretrain(tiny_pretrain_config(**BUDGETED), tmp_path, pool=pool, log=lambda m: None)
    assert result.steps == 10_005 and result.trained_steps == 11
    assert loss_rows(tmp_path) == [(4, 1, False), (6, 1, False), (10_004, 2, True),
                                   (10_005, 2, True)]  # fmt: skip


def test_a_peer_ended_by_its_budget_logs_its_last_steps(tmp_path, pool, monkeypatch):
    budget_spent_at(monkeypatch, 7)
    config = tiny_pretrain_config(method="simclr", **BUDGETED)
    result = pretrain(config, tmp_path, pool=pool, log=lambda m: None)
    assert result.steps == 6 and [r[0] for r in loss_rows(tmp_path)] == [4, 6]


def test_a_stage_ended_by_its_steps_between_rows_logs_its_last_steps(tmp_path, pool):
    # 6 + 5 steps logged every 4: stage 1's steps 5-6 went into the row of step 8 with stage
    # 2's 7-8, whose rd was summed over 2 steps and divided by 4.
    config = tiny_pretrain_config(stage1_steps=6, stage2_steps=5, log_every=4)
    pretrain(config, tmp_path, pool=pool, log=lambda m: None)
    assert loss_rows(tmp_path) == [(4, 1, False), (6, 1, False), (8, 2, True), (11, 2, True)]


def straight_and_resumed(tmp_path, pool, monkeypatch, config, straight, resumed, stopped=()):
    """The untimed log rows of ``config`` run straight, its budget spent at the readings
    ``straight``, and stopped at its checkpoint of step 5 (the budget spent at the readings
    ``stopped``), then resumed with the budget spent at the readings ``resumed`` (6 fewer: the
    start and the steps before the stop read it; the resume takes the checkpoint's)."""
    quiet = {"pool": pool, "log": lambda m: None}
    budget_spent_at(monkeypatch, *straight)
    pretrain(config, tmp_path / "straight", **quiet)
    budget_spent_at(monkeypatch, *stopped)
    pretrain(config, tmp_path / "resumed", stop_at_step=5, **quiet)
    budget_spent_at(monkeypatch, *resumed)
    pretrain(config, tmp_path / "resumed", resume=True, **quiet)
    return untimed_rows(tmp_path / "straight"), untimed_rows(tmp_path / "resumed")


def test_a_resumed_budgeted_run_logs_the_rows_of_an_uninterrupted_one(tmp_path, pool, monkeypatch):
    # stopped at its checkpoint of step 5 (step 5 in its log window), then resumed
    config = tiny_pretrain_config(**{**BUDGETED, "checkpoint_every": 5})
    straight, resumed = straight_and_resumed(tmp_path, pool, monkeypatch, config, (7, 12), (1, 6))
    assert [r["step"] for r in straight if r["loss"]] == ["4", "6", "10004", "10005"]
    assert resumed == straight


def test_a_resume_from_the_checkpoint_where_the_budget_ran_out_ends_the_stage_there(
    tmp_path, pool, monkeypatch
):
    # Stage 1's budget spent at step 5, the checkpoint written there, the run killed: the resume
    # decided again at the next step, and trained stage 1 a step longer than the straight run
    # (reviewer, under torchrun; alone by timing). Rows and validations are written before
    # that checkpoint, so none is written twice.
    config = tiny_pretrain_config(**{**BUDGETED, "checkpoint_every": 5})
    straight, resumed = straight_and_resumed(
        tmp_path, pool, monkeypatch, config, (6, 11), (5,), stopped=(6,)
    )
    assert [(r["step"], r["stage"]) for r in straight if r["loss"]] == [
        ("4", "1"), ("5", "1"), ("10004", "2"), ("10005", "2")
    ]  # fmt: skip
    assert resumed == straight


def test_a_checkpoint_of_before_the_budget_record_reads_the_clock_on_resume(
    tmp_path, pool, monkeypatch
):
    # Without "budget_spent" in the checkpoint the resume took the budget as not spent and
    # trained the stage a step longer than the old code did (reviewer): it reads the clock.
    import localdisc.engine.pretrain as engine

    real = engine.save_checkpoint

    def as_of_old(folder, step, tensors, meta, *args, **kwargs):
        return real(folder, step, tensors, {k: v for k, v in meta.items() if k != "budget_spent"},
                    *args, **kwargs)  # fmt: skip

    config = tiny_pretrain_config(**{**BUDGETED, "checkpoint_every": 5})
    monkeypatch.setattr(engine, "save_checkpoint", as_of_old)
    straight, resumed = straight_and_resumed(tmp_path, pool, monkeypatch, config, (6, 11), (1, 6))
    assert [(r["step"], r["stage"]) for r in straight if r["loss"]] == [
        ("4", "1"), ("5", "1"), ("10004", "2"), ("10005", "2")
    ]  # fmt: skip
    assert resumed == straight


def test_a_peer_run_leaves_no_figures_folder(tmp_path, pool):
    # figures are LD's similarity and cluster maps: a peer's run left an empty folder
    config = tiny_pretrain_config(method="simclr", stage1_steps=2, stage2_steps=0)
    pretrain(config, tmp_path / "peer", pool=pool, log=lambda m: None)
    assert (tmp_path / "peer" / "model.safetensors").is_file()
    assert not (tmp_path / "peer" / "figures").exists()
    ld = tiny_pretrain_config(stage1_steps=1, stage2_steps=1, figure_every=2)
    pretrain(ld, tmp_path / "ld", pool=pool, log=lambda m: None)
    assert list((tmp_path / "ld" / "figures").glob("*.png"))


def test_a_resume_where_the_budget_is_spent_validates_its_step_once(tmp_path, pool, monkeypatch):
    # Validated and checkpointed at step 5, where stage 1's budget is spent, stopped there and
    # resumed: the budget's end validated step 5 again, a second row for it in log.csv
    # (reviewer). The checkpoint records the step of the last validation, and the budget's
    # end, which the resume takes (it reads stage 2's clock alone).
    config = tiny_pretrain_config(**{**BUDGETED, "checkpoint_every": 5, "val_every": 5})
    straight, resumed = straight_and_resumed(
        tmp_path, pool, monkeypatch, config, (6, 11), (5,), stopped=(6,)
    )
    assert [(r["step"], r["stage"]) for r in straight if r["val_loss"]] == [
        ("5", "1"), ("10005", "2")
    ]  # fmt: skip
    assert resumed == straight
