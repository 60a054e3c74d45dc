"""Adversarial shape prior on the target cluster (Chen et al., TPAMI 2023, shape-guided
clustering; METHOD.md section 5).

The generator term ``L_G = BCE(D(a_0), 1)`` pulls the clustering head's channel 0 towards masks the
discriminator ``D`` takes for real reference shapes; ``D`` learns ``BCE(real -> 1, a_0 -> 0)`` on
detached assignments. Both work on logits (``BCEWithLogits``: the same loss as BCE on
``sigmoid(logit)``, numerically stable).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["discriminator_loss", "generator_loss"]


def generator_loss(fake_logits: Tensor) -> Tensor:
    """``L_G = BCE(D(a_0), 1)``: mean over the batch of ``-log sigmoid(logit)``."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """``BCE(D(real), 1)`` and ``BCE(D(a_0), 0)`` over the pooled batch of both."""
    logits = torch.cat([real_logits, fake_logits])
    targets = torch.cat([torch.ones_like(real_logits), torch.zeros_like(fake_logits)])
    return F.binary_cross_entropy_with_logits(logits, targets)
