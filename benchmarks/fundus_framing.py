"""One-shot optic-disc localisation on DRIVE with fundus images framed by their field of view
(what `localize`, `similarity` and the viewer do) against resized whole (what they did), in the
same run, on the test images as they are and padded with black to a 3:2 camera frame (at their
resolution and at twice it): pre-training crops every fundus photograph to its FOV, so a frame
with wide black borders showed the retina at another scale.

    python benchmarks/fundus_framing.py --model RUN --data-root ../shared/data [--out results.json]

Errors are in the pixels of the unpadded DRIVE image; the template is the benchmark's first
(21_training, the optic disc of `localdisc/data/drive_optic_disc.json`), mirrored as well.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np

from localdisc.data.preprocess import resize_image
from localdisc.eval.provenance import environment
from localdisc.tasks.benchmark_localize import _drive
from localdisc.tasks.localize import Localizer, SearchConfig
from localdisc.tasks.similarity import load_model


def padded(image: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, int]:
    """``image`` centred on a black 3:2 frame of its height (then resized by ``scale``), and
    the left border's width before resizing."""
    h, w = image.shape[:2]
    frame = np.zeros((h, round(1.5 * h), image.shape[2]), np.float32)
    left = (frame.shape[1] - w) // 2
    frame[:, left : left + w] = image
    if scale != 1.0:
        frame = resize_image(frame, (round(h * scale), round(frame.shape[1] * scale)))
    return frame, left


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a fundus LD run")
    parser.add_argument("--data-root", required=True, help="a folder holding DRIVE/")
    parser.add_argument("--max-test", type=int, default=None, help="test images (default all)")
    parser.add_argument("--out", default=None, help="write the errors as JSON here")
    args = parser.parse_args()

    loaded = load_model(args.model)
    task = _drive(Path(args.data_root) / "DRIVE", args.max_test, 0)
    template, config = task.template, SearchConfig(mirror=True)
    localizers = {
        framing: Localizer(
            dataclasses.replace(loaded, frame_fundus=framed),
            template.image,
            template.landmarks,
            config,
        )  # fmt: skip
        for framing, framed in (("framed by the FOV", True), ("resized whole", False))
    }
    targets = {"as they are": None, "padded to 3:2": 1.0, "padded to 3:2, x2": 2.0}
    errors: dict[str, dict[str, list[float]]] = {f: {t: [] for t in targets} for f in localizers}
    start = time.time()
    for case in task.tests():
        tx, ty = case.landmarks["optic_disc"]
        for target, scale in targets.items():
            image, left = (case.image, 0) if scale is None else padded(case.image, scale)
            for framing, localize in localizers.items():
                p = localize(image)["optic_disc"]
                s = scale or 1.0
                errors[framing][target].append(math.hypot(p.x / s - left - tx, p.y / s - ty))
    n = len(errors["resized whole"]["as they are"])
    print(f"model {args.model}, working size {loaded.pool_size}, template {template.name}, "
          f"{n} test images, {time.time() - start:.0f} s")  # fmt: skip
    print("| images | targets | mean px | median px | <= 30 px |")
    print("|---|---|---|---|---|")
    summary = {}
    for framing, by_target in errors.items():
        for target, values in by_target.items():
            e = np.asarray(values)
            summary[f"{framing}, {target}"] = {
                "mean": float(e.mean()), "median": float(np.median(e)),
                "within_30": float((e <= 30).mean()), "errors": values,
            }  # fmt: skip
            print(f"| {framing} | {target} | {e.mean():.1f} | {np.median(e):.1f} | "
                  f"{100 * (e <= 30).mean():.0f}% |")  # fmt: skip
    if args.out:
        record = {"model": args.model, "results": summary, "environment": environment("cpu")}
        Path(args.out).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
