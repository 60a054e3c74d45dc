"""Two runs of `vessels_command.py` on the same images, compared image by image.

    python benchmarks/compare_vessel_runs.py /tmp/vessels_drive /tmp/vessels_drive_t10

Reads each run's ``scores.json`` (the masks' scores per image) and prints, for the images the
second run was taught on and for the others, the mean paper Dice of both runs and the change of
each image: e.g. a run taught on all 20 DRIVE test images against one taught on 10 of them
(``--train-images 10``) tells how the network does on photographs it has not seen. Beside each
image, from the second run's ``vessels.csv`` (or ``--shares``, e.g. that of `localdisc predict`
with its network on the same images), the ratio of its mask's share of the FOV to the median
share marked on the images taught on, ``!`` where the command, as it now judges
(:func:`~localdisc.tasks.vessels.is_unusual`), names it as unusual: does the flag name the
images that fail? The first run may have segmented more images than the second (e.g. DRIVE's 40
as one cohort against its test split alone): the second's are compared.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from localdisc.tasks.vessels import is_unusual, share_yardstick


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("first", type=Path, help="a vessels_command.py --out folder")
    p.add_argument("second", type=Path, help="another, on the same images")
    p.add_argument("--shares", type=Path, help="a vessels.csv (default: the second run's)")
    a = p.parse_args()
    table = a.shares or a.second / "vessels.csv"
    flags = {}
    if table.is_file():
        with table.open(newline="") as file:
            rows = {r["image"]: r for r in csv.DictReader(file)}
        shares = {n: float(r["vessel_share"]) for n, r in rows.items()}
        taught = [shares[n] for n, r in rows.items() if r["taught"] == "true"]
        yardstick = share_yardstick(taught) if taught else (0.0, 0.0, 0.0)
        for n, x in shares.items():
            odd = rows[n]["taught"] != "true" and is_unusual(x, yardstick)
            ratio = f"{x / yardstick[0]:.2f}x" if yardstick[0] > 0 else ""
            flags[n] = ratio + (" !" if odd else "")
    first, second = (json.loads((d / "scores.json").read_text())["masks_per_image"]
                     for d in (a.first, a.second))  # fmt: skip
    if not set(second) <= set(first):  # the first may hold more (e.g. a larger cohort)
        raise SystemExit("the second run segmented images the first did not")
    for taught in (True, False):
        names = sorted(n for n in second if second[n]["taught_on"] == taught)
        if not names:
            continue
        one, two = (np.array([run[n]["dice"] for n in names]) for run in (first, second))
        print(f"{'taught on' if taught else 'not taught on'} by the second run ({len(names)}): "
              f"Dice {one.mean():.3f} -> {two.mean():.3f} (change {np.mean(two - one):+.3f}, "
              f"median {np.median(two - one):+.3f})")  # fmt: skip
        for n, x, y in zip(names, one, two, strict=True):
            print(f"  {n:24s} {x:.3f} -> {y:.3f} ({y - x:+.3f})  {flags.get(n, '')}")


if __name__ == "__main__":
    main()
