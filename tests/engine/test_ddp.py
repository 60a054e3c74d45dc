"""The data-parallel path end to end: torchrun with 2 gloo processes on the CPU."""

import csv
import shutil
import subprocess
import sys

import pytest


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_torchrun_two_processes_pretrain_and_resume(tmp_path):
    out = tmp_path / "run"
    base = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "--standalone", "-m", "localdisc", "pretrain", "--data", "synthetic_fundus:6",
            "--out", str(out), "--device", "cpu", "--stage1-steps", "2", "--stage2-steps", "2",
            "--size", "32", "--batch", "1", "--clusters", "4", "--dim", "8",
            "--checkpoint-every", "2"]  # fmt: skip
    proc = subprocess.run(base, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model.safetensors").is_file()
    rows = list(csv.DictReader((out / "log.csv").read_text().splitlines()))
    assert rows and rows[-1]["step"] == "4"
    assert proc.stdout.count("done:") == 1  # only rank 0 reports
    proc = subprocess.run(base + ["--resume"], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
