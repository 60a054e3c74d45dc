"""Which batch-norm statistics should a segmenter fine-tuned on 2 images normalise with? Test Dice
of finished transfer runs (``localdisc finetune`` / ``benchmark transfer`` folders) with their
statistics taken from:

- ``as_trained``: the running averages of training (the paper's protocol);
- ``labelled``: recomputed over the labelled images only, 10 augmented passes ("precise BN");
- ``train_split``: recomputed over every image of the training split, labels unused (what
  ``localdisc finetune --recalibrate-bn`` saves);
- ``test_images``: recomputed over the test images themselves (transductive: diagnosis only, not
  a method, since it uses the images that are scored);
- ``pretraining`` (runs with an LD init): the encoder's statistics from pre-training, the
  decoder's as trained.

    python benchmarks/bn_statistics.py OUT/runs/drive/{random,ld}/labels-2/seed-{0,1,2}

Prints one row per run (paper Dice, mean over the test images) and the mean of each column.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from localdisc.data.datasets import dataset_class, load_data_spec, parse_data_spec
from localdisc.engine.batch_norm import recalibrate_batch_norm
from localdisc.engine.checkpoint import load_safetensors
from localdisc.engine.finetune import AUGMENTATION, augment
from localdisc.models.segmenter import Segmenter
from localdisc.tasks.transfer import _tensors, evaluate, split_labelled

COLUMNS = ["as_trained", "labelled", "train_split", "test_images", "pretraining"]


def variants(run: Path) -> dict[str, float]:
    config = json.loads((run / "config.json").read_text())["transfer"]
    if "test" not in dataset_class(parse_data_spec(config["dataset"])[0]).splits:
        # A folder's test images were held out by finetune itself: not rebuilt here.
        raise SystemExit(f"{run}: {config['dataset']} has no test split of its own")
    train_set = load_data_spec(config["dataset"], "train")
    test_set = load_data_spec(config["dataset"], "test")
    # Without --target the run's config holds None; metrics.json the target it scored.
    target = config["target"] or json.loads((run / "metrics.json").read_text())["target"]
    size, seed = config["size"], config["train"]["seed"]
    fraction = config["val_fraction"]
    labelled, val, _ = split_labelled(len(train_set), config["labels"], seed, fraction)
    test_idx = list(range(len(test_set)))[: config["max_test"]]
    if config.get("recalibrate_bn"):
        raise SystemExit(f"{run}: saved with --recalibrate-bn; these variants need training's")

    def dice(model: Segmenter) -> float:
        rows = evaluate(model, test_set, test_idx, target)
        return float(np.mean([r["dice"] for r in rows]))

    def recalibrated(stats_images: torch.Tensor, passes: int = 1) -> Segmenter:
        model = Segmenter.from_pretrained(run)
        rotation, flips = AUGMENTATION[model.config.modality]
        generator = torch.Generator().manual_seed(0)
        blank = torch.zeros_like(stats_images[:, :1])  # augment() moves masks too
        views = [stats_images] + [
            augment(stats_images, blank, rotation=rotation, flips=flips, generator=generator)[0]
            for _ in range(passes - 1)
        ]
        recalibrate_batch_norm(model, torch.cat(views))
        return model

    images = lambda dataset, idx: _tensors(dataset, idx, None, size)[0]  # noqa: E731
    out = {
        "as_trained": dice(Segmenter.from_pretrained(run)),
        "labelled": dice(recalibrated(images(train_set, sorted(set(labelled) | set(val))), 10)),
        "train_split": dice(recalibrated(images(train_set, list(range(len(train_set)))))),
        "test_images": dice(recalibrated(images(test_set, test_idx))),
        "pretraining": math.nan,
    }
    if config["init"] != "random":  # the encoder's statistics from pre-training
        model = Segmenter.from_pretrained(run)
        pre = load_safetensors(Path(config["init"]) / "encoder.safetensors")
        state = model.encoder.state_dict()
        state.update({k: v for k, v in pre.items() if "running_" in k})
        model.encoder.load_state_dict(state)
        out["pretraining"] = dice(model)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    print("| run | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    table = []
    for run in args.runs:
        row = variants(run)
        table.append([row[c] for c in COLUMNS])
        cells = " | ".join(f"{row[c]:.3f}" for c in COLUMNS)
        print(f"| {run} | {cells} |", flush=True)
    means = np.nanmean(np.asarray(table, dtype=float), axis=0)
    print("| mean | " + " | ".join(f"{m:.3f}" for m in means) + " |")


if __name__ == "__main__":
    main()
