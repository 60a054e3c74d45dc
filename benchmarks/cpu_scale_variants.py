"""The CPU-scale transfer comparison (`localdisc benchmark transfer --cpu-scale`) with a variant of
the pre-training configuration or seed. The preset pre-trains on native-scale crops (pool 256,
crops of 20-35% of the area); the published-style whole image shrunk to 128 is

    python benchmarks/cpu_scale_variants.py --data-root ../shared/data --out /tmp/cpu-whole \
        --pool-size 144 --crop-scale 0.9 1.0 --reuse /tmp/cpuscale [--steps-per-epoch 5]

``--reuse DIR`` copies the finished random-init runs of an earlier --cpu-scale benchmark (same
protocol, so the same numbers) instead of recomputing them. Prints and writes results.md.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from localdisc.tasks.benchmark_transfer import BenchmarkConfig, run_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pool-size", type=int, default=None)
    parser.add_argument("--crop-scale", type=float, nargs=2, default=None)
    parser.add_argument("--padding", default=None)
    parser.add_argument("--center-sigma", type=float, default=None)
    parser.add_argument("--stage-seconds", type=float, nargs=2, default=None)
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pretrain-seed", type=int, default=None)
    parser.add_argument("--reuse", type=Path, default=None)
    args = parser.parse_args()

    pretrain: dict = {}
    if args.pool_size:
        pretrain["pool_size"] = args.pool_size
    if args.crop_scale:
        pretrain["crop_scale"] = tuple(args.crop_scale)
    if args.padding:
        pretrain["padding"] = args.padding
    if args.center_sigma:
        pretrain["center_sigma"] = args.center_sigma
    if args.stage_seconds:
        pretrain["stage1_seconds"], pretrain["stage2_seconds"] = args.stage_seconds
    if args.pretrain_seed is not None:
        pretrain["seed"] = args.pretrain_seed
    if args.reuse is not None:
        source = args.reuse / "runs" / "drive" / "random"
        target = args.out / "runs" / "drive" / "random"
        if source.is_dir() and not target.exists():
            shutil.copytree(source, target)
    config = BenchmarkConfig(
        cpu_scale=True,
        data_root=args.data_root,
        seeds=args.seeds,
        steps_per_epoch=args.steps_per_epoch,
        pretrain=pretrain,
    )
    run_benchmark(config, args.out)
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
