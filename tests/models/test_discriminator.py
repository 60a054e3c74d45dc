"""Tests for localdisc.models.discriminator: the MaskDiscriminator's layout and its inputs."""

from __future__ import annotations

import torch
from torch import nn

from localdisc.models.discriminator import MaskDiscriminator


def test_the_layout_is_dcgan_without_batch_norm_on_the_input_layer() -> None:
    # DCGAN (Radford et al., ICLR 2016): no batch norm on the discriminator's first layer, which
    # would normalise away the masks' own statistics; the later convolutions are followed by
    # one and so need no bias. The layout is also the state dict a saved run's discriminator
    # is resumed from: another one would not load.
    d = MaskDiscriminator()  # width 16, depth 5
    kinds = [type(m) for m in d.features]
    assert kinds == [nn.Conv2d, nn.LeakyReLU] + [nn.Conv2d, nn.BatchNorm2d, nn.LeakyReLU] * 4
    convs = [m for m in d.features if isinstance(m, nn.Conv2d)]
    assert [c.bias is not None for c in convs] == [True, False, False, False, False]
    assert [c.out_channels for c in convs] == [16, 32, 64, 128, 128]
    assert convs[0].in_channels == 1 and MaskDiscriminator(coords=True).features[0].in_channels == 3
    # conv 0: weight, bias; 4 x (conv weight + 5 batch-norm entries); the logit's weight, bias.
    assert len(d.state_dict()) == 2 + 4 * 6 + 2


def test_coordinates_are_x_then_y_across_the_mask() -> None:
    # CoordConv: channel 1 is x (along the width), channel 2 is y (along the height), so that a
    # non-square mask gets each coordinate along its own axis.
    d = MaskDiscriminator(coords=True).eval()
    seen = []
    d.features.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    with torch.no_grad():
        d(torch.zeros(2, 1, 32, 48))
    x, y = seen[0][0, 1], seen[0][0, 2]
    torch.testing.assert_close(x, torch.linspace(-1, 1, 48).expand(32, 48))
    torch.testing.assert_close(y, torch.linspace(-1, 1, 32)[:, None].expand(32, 48))
