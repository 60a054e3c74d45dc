"""Models Genesis corruptions: shapes, range, determinism, effect, monotonic intensity curves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import generator, torch_threads
from localdisc.data.genesis import (
    GenesisCorruption,
    bezier_transform,
    in_paint,
    local_pixel_shuffle,
    nonlinear_transform,
    out_paint,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with torch_threads(1):
        yield


gen = generator


def images(b: int = 4, c: int = 3, s: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth, structured images in [0, 1] (random content would hide shuffling statistics)."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, s), torch.linspace(0, 1, s), indexing="ij")
    phase = torch.rand(b, c, 1, 1, generator=gen(seed)) * 6.28
    return 0.5 + 0.4 * torch.sin(7 * xx + 5 * yy * yy + phase)


TRANSFORMS = {
    "shuffle": local_pixel_shuffle,
    "nonlinear": nonlinear_transform,
    "in_paint": in_paint,
    "out_paint": out_paint,
    "composed": GenesisCorruption(),
}


@pytest.mark.parametrize("name", list(TRANSFORMS))
@pytest.mark.parametrize(("c", "s"), [(3, 32), (1, 48)])
def test_shape_range_determinism_and_effect(name, c, s):
    fn = TRANSFORMS[name]
    x = images(4, c, s)
    before = x.clone()
    a = fn(x, gen(1))
    assert torch.equal(x, before)  # input untouched
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, fn(x, gen(1)))  # seeded: exactly reproducible
    assert not torch.equal(a, fn(x, gen(2)))
    # Every image changes (for the composed corruption: with this seed each image draws at
    # least one transformation, the identity has probability 0.5 * 0.1 * 0.1).
    changed = (a - x).abs().flatten(1).amax(1) > 1e-3
    assert changed.all(), changed


def test_shuffle_keeps_pixels_local_and_values_from_the_image():
    x = images(2, 1, 40)
    out = local_pixel_shuffle(x, gen(3))
    # Values come from the image itself (no interpolation or noise), ...
    for b in range(2):
        assert torch.isin(out[b], x[b]).all()
    # ... from within a window (side <= 4 here): each pixel's value is found within 3 pixels.
    pad = torch.nn.functional.pad(x, (3, 3, 3, 3), value=-1.0)
    found = torch.zeros_like(x, dtype=torch.bool)
    for dy in range(7):
        for dx in range(7):
            found |= pad[:, :, dy : dy + 40, dx : dx + 40] == out
    assert found.all()
    # Most pixels move (coverage ~1.9 image areas; a window of side 1 moves nothing).
    assert (out != x).float().mean() > 0.3
    # Colour channels move together.
    rgb = images(1, 3, 40)
    out3 = local_pixel_shuffle(rgb, gen(3))
    assert torch.equal(out3[:, :1], local_pixel_shuffle(rgb[:, :1], gen(3)))


def test_shuffle_is_a_permutation_when_windows_do_not_overlap():
    x = torch.arange(2 * 64 * 64, dtype=torch.float32).view(2, 1, 64, 64) / (2 * 64 * 64)
    out = local_pixel_shuffle(x, gen(0), blocks=1)
    for b in range(2):
        assert torch.equal(out[b].flatten().sort().values, x[b].flatten().sort().values)


@pytest.mark.parametrize("seed", range(4))
def test_bezier_curves_are_monotonic_with_fixed_end_points(seed):
    g = gen(seed)
    b = 6
    control = torch.rand(b, 2, 2, generator=g, dtype=torch.float64)
    control[0] = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # extreme control points
    control[1] = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    invert = torch.tensor([False, True, False, True, False, True])
    ramp = torch.linspace(0, 1, 20001).expand(b, 1, 1, -1).contiguous()
    out = bezier_transform(ramp, control, invert)[:, 0, 0]
    diffs = out.diff(dim=1)
    for i in range(b):
        if invert[i]:
            assert (diffs[i] <= 0).all() and out[i, 0] == 1 and out[i, -1] == 0
        else:
            assert (diffs[i] >= 0).all() and out[i, 0] == 0 and out[i, -1] == 1
    # At the lookup knots the map is the curve itself: B(t) = (x(t), y(t)) -> f(x(t)) = y(t).
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)

    def bez(t, c1, c2):
        return 3 * (1 - t) ** 2 * t * c1 + 3 * (1 - t) * t**2 * c2 + t**3

    for i in range(2, b):
        (ax, ay), (bx, by) = control[i].tolist()
        xs, ys = bez(t, ax, bx), bez(t, ay, by)
        if invert[i]:
            ys = bez(1 - t, ay, by)
        f = bezier_transform(xs.view(1, 1, 1, -1), control[i : i + 1], invert[i : i + 1])
        torch.testing.assert_close(f.view(-1), ys, atol=1e-6, rtol=0)


def test_identity_curve_and_validation():
    x = images(2, 3, 16).double()
    linear = torch.tensor([[1 / 3, 1 / 3], [2 / 3, 2 / 3]], dtype=torch.float64).expand(2, 2, 2)
    out = bezier_transform(x, linear, torch.tensor([False, True]))
    torch.testing.assert_close(out[0], x[0], atol=1e-9, rtol=0)  # the curve y = x
    torch.testing.assert_close(out[1], 1 - x[1], atol=1e-9, rtol=0)  # ... traversed backwards
    with pytest.raises(ValueError, match="control"):
        bezier_transform(x, linear[:1], torch.tensor([False]))
    with pytest.raises(ValueError, match="probability"):
        GenesisCorruption(paint_p=1.5)
    with pytest.raises(ValueError, match="float"):
        in_paint(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), gen(0))


def test_painting_regions():
    x = torch.full((8, 1, 42, 42), 0.5)
    inner = in_paint(x, gen(4))
    changed = inner != 0.5
    # In-painting keeps a 3-pixel border and replaces at most 5 windows of side <= 42 / 3.
    assert not changed[:, :, :3].any() and not changed[:, :, -3:].any()
    assert changed.float().mean() < 5 * (14 / 42) ** 2
    outer = out_paint(x, gen(4))
    kept = outer == 0.5
    # Out-painting keeps 1-5 windows of side 18..24 and replaces everything else by noise.
    assert (kept.flatten(1).sum(1) >= 18 * 18).all()
    assert not kept[:, :, :3].any()


def test_composed_probabilities():
    # With all probabilities at 0 nothing changes; the draws are per image.
    x = images(6, 3, 32)
    off = GenesisCorruption(shuffle_p=0, nonlinear_p=0, paint_p=0)
    assert torch.equal(off(x, gen(0)), x)
    only_out = GenesisCorruption(shuffle_p=0, nonlinear_p=0, paint_p=1, outpaint_p=1)
    out = only_out(x, gen(0))
    assert torch.equal(out, out_paint(x, _after_flags(gen(0), 6)))


def _after_flags(g: torch.Generator, n: int) -> torch.Generator:
    """The generator state after GenesisCorruption's four per-image decision draws."""
    for _ in range(4):
        torch.rand(n, generator=g)
    return g


def test_corruption_defaults_are_the_authors_configuration():
    # Guards the probabilities of the configuration published with Models Genesis' code (Zhou et
    # al., MedIA 2021): local_rate 0.5, nonlinear_rate 0.9, paint_rate 0.9, outpaint_rate 0.8
    # (in-painting 0.2), and the curve traversed backwards with probability 0.5.
    c = GenesisCorruption()
    assert (c.shuffle_p, c.nonlinear_p, c.paint_p, c.outpaint_p) == (0.5, 0.9, 0.9, 0.8)
    assert c.invert_p == 0.5


def test_about_half_the_intensity_curves_invert_the_contrast():
    # Guards the decreasing curves (invert_p = 0.5): with a ramp from 0 to 1, an inverted map
    # sends the dark end to 1 and the bright end to 0.
    n = 64
    ramp = torch.linspace(0, 1, 16).expand(n, 1, 1, 16).contiguous()
    only_curves = GenesisCorruption(shuffle_p=0, nonlinear_p=1, paint_p=0)
    out = only_curves(ramp, gen(0))[:, 0, 0]
    inverted = out[:, 0] > out[:, -1]
    assert torch.equal(out[inverted, 0], torch.ones(int(inverted.sum())))
    assert 20 <= int(inverted.sum()) <= 44, int(inverted.sum())


def test_in_painting_may_draw_no_window_while_out_painting_keeps_at_least_one():
    # Guards the window counts of the authors' code: in-painting draws each window, the first
    # included, with probability continue_p (none with 1 - continue_p); out-painting always
    # keeps its first window. With continue_p = 0: nothing painted, and exactly one window kept.
    x = torch.full((4, 1, 42, 42), 0.5)
    assert torch.equal(in_paint(x, gen(5), continue_p=0.0), x)
    kept = out_paint(x, gen(5), continue_p=0.0) == 0.5
    for mask in kept[:, 0]:
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        h, w = len(rows), len(cols)
        assert 18 <= h <= 24 and 18 <= w <= 24 and int(mask.sum()) == h * w  # one rectangle
        assert int(rows[-1] - rows[0]) + 1 == h and int(cols[-1] - cols[0]) + 1 == w


def _expected_shuffled_share(h: int, w: int, coverage: float = 1.87) -> float:
    """The share of pixels local pixel shuffling changes, from the module docstring's rule alone:
    windows of sides uniform in 1 .. side/10 at uniform positions inside the image, as many as
    cover the image ``coverage`` times on average (mean window area E[bh] E[bw]), a pixel
    covered by several taking the last one's value: a uniform permutation of that window, which
    leaves the pixel in place with probability 1 / its area."""
    mh, mw = max(1, int(h * 0.1)), max(1, int(w * 0.1))
    k = round(coverage * h * w / ((mh + 1) / 2 * (mw + 1) / 2))

    def axis(n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        # Over sides 1..m: P(a window covers each position), and that divided by the side.
        pos, side = np.arange(n)[None, :], np.arange(1, m + 1)[:, None]
        starts = np.minimum(pos, n - side) - np.maximum(pos - side + 1, 0) + 1
        cover = np.maximum(starts, 0) / (n - side + 1)
        return cover.mean(0), (cover / side).mean(0)

    (ry, fy), (rx, fx) = axis(h, mh), axis(w, mw)
    covered = ry[:, None] * rx[None, :]  # P(one window covers the pixel)
    in_place = fy[:, None] * fx[None, :] / covered  # E[1 / area | the window covers it]
    return float(((1 - (1 - covered) ** k) * (1 - in_place)).mean())


@pytest.mark.parametrize(("h", "w"), [(48, 48), (64, 64), (40, 400)])
def test_shuffling_covers_the_image_as_the_published_3d_code_does(h, w):
    # Guards the 2-D adaptation of Models Genesis' 10 000 windows in 64 x 64 x 32 voxels: the
    # windows cover the image 1.87 times on average (SHUFFLE_COVERAGE), sides up to a tenth of
    # each side (the width's for the width). Fewer or smaller windows make the pretext task
    # easier than the paper's; ~76 % of the pixels change at 64 x 64, and the mutants of the
    # rule were 7-16 points off.
    x = torch.rand(16, 1, h, w, generator=gen(0))
    share = (local_pixel_shuffle(x, gen(1)) != x).float().mean().item()
    assert share == pytest.approx(_expected_shuffled_share(h, w), abs=0.02)


def test_shuffling_windows_span_a_tenth_of_each_side_of_a_wide_image():
    # Window height from the height and width from the width: on a 40 x 400 image, windows up
    # to 4 x 40 px, so pixels move up to 39 px sideways but at most 3 px up or down.
    h, w = 40, 400
    x = torch.arange(32 * h * w, dtype=torch.float64).view(32, 1, h, w) % (h * w)
    out = local_pixel_shuffle(x, gen(2), blocks=1).long()[:, 0]
    index = torch.arange(h * w).view(h, w)
    dy, dx = out // w - index // w, out % w - index % w
    assert dy.abs().max() <= 3 and dx.abs().max() >= 30


def test_in_painted_windows_have_sides_of_a_sixth_to_a_third():
    # Guards the authors' in-painting window sides, side/6 .. side/3 of each side, both ends
    # included (10..20 of a 60 px height, 15..30 of a 90 px width), drawn independently: wider
    # windows would hide most of the anatomy the network is asked to restore. Reviewer's
    # mutations left every test passing with square windows, or sides that never reach side/3.
    x = torch.zeros(300, 1, 60, 90)
    painted = in_paint(x, gen(0), windows=1, continue_p=1.0)[:, 0] != 0
    rows, cols = painted.any(2).sum(1), painted.any(1).sum(1)
    assert set(rows.tolist()) == set(range(10, 21)) and set(cols.tolist()) == set(range(15, 31))
    assert int(painted.flatten(1).sum(1).ne(rows * cols).sum()) == 0  # one rectangle each
    square = torch.zeros(300, 1, 60, 60)
    painted = in_paint(square, gen(0), windows=1, continue_p=1.0)[:, 0] != 0
    rows, cols = painted.any(2).sum(1), painted.any(1).sum(1)
    assert (rows == cols).float().mean() < 0.2  # independent sides: 1 in 11 alike


def test_the_corruption_clamps_its_input_to_0_1():
    # The corruption returns images in [0, 1]: a resize's overshoot (1.05, -0.05) becomes 1 and 0
    # in an image that draws no corruption too, as the intensity curve clamps the images it maps;
    # else the input's range would depend on which corruptions were drawn.
    nothing = GenesisCorruption(shuffle_p=0, nonlinear_p=0, paint_p=0)
    out = nothing(torch.tensor([[[[1.05, -0.05, 0.5]]]]), gen(0))
    assert out.flatten().tolist() == [1.0, 0.0, 0.5]


def test_shuffling_windows_reach_the_last_row_and_column_as_often_as_the_first():
    # Window positions are uniform over every place a window fits, the last row and column
    # included: otherwise the bottom and right edges of every image would never be corrupted
    # (a reviewer's mutation: 0 of 200 images had their last row shuffled).
    n, s = 64, 32
    x = torch.arange(n * s * s, dtype=torch.float32).view(n, 1, s, s) / (n * s * s)
    moved = (local_pixel_shuffle(x, gen(0)) != x)[:, 0].float()
    for first, last in ((moved[:, 0], moved[:, -1]), (moved[:, :, 0], moved[:, :, -1])):
        assert first.mean() > 0.2  # an edge pixel is covered by fewer windows than others
        assert last.mean().item() == pytest.approx(first.mean().item(), rel=0.25)


def test_in_painting_draws_no_window_with_probability_1_minus_continue_p():
    # Window j exists only if every draw before it succeeded (the authors' loop stops at the
    # first failure): no window at all in 5 % of the images at continue_p = 0.95, half of them
    # at 0.5. Independent draws per window would paint all but 0.05^5 (0.5^5) of them.
    for p, share in ((0.95, 0.05), (0.5, 0.5)):
        x = torch.full((2000, 1, 16, 16), 0.5)
        untouched = (in_paint(x, gen(0), continue_p=p) == x).flatten(1).all(1)
        assert untouched.float().mean().item() == pytest.approx(share, abs=0.025)


def test_painted_noise_is_uniform_per_channel_whatever_the_intensity_curve():
    # Painting fills with uniform noise in [0, 1), drawn per channel (module docstring: window
    # noise is drawn per colour channel), and comes after the intensity curve: noise put through
    # the curve would not be uniform any more (a reviewer's mutation moved the curve last).
    x = torch.full((200, 1, 32, 32), 0.5)
    only = GenesisCorruption(shuffle_p=0.0, nonlinear_p=1.0, paint_p=1.0, outpaint_p=1.0)
    out = only(x, gen(4)).flatten(1)
    kept = out.mode(dim=1).values[:, None]  # the curve's value of 0.5, in the kept windows
    noise = out[out != kept]
    assert noise.numel() > 0.3 * out.numel()
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert (noise < q).float().mean().item() == pytest.approx(q, abs=0.01)
    rgb = in_paint(torch.full((20, 3, 32, 32), 0.5), gen(3), windows=1, continue_p=1.0)
    painted = (rgb != 0.5).any(1)
    grey = (rgb[:, 0] == rgb[:, 1]) & (rgb[:, 1] == rgb[:, 2])
    assert painted.sum() > 20 * 5 * 5 and not grey[painted].any()


def test_the_intensity_curve_maps_the_shuffled_image():
    # The corruptions compose (module docstring: "applied in this order"): the curve maps the
    # shuffled pixels, so the output is a monotonic function of the shuffled image, and not of
    # the input. Each transformation reading the clean input lost the shuffling whenever the
    # curve was drawn (a reviewer's mutation).
    n = 8
    x = torch.rand(n, 1, 32, 32, generator=gen(5))
    out = GenesisCorruption(shuffle_p=1.0, nonlinear_p=1.0, paint_p=0.0)(x, gen(6))
    shuffled = local_pixel_shuffle(x, _after_flags(gen(6), n))

    def monotonic_in(a: torch.Tensor, b: torch.Tensor) -> bool:
        steps = b.flatten()[a.flatten().argsort()].diff()
        return bool((steps >= 0).all() or (steps <= 0).all())

    for i in range(n):
        assert monotonic_in(shuffled[i], out[i])
        assert not monotonic_in(x[i], out[i])


@pytest.mark.parametrize("invert_p", [0.0, 1.0])
def test_invert_p_sets_the_share_of_decreasing_curves(invert_p):
    # invert_p = 0 keeps every curve increasing (contrast never inverted), 1 inverts them all.
    ramp = torch.linspace(0, 1, 16).expand(100, 1, 1, 16).contiguous()
    curves = GenesisCorruption(shuffle_p=0, nonlinear_p=1, paint_p=0, invert_p=invert_p)
    out = curves(ramp, gen(7))[:, 0, 0]
    assert ((out[:, 0] > out[:, -1]) == bool(invert_p)).all()
    direct = nonlinear_transform(ramp, gen(7), invert_p=invert_p)[:, 0, 0]
    assert ((direct[:, 0] > direct[:, -1]) == bool(invert_p)).all()
