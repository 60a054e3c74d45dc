"""Gallery of simulated shape priors next to real reference masks.

    python benchmarks/prior_gallery.py [--out docs/priors_gallery.png] [--size 256] [--data DIR]

Writes one PNG: a row of masks per simulator (``localdisc.priors.SIMULATORS``, white) and, when
the public data are present (``<repo>/../shared/data`` or ``--data``), rows of real masks
(amber): DRIVE vessels, the OCTA and DSA vessel priors, SCR lungs and heart (training splits
only: the simulators are judged by eye against them). Prints how much of the field of view is
vessel in DRIVE and in the simulated trees at the same size, and where the simulated lungs and
hearts lie in the frame (their bounding box and area, mean +- sd over 200 masks) beside SCR's
whole training fold, so that the pictures come with numbers.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from localdisc.data.datasets import load_dataset
from localdisc.data.synthetic import _circle
from localdisc.priors import SIMULATORS, load_prior, prior_gallery, simulate_masks
from localdisc.priors.simulate import _eye
from localdisc.priors.sources import _square

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"


def _drive(data: Path, size: int) -> tuple[np.ndarray, dict[str, float]] | None:
    """DRIVE's training masks (first observer) at ``size``, as load_prior makes them, and
    vessel fractions."""
    root = data / "DRIVE"
    if not root.is_dir():
        return None
    ds = load_dataset("drive", root, "train")
    native, resized, masks = [], [], []
    for sample in ds:
        vessels, fov = sample.masks["vessels"], sample.fov
        native.append(vessels[fov].mean())
        small, small_fov = _square(vessels, size), _square(fov, size)
        resized.append(small[small_fov].mean())
        masks.append(small)
    stats = {"DRIVE native": float(np.mean(native)), f"DRIVE {size}px": float(np.mean(resized))}
    return np.stack(masks), stats


def _simulated_vessel_fraction(size: int, seeds: range) -> float:
    out = []
    for seed, mask in zip(
        seeds, simulate_masks("vessels", size, len(seeds), seeds[0]), strict=True
    ):
        eye = _eye(size, seed)
        out.append(mask[_circle(size, eye.centre, eye.fov_radius)].mean())
    return float(np.mean(out))


def _scr(data: Path, size: int) -> dict[str, np.ndarray] | None:
    """SCR lung and heart masks of the JSRT training images (root holds JSRT/ and SCR/): the
    simulators are judged against these, so never against test labels."""
    if not ((data / "JSRT").is_dir() and (data / "SCR").is_dir()):
        return None
    ds = load_dataset("jsrt_scr", data, "train")
    return {
        target: np.stack([_square(s.masks[target], size) for s in ds])
        for target in ("lung", "heart")
    }


def _frame(masks: np.ndarray) -> str:
    """Bounding box (top, bottom, left, right, width, height) and area as fractions of the side
    and of the image: mean +- sd over the masks."""
    side = masks.shape[-1]
    rows = []
    for mask in masks:
        ys, xs = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        top, bottom, left, right = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
        rows.append([top, bottom, left, right, right - left, bottom - top, mask.sum() / side])
    rows = np.array(rows) / side
    return " ".join(f"{m:.3f}+-{s:.3f}" for m, s in zip(rows.mean(0), rows.std(0), strict=True))


def make_gallery(out: Path, size: int, columns: int, data: Path, seed: int) -> Path:
    """Simulate, load the real masks that exist, print the numbers and write the gallery."""
    priors = {}
    for name in SIMULATORS:
        start = time.perf_counter()
        priors[name] = simulate_masks(name, size, max(columns, 20), seed)
        took = (time.perf_counter() - start) / len(priors[name])
        print(f"simulated {name:10s}: {took * 1000:6.1f} ms per {size}px mask")

    refs: dict[str, np.ndarray] = {}
    drive = _drive(data, size)
    if drive is not None:
        refs["DRIVE vessels"], stats = drive
        stats[f"simulated {size}px"] = _simulated_vessel_fraction(size, range(seed, seed + 20))
        print("vessel pixels / FOV pixels:")
        for key, value in stats.items():
            print(f"  {key:18s} {100 * value:5.2f}%")
    for name in ("octa_vessels", "dsa_vessels"):
        folder = data / "priors" / name
        if folder.is_dir():
            refs[name.replace("_", " ").upper().replace("VESSELS", "vessels")] = load_prior(
                str(folder), size
            )[:, 0].numpy()
    scr = _scr(data, size)
    if scr is not None:
        refs["SCR lungs"], refs["SCR heart"] = scr["lung"][:20], scr["heart"][:20]
        print("bounding box (top, bottom, left, right, width, height) and area, fractions:")
        for sim, real in (("lungs", "lung"), ("heart", "heart")):
            bank = simulate_masks(sim, size, 200, seed)
            print(f"  {sim:5s} simulated (200): {_frame(bank)}")
            print(f"  {sim:5s} SCR train ({len(scr[real])}): {_frame(scr[real])}")
    if not refs:
        print(f"no real masks under {data}: the gallery shows simulated masks only")
    return prior_gallery(priors, out, references=refs, columns=columns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "priors_gallery.png")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--columns", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    path = make_gallery(args.out, args.size, args.columns, args.data, args.seed)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
