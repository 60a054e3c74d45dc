"""Mask discriminator for shape-guided clustering (METHOD.md section 5).

Chen et al. (TPAMI 2023) judge the clustering head's target channel against reference masks with
a small convolutional discriminator. The published one builds its LeakyReLU with slope 1.0, which
makes it linear (and so blind to shape); this one uses slope 0.2 between strided convolutions.
With ``coords=True`` it also sees where each pixel lies (CoordConv, Liu et al., NeurIPS 2018),
so that it can judge position: for anatomy with a standard pose, where a mask lies is part of
what makes it real.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MaskDiscriminator(nn.Module):
    """Maps a one-channel mask ``[N, 1, H, W]`` in ``[0, 1]`` to a real-vs-generated logit ``[N]``.

    Strided 4x4 convolutions halve the resolution ``depth`` times (a receptive field wide enough
    to see branching, not only edges); a global average turns the last map into one logit, so
    any input size works (a side below ``2 ** depth`` is first scaled up to it). ``coords`` adds
    two input channels, x and y in ``[-1, 1]``.
    """

    def __init__(
        self, width: int = 16, depth: int = 5, slope: float = 0.2, *, coords: bool = False
    ) -> None:
        super().__init__()
        self.coords = coords
        self.depth = depth
        layers: list[nn.Module] = []
        channels = 3 if coords else 1
        for i in range(depth):
            out = width * 2 ** min(i, 3)
            layers.append(nn.Conv2d(channels, out, 4, stride=2, padding=1, bias=i == 0))
            if i > 0:  # no normalisation on the input layer (the DCGAN convention)
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.LeakyReLU(slope, inplace=True))
            channels = out
        self.features = nn.Sequential(*layers)
        self.logit = nn.Linear(channels, 1)

    def forward(self, mask: Tensor) -> Tensor:
        if mask.dim() != 4 or mask.shape[1] != 1:
            raise ValueError(f"expected masks [N, 1, H, W], got {tuple(mask.shape)}")
        # Each convolution floors the side to half: below 2^depth (a training crop of 16) the
        # last one would get a 1-pixel map, smaller than its kernel. Scaled up, the shape stays.
        least = 2**self.depth
        if min(mask.shape[-2:]) < least:
            side = (max(mask.shape[-2], least), max(mask.shape[-1], least))
            mask = F.interpolate(mask, size=side, mode="bilinear", align_corners=False)
        if self.coords:
            n, _, h, w = mask.shape
            y = torch.linspace(-1.0, 1.0, h, device=mask.device, dtype=mask.dtype)
            x = torch.linspace(-1.0, 1.0, w, device=mask.device, dtype=mask.dtype)
            grid = torch.stack(torch.meshgrid(x, y, indexing="xy"), 0)  # [2, H, W]: x, y
            mask = torch.cat([mask, grid.expand(n, 2, h, w)], 1)
        return self.logit(self.features(mask).mean((2, 3))).squeeze(1)
