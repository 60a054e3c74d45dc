"""SIGKILL a CPU pre-training run at random moments and resume it: nothing may be lost."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "kill_resume.py"


def test_killed_and_resumed_run_ends_with_the_uninterrupted_weights(tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--kills", "3", "--steps", "40", "--window", "0.5", "2.5",
           "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["kills"] >= 1 and report["resumes"] >= report["kills"]
    assert report["final_weights_equal"]
