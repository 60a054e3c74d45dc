"""The VGG16-BN encoder and U-Net decoder against VGG16's definition (models/vgg_unet.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from localdisc.models.vgg_unet import VGGEncoder, VGGUNet


def test_the_encoder_downsamples_by_max_pooling_as_vgg16_does():
    # VGG16 pools by 2x2 max between blocks (module docstring); an average pool would run and
    # give features of the same shape, and weights trained with one read by the other silently.
    torch.manual_seed(0)
    enc = VGGEncoder(1, 4, 3).eval()
    skips = enc(torch.randn(2, 1, 16, 16))
    with torch.no_grad():
        for i in (1, 2):
            want = enc.blocks[i](F.max_pool2d(skips[i - 1], 2))
            torch.testing.assert_close(skips[i], want, rtol=0, atol=0)
    # What a max pool keeps: a lone bright cell of a stage's output reaches the next stage whole.
    bare = VGGEncoder(1, 4, 2)
    bare.blocks = torch.nn.ModuleList([torch.nn.Identity(), torch.nn.Identity()])
    x = torch.zeros(1, 4, 8, 8)
    x[0, :, 5, 2] = 1.0
    pooled = bare(x)[1]
    assert pooled.shape == (1, 4, 4, 4)
    assert pooled[0, :, 2, 1].tolist() == [1.0] * 4 and pooled.sum() == 4.0


@pytest.mark.parametrize("depth", [0, 1, 6])
def test_a_depth_outside_2_to_5_is_refused(depth):
    # Depth 1 has no pool and no decoder stage: the decoder concatenated the upsampled full-
    # resolution skip with itself at twice the size, a shape error at the first forward pass.
    with pytest.raises(ValueError, match="depth must be 2 to 5, not"):
        VGGEncoder(1, 4, depth)
    with pytest.raises(ValueError, match="depth must be 2 to 5, not"):
        VGGUNet(1, 4, depth)


def test_the_shallowest_allowed_depth_runs():
    net = VGGUNet(1, 4, depth=2).eval()
    assert net(torch.zeros(1, 1, 16, 16)).shape == (1, net.out_channels, 16, 16)
