"""What fine-tuning's checkpoints cost: the same fine-tuning without a checkpoint folder, with
checkpoints every epoch (``checkpoint_seconds=0``, the most they are ever written) and at the
default (``checkpoint_seconds=60``: at most one a minute, and one after the last epoch).

Random images and masks (the timing does not depend on their content) at ``--size``; prints the
wall time of each and the size of a checkpoint:

    python benchmarks/finetune_checkpoint.py [--size 256] [--images 4] [--epochs 10] [--repeats 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from localdisc.engine.finetune import FinetuneConfig, finetune
from localdisc.models.segmenter import Segmenter


def timed(
    size: int, data: tuple[torch.Tensor, torch.Tensor], config: FinetuneConfig, folder: Path | None
) -> float:
    """Seconds of one fine-tuning (a fresh model, the same seed each time)."""
    torch.manual_seed(0)
    model = Segmenter(size=size)
    start = time.perf_counter()
    finetune(model, data, data, config, pretrained=True, log=lambda m: None, checkpoint_dir=folder)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=10, help="per phase (frozen, then whole)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(args.images, 3, args.size, args.size, generator=generator)
    masks = (torch.rand(args.images, 1, args.size, args.size, generator=generator) > 0.8).float()
    base = dict(frozen_epochs=args.epochs, epochs=args.epochs, device=args.device, progress=False)
    print(f"{args.images} images of {args.size} px, {args.epochs} + {args.epochs} epochs")
    rows = {"no checkpoint folder": None, "every epoch (checkpoint_seconds 0)": 0.0,
            "default (checkpoint_seconds 60)": 60.0}  # fmt: skip
    warm_up = FinetuneConfig(**{**base, "frozen_epochs": 1, "epochs": 1})
    timed(args.size, (images, masks), warm_up, None)  # oneDNN's first calls are slower
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):  # in turn, the best of each: less of the noise
            for k, (label, every) in enumerate(rows.items()):
                config = FinetuneConfig(**base, checkpoint_seconds=every or 0.0)
                folder = None if every is None else Path(tmp) / f"{k}-{repeat}"
                took = timed(args.size, (images, masks), config, folder)
                seconds[label] = min(seconds.get(label, took), took)
                line = f"{label}: {took:.1f} s"
                if folder is not None:  # the newest checkpoint only is kept
                    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
                    line += f", a checkpoint {size / 2**20:.1f} MiB"
                print(line)
    plain = seconds["no checkpoint folder"]
    print("| checkpoints | seconds (best of repeats) | against none |")
    for label, value in seconds.items():
        print(f"| {label} | {value:.1f} | {value / plain:.3f} |")


if __name__ == "__main__":
    main()
