"""How pre-training's two samplers draw a pool: steps holding one image twice, and images seen.

``epoch`` (data/sampling.py, the default) against ``replacement`` (each step's images drawn
uniformly with replacement, as every run before the option). For each setting (pool images, a
step's images = 2 x batch, steps), both samplers run the steps and the script counts the steps
that hold an image more than once (a false negative pair for SimCLR and DenseCL, which take a
step's other images as negatives), the pairs so repeated per step, and the share of the pool
not drawn by the end. No network is trained.

    python benchmarks/sampler_draws.py

The settings are those of the recorded runs (the --cpu-scale X-ray pool, the first 1 000 of
CXR_Kermany's NORMAL images less 50 for validation, at LD's and SimCLR's steps in 240 s; the
published schedule on KaggleDR's 35 126 less 50) and one a user may choose (batch 32 on a
500-image pool, 25 held out).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from localdisc.data.sampling import EpochSampler

SETTINGS = [  # (what, pool images, images a step, steps)
    ("cpu-scale X-ray pool, LD's steps in 240 s", 950, 4, 794),
    ("cpu-scale X-ray pool, SimCLR's steps in 240 s", 950, 4, 3814),
    ("published schedule, KaggleDR", 35076, 8, 100_000),
    ("batch 32 on a 500-image pool, 2 000 steps", 475, 64, 2_000),
]


def draws(sampler: str, n: int, per_step: int, steps: int, seed: int) -> list[np.ndarray]:
    if sampler == "epoch":
        epochs = EpochSampler(n, per_step, (seed, 0))
        return [epochs.indices(s).numpy() for s in range(steps)]
    gen = torch.Generator().manual_seed(seed * 1009)  # as the engine seeds rank 0's
    return [torch.randint(n, (per_step,), generator=gen).numpy() for _ in range(steps)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("| setting | sampler | steps with a repeat | repeated pairs a step | pool not drawn |")
    print("|---|---|---|---|---|")
    for what, n, per_step, steps in SETTINGS:
        for sampler in ("replacement", "epoch"):
            drawn = draws(sampler, n, per_step, steps, args.seed)
            counts = [np.unique(d, return_counts=True)[1] for d in drawn]
            pairs = [int((c * (c - 1) // 2).sum()) for c in counts]
            repeats = sum(p > 0 for p in pairs)
            unseen = 1 - len(np.unique(np.concatenate(drawn))) / n
            print(f"| {what} (n {n}, {per_step} a step, {steps} steps) | {sampler} | "
                  f"{repeats} ({100 * repeats / steps:.2f} %) | {np.mean(pairs):.3f} | "
                  f"{100 * unseen:.1f} % |")  # fmt: skip


if __name__ == "__main__":
    main()
