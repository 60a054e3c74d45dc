"""How many of PixPro's positive pairs lie in the views' padding, at the recorded settings.

The peers' views share LD's geometry (rotations up to 180 degrees, crops that may reach past
the image), so a cell of a view can lie outside the pool image, in the zero padding; two such
cells of the two views pair as positives by distance alone, though neither shows the image.
PixPro's own crops (the paper's) stay inside the image. For the ``--cpu-scale`` X-ray setting
(views of 128 px from pool images of 144, an 8 x 8 feature grid, PixPro's crop scale 0.2-1,
4 instances a step), the script draws the views of many steps and counts the positive pairs
(PixPro Eq. 1, ``T = 0.7``) with a cell centre outside the image, and the cells outside. No
network is trained; the views depend on the geometry alone.

    python benchmarks/pixpro_padding_positives.py
"""

from __future__ import annotations

import argparse

import torch

from localdisc.losses.pixpro import THRESHOLD, feature_cell_geometry, pixpro_positive_mask
from localdisc.methods.base import PeerViews


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--size", type=int, default=128, help="view side")
    parser.add_argument("--pool-size", type=int, default=144, help="pool image side")
    parser.add_argument("--instances", type=int, default=4, help="instances a step (2 x batch)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    views = PeerViews(args.size, "xray", crop_scale=(0.2, 1.0), jitter=False)
    grid = (args.size // 16, args.size // 16)
    hw = (args.pool_size, args.pool_size)
    gen = torch.Generator().manual_seed(args.seed)
    images = torch.zeros(args.instances, 1, *hw, dtype=torch.uint8)
    pairs = padded_pairs = kept = cells = outside_cells = 0
    for _ in range(args.steps):
        batch = views(images, 2, gen)
        n = args.instances
        theta1, theta2 = batch.theta[:n], batch.theta[n:]
        (c1, d1), (c2, d2) = (feature_cell_geometry(t, grid, hw) for t in (theta1, theta2))
        near = torch.cdist(c1, c2) < THRESHOLD * torch.maximum(d1, d2)[:, None, None]  # Eq. 1
        inside = [
            (c[..., 0] >= 0) & (c[..., 0] <= hw[1]) & (c[..., 1] >= 0) & (c[..., 1] <= hw[0])
            for c in (c1, c2)
        ]
        both = inside[0][:, :, None] & inside[1][:, None, :]
        pairs += int(near.sum())
        padded_pairs += int((near & ~both).sum())
        kept += int(pixpro_positive_mask(theta1, theta2, grid, hw, THRESHOLD).sum())
        cells += inside[0].numel() + inside[1].numel()
        outside_cells += int((~inside[0]).sum() + (~inside[1]).sum())
    print(f"{args.steps} steps of {args.instances} instances, views {args.size} px of "
          f"{args.pool_size}-px images, grid {grid[0]} x {grid[1]}")  # fmt: skip
    print(f"cells outside the image: {outside_cells} of {cells} "
          f"({100 * outside_cells / cells:.1f} %)")  # fmt: skip
    print(f"positive pairs by distance alone (Eq. 1): {pairs}; with a cell outside: "
          f"{padded_pairs} ({100 * padded_pairs / max(pairs, 1):.1f} %)")  # fmt: skip
    print(f"pairs pixpro_positive_mask keeps: {kept}")


if __name__ == "__main__":
    main()
