"""Ctrl-C in a long command: one line on what is kept and how to go on, and exit code 130."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from localdisc.cli import app

runner = CliRunner()


def interrupt(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt


def pretrain_stopped_at(step: int | None):
    """A stand-in for the pre-training that leaves config.json (and a checkpoint of ``step``)
    in its run folder, then is interrupted."""

    def run(config: object, out: Path, **kwargs: object) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({"pretrain": {}}))
        if step is not None:
            (out / "checkpoints" / f"step_{step:08d}").mkdir(parents=True)
        raise KeyboardInterrupt

    return run


def one_line(result) -> str:
    assert result.exit_code == 130, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("command", [["pretrain"], ["shape-guided", "train", "--prior", "x"]])
def test_an_interrupted_pretraining_says_how_to_resume(tmp_path, monkeypatch, command) -> None:
    import localdisc.engine.pretrain as engine

    out = tmp_path / "run"
    args = [*command, "--data", "synthetic_fundus:2", "--out", str(out)]
    monkeypatch.setattr(engine, "pretrain", pretrain_stopped_at(3000))
    line = one_line(runner.invoke(app, args))
    assert "the last checkpoint (step 3000" in line
    assert "continue with the same command and --resume" in line

    monkeypatch.setattr(engine, "pretrain", pretrain_stopped_at(None))
    line = one_line(runner.invoke(app, [*args[:-1], str(tmp_path / "early")]))
    assert "no checkpoint of the run" in line and "--resume starts it again from step 0" in line

    monkeypatch.setattr(engine, "pretrain", interrupt)  # before config.json: nothing to resume
    line = one_line(runner.invoke(app, [*args[:-1], str(tmp_path / "none")]))
    assert "run the same command again" in line and "--resume" not in line


def test_a_finetuning_interrupted_before_its_first_checkpoint_says_it_is_redone(
    tmp_path, monkeypatch
) -> None:
    import localdisc.tasks.transfer as transfer

    monkeypatch.setattr(transfer, "run_transfer", interrupt)
    args = ["finetune", "--dataset", "synthetic_fundus:4", "--out", str(tmp_path / "ft")]
    line = one_line(runner.invoke(app, args))
    assert "no checkpoint of the fine-tuning yet; run the same command again to redo it" in line
    assert "--resume" not in line


@pytest.mark.parametrize(
    "command,module,function,shown",
    [
        (["benchmark", "transfer"], "benchmark_transfer", "run_benchmark", "finished fine-tunings"),
        (["benchmark", "localize", "--quick"], "benchmark_localize", "run_localize_benchmark",
         "the --quick pre-training"),
        (["benchmark", "shape-guided"], "benchmark_shape_guided", "run_shape_benchmark",
         "finished trainings and evaluations"),
        (["benchmark", "pretrain-methods"], "benchmark_methods", "run_methods_benchmark",
         "finished pre-trainings and fine-tunings"),
    ],
)  # fmt: skip
def test_an_interrupted_benchmark_says_a_rerun_reuses_its_runs(
    tmp_path, monkeypatch, command, module, function, shown
) -> None:
    import importlib

    monkeypatch.setattr(importlib.import_module(f"localdisc.tasks.{module}"), function, interrupt)
    line = one_line(runner.invoke(app, [*command, "--out", str(tmp_path / "bench")]))
    assert shown in line and "run the same command again" in line and "--resume" not in line


def test_an_interrupted_demo_says_a_rerun_continues(tmp_path, monkeypatch) -> None:
    import localdisc.demo as demo

    monkeypatch.setattr(demo, "run_demo", interrupt)
    line = one_line(runner.invoke(app, ["demo", "--out", str(tmp_path / "demo")]))
    assert "run the same command again" in line and "continues from its last checkpoint" in line


def test_an_interrupted_label_free_vessel_run_says_what_a_rerun_takes_up(
    tmp_path, monkeypatch
) -> None:
    import localdisc.tasks.vessels as vessels

    monkeypatch.setattr(vessels, "segment_vessels_self_trained", interrupt)
    images = tmp_path / "images"
    images.mkdir()
    line = one_line(
        runner.invoke(
            app, ["shape-guided", "vessels", "--images", str(images), "--out", str(tmp_path / "v")]
        )
    )
    assert "no network was saved yet" in line and "run the same command again" in line
    # One that was saved is named (a --teach-all group's, here), as kept.
    (tmp_path / "v" / "group-1").mkdir(parents=True)
    (tmp_path / "v" / "group-1" / "model.safetensors").touch()
    line = one_line(
        runner.invoke(
            app, ["shape-guided", "vessels", "--images", str(images), "--out", str(tmp_path / "v")]
        )
    )
    assert f"the network(s) saved in {tmp_path / 'v' / 'group-1'} are kept" in line


def test_sigterm_stops_a_pretraining_as_ctrl_c_does_with_exit_code_143(
    tmp_path, monkeypatch, sigterm_handler
) -> None:
    # A scheduler's time limit (SLURM) or `kill` used to end the run with no word at all.
    import os
    import signal

    import localdisc.engine.pretrain as engine

    def terminated(config: object, out: Path, **kwargs: object) -> None:
        out.mkdir(parents=True)
        (out / "config.json").write_text(json.dumps({"pretrain": {}}))
        (out / "checkpoints" / "step_00000040").mkdir(parents=True)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(engine, "pretrain", terminated)
    out = tmp_path / "run"
    result = runner.invoke(app, ["pretrain", "--data", "synthetic_fundus:2", "--out", str(out)])
    assert result.exit_code == 143, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted by SIGTERM: "), result.stderr
    assert "the last checkpoint (step 40" in lines[0] and "--resume" in lines[0]


def test_the_sigterm_handler_is_only_installed_in_the_main_thread() -> None:
    import signal
    import threading

    import localdisc.cli as cli

    kept = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=cli.install_signal_handlers)
    thread.start()
    thread.join()
    assert signal.getsignal(signal.SIGTERM) is kept


def finetune_args(tmp_path: Path, out: Path) -> list[str]:
    """`finetune` of 3 epochs of 2 steps at 32 x 32 into ``out``, on a folder set of 3 X-rays
    (2 to train on, 1 held out for testing) written under ``tmp_path``."""
    import numpy as np

    from helpers import save
    from localdisc.data.synthetic import synthetic_xray

    for i in range(3):
        sample = synthetic_xray(64, seed=i)
        save(tmp_path / "data" / f"case{i}.png", (sample.image[..., 0] * 255).astype(np.uint8))
        save(tmp_path / "data" / "masks" / f"case{i}.png", (sample.lungs * 255).astype(np.uint8))
    return ["finetune", "--dataset", str(tmp_path / "data"), "--out", str(out), "--size", "32",
            "--epochs", "3", "--steps-per-epoch", "2", "--device", "cpu"]  # fmt: skip


def test_sigterm_in_a_finetuning_keeps_the_step_and_the_same_command_continues(
    tmp_path, monkeypatch, sigterm_handler
) -> None:
    """A scheduler's time limit ended a fine-tuning with "nothing is kept": the step goes on, a
    checkpoint is written there, and the same command continues from it."""
    import os
    import signal

    import localdisc.engine.finetune as engine

    real, taken = engine.augment, []

    def augment(*args, **kwargs):
        taken.append(1)
        if len(taken) == 3:  # epoch 2, step 1
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "augment", augment)
    out = tmp_path / "ft"
    args = finetune_args(tmp_path, out)
    result = runner.invoke(app, args)
    assert result.exit_code == 143, result.output
    assert len(taken) == 3  # the step went on, no other began
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        f"interrupted by SIGTERM: its checkpoint is kept in {out / 'checkpoint'}; run the same "
        "command again to continue from there (from scratch epoch 2/3, step 2/2)"
    ]
    monkeypatch.undo()
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "continuing the interrupted fine-tuning from its checkpoint" in result.output
    assert (out / "metrics.json").is_file() and not (out / "checkpoint").exists()


def test_a_second_sigterm_while_a_finetuning_writes_its_checkpoint_waits_for_it(
    tmp_path, monkeypatch, sigterm_handler
) -> None:
    """Two SIGTERMs (a scheduler's, then the user's `kill`): the second one, in the checkpoint
    the first asked for, cut its write and left OUT/checkpoint/ empty ("no checkpoint ...
    yet"). The write now ends, and then the command stops, saying where it continues."""
    import os
    import signal

    import localdisc.engine.checkpoint as checkpoint
    import localdisc.engine.finetune as engine

    real_augment, taken = engine.augment, []
    real_write, written = checkpoint._write_file, []

    def augment(*args, **kwargs):
        taken.append(1)
        if len(taken) == 3:  # epoch 2, step 1
            os.kill(os.getpid(), signal.SIGTERM)
        return real_augment(*args, **kwargs)

    def write_file(path, data):
        written.append(path.name)
        if len(written) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        real_write(path, data)

    monkeypatch.setattr(engine, "augment", augment)
    monkeypatch.setattr(checkpoint, "_write_file", write_file)
    out = tmp_path / "ft"
    result = runner.invoke(app, finetune_args(tmp_path, out))
    assert result.exit_code == 143, result.output
    assert "state.json" in written
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        f"interrupted by SIGTERM: its checkpoint is kept in {out / 'checkpoint'}; run the same "
        "command again to continue from there (from scratch epoch 2/3, step 2/2)"
    ]


def test_ctrl_c_while_a_command_starts_says_it_stopped(tmp_path, monkeypatch, capsys) -> None:
    # Ctrl-C while torch loads or the modality is guessed, before the run's own handler: Typer
    # ended it with exit code 130 and no word (a user run 4 s after the start on a busy CPU).
    import sys

    import localdisc.cli as cli
    import localdisc.engine.pretrain as engine

    args = ["localdisc", "pretrain", "--data", "synthetic_fundus:2", "--out", str(tmp_path / "r")]
    monkeypatch.setattr(sys, "argv", args)
    monkeypatch.setattr(cli, "_data_modality", interrupt)
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    assert stopped.value.code == 130
    assert [line for line in capsys.readouterr().err.splitlines() if line.strip()] == [
        "interrupted by SIGINT"
    ]
    # Stopped in the run, its own line alone (not followed by this one).
    monkeypatch.setattr(cli, "_data_modality", lambda *a: "fundus")
    monkeypatch.setattr(engine, "pretrain", interrupt)
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert stopped.value.code == 130 and len(lines) == 1, lines
    assert lines[0].startswith("interrupted: ") and "run the same command again" in lines[0]
