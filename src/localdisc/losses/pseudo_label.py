"""Loss for training on uncertain pseudo-labels: the refinement step of shape-guided clustering
(Chen et al., TPAMI 2023, Sec. on unsupervised segmentation; METHOD.md section 5).

Each pixel has a label and a weight in [0, 1] (how sure the label is); unsure pixels count less
in both terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["pseudo_label_loss"]


def pseudo_label_loss(logits: Tensor, label: Tensor, weight: Tensor) -> Tensor:
    """Weighted BCE (mean over the weight) + weighted soft Dice loss, all ``[N, 1, H, W]``.

    Dice term per image: ``1 - 2 sum(w y p) / (sum(w y) + sum(w p) + 1)`` with ``p`` the sigmoid
    of ``logits``; averaged over the batch.
    """
    prob = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, label, weight=weight, reduction="sum")
    bce = bce / weight.sum().clamp_min(1.0)
    dims = (1, 2, 3)
    inter = (weight * label * prob).sum(dims)
    dice = 1 - 2 * inter / ((weight * label).sum(dims) + (weight * prob).sum(dims) + 1)
    return bce + dice.mean()
