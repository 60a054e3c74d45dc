"""Do the data sets' mask files read as their plain reading says? ``read_mask`` against the raw
pixels above 127 (the brightest channel, as Pillow converts the file to RGB), per group of files.

The readers' rules for label maps, MINISWHITE TIFFs and alpha masks (commit c877cfa) matter for
files that use them; this says whether the data sets here do (a file that differs is listed),
and how many of their masks ``mask_labels`` takes for a label map (its labels joined or read as
background, which ``finetune`` and ``datasets inspect`` say in a note): none of them is one, so
any is a false note (listed with what it names); nor is any of them once anti-aliased, halved by
box averaging (Pillow's ``reduce(2)``, 1024 -> 512 px), or saved as a JPEG of quality 75:

    python benchmarks/mask_encodings.py --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import gzip
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from localdisc.data.io import mask_labels, read_mask

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
    labelled = dict.fromkeys(VARIANTS, 0)
    scratch = Path(tempfile.mkdtemp())
    for name, pattern in GROUPS.items():
        files = sorted(p for p in args.data_root.glob(pattern) if p.is_file())
        modes, bad, maps = set(), [], {variant: [] for variant in VARIANTS}
        for path in files:
            with Image.open(gzip.open(path) if path.suffix == ".gz" else path) as im:
                modes.add(im.mode)
                plain = np.asarray(im.convert("RGB")).max(axis=2) > 127
                grey = im.convert("L")
            if not np.array_equal(read_mask(path), plain):
                bad.append(path.name)
            for variant, save in VARIANTS.items():
                copy = path if save is None else save(grey, scratch)
                joined, background = mask_labels(copy)
                if joined or background:
                    maps[variant].append(f"{path.name} {joined} {background}")
        total, differ = total + len(files), differ + len(bad)
        print(f"{name}: {len(files)} files, modes {sorted(modes)}, {len(bad)} differ {bad[:5]}")
        for variant, found in maps.items():
            labelled[variant] += len(found)
            print(f"  {variant}: {len(found)} with labels (mask_labels) {found[:3]}")
    print(f"all: {differ} of {total} files differ")
    for variant, count in labelled.items():
        print(f"all {variant}: {count} of {total} with labels")


def _box_halved(grey: Image.Image, scratch: Path) -> Path:
    grey.reduce(2).save(scratch / "box.png")
    return scratch / "box.png"


def _jpeg(grey: Image.Image, scratch: Path) -> Path:
    grey.save(scratch / "q75.jpg", quality=75)
    return scratch / "q75.jpg"


#: The files as they are, and copies of them (as grey) anti-aliased or compressed.
VARIANTS = {"as stored": None, "box-halved": _box_halved, "JPEG q75": _jpeg}


if __name__ == "__main__":
    main()
