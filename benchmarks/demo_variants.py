"""Pre-train on the demo's data (24 synthetic fundus images + the scikit-image retina photograph)
with a chosen variant of the configuration, and draw the demo's figures at the pool's scale.

Used to judge, by eye, what the CPU demo can learn in its budget (benchmarks/RESULTS.md):

    python benchmarks/demo_variants.py --out /tmp/demo-default
    python benchmarks/demo_variants.py --out /tmp/demo-long --stage1-steps 600 --stage2-steps 600
    python benchmarks/demo_variants.py --out /tmp/demo-circular --padding circular
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from localdisc.data.pool import prepare_pool_image, synthetic_pool
from localdisc.data.synthetic import synthetic_fundus
from localdisc.demo import RETINA_COPIES, demo_queries, retina_photograph
from localdisc.engine.pretrain import PretrainConfig, pretrain
from localdisc.eval.figures import cluster_figure, similarity_figure
from localdisc.models.ld import LDModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stage1-steps", type=int, default=150)
    parser.add_argument("--stage2-steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--pool-size", type=int, default=None)
    parser.add_argument("--crop-scale", type=float, nargs=2, default=(0.9, 1.0))
    parser.add_argument("--padding", default="zeros")
    parser.add_argument("--clusters", type=int, default=16)
    parser.add_argument("--synthetic", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    config = PretrainConfig(
        data=["demo"],
        stage1_steps=args.stage1_steps,
        stage2_steps=args.stage2_steps,
        batch=args.batch,
        size=args.size,
        pool_size=args.pool_size,
        crop_scale=tuple(args.crop_scale),
        padding=args.padding,
        clusters=args.clusters,
        seed=args.seed,
        val_images=0,
        val_every=10**9,
        figure_every=10**9,
        checkpoint_every=10**9,
        device="cpu",
        progress=False,
    )
    size = config.resolved_pool_size
    retina = retina_photograph(size)
    copies = np.stack([prepare_pool_image(retina, "fundus", size)] * RETINA_COPIES)
    pool = torch.cat(
        [synthetic_pool(args.synthetic, "fundus", size, args.seed), torch.from_numpy(copies)]
    )
    start = time.perf_counter()
    result = pretrain(config, args.out, pool=pool, log=lambda message: None)
    elapsed = time.perf_counter() - start

    model = LDModel.from_pretrained(args.out)
    images = [retina] + [synthetic_fundus(size, 100 + i).image for i in range(2)]
    cluster_figure(model, images, args.out / "variant_clusters.png")
    similarity_figure(model, images, args.out / "variant_similarity.png", demo_queries(retina))
    print(
        f"{result.steps} steps in {elapsed:.0f} s ({result.images_per_s:.1f} images/s), "
        f"final loss {result.final_loss:.3f}; figures in {args.out}"
    )


if __name__ == "__main__":
    main()
