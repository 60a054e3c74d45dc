"""The ROI box that ``shape-guided segment`` and the pre-training pool see of each fundus image
(:func:`localdisc.tasks.shape_guided.seen_box`), against its frame: how far the whole frame
squashed to a square (before commit de2f536) was from what pre-training saw.

    python benchmarks/fundus_roi_boxes.py --data-root ../shared/data
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from localdisc.data.io import read_image
from localdisc.tasks.shape_guided import seen_box

SETS = {  # name: (images, how many)
    "DRIVE": ("DRIVE/test/images/*.tif", 20),
    "STARE": ("STARE/stare-images/*.ppm.gz", 20),
    "HRF": ("HRF/images/*.jpg", 8),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, required=True)
    args = parser.parse_args()
    for name, (pattern, count) in SETS.items():
        sizes: Counter[tuple[int, int, int, int]] = Counter()
        for path in sorted(args.data_root.glob(pattern))[:count]:
            image = read_image(path)[0]
            y0, y1, x0, x1 = seen_box(image, "fundus")
            sizes[(y1 - y0, x1 - x0, *image.shape[:2])] += 1
        shown = ", ".join(
            f"{h} x {w} of {fh} x {fw}: {n}" for (h, w, fh, fw), n in sorted(sizes.items())
        )
        print(f"{name} ({sum(sizes.values())} images): {shown}")


if __name__ == "__main__":
    main()
