"""Under torchrun only pre-training spreads over the processes; other commands are refused."""

from typer.testing import CliRunner

from localdisc.cli import app


def test_commands_of_one_process_are_refused_under_torchrun(tmp_path, monkeypatch):
    # `torchrun --nproc-per-node 2 -m localdisc finetune ...` started two fine-tunings into one
    # --out: the second was told "another process is running in this folder; wait for it",
    # its own twin, and both stopped mid-epoch.
    monkeypatch.setenv("WORLD_SIZE", "2")
    for args in (["finetune", "--dataset", str(tmp_path), "--out", str(tmp_path / "ft")],
                 ["shape-guided", "segment", "--model", str(tmp_path), "--images", "x.png"],
                 ["benchmark", "transfer", "--quick", "--out", str(tmp_path / "b")]):  # fmt: skip
        result = CliRunner().invoke(app, args)
        command = " ".join(args[:2]) if args[0] in ("shape-guided", "benchmark") else args[0]
        assert result.exit_code != 0
        assert str(result.exception) == (
            f"{command} runs in one process, not under torchrun (2 processes here): run it "
            "without torchrun; pretrain and shape-guided train spread over processes"
        )
    assert not any(tmp_path.iterdir())  # nothing started
    # Pre-training is not refused here (it fails later, on its missing data).
    result = CliRunner().invoke(app, ["pretrain", "--data", str(tmp_path / "none"), "--out",
                                      str(tmp_path / "run"), "--device", "cpu"])  # fmt: skip
    assert "under torchrun" not in str(result.exception) + result.output


def test_help_pages_and_datasets_are_not_refused_under_torchrun(tmp_path):
    # The groups' callbacks run before a command parses --help: `finetune --help` and
    # `datasets list` were refused in a torchrun allocation.
    import os
    import subprocess
    import sys

    env = {**os.environ, "WORLD_SIZE": "2"}
    for args in (["finetune", "--help"], ["benchmark", "transfer", "--help"], ["datasets", "list"]):
        done = subprocess.run([sys.executable, "-m", "localdisc", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0 and "under torchrun" not in done.stdout + done.stderr, args
