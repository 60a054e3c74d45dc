"""Classical vesselness baselines (Sato, Frangi, the line detector) on the DRIVE test images,
label-free.

    python benchmarks/vesselness_drive.py --data-root /work/shared/data/DRIVE --fraction 0.12 \\
        --priors-root /work/shared/data --out /tmp/vesselness_drive.json

For each filter of ``--methods`` (default: every one of
:data:`localdisc.tasks.vesselness.FILTERS`, and ``sato+line``, their mean rank) and each
threshold (the ``--fraction`` most vessel-like pixels of the eroded FOV, for each fraction
given, or Otsu's, but not for a mean rank, which is uniform), prints the mean +- std
(population) over the 20 test images of the paper's Dice (whole image at 512 x 512, per image,
at 0.5) and the mean ROC AUC inside the official FOV. Two resolutions:

* ``native``: filter the 565 x 584 image, resize the binary mask to 512 for Dice
  (:func:`~localdisc.tasks.vesselness.paper_dice`), AUC at 565 x 584 (the documented usage);
* ``512``: resize the image (area) and FOV (nearest) to 512 x 512 first, filter there; AUC at
  512 inside the resized FOV.

``--remove-specks AREA...`` adds rows with the mask's pieces below ``AREA`` of the FOV dropped
(:func:`~localdisc.tasks.vesselness.remove_specks`); ``--dataset stare`` scores STARE's 20
images instead (``--data-root .../STARE``, FOV derived from the image), on which settings may be
chosen for DRIVE.

With ``--priors-root DIR`` it also prints the vessel fraction inside the FOV that each prior
carries (:func:`~localdisc.tasks.vesselness.prior_fraction`): ``DIR/priors/octa_vessels``,
``DIR/priors/dsa_vessels`` (whole image, no FOV), STARE (``DIR/STARE``, FOV derived from the
image) and DRIVE training and test (official FOV masks).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from localdisc.data.datasets import load_dataset
from localdisc.data.io import is_image_file, read_mask
from localdisc.data.preprocess import resize_image, resize_mask
from localdisc.eval.metrics import auc_roc, paper_dice, summarize
from localdisc.tasks.vesselness import (
    FILTERS,
    prior_fraction,
    remove_specks,
    threshold_vessels,
    vesselness,
)

SIZE = 512
RESOLUTIONS = ("native", "512")
SPLITS = {"drive": "test", "stare": "all"}


def evaluate(
    root: Path,
    fractions: list[float],
    resolutions: tuple[str, ...],
    methods: list[str],
    size: int = SIZE,
    speck_areas: tuple[float, ...] = (0.0,),
    dataset_name: str = "drive",
) -> list[dict]:
    """Per-image rows: image, resolution, method, threshold, specks, dice, auc."""
    dataset = load_dataset(dataset_name, root, SPLITS[dataset_name])
    rows = []
    for sample in dataset:
        target = sample.masks["vessels"]
        for resolution in resolutions:
            if resolution == "native":
                image, fov, truth = sample.image, sample.fov, target
            else:
                image = resize_image(sample.image, size)
                fov, truth = resize_mask(sample.fov, size), resize_mask(target, size)
            for method in methods:
                score = vesselness(image, fov, method=method)  # once, for every threshold
                otsu = () if "+" in method else ("otsu",)  # a mean rank is uniform
                auc = auc_roc(score, truth, fov)
                for threshold in (*fractions, *otsu):
                    thresholded = threshold_vessels(score, fov, threshold)  # once per cut
                    for specks in speck_areas:
                        mask = remove_specks(thresholded, fov, specks)
                        rows.append(
                            {
                                "image": sample.name,
                                "resolution": resolution,
                                "method": method,
                                "threshold": "otsu" if threshold == "otsu" else f"{threshold:g}",
                                "specks": f"{specks:g}",
                                "dice": paper_dice(mask, target, size),
                                "auc": auc,
                                "predicted_fraction": float(mask[fov].mean()),
                            }
                        )
    return rows


def table(rows: list[dict]) -> tuple[str, list[dict]]:
    """The summary table as text, and as records."""
    fields = ("resolution", "method", "threshold", "specks")
    keys = list(dict.fromkeys(tuple(r[f] for f in fields) for r in rows))
    records = []
    lines = [
        f"{'resolution':<10} {'method':<9} {'threshold':<9} {'specks':<7} {'n':>3} "
        f"{'Dice@512 (mean+-std)':>21} {'FOV AUC':>8} {'pred. frac':>10}"
    ]
    for key in keys:
        group = [
            {k: r[k] for k in ("dice", "auc", "predicted_fraction")}
            for r in rows
            if tuple(r[f] for f in fields) == key
        ]
        s = summarize(group)
        records.append({**dict(zip(fields, key, strict=True)), **s})
        resolution, method, threshold, specks = key
        lines.append(
            f"{resolution:<10} {method:<9} {threshold:<9} {specks:<7} {s['dice']['n']:>3} "
            f"{s['dice']['mean']:>13.3f} +- {s['dice']['std']:.3f} {s['auc']['mean']:>8.3f} "
            f"{s['predicted_fraction']['mean']:>10.3f}"
        )
    return "\n".join(lines), records


def prior_fractions(root: Path) -> dict[str, dict]:
    """Foreground fraction inside the FOV of each prior's masks (see the module docstring)."""
    out: dict[str, dict] = {}
    for name in ("octa_vessels", "dsa_vessels"):
        folder = root / "priors" / name
        paths = sorted(p for p in folder.iterdir() if is_image_file(p)) if folder.is_dir() else []
        if paths:
            masks = [read_mask(p) for p in paths]
            out[name] = {"n": len(masks), "fraction": prior_fraction(masks), "fov": "whole image"}
    for label, name, sub, split in (
        ("stare", "stare", "STARE", "all"),
        ("drive_train", "drive", "DRIVE", "train"),
        ("drive_test", "drive", "DRIVE", "test"),
    ):
        if not (root / sub).is_dir():
            continue
        samples = list(load_dataset(name, root / sub, split))
        masks = [s.masks["vessels"] for s in samples]
        fovs = [s.fov for s in samples]
        out[label] = {
            "n": len(samples),
            "fraction": prior_fraction(masks, fovs),
            "fraction_whole_image": prior_fraction(masks),
            "fov": "official masks" if name == "drive" else "derived from the image",
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("/work/shared/data/DRIVE"))
    parser.add_argument("--dataset", choices=tuple(SPLITS), default="drive",
                        help="stare: its 20 images (--data-root .../STARE)")  # fmt: skip
    parser.add_argument("--remove-specks", type=float, nargs="+", default=[0.0],
                        help="also rows without pieces below these shares of the FOV")  # fmt: skip
    parser.add_argument("--fraction", type=float, nargs="+", default=[0.12])
    parser.add_argument("--methods", nargs="+", default=[*FILTERS, "sato+line"])
    parser.add_argument("--resolution", choices=(*RESOLUTIONS, "both"), default="both")
    parser.add_argument(
        "--priors-root", type=Path, default=None, help="shared data folder for prior fractions"
    )
    parser.add_argument("--out", type=Path, default=None, help="write per-image rows as JSON")
    args = parser.parse_args(argv)

    resolutions = RESOLUTIONS if args.resolution == "both" else (args.resolution,)
    start = time.perf_counter()
    rows = evaluate(args.data_root, args.fraction, resolutions, args.methods,
                    speck_areas=tuple(args.remove_specks), dataset_name=args.dataset)  # fmt: skip
    text, records = table(rows)
    images = len({r["image"] for r in rows})
    print(f"{args.dataset} {SPLITS[args.dataset]}, {images} images, paper Dice at {SIZE} x {SIZE}")
    print(text)
    print(f"({time.perf_counter() - start:.1f} s)")
    priors = None
    if args.priors_root is not None:
        priors = prior_fractions(args.priors_root)
        print("\nvessel fraction inside the FOV (prior_fraction, mean over images):")
        for name, info in priors.items():
            print(f"  {name:<13} n={info['n']:>2}  {info['fraction']:.4f}  ({info['fov']})")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"fraction": args.fraction, "summary": records, "per_image": rows}
        if priors is not None:
            payload["prior_fractions"] = priors
        args.out.write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
