"""How much the precision of test inference moves a fine-tuned model's test metrics.

Up to commit 9cabc5a, `localdisc finetune` and `benchmark transfer` segmented the test
images in bf16 autocast wherever training used it (a GPU, a CPU with bf16 instructions), while
`localdisc predict` runs float32; now both run float32. For finished transfer runs (folders with
`model.safetensors`, `config.json`, `metrics.json`), this segments their test images both ways and
prints the paper Dice of each next to the one `metrics.json` recorded (its recorded images alone):

    python benchmarks/eval_precision.py RUN [RUN ...] [--max-images N]

Run it from the folder the runs' data specs are relative to (`benchmark pretrain-methods` records
`carry/...`: the snapshot folder the benchmark ran in).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from localdisc.data.datasets import dataset_class, load_data_spec, parse_data_spec
from localdisc.data.preprocess import resize_image
from localdisc.engine.finetune import predict_batch
from localdisc.models.segmenter import Segmenter
from localdisc.tasks.transfer import image_metrics


def bf16_maps(model: Segmenter, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The maps as the evaluation before float32 computed them (autocast where it pays)."""
    size = model.config.size
    x = torch.from_numpy(resize_image(image, size)).permute(2, 0, 1)[None]
    small = predict_batch(model, x, 1, amp=True)[0, 0]
    full = torch.nn.functional.interpolate(
        small[None, None], size=image.shape[:2], mode="bilinear", align_corners=False
    )[0, 0].clamp(0, 1)
    return small.numpy(), full.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--max-images", type=int, default=None)
    args = parser.parse_args()
    print("| run | images | recorded | bf16 now | float32 | largest per-image change |")
    print("|---|---|---|---|---|---|")
    for run in args.runs:
        config = json.loads((run / "config.json").read_text())["transfer"]
        spec = config["dataset"]
        # Without --target the run's config holds None; metrics.json the target it scored.
        target = config["target"] or json.loads((run / "metrics.json").read_text())["target"]
        if "test" not in dataset_class(parse_data_spec(spec)[0]).splits:
            print(f"| {run} | skipped: {spec} has no test split |")
            continue
        recorded = {
            r["image"]: r["dice"]
            for r in json.loads((run / "metrics.json").read_text())["per_image"]
        }
        model = Segmenter.from_pretrained(run, device="cpu")
        test = load_data_spec(spec, "test")
        rows = []
        # The images metrics.json recorded alone: all the test set's were scored, and the
        # columns were means over different images (a --max-test run, --skip-bad, a data set
        # grown since), the largest change NaN (reviewer).
        scored = [i for i in range(len(test)) if test.items[i].name in recorded]
        for i in scored if args.max_images is None else scored[: args.max_images]:
            sample = test[i]
            size = model.config.size
            dice = []
            for maps in (bf16_maps(model, sample.image), model.predict_maps(sample.image)):
                metrics = image_metrics(maps[1], sample, target, size, prob_at_size=maps[0])
                dice.append(metrics["dice"])
            rows.append((recorded[sample.name], *dice))
        if not rows:
            print(f"| {run} | skipped: none of its recorded images is in {spec} now |")
            continue
        values = np.array(rows)
        change = np.nanmax(np.abs(values[:, 2] - values[:, 0]))
        means = " | ".join(f"{m:.4f}" for m in np.nanmean(values, 0))
        print(f"| {run} | {len(rows)} | {means} | {change:.4f} |")


if __name__ == "__main__":
    main()
