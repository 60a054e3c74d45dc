"""A segmenter trained on a vesselness filter's pseudo-labels, DRIVE test scored, no DRIVE label.

    python benchmarks/vesselness_selftrain.py --data-root ../shared/data --prior simulated \\
        --init random --out /tmp/selftrain.json

The Sato filter (:func:`~localdisc.tasks.vesselness.vesselness`) scores the 20 DRIVE training
images (their labels unused); :func:`~localdisc.tasks.vesselness.vesselness_pseudo_label` turns
each score into pseudo-labels at the prior's expected vessel fraction (the fraction of
``benchmark shape-guided``: simulated 0.150, OCTA 0.105), sure at both ends and silent in
between. A U-Net (:class:`~localdisc.models.segmenter.Segmenter`, random init or the encoder of
an LD pre-training run, ``--init``) trains on random crops of them, its batch norm is
recomputed over the training images, and it segments the 20 test images. Printed and written,
the mean over test images of the paper's Dice (whole image at 512) and FOV AUC, for:

* ``network``: the network's probability at 0.5;
* ``network @ fraction``: its prior's-fraction most vessel-like pixels of the eroded FOV;
* ``sato @ fraction``: the filter itself at that fraction (the teacher, the same run);
* ``mean rank @ fraction``: the mean of the network's and the filter's rank inside the eroded
  FOV at that fraction.

Whether a network can learn more than its teacher from the teacher's sure pixels is the
question; the shape-guided benchmark's filter rows are the bar (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from localdisc.data.datasets import load_data_spec
from localdisc.data.preprocess import resize_image, resize_mask
from localdisc.data.views import normalize
from localdisc.engine.batch_norm import recalibrate_batch_norm
from localdisc.engine.finetune import augment, predict_batch
from localdisc.engine.precision import bf16_autocast
from localdisc.eval.metrics import auc_roc, summarize
from localdisc.losses.pseudo_label import pseudo_label_loss
from localdisc.models.segmenter import Segmenter
from localdisc.priors import load_prior
from localdisc.tasks.benchmark_shape_guided import TASKS, expected_fraction, prior_spec
from localdisc.tasks.transfer import image_metrics
from localdisc.tasks.vesselness import eroded_fov, vesselness, vesselness_pseudo_label


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", type=Path, required=True, help="holds DRIVE/ (and priors/)")
    p.add_argument("--prior", default="simulated", help="simulated, octa or dsa: its fraction")
    p.add_argument("--fraction", type=float, help="the vessel fraction instead of the prior's")
    p.add_argument("--sure", type=float, default=0.6, help="top sure x fraction: sure vessel")
    p.add_argument("--unsure", type=float, default=2.0, help="below top unsure x fraction: sure bg")
    p.add_argument("--init", default="random", help="random, or an LD pre-training run")
    p.add_argument("--width", type=int, default=16, help="random init only")
    p.add_argument("--depth", type=int, default=4, help="random init only")
    p.add_argument("--size", type=int, default=512, help="images resized to size x size")
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    task = TASKS["drive"]
    fraction = a.fraction
    if fraction is None:
        bank = load_prior(prior_spec(a.prior, task, a.data_root), 128, count=32, seed=0)
        fraction = expected_fraction(bank, tubular=True)
    print(f"vessel fraction {fraction:.3f} ({a.prior if a.fraction is None else 'given'})")

    spec = f"drive:{a.data_root / 'DRIVE'}"
    train, test = load_data_spec(spec, "train"), load_data_spec(spec, "test")
    images, targets = [], []
    for i in range(len(train)):
        s = train[i]
        score = vesselness(s.image, s.fov, method="sato")
        label, weight = vesselness_pseudo_label(score, s.fov, fraction, sure=a.sure,
                                                unsure=a.unsure)  # fmt: skip
        images.append(resize_image(s.image, a.size))
        targets.append([resize_mask(label > 0.5, a.size), resize_mask(weight > 0.5, a.size)])
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(np.asarray(targets, dtype=np.float32))

    if a.init == "random":
        model = Segmenter(width=a.width, depth=a.depth, size=a.size)
    else:
        model = Segmenter.from_ld_run(a.init, size=a.size)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, a.steps)
    gen = torch.Generator().manual_seed(a.seed)
    start = time.time()
    for step in range(a.steps):
        idx = torch.randint(len(x), (a.batch,), generator=gen)
        i0, j0 = (int(v) for v in torch.randint(a.size - a.crop + 1, (2,), generator=gen))
        crop = (slice(None), slice(None), slice(i0, i0 + a.crop), slice(j0, j0 + a.crop))
        xb, yb = augment(x[idx][crop], y[idx][crop], rotation=180.0, flips=True, generator=gen)
        with bf16_autocast("cpu", True):
            logits = model(normalize(xb, "fundus"))
        loss = pseudo_label_loss(logits.float(), yb[:, :1], yb[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if (step + 1) % 50 == 0:
            print(f"step {step + 1}: loss {loss.item():.4f} ({time.time() - start:.0f} s)")
    recalibrate_batch_norm(model, x, batch=4)

    rows: dict[str, list[dict]] = {}
    for i in range(len(test)):
        s = test[i]
        xi = torch.from_numpy(resize_image(s.image, a.size)).permute(2, 0, 1)[None]
        prob = F.interpolate(predict_batch(model, xi, 1), size=s.fov.shape, mode="bilinear")
        prob = prob[0, 0].numpy() * s.fov
        region = eroded_fov(s.fov, 8)
        rank = {"network": prob, "sato": vesselness(s.image, s.fov, method="sato")}
        for name, score in list(rank.items()):
            rank[name] = np.zeros_like(prob)
            rank[name][region] = rankdata(score[region]) / region.sum()
        rank["mean rank"] = (rank["network"] + rank["sato"]) / 2
        rows.setdefault("network", []).append(image_metrics(prob, s, "vessels", 512))
        for name, score in rank.items():
            mask = (score > 1 - fraction).astype(np.float32)
            metrics = image_metrics(mask, s, "vessels", 512)
            metrics["auc"] = auc_roc(score, s.masks["vessels"], s.fov)
            rows.setdefault(f"{name} @ {fraction:.3f}", []).append(metrics)
    result = {"args": {k: str(v) for k, v in vars(a).items()}, "fraction": fraction,
              "seconds": time.time() - start,
              "rows": {k: summarize(v) for k, v in rows.items()}}  # fmt: skip
    for name, summary in result["rows"].items():
        dice, auc = summary["dice"], summary["auc"]
        print(f"{name:24s} Dice {dice['mean']:.3f} +- {dice['std']:.3f}  AUC {auc['mean']:.3f}")
    if a.out:
        a.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
