"""How localdisc's stage-2 step grows with image size and batch: a table and a log-log plot.

Each (batch, size) runs ``pretrain_throughput.py --one localdisc`` in its own subprocess (so the
peak memory is its own), smallest first. The step is expected to be linear in the pixels of a step
(every layer is a convolution over the image; the ISL matrix is fixed at 64 patches per view), so
the table gives the measured log-log slope between consecutive rows of each sweep and the plot
draws the slope-1 line through the first point.

    python benchmarks/scaling.py --device cpu --sizes 128,256,512,768,1024 --batches 1,2,4 \
        --steps 1 --warmup 1 --out docs/scaling_cpu
    python benchmarks/scaling.py --device cuda --sizes 256,448,640,1024 --batches 1,2,4,8 \
        --out /tmp/scaling_gpu

Writes OUT.json (every row) and OUT.png (needs matplotlib) and prints the table in Markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def measure(device: str, batch: int, size: int, steps: int, warmup: int) -> dict | None:
    cmd = [
        sys.executable, str(HERE / "pretrain_throughput.py"), "--one", "localdisc",
        f"--device={device}", f"--batch={batch}", f"--size={size}", f"--steps={steps}",
        f"--warmup={warmup}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    if proc.returncode != 0:  # e.g. out of memory: the row says so and the sweep goes on
        print(f"B={batch} S={size} failed:\n{proc.stderr[-1500:]}", file=sys.stderr)
        return None
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.pop("profile", None)
    return {"batch": batch, "size": size, "pixels": 5 * batch * size * size, **result}


def slope(a: dict, b: dict, key: str) -> float:
    return math.log(b[key] / a[key]) / math.log(b["pixels"] / a["pixels"])


def table(rows: list[dict]) -> str:
    """Markdown: one row per measurement; slopes against the previous row of the same sweep."""
    lines = [
        "| sweep | B | S | pixels / step (x 128^2) | step | images/s | peak GiB | "
        "slope of step | slope of memory |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for sweep, group in sweeps(rows).items():
        for prev, row in zip([None, *group], group, strict=False):
            slopes = ["-", "-"]
            if prev is not None:
                slopes = [f"{slope(prev, row, key):.2f}" for key in ("step_s", "peak_gib")]
            lines.append(
                f"| {sweep} | {row['batch']} | {row['size']} | {row['pixels'] / 128**2:g} | "
                f"{row['step_s']:.3g} s | {row['images_per_s']:.1f} | {row['peak_gib']:.2f} | "
                f"{slopes[0]} | {slopes[1]} |"
            )
    return "\n".join(lines)


def batch_sweep_size(sizes: list[int]) -> int:
    """The size the batch sweep runs at: the second smallest."""
    sizes = sorted(set(sizes))
    return sizes[1] if len(sizes) > 1 else sizes[0]


def sweeps(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows grouped as the size sweep (B = 1) and the batch sweep (see batch_sweep_size)."""
    batch_size = batch_sweep_size([r["size"] for r in rows])
    return {
        "size (B = 1)": sorted((r for r in rows if r["batch"] == 1), key=lambda r: r["size"]),
        f"batch (S = {batch_size})": sorted(
            (r for r in rows if r["size"] == batch_size), key=lambda r: r["batch"]
        ),
    }


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in zip(
        axes, ("step_s", "peak_gib"), ("step time (s)", "peak memory (GiB)"), strict=True
    ):
        for (sweep, group), marker in zip(sweeps(rows).items(), "os", strict=True):
            if not group:
                continue
            x = [r["pixels"] / 128**2 for r in group]
            ax.loglog(x, [r[key] for r in group], marker + "-", label=f"measured, {sweep}")
        first = min(rows, key=lambda r: r["pixels"])
        x0, y0 = first["pixels"] / 128**2, first[key]
        x1 = max(r["pixels"] for r in rows) / 128**2
        ax.loglog([x0, x1], [y0, y0 * x1 / x0], "k:", label="linear in pixels (slope 1)")
        ax.set_xlabel("pixels per step (x 128^2; 5 images of B pairs)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="128,256,512,768,1024", help="the size sweep, B = 1")
    parser.add_argument("--batches", default="1,2,4", help="the batch sweep, at the second size")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.png")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    batch_size = batch_sweep_size(sizes)
    plan = [(1, s) for s in sizes] + [
        (b, batch_size) for b in (int(b) for b in args.batches.split(",")) if b != 1
    ]
    rows = []
    for batch, size in plan:
        row = measure(args.device, batch, size, args.steps, args.warmup)
        if row is not None:
            rows.append(row)
            print(f"B={batch} S={size}: {row['step_s']:.3f} s/step, {row['peak_gib']:.2f} GiB")
    if not rows:
        sys.exit("no configuration ran")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(table(rows))
    try:
        plot(rows, args.out.with_suffix(".png"), f"localdisc stage-2 step on {args.device}")
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)


if __name__ == "__main__":
    main()
