"""Which label-free signal tells the images whose vessel masks failed? Scored against the labels.

    python benchmarks/vessel_quality_signals.py /tmp/vessels_stare_t10 \\
        --reference /tmp/vessels_stare_all

Reads a `vessels_command.py` run (its network, its ``scores.json``: the masks' paper Dice per
image, and the images and FOV masks it was given) and computes, per image and without a label,
what the network could report of itself beside its mask's share of the FOV:

* ``share``: the share of the FOV the mask covers (what ``vessels.csv`` holds);
* ``unsure``: pixels of the eroded FOV at probability 0.25-0.75, per pixel marked (>= 0.5);
* ``flips``: how far the masks of the four flips (those the command averages) disagree,
  1 - |all four| / |any|;
* ``teacher``: 1 - Dice between the mask and as many of the teacher's highest pixels (the
  filter it was taught by), in the eroded FOV: how far it strays from its teacher
  (:func:`~localdisc.tasks.vessels.teacher_disagreement`, what ``vessels.csv`` now holds).

Each is also given as a ratio to its median over the images taught on. With ``--reference``
(the same images, all taught on) each image's Dice change is read too. Prints the table and the
Spearman correlations of each signal with the Dice (all images, and the images not taught on)
and with the change; writes ``OUT/signals.json`` (default: in the run's folder).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from localdisc.data.datasets import load_data_spec
from localdisc.data.preprocess import resize_image
from localdisc.engine.finetune import predict_batch
from localdisc.models.segmenter import Segmenter, read_config
from localdisc.tasks.predict import collect_images, fov_mask_files
from localdisc.tasks.vesselness import eroded_fov, remove_specks, vesselness
from localdisc.tasks.vessels import _read_photo, teacher_disagreement

SIGNALS = ("share", "unsure", "flips", "teacher")


def image_signals(
    model: Segmenter, image: np.ndarray, fov: np.ndarray, method: str, erode: int, speck: float
) -> dict[str, float]:
    """The label-free signals of one image as the command segments it (module docstring)."""
    x = torch.from_numpy(resize_image(image, model.config.size)).permute(2, 0, 1)[None]
    probs = []
    for dims in [(), (2,), (3,), (2, 3)]:
        p = predict_batch(model, x.flip(dims), 1).flip(dims)
        p = F.interpolate(p, size=fov.shape, mode="bilinear", align_corners=False)
        probs.append(p[0, 0].clamp(0, 1).numpy() * fov)
    prob = np.mean(probs, axis=0)
    mask = remove_specks(prob >= 0.5, fov, speck)
    region = eroded_fov(fov, erode)
    marked = max(int(mask[region].sum()), 1)
    unsure = float(((prob >= 0.25) & (prob < 0.75))[region].sum() / marked)
    flips = [q >= 0.5 for q in probs]
    union, inter = np.logical_or.reduce(flips), np.logical_and.reduce(flips)
    disagree = float(1 - inter[region].sum() / max(union[region].sum(), 1))
    score = vesselness(image, fov, method=method, erode_fov=erode)
    return {"share": float(mask[fov].mean()), "unsure": unsure, "flips": disagree,
            "teacher": teacher_disagreement(mask, score, fov, erode)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="a vessels_command.py --out folder")
    p.add_argument("--reference", type=Path, help="a run on the same images, all taught on")
    p.add_argument("--out", type=Path, help="default: the run's folder")
    a = p.parse_args()
    scores = json.loads((a.run / "scores.json").read_text())
    args, per_image = scores["args"], scores["masks_per_image"]
    settings = read_config(a.run)["self_trained_vessels"]
    student = settings["student"]
    model = Segmenter.from_pretrained(a.run, device="cpu")
    parts = scores.get("cohort") or [(args["data"], s) for s in args["split"].split(",")]
    samples = [s for data, split in parts for s in load_data_spec(data, split)]
    files = collect_images([s.image_path for s in samples])
    fov_dir = None if args["fov_masks"] == "None" else args["fov_masks"]
    masks = fov_mask_files([path for _, path in files], fov_dir) if fov_dir else None
    before = None
    if a.reference:
        before = json.loads((a.reference / "scores.json").read_text())["masks_per_image"]

    rows = {}
    for i, (name, path) in enumerate(files):
        image, fov, _ = _read_photo(path, settings["max_size"], None if masks is None else masks[i])
        row = image_signals(model, image, fov, student["method"], student["erode_fov"],
                            settings["speck_area"])  # fmt: skip
        row.update(taught=per_image[name]["taught_on"], dice=per_image[name]["dice"])
        if before is not None:
            row["change"] = row["dice"] - before[name]["dice"]
        rows[name] = row
    taught = [r for r in rows.values() if r["taught"]]
    for s in SIGNALS:
        median = float(np.median([r[s] for r in taught]))
        for r in rows.values():
            r[f"{s}_ratio"] = r[s] / median if median > 0 else float("nan")

    head = "image".ljust(14) + " taught  Dice  change " + " ".join(f"{s:>12s}" for s in SIGNALS)
    print(head)
    for name, r in sorted(rows.items(), key=lambda kv: kv[1]["dice"]):
        change = f"{r['change']:+.3f}" if "change" in r else "     -"
        cells = " ".join(f"{r[s]:.3f} {r[s + '_ratio']:5.2f}x" for s in SIGNALS)
        seen = "yes" if r["taught"] else "no"
        print(f"{name:14s} {seen:>6s} {r['dice']:.3f} {change:>6s} {cells}")
    groups = {"all images": list(rows.values()),
              "not taught on": [r for r in rows.values() if not r["taught"]]}  # fmt: skip
    correlations: dict[str, dict[str, float]] = {}
    hits: dict[str, dict[str, int]] = {}
    for label, group in groups.items():
        if len(group) < 3:
            continue
        targets = ["dice"] + (["change"] if before is not None and label != "all images" else [])
        for target in targets:
            key = f"{target}, {label} ({len(group)})"
            correlations[key] = {}
            for s in SIGNALS:
                values = [-_badness(s)(r) for r in group]
                rho = spearmanr(values, [r[target] for r in group]).statistic
                correlations[key][s] = float(rho)
            print(f"Spearman with {key}: "
                  + ", ".join(f"{s} {v:+.2f}" for s, v in correlations[key].items()))  # fmt: skip
        # A user reads the table from the top: of the three worst masks, how many come first?
        worst = {id(r) for r in sorted(group, key=lambda r: r["dice"])[:3]}
        hits[label] = {s: sum(id(r) in worst for r in sorted(group, key=_badness(s))[:3])
                       for s in SIGNALS}  # fmt: skip
        print(f"of the 3 worst masks ({label}), among the 3 first by: "
              + ", ".join(f"{s} {n}" for s, n in hits[label].items()))  # fmt: skip
    out = a.out or a.run
    out.mkdir(parents=True, exist_ok=True)
    (out / "signals.json").write_text(
        json.dumps(
            {"run": str(a.run), "rows": rows, "spearman": correlations, "top3": hits}, indent=1
        )  # fmt: skip
    )


def _badness(signal: str) -> Callable[[dict], float]:
    """A sort key, worst first: the share is off in either direction (its distance from the
    taught median), the others the higher the worse."""
    if signal == "share":
        return lambda r: -abs(np.log(r["share_ratio"]))
    return lambda r: -r[signal]


if __name__ == "__main__":
    main()
