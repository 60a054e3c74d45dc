"""Kill a CPU pre-training run with SIGKILL at random moments, resume it each time, and check
that nothing is lost: every checkpoint on disk verifies, progress never goes back, and the final
weights equal those of an uninterrupted run with the same seed.

    python benchmarks/kill_resume.py --kills 20 --out /tmp/kill-test

Prints one JSON line: kills, resumes, checkpoints verified, whether the weights match.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from localdisc.engine.checkpoint import list_checkpoints, load_safetensors, verify_checkpoint

TINY = ["--data", "synthetic_fundus:6", "--device", "cpu", "--size", "32", "--batch", "1",
        "--clusters", "4", "--dim", "8", "--checkpoint-every", "2", "--workers", "1"]  # fmt: skip


def command(out: Path, steps: int, resume: bool) -> list[str]:
    stages = ["--stage1-steps", str(steps), "--stage2-steps", str(steps)]
    return [sys.executable, "-m", "localdisc", "pretrain", "--out", str(out), *TINY, *stages] + (
        ["--resume"] if resume else []
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=200, help="steps of each stage")
    parser.add_argument("--window", type=float, nargs=2, default=(2.0, 10.0),
                        help="kill U(a, b) seconds after a run has written its config "
                             "(a slow start-up on a busy machine is not counted)")  # fmt: skip
    args = parser.parse_args()
    rng = random.Random(args.seed)

    reference = args.out / "uninterrupted"
    subprocess.run(
        command(reference, args.steps, False), check=True, capture_output=True, timeout=600
    )

    run = args.out / "interrupted"
    kills = resumes = verified = 0
    latest = -1
    finished = False
    # The runs' stderr goes to a file: a pipe nobody reads fills (64 KiB) and stalls the run.
    stderr_log = args.out / "interrupted-stderr.log"
    while not finished:
        with stderr_log.open("wb") as stderr:
            proc = subprocess.Popen(
                command(run, args.steps, resume=(run / "config.json").exists()),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        resumes += (run / "config.json").exists()
        if kills < args.kills:
            while not (run / "config.json").exists() and proc.poll() is None:
                time.sleep(0.05)
            try:
                proc.wait(timeout=rng.uniform(*args.window))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
        else:
            proc.wait(timeout=600)
        if proc.returncode == 0:
            finished = True
        elif proc.returncode != -signal.SIGKILL:
            tail = stderr_log.read_text(errors="replace")[-2000:]
            raise SystemExit(f"run failed (exit {proc.returncode}): {tail}")
        for checkpoint in list_checkpoints(run / "checkpoints"):
            verify_checkpoint(checkpoint)  # raises on a half-written checkpoint
            verified += 1
        steps = [int(p.name.removeprefix("step_")) for p in list_checkpoints(run / "checkpoints")]
        if steps and max(steps) < latest:
            raise SystemExit(f"progress went back: {max(steps)} < {latest}")
        latest = max(steps, default=latest)
        time.sleep(0.05)

    a = load_safetensors(reference / "model.safetensors")
    b = load_safetensors(run / "model.safetensors")
    equal = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    print(
        json.dumps(
            {
                "kills": kills,
                "resumes": resumes,
                "checkpoints_verified": verified,
                "final_weights_equal": equal,
            }  # fmt: skip
        )
    )
    if not equal:
        raise SystemExit("final weights differ from the uninterrupted run")


if __name__ == "__main__":
    main()
