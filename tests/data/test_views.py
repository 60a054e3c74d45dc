"""Tests for the batched two-view + mix generator (localdisc.data.views)."""

from __future__ import annotations

import colorsys
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import IMAGENET_MEAN, IMAGENET_STD
from localdisc.data.views import (
    LDViews,
    adjust_hue,
    apply_view2,
    color_jitter,
    denormalize,
    normalize,
    undo_view2,
)
from localdisc.errors import InputError

# Settings that switch every photometric change off.
NO_JITTER = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, grayscale_p=0.0)
# ... and every geometric change too (views equal the input when P == S).
NO_GEOMETRY = dict(
    crop_scale=(1.0, 1.0),
    crop_ratio=(1.0, 1.0),
    rotation=0.0,
    view_rotation=0.0,
    flip_p=0.0,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def blobs(b: int, c: int, p: int, seed: int) -> torch.Tensor:
    """``[b, c, p, p]`` float images in [0, 1]: random coloured Gaussian blobs on black.

    Asymmetric structure, so any flip or rotation changes the image.
    """
    g = gen(seed)
    yy, xx = torch.meshgrid(torch.arange(p) + 0.5, torch.arange(p) + 0.5, indexing="ij")
    out = torch.zeros(b, c, p, p)
    for _ in range(6):
        centre = torch.rand(b, 2, generator=g) * p
        sigma = (0.08 + 0.12 * torch.rand(b, generator=g)) * p
        amp = 0.2 + 0.8 * torch.rand(b, c, generator=g)
        d2 = (xx - centre[:, 0, None, None]) ** 2 + (yy - centre[:, 1, None, None]) ** 2
        out += amp[:, :, None, None] * torch.exp(-d2 / (2 * sigma[:, None, None] ** 2))[:, None]
    return out.clamp(0, 1)


def by_hand_view2(x: torch.Tensor, flip: torch.Tensor, rot_k: torch.Tensor) -> torch.Tensor:
    """Reference for view 2's extra transform, one item at a time with torch.flip/rot90."""
    out = []
    for xi, f, k in zip(x, flip.tolist(), rot_k.tolist(), strict=True):
        if f:
            xi = torch.flip(xi, dims=(-2, -1))
        out.append(torch.rot90(xi, k, dims=(-2, -1)))
    return torch.stack(out)


def pool8(x: torch.Tensor) -> torch.Tensor:
    return F.adaptive_avg_pool2d(x, 8)


# ------------------------------------------------------------------------------------------
# Shapes, order, reproducibility
# ------------------------------------------------------------------------------------------


def test_shapes_dtypes() -> None:
    b = 3
    out = LDViews(32)(blobs(b, 3, 40, 0), blobs(b, 3, 40, 1), gen(0))
    assert out.images.shape == (5 * b, 3, 32, 32)
    assert out.images.dtype == torch.float32
    assert out.lam.shape == (b,) and out.lam.dtype == torch.float32
    assert out.flip.shape == (2 * b,) and out.flip.dtype == torch.bool
    assert out.rot_k.shape == (2 * b,) and out.rot_k.dtype == torch.int64
    assert out.raw is None
    assert out.batch_size == b
    assert torch.isfinite(out.images).all()


def test_order_of_blocks_with_identity_geometry() -> None:
    # With no geometry and no jitter (P == S) every view is its input, so each block of the
    # output must be exactly the expected input, in the documented order.
    b = 2
    x1, x2 = blobs(b, 3, 32, 0), blobs(b, 3, 32, 1)
    out = LDViews(32, keep_raw=True, **NO_GEOMETRY, **NO_JITTER)(x1, x2, gen(3))
    raw = out.raw
    assert raw is not None
    torch.testing.assert_close(raw[:b], x1, atol=1e-6, rtol=0)
    torch.testing.assert_close(raw[b : 2 * b], x2, atol=1e-6, rtol=0)
    x12 = torch.cat([x1, x2])
    torch.testing.assert_close(
        raw[2 * b : 4 * b], by_hand_view2(x12, out.flip, out.rot_k), atol=1e-6, rtol=0
    )
    lam = out.lam.view(b, 1, 1, 1)
    torch.testing.assert_close(raw[4 * b :], lam * x1 + (1 - lam) * x2, atol=1e-6, rtol=0)


def test_same_seed_same_output_and_different_seed_differs() -> None:
    x1, x2 = blobs(2, 3, 40, 0), blobs(2, 3, 40, 1)
    views = LDViews(32)
    a, b = views(x1, x2, gen(7)), views(x1, x2, gen(7))
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.lam, b.lam) and torch.equal(a.flip, b.flip)
    assert torch.equal(a.rot_k, b.rot_k)
    c = views(x1, x2, gen(8))
    assert not torch.allclose(a.images, c.images)


def test_uint8_and_float_input_agree() -> None:
    x1 = (blobs(2, 3, 40, 0) * 255).round().to(torch.uint8)
    x2 = (blobs(2, 3, 40, 1) * 255).round().to(torch.uint8)
    views = LDViews(32)
    from_u8 = views(x1, x2, gen(1))
    from_float = views(x1.float() / 255, x2.float() / 255, gen(1))
    torch.testing.assert_close(from_u8.images, from_float.images, atol=1e-5, rtol=0)


def test_parameter_distributions() -> None:
    views = LDViews(32)
    x1, x2 = blobs(4, 3, 40, 0), blobs(4, 3, 40, 1)
    lams, flips, ks = [], [], []
    for seed in range(40):
        out = views(x1, x2, gen(seed))
        lams.append(out.lam)
        flips.append(out.flip)
        ks.append(out.rot_k)
    lam, flip, k = torch.cat(lams), torch.cat(flips), torch.cat(ks)
    assert lam.min() >= 0.2 and lam.max() <= 0.8
    assert lam.min() < 0.3 and lam.max() > 0.7
    assert 0.3 < flip.float().mean() < 0.7
    assert set(k.tolist()) == {0, 1, 2, 3}


# ------------------------------------------------------------------------------------------
# View 2's flip/rot90 and its inverse
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_each_flip_rot_combination_is_undone_exactly(flip: bool, k: int) -> None:
    grid = torch.randn(3, 5, 8, 8, generator=gen(k + 4 * flip))
    fl = torch.full((3,), flip)
    kk = torch.full((3,), k)
    turned = by_hand_view2(grid, fl, kk)
    assert torch.equal(apply_view2(grid, fl, kk), turned)
    assert torch.equal(undo_view2(turned, fl, kk), grid)
    # Flipping both axes is a 180-degree turn, so (flip, k=2) is the identity; every other
    # non-trivial pair really moves cells (the round trip above cannot pass by doing nothing).
    if (k + 2 * flip) % 4:
        assert not torch.equal(turned, grid)


def test_undo_view2_mixed_batch_and_literal_example() -> None:
    # All 8 combinations in one batch (the vectorised path), against the per-item reference.
    flip = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1], dtype=torch.bool)
    k = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    grid = torch.randn(8, 4, 8, 8, generator=gen(0))
    turned = by_hand_view2(grid, flip, k)
    assert torch.equal(apply_view2(grid, flip, k), turned)
    assert torch.equal(undo_view2(turned, flip, k), grid)
    # A literal 2x2 case, independent of torch.rot90: k=1 turns [[0,1],[2,3]] counter-clockwise,
    # a flip of both axes reverses it.
    g = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).view(1, 1, 2, 2)
    rot1 = apply_view2(g, torch.tensor([False]), torch.tensor([1]))
    assert rot1.flatten().tolist() == [1.0, 3.0, 0.0, 2.0]
    flipped = apply_view2(g, torch.tensor([True]), torch.tensor([0]))
    assert flipped.flatten().tolist() == [3.0, 2.0, 1.0, 0.0]


def test_undo_view2_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        undo_view2(torch.zeros(4, 2, 8, 8), torch.zeros(3, dtype=torch.bool), torch.zeros(3))
    with pytest.raises(ValueError):
        undo_view2(torch.zeros(2, 2, 8, 4), torch.zeros(2, dtype=torch.bool), torch.zeros(2))


def test_view2_grid_matches_view1_after_undo_without_view_noise() -> None:
    # Shared geometry only (no per-view rotation, no jitter): view 2 is view 1 turned exactly, so
    # after undo its 8x8 grid equals view 1's grid; before undo it mostly does not.
    b = 4
    views = LDViews(64, **NO_JITTER, view_rotation=0.0)
    moved = 0
    for seed in range(5):
        out = views(blobs(b, 3, 80, seed), blobs(b, 3, 80, 100 + seed), gen(seed))
        g1 = pool8(out.images[: 2 * b])
        g2 = pool8(out.images[2 * b : 4 * b])
        torch.testing.assert_close(undo_view2(g2, out.flip, out.rot_k), g1, atol=1e-5, rtol=0)
        turned = ((out.rot_k + 2 * out.flip.long()) % 4) != 0
        moved += int(turned.sum())
        if turned.any():
            assert (g2[turned] - g1[turned]).abs().amax() > 0.1
    assert moved > 0


def _corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation per item of two [N, ...] tensors."""
    a = a.flatten(1) - a.flatten(1).mean(1, keepdim=True)
    b = b.flatten(1) - b.flatten(1).mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-12)


def test_undo_restores_correspondence_with_full_augmentation() -> None:
    # Default (published) augmentation: the per-view rotation and colour jitter make the views
    # differ, but after undo the 8x8 grids still correspond far better than before.
    b = 4
    views = LDViews(64, keep_raw=True)
    after, before = [], []
    for seed in range(25):
        out = views(blobs(b, 3, 80, seed), blobs(b, 3, 80, 500 + seed), gen(seed))
        raw = out.raw
        assert raw is not None
        g1, g2 = pool8(raw[: 2 * b]), pool8(raw[2 * b : 4 * b])
        turned = ((out.rot_k + 2 * out.flip.long()) % 4) != 0
        # Luma, so that a grayscale view is compared like with like.
        gray = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        l1, l2 = (g1 * gray).sum(1), (g2 * gray).sum(1, keepdim=True)
        l2_undone = undo_view2(l2, out.flip, out.rot_k)[:, 0]
        after.append(_corr(l1, l2_undone))
        before.append(_corr(l1, l2[:, 0])[turned])
        # The per-view rotation and jitter really act: the views are not identical after undo.
        assert not torch.allclose(l1, l2_undone, atol=1e-3)
    after_c, before_c = torch.cat(after), torch.cat(before)
    assert after_c.mean() > 0.9 and after_c.min() > 0.8
    assert before_c.numel() > 20
    assert before_c.mean() < after_c.mean() - 0.4


# ------------------------------------------------------------------------------------------
# Geometry
# ------------------------------------------------------------------------------------------


def test_zero_rotation_full_crop_is_identity() -> None:
    x = blobs(2, 3, 32, 5)
    out = LDViews(32, keep_raw=True, **NO_GEOMETRY, **NO_JITTER)(x, x.flip(0), gen(0))
    assert out.raw is not None
    torch.testing.assert_close(out.raw[:2], x, atol=1e-6, rtol=0)


def test_full_crop_resize_matches_bilinear_interpolation() -> None:
    x = blobs(2, 3, 48, 6)
    out = LDViews(32, keep_raw=True, **NO_GEOMETRY, **NO_JITTER)(x, x, gen(0))
    assert out.raw is not None
    ref = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out.raw[:2], ref, atol=1e-5, rtol=0)


def test_crop_scale_sets_the_sampling_step() -> None:
    # A linear ramp is reproduced exactly by bilinear sampling, so the output's slope per pixel
    # is (crop side / S) times the input's. crop_scale is an AREA fraction: the side is
    # sqrt(0.64) * 32 = 25.6 input pixels, not 0.64 * 32.
    p = s = 32
    ramp = (torch.arange(p) / p).view(1, 1, 1, p).expand(1, 3, p, p).contiguous()
    cfg = {**NO_GEOMETRY, "crop_scale": (0.64, 0.64)}
    out = LDViews(s, keep_raw=True, **cfg, **NO_JITTER)(ramp, ramp, gen(0))
    assert out.raw is not None
    dx = out.raw[0].diff(dim=-1)
    torch.testing.assert_close(dx, torch.full_like(dx, 0.8 / p), atol=1e-5, rtol=0)
    assert out.raw[0].diff(dim=-2).abs().max() < 1e-5


def test_crop_stays_inside_the_image() -> None:
    # Scale >= 0.9 with the clipped aspect ratio: the crop never leaves the image, so a white
    # image stays white under zero padding (without rotation).
    white = torch.ones(4, 3, 40, 40)
    views = LDViews(32, keep_raw=True, rotation=0.0, view_rotation=0.0, **NO_JITTER)
    for seed in range(30):
        raw = views(white, white, gen(seed)).raw
        assert raw is not None
        assert raw.min() > 1 - 1e-5


def test_rotation_is_rigid_and_spans_the_circle() -> None:
    # The central part of a rotated linear ramp is a ramp with the same gradient magnitude (the
    # map is rigid) and a direction equal to the rotation angle.
    p = s = 48
    yy, xx = torch.meshgrid(torch.arange(p) + 0.5, torch.arange(p) + 0.5, indexing="ij")
    ramp = (0.5 + (xx - p / 2) / (2 * p)).expand(4, 3, p, p).contiguous()
    cfg = {**NO_GEOMETRY, "rotation": 180.0}
    views = LDViews(s, keep_raw=True, **cfg, **NO_JITTER)
    angles = []
    for seed in range(20):
        raw = views(ramp, ramp, gen(seed)).raw
        assert raw is not None
        centre = raw[:4, 0, s // 4 : 3 * s // 4, s // 4 : 3 * s // 4]
        gx = centre.diff(dim=-1).mean(dim=(-2, -1))
        gy = centre.diff(dim=-2).mean(dim=(-2, -1))
        torch.testing.assert_close(torch.hypot(gx, gy), torch.full_like(gx, 1 / (2 * p)))
        angles.append(torch.atan2(gy, gx))
    deg = torch.rad2deg(torch.cat(angles))
    assert deg.min() < -120 and deg.max() > 120
    assert ((deg.abs() > 30) & (deg.abs() < 150)).any()


def test_half_the_views_are_mirror_images() -> None:
    # METHOD.md 2: flips with p = 0.5 each. With both axes flipped together, no view was a
    # mirror image (a rotation alone: every determinant > 0) and every test passed (reviewer's
    # mutation); left and right eyes are mirror images of each other.
    views = LDViews(32, flip_p=0.5)
    thetas = views._thetas(4000, 48, 64, gen(0))
    mirrored = (torch.linalg.det(thetas[:, :, :2]) < 0).double().mean().item()
    assert 0.47 < mirrored < 0.53  # exactly one of the two flips: 1/2
    assert (
        torch.linalg.det(LDViews(32, flip_p=0.0)._thetas(500, 48, 64, gen(0))[:, :, :2]) > 0
    ).all()


def test_each_view_has_its_own_small_rotation() -> None:
    # METHOD.md 2.2: a U(-2, 2) degree rotation per view. One angle shared by both views left
    # every test passing (reviewer's mutation): the loss would lose that augmentation.
    n = 4000
    thetas = LDViews(32, rotation=0.0, flip_p=0.0)._thetas(n, 64, 64, gen(0))[:, :, :2]
    relative = torch.linalg.inv(thetas[:n]) @ thetas[n:]  # R(phi1 - phi2)
    delta = torch.rad2deg(torch.atan2(relative[:, 1, 0], relative[:, 0, 0]))
    assert delta.abs().max() <= 4.0 + 1e-9
    # |U1 - U2| for U(-2, 2): mean 4/3 degrees
    assert 1.25 < delta.abs().mean().item() < 1.42


def test_the_crop_lies_anywhere_it_fits_along_both_axes() -> None:
    # A crop centred in y (or x) left every test passing (reviewer's mutation).
    n, height, width = 4000, 48, 64
    views = LDViews(32, crop_scale=(0.5, 0.5), crop_ratio=(1.0, 1.0), rotation=0.0,
                    view_rotation=0.0, flip_p=0.0)  # fmt: skip
    shift = views._thetas(n, height, width, gen(0))[:n, :, 2]  # normalised: 2 c / side
    side = (0.5 * height * width) ** 0.5
    for centre, length in ((shift[:, 0] * width / 2, width), (shift[:, 1] * height / 2, height)):
        bound = (length - side) / 2  # the crop stays inside the image
        assert centre.abs().max() <= bound + 1e-9
        assert centre.min() < -0.95 * bound and centre.max() > 0.95 * bound
        assert abs(centre.mean().item()) < 0.05 * bound  # uniform, not skewed


def test_crop_aspect_ratio_is_log_uniform_and_a_non_square_input_keeps_most_of_it() -> None:
    # The aspect ratio (width / height) is log-uniform (class doc, torchvision's rule): on a
    # square input a crop is as often tall as wide, log ratios uniform in +-log(4/3). Drawn
    # uniformly, wide crops were 1.3 times as common as tall ones (reviewer's mutation).
    n, still = 20000, dict(rotation=0.0, view_rotation=0.0, flip_p=0.0)
    thetas = LDViews(32, crop_scale=(0.5, 0.5), **still)._thetas(n, 64, 64, gen(1))[:n]
    log_ratio = (thetas[:, 0, 0] / thetas[:, 1, 1]).log()  # (crop w / W) / (crop h / H)
    bound = math.log(4 / 3)
    assert log_ratio.abs().max() <= bound + 1e-9
    for q in (0.1, 0.3, 0.5, 0.7, 0.9):
        share = (log_ratio < (2 * q - 1) * bound).double().mean().item()
        assert share == pytest.approx(q, abs=0.02)
    # A non-square input's crop is nearly the whole image (class doc): its short side whole and
    # over 3/4 of its long side, either way round. The ratio's lower clip taken from the width
    # cut a wide input's crop to 58 % of its width (reviewer's mutation).
    for height, width in ((64, 128), (128, 64)):
        thetas = LDViews(32, **still)._thetas(2000, height, width, gen(0))[:2000]
        across, down = thetas[:, 0, 0], thetas[:, 1, 1]  # crop width / W, crop height / H
        short, long = (down, across) if height < width else (across, down)
        assert short.min() > 1 - 1e-6 and long.min() > 0.75


def test_padding_zeros_for_fundus_border_for_xray() -> None:
    grey_rgb = torch.full((4, 3, 40, 40), 0.6)
    grey_1 = torch.full((4, 1, 40, 40), 0.6)
    fundus = LDViews(32, keep_raw=True, **NO_JITTER)
    xray = LDViews(32, "xray", keep_raw=True, **NO_JITTER)
    fundus_min, xray_values = [], []
    for seed in range(5):
        raw_f = fundus(grey_rgb, grey_rgb, gen(seed)).raw
        raw_x = xray(grey_1, grey_1, gen(seed)).raw
        assert raw_f is not None and raw_x is not None
        fundus_min.append(raw_f.amin())
        xray_values.append(raw_x)
    # Rotated corners fall outside the image: black for fundus, edge-replicated for X-ray.
    assert min(fundus_min) < 0.1
    torch.testing.assert_close(torch.cat(xray_values), torch.full((100, 1, 32, 32), 0.6))


# ------------------------------------------------------------------------------------------
# Colour
# ------------------------------------------------------------------------------------------


def test_zero_jitter_is_identity() -> None:
    x = blobs(4, 3, 16, 2)
    ones = torch.ones(4)
    no_gray = torch.zeros(4, dtype=torch.bool)
    assert torch.equal(color_jitter(x, ones, ones, ones, None, no_gray), x)
    # Through LDViews: all strengths 0 => view 1 and un-turned view 2 are the same pixels.
    out = LDViews(32, keep_raw=True, view_rotation=0.0, **NO_JITTER)(
        blobs(2, 3, 40, 0), blobs(2, 3, 40, 1), gen(4)
    )
    assert out.raw is not None
    assert torch.equal(undo_view2(out.raw[4:8], out.flip, out.rot_k), out.raw[:4])


def test_grayscale_gives_equal_channels() -> None:
    x1, x2 = blobs(2, 3, 40, 0), blobs(2, 3, 40, 1)
    out = LDViews(32, keep_raw=True, grayscale_p=1.0)(x1, x2, gen(0))
    assert out.raw is not None
    torch.testing.assert_close(out.raw[:, 0], out.raw[:, 1], atol=1e-6, rtol=0)
    torch.testing.assert_close(out.raw[:, 0], out.raw[:, 2], atol=1e-6, rtol=0)
    colour = LDViews(32, keep_raw=True, grayscale_p=0.0)(x1, x2, gen(0)).raw
    assert colour is not None
    assert (colour[:, 0] - colour[:, 1]).abs().max() > 0.05


def test_brightness_factor_scales_the_image() -> None:
    # Brightness only, inputs <= 0.7 so that 1.4x never clips: every view is factor * input with
    # the factor drawn per view in [0.6, 1.4].
    x = (0.05 + 0.65 * blobs(4, 3, 32, 3)).contiguous()
    views = LDViews(
        32,
        keep_raw=True,
        **NO_GEOMETRY,
        **{**NO_JITTER, "brightness": 0.4},
        view2_flip_p=0.0,
        view2_rot90=False,
    )
    factors = []
    for seed in range(30):
        raw = views(x, x, gen(seed)).raw
        assert raw is not None
        ratio = raw[:16] / torch.cat([x, x, x, x])
        f = ratio.flatten(1).mean(1)
        torch.testing.assert_close(ratio, f.view(-1, 1, 1, 1).expand_as(ratio))
        torch.testing.assert_close(
            raw[:16].mean(dim=(1, 2, 3)), f * x.repeat(4, 1, 1, 1).mean((1, 2, 3))
        )
        # Views 1 and 2 draw their own factor.
        assert not torch.allclose(f[:8], f[8:])
        factors.append(f)
    f = torch.cat(factors)
    assert f.min() >= 0.6 - 1e-5 and f.max() <= 1.4 + 1e-5
    assert f.min() < 0.7 and f.max() > 1.3


def test_contrast_and_hue_are_changed_either_way() -> None:
    # Contrast factors are U(0.6, 1.4) and hue shifts U(-0.02, 0.02) turns (class doc): a view's
    # contrast is lowered as often as raised, its hue turned either way round the colour
    # circle. Factors of U(1, 1.4), or shifts of U(0, 0.02), left every test passing
    # (reviewer's mutations). Without geometry the views are the input (P == S), jittered.
    ramp = torch.linspace(0.3, 0.7, 32).view(1, 1, 1, 32).expand(64, 1, 32, 32).contiguous()
    views = LDViews(32, "xray", keep_raw=True, **NO_GEOMETRY, **{**NO_JITTER, "contrast": 0.4})
    raw = views(ramp, ramp, gen(2)).raw
    assert raw is not None
    factor = raw[:256].std(dim=(1, 2, 3)) / ramp[0].std()  # about the mean: never clipped
    assert factor.min() >= 0.6 - 1e-4 and factor.max() <= 1.4 + 1e-4
    assert factor.min() < 0.7 and factor.max() > 1.3
    assert (factor < 1).float().mean().item() == pytest.approx(0.5, abs=0.1)

    orange = torch.tensor([0.8, 0.4, 0.2]).view(1, 3, 1, 1).expand(64, 3, 32, 32).contiguous()
    views = LDViews(32, keep_raw=True, **NO_GEOMETRY, **{**NO_JITTER, "hue": 0.02})
    raw = views(orange, orange, gen(4)).raw
    assert raw is not None
    hue = colorsys.rgb_to_hsv(0.8, 0.4, 0.2)[0]
    shift = torch.tensor([colorsys.rgb_to_hsv(*p.tolist())[0] - hue for p in raw[:256, :, 9, 9]])
    assert shift.abs().max() <= 0.02 + 1e-4
    assert shift.min() < -0.015 and shift.max() > 0.015
    assert (shift < 0).float().mean().item() == pytest.approx(0.5, abs=0.1)


def test_contrast_and_saturation_extremes() -> None:
    x = blobs(2, 3, 16, 4)
    ones, zeros = torch.ones(2), torch.zeros(2)
    no_gray = torch.zeros(2, dtype=torch.bool)
    flat = color_jitter(x, ones, zeros, ones, None, no_gray)
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    expected = luma.mean(dim=(1, 2)).view(2, 1, 1, 1).expand_as(x)
    torch.testing.assert_close(flat, expected)
    grey = color_jitter(x, ones, ones, zeros, None, no_gray)
    torch.testing.assert_close(grey, luma.unsqueeze(1).expand_as(x))


def test_adjust_hue_matches_colorsys() -> None:
    x = torch.rand(3, 3, 5, 5, generator=gen(0))
    x[0, :, 0, 0] = torch.tensor([0.3, 0.3, 0.3])  # grey: hue undefined, must stay grey
    shift = torch.tensor([0.02, -0.3, 0.5])
    out = adjust_hue(x, shift)
    ref = torch.empty_like(x)
    for i in range(3):
        for u in range(5):
            for w in range(5):
                h, s, v = colorsys.rgb_to_hsv(*x[i, :, u, w].tolist())
                rgb = colorsys.hsv_to_rgb((h + shift[i].item()) % 1.0, s, v)
                ref[i, :, u, w] = torch.tensor(rgb)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    green = adjust_hue(red, torch.tensor([1 / 3]))
    torch.testing.assert_close(green.flatten(), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------
# Mix and normalisation
# ------------------------------------------------------------------------------------------


def test_mix_is_exact_convex_combination_in_raw_space() -> None:
    b = 3
    out = LDViews(32, keep_raw=True)(blobs(b, 3, 40, 0), blobs(b, 3, 40, 1), gen(2))
    raw = out.raw
    assert raw is not None
    lam = out.lam.view(b, 1, 1, 1)
    torch.testing.assert_close(raw[4 * b :], lam * raw[:b] + (1 - lam) * raw[b : 2 * b])
    torch.testing.assert_close(out.images, normalize(raw, "fundus"))
    assert raw.min() >= 0 and raw.max() <= 1


def test_normalisation_constants() -> None:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.tensor(IMAGENET_MEAN).tolist() == pytest.approx([0.485, 0.456, 0.406])
    assert torch.tensor(IMAGENET_STD).tolist() == pytest.approx([0.229, 0.224, 0.225])
    torch.testing.assert_close(
        normalize(mean.expand(1, 3, 2, 2), "fundus"), torch.zeros(1, 3, 2, 2)
    )
    torch.testing.assert_close(normalize(mean + std, "fundus"), torch.ones(1, 3, 1, 1))
    xr = torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 1, 3)
    torch.testing.assert_close(
        normalize(xr, "xray"), torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 1, 3)
    )
    x = blobs(2, 3, 8, 0)
    torch.testing.assert_close(denormalize(normalize(x, "fundus"), "fundus"), x)
    with pytest.raises(ValueError):
        normalize(x, "xray")
    with pytest.raises(ValueError):
        normalize(x, "ct")


def test_normalize_scales_integer_images_as_the_package_reads_them() -> None:
    # A uint8 batch (as the batch error of as_raw_image sends users to normalize) came out in
    # [-2.1, 1136]: it was never divided by 255.
    x = (blobs(2, 3, 8, 0) * 255).round().to(torch.uint8)
    expected = normalize(x.float() / 255, "fundus")
    torch.testing.assert_close(normalize(x, "fundus"), expected)
    wide = x.to(torch.int32) * 257  # uint16: / 65535, as read_image and raw_intensities scale it
    torch.testing.assert_close(normalize(wide.to(torch.uint16), "fundus"), expected)
    for dtype in (torch.int64, torch.int16, torch.int32):
        with pytest.raises(InputError, match=f"images is {str(dtype)[6:]}, whose full scale"):
            normalize(x.to(dtype), "fundus")


def test_views_take_uint16_and_refuse_images_of_unknown_scale() -> None:
    # uint16, other integers and floats of 0..255 all clipped to 1: every view constant white.
    x1 = (blobs(2, 1, 40, 0) * 255).round().to(torch.uint8)
    x2 = (blobs(2, 1, 40, 1) * 255).round().to(torch.uint8)
    from_u8 = LDViews(32, "xray")(x1, x2, gen(1))
    as_u16 = [(x.to(torch.int32) * 257).to(torch.uint16) for x in (x1, x2)]
    from_u16 = LDViews(32, "xray")(*as_u16, gen(1))
    torch.testing.assert_close(from_u16.images, from_u8.images, atol=1e-5, rtol=0)
    for dtype in (torch.int64, torch.int16):
        with pytest.raises(InputError, match=f"x1 is {str(dtype)[6:]}, whose full scale"):
            LDViews(32, "xray")(x1.to(dtype), x2.to(dtype), gen(1))
    with pytest.raises(InputError, match=r"x1 holds values in \[\d+, 255\], not intensities"):
        LDViews(32, "xray")(x1.float(), x2.float(), gen(1))
    # The first float batch is checked whole: x2 of 0-255 values beside a good x1 too.
    with pytest.raises(InputError, match=r"x2 holds values in \[\d+, 255\], not intensities"):
        LDViews(32, "xray")(x1.float() / 255, x2.float(), gen(1))
    with pytest.raises(ValueError, match="different dtypes"):
        LDViews(32, "xray")(x1, x2.float() / 255, gen(1))


def test_check_intensities_follows_the_rule_of_raw_images() -> None:
    from localdisc.data.views import check_intensities

    check_intensities(torch.tensor([-0.2, 1.3]))  # resampling overshoot passes
    check_intensities(torch.tensor([0, 255], dtype=torch.uint8))  # integers are scaled
    with pytest.raises(InputError, match=r"images holds values in \[0, 2\]"):
        check_intensities(torch.tensor([0.0, 2.0]))
    with pytest.raises(InputError, match="NaN or infinite"):
        check_intensities(torch.tensor([0.0, float("nan")]))


def test_xray_single_channel() -> None:
    x1 = (blobs(2, 1, 40, 0) * 255).to(torch.uint8)
    x2 = (blobs(2, 1, 40, 1) * 255).to(torch.uint8)
    out = LDViews(32, "xray", keep_raw=True)(x1, x2, gen(0))
    assert out.images.shape == (10, 1, 32, 32)
    assert out.raw is not None
    torch.testing.assert_close(out.images, (out.raw - 0.5) / 0.5)
    lam = out.lam.view(2, 1, 1, 1)
    torch.testing.assert_close(out.raw[8:], lam * out.raw[:2] + (1 - lam) * out.raw[2:4])


# ------------------------------------------------------------------------------------------
# Argument checking, devices
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [40, 24, 8, 0])
def test_size_must_be_multiple_of_16(size: int) -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        LDViews(size)


def test_bad_inputs_raise() -> None:
    views = LDViews(32)
    with pytest.raises(ValueError):
        views(torch.rand(2, 1, 40, 40), torch.rand(2, 1, 40, 40))  # fundus needs RGB
    with pytest.raises(ValueError):
        views(torch.rand(2, 3, 40, 40), torch.rand(3, 3, 40, 40))
    with pytest.raises(ValueError):
        LDViews(32, "ct")
    with pytest.raises(ValueError):
        LDViews(32, crop_scale=(0.9, 1.2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_for_the_same_seed() -> None:
    x1, x2 = blobs(4, 3, 80, 0), blobs(4, 3, 80, 1)
    views = LDViews(64, keep_raw=True)
    cpu = views(x1, x2, gen(11))
    gpu = views(x1.cuda(), x2.cuda(), gen(11))
    assert gpu.images.is_cuda and gpu.lam.is_cuda and gpu.flip.is_cuda and gpu.rot_k.is_cuda
    assert torch.equal(gpu.flip.cpu(), cpu.flip) and torch.equal(gpu.rot_k.cpu(), cpu.rot_k)
    assert cpu.raw is not None and gpu.raw is not None
    torch.testing.assert_close(gpu.raw.cpu(), cpu.raw, atol=1e-4, rtol=0)
    g = pool8(gpu.images[8:16])
    assert torch.equal(
        undo_view2(g, gpu.flip, gpu.rot_k).cpu(), undo_view2(g.cpu(), cpu.flip, cpu.rot_k)
    )
