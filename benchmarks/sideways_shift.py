"""Does moving a shape-guided run's maps sideways by the grey-level likelihood help? With and
without it, on any fold that has labels (the labels only score).

For each run of a kept-pose organ prior (``benchmark shape-guided`` writes them under
``runs/TASK/ld-simulated/seed-N``) the images of ``--data`` (``--split``, e.g. SCR's training
fold) are segmented twice by :func:`localdisc.tasks.shape_guided.segment_all`: as the benchmark
does now (the run's maps moved by :func:`localdisc.priors.atlas.sideways_offset`) and with the
shift held at 0, as before. Printed per run: the estimated shift, the shift of output A that the
labels would choose (pixels at 128, sideways; diagnosis only), and Dice at 512 of A and of the
refinement network trained on the pseudo-labels, both held to the prior's topology.

    python benchmarks/sideways_shift.py RUN/runs/scr_lung/ld-simulated/seed-{0,1,2} \\
        --data jsrt_scr:../shared/data --split train --target lung
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import localdisc.tasks.shape_guided as shape_guided
from localdisc.data.datasets import load_data_spec
from localdisc.data.preprocess import resize_mask
from localdisc.models.ld import LDModel
from localdisc.priors.atlas import shift_sideways, sideways_offset
from localdisc.priors.topology import enforce_topology
from localdisc.tasks.transfer import image_metrics

SIDE = 128  # where shifts are counted, as sideways_offset does


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="shape-guided LD run folders")
    parser.add_argument("--data", required=True, help="data spec, e.g. jsrt_scr:../shared/data")
    parser.add_argument("--split", help="e.g. train (default: the data set's whole list)")
    parser.add_argument("--target", required=True, help="reference mask name, e.g. lung")
    parser.add_argument("--refine-steps", type=int, default=200)
    args = parser.parse_args()

    data = load_data_spec(args.data, args.split)
    samples = [data[i] for i in range(len(data))]
    images, fovs = [s.image for s in samples], [s.fov for s in samples]
    refs = [resize_mask(s.masks[args.target], SIDE) for s in samples]
    for run in args.runs:
        topology, prior = shape_guided.run_topology(run), shape_guided.run_prior_masks(run)
        if prior is None or topology is None:
            raise SystemExit(f"{run}: not a run of a kept-pose organ prior")
        model, size = LDModel.from_pretrained(run, device="cpu"), shape_guided.run_size(run)
        plain = shape_guided.segment_all(model, images, fovs, size=size)  # no votes, no shift
        estimate = sideways_offset(images, [m.consensus for m in plain])
        line = [str(run)]
        for moved in (False, True):
            offset = estimate if moved else 0.0
            maps = shape_guided.segment_all(
                model, images, fovs, size=size, prior=prior, offset=offset
            )
            if not moved:  # the sideways shift of A the labels like best
                masks = [resize_mask(m.prob_a > 0.5, SIDE) for m in maps]
                pairs = list(zip(masks, refs, strict=True))
                score = {d: np.mean([dice(shift_sideways(m, d), r) for m, r in pairs])
                         for d in range(-8, 9)}  # fmt: skip
                line.append(f"labels' best {max(score, key=score.get):+d} px")
            config = shape_guided.RefineConfig(steps=args.refine_steps, size=size, device="cpu")
            network = shape_guided.refine(run, images, maps, config, log=lambda m: None)
            a, refined = [], []
            for s, m in zip(samples, maps, strict=True):
                prob = shape_guided.refined_probability(network, s.image, m.fov, stretch=True)
                for out, p in ((a, m.prob_a), (refined, prob)):
                    out.append(image_metrics(enforce_topology(p, topology), s, args.target, 512))
            line.append(
                f"{'moved' if moved else 'held at 0'} ({offset * SIDE:+.0f} px): "
                f"A {np.mean([r['dice'] for r in a]):.4f}, "
                f"refined {np.mean([r['dice'] for r in refined]):.4f}"
            )
        print(" | ".join(line), flush=True)


if __name__ == "__main__":
    main()
