"""The LD backbone: a VGG16-BN encoder at reduced width and a U-Net decoder (METHOD.md section 1).

Chen et al., "Unsupervised Local Discrimination for Medical Images", TPAMI 2023, use VGG16 with
batch norm at a quarter of the width: blocks of 3x3 conv + BN + ReLU with channels
[16,16 | 32,32 | 64,64,64 | 128,128,128 | 128,128,128], 2x2 max-pool between blocks, skips taken
before each pool. The decoder upsamples x2, concatenates the skip and applies two 3x3 conv + BN +
ReLU; its channels go 128 -> 64 -> 32 -> 16 and the final concatenation with the full-resolution
skip gives ``2 * width`` channels that both heads share (``3 * width`` at depth 2, which has no
decoder stage).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Convolutions per block and channel multipliers of VGG16 (relative to its first block).
VGG16_BLOCKS: tuple[tuple[int, int], ...] = ((2, 1), (2, 2), (3, 4), (3, 8), (3, 8))


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution (no bias: batch norm follows), batch norm and ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def upsample2(x: Tensor) -> Tensor:
    """Bilinear x2 upsampling (smoother per-pixel embeddings than nearest)."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class VGGEncoder(nn.Module):
    """VGG16-BN encoder returning one skip feature per block (scales 1, 1/2, ..., 1/16).

    Args:
        in_channels: 3 for fundus photographs, 1 for X-rays.
        width: channels of the first block (16 is the paper's quarter-width VGG16; 64 is VGG16).
        depth: how many of VGG16's five blocks to use (5 is the paper's). Fewer blocks shrink the
            receptive field (about 250 pixels with 5, 120 with 4, 50 with 3), which matters on
            images not much larger than it: there the network can read each pixel's position off
            the zero padding instead of learning what the tissue looks like.
    """

    def __init__(self, in_channels: int = 3, width: int = 16, depth: int = 5) -> None:
        super().__init__()
        if not 2 <= depth <= len(VGG16_BLOCKS):
            raise ValueError(f"depth must be 2 to {len(VGG16_BLOCKS)}, not {depth}")
        self.in_channels = in_channels
        self.width = width
        self.channels = [width * mult for _, mult in VGG16_BLOCKS[:depth]]
        blocks = []
        c_in = in_channels
        for n_convs, mult in VGG16_BLOCKS[:depth]:
            layers = []
            for _ in range(n_convs):
                layers.append(conv_bn_relu(c_in, width * mult))
                c_in = width * mult
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> list[Tensor]:
        skips = []
        for i, block in enumerate(self.blocks):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        return skips


class UNetDecoder(nn.Module):
    """U-Net decoder over the encoder's skips; returns ``out_channels`` at full resolution
    (``2 * width``; ``3 * width`` at depth 2, a bare concatenation)."""

    def __init__(self, encoder_channels: list[int]) -> None:
        super().__init__()
        # From the bottleneck upwards: each stage halves the channels of the skip one level up
        # (128 -> 64 -> 32 -> 16 for width 16); the last level is a bare concatenation.
        self.stages = nn.ModuleList()
        c_in = encoder_channels[-1]
        for skip_channels in reversed(encoder_channels[1:-1]):
            c_out = skip_channels // 2
            self.stages.append(
                nn.Sequential(conv_bn_relu(c_in + skip_channels, c_out), conv_bn_relu(c_out, c_out))
            )
            c_in = c_out
        self.out_channels = c_in + encoder_channels[0]

    def forward(self, skips: list[Tensor]) -> Tensor:
        x = skips[-1]
        for stage, skip in zip(self.stages, reversed(skips[1:-1]), strict=True):
            x = stage(torch.cat([upsample2(x), skip], 1))
        return torch.cat([upsample2(x), skips[0]], 1)


class VGGUNet(nn.Module):
    """Encoder + decoder: ``[N, C, H, W]`` (H, W multiples of 16) to full-resolution features."""

    def __init__(self, in_channels: int = 3, width: int = 16, depth: int = 5) -> None:
        super().__init__()
        self.encoder = VGGEncoder(in_channels, width, depth)
        self.decoder = UNetDecoder(self.encoder.channels)
        self.out_channels = self.decoder.out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))
