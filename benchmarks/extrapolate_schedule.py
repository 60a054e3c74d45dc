"""Extrapolate a pre-training run's measured speed to the published schedule (20 000 + 80 000).

Reads the run's ``log.csv`` (images/s of every logged interval, data pipeline included), takes
the median per stage over the logged intervals after the first (warm-up, compilation), and
prints the time the published schedule would take at those speeds. An extrapolation, stated as
such: it assumes the measured steps are representative of all 100 000.

    python benchmarks/extrapolate_schedule.py /tmp/kaggle_run/log.csv --batch 4
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path


def stage_speeds(log_csv: Path) -> dict[int, tuple[float, int]]:
    """Median images/s per stage (intervals after each stage's first) and the steps measured."""
    rows = [r for r in csv.DictReader(log_csv.read_text().splitlines()) if r.get("img_per_s")]
    speeds: dict[int, tuple[float, int]] = {}
    for stage in (1, 2):
        mine = [r for r in rows if r["stage"] == str(stage)]
        if len(mine) < 2:
            continue
        steps = int(mine[-1]["step"]) - int(mine[0]["step"])
        speeds[stage] = (statistics.median(float(r["img_per_s"]) for r in mine[1:]), steps)
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log_csv", type=Path)
    parser.add_argument("--batch", type=int, required=True, help="items per step (5B images)")
    parser.add_argument("--stage1-steps", type=int, default=20_000)
    parser.add_argument("--stage2-steps", type=int, default=80_000)
    args = parser.parse_args()
    speeds = stage_speeds(args.log_csv)
    if 2 not in speeds:
        raise SystemExit(f"{args.log_csv}: no stage-2 intervals logged; nothing to extrapolate")
    assumed = 1 not in speeds  # no stage-1 measurement: stage 2's (slower) speed, said so
    speeds.setdefault(1, speeds[2])
    images_per_step = 5 * args.batch
    total = 0.0
    for stage, steps in ((1, args.stage1_steps), (2, args.stage2_steps)):
        ips, measured = speeds[stage]
        seconds = steps * images_per_step / ips
        total += seconds
        source = (
            "not measured: stage 2's speed assumed"
            if stage == 1 and assumed
            else f"median over {measured} measured steps"
        )
        print(f"stage {stage}: {ips:.1f} images/s ({source}) -> {steps} steps in "
              f"{seconds / 60:.1f} min")  # fmt: skip
    print(f"published schedule extrapolated: {total / 60:.1f} min")


if __name__ == "__main__":
    main()
