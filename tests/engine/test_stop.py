"""The graceful stop of pre-training: the first SIGINT/SIGTERM ends the step, writes a checkpoint
there and stops; a second one stops at once; the handlers are restored after the loop."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from typer.testing import CliRunner

from helpers import run_two_ranks, tiny_pretrain_config
from localdisc.engine.checkpoint import CHECKPOINT_PREFIX, list_checkpoints, load_safetensors
from localdisc.engine.monitor import TrainingLog
from localdisc.engine.pretrain import pretrain
from localdisc.engine.stop import GracefulStop


@pytest.fixture(scope="module")
def pool():
    from localdisc.data.pool import synthetic_pool

    return synthetic_pool(6, "fundus", 48)


def last_checkpoint(run_dir) -> int:
    kept = list_checkpoints(run_dir / "checkpoints")
    return int(kept[-1].name.removeprefix(CHECKPOINT_PREFIX)) if kept else -1


def signal_at(monkeypatch, step: int, signals: list[int], reached: list[int]) -> None:
    """Send ``signals`` to this process while step ``step`` logs its losses (mid-iteration: its
    validation and checkpoint are still to come); ``reached`` counts the signals sent that
    returned (a signal that interrupts at once does not)."""
    real = TrainingLog.write

    def write(self, **row):
        real(self, **row)
        if row.get("step") == step and "loss" in row:
            for signum in signals:
                os.kill(os.getpid(), signum)
                reached.append(signum)

    monkeypatch.setattr(TrainingLog, "write", write)


@pytest.mark.parametrize("stop_at", [3, 5])  # stage 1 (between checkpoints), stage 2
def test_a_signal_ends_the_step_checkpoints_it_and_resume_continues_exactly(
    tmp_path, pool, monkeypatch, stop_at
):
    config = tiny_pretrain_config()  # 3 + 3 steps, checkpoints every 2
    pretrain(config, tmp_path / "straight", pool=pool)
    reached: list[int] = []
    signal_at(monkeypatch, stop_at, [signal.SIGINT], reached)
    with pytest.raises(KeyboardInterrupt):
        pretrain(config, tmp_path / "stopped", pool=pool)
    assert reached == [signal.SIGINT]  # the step went on after the signal
    assert last_checkpoint(tmp_path / "stopped") == stop_at
    assert not (tmp_path / "stopped" / "model.safetensors").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.undo()
    result = pretrain(config, tmp_path / "stopped", pool=pool, resume=True)
    assert result.steps == config.total_steps
    a = load_safetensors(tmp_path / "straight" / "model.safetensors")
    b = load_safetensors(tmp_path / "stopped" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_a_second_signal_stops_at_once(tmp_path, pool, monkeypatch):
    reached: list[int] = []
    signal_at(monkeypatch, 3, [signal.SIGINT, signal.SIGINT], reached)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_pretrain_config(), tmp_path, pool=pool)
    assert reached == [signal.SIGINT]  # the second one raised in the hook
    assert last_checkpoint(tmp_path) == 2  # the periodic one: none written at step 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_signal_while_the_stops_checkpoint_is_written_waits_for_it(
    tmp_path, pool, monkeypatch
):
    """A second Ctrl-C in the checkpoint the first one asked for cut its write, and --resume
    went back to the checkpoint before; the write now ends first, then the second one acts."""
    from localdisc.engine import pretrain as module

    reached: list[int] = []
    signal_at(monkeypatch, 3, [signal.SIGINT], reached)
    real = module.save_checkpoint
    written: list[int] = []

    def save_checkpoint(folder, step, tensors, meta, *args, **kwargs):
        if step == 3:  # the stop's checkpoint: a second Ctrl-C while it is written
            os.kill(os.getpid(), signal.SIGINT)
        real(folder, step, tensors, meta, *args, **kwargs)
        written.append(step)

    monkeypatch.setattr(module, "save_checkpoint", save_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_pretrain_config(), tmp_path, pool=pool)
    assert written == [2, 3]  # the stop's checkpoint was written whole
    assert last_checkpoint(tmp_path) == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_third_signal_during_a_hanging_write_acts_at_once_inside_it():
    """GracefulStop.deferring: a second signal waits for the write to end; "a third one acts at
    once, for a write that hangs" (README: "a third one then stops at once")."""
    import time

    reached: list[str] = []
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # the first: a request to stop
        assert stop.signum == signal.SIGINT
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt), stop.deferring():  # the stop's checkpoint
            os.kill(os.getpid(), signal.SIGINT)
            reached.append("second held")
            os.kill(os.getpid(), signal.SIGINT)
            reached.append("third returned")
            while time.monotonic() - start < 1.0:  # a write that hangs (for ever in real life)
                time.sleep(0.01)
            reached.append("write ended")
    assert reached == ["second held"]  # the third raised in the block, not once it ended


def test_under_torchrun_the_launchers_echo_of_the_signal_is_not_a_second_one(
    tmp_path, pool, monkeypatch
):
    # SLURM signals torchrun and its workers, and torchrun then forwards the signal: each worker
    # got two at once, the second stopped it mid-step, and the run lost its checkpoint.
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    reached: list[int] = []
    signal_at(monkeypatch, 3, [signal.SIGINT, signal.SIGINT], reached)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_pretrain_config(), tmp_path, pool=pool)
    assert reached == [signal.SIGINT, signal.SIGINT]  # the echo was dropped
    assert last_checkpoint(tmp_path) == 3


def test_a_signal_while_a_budget_ended_run_writes_its_last_checkpoint_waits_for_it(
    tmp_path, pool, monkeypatch
):
    # The checkpoint a spent budget ends the run with was written after the handlers were
    # restored: a first Ctrl-C there cut it, and the run had no checkpoint (its first).
    import itertools

    from localdisc.engine import pretrain as module

    readings = itertools.count(1)  # the start, then one after each step: spent after step 2
    monkeypatch.setattr(module, "_budget_spent", lambda start, budget: next(readings) == 3)
    real = module.save_checkpoint

    def save_checkpoint(folder, step, tensors, meta, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        real(folder, step, tensors, meta, *args, **kwargs)

    monkeypatch.setattr(module, "save_checkpoint", save_checkpoint)
    config = tiny_pretrain_config(stage1_steps=1, stage2_steps=100, stage2_seconds=100.0,
                                  checkpoint_every=1000)  # fmt: skip
    with pytest.raises(KeyboardInterrupt):  # once the run is whole: its caller stops too
        pretrain(config, tmp_path, pool=pool)
    assert last_checkpoint(tmp_path) == 2
    assert (tmp_path / "model.safetensors").is_file()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    result = pretrain(config, tmp_path, pool=pool, resume=True)  # finished, nothing lost
    assert result.already_finished and result.steps == 2


def test_handlers_are_restored_and_an_ignored_signal_stays_ignored(tmp_path, pool, monkeypatch):
    def mine(signum, frame):
        raise KeyboardInterrupt

    kept = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    seen = []
    real = TrainingLog.write

    def write(self, **row):
        seen.append((signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)))
        real(self, **row)

    monkeypatch.setattr(TrainingLog, "write", write)
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, mine)
        pretrain(tiny_pretrain_config(), tmp_path, pool=pool)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGINT, kept[0])
        signal.signal(signal.SIGTERM, kept[1])
    assert seen and all(i is signal.SIG_IGN and t is not mine for i, t in seen)


def test_a_graceful_stop_outside_the_main_thread_changes_nothing():
    import threading

    kept = signal.getsignal(signal.SIGINT)
    inside = []

    def run():
        with GracefulStop():
            inside.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert inside == [kept] and signal.getsignal(signal.SIGINT) is kept


def test_sigterm_in_the_cli_keeps_the_step_and_exits_143(tmp_path, monkeypatch):
    import localdisc.cli as cli

    kept = signal.getsignal(signal.SIGTERM)
    cli.install_signal_handlers()
    try:
        reached: list[int] = []
        signal_at(monkeypatch, 10, [signal.SIGTERM], reached)  # the CLI logs every 10 steps
        out = tmp_path / "run"
        args = ["pretrain", "--data", "synthetic_fundus:6", "--out", str(out), "--device", "cpu",
                "--stage1-steps", "12", "--stage2-steps", "0", "--size", "32", "--batch", "1",
                "--clusters", "4", "--dim", "8", "--checkpoint-every", "4"]  # fmt: skip
        result = CliRunner().invoke(cli.app, args)
        assert signal.getsignal(signal.SIGTERM) is cli._stop_on_signal
    finally:
        signal.signal(signal.SIGTERM, kept)
        cli._stopped_by = None
    assert result.exit_code == 143, result.output
    assert reached == [signal.SIGTERM]
    assert last_checkpoint(out) == 10
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("interrupted by SIGTERM: the last checkpoint (step 10"), lines


def test_ranks_agree_on_finite_the_signal_and_the_budget_in_one_all_reduce(tmp_path, monkeypatch):
    # One process in a gloo group: the all_reduce path runs (two processes: the test below).
    import torch.distributed as dist

    calls = []
    real = dist.all_reduce
    monkeypatch.setattr(dist, "all_reduce", lambda t, **kw: calls.append(t.shape) or real(t, **kw))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)  # fmt: skip
    try:
        stop = GracefulStop()
        assert stop.agree(torch.tensor(1.0), True) == (True, 0, False)
        assert stop.agree(torch.tensor(0.0), True) == (False, 0, False)
        assert stop.agree(torch.tensor(1.0), True, True) == (True, 0, True)
        stop.signum = signal.SIGTERM
        assert stop.agree(torch.tensor(1.0), True) == (True, signal.SIGTERM, False)
    finally:
        dist.destroy_process_group()
    assert calls == [torch.Size([3])] * 4  # one collective a step, for all three
    # alone: no collective
    assert stop.agree(torch.tensor(0.0), budget_spent=True) == (False, signal.SIGTERM, True)
    assert len(calls) == 4


RANK = """
import os, signal, sys
import torch.distributed as dist
from helpers import tiny_pretrain_config
import localdisc.engine.pretrain as engine
from localdisc.data.pool import synthetic_pool

rank, store, run_dir, signal_at = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
real, calls = engine.ld_losses, []

def ld_losses(model, *args, **kwargs):  # rank 1 alone gets a SIGINT in step signal_at
    if model.training:
        calls.append(1)
        if rank == 1 and len(calls) == signal_at:
            os.kill(os.getpid(), signal.SIGINT)
    return real(model, *args, **kwargs)

engine.ld_losses = ld_losses
# log_every 100: the steps where the ranks agreed on a signal before
config = tiny_pretrain_config(stage1_steps=6, stage2_steps=0, log_every=100, checkpoint_every=100,
                              val_every=100)
try:
    engine.pretrain(config, run_dir, pool=synthetic_pool(6, "fundus", 48), log=lambda m: None)
except KeyboardInterrupt:
    print(f"stopped after step {len(calls)}")
else:
    print("finished")
finally:
    dist.destroy_process_group()
"""


def test_under_torchrun_a_signal_to_one_rank_stops_all_at_the_end_of_that_step(tmp_path):
    # torchrun sends SIGTERM to every rank, but a rank may get it a step later than another, and
    # a Ctrl-C reaches the foreground processes only: the ranks agree at every step, in the
    # collective of the finite check, not at the log steps (every 10: SIGKILL might come first).
    outputs = run_two_ranks(tmp_path, RANK, "2")
    assert [out.strip() for out, _ in outputs] == ["stopped after step 2"] * 2, outputs
    assert last_checkpoint(tmp_path / "run") == 2
    assert len(list_checkpoints(tmp_path / "run" / "checkpoints")) == 1


BUDGET_RANK = """
import os, sys, time, types
import torch.distributed as dist
from helpers import tiny_pretrain_config
import localdisc.engine.pretrain as engine
from localdisc.data.pool import synthetic_pool

rank, store, run_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
# Rank 0's clock jumps past stage 1's budget in its third step; rank 1's never reaches it.
offset, steps, loop_calls = [0.0], [], []
engine.time = types.SimpleNamespace(perf_counter=lambda: time.perf_counter() + offset[0])
real_losses = engine.ld_losses

def ld_losses(model, *args, **kwargs):
    if model.training:
        steps.append(1)
        if rank == 0 and len(steps) == 3:
            offset[0] += 1000.0
    return real_losses(model, *args, **kwargs)

engine.ld_losses = ld_losses

def counted(name):  # the collectives of the loop itself (the losses' own are not counted)
    real = getattr(dist, name)

    def call(*args, **kwargs):
        if sys._getframe(1).f_globals["__name__"].startswith("localdisc.engine."):
            loop_calls.append(name)
        return real(*args, **kwargs)

    setattr(dist, name, call)

counted("all_reduce")
counted("broadcast")
# stage 2's budget: its clock restarts at the switch (rank 0's is 1000 s ahead by then)
config = tiny_pretrain_config(stage1_steps=100, stage2_steps=2, stage1_seconds=100.0,
                              stage2_seconds=100.0,
                              log_every=100, checkpoint_every=1000, val_every=1000)
messages = []
try:
    result = engine.pretrain(config, run_dir, pool=synthetic_pool(6, "fundus", 48),
                             log=messages.append)
    budget = [m for m in messages if "time budget" in m]
    print(result.steps, result.trained_steps, len(steps), len(loop_calls), budget)
finally:
    dist.destroy_process_group()
"""


def test_under_torchrun_rank_0s_budget_ends_stage_1_on_all_ranks_in_the_step_collective(tmp_path):
    # The budget flag rides on the finite check's all_reduce: rank 0's clock, spent in step 2,
    # ends stage 1 on both ranks at the top of step 3; stage 2 still runs its 2 steps.
    outputs = run_two_ranks(tmp_path, BUDGET_RANK)
    spent = "stage 1: time budget of 100 s spent after 3 steps of the stage (global step 3)"
    # one loop collective per step, and one per log row (the mean over ranks: at stage 1's end
    # by its budget, and at the run's end)
    # (the first process speaks for all: rank 1 logs nothing)
    expected = [f"102 5 5 7 {[spent]}", "102 5 5 7 []"]
    assert [out.strip() for out, _ in outputs] == expected, outputs
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "stage1.safetensors").is_file()
