"""Which pseudo-labels should the shape-guided refinement train on? Three variants against the
benchmark's own.

With a finished shape-guided run, segments a data set's test images (outputs A and B) and trains
the refinement network (200 steps at the run's pool size, as ``localdisc benchmark shape-guided
--refine-steps 200``) on

- ``base``: the pseudo-labels of the test images, as the benchmark does;
- ``self``: a second round, a new network trained on the first one's masks of the test images
  (self-training: label ``p > 0.5``, weight ``|2p - 1|``);
- ``more``: the pseudo-labels of the training images too (labels unused), as stage 1 sees them;
- ``more+self``: the second round on top of ``more``, over the same images.

and prints paper Dice (whole image at 512) over the test images for each. Used in
benchmarks/RESULTS.md ("Refinement on other pseudo-labels"):

    python benchmarks/refine_pseudo_labels.py RUN --data jsrt_scr:../shared/data --target lung
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np

from localdisc.data.datasets import load_data_spec
from localdisc.models.ld import LDModel
from localdisc.models.segmenter import Segmenter
from localdisc.tasks.shape_guided import (
    RefineConfig,
    ShapeGuidedMaps,
    refine,
    refined_probability,
    run_size,
    segment,
)
from localdisc.tasks.transfer import image_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a shape-guided training run")
    parser.add_argument("--data", required=True, help="NAME:ROOT with train and test splits")
    parser.add_argument("--target", required=True)
    parser.add_argument("--steps", type=int, default=200, help="refinement steps per network")
    args = parser.parse_args()

    test = list(load_data_spec(args.data, "test"))
    train = list(load_data_spec(args.data, "train"))
    model = LDModel.from_pretrained(args.run, device="cpu")
    size = run_size(args.run)
    test_maps = [segment(model, s.image, s.fov, size=size) for s in test]
    train_maps = [segment(model, s.image, s.fov, size=size) for s in train]
    config = RefineConfig(steps=args.steps, size=size or 512, device="cpu")

    def fit(samples: Sequence, maps: Sequence[ShapeGuidedMaps]) -> Segmenter:
        return refine(args.run, [s.image for s in samples], maps, config, log=lambda m: None)

    def second_round(network: Segmenter, samples: Sequence, maps: Sequence) -> Segmenter:
        probs = [
            refined_probability(network, s.image, m.fov) for s, m in zip(samples, maps, strict=True)
        ]
        return fit(
            samples, [ShapeGuidedMaps(p, p, m.fov) for p, m in zip(probs, maps, strict=True)]
        )

    def report(name: str, network: Segmenter, start: float) -> None:
        rows = [
            image_metrics(refined_probability(network, s.image, m.fov), s, args.target, 512)
            for s, m in zip(test, test_maps, strict=True)
        ]
        dice = np.array([r["dice"] for r in rows])
        print(
            f"{name}: Dice {dice.mean():.3f} (median {np.median(dice):.3f}, min {dice.min():.3f})"
            f", AUC {np.mean([r['auc'] for r in rows]):.3f}, sensitivity "
            f"{np.mean([r['sensitivity'] for r in rows]):.3f}, specificity "
            f"{np.mean([r['specificity'] for r in rows]):.3f}; {time.perf_counter() - start:.0f} s",
            flush=True,
        )

    print(f"{args.run}, {args.target}: {len(test)} test and {len(train)} training images")
    start = time.perf_counter()
    base = fit(test, test_maps)
    report("base", base, start)
    start = time.perf_counter()
    report("self", second_round(base, test, test_maps), start)
    start = time.perf_counter()
    more = fit(test + train, test_maps + train_maps)
    report("more", more, start)
    start = time.perf_counter()
    report("more+self", second_round(more, test + train, test_maps + train_maps), start)


if __name__ == "__main__":
    main()
