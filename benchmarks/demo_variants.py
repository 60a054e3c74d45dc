"""Pre-train on the demo's data (24 synthetic fundus images + the scikit-image retina photograph)
with a chosen variant of the configuration, and draw the demo's figures at the pool's scale.

Used to judge, by eye, what the CPU demo can learn in its budget (benchmarks/RESULTS.md):

    python benchmarks/demo_variants.py --out /tmp/demo-default
    python benchmarks/demo_variants.py --out /tmp/demo-long --stage1-steps 600 --stage2-steps 600
    python benchmarks/demo_variants.py --out /tmp/demo-circular --padding circular
    python benchmarks/demo_variants.py --out /tmp/demo-now --depth 3 --width 8 --batch 1 \
        --stage1-steps 500 --stage2-steps 500      # the demo's configuration

It prints the Dice of the best single cluster for the vessels, the optic disc and the surround of
the field of view on 4 generated eyes (``localdisc.demo.anatomy_scores``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from localdisc.demo import anatomy_scores, demo_figure_images, demo_pool_specs, demo_queries
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
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--synthetic", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    config = PretrainConfig(
        data=demo_pool_specs("fundus", args.synthetic),
        stage1_steps=args.stage1_steps,
        stage2_steps=args.stage2_steps,
        batch=args.batch,
        size=args.size,
        pool_size=args.pool_size,
        crop_scale=tuple(args.crop_scale),
        padding=args.padding,
        clusters=args.clusters,
        depth=args.depth,
        lr=args.lr,
        width=args.width,
        seed=args.seed,
        val_images=0,
        val_every=10**9,
        figure_every=10**9,
        checkpoint_every=10**9,
        device="cpu",
        progress=False,
    )
    start = time.perf_counter()
    result = pretrain(config, args.out, log=lambda message: None)
    elapsed = time.perf_counter() - start

    model = LDModel.from_pretrained(args.out)
    images = demo_figure_images("fundus", config.resolved_pool_size, args.seed)
    cluster_figure(model, images, args.out / "variant_clusters.png")
    similarity_figure(model, images, args.out / "variant_similarity.png", demo_queries(images[0]))
    scores = anatomy_scores(model, config.resolved_pool_size, args.seed)
    print(
        "best single cluster, Dice on 4 generated eyes:",
        {k: round(v, 3) for k, v in scores.items()},
    )
    print(
        f"{result.steps} steps in {elapsed:.0f} s ({result.images_per_s:.1f} images/s), "
        f"final loss {result.final_loss:.3f}; figures in {args.out}"
    )


if __name__ == "__main__":
    main()
