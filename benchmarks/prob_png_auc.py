"""AUC of a probability map scored from the PNG it is written as, against the same map in float:
8 bits (``prob_png`` before commit 4331463) and 16 bits (since), on DRIVE test images.

``shape-guided segment --masks``, ``shape-guided vessels --masks`` and the "seeds together" rows
of ``benchmark shape-guided`` score the written maps; ``finetune`` and the single-run benchmark
rows score the float map. The maps here are the Frangi and Sato filters' (no training):

    python benchmarks/prob_png_auc.py --data-root ../shared/data [--images 3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from localdisc.data.datasets import load_dataset
from localdisc.data.io import read_image, write_png
from localdisc.eval.metrics import auc_roc
from localdisc.tasks.vesselness import vesselness


def written(prob: np.ndarray, bits: int, folder: Path) -> np.ndarray:
    """``prob`` written as a PNG of ``bits`` bits and read back as the commands read it."""
    top = 2**bits - 1
    write_png(folder / "p.png", np.round(np.clip(prob, 0, 1) * top).astype(f"uint{bits}"))
    return read_image(folder / "p.png")[0][..., 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--images", type=int, default=3, help="the first N DRIVE test images")
    args = parser.parse_args()
    test = load_dataset("drive", args.data_root / "DRIVE", "test")
    print("| image | filter | float | 8-bit PNG | 16-bit PNG | FOV at 0: float / 8 / 16 bits |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.images):
            s = test[i]
            truth, fov = s.masks["vessels"], s.fov
            for method in ("frangi", "sato"):
                prob = vesselness(s.image, s.fov, method=method)
                maps = [prob, written(prob, 8, Path(tmp)), written(prob, 16, Path(tmp))]
                aucs = " | ".join(f"{auc_roc(m, truth, fov):.4f}" for m in maps)
                zeros = " / ".join(f"{float((m[fov] == 0).mean()):.0%}" for m in maps)
                print(f"| {s.name} | {method} | {aucs} | {zeros} |")


if __name__ == "__main__":
    main()
