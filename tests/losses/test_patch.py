"""Patch embeddings and patch discrimination against direct float64 transcriptions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from localdisc.losses import (
    PatchDiscriminationLoss,
    flatten_patches,
    isl_loss,
    patch_discrimination_loss,
    patch_embeddings,
)
from reference_losses import reference_isl


def reference_patch_embeddings(v: torch.Tensor, grid: int) -> torch.Tensor:
    """Cell (u, w) averages rows floor(u H/g) .. ceil((u+1) H/g) - 1 (likewise columns)."""
    n, d, h, w = v.shape
    out = v.new_zeros(n, d, grid, grid)
    for u in range(grid):
        r0, r1 = (u * h) // grid, math.ceil((u + 1) * h / grid)
        for c in range(grid):
            c0, c1 = (c * w) // grid, math.ceil((c + 1) * w / grid)
            cell = v[:, :, r0:r1, c0:c1].mean(dim=(2, 3))
            out[:, :, u, c] = cell / cell.norm(dim=1, keepdim=True)
    return out


def reference_patch_loss(view1: torch.Tensor, view2: torch.Tensor, tau: float) -> torch.Tensor:
    m, _, g, _ = view1.shape
    first = [view1[i, :, u, w] for i in range(m) for u in range(g) for w in range(g)]
    second = [view2[i, :, u, w] for i in range(m) for u in range(g) for w in range(g)]
    return reference_isl(first + second, tau)


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("h", "w", "grid"), [(16, 16, 8), (13, 10, 4), (8, 8, 8), (9, 7, 1)])
def test_patch_embeddings_match_reference(seed, h, w, grid):
    v = F.normalize(rand(2, 5, h, w, seed=seed), dim=1).requires_grad_()
    got = patch_embeddings(v, grid)
    want = reference_patch_embeddings(v, grid)
    assert got.shape == (2, 5, grid, grid)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(2, grid, grid, dtype=torch.float64))
    w_out = rand(*got.shape, seed=seed + 100)
    (g_got,) = torch.autograd.grad((got * w_out).sum(), v)
    (g_want,) = torch.autograd.grad((want * w_out).sum(), v)
    torch.testing.assert_close(g_got, g_want)


def test_patch_embeddings_bf16_gives_float32():
    v = F.normalize(rand(1, 4, 16, 16, seed=0), dim=1).float()
    got = patch_embeddings(v.bfloat16())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, patch_embeddings(v.bfloat16().float()))


def test_flatten_patches_order():
    p = torch.arange(2 * 3 * 2 * 2).reshape(2, 3, 2, 2)
    flat = flatten_patches(p)
    assert flat.shape == (8, 3)
    for row, (m, u, w) in enumerate(
        (m, u, w) for m in range(2) for u in range(2) for w in range(2)
    ):
        assert torch.equal(flat[row], p[m, :, u, w])


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("m", "d", "g", "tau"), [(1, 4, 2, 0.1), (2, 3, 2, 0.1), (3, 4, 1, 0.3)])
def test_patch_loss_matches_reference(seed, m, d, g, tau):
    view1 = F.normalize(rand(m, d, g, g, seed=seed), dim=1).requires_grad_()
    view2 = F.normalize(rand(m, d, g, g, seed=seed + 50), dim=1).requires_grad_()
    got = patch_discrimination_loss(view1, view2, tau)
    want = reference_patch_loss(view1, view2, tau)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    g_got = torch.autograd.grad(got, (view1, view2))
    g_want = torch.autograd.grad(want, (view1, view2))
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_patch_loss_uses_the_aligned_cell_as_positive():
    # Identical views: every patch's positive coincides with it, so the loss must be below the
    # loss with view 2's grid rotated by 90 degrees (positives now point at other cells).
    view1 = F.normalize(rand(2, 16, 4, 4, seed=1), dim=1)
    aligned = patch_discrimination_loss(view1, view1.clone())
    rotated = patch_discrimination_loss(view1, torch.rot90(view1, 1, dims=(2, 3)))
    assert aligned < rotated - 0.5


def test_patch_loss_is_isl_of_concatenated_patches():
    view1 = F.normalize(rand(2, 3, 2, 2, seed=4), dim=1)
    view2 = F.normalize(rand(2, 3, 2, 2, seed=5), dim=1)
    x = torch.cat(
        [view1.permute(0, 2, 3, 1).reshape(-1, 3), view2.permute(0, 2, 3, 1).reshape(-1, 3)]
    )
    torch.testing.assert_close(patch_discrimination_loss(view1, view2, 0.2), isl_loss(x, 0.2))


def test_module_and_validation():
    view1 = F.normalize(rand(2, 3, 2, 2, seed=0), dim=1)
    view2 = F.normalize(rand(2, 3, 2, 2, seed=1), dim=1)
    mod = PatchDiscriminationLoss(tau=0.2)
    torch.testing.assert_close(mod(view1, view2), patch_discrimination_loss(view1, view2, 0.2))
    with pytest.raises(ValueError, match="same shape"):
        patch_discrimination_loss(view1, view2[:1])
    with pytest.raises(ValueError, match="grid"):
        patch_embeddings(torch.zeros(1, 2, 4, 4), grid=0)


def test_center_weights_peak_at_cell_centres_and_stay_inside_cells():
    from localdisc.losses.patch import center_weights

    w = center_weights(4, 32, 0.25)
    assert w.shape == (4, 32)
    assert torch.allclose(w.sum(1), torch.ones(4))
    for cell in range(4):
        inside = w[cell, cell * 8 : cell * 8 + 8]
        assert inside.sum() == pytest.approx(1.0)  # no weight outside the cell
        assert inside[3] == inside[4] == inside.max()  # the two centre pixels of 8
        # Pixel centres sit 0.5 (centre pixels) and 3.5 (border pixels) from the cell centre.
        ratio = math.exp(-0.5 * (3.5 / 2) ** 2) / math.exp(-0.5 * (0.5 / 2) ** 2)
        assert inside[0] == pytest.approx(inside.max().item() * ratio)
    # 0 gave NaN weights and a negative sigma was taken for its size (reviewer).
    for sigma in (0.0, -0.25, float("nan")):
        with pytest.raises(ValueError, match="center_sigma must be positive and finite"):
            center_weights(4, 32, sigma)


def test_center_sensitive_patches_change_more_when_the_centre_moves():
    """A patch embedding shifted by a few pixels stays more similar under uniform pooling."""
    torch.manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(1, 16, 64, 64), dim=1)
    # Smooth the field a little so that neighbouring pixels are related, as in a trained network.
    v = torch.nn.functional.avg_pool2d(v, 5, 1, 2)
    shifted = torch.roll(v, shifts=(3, 3), dims=(2, 3))
    uniform = (patch_embeddings(v, 4) * patch_embeddings(shifted, 4)).sum(1).mean()
    center = (patch_embeddings(v, 4, 0.25) * patch_embeddings(shifted, 4, 0.25)).sum(1).mean()
    assert center < uniform - 0.05
    # Centred on the same pixels, both poolings see the same content: identical embeddings.
    assert torch.allclose(patch_embeddings(v, 4, 0.25), patch_embeddings(v.clone(), 4, 0.25))
    # A very wide Gaussian is the uniform average.
    assert torch.allclose(patch_embeddings(v, 4, 1e6), patch_embeddings(v, 4), atol=1e-5)


def test_a_narrow_center_gaussian_weights_the_pixels_nearest_the_centre_not_nan():
    # Below about 0.04 px its exponentials were all 0 in a cell, and 0 / 0 made every patch
    # embedding NaN at sigma 5e-4 of a 56-px cell (reviewer).
    from localdisc.losses.patch import center_weights

    w = center_weights(8, 448, 5e-4)
    assert torch.isfinite(w).all() and torch.allclose(w.sum(1), torch.ones(8))
    assert torch.equal(w[0].nonzero().flatten(), torch.tensor([27, 28]))  # the centre is 28.0
    assert torch.allclose(w[0, 27:29], torch.tensor([0.5, 0.5]))
    v = torch.randn(1, 4, 448, 448)
    assert torch.isfinite(patch_embeddings(v, 8, center_sigma=5e-4)).all()
    # the default width, as before: exp(-d^2 / 2 (sigma side)^2) over the cell, summing to 1
    pos = torch.arange(56) + 0.5
    expected = torch.exp(-0.5 * ((pos - 28) / (0.25 * 56)) ** 2)
    assert torch.allclose(center_weights(8, 448, 0.25)[0, :56], expected / expected.sum())


@pytest.mark.parametrize(("cells", "length"), [(4, 10), (3, 9), (8, 12), (6, 9), (5, 7)])
def test_center_weights_give_every_pixel_to_exactly_one_cell(cells, length):
    # The support is that of uniform pooling: neighbouring patches share no pixel, so ISL
    # negatives stay independent (center_weights' docstring). With 4 cells over 10 pixels the
    # cell edges 2.5 and 7.5 fall on pixel centres, which a closed interval gave to two cells.
    from localdisc.losses.patch import center_weights

    w = center_weights(cells, length, 0.25)
    assert ((w > 0).sum(0) == 1).all()
    edges = torch.linspace(0, length, cells + 1)
    pos = torch.arange(length) + 0.5
    owner = torch.bucketize(pos, edges, right=True) - 1  # the cell whose [lo, hi) holds the centre
    assert torch.equal(w.argmax(0), owner)
    assert torch.allclose(w.sum(1), torch.ones(cells))


def test_center_sensitive_pooling_of_a_non_square_map_matches_a_direct_transcription():
    # Rows and columns have their own cell sides (4 and 6 pixels here): a 3:2 radiograph's map.
    torch.manual_seed(0)
    v = torch.randn(2, 3, 16, 24, dtype=torch.float64)
    grid, sigma = 4, 0.25
    got = patch_embeddings(v, grid, center_sigma=sigma)
    assert got.shape == (2, 3, grid, grid)

    def gaussian(side: int) -> torch.Tensor:
        d = torch.arange(side, dtype=torch.float64) + 0.5 - side / 2
        return torch.exp(-0.5 * (d / (sigma * side)) ** 2)

    kernel = gaussian(4)[:, None] * gaussian(6)[None, :]  # 2-D: outer product of the axes
    kernel = kernel / kernel.sum()
    want = torch.zeros_like(got)
    for u in range(grid):
        for c in range(grid):
            cell = v[:, :, 4 * u : 4 * u + 4, 6 * c : 6 * c + 6]
            want[:, :, u, c] = F.normalize((cell * kernel).sum((2, 3)), dim=1)
    torch.testing.assert_close(got, want)


def test_the_default_center_sigma_is_the_documented_width():
    # The paper does not publish its kernel (METHOD.md Sec. 6; TPAMI 2023 Sec. 6). localdisc's
    # documented choice (center_weights' docstring) is sigma = 0.25 of the cell side: the cell's
    # border still gets exp(-2) = 0.14 of the centre's weight, so the whole cell contributes.
    # The CLI's --center-sigma must offer the same width.
    import inspect

    from localdisc import cli
    from localdisc.losses.patch import CENTER_SIGMA, center_weights

    w = center_weights(1, 2000, CENTER_SIGMA)[0]  # pixel centres 0.5 px from the border
    assert (w[0] / w.max()).item() == pytest.approx(math.exp(-2), rel=5e-3)
    assert inspect.signature(cli.pretrain).parameters["center_sigma"].default.default == (
        CENTER_SIGMA
    )
