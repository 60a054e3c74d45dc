"""Gallery of synthetic fundus photographs and chest radiographs next to real ones.

    python benchmarks/synthetic_gallery.py --out /tmp/gallery [--size 512] [--seeds 0 1 2 3]

Writes ``synthetic_gallery.png``: synthetic fundus images and their vessel masks beside a DRIVE
image and its manual annotation, and synthetic X-rays with lung and heart contours beside a JSRT
radiograph with its SCR masks, and (DRIVE present) the DRIVE image with a simulated tree painted
on per seed (:func:`~localdisc.data.synthetic.paint_vessels`, what the filter-taught network also
learns from), the last painted tree's mask beside them. The real images are read from
``<repo>/../shared/data`` (or ``--data``) when present and left out otherwise. Also prints
generation times.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the gallery is a file, never a window
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from localdisc.data.synthetic import paint_vessels, synthetic_fundus, synthetic_xray

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"

# Contour colours: patient's right lung, left lung, heart.
COLOURS = ("tab:blue", "tab:green", "tab:red")


def _real_fundus(data: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """DRIVE training image 21, its first manual vessel mask and its FOV, or None when absent."""
    image = data / "DRIVE" / "training" / "images" / "21_training.tif"
    manual = data / "DRIVE" / "training" / "1st_manual" / "21_manual1.gif"
    fov = data / "DRIVE" / "training" / "mask" / "21_training_mask.gif"
    if not (image.exists() and manual.exists() and fov.exists()):
        return None
    # PIL rather than tifffile: the DRIVE TIFFs are LZW-compressed.
    rgb = np.asarray(Image.open(image).convert("RGB"))
    return rgb, np.asarray(Image.open(manual)) > 0, np.asarray(Image.open(fov)) > 0


def _real_xray(data: Path, name: str = "JPCLN001") -> tuple[np.ndarray, list[np.ndarray]] | None:
    """A JSRT radiograph and its SCR masks (right lung, left lung, heart) at the image size."""
    image = data / "JSRT" / "images" / f"{name}.png"
    folders = ("right lung", "left lung", "heart")
    paths = [data / "SCR" / "masks" / f / f"{name}.gif" for f in folders]
    if not image.exists() or not all(p.exists() for p in paths):
        return None
    grey = np.asarray(Image.open(image).convert("L"))
    # SCR masks are 1024 x 1024, the JSRT copies here 512 x 512.
    masks = [
        np.asarray(Image.open(p).convert("L").resize(grey.shape[::-1], Image.NEAREST)) > 0
        for p in paths
    ]
    return grey, masks


def _contours(ax: plt.Axes, masks: list[np.ndarray]) -> None:
    for mask, colour in zip(masks, COLOURS, strict=True):
        ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=1.0)


def make_gallery(out: Path, size: int, seeds: list[int], data: Path) -> Path:
    """Render the gallery figure into ``out`` and return the PNG path."""
    drive = _real_fundus(data)
    jsrt = _real_xray(data)
    cols, rows = len(seeds) + 1, 3 if drive is None else 4
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.3 * rows))
    for ax in axes.ravel():
        ax.set_axis_off()

    for i, seed in enumerate(seeds):
        start = time.perf_counter()
        fundus = synthetic_fundus(size, seed)
        took = time.perf_counter() - start
        fraction = fundus.vessels[fundus.fov].mean()
        print(f"fundus seed {seed}: {took:.3f} s, vessels {100 * fraction:.1f}% of FOV")
        axes[0, i].imshow(fundus.image)
        axes[0, i].plot(*fundus.optic_disc, "c+", ms=6)
        axes[0, i].plot(*fundus.fovea, "wx", ms=5)
        axes[0, i].set_title(f"synthetic fundus {seed}", fontsize=9)
        axes[1, i].imshow(fundus.vessels, cmap="gray")
        axes[1, i].set_title(f"vessels {100 * fraction:.1f}% of FOV", fontsize=9)

        start = time.perf_counter()
        xray = synthetic_xray(size, seed)
        took = time.perf_counter() - start
        print(f"x-ray seed {seed}: {took:.3f} s")
        axes[2, i].imshow(xray.image[..., 0], cmap="gray", vmin=0, vmax=1)
        _contours(axes[2, i], [xray.right_lung, xray.left_lung, xray.heart])
        axes[2, i].plot(*xray.heart_centre, "r+", ms=6)
        axes[2, i].set_title(f"synthetic X-ray {seed}", fontsize=9)

    if drive is not None:
        rgb, manual, fov = drive
        axes[0, -1].imshow(rgb)
        axes[0, -1].set_title("DRIVE 21 (real)", fontsize=9)
        axes[1, -1].imshow(manual, cmap="gray")
        axes[1, -1].set_title("DRIVE 21 manual", fontsize=9)
        for i, seed in enumerate(seeds):
            painted, tree = paint_vessels(rgb / 255.0, fov, seed)
            axes[3, i].imshow(painted)
            axes[3, i].set_title(f"DRIVE 21, tree {seed} painted on", fontsize=9)
        axes[3, -1].imshow(tree, cmap="gray")
        axes[3, -1].set_title(f"painted tree {seeds[-1]}", fontsize=9)
    if jsrt is not None:
        grey, masks = jsrt
        axes[2, -1].imshow(grey, cmap="gray")
        _contours(axes[2, -1], masks)
        axes[2, -1].set_title("JSRT JPCLN001 + SCR (real)", fontsize=9)

    fig.suptitle("localdisc synthetic data (contours: right lung blue, left lung green, heart red)")
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "synthetic_gallery.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNG")
    parser.add_argument("--size", type=int, default=512, help="synthetic image size in pixels")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="public data folder")
    args = parser.parse_args()
    path = make_gallery(args.out, args.size, args.seeds, args.data)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
