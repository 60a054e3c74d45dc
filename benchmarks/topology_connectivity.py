"""Organ masks held to their prior's topology with pieces 8-connected (now) or 4-connected
(before): Dice each way, on the maps a shape-guided benchmark wrote (the labels only score).

``benchmark shape-guided`` writes each run's outputs A and refined as probability maps
(``runs/TASK/ld-PRIOR/seed-N/eval/NAME_{A,refined}_prob.png``). Each is held to the run's prior
topology (:func:`localdisc.priors.topology.enforce_topology`) with pieces 8-connected (pixels that
touch at a corner are one piece, as holes are 4-connected) and with scipy's default cross (a lobe
joined at a corner was a piece of its own, and removed where one too many), then scored at 512 as
the benchmark scores it. Printed per run and output: mean Dice each way, the images whose masks
differ, and the largest change.

    python benchmarks/topology_connectivity.py OUT/runs/scr_lung/ld-simulated/seed-0 \\
        --data jsrt_scr:../shared/data --split test --target lung
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import localdisc.priors.topology as topology_module
from localdisc.data.datasets import load_data_spec
from localdisc.priors.topology import enforce_topology
from localdisc.tasks.shape_guided import mean_probability, run_topology
from localdisc.tasks.transfer import image_metrics

CONNECTIVITY = {"8-connected": np.ones((3, 3), bool), "4-connected": None}


def held(prob: np.ndarray, topology: topology_module.PriorTopology, pieces: str) -> np.ndarray:
    """``prob`` held to ``topology`` with pieces counted as ``pieces`` says."""
    kept = topology_module._PIECES
    topology_module._PIECES = CONNECTIVITY[pieces]
    try:
        return enforce_topology(prob, topology)
    finally:
        topology_module._PIECES = kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="seed folders of the benchmark")
    parser.add_argument("--data", required=True, help="data spec, e.g. jsrt_scr:../shared/data")
    parser.add_argument("--split", help="e.g. test (default: the data set's whole list)")
    parser.add_argument("--target", required=True, help="reference mask name, e.g. lung")
    parser.add_argument("--size", type=int, default=512, help="paper Dice at SIZE (512)")
    args = parser.parse_args()

    data = load_data_spec(args.data, args.split)
    samples = [data[i] for i in range(len(data))]
    for run in args.runs:
        topology = run_topology(run, log=lambda m: None)
        if topology is None:
            raise SystemExit(f"{run}: not a run of an organ prior")
        for output in ("A", "refined"):
            files = [run / "eval" / f"{s.name}_{output}_prob.png" for s in samples]
            if not all(f.is_file() for f in files):
                print(f"{run} {output}: maps missing, skipped")
                continue
            dice: dict[str, list[float]] = {k: [] for k in CONNECTIVITY}
            differ = 0
            for s, f in zip(samples, files, strict=True):
                prob = mean_probability([f])
                maps = {k: held(prob, topology, k) for k in CONNECTIVITY}
                differ += not np.array_equal(*maps.values())
                for k, m in maps.items():
                    dice[k].append(image_metrics(m, s, args.target, args.size)["dice"])
            change = np.subtract(dice["8-connected"], dice["4-connected"])
            print(
                f"{run} {output} + topology ({topology}), {len(samples)} images: "
                + ", ".join(f"{k} {np.mean(v):.4f}" for k, v in dice.items())
                + f"; masks differ on {differ} images, Dice change from {change.min():+.4f} "
                f"to {change.max():+.4f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
