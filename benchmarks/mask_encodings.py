"""Do the data sets' mask files read as their plain reading says? ``read_mask`` against the raw
pixels above 127 (the brightest channel, as Pillow converts the file to RGB), per group of files.

The readers' rules for label maps, MINISWHITE TIFFs and alpha masks (commit c877cfa) matter for
files that use them; this says whether the data sets here do (a file that differs is listed):

    python benchmarks/mask_encodings.py --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
from PIL import Image

from localdisc.data.io import read_mask

GROUPS = {
    "DRIVE 1st observer": "DRIVE/*/1st_manual/*",
    "DRIVE 2nd observer": "DRIVE/*/2nd_manual/*",
    "DRIVE fields of view": "DRIVE/*/mask/*",
    "STARE labels-ah": "STARE/labels-ah/*",
    "SCR masks": "SCR/masks/*/*",
    "priors": "priors/*/*",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, required=True)
    args = parser.parse_args()
    total = differ = 0
    for name, pattern in GROUPS.items():
        files = sorted(p for p in args.data_root.glob(pattern) if p.is_file())
        modes, bad = set(), []
        for path in files:
            with Image.open(gzip.open(path) if path.suffix == ".gz" else path) as im:
                modes.add(im.mode)
                plain = np.asarray(im.convert("RGB")).max(axis=2) > 127
            if not np.array_equal(read_mask(path), plain):
                bad.append(path.name)
        total, differ = total + len(files), differ + len(bad)
        print(f"{name}: {len(files)} files, modes {sorted(modes)}, {len(bad)} differ {bad[:5]}")
    print(f"all: {differ} of {total} files differ")


if __name__ == "__main__":
    main()
