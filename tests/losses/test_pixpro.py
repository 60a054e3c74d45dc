"""PixPro: positive-pair geometry, propagation module and consistency loss against loops."""

from __future__ import annotations

import math

import pytest
import torch

from localdisc.losses.pixpro import (
    feature_cell_geometry,
    pixpro_consistency_loss,
    pixpro_positive_mask,
)
from localdisc.methods.base import PeerViews
from localdisc.models.projection import PixelPropagation, pixel_propagation


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def crop_theta(x0, y0, cw, ch, width, height, flip_x=False) -> torch.Tensor:
    """affine_grid matrix of an axis-aligned crop box (pixel units) resized to the view."""
    a = cw / width
    tx = (2 * x0 + cw) / width - 1
    if flip_x:
        a = -a
    return torch.tensor(
        [[a, 0.0, tx], [0.0, ch / height, (2 * y0 + ch) / height - 1]], dtype=torch.float64
    )


def reference_mask(box1, box2, grid, threshold=0.7, flip2=False):
    """Cell centres and bin diagonals of axis-aligned crops computed by hand, then Eq. 1."""
    h, w = grid

    def cells(box, flip):
        x0, y0, cw, ch = box
        out = []
        for a in range(h):
            for b in range(w):
                bx = (w - 1 - b) if flip else b
                out.append((x0 + (bx + 0.5) * cw / w, y0 + (a + 0.5) * ch / h))
        return out, math.hypot(cw / w, ch / h)

    c1, d1 = cells(box1, False)
    c2, d2 = cells(box2, flip2)
    mask = torch.zeros(h * w, h * w, dtype=torch.bool)
    for i, p in enumerate(c1):
        for j, q in enumerate(c2):
            mask[i, j] = math.dist(p, q) / max(d1, d2) < threshold
    return mask


def test_identical_views_pair_each_cell_with_itself_only():
    # Neighbouring cells are one bin side apart, i.e. 1/sqrt(2) = 0.707 > 0.7 diagonals for
    # square bins: only the diagonal survives.
    theta = crop_theta(10, 20, 64, 64, 100, 100).expand(2, 2, 3)
    mask = pixpro_positive_mask(theta, theta, (4, 4), (100, 100))
    assert torch.equal(mask, torch.eye(16, dtype=torch.bool).expand(2, 16, 16))
    # A slightly larger threshold admits the 4-neighbours, as the geometry says.
    loose = pixpro_positive_mask(theta, theta, (4, 4), (100, 100), threshold=0.71)
    assert loose[0].sum() == 16 + 2 * 2 * 4 * 3


def test_cells_in_the_padding_are_no_positives():
    # A view reaching past the image (here 40 px to its left) has cells in the zero padding;
    # two of them paired by distance alone, though neither shows the image.
    theta = crop_theta(-40, 10, 64, 64, 100, 100).expand(1, 2, 3)
    mask = pixpro_positive_mask(theta, theta, (4, 4), (100, 100))[0]
    # Cell centres at x = -32, -16, 0 (the edge: inside), 16: two columns of each row are out.
    outside = torch.tensor([b < 2 for a in range(4) for b in range(4)])
    assert not mask[outside].any() and not mask[:, outside].any()
    assert torch.equal(mask[~outside][:, ~outside], torch.eye(8, dtype=torch.bool))
    assert reference_mask((-40, 10, 64, 64), (-40, 10, 64, 64), (4, 4))[outside].any()


def test_flipped_view_pairs_mirrored_cells():
    t1 = crop_theta(0, 0, 80, 80, 80, 80)[None]
    t2 = crop_theta(0, 0, 80, 80, 80, 80, flip_x=True)[None]
    mask = pixpro_positive_mask(t1, t2, (3, 3), (80, 80))[0]
    want = torch.zeros(9, 9, dtype=torch.bool)
    for a in range(3):
        for b in range(3):
            want[a * 3 + b, a * 3 + (2 - b)] = True
    assert torch.equal(mask, want)
    assert torch.equal(mask, reference_mask((0, 0, 80, 80), (0, 0, 80, 80), (3, 3), flip2=True))


@pytest.mark.parametrize(
    ("box1", "box2", "grid"),
    [
        ((0, 0, 96, 96), (0, 0, 48, 48), (4, 4)),  # view 2 zooms into the top-left quarter
        ((8, 4, 60, 80), (30, 20, 50, 70), (3, 5)),  # partial overlap, rectangular bins
        ((0, 0, 40, 40), (56, 56, 40, 40), (2, 2)),  # disjoint crops: no positives
    ],
)
def test_mask_matches_hand_computed_crops(box1, box2, grid):
    t1 = crop_theta(*box1, 96, 96)[None]
    t2 = crop_theta(*box2, 96, 96)[None]
    got = pixpro_positive_mask(t1, t2, grid, (96, 96))[0]
    assert torch.equal(got, reference_mask(box1, box2, grid))
    if box2[0] == 56:
        assert not got.any()


def test_geometry_of_a_rotation_is_rigid():
    # A 90-degree rotation of the full image: cells map onto rotated cells, bins keep their size.
    rot = torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]], dtype=torch.float64)
    ident = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], dtype=torch.float64)
    c_rot, d_rot = feature_cell_geometry(rot, (4, 4), (64, 64))
    c_id, d_id = feature_cell_geometry(ident, (4, 4), (64, 64))
    torch.testing.assert_close(d_rot, d_id)
    torch.testing.assert_close(d_id, torch.tensor([math.hypot(16, 16)], dtype=torch.float64))
    mask = pixpro_positive_mask(ident, rot, (4, 4), (64, 64))[0]
    assert mask.sum(1).eq(1).all() and mask.sum(0).eq(1).all()  # a permutation
    j = mask.float().argmax(1)
    torch.testing.assert_close(c_rot[0, j], c_id[0])


def test_peer_views_report_the_geometry_they_sample():
    # End to end: a ramp image whose value is its own x (or y) pixel coordinate is resampled by
    # the view generator; at every output pixel the sampled value must equal the coordinate that
    # feature_cell_geometry assigns to that pixel (a cell per pixel), away from the borders.
    p, s = 64, 32
    coords = (torch.arange(p, dtype=torch.float64) + 0.5) / p  # pixel centres, / p into [0, 1]
    ramp = torch.stack([coords.expand(p, p), coords[:, None].expand(p, p)]).float()
    ramp = torch.cat([ramp, ramp[:1]])[None]  # 3 channels: x, y, x
    views = PeerViews(s, "fundus", crop_scale=(0.3, 0.6), jitter=False)
    batch = views(ramp, 4, gen(3))
    centres, _ = feature_cell_geometry(batch.theta, (s, s), (p, p))
    sampled = batch.raw[:, :2].flatten(2).transpose(1, 2).double() * p  # [4, s*s, (x, y)]
    inside = ((centres > 1.0) & (centres < p - 1.0)).all(-1)
    assert inside.float().mean() > 0.5
    torch.testing.assert_close(sampled[inside], centres[inside], atol=1e-3, rtol=0)


def reference_propagation(x, gx, gamma):
    n, _, h, w = x.shape
    out = torch.zeros_like(gx)
    for b in range(n):
        for i in range(h * w):
            xi = x[b, :, i // w, i % w]
            acc = torch.zeros_like(gx[b, :, 0, 0])
            for j in range(h * w):
                xj = x[b, :, j // w, j % w]
                cos = torch.dot(xi, xj) / (xi.norm() * xj.norm())
                acc = acc + torch.clamp(cos, min=0) ** gamma * gx[b, :, j // w, j % w]
            out[b, :, i // w, i % w] = acc
    return out


@pytest.mark.parametrize("gamma", [1.0, 2.0])
def test_pixel_propagation_matches_eq_3(gamma):
    g = gen(int(gamma))
    x = torch.randn(2, 5, 3, 2, generator=g, dtype=torch.float64)
    gx = torch.randn(2, 4, 3, 2, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        pixel_propagation(x, gx, gamma), reference_propagation(x, gx, gamma), rtol=1e-10,
        atol=1e-12,
    )  # fmt: skip
    # The module propagates the L2-normalised g(x_j), as the authors' code does.
    ppm = PixelPropagation(5, gamma=gamma, layers=1).double()
    gx_unit = torch.nn.functional.normalize(ppm.transform(x), dim=1)
    torch.testing.assert_close(
        ppm(x), reference_propagation(x, gx_unit, gamma), rtol=1e-10, atol=1e-12
    )
    assert len(PixelPropagation(5, layers=0).transform) == 0
    assert len(PixelPropagation(5, layers=2).transform) == 4  # conv, BN, ReLU, conv


def test_pixel_propagation_sums_unit_values_as_the_authors_code_does():
    # Guards the PPM against summing the raw g(x_j) (Xie et al., CVPR 2021, Eq. 3 as written):
    # the authors' featprop (zdaxie/PixPro, contrast/models/PixPro.py) L2-normalises g(x_j)
    # over channels first. Two cells x_1 = (1, 0) and x_2 = (3, 3), g the identity:
    # s(1, 1) = 1, s(1, 2) = max(cos 45 deg, 0) ** 2 = 0.5, s(2, 2) = 1, so
    # y_1 = 1 * (1, 0) + 0.5 * (0.7071, 0.7071) = (1.3536, 0.3536) and
    # y_2 = 0.5 * (1, 0) + 1 * (0.7071, 0.7071) = (1.2071, 0.7071); the raw sum gave
    # y_1 = (2.5, 1.5), at 31 deg from the first axis instead of the authors' 14.6 deg.
    x = torch.tensor([[1.0, 3.0], [0.0, 3.0]], dtype=torch.float64).view(1, 2, 1, 2)
    ppm = PixelPropagation(2, gamma=2.0, layers=0).double()
    r = math.sqrt(0.5)
    want = torch.tensor([[1 + 0.5 * r, 0.5 + r], [0.5 * r, r]], dtype=torch.float64)
    torch.testing.assert_close(ppm(x)[0, :, 0], want, rtol=0, atol=1e-12)
    # With gamma = 1 the off-diagonal weight is cos 45 deg itself.
    ppm1 = PixelPropagation(2, gamma=1.0, layers=0).double()
    torch.testing.assert_close(ppm1(x)[0, :, 0, 0], torch.tensor([1 + r * r, r * r]).double())


def reference_consistency(y1, k2, y2, k1, mask):
    """mean over images of (1/|P|) sum_{(i,j) in P} [-cos(y1_i, k2_j) - cos(y2_j, k1_i)]."""
    n, _, h, w = y1.shape

    def cell(t, b, i):
        return t[b, :, i // w, i % w]

    def cos(u, v):
        return torch.dot(u, v) / (u.norm() * v.norm())

    total = 0.0
    for b in range(n):
        pairs = [(i, j) for i in range(h * w) for j in range(h * w) if mask[b, i, j]]
        if not pairs:
            continue
        s = sum(
            -cos(cell(y1, b, i), cell(k2, b, j).detach())
            - cos(cell(y2, b, j), cell(k1, b, i).detach())
            for i, j in pairs
        )
        total = total + s / len(pairs)
    return total / n


def test_consistency_loss_matches_reference():
    g = gen(11)
    shape = (3, 4, 2, 3)
    y1, y2 = (torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_() for _ in "ab")
    k1, k2 = (torch.randn(*shape, generator=g, dtype=torch.float64) for _ in "ab")
    mask = torch.rand(3, 6, 6, generator=g) < 0.3
    mask[2] = False  # an image without positives contributes 0
    got = pixpro_consistency_loss(y1, k2, y2, k1, mask)
    want = reference_consistency(y1, k2, y2, k1, mask)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    g_got = torch.autograd.grad(got, (y1, y2))
    g_want = torch.autograd.grad(reference_consistency(y1, k2, y2, k1, mask), (y1, y2))
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_consistency_loss_is_minus_two_for_agreeing_pairs():
    g = gen(1)
    y = torch.randn(2, 4, 2, 2, generator=g)
    mask = torch.eye(4, dtype=torch.bool).expand(2, 4, 4)
    loss = pixpro_consistency_loss(y, 3.0 * y, y, 0.5 * y, mask)
    assert loss.item() == pytest.approx(-2.0, abs=1e-6)
    k = torch.randn(2, 4, 2, 2, generator=g, requires_grad=True)
    pixpro_consistency_loss(y.requires_grad_(), k, y, k, mask).backward()
    assert k.grad is None  # the momentum branch is a target
    with pytest.raises(ValueError, match="mask"):
        pixpro_consistency_loss(y, y, y, y, mask[:, :3])
