"""How good are the refinement's pseudo-labels before any training? Each vote against the masks.

For a shape-guided run whose prior keeps its pose, segments a data set's test images and scores
each map the pseudo-labels are built from, thresholded at 0.5, by paper Dice (whole image at
512) against the test images' masks (the labels only score):

- ``A``, ``B`` and their mean ``AB``;
- ``single``: the prior's mean shape (its masks' pixel frequency) moved onto LD's map
  (:func:`localdisc.priors.atlas.align_frequency`), ``single+int`` the intensity posterior it
  mixes, ``single consensus`` the mean of AB and those two (the pseudo-labels until "Atlases that
  match each image" in benchmarks/RESULTS.md);
- ``fused K``: the K of the prior's masks that best match LD's map, each moved onto it, averaged
  (:func:`localdisc.priors.atlas.fuse_atlases`), its intensity posterior and consensus (K = 50:
  the benchmark's pseudo-labels);
- ``single on truth``: the mean shape moved onto the true mask instead of LD's map, the best a
  moved mean shape can do (uses the labels; a ceiling, not a result).

    python benchmarks/pseudo_label_quality.py RUN --data synthetic_xray_hard:60 --target lung \
        [--k 10,20,50] [--bend 0]

``--bend SEED`` bends the test images and masks first, as ``refine_pseudo_labels.py --bend``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from localdisc.data.datasets import load_data_spec
from localdisc.data.preprocess import resize_image
from localdisc.models.ld import LDModel
from localdisc.priors.atlas import align_frequency, fuse_atlases, intensity_posterior
from localdisc.tasks.shape_guided import run_prior_masks, run_size, segment
from localdisc.tasks.transfer import image_metrics

sys.path.insert(0, str(Path(__file__).parent))
from refine_pseudo_labels import bend  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a shape-guided training run with a kept-pose prior")
    parser.add_argument("--data", required=True, help="NAME:ROOT with a test split")
    parser.add_argument("--target", required=True)
    parser.add_argument("--k", default="50", help="comma-separated numbers of fused masks")
    parser.add_argument("--bend", type=int, default=None, metavar="SEED")
    args = parser.parse_args()

    test = list(load_data_spec(args.data, "test"))
    if args.bend is not None:
        test = bend(test, args.bend)
    masks = run_prior_masks(args.run)
    if masks is None:
        parser.error(f"{args.run}: its prior does not keep its pose")
    frequency = masks.mean(0, dtype=np.float32)
    model = LDModel.from_pretrained(args.run, device="cpu")
    size = run_size(args.run)
    scores: dict[str, list[float]] = {}
    start = time.perf_counter()
    for s in test:
        maps = segment(model, s.image, s.fov, size=size)
        ab = 0.5 * (maps.prob_a + maps.prob_b)
        votes = {"A": maps.prob_a, "B": maps.prob_b, "AB": ab}
        plain = np.clip(resize_image(frequency, maps.fov.shape), 0, 1) * maps.fov
        priors = {"single": align_frequency(plain, ab)[0] * maps.fov}
        for k in (int(k) for k in args.k.split(",")):
            fused = fuse_atlases(masks, ab, k=k)[0]
            priors[f"fused {k}"] = np.clip(resize_image(fused, maps.fov.shape), 0, 1) * maps.fov
        for name, prior in priors.items():
            intensity = intensity_posterior(s.image, prior) * maps.fov
            votes |= {name: prior, f"{name}+int": intensity}
            votes[f"{name} consensus"] = (ab + prior + intensity) / 3
        truth = s.masks[args.target].astype(np.float32)
        votes["single on truth"] = align_frequency(plain, truth)[0] * maps.fov
        for name, vote in votes.items():
            dice = image_metrics(vote.astype(np.float32), s, args.target, 512)["dice"]
            scores.setdefault(name, []).append(dice)
    print(
        f"{args.run}, {args.target}: {len(test)} test images, {time.perf_counter() - start:.0f} s"
    )
    for name, values in scores.items():
        print(f"  {name:24s} Dice {np.mean(values):.4f} (min {np.min(values):.3f})")


if __name__ == "__main__":
    main()
