"""The demo's vessels without labels, run again on a finished demo with other settings.

Copies the demo's run directory (``localdisc demo --out RUN``) and repeats its last part,
``localdisc.demo.demo_vessels``: stage 2 with the simulated vessel prior on cluster 0, then
outputs A and B and the Sato filter on the photograph and two generated eyes (Dice printed).
Used for the table in benchmarks/RESULTS.md ("Demo on CPU"):

    localdisc demo --out /tmp/demo
    python benchmarks/demo_shape_variants.py /tmp/demo --out /tmp/sg-final --start final --steps 150
    python benchmarks/demo_shape_variants.py /tmp/demo --out /tmp/sg-stage1 --steps 500
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from localdisc.demo import demo_vessels
from localdisc.engine.pretrain import PretrainConfig

STARTS = {"stage1": "stage1.safetensors", "final": "model.safetensors"}


def _discriminator_without_batch_norm() -> None:
    """Patch the engine's discriminator: the same layers without their batch norms (real and
    generated maps come in separate small batches, whose statistics batch norm takes away)."""
    from torch import nn

    from localdisc.engine import shape_prior

    class NoBatchNorm(shape_prior.MaskDiscriminator):
        def __init__(self, *args: Any, **kwargs: Any) -> None:  # coords=: the engine's pose
            super().__init__(*args, **kwargs)
            kept = [m for m in self.features if not isinstance(m, nn.BatchNorm2d)]
            self.features = nn.Sequential(*kept)

    shape_prior.MaskDiscriminator = NoBatchNorm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished `localdisc demo --out RUN`")
    parser.add_argument("--out", type=Path, required=True, help="where the copy goes")
    parser.add_argument("--steps", type=int, default=500, help="stage-2 steps with the prior")
    parser.add_argument("--start", choices=sorted(STARTS), default="stage1")
    parser.add_argument("--disc-lr", type=float, default=5e-5, help="the discriminator's Adam lr")
    parser.add_argument("--batch", type=int, help="items per step (default: the run's, 1)")
    parser.add_argument("--prior-weight", type=float, default=1.0, help="weight of L_G")
    parser.add_argument(
        "--disc-norm", choices=["batch", "none"], default="batch",
        help="the discriminator's normalisation after its first layer",
    )  # fmt: skip
    parser.add_argument("--eyes", type=int, default=2, help="generated eyes scored")
    args = parser.parse_args()
    if args.disc_norm == "none":
        _discriminator_without_batch_norm()

    if args.out.exists():
        shutil.rmtree(args.out)
    skip = shutil.ignore_patterns("shape-guided", "checkpoints")
    shutil.copytree(args.run, args.out, ignore=skip)
    settings = json.loads((args.out / "config.json").read_text())["pretrain"]
    settings["crop_scale"] = tuple(settings["crop_scale"])
    settings.setdefault("sampler", "replacement")  # a run saved before the setting drew so
    config = replace(
        PretrainConfig(**settings), disc_lr=args.disc_lr, prior_weight=args.prior_weight,
        progress=False,
    )  # fmt: skip
    if args.batch is not None:
        config = replace(config, batch=args.batch)
    start = time.perf_counter()
    demo_vessels(args.out, config, args.steps, print, start=STARTS[args.start], eyes=args.eyes)
    print(f"{time.perf_counter() - start:.0f} s; figure in {args.out / 'figures'}")


if __name__ == "__main__":
    main()
