"""Does output A add to what the prior knows before looking? A fused with the prior's mean shape.

For a shape-guided run with a kept pose (where a pixel's place means something), compares on the
test images of a data set: output A, the prior's mean shape (the average of 32 simulated masks,
as the benchmark's "mean shape" row, here thresholded at 0.5), and their naive-Bayes fusion
``sigmoid(logit(A) + logit(mean shape))`` (two posteriors as independent evidence). Dice at each
image's own size. Nothing of the target data set's labels is used but the scoring. Used in
benchmarks/RESULTS.md ("Radiographs stretched to their own range"):

    python benchmarks/mean_shape_fusion.py RUN --data jsrt_scr:../shared/data --target lung \\
        --prior simulated:lungs
    python benchmarks/mean_shape_fusion.py RUN --data synthetic_xray:20 --target lung \\
        --prior simulated:lungs
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.special import expit, logit

from localdisc.data.datasets import dataset_class, load_data_spec
from localdisc.data.preprocess import resize_image
from localdisc.eval.metrics import dice_score
from localdisc.models.ld import LDModel
from localdisc.priors import load_prior
from localdisc.tasks.shape_guided import run_size, segment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a shape-guided training run")
    parser.add_argument("--data", required=True, help="NAME:ROOT (its test split if it has one)")
    parser.add_argument("--target", required=True)
    parser.add_argument("--prior", required=True, help="the run's prior, e.g. simulated:lungs")
    parser.add_argument("--n", type=int, default=None, help="score only the first N images")
    args = parser.parse_args()

    name = args.data.partition(":")[0]
    split = "test" if "test" in dataset_class(name).splits else None
    samples = list(load_data_spec(args.data, split))[: args.n]
    mean = load_prior(args.prior, 128, count=32, seed=0)[:, 0].float().mean(0).numpy()
    model = LDModel.from_pretrained(args.run, device="cpu")
    size = run_size(args.run)
    scores: dict[str, list[float]] = {"output A": [], "mean shape": [], "fused": []}
    for s in samples:
        prob_a = segment(model, s.image, s.fov, size=size).prob_a
        shape = np.clip(resize_image(mean, s.fov.shape), 0, 1)
        fused = expit(
            logit(np.clip(prob_a, 1e-3, 1 - 1e-3)) + logit(np.clip(shape, 1e-3, 1 - 1e-3))
        )
        truth = s.masks[args.target].astype(bool)
        for key, prob in zip(scores, (prob_a, shape, fused), strict=True):
            scores[key].append(dice_score(prob, truth))
    print(f"{len(samples)} images, Dice at their own size:")
    for key, values in scores.items():
        print(f"  {key:10s} {np.mean(values):.3f} +- {np.std(values):.3f}")


if __name__ == "__main__":
    main()
