"""Projection heads of the peer methods (SimCLR, DenseCL, PixPro), on the LD encoder's features.

All heads read the deepest feature map of the VGG encoder (``model.encoder(x)[-1]``: 128 channels
at 1/16 of the input side for the paper's quarter-width VGG16-BN), the counterpart of the ResNet
C5 map the papers use.

- :class:`ProjectionHead`: global average pooling + MLP with one hidden layer,
  ``z = W2 ReLU(W1 h)`` (Chen et al., "A Simple Framework for Contrastive Learning of Visual
  Representations", ICML 2020, Sec. 2.1; also MoCo v2's head, which DenseCL's global branch uses).
  Optional batch norm after the hidden layer.
- :class:`DenseProjectionHead`: the same MLP as 1x1 convolutions, one output vector per feature
  cell (Wang et al., "Dense Contrastive Learning for Self-Supervised Visual Pre-Training", CVPR
  2021, Sec. 3.2: conv 1x1 - ReLU - conv 1x1; Xie et al., "Propagate Yourself: Exploring
  Pixel-Level Consistency for Unsupervised Visual Representation Learning", CVPR 2021, Sec. 3:
  conv 1x1 - BN - ReLU - conv 1x1).
- :class:`PixelPropagation`: PixPro's pixel propagation module (PPM), Xie et al. Eq. 3-4:
  ``y_i = sum_j s(x_i, x_j) g(x_j) / |g(x_j)|`` over all cells ``j`` of the same view, with
  ``s(x_i, x_j) = max(cos(x_i, x_j), 0) ** gamma`` (gamma = 2) and ``g`` a stack of ``layers``
  1x1 convolutions with BN + ReLU between successive ones (the paper's best is one layer, i.e.
  a plain linear map). The L2 normalisation of ``g(x_j)`` over channels follows the authors'
  released code (zdaxie/PixPro, ``contrast/models/PixPro.py``, ``featprop``); the paper's Eq. 3
  shows none.

Widths: the papers' heads keep the backbone width in the hidden layer (2048 -> 2048 -> 128 for
SimCLR and MoCo v2/DenseCL) or double it (BYOL-style 2048 -> 4096 -> 256 for PixPro); the objectives
in :mod:`localdisc.methods` choose the hidden and output widths for the 128-channel encoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DenseProjectionHead", "PixelPropagation", "ProjectionHead", "pixel_propagation"]


class ProjectionHead(nn.Module):
    """Global head: average-pool ``[N, C, H, W]`` to ``[N, C]``, then Linear-(BN)-ReLU-Linear.

    Args:
        in_dim: channels of the feature map.
        hidden_dim: width of the hidden layer.
        out_dim: output dimension (not normalised here: the losses normalise).
        batch_norm: add a ``BatchNorm1d`` after the hidden linear layer (SimCLR's paper formula
            and MoCo v2 have none).
    """

    def __init__(
        self, in_dim: int, hidden_dim: int, out_dim: int, *, batch_norm: bool = False
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim, bias=not batch_norm)]
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers += [nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)]
        self.mlp = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        """``[N, C, H, W]`` feature map (or already pooled ``[N, C]``) -> ``[N, out_dim]``."""
        if features.dim() == 4:
            features = features.mean(dim=(2, 3))
        return self.mlp(features)


class DenseProjectionHead(nn.Module):
    """Dense head: 1x1 conv - (BN) - ReLU - 1x1 conv, ``[N, C, H, W]`` -> ``[N, out_dim, H, W]``.

    Args:
        in_dim, hidden_dim, out_dim: channel widths.
        batch_norm: ``BatchNorm2d`` after the first convolution (PixPro: yes; DenseCL: no).
    """

    def __init__(
        self, in_dim: int, hidden_dim: int, out_dim: int, *, batch_norm: bool = False
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_dim, hidden_dim, 1, bias=not batch_norm)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(hidden_dim))
        layers += [nn.ReLU(inplace=True), nn.Conv2d(hidden_dim, out_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)


def pixel_propagation(x: Tensor, gx: Tensor, gamma: float = 2.0) -> Tensor:
    """PixPro Eq. 3-4: ``y_i = sum_j max(cos(x_i, x_j), 0) ** gamma * gx_j`` within each image.

    Args:
        x: ``[N, C, H, W]`` features whose cosine similarities weight the propagation.
        gx: ``[N, C', H, W]`` transformed features ``g(x)`` that are propagated.
        gamma: sharpness exponent (paper: 2).

    Returns:
        ``[N, C', H, W]``; the sum is not normalised (the paper's Eq. 3 is a plain sum; the
        consistency loss compares directions only). ``gx`` is used as given:
        :class:`PixelPropagation` passes it L2-normalised, as the authors' code does.
    """
    n, c, h, w = x.shape
    xn = F.normalize(x.reshape(n, c, h * w), dim=1)
    sim = torch.bmm(xn.transpose(1, 2), xn).clamp_min(0.0).pow(gamma)  # [N, HW_i, HW_j]
    y = torch.bmm(gx.reshape(n, gx.shape[1], h * w), sim.transpose(1, 2))  # [N, C', HW_i]
    return y.reshape(n, gx.shape[1], h, w)


class PixelPropagation(nn.Module):
    """PixPro's pixel propagation module: ``y_i = sum_j s(x_i, x_j) g(x_j) / |g(x_j)|``.

    Xie et al., "Propagate Yourself", CVPR 2021, Eq. 3-4, as the authors' released code computes
    it (zdaxie/PixPro, ``contrast/models/PixPro.py``, ``featprop``: ``F.normalize(
    self.value_transform(feat), dim=1)``): each transformed cell ``g(x_j)`` is L2-normalised over
    channels before the similarity-weighted sum, where Eq. 3 of the paper shows no normalisation.
    Without it a cell of large norm outweighs its more similar neighbours and turns the direction
    of ``y_i``, which is all the consistency loss compares.

    Args:
        channels: feature channels (the projection head's output).
        gamma: exponent of the similarity ``s = max(cos, 0) ** gamma`` (paper: 2).
        layers: number of 1x1 convolutions in ``g`` (paper's ablation: 0, 1 or 2; 1 is best);
            BN + ReLU sit between successive layers. ``0`` makes ``g`` the identity.
    """

    def __init__(self, channels: int, gamma: float = 2.0, layers: int = 1) -> None:
        super().__init__()
        if layers < 0:
            raise ValueError(f"layers must be >= 0, got {layers}")
        self.gamma = gamma
        modules: list[nn.Module] = []
        for k in range(layers):
            last = k == layers - 1
            modules.append(nn.Conv2d(channels, channels, 1, bias=last))
            if not last:
                modules += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.transform = nn.Sequential(*modules)

    def forward(self, x: Tensor) -> Tensor:
        """``[N, C, H, W]`` projected features -> ``[N, C, H, W]`` propagated features."""
        return pixel_propagation(x, F.normalize(self.transform(x), dim=1), self.gamma)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"
