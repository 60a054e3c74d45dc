"""`localdisc shape-guided vessels` as a user runs it, scored on a labelled fundus data set.

    python benchmarks/vessels_command.py --data drive:../shared/data/DRIVE --split test \\
        --out /tmp/vessels_drive
    python benchmarks/vessels_command.py --data stare:../shared/data/STARE --split all \\
        --out /tmp/vessels_stare
    python benchmarks/vessels_command.py --data drive:../shared/data/DRIVE --split test \\
        --out /tmp/vessels_drive_fov --fov-masks ../shared/data/DRIVE/test/mask
    python benchmarks/vessels_command.py --data drive:../shared/data/DRIVE --split train,test \\
        --out /tmp/vessels_drive40 --train-images 40     # DRIVE's 40 images as one cohort
    python benchmarks/vessels_command.py --data drive:../shared/data/DRIVE --split test \\
        --data stare:../shared/data/STARE --split all --out /tmp/vessels_mixed   # two cameras

The command (:func:`~localdisc.tasks.vessels.segment_vessels_self_trained`, its CLI
defaults) gets the split's image files and nothing else: it finds each FOV in the image (with
``--fov-masks``, the command's option, it reads them there) and trains on the images themselves.
Then, and only then, the data set's labels and official FOVs score what it wrote (paper Dice
at 512, FOV AUC): its masks (specks dropped) and its probabilities at 0.5; beside them, in the
same run, the teacher alone (the line detector at the prior's fraction of the official FOV,
specks dropped: the best kind of filter row of ``benchmark shape-guided``). ``--steps``,
``--painted``, ``--seed``, ``--fov-masks``, ``--train-images``, ``--reteach-unusual`` and
``--teach-all`` are the command's (with fewer images taught on than the split has, the masks
of those taught on and of the others are also scored apart; with several splits, each split's
too, and each set's when several are given). Results are printed and written to
``OUT/scores.json``, with the masks' scores per image.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

from localdisc.data.datasets import load_data_spec
from localdisc.data.io import read_image
from localdisc.eval.metrics import auc_roc, summarize
from localdisc.tasks.predict import collect_images
from localdisc.tasks.self_training import StudentConfig
from localdisc.tasks.transfer import image_metrics
from localdisc.tasks.vesselness import threshold_vessels, vesselness
from localdisc.tasks.vessels import PAINTED, SPECK_AREA, TRAIN_IMAGES, segment_vessels_self_trained


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, action="append",
                   help="NAME:ROOT of a data set with vessel masks; repeated, the sets make one "
                   "cohort")  # fmt: skip
    p.add_argument("--split", action="append",
                   help="a split, or several joined by commas as one cohort (drive: train,test); "
                   "one per --data, or one for all [default: test]")  # fmt: skip
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=StudentConfig.steps)
    p.add_argument("--painted", type=int, default=PAINTED)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fov-masks", type=Path, help="the command's --fov-masks: a folder")
    p.add_argument("--train-images", type=int, default=TRAIN_IMAGES,
                   help="the command's: fewer than the split's images scores those taught on "
                   "and the others apart")  # fmt: skip
    p.add_argument("--reteach-unusual", action="store_true", help="the command's")
    p.add_argument("--teach-all", action="store_true", help="the command's")
    a = p.parse_args()

    splits = a.split or ["test"]
    if len(splits) == 1:
        splits *= len(a.data)
    if len(splits) != len(a.data):
        p.error("give one --split per --data, or one for all")
    pairs = zip(a.data, splits, strict=True)
    parts = [(data, split) for data, field in pairs for split in field.split(",")]
    cohort = [
        (split if len(a.data) == 1 else f"{data.split(':')[0]} {split}", s)
        for data, split in parts
        for s in load_data_spec(data, split)
    ]
    samples = [s for _, s in cohort]
    files = [s.image_path for s in samples]
    config = StudentConfig(painted=a.painted, steps=a.steps, seed=a.seed)
    start = time.time()
    segment_vessels_self_trained(files, a.out, config=config, fov_masks=a.fov_masks,
                                 train_images=a.train_images,
                                 reteach_unusual=a.reteach_unusual,
                                 teach_all=a.teach_all)  # fmt: skip
    seconds = time.time() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    networks = [a.out] if (a.out / "config.json").is_file() else sorted(a.out.glob("group-*"))
    runs = [json.loads((d / "config.json").read_text())["self_trained_vessels"] for d in networks]
    fraction = runs[0]["fraction"]
    taught = {Path(f).resolve() for settings in runs for f in settings["images"]}

    names = {path: name for name, path in collect_images(files)}  # as the command wrote them
    teacher_row = f"{config.method} @ {fraction:.3f}, specks removed"
    order = ["command: probability at 0.5", "command: mask (specks removed)"]
    if len(taught) < len(samples):
        order += ["  ... taught on", "  ... not taught on"]
    labels = list(dict.fromkeys(label for label, _ in cohort))
    if len(labels) > 1:
        order += [f"  ... {label} split" for label in labels]
    rows: dict[str, list[dict]] = {k: [] for k in [*order, teacher_row]}
    per_image: dict[str, dict] = {}
    for label, s in cohort:
        name = names[s.image_path]
        prob = read_image(a.out / f"{name}_prob.png")[0][..., 0]
        mask = read_image(a.out / f"{name}_mask.png")[0][..., 0] > 0.5
        truth = s.masks["vessels"]
        rows["command: probability at 0.5"].append(image_metrics(prob, s, "vessels", 512))
        written = image_metrics(mask.astype(np.float32), s, "vessels", 512)
        written["auc"] = auc_roc(prob, truth, s.fov)
        rows["command: mask (specks removed)"].append(written)
        if len(taught) < len(samples):
            part = "taught on" if s.image_path.resolve() in taught else "not taught on"
            rows[f"  ... {part}"].append(written)
        if len(labels) > 1:
            rows[f"  ... {label} split"].append(written)
        per_image[name] = {"split": label, "taught_on": s.image_path.resolve() in taught, **written}
        score = vesselness(s.image, s.fov, method=config.method, erode_fov=config.erode_fov)
        cut = threshold_vessels(score, s.fov, fraction, config.erode_fov, SPECK_AREA)
        teacher = image_metrics(cut.astype(np.float32), s, "vessels", 512)
        teacher["auc"] = auc_roc(score, truth, s.fov)
        rows[teacher_row].append(teacher)

    summary = {k: summarize(v) for k, v in rows.items()}
    for name, row in summary.items():
        dice, auc = row["dice"], row["auc"]
        print(f"{name:36s} Dice {dice['mean']:.3f} +- {dice['std']:.3f}  AUC {auc['mean']:.3f}")
    print(f"command: {seconds:.0f} s for {len(files)} images, taught on {len(taught)}; "
          f"peak memory of the process {peak_gb:.2f} GiB")  # fmt: skip
    result = {"args": {k: str(v) for k, v in vars(a).items()}, "cohort": parts,
              "fraction": fraction, "seconds": seconds, "peak_gib": peak_gb, "rows": summary,
              "masks_per_image": per_image}  # fmt: skip
    (a.out / "scores.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
