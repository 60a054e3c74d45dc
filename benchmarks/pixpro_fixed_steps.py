"""PixPro pre-trained for a fixed number of steps with the settings of a recorded run: when does
its loss leave its floor (-2, every positive pair consistent), under a given sampler and rule of
positives?

PixPro's consistency loss starts near -2 (the two branches agree on everything) and rises as the
features begin to tell cells apart. Under a time budget the momentum's schedule follows the
clock; here it follows the steps (``--steps``), so that runs of other code or settings are
comparable step for step. The loss at every 250th step is printed (and logged in OUT/log.csv):

    python benchmarks/pixpro_fixed_steps.py RUN/config.json OUT --seed 7 --steps 1500 \\
        [--sampler replacement] [--padding-positives] [--raw-propagation]

``RUN/config.json``: a PixPro run of ``benchmark pretrain-methods`` (its data, size, batch, ...),
or ``cpu-scale-xray:DATA_ROOT`` for the settings ``benchmark pretrain-methods --cpu-scale`` gives
its X-ray PixPro run (the first 1 000 images of DATA_ROOT/CXR_Kermany/train/NORMAL);
``--padding-positives`` pairs cells by distance alone, cells in the views' padding included, as
PixPro did before commit 721e557; ``--raw-propagation`` sums the transformed cells g(x_j)
unnormalised, as PixPro did before commit 7749610. Run from a checkout (``PYTHONPATH=src``).
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import fields
from pathlib import Path

import torch


def distance_only_positives(theta1, theta2, grid_hw, image_hw, threshold):  # noqa: ANN001, ANN201
    """PixPro's Eq. 1 positives by distance alone (the rule before commit 721e557)."""
    from localdisc.losses.pixpro import feature_cell_geometry

    c1, d1 = feature_cell_geometry(theta1, grid_hw, image_hw)
    c2, d2 = feature_cell_geometry(theta2, grid_hw, image_hw)
    return torch.cdist(c1, c2) < threshold * torch.maximum(d1, d2)[:, None, None]


def _settings(config: str) -> dict:
    """The ``pretrain`` settings of a run's config.json, or of ``--cpu-scale``'s X-ray PixPro."""
    if not config.startswith("cpu-scale-xray:"):
        return json.loads(Path(config).read_text())["pretrain"]
    from dataclasses import asdict

    from localdisc.engine.pretrain import PretrainConfig
    from localdisc.tasks.benchmark_methods import MethodsBenchmarkConfig, _settings, preset

    root = config.partition(":")[2]
    methods = preset(MethodsBenchmarkConfig(cpu_scale=True, data_root=root, tasks=["scr_clavicle"]))
    spec = str(Path(root) / "CXR_Kermany" / "train" / "NORMAL")
    return json.loads(
        json.dumps(asdict(PretrainConfig(**_settings(methods, "pixpro", "xray", spec))))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a PixPro run's config.json, or cpu-scale-xray:ROOT")
    parser.add_argument("out", type=Path, help="a new run folder")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--sampler", default="epoch", help="epoch or replacement")
    parser.add_argument("--padding-positives", action="store_true")
    parser.add_argument("--raw-propagation", action="store_true")
    args = parser.parse_args()

    import localdisc.methods.pixpro as pixpro
    from localdisc.engine.pretrain import PretrainConfig, pretrain

    saved = _settings(args.config)
    if saved.get("method") != "pixpro":
        parser.error(f"{args.config}: not a PixPro run (method {saved.get('method')!r})")
    names = {f.name for f in fields(PretrainConfig)}
    settings = {k: v for k, v in saved.items() if k in names}
    settings.update(stage1_seconds=None, stage1_steps=args.steps, sampler=args.sampler,
                    seed=args.seed, progress=False, checkpoint_every=10**6,
                    figure_every=10**6)  # fmt: skip
    if args.padding_positives:
        pixpro.pixpro_positive_mask = distance_only_positives
    if args.raw_propagation:  # g(x_j) summed as it is (before 7749610)
        from localdisc.models.projection import PixelPropagation, pixel_propagation

        PixelPropagation.forward = lambda self, x: pixel_propagation(  # type: ignore[method-assign]
            x, self.transform(x), self.gamma
        )
    pretrain(PretrainConfig(**settings), args.out, log=lambda m: None)
    rows = csv.DictReader((args.out / "log.csv").read_text().splitlines())
    losses = {int(r["step"]): float(r["loss"]) for r in rows if r.get("loss")}
    print(" ".join(f"{s}:{v:.3f}" for s, v in losses.items() if s % 250 == 0))


if __name__ == "__main__":
    main()
