"""Which pseudo-labels should the shape-guided refinement train on? Variants against the
benchmark's own.

With a finished shape-guided run, segments a data set's test images (outputs A and B) and trains
the refinement network (200 steps at the run's pool size, as ``localdisc benchmark shape-guided
--refine-steps 200``) on

- ``base``: the pseudo-labels of the test images, as the benchmark does (A and B, and when the
  prior keeps its pose two more votes: its masks that best match LD's map moved onto it and
  averaged, and the intensity posterior they mix: :func:`localdisc.tasks.shape_guided.atlas_votes`);
- ``single``: ``base`` with the prior's pixel frequency (all its masks' mean) moved onto the
  image instead of its best-matching masks (the benchmark's from "A harder generated radiograph
  set" to "Atlases that match each image");
- ``ab``: A and B alone, without the prior's votes (the benchmark's before them);
- ``vote``: A and B and the prior's frequency as it is, not moved, no intensity vote (the
  benchmark's from "The prior's pixel frequency as a vote" to "A harder generated radiograph
  set");
- ``self``: a second round, a new network trained on the first one's masks of the test images
  (self-training: label ``p > 0.5``, weight ``|2p - 1|``);
- ``more``: the pseudo-labels of the training images too (labels unused), as stage 1 sees them;
- ``more+self``: the second round on top of ``more``, over the same images;
- ``topology``: the benchmark's pseudo-labels held to the run's organ prior topology (pieces, no
  holes: ``localdisc.priors.topology``) before training;
- ``a``: output A alone (label ``A > 0.5``, weight ``|2A - 1|``), B left out;
- ``mean``: the benchmark's pseudo-labels from the mean of A and of B over RUN and the runs
  given with ``--with`` (an ensemble's maps, as ``shape-guided segment`` with several
  ``--model`` averages them), one network trained on them from RUN's encoder;
- ``seeds``: three refinement networks on the benchmark's pseudo-labels (refinement seeds 0, 1
  and 2; seed 0 is ``base``), their probability maps averaged;
- for a prior that keeps its pose, ``prior``: no LD output at all, the run's shape prior alone:
  each pixel's frequency in 200 of its masks (label ``f > 0.5``, weight ``|2f - 1|``), the same
  for every image. A check of what LD's own outputs add over the prior's average shape;
- ``prior+a``: the mean of the prior's frequency and output A (``base`` is that with the mean of
  A and B);
- ``prior-stage1``: the same pseudo-labels, the network from the stage-1 run's encoder (RUN's
  ``init_from``): LD's features without its clusters or the adversarial prior;
- ``prior-random``: the same pseudo-labels, the network randomly initialised: no LD at all;
- ``aligned``: ``vote`` with the prior's frequency moved onto each image first: the scale (each
  axis, 0.8-1.25) and shift (up to 1/8 of the side) that best match it to LD's map (A and B
  averaged; soft Dice, a grid search at 64 px). Atlas registration, with LD's map as the image;
  ``single`` adds the intensity vote (``em`` in RESULTS before it became ``base``);
- ``spread``: ``vote`` with the prior's frequency spread over the test images' poses (the mean
  of the frequency moved by each image's ``aligned`` pose): the same map for every image, drawn
  over where the data set's organs sit rather than where the simulator puts them;
- ``truth``: the test images' own masks, weight 1: what this network and schedule reach with
  perfect pseudo-labels. A ceiling for the others, not a result: it uses the labels;

and prints paper Dice (whole image at 512) over the test images for each; for an organ prior
also with the refined masks held to the topology (as the benchmark's "refined + topology" row).
Used in benchmarks/RESULTS.md ("Refinement on other pseudo-labels", "The prior's topology",
"Pseudo-labels from output A alone", "Three seeds as one ensemble", "The prior's pixel
frequency as a vote in the pseudo-labels", "The prior moved onto each image", "A harder
generated radiograph set", "Atlases that match each image"; ``base`` before the vote's section
is today's ``ab``, from it until the harder set's today's ``vote``, the harder set's ``em`` and
``base`` are today's ``single`` (``em``'s grid of scales then lacked 1)):

    python benchmarks/refine_pseudo_labels.py RUN --data jsrt_scr:../shared/data --target lung \
        [--variants base,topology]

``--pose-jitter SEED`` moves each test image and its masks by a random pose first (each axis
scaled by 1 + N(0, 0.07), shifted by N(0, 0.03) of the side): a pose the simulator does not
produce, for generated radiographs. ``--bend SEED`` bends each test image and its masks by a
smooth random displacement (a 4 x 4 grid of N(0, 0.04 of the side) shifts, cubic in between):
organs of shapes the simulator does not draw, so that the prior's own masks cannot match them
exactly, as on real images. ``--poses`` prints the spread of the ``aligned`` variant's
poses, which needs no label: how far a data set's organs sit from where the prior puts them.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np
from scipy import ndimage

from localdisc.data.datasets import Sample, load_data_spec
from localdisc.data.preprocess import resize_image
from localdisc.models.ld import LDModel
from localdisc.models.segmenter import Segmenter
from localdisc.priors.atlas import Pose, align_frequency, intensity_posterior, move_frequency
from localdisc.priors.topology import enforce_topology
from localdisc.tasks.shape_guided import (
    RefineConfig,
    ShapeGuidedMaps,
    atlas_votes,
    refine,
    refined_probability,
    run_prior_masks,
    run_size,
    run_topology,
    segment,
)
from localdisc.tasks.transfer import image_metrics

VARIANTS = ("base", "single", "ab", "vote", "self", "more", "more+self", "topology", "a", "mean")
VARIANTS += ("seeds", "prior", "prior+a", "prior-stage1", "prior-random", "aligned", "spread")
VARIANTS += ("truth",)


def move(array: np.ndarray, pose: Pose, order: int) -> np.ndarray:
    """``array`` (H x W (x C)) scaled about its centre and shifted by ``pose``."""
    sx, sy, dx, dy = pose
    h, w = array.shape[:2]
    cy, cx = (h - 1) / 2, (w - 1) / 2
    matrix = [1 / sy, 1 / sx] + [1] * (array.ndim - 2)
    offset = [cy - (cy + dy * h) / sy, cx - (cx + dx * w) / sx] + [0] * (array.ndim - 2)
    return ndimage.affine_transform(
        array.astype(np.float32), matrix, offset=offset, order=order, mode="nearest"
    )


def jitter(samples: Sequence[Sample], seed: int) -> list[Sample]:
    """Each sample's image and masks moved by a random pose (see the module docstring)."""
    rng = np.random.default_rng(seed)
    moved = []
    for s in samples:
        pose = tuple(rng.normal([1, 1, 0, 0], [0.07, 0.07, 0.03, 0.03]))
        image = np.clip(move(s.image, pose, order=1), 0, 1)
        masks = {k: move(m, pose, order=0) > 0.5 for k, m in s.masks.items()}
        moved.append(replace(s, image=image, masks=masks))
    return moved


def warp(array: np.ndarray, at: np.ndarray, order: int) -> np.ndarray:
    """``array`` (H x W) sampled at the points ``at`` (2 x H x W)."""
    return ndimage.map_coordinates(array.astype(np.float32), at, order=order, mode="nearest")


def bend(samples: Sequence[Sample], seed: int) -> list[Sample]:
    """Each sample's image and masks bent by a smooth random displacement (see the module
    docstring)."""
    rng = np.random.default_rng(seed)
    bent = []
    for s in samples:
        h, w = s.image.shape[:2]
        coarse = rng.normal(0, 0.04, (2, 4, 4)) * np.array([h, w])[:, None, None]
        field = np.stack([ndimage.zoom(c, (h / 4, w / 4), order=3) for c in coarse])
        at = np.mgrid[:h, :w].astype(np.float32) + field
        image = np.stack([warp(c, at, 1) for c in np.moveaxis(s.image, -1, 0)], -1)
        masks = {k: warp(m, at, 0) > 0.5 for k, m in s.masks.items()}
        bent.append(replace(s, image=np.clip(image, 0, 1), masks=masks))
    return bent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a shape-guided training run")
    parser.add_argument("--data", required=True, help="NAME:ROOT with train and test splits")
    parser.add_argument("--target", required=True)
    parser.add_argument("--steps", type=int, default=200, help="refinement steps per network")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--pose-jitter", type=int, default=None, metavar="SEED")
    parser.add_argument("--bend", type=int, default=None, metavar="SEED")
    parser.add_argument("--poses", action="store_true", help="print the aligned poses' spread")
    parser.add_argument("--with", dest="others", nargs="*", default=[],
                        help="other runs of the same recipe (other seeds), for 'mean'")  # fmt: skip
    args = parser.parse_args()
    variants = args.variants.split(",")
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variant(s) {', '.join(sorted(unknown))}; known: {VARIANTS}")
    if "mean" in variants and not args.others:
        parser.error("the 'mean' variant needs other runs: --with RUN [RUN ...]")

    test = list(load_data_spec(args.data, "test"))
    if args.pose_jitter is not None:
        test = jitter(test, args.pose_jitter)
    if args.bend is not None:
        test = bend(test, args.bend)
    needs_train = {"more", "more+self"} & set(variants)
    train = list(load_data_spec(args.data, "train")) if needs_train else []
    model = LDModel.from_pretrained(args.run, device="cpu")
    size = run_size(args.run)
    topology = run_topology(args.run)
    atlases = run_prior_masks(args.run)
    frequency = None if atlases is None else atlases.mean(0, dtype=np.float32)
    if frequency is None and (
        args.poses
        or any(
            v.startswith("prior") or v in ("single", "vote", "aligned", "spread") for v in variants
        )
    ):
        parser.error("the prior variants need a run whose prior keeps its pose")
    test_maps = [segment(model, s.image, s.fov, size=size, prior=atlases) for s in test]
    train_maps = [segment(model, s.image, s.fov, size=size, prior=atlases) for s in train]
    config = RefineConfig(steps=args.steps, size=size or 512, device="cpu")

    def fit(
        samples: Sequence, maps: Sequence[ShapeGuidedMaps], seed: int = 0, run: str = args.run
    ) -> Segmenter:
        images = [s.image for s in samples]
        return refine(run, images, maps, replace(config, seed=seed), log=lambda m: None)

    def second_round(network: Segmenter, samples: Sequence, maps: Sequence) -> Segmenter:
        probs = [
            refined_probability(network, s.image, m.fov) for s, m in zip(samples, maps, strict=True)
        ]
        return fit(
            samples, [ShapeGuidedMaps(p, p, m.fov) for p, m in zip(probs, maps, strict=True)]
        )

    def report(name: str, nets: list[Segmenter], start: float) -> None:
        probs = [
            np.mean([refined_probability(n, s.image, m.fov) for n in nets], axis=0)
            for s, m in zip(test, test_maps, strict=True)
        ]
        rows = [image_metrics(p, s, args.target, 512) for p, s in zip(probs, test, strict=True)]
        dice = np.array([r["dice"] for r in rows])
        held = ""
        if topology is not None:
            held_dice = [
                image_metrics(enforce_topology(p, topology), s, args.target, 512)["dice"]
                for p, s in zip(probs, test, strict=True)
            ]
            held = f"; held to the topology {np.mean(held_dice):.4f}"
        print(
            f"{name}: Dice {dice.mean():.4f} (median {np.median(dice):.3f}, min {dice.min():.3f})"
            f", AUC {np.mean([r['auc'] for r in rows]):.3f}, sensitivity "
            f"{np.mean([r['sensitivity'] for r in rows]):.3f}, specificity "
            f"{np.mean([r['specificity'] for r in rows]):.3f}{held}; "
            f"{time.perf_counter() - start:.0f} s",
            flush=True,
        )

    def mean_maps(image: np.ndarray, maps: Sequence[ShapeGuidedMaps]) -> ShapeGuidedMaps:
        mean_a = np.mean([m.prob_a for m in maps], axis=0)
        mean_b = np.mean([m.prob_b for m in maps], axis=0)
        return atlas_votes(image, mean_a, mean_b, maps[0].fov, atlases)

    def plain(m: ShapeGuidedMaps) -> np.ndarray:  # the prior's frequency as it is, in the FOV
        assert frequency is not None
        return np.clip(resize_image(frequency, m.fov.shape), 0, 1) * m.fov

    def prior_maps() -> list[ShapeGuidedMaps]:  # the prior's frequency as A and B
        return [ShapeGuidedMaps(plain(m), plain(m), m.fov) for m in test_maps]

    aligned: list[tuple[np.ndarray, Pose]] = []

    def moved() -> list[tuple[np.ndarray, Pose]]:  # the frequency moved onto each image, once
        if not aligned:
            for m in test_maps:
                found = align_frequency(plain(m), 0.5 * (m.prob_a + m.prob_b))
                aligned.append((found[0] * m.fov, found[1]))
        return aligned

    def poses() -> list[Pose]:
        return [pose for _, pose in moved()]

    def held_maps(maps: Sequence[ShapeGuidedMaps]) -> list[ShapeGuidedMaps]:
        assert topology is not None
        held = [enforce_topology(m.consensus, topology) for m in maps]
        return [ShapeGuidedMaps(p, p, m.fov) for p, m in zip(held, maps, strict=True)]

    print(f"{args.run}, {args.target}: {len(test)} test and {len(train)} training images")
    if "topology" in variants and topology is None:
        print("topology: the run has no organ prior; skipped")
        variants.remove("topology")
    networks: dict[str, Segmenter] = {}

    def network(name: str) -> Segmenter:  # built once, on first use (self needs base)
        if name not in networks:
            if name == "base":
                networks[name] = fit(test, test_maps)
            elif name == "more":
                networks[name] = fit(test + train, test_maps + train_maps)
            elif name == "self":
                networks[name] = second_round(network("base"), test, test_maps)
            elif name == "more+self":
                networks[name] = second_round(network("more"), test + train, test_maps + train_maps)
            elif name == "mean":
                runs = [LDModel.from_pretrained(r, device="cpu") for r in args.others]
                maps = [test_maps] + [
                    [segment(m, s.image, s.fov, size=size) for s in test] for m in runs
                ]
                per_image = zip(test, zip(*maps, strict=True), strict=True)
                networks[name] = fit(test, [mean_maps(s.image, m) for s, m in per_image])
            elif name == "prior":
                networks[name] = fit(test, prior_maps())
            elif name == "vote":
                maps = [ShapeGuidedMaps(m.prob_a, m.prob_b, m.fov, plain(m)) for m in test_maps]
                networks[name] = fit(test, maps)
            elif name == "ab":
                networks[name] = fit(
                    test, [ShapeGuidedMaps(m.prob_a, m.prob_b, m.fov) for m in test_maps]
                )
            elif name == "prior+a":
                mixed = [0.5 * (plain(m) + m.prob_a) for m in test_maps]
                maps = [ShapeGuidedMaps(p, p, m.fov) for p, m in zip(mixed, test_maps, strict=True)]
                networks[name] = fit(test, maps)
            elif name == "prior-stage1":
                config_json = json.loads((Path(args.run) / "config.json").read_text())
                networks[name] = fit(test, prior_maps(), run=config_json["pretrain"]["init_from"])
            elif name == "prior-random":
                build = Segmenter.from_ld_run  # the run's architecture, not its weights
                fresh = classmethod(lambda cls, run, *, size: cls(build(run, size=size).config))
                with mock.patch.object(Segmenter, "from_ld_run", fresh):
                    networks[name] = fit(test, prior_maps())
            elif name == "a":
                networks[name] = fit(
                    test, [ShapeGuidedMaps(m.prob_a, m.prob_a, m.fov) for m in test_maps]
                )
            elif name == "aligned":
                maps = [
                    ShapeGuidedMaps(m.prob_a, m.prob_b, m.fov, prior)
                    for m, (prior, _) in zip(test_maps, moved(), strict=True)
                ]
                networks[name] = fit(test, maps)
            elif name == "single":
                maps = [
                    ShapeGuidedMaps(
                        m.prob_a,
                        m.prob_b,
                        m.fov,
                        prior,
                        intensity_posterior(s.image, prior) * m.fov,
                    )  # fmt: skip
                    for s, m, (prior, _) in zip(test, test_maps, moved(), strict=True)
                ]
                networks[name] = fit(test, maps)
            elif name == "spread":
                spread = np.mean([move_frequency(frequency, pose) for pose in poses()], 0)
                maps = [
                    ShapeGuidedMaps(
                        m.prob_a,
                        m.prob_b,
                        m.fov,
                        np.clip(resize_image(spread, m.fov.shape), 0, 1) * m.fov,
                    )
                    for m in test_maps
                ]
                networks[name] = fit(test, maps)
            elif name == "truth":
                masks = [s.masks[args.target].astype(np.float32) for s in test]
                maps = [ShapeGuidedMaps(t, t, m.fov) for t, m in zip(masks, test_maps, strict=True)]
                networks[name] = fit(test, maps)
            elif name == "topology":
                networks[name] = fit(test, held_maps(test_maps))
        return networks[name]

    if args.poses:
        found = np.array(poses())
        print(
            "aligned poses (scale x, scale y, shift x, shift y): mean "
            f"{np.round(found.mean(0), 3).tolist()}, std {np.round(found.std(0), 3).tolist()}"
        )
    for name in variants:
        start = time.perf_counter()
        if name == "seeds":
            nets = [network("base")] + [fit(test, test_maps, seed) for seed in (1, 2)]
        else:
            nets = [network(name)]
        report(name, nets, start)


if __name__ == "__main__":
    main()
