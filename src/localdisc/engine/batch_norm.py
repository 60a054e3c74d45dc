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
from localdisc.models.modes import in_mode
from localdisc.models.segmenter import Segmenter


@torch.no_grad()
def recalibrate_batch_norm(model: Segmenter, images: Tensor, batch: int = 8) -> None:
    """Set every batch norm's running statistics to those of its inputs over all of ``images``
    (raw [0, 1] ``[N, C, S, S]`` at the model size), from one forward pass in batches of ``batch``.

    ``running_mean`` is the mean and ``running_var`` the unbiased variance of each channel over
    every image and pixel, as if the images were one batch: the batches' statistics are pooled
    by their sizes, so a short last batch's images weigh what the others' do. (During the pass
    each layer still normalises with its batch's statistics, as in training, so a deeper layer's
    inputs depend a little on ``batch``.) The weights do not change; the model's mode and the
    layers' momenta are restored.
    """
    device = next(model.parameters()).device
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    sizes: dict[nn.Module, int] = {}  # values per channel a layer saw in this batch

    def note_size(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        sizes[module] = args[0].numel() // args[0].shape[1]

    hooks = [m.register_forward_pre_hook(note_size) for m in norms]
    # Per layer: values seen, their mean and sum of squared deviations (float64: summed over
    # millions of pixels).
    seen = [0] * len(norms)
    means = [m.running_mean.new_zeros(m.num_features, dtype=torch.float64) for m in norms]
    squares = [mean.clone() for mean in means]
    for m in norms:
        m.reset_running_stats()
        m.momentum = 1.0  # the running statistics become this batch's, pooled below
    try:
        with in_mode(model, training=True):  # each submodule in its own mode after
            for start in range(0, images.shape[0], batch):
                sizes.clear()
                model(normalize(images[start : start + batch].to(device), model.config.modality))
                for i, m in enumerate(norms):
                    n = sizes.get(m, 0)
                    if n == 0:  # a layer this forward did not use
                        continue
                    # Chan et al.'s pairwise update; running_var is the batch's unbiased variance
                    total = seen[i] + n
                    delta = m.running_mean.double() - means[i]
                    means[i] += delta * (n / total)
                    squares[i] += m.running_var.double() * (n - 1) + delta**2 * (
                        seen[i] * n / total
                    )
                    seen[i] = total
        for m, count, mean, square in zip(norms, seen, means, squares, strict=True):
            if count > 1:
                m.running_mean.copy_(mean)
                m.running_var.copy_(square / (count - 1))
    finally:
        for hook in hooks:
            hook.remove()
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
