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
        command = " ".join(args[:2]) if args[0] == "shape-guided" else args[0]
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
