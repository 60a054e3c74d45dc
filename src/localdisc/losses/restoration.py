"""Models Genesis restoration loss: mean squared error between reconstruction and original.

Z. Zhou, V. Sodha, M. M. Rahman Siddiquee, R. Feng, N. Tajbakhsh, M. B. Gotway, J. Liang,
"Models Genesis: Generic Autodidactic Models for 3D Medical Image Analysis", MICCAI 2019; and
Z. Zhou, V. Sodha, J. Pang, M. B. Gotway, J. Liang, "Models Genesis", Medical Image Analysis 67,
2021. An encoder-decoder learns to restore the original image ``x`` from a corrupted copy
``T(x)`` (:mod:`localdisc.data.genesis`); the loss is the L2 (MSE) distance between the
restoration and ``x``, averaged over every pixel and channel of the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["restoration_loss"]


def restoration_loss(reconstruction: Tensor, target: Tensor) -> Tensor:
    """``mean((reconstruction - target) ** 2)`` over all elements, computed in float32 or wider.

    Args:
        reconstruction: ``[B, C, H, W]`` network output (Models Genesis ends in a sigmoid, so
            both are in [0, 1]).
        target: the uncorrupted images, same shape (no gradient is expected through it).
    """
    if reconstruction.shape != target.shape:
        raise ValueError(
            f"shape mismatch: reconstruction {tuple(reconstruction.shape)}, "
            f"target {tuple(target.shape)}"
        )
    dtype = torch.promote_types(reconstruction.dtype, torch.float32)
    with torch.autocast(device_type=reconstruction.device.type, enabled=False):
        return F.mse_loss(reconstruction.to(dtype), target.to(dtype))
