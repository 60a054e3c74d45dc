"""The simulated vessel prior's vessel fraction against the size its masks are drawn at.

    python benchmarks/prior_fraction_sizes.py [--sizes 128 256 565] [--count 32] \\
        [--drive /work/shared/data/DRIVE]

Prints :func:`~localdisc.tasks.benchmark_shape_guided.expected_fraction` of
``simulated:vessels`` (each tree's share of its convex hull, as ``shape-guided vessels`` and
``benchmark shape-guided`` take it, which load the masks at 128 px) at each size, and, with
``--drive``, the share of DRIVE's first-observer tracings inside the official FOV masks, per
split. The simulator's thinnest vessels keep a width in pixels, so its trees cover more of a
small raster.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 565])
    parser.add_argument("--count", type=int, default=32, help="masks, seeds 0 to count - 1")
    parser.add_argument("--drive", type=Path, help="DRIVE's root (official layout)")
    args = parser.parse_args()

    from localdisc.priors import load_prior
    from localdisc.tasks.benchmark_shape_guided import expected_fraction
    from localdisc.tasks.vesselness import prior_fraction

    for size in args.sizes:
        t0 = time.perf_counter()
        bank = load_prior("simulated:vessels", size, count=args.count, seed=0)
        fraction = expected_fraction(bank, tubular=True)
        print(f"simulated:vessels at {size} px: {fraction:.4f} ({time.perf_counter() - t0:.0f} s)")
    if args.drive is not None:
        from localdisc.data.datasets import load_dataset

        for split in ("train", "test"):
            samples = list(load_dataset("drive", args.drive, split))
            share = prior_fraction([s.masks["vessels"] for s in samples], [s.fov for s in samples])
            print(
                f"DRIVE {split}, 1st observer, inside the FOV: {share:.4f} ({len(samples)} images)"
            )


if __name__ == "__main__":
    main()
