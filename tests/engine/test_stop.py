"""The graceful stop of pre-training: the first SIGINT/SIGTERM ends the step, writes a checkpoint
there and stops; a second one stops at once; the handlers are restored after the loop."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from typer.testing import CliRunner

from helpers import tiny_pretrain_config
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


def test_ranks_agree_on_the_signal_by_an_all_reduce(tmp_path):
    # One process in a gloo group: the all_reduce path runs (a torchrun test would be minutes).
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)  # fmt: skip
    try:
        stop = GracefulStop()
        assert stop.agreed(True) == 0
        stop.signum = signal.SIGTERM
        assert stop.agreed(True) == signal.SIGTERM
    finally:
        dist.destroy_process_group()
