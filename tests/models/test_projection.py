"""Projection heads of SimCLR, DenseCL and PixPro against the papers' definitions.

See the docstring of :mod:`localdisc.models.projection` for the sources: SimCLR Sec. 2.1 (global
average pooling + MLP), DenseCL Sec. 3.2 and PixPro Sec. 3 (1x1 conv heads; PixPro's with BN),
PixPro Eq. 3-4 (pixel propagation, gamma = 2, ``g`` linear or with BN + ReLU between layers).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from localdisc.models.projection import (
    DenseProjectionHead,
    PixelPropagation,
    ProjectionHead,
    pixel_propagation,
)


def kinds(module: nn.Sequential) -> list[type]:
    return [type(m) for m in module]


@pytest.mark.parametrize("batch_norm", [False, True])
def test_the_global_head_average_pools_the_map(batch_norm):
    # Global average pooling (SimCLR's h = the ResNet's pooled output): the head of a map is the
    # head of its mean over the cells. A max pool gives the same shapes and other numbers.
    torch.manual_seed(0)
    head = ProjectionHead(4, 8, 3, batch_norm=batch_norm).eval()
    fmap = torch.randn(2, 4, 3, 5)
    mean = fmap.mean(dim=(2, 3))
    torch.testing.assert_close(head(fmap), head(mean[:, :, None, None]))  # 1x1: any pool agrees
    torch.testing.assert_close(head(fmap), head(mean))


def test_batch_norm_follows_the_first_layer_of_the_heads_that_ask_for_it():
    assert kinds(DenseProjectionHead(4, 8, 3, batch_norm=True).net) == [
        nn.Conv2d,
        nn.BatchNorm2d,
        nn.ReLU,
        nn.Conv2d,
    ]  # PixPro: conv 1x1 - BN - ReLU - conv 1x1
    assert kinds(DenseProjectionHead(4, 8, 3).net) == [nn.Conv2d, nn.ReLU, nn.Conv2d]  # DenseCL
    assert kinds(ProjectionHead(4, 8, 3, batch_norm=True).mlp) == [
        nn.Linear,
        nn.BatchNorm1d,
        nn.ReLU,
        nn.Linear,
    ]
    assert kinds(ProjectionHead(4, 8, 3).mlp) == [nn.Linear, nn.ReLU, nn.Linear]


@pytest.mark.parametrize("head_type", [DenseProjectionHead, ProjectionHead])
def test_a_head_with_batch_norm_ignores_a_shift_of_its_input_in_training(head_type):
    # Batch norm in training removes each channel's batch mean after the first layer, so a shift
    # of the input by one vector (which the linear layer turns into one vector) cannot show.
    torch.manual_seed(0)
    x = torch.randn(4, 3, 2, 2)
    shift = torch.tensor([5.0, -3.0, 2.0])[None, :, None, None]
    with_bn = head_type(3, 6, 2, batch_norm=True).train()
    torch.testing.assert_close(with_bn(x + shift), with_bn(x), rtol=1e-4, atol=1e-4)
    without = head_type(3, 6, 2).train()
    assert not torch.allclose(without(x + shift), without(x), atol=1e-2)


def test_the_propagation_transform_is_linear_or_has_bn_and_relu_between_its_layers():
    # PixPro Sec. 3: g is a linear layer (the best) or a stack with BN + ReLU between layers.
    assert kinds(PixelPropagation(8).transform) == [nn.Conv2d]
    assert PixelPropagation(8).transform[0].bias is not None
    assert kinds(PixelPropagation(8, layers=2).transform) == [
        nn.Conv2d,
        nn.BatchNorm2d,
        nn.ReLU,
        nn.Conv2d,
    ]
    assert kinds(PixelPropagation(8, layers=3).transform) == [
        nn.Conv2d,
        nn.BatchNorm2d,
        nn.ReLU,
        nn.Conv2d,
        nn.BatchNorm2d,
        nn.ReLU,
        nn.Conv2d,
    ]
    assert len(PixelPropagation(8, layers=0).transform) == 0  # g the identity
    # One layer is an affine map in training too (no batch norm or ReLU after it).
    torch.manual_seed(0)
    g = PixelPropagation(4).train().transform
    x, y = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(g(x + y) + g(torch.zeros_like(x)), g(x) + g(y))


def reference_propagation(x: torch.Tensor, gx: torch.Tensor, gamma: float) -> torch.Tensor:
    """PixPro Eq. 3-4 cell by cell: y_i = sum_j max(cos(x_i, x_j), 0) ** gamma g(x_j)/|g(x_j)|."""
    n, _, h, w = x.shape
    xs, gs = x.flatten(2).double(), F.normalize(gx.flatten(2).double(), dim=1)
    y = torch.zeros(n, gx.shape[1], h * w, dtype=torch.float64)
    for b in range(n):
        for i in range(h * w):
            for j in range(h * w):
                s = F.cosine_similarity(xs[b, :, i], xs[b, :, j], dim=0).clamp_min(0) ** gamma
                y[b, :, i] += s * gs[b, :, j]
    return y.reshape(n, -1, h, w)


def test_pixel_propagation_defaults_to_the_paper_s_gamma_of_2():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 3)
    ppm = PixelPropagation(4, layers=0)
    assert ppm.gamma == 2.0
    want = reference_propagation(x, x, 2.0).float()
    torch.testing.assert_close(ppm(x), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pixel_propagation(x, F.normalize(x, dim=1)), want)
    # and the gamma it is given
    torch.testing.assert_close(
        PixelPropagation(4, gamma=1.0, layers=0)(x),
        reference_propagation(x, x, 1.0).float(),
        rtol=1e-5,
        atol=1e-5,
    )


def test_a_negative_number_of_layers_is_refused():
    with pytest.raises(ValueError, match="layers must be >= 0"):
        PixelPropagation(4, layers=-1)
