"""Models Genesis image corruptions for 2D images in [0, 1] (batched, seeded).

Z. Zhou, V. Sodha, M. M. Rahman Siddiquee, R. Feng, N. Tajbakhsh, M. B. Gotway, J. Liang,
"Models Genesis: Generic Autodidactic Models for 3D Medical Image Analysis", MICCAI 2019, and
Z. Zhou, V. Sodha, J. Pang, M. B. Gotway, J. Liang, "Models Genesis", Medical Image Analysis 67,
2021 (Sec. 2, Fig. 2). A network learns to restore an image from a corrupted copy; the
corruptions, applied in this order, are:

1. Local pixel shuffling (p = 0.5): many small windows, each side drawn from 1 .. side/10
   pixels, at random positions; the pixels inside each window are permuted at random (read from
   the uncorrupted image; a later window overwrites an earlier one where they overlap). Windows
   are smaller than the network's receptive field, so global structure survives and the network
   must learn local texture and boundaries.
2. Non-linear intensity transformation (p = 0.9): every intensity ``v`` is mapped through a
   cubic Bezier curve ``B(t) = (1-t)^3 P0 + 3(1-t)^2 t P1 + 3(1-t) t^2 P2 + t^3 P3`` with
   ``P0 = (0, 0)``, ``P3 = (1, 1)`` and random ``P1, P2`` in ``[0, 1]^2``: ``f(v) = y(t)`` where
   ``x(t) = v``. With control points in the unit square both ``x(t)`` and ``y(t)`` are
   non-decreasing, so ``f`` is monotonic (a one-to-one map that keeps each structure's identity
   while changing its appearance). With probability 0.5 the curve is traversed backwards,
   ``f(v) = y(1 - t)``: a decreasing map that inverts the contrast. (The inversion and its
   probability 0.5 are the behaviour of the authors' public code; I could not confirm from the
   papers' text whether they state it.)
3. Painting (p = 0.9), either out-painting (p = 0.8 of the painting cases) or in-painting
   (p = 0.2):
   - in-painting: up to 5 windows (each further window with probability 0.95, so 0 windows with
     probability 0.05), sides ``side/6 .. side/3``, at least 3 pixels from the border, filled
     with uniform random noise;
   - out-painting: the whole image is replaced by uniform noise except for 1 to 5 windows (the
     first always, each further one with probability 0.95) of sides ``3 side/7 .. 4 side/7``
     that keep the original pixels.

Sources of the numbers: the probabilities 0.5 / 0.9 / 0.9 / 0.8-0.2 and the window sizes are
the configuration published with the authors' code (nonlinear_rate 0.9, paint_rate 0.9,
outpaint_rate 0.8, inpaint_rate = 1 - outpaint_rate, local_rate 0.5; checked against copies of
that configuration); the papers describe the transformations and their rationale, and to my
knowledge do not list these values. The window counts (5, continuation 0.95), window sizes,
3-pixel margin and the 10 000 shuffling windows are recalled from that code, not re-checked: treat
them as the code's values to the best of my memory. The in-painted windows are filled with uniform
noise as in the code (my recollection is that the MICCAI text speaks of a constant value; not
checked). The code also flips input and target together (flip_rate 0.4); here the geometric
augmentation (flips, rotations, crops) is done before the corruptions by the view generator.

2D adaptation: the code corrupts 64x64x32 CT sub-volumes with 10 000 shuffled windows of at most
6x6x3 voxels, i.e. the windows cover the volume about 1.87 times on average; in 2D we draw as many
windows as give the same expected coverage for the image size (:data:`SHUFFLE_COVERAGE`). Colour
images: one intensity curve per image for all channels; window noise is drawn per channel.

All random parameters come from a CPU :class:`torch.Generator` in a fixed order, so a seed
reproduces a batch exactly on any device; the work itself happens on the input's device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "GenesisCorruption",
    "SHUFFLE_COVERAGE",
    "bezier_transform",
    "in_paint",
    "local_pixel_shuffle",
    "nonlinear_transform",
    "out_paint",
]

#: Expected number of times the shuffled windows cover the image (the public 3D code's ratio:
#: 10 000 windows of mean 3.5 x 3.5 x 2 voxels in a 64 x 64 x 32 volume).
SHUFFLE_COVERAGE = 1.87

#: Points of the polyline through which the Bezier map is applied.
_CURVE_POINTS = 4097


def _check_images(x: Tensor) -> None:
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"expected float images [B, C, H, W], got {x.dtype} {tuple(x.shape)}")


def _check_generator(generator: torch.Generator | None) -> None:
    if generator is not None and generator.device.type != "cpu":
        raise ValueError("generator must be a CPU torch.Generator (parameters are drawn there)")


# --------------------------------------------------------------------------------------------
# Non-linear intensity transformation
# --------------------------------------------------------------------------------------------


def _bezier(t: Tensor, c1: Tensor, c2: Tensor) -> Tensor:
    """One coordinate of the cubic Bezier with end points 0 and 1 and inner control values."""
    s = 1.0 - t
    return 3.0 * s * s * t * c1 + 3.0 * s * t * t * c2 + t * t * t


def bezier_transform(x: Tensor, control: Tensor, invert: Tensor) -> Tensor:
    """Map each image's intensities through its Bezier curve (deterministic given the curve).

    Args:
        x: ``[B, C, H, W]`` in [0, 1] (values outside are clamped first).
        control: ``[B, 2, 2]``: rows ``P1`` and ``P2`` as ``(x, y)`` in ``[0, 1]^2``.
        invert: ``[B]`` bool: traverse the curve backwards (a decreasing map).

    Returns:
        The transformed images, same shape and dtype. For each image the map is monotonic
        (non-decreasing, or non-increasing where ``invert``) with ``f(0) = 0, f(1) = 1`` (swapped
        when inverted).

    The curve is sampled at :data:`_CURVE_POINTS` evenly spaced ``t`` (float64) and every pixel
    is interpolated linearly on the polyline ``(x(t_k), y(t_k))`` (the authors' code does the
    same with 100 000 points): monotonic by construction, and mostly within ~1e-7 of the exact
    curve, also where it is steep (a table evenly spaced in intensity would not be); where it
    starts or ends vertical (``x'(t) = 0`` there) up to about 3e-4 (3e-3 for float32 images),
    for intensities next to that end alone.
    """
    _check_images(x)
    b = x.shape[0]
    if control.shape != (b, 2, 2) or invert.shape != (b,):
        raise ValueError(
            f"control must be [B, 2, 2] and invert [B] for B = {b}; got {tuple(control.shape)}, "
            f"{tuple(invert.shape)}"
        )
    device, f64 = x.device, torch.float64
    control = control.to(device=device, dtype=f64)
    t = torch.linspace(0.0, 1.0, _CURVE_POINTS, device=device, dtype=f64).expand(b, -1)
    # x(t) and y(t) are non-decreasing in exact arithmetic; cummax removes rounding wiggles.
    xs = _bezier(t, control[:, 0, 0, None], control[:, 1, 0, None]).cummax(dim=1).values
    ys = _bezier(t, control[:, 0, 1, None], control[:, 1, 1, None]).cummax(dim=1).values
    ys = torch.where(invert.to(device)[:, None], ys.flip(1), ys)  # y(1 - t_k)

    v = x.to(f64).clamp(0.0, 1.0).flatten(1)
    hi = torch.searchsorted(xs, v).clamp_(1, _CURVE_POINTS - 1)  # xs[hi - 1] < v <= xs[hi]
    lo = hi - 1
    x0, x1 = xs.gather(1, lo), xs.gather(1, hi)
    y0, y1 = ys.gather(1, lo), ys.gather(1, hi)
    width = x1 - x0
    frac = torch.where(width > 0, (v - x0) / torch.where(width > 0, width, 1.0), 1.0)
    out = y0 + frac.clamp_(0.0, 1.0) * (y1 - y0)
    out = torch.where(v <= 0.0, ys[:, :1], torch.where(v >= 1.0, ys[:, -1:], out))  # exact ends
    return out.to(x.dtype).view_as(x)


def nonlinear_transform(
    x: Tensor, generator: torch.Generator | None = None, invert_p: float = 0.5
) -> Tensor:
    """Apply a random Bezier intensity curve to every image (control points ~ U[0, 1]^2)."""
    _check_images(x)
    _check_generator(generator)
    b = x.shape[0]
    control = torch.rand(b, 2, 2, generator=generator, dtype=torch.float64)
    invert = torch.rand(b, generator=generator) < invert_p
    return bezier_transform(x, control, invert)


# --------------------------------------------------------------------------------------------
# Local pixel shuffling
# --------------------------------------------------------------------------------------------


def local_pixel_shuffle(
    x: Tensor,
    generator: torch.Generator | None = None,
    *,
    max_block_fraction: float = 0.1,
    coverage: float = SHUFFLE_COVERAGE,
    blocks: int | None = None,
) -> Tensor:
    """Shuffle the pixels inside many small random windows of every image.

    Args:
        x: ``[B, C, H, W]`` images.
        generator: CPU generator for every random draw.
        max_block_fraction: window sides are drawn uniformly from ``1 .. max(1, side * f)``.
        coverage: expected total window area, in image areas (ignored when ``blocks`` is given).
        blocks: number of windows per image (default from ``coverage``).

    Windows are processed as if in sequence: each permutes the pixels of the ORIGINAL image inside
    it, and where windows overlap the last one wins. Implemented without a Python loop over the
    windows: per window a random key per pixel and an argsort give the permutation, and a
    scatter-``amax`` of the window index picks, for every pixel, the window that writes it, so the
    result is deterministic on any device.
    """
    _check_images(x)
    _check_generator(generator)
    n, c, h, w = x.shape
    mh, mw = max(1, int(h * max_block_fraction)), max(1, int(w * max_block_fraction))
    if blocks is None:
        mean_area = (mh + 1) / 2 * (mw + 1) / 2
        blocks = max(1, round(coverage * h * w / mean_area))
    k, p = blocks, mh * mw
    g, device = generator, x.device
    bh = torch.randint(1, mh + 1, (n, k), generator=g)
    bw = torch.randint(1, mw + 1, (n, k), generator=g)
    y0 = (torch.rand(n, k, generator=g, dtype=torch.float64) * (h - bh + 1)).long()
    x0 = (torch.rand(n, k, generator=g, dtype=torch.float64) * (w - bw + 1)).long()
    keys = torch.rand(n, k, p, generator=g)

    bh, bw, y0, x0, keys = (t.to(device) for t in (bh, bw, y0, x0, keys))
    canvas = torch.arange(p, device=device)
    row, col = canvas // mw, canvas % mw
    valid = (row < bh[..., None]) & (col < bw[..., None])  # [n, k, p]
    # Valid canvas positions in random order (sources) and in raster order (destinations).
    src = torch.where(valid, keys, 2.0).argsort(dim=-1)
    dst = (~valid).to(torch.uint8).argsort(dim=-1, stable=True)
    active = canvas < (bh * bw)[..., None]  # the first bh*bw entries of both lists are valid

    def to_pixel(pos: Tensor) -> Tensor:
        return (y0[..., None] + pos // mw) * w + x0[..., None] + pos % mw

    dump = h * w  # an extra column that absorbs every inactive entry
    dst_px = torch.where(active, to_pixel(dst), dump).view(n, k * p)
    src_px = torch.where(active, to_pixel(src), 0).view(n, k * p)
    block = torch.arange(k, device=device).view(1, k, 1).expand(n, k, p).reshape(n, k * p)
    winner = torch.full((n, h * w + 1), -1, dtype=torch.long, device=device)
    winner.scatter_reduce_(1, dst_px, block, reduce="amax")
    writes = (winner.gather(1, dst_px) == block) & (dst_px != dump)
    dst_px = torch.where(writes, dst_px, dump)  # every real pixel is now written at most once

    flat = x.reshape(n, c, h * w)
    values = flat.gather(2, src_px[:, None, :].expand(n, c, k * p))
    out = torch.cat([flat, flat.new_zeros(n, c, 1)], 2)
    out.scatter_(2, dst_px[:, None, :].expand(n, c, k * p), values)
    return out[:, :, : h * w].reshape(n, c, h, w)


# --------------------------------------------------------------------------------------------
# In-painting and out-painting
# --------------------------------------------------------------------------------------------


def _window_mask(
    n: int,
    h: int,
    w: int,
    windows: int,
    side: tuple[float, float],
    first_always: bool,
    continue_p: float,
    margin: int,
    generator: torch.Generator | None,
    device: torch.device,
) -> Tensor:
    """``[n, 1, h, w]`` bool union of up to ``windows`` random rectangles per image.

    Window ``j`` exists when the first ``j + 1`` continuation draws (``< continue_p``) all
    succeeded (with ``first_always`` the first window always exists and the draws start at the
    second). Sides are uniform integers in ``[side[0] * S, side[1] * S]``; windows keep
    ``margin`` pixels from the border where the image allows.
    """
    g = generator

    def sides(length: int) -> Tensor:
        lo = max(1, int(side[0] * length))
        hi = max(lo, min(length, int(side[1] * length)))
        return torch.randint(lo, hi + 1, (n, windows), generator=g)

    sh, sw = sides(h), sides(w)

    def starts(size: Tensor, length: int) -> Tensor:
        m = torch.clamp((length - size) // 2, max=margin)
        span = length - size - 2 * m  # >= 0
        return m + (torch.rand(n, windows, generator=g, dtype=torch.float64) * (span + 1)).long()

    ys, xs = starts(sh, h), starts(sw, w)
    go = torch.rand(n, windows, generator=g) < continue_p
    if first_always:
        go[:, 0] = True
    exists = go.cumprod(dim=1).bool()
    ys, xs, sh, sw, exists = (t.to(device)[..., None, None] for t in (ys, xs, sh, sw, exists))
    yy = torch.arange(h, device=device).view(1, 1, h, 1)
    xx = torch.arange(w, device=device).view(1, 1, 1, w)
    inside = (yy >= ys) & (yy < ys + sh) & (xx >= xs) & (xx < xs + sw) & exists
    return inside.any(dim=1, keepdim=True)


def _paint(
    x: Tensor,
    generator: torch.Generator | None,
    windows: int,
    continue_p: float,
    side: tuple[float, float],
    margin: int,
    outer: bool,
) -> Tensor:
    """Noise inside the windows (in-painting) or outside them (out-painting)."""
    _check_images(x)
    _check_generator(generator)
    n, c, h, w = x.shape
    mask = _window_mask(n, h, w, windows, side, outer, continue_p, margin, generator, x.device)
    noise = torch.rand(n, c, h, w, generator=generator, dtype=x.dtype).to(x.device)
    return torch.where(mask, x, noise) if outer else torch.where(mask, noise, x)


def in_paint(
    x: Tensor,
    generator: torch.Generator | None = None,
    *,
    windows: int = 5,
    continue_p: float = 0.95,
    side: tuple[float, float] = (1 / 6, 1 / 3),
    margin: int = 3,
) -> Tensor:
    """Replace up to ``windows`` inner windows of every image by uniform noise in [0, 1)."""
    return _paint(x, generator, windows, continue_p, side, margin, outer=False)


def out_paint(
    x: Tensor,
    generator: torch.Generator | None = None,
    *,
    windows: int = 5,
    continue_p: float = 0.95,
    side: tuple[float, float] = (3 / 7, 4 / 7),
    margin: int = 3,
) -> Tensor:
    """Replace every image by uniform noise except 1 to ``windows`` windows of the original."""
    return _paint(x, generator, windows, continue_p, side, margin, outer=True)


# --------------------------------------------------------------------------------------------
# The composed corruption
# --------------------------------------------------------------------------------------------


@dataclass
class GenesisCorruption:
    """Models Genesis' random corruption ``T(x)`` of a batch (see the module docstring).

    Attributes:
        shuffle_p: probability of local pixel shuffling (0.5).
        nonlinear_p: probability of the Bezier intensity transformation (0.9).
        invert_p: probability that the intensity curve is decreasing (0.5).
        paint_p: probability of painting (0.9).
        outpaint_p: probability that painting is out-painting rather than in-painting (0.8).
        shuffle_coverage: expected shuffled-window area in image areas.
    """

    shuffle_p: float = 0.5
    nonlinear_p: float = 0.9
    invert_p: float = 0.5
    paint_p: float = 0.9
    outpaint_p: float = 0.8
    shuffle_coverage: float = SHUFFLE_COVERAGE

    def __post_init__(self) -> None:
        for name in ("shuffle_p", "nonlinear_p", "invert_p", "paint_p", "outpaint_p"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability, got {p}")

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Corrupt ``[B, C, H, W]`` images in [0, 1]; returns a new tensor in [0, 1].

        Each image independently gets shuffling, then the intensity curve, then in- or
        out-painting, each with its probability. All per-image decisions are drawn first, then
        each transformation's parameters for the images it applies to.
        """
        _check_images(x)
        _check_generator(generator)
        g, n = generator, x.shape[0]
        shuffle = torch.rand(n, generator=g) < self.shuffle_p
        nonlinear = torch.rand(n, generator=g) < self.nonlinear_p
        paint = torch.rand(n, generator=g) < self.paint_p
        outer = torch.rand(n, generator=g) < self.outpaint_p
        out = x.clamp(0.0, 1.0)

        def apply(select: Tensor, fn) -> None:
            nonlocal out
            if not bool(select.any()):
                return
            idx = select.nonzero().squeeze(1).to(x.device)
            out = out.index_copy(0, idx, fn(out.index_select(0, idx)))

        apply(shuffle, lambda v: local_pixel_shuffle(v, g, coverage=self.shuffle_coverage))
        apply(nonlinear, lambda v: nonlinear_transform(v, g, self.invert_p))
        apply(paint & ~outer, lambda v: in_paint(v, g))
        apply(paint & outer, lambda v: out_paint(v, g))
        return out
