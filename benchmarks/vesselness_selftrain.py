"""A segmenter trained on a vesselness filter's pseudo-labels, scored on labelled fundus images.

    python benchmarks/vesselness_selftrain.py --data-root ../shared/data --task drive \\
        --train-on test --out /tmp/selftrain.json

A filter (``--teacher``, :func:`~localdisc.tasks.vesselness.vesselness`: ``line``, the
multi-scale line detector, by default; ``sato``; or several joined by ``+``) scores the training
images (their labels unused); :func:`~localdisc.tasks.vesselness.vesselness_pseudo_label` turns each
score into pseudo-labels at the prior's expected vessel fraction (the fraction of
``benchmark shape-guided``: simulated 0.150, OCTA 0.105), sure at both ends and silent in
between. A U-Net (:func:`~localdisc.tasks.self_training.train_student`) trains on random
crops of them and of ``--painted`` copies of each image with a simulated vessel tree painted on
(its mask the copy's sure vessels; default 0, none; the benchmark's second network: 2), its
batch norm is recomputed over what it trained on, the vessel share the copies add is taken out
of its head (:func:`~localdisc.tasks.self_training.label_shift`), and it segments the scored
images.
``--rounds 2`` trains a second, fresh network on the pseudo-labels of the first round's
``mean rank`` (below).

The training images (``--train-on``): DRIVE's training split (``train``), its test split
itself (``test``, transductive as the shape-guided refinement: the test labels are never read
before scoring) or both; STARE trains on the 20 images it scores (both of its paper splits),
and its labels may choose settings for DRIVE. Printed and written per round, the mean over
the scored images of the paper's Dice (whole image at 512) and FOV AUC, for:

* ``network``: the network's probability at 0.5, averaged over the four flips (``--no-flips``:
  the image alone) and over ``--ensemble`` networks of consecutive seeds (then also ``first
  network``, the first seed's alone);
* with ``--painted``, ``network, uncorrected``: the same with the label shift left in its head
  (and ``..., specks removed`` as below);
* ``network @ fraction``: its prior's-fraction most vessel-like pixels of the eroded FOV;
* ``teacher @ fraction``: the filter itself at that fraction (the same run);
* ``mean rank @ fraction``: the mean of the network's and the filter's rank inside the eroded
  FOV at that fraction (:func:`~localdisc.tasks.vesselness.mean_rank`);
* with ``--remove-specks AREA`` (default 6e-4, 0: none), the network at 0.5 and the filter at
  the fraction again, their pieces smaller than ``AREA`` of the FOV dropped
  (:func:`~localdisc.tasks.vesselness.remove_specks`): ``..., specks removed``.

The pseudo-labels' own speck filter is ``--speck_area`` (a field of ``StudentConfig``, as every
``--name`` with an underscore below ``--teacher``).

Whether a network can learn more than its teacher from the teacher's sure pixels is the
question; the shape-guided benchmark's filter rows are the bar (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch

from localdisc.data.datasets import load_data_spec
from localdisc.eval.metrics import auc_roc, summarize
from localdisc.models.segmenter import Segmenter
from localdisc.priors import load_prior
from localdisc.tasks.benchmark_shape_guided import TASKS, expected_fraction, prior_spec
from localdisc.tasks.self_training import (
    StudentConfig,
    label_shift,
    student_probability,
    student_training_set,
    train_student,
)
from localdisc.tasks.transfer import image_metrics
from localdisc.tasks.vesselness import mean_rank, remove_specks, vesselness


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", type=Path, required=True, help="holds DRIVE/ (and priors/)")
    p.add_argument("--task", choices=("drive", "stare"), default="drive")
    p.add_argument("--train-on", choices=("train", "test", "both"), default="train",
                   help="DRIVE's images to train on (STARE: always the scored ones)")  # fmt: skip
    p.add_argument("--prior", default="simulated", help="simulated, octa, dsa or other: its share")
    p.add_argument("--fraction", type=float, help="the vessel fraction instead of the prior's")
    p.add_argument("--rounds", type=int, default=1, help="2: retrain on round 1's mean rank")
    p.add_argument("--no-flips", action="store_true", help="the network on the image alone")
    p.add_argument("--ensemble", type=int, default=1, help="N networks (seeds), maps averaged")
    p.add_argument("--remove-specks", type=float, default=6e-4,
                   help="rows without pieces below this share of the FOV (0: none)")  # fmt: skip
    p.add_argument("--out", type=Path)
    defaults = StudentConfig()
    p.add_argument("--teacher", dest="method", default=defaults.method,
                   help="sato, frangi, line, or several joined by '+'")  # fmt: skip
    for f in fields(StudentConfig):
        if f.name != "method":
            p.add_argument(f"--{f.name}", type=type(getattr(defaults, f.name)),
                           default=getattr(defaults, f.name))  # fmt: skip
    a = p.parse_args()
    config = StudentConfig(**{f.name: getattr(a, f.name) for f in fields(StudentConfig)})
    task = TASKS[a.task]
    fraction = a.fraction
    if fraction is None:
        bank = load_prior(prior_spec(a.prior, task, a.data_root), 128, count=32, seed=0)
        fraction = expected_fraction(bank, tubular=True)
    print(f"vessel fraction {fraction:.3f} ({a.prior if a.fraction is None else 'given'})")

    if a.task == "drive":
        spec = f"drive:{a.data_root / 'DRIVE'}"
        test = list(load_data_spec(spec, "test"))
        train = list(load_data_spec(spec, "train")) if a.train_on != "test" else []
        train += test if a.train_on != "train" else []
    else:
        test = train = list(load_data_spec(f"stare:{a.data_root / 'STARE'}", "all"))
    unique = {s.name: s for s in train + test}  # STARE's, and DRIVE's with --train-on test|both
    teacher = {name: vesselness(s.image, s.fov, method=a.method, erode_fov=config.erode_fov)
               for name, s in unique.items()}  # fmt: skip
    teachers = [teacher[s.name] for s in train]
    start = time.time()
    result = {"args": {k: str(v) for k, v in vars(a).items()}, "fraction": fraction,
              "rounds": []}  # fmt: skip
    for round_ in range(a.rounds):
        images, fovs = [s.image for s in train], [s.fov for s in train]
        round_config = replace(config, seed=config.seed + round_)
        seeds = range(round_config.seed, round_config.seed + a.ensemble)
        configs = [replace(round_config, seed=seed) for seed in seeds]
        models = [train_student(images, fovs, fraction, c, teachers=teachers) for c in configs]
        unshifted = [_unshifted(m, images, fovs, teachers, fraction, c)
                     for m, c in zip(models, configs, strict=True)]  # fmt: skip
        rows: dict[str, list[dict]] = {}
        for s in test:
            probs = [student_probability(m, s.image, s.fov, flips=not a.no_flips) for m in models]
            prob = sum(probs) / len(probs)
            rows.setdefault("network", []).append(image_metrics(prob, s, "vessels", 512))
            if config.painted:  # the painted copies' label shift left in, for comparison
                raw = sum(student_probability(m, s.image, s.fov, flips=not a.no_flips)
                          for m in unshifted) / len(unshifted)  # fmt: skip
                rows.setdefault("network, uncorrected", []).append(
                    image_metrics(raw, s, "vessels", 512))  # fmt: skip
            if a.ensemble > 1:  # the first network alone, for comparison
                first = image_metrics(probs[0], s, "vessels", 512)
                rows.setdefault("first network", []).append(first)
            # name: (mask, the score ranking it, for the AUC)
            masks = {}
            for name, score in (("network", [prob]), ("teacher", [teacher[s.name]]),
                                ("mean rank", [prob, teacher[s.name]])):  # fmt: skip
                rank = mean_rank(score, s.fov, config.erode_fov)
                masks[f"{name} @ {fraction:.3f}"] = (rank > 1 - fraction, rank)
            if a.remove_specks:
                cut = f"teacher @ {fraction:.3f}"
                mask, rank = masks[cut]
                masks["network, specks removed"] = (
                    remove_specks(prob >= 0.5, s.fov, a.remove_specks), prob)  # fmt: skip
                if config.painted:
                    masks["network, uncorrected, specks removed"] = (
                        remove_specks(raw >= 0.5, s.fov, a.remove_specks), raw)  # fmt: skip
                masks[f"{cut}, specks removed"] = (
                    remove_specks(mask, s.fov, a.remove_specks), rank)  # fmt: skip
            for name, (mask, score) in masks.items():
                metrics = image_metrics(mask.astype(np.float32), s, "vessels", 512)
                metrics["auc"] = auc_roc(score, s.masks["vessels"], s.fov)
                rows.setdefault(name, []).append(metrics)
        summary = {k: summarize(v) for k, v in rows.items()}
        result["rounds"].append({"seconds": time.time() - start, "rows": summary})
        for name, row in summary.items():
            dice, auc = row["dice"], row["auc"]
            print(f"round {round_ + 1} {name:44s} Dice {dice['mean']:.3f} +- {dice['std']:.3f}"
                  f"  AUC {auc['mean']:.3f}")  # fmt: skip
        if a.out:
            a.out.write_text(json.dumps(result, indent=1))
        if round_ + 1 == a.rounds:
            break
        # The next round's teacher: this round's mean rank.
        teachers = [mean_rank([sum(student_probability(m, s.image, s.fov, flips=not a.no_flips)
                                   for m in models) / len(models), teacher[s.name]], s.fov,
                              config.erode_fov) for s in train]  # fmt: skip


def _unshifted(
    model: Segmenter,
    images: list[np.ndarray],
    fovs: list[np.ndarray],
    teachers: list[np.ndarray],
    fraction: float,
    config: StudentConfig,
) -> Segmenter:
    """``model`` with the painted copies' label shift put back into its head (as it was before
    :func:`train_student` took it out)."""
    if not config.painted:
        return model
    targets = student_training_set(images, fovs, teachers, fraction, config)[1]
    raw = copy.deepcopy(model)
    with torch.no_grad():
        raw.head.bias += label_shift(targets, config.painted)
    return raw


if __name__ == "__main__":
    main()
