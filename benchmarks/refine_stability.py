"""Is the shape-guided refinement stable? Retrains it per setting and CPU thread count.

Segments the test images of a data set with a finished shape-guided run (outputs A and B), then
for each setting and thread count trains the refinement network on their pseudo-labels, as
``localdisc benchmark shape-guided`` does but by default shorter and larger (200 steps at
512 x 512, as the results recorded with it were made; the benchmark's: 600 steps at the LD run's
pool size, ``--steps 600 --size POOL``), and prints Dice (whole image, as the benchmark's paper
Dice but at the image's own size) and mask fraction over the first ``--n`` test images, beside
output A's. A setting is ``RefineConfig`` fields, e.g. ``schedule=constant,recalibrate=false``
(the refinement before commit 1f80868). Used in
benchmarks/RESULTS.md ("The refinement ends settled"):

    python benchmarks/refine_stability.py RUN --data jsrt_scr:../shared/data --target lung \\
        --settings schedule=constant,recalibrate=false schedule=cosine,recalibrate=true \\
        --threads 1 2 --n 40
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from localdisc.data.datasets import load_data_spec
from localdisc.eval.metrics import dice_score
from localdisc.models.ld import LDModel
from localdisc.tasks.shape_guided import (
    RefineConfig,
    refine,
    refined_probability,
    run_size,
    segment,
)


def _setting(text: str) -> dict[str, object]:
    fields: dict[str, object] = {}
    for item in filter(None, text.split(",")):
        key, value = item.split("=")
        fields[key] = {"true": True, "false": False}.get(value, value)
        for kind in (int, float):  # numbers (steps, lr) as numbers
            try:
                fields[key] = kind(value)
                break
            except ValueError:
                pass
    return fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a shape-guided training run")
    parser.add_argument("--data", required=True, help="NAME:ROOT with a test split")
    parser.add_argument("--target", required=True)
    parser.add_argument("--settings", nargs="+", default=[""], help="KEY=VALUE,... per setting")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--steps", type=int, default=200, help="refinement steps (the benchmark's: 600)"
    )
    parser.add_argument(
        "--size", type=int, default=512, help="its side (the benchmark's: the run's pool size)"
    )
    parser.add_argument("--n", type=int, default=40, help="test images to score")
    args = parser.parse_args()

    samples = list(load_data_spec(args.data, "test"))
    model = LDModel.from_pretrained(args.run, device="cpu")
    maps = [segment(model, s.image, s.fov, size=run_size(args.run)) for s in samples]
    images = [s.image for s in samples]
    truths = [s.masks[args.target].astype(bool) for s in samples[: args.n]]
    dice_a = [dice_score(m.prob_a, t) for m, t in zip(maps, truths, strict=False)]
    print(f"output A: Dice {np.mean(dice_a):.3f} +- {np.std(dice_a):.3f}")
    for text in args.settings:
        for threads in args.threads:
            torch.set_num_threads(threads)
            fields = {"steps": args.steps, "size": args.size, "device": "cpu", **_setting(text)}
            config = RefineConfig(**fields)
            t0 = time.perf_counter()
            network = refine(args.run, images, maps, config, log=lambda m: None)
            dice, fraction = [], []
            for s, m, truth in zip(samples, maps, truths, strict=False):
                prob = refined_probability(network, s.image, m.fov, stretch=config.stretch_contrast)
                dice.append(dice_score(prob, truth))
                fraction.append((prob >= 0.5).mean())
            print(
                f"{text or 'default'}, {threads} thread(s), {time.perf_counter() - t0:.0f} s: "
                f"Dice {np.mean(dice):.3f} +- {np.std(dice):.3f}, "
                f"mask {100 * np.min(fraction):.1f}-{100 * np.max(fraction):.1f} % of the image",
                flush=True,
            )


if __name__ == "__main__":
    main()
