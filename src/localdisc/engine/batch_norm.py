"""Batch-norm statistics recomputed after training ("precise BN", Wu and Johnson, 2021).

Trained with batches of 2, a network's running statistics are a moving average over the last few
batches, i.e. over the few labelled images it saw, augmented. A segmenter fine-tuned on 2 images
then normalises every new image as if it were one of those two; recomputing the statistics over
more images of the same domain (no labels needed) fixes that ("Transfer at CPU scale" in
benchmarks/RESULTS.md).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from localdisc.data.views import normalize
from localdisc.models.segmenter import Segmenter


@torch.no_grad()
def recalibrate_batch_norm(model: Segmenter, images: Tensor, batch: int = 8) -> None:
    """Set every batch norm's running statistics to their average over ``images`` (raw [0, 1]
    ``[N, C, S, S]`` at the model size), one forward pass in batches of ``batch``; the weights do
    not change, and the model's mode and the layers' momenta are restored."""
    device = next(model.parameters()).device
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches of this pass
    was_training = model.training
    model.train()
    try:
        for start in range(0, images.shape[0], batch):
            model(normalize(images[start : start + batch].to(device), model.config.modality))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
