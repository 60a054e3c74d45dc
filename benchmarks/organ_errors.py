"""Where do shape-guided organ masks go wrong? Precision, recall and extents against the reference.

Reads the probability maps a `localdisc benchmark shape-guided` run wrote for one output
(``RUN/eval/NAME_{OUTPUT}_prob.png``), averages them over the runs given (one run, or a seeds'
ensemble), keeps >= 0.5 (as the benchmark does) and compares with the data set's reference masks
at 512 x 512: mean precision, recall and Dice, and the mean top, bottom, left and right edges of
the masks (fractions of the image side) beside the reference's and the simulated prior's.
``--figure`` draws how often each pixel is a false positive (red) or a false negative (green) over
the test images.

Runs that lack some maps (stopped early, or run with ``--max-test``) are all scored on the test
images every run has a map for, and the output says how many each lacks; a run with no map at all
(a wrong ``--data`` or ``--output``?) stops the script.

    python benchmarks/organ_errors.py /tmp/s9/lung/runs/scr_lung/ld-simulated/seed-{0,1,2} \\
        --data jsrt_scr:../shared/data --target lung --prior lungs --figure /tmp/lung_errors.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from localdisc.data.preprocess import resize_mask
from localdisc.priors import simulate_masks
from localdisc.tasks.benchmark_shape_guided import _test_set
from localdisc.tasks.shape_guided import mean_probability

SIZE = 512


def extents(mask: np.ndarray) -> np.ndarray:
    """Top, bottom, left and right edge of a mask, as fractions of its side."""
    ys, xs = np.nonzero(mask)
    return np.array([ys.min(), ys.max(), xs.min(), xs.max()]) / mask.shape[0]


def prob_path(run: Path, name: str, output: str) -> Path:
    """The probability map a shape-guided benchmark run wrote for one test image and output."""
    return run / "eval" / f"{name}_{output}_prob.png"


def shared_images(runs: list[Path], names: list[str], output: str) -> tuple[list[int], list[str]]:
    """Indices of the test images (``names``) every run has a map for, and a line per run that
    lacks some. Raises ``SystemExit`` when a run has none, or the runs share none."""
    have, notes = set(range(len(names))), []
    for run in runs:
        present = {i for i, name in enumerate(names) if prob_path(run, name, output).is_file()}
        if not present:
            raise SystemExit(
                f"{run}: no {output} map for any of the {len(names)} test images "
                f"({prob_path(run, names[0], output)} ...); a wrong --data or --output?"
            )
        missing = [names[i] for i in range(len(names)) if i not in present]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            notes.append(f"{run}: no {output} map for {len(missing)} of {len(names)} test "
                         f"images ({', '.join(missing[:5])}{more})")  # fmt: skip
        have &= present
    if not have:
        raise SystemExit(f"the runs share no test image with a {output} map: {'; '.join(notes)}")
    return sorted(have), notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="LD run folders with an eval/ folder")
    parser.add_argument("--data", required=True, help="data spec, e.g. jsrt_scr:../shared/data")
    parser.add_argument("--target", required=True, help="reference mask name, e.g. lung")
    parser.add_argument("--output", default="refined", help="A, B or refined")
    parser.add_argument("--prior", help="simulator whose masks' extents to print, e.g. lungs")
    parser.add_argument("--figure", type=Path, help="PNG of false positives and negatives")
    args = parser.parse_args()

    test = _test_set(args.data)
    # The names from the listing: a run's missing maps are found before any image is read.
    indices, notes = shared_images(args.runs, [item.name for item in test.items], args.output)
    for note in notes:
        print(note)
    scored = f"{len(test)} images"
    if notes:  # all runs on the same images: scores of different image sets would mislead
        scored = f"{len(indices)} of {len(test)} test images (those every run has a map for)"
    rows, edges, ref_edges = [], [], []
    fp = np.zeros((SIZE, SIZE))
    fn = np.zeros((SIZE, SIZE))
    for i in indices:
        sample = test[i]
        prob = mean_probability([prob_path(r, sample.name, args.output) for r in args.runs])
        mask = resize_mask(prob >= 0.5, SIZE)  # as the benchmark and `predict` threshold
        ref = resize_mask(sample.masks[args.target], SIZE)
        tp = (mask & ref).sum()
        rows.append((tp / max(mask.sum(), 1), tp / ref.sum(), 2 * tp / (mask.sum() + ref.sum())))
        edges.append(extents(mask) if mask.any() else np.full(4, np.nan))
        ref_edges.append(extents(ref))
        fp += mask & ~ref
        fn += ref & ~mask
    precision, recall, dice = np.mean(rows, axis=0)
    print(f"{scored}, {args.output} of {len(args.runs)} run(s): precision "
          f"{precision:.3f}, recall {recall:.3f}, Dice {dice:.3f}")  # fmt: skip
    table = {"masks": np.nanmean(edges, axis=0), "reference": np.mean(ref_edges, axis=0)}
    if args.prior:
        bank = simulate_masks(args.prior, SIZE, 200, seed=0)
        table[f"prior {args.prior}"] = np.mean([extents(m) for m in bank], axis=0)
    print("edges (fraction of the side): top, bottom, left, right")
    for name, (top, bottom, left, right) in table.items():
        print(f"  {name:>16}: {top:.3f} {bottom:.3f} {left:.3f} {right:.3f}")
    if args.figure:
        scale = max(fp.max(), fn.max(), 1)
        rgb = np.stack([fp / scale, fn / scale, np.zeros_like(fp)], axis=-1)
        Image.fromarray((255 * rgb).astype(np.uint8)).save(args.figure)
        print(f"false positives (red), false negatives (green): {args.figure}")


if __name__ == "__main__":
    main()
