"""Two-view + mix generator for local-discrimination pre-training (METHOD.md section 2).

Everything is a batched tensor operation on the device the input lives on, so the view pipeline
keeps up with the GPU (a per-item PIL pipeline costs about 0.12 s of CPU per item). Random
parameters are drawn on the CPU from an explicit :class:`torch.Generator` and then moved to the
device, so a seed reproduces a batch exactly whatever the device.

Pipeline for one step with ``B`` items (pairs of pool images ``I1``, ``I2``):

1. Shared geometry per image: horizontal and vertical flips (p = 0.5 each), rotation
   U(-rotation, rotation) degrees, random resized crop (area scale U(crop_scale), aspect ratio
   log-uniform, see :class:`LDViews`) resized to ``S x S``.
2. Per view: a small rotation U(-view_rotation, view_rotation), colour jitter, grayscale.
   Steps 1 and the small rotation are composed into ONE affine matrix per output image and done
   in a single bilinear ``grid_sample`` pass (one interpolation, not three).
3. View 2 additionally gets an exact 180-degree flip of both axes (p = 0.5) and ``rot90`` by
   ``k`` in {0, 1, 2, 3}; :func:`undo_view2` inverts both exactly on a feature grid.
4. Mix ``m = lam * view1(I1) + (1 - lam) * view1(I2)`` in [0, 1] space, before normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from localdisc.data.preprocess import LUMA, MODALITY_STATS, SCALED_INTEGERS, raw_intensities

Modality = Literal["fundus", "xray"]


def _stats(modality: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std per channel for ``modality``; raises on an unknown name."""
    if modality not in MODALITY_STATS:
        raise ValueError(f"unknown modality {modality!r}: expected 'fundus' or 'xray'")
    return MODALITY_STATS[modality]


def modality_channels(modality: str) -> int:
    """Number of image channels for ``modality`` (3 for fundus, 1 for xray)."""
    return len(_stats(modality)[0])


def host_to_device(t: Tensor, device: torch.device) -> Tensor:
    """CPU tensor ``t`` copied to ``device`` without making the host wait for the device.

    On CUDA a plain ``.to(device)`` is a copy followed by a stream synchronisation: the host
    waits for every kernel queued so far, and the GPU then idles while the host queues the next
    ones. From pinned memory with ``non_blocking=True`` the copy is queued on the stream like a
    kernel (PyTorch keeps the pinned buffer until the copy is done). Other devices get a plain
    copy, as before: pinning is CUDA's, and a non-blocking copy from pageable memory gains
    nothing there.
    """
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@lru_cache(maxsize=32)
def _constant(
    values: tuple[float, ...], shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> Tensor:
    """``values`` as a tensor of ``shape`` on ``device``, made once: ``torch.tensor(...,
    device=cuda)`` at every call is a blocking copy (see :func:`host_to_device`). Callers must
    not modify it. Never an inference tensor: one made under ``torch.inference_mode()`` could
    not be used later where autograd records (an input that needs its gradient)."""
    with torch.inference_mode(False):
        return torch.tensor(values, dtype=dtype, device=device).view(shape)


def _mean_std(x: Tensor, modality: str) -> tuple[Tensor, Tensor]:
    mean, std = _stats(modality)
    if x.dim() < 3 or x.shape[-3] != len(mean):
        raise ValueError(
            f"{modality} images need {len(mean)} channel(s) in dim -3, got shape {tuple(x.shape)}"
        )
    shape = (len(mean), 1, 1)
    dtype = x.dtype if x.is_floating_point() else torch.float32
    return (
        _constant(tuple(mean), shape, dtype, x.device),
        _constant(tuple(std), shape, dtype, x.device),
    )


#: Integer tensors taken as images and scaled by their maximum: the types of
#: :data:`~localdisc.data.preprocess.SCALED_INTEGERS` (uint8 / 255, uint16 / 65535).
_SCALED_DTYPES = frozenset(getattr(torch, t.__name__) for t in SCALED_INTEGERS)


def intensities(x: Tensor, name: str = "images") -> Tensor:
    """``x`` as intensities in [0, 1], on its device, by the package's one rule
    (:func:`~localdisc.data.preprocess.raw_intensities`): ``uint8`` / 255 and ``uint16`` / 65535
    (float32), ``bool`` 0 and 1, floats as they are; other dtypes raise
    :class:`~localdisc.errors.InputError` naming ``name``.

    Decided by the dtype alone, with no pass over the values, as it runs at every training
    step: floats are NOT checked here (0-255 values stored as floats pass); see
    :func:`check_intensities`.
    """
    if x.is_floating_point():
        return x
    if x.dtype == torch.bool:
        return x.float()
    if x.dtype in _SCALED_DTYPES:
        return x.float().div_(torch.iinfo(x.dtype).max)
    # raw_intensities refuses every other dtype by its type alone, in the package's words: one
    # value is all it needs to see (no copy of the batch to the CPU).
    raw_intensities(x.reshape(-1)[:1], name)
    raise AssertionError(f"raw_intensities took a {x.dtype} tensor")  # it raises above


def check_intensities(x: Tensor, name: str = "images") -> None:
    """Raise :class:`~localdisc.errors.InputError` naming ``name`` if float ``x`` holds values
    that are not intensities in [0, 1] (by :func:`~localdisc.data.preprocess.raw_intensities`'s
    rule: finite, within its slack of [0, 1]), such as 0-255 values stored as floats.

    One pass over ``x`` and a wait for the device (two numbers come back): for a first batch,
    not for every training step. Integer and bool tensors pass (see :func:`intensities`).
    """
    if x.is_floating_point() and x.numel() > 0:
        lo, hi = torch.aminmax(x.detach())
        raw_intensities(torch.stack([lo, hi]), name)


def normalize(x: Tensor, modality: str) -> Tensor:
    """Map ``[..., C, H, W]`` intensities to the network's input normalisation.

    ``x``: ``uint8`` (0..255) or ``uint16`` (0..65535), scaled to [0, 1] as
    :func:`intensities` does, or float intensities in [0, 1]. Floats are not checked (that would
    be a pass over every training batch): 0-255 values stored as floats give inputs in the
    hundreds; :func:`check_intensities` checks them. Other integer types raise
    :class:`~localdisc.errors.InputError`: their full scale is unknown.

    Fundus: ImageNet mean/std per RGB channel; X-ray: ``(x - 0.5) / 0.5``.
    """
    x = intensities(x)
    mean, std = _mean_std(x, modality)
    return (x - mean) / std


def denormalize(x: Tensor, modality: str) -> Tensor:
    """Inverse of :func:`normalize`: back to [0, 1] intensities (not clamped)."""
    mean, std = _mean_std(x, modality)
    return x * std + mean


# --------------------------------------------------------------------------------------------
# Exact 90-degree rotations, per item, without a Python loop over items
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _rot90_tables(side: int, device: torch.device) -> Tensor:
    """``[4, side * side]``: the flat index maps of ``torch.rot90(., k)`` for k = 0..3, made once
    per map size (views, feature grids) rather than at every call. Not to be modified; never an
    inference tensor (see :func:`_constant`)."""
    with torch.inference_mode(False):
        ar = torch.arange(side * side, device=device).view(side, side)
        return torch.stack([torch.rot90(ar, k, dims=(0, 1)).reshape(-1) for k in range(4)])


def _rot90_batched(x: Tensor, r: Tensor) -> Tensor:
    """Rotate each ``x[i]`` ([N, C, n, n]) by ``r[i] * 90`` degrees like ``torch.rot90(., r[i])``.

    Implemented as one gather with per-item index tables (the 4 tables are ``torch.rot90`` of an
    index map), so it is exact, loop-free and needs no host/device synchronisation.
    """
    n, c, h, w = x.shape
    if h != w:
        raise ValueError(f"rot90 needs square maps, got {h}x{w}")
    idx = _rot90_tables(h, x.device)[r.to(device=x.device, dtype=torch.long) % 4]  # [N, h*w]
    out = x.reshape(n, c, h * w).gather(2, idx[:, None, :].expand(n, c, h * w))
    return out.view(n, c, h, w)


def _view2_turns(flip: Tensor, rot_k: Tensor) -> Tensor:
    """Quarter turns equivalent to "flip both axes if ``flip``, then rot90 by ``rot_k``".

    Flipping both axes is exactly a 180-degree rotation, so the pair collapses to one rotation.
    """
    return (rot_k.long() + 2 * flip.long()) % 4


def apply_view2(x: Tensor, flip: Tensor, rot_k: Tensor) -> Tensor:
    """Apply view 2's extra transform to ``x`` ([N, C, n, n]): flip both axes where ``flip``,
    then ``torch.rot90(., rot_k, dims=(-2, -1))``. Exact (pure index permutation)."""
    return _rot90_batched(x, _view2_turns(flip, rot_k))


def undo_view2(grid: Tensor, flip: Tensor, rot_k: Tensor) -> Tensor:
    """Bring view-2 features back into view-1 orientation.

    Args:
        grid: ``[2B, D, g, g]`` features (e.g. the 8x8 pooled patch embeddings) of the view-2
            images, in the order of :attr:`ViewBatch.flip` / :attr:`ViewBatch.rot_k`.
        flip: ``[2B]`` bool, view 2 got a 180-degree flip of both axes.
        rot_k: ``[2B]`` int, view 2 was then rotated by ``rot_k * 90`` degrees.

    Returns:
        ``grid`` rotated back by ``-rot_k * 90`` and un-flipped, so that cell ``(u, w)`` covers the
        same tissue as cell ``(u, w)`` of view 1. This is exact when the image size is a multiple
        of the grid size (pooling commutes with the permutation).
    """
    if grid.dim() != 4 or grid.shape[0] != flip.shape[0] or grid.shape[0] != rot_k.shape[0]:
        raise ValueError(
            f"grid must be [N, D, g, g] with N = len(flip) = len(rot_k); got {tuple(grid.shape)}, "
            f"{tuple(flip.shape)}, {tuple(rot_k.shape)}"
        )
    return _rot90_batched(grid, (-_view2_turns(flip, rot_k)) % 4)


# --------------------------------------------------------------------------------------------
# Colour jitter (vectorised; per-image factors)
# --------------------------------------------------------------------------------------------


def _gray(x: Tensor) -> Tensor:
    """Luma ``[N, 1, H, W]`` of an RGB batch ``[N, 3, H, W]``."""
    r, g, b = x.unbind(1)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(1)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the HSV hue of ``[N, 3, H, W]`` RGB images in [0, 1] by ``shift[i]`` turns.

    Same result as torchvision's ``adjust_hue`` (RGB -> HSV, shift H, -> RGB), but fused: a hue
    shift keeps each pixel's max (V) and max - min (V*S), so only the hue sector is computed and
    the branch-free inverse ``c = max - (max - min) * clamp(min(k, 4 - k), 0, 1)``,
    ``k = (n_c + 6h) mod 6`` with ``n = 5, 3, 1`` for R, G, B, is applied directly. No S or V
    channels, no per-sector gathers, no concatenations.
    """
    r, g, b = x.unbind(1)
    vmax, vmin = x.amax(1), x.amin(1)
    delta = vmax - vmin
    # Grey pixels (delta = 0) have no hue: any value works since delta multiplies it away.
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h6 = torch.where(
        vmax == r,
        torch.remainder((g - b) / safe, 6.0),
        torch.where(vmax == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
    )
    h6 = h6.add_(6.0 * shift.to(device=x.device, dtype=x.dtype).view(-1, 1, 1))
    n = _constant((5.0, 3.0, 1.0), (1, 3, 1, 1), x.dtype, x.device)
    k = torch.remainder(h6.unsqueeze(1) + n, 6.0)
    k = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return k.mul_(-delta.unsqueeze(1)).add_(vmax.unsqueeze(1))


def color_jitter(
    x: Tensor,
    brightness: Tensor,
    contrast: Tensor,
    saturation: Tensor,
    hue: Tensor | None,
    grayscale: Tensor,
) -> Tensor:
    """Colour jitter + random grayscale with per-image factors, like torchvision's
    ``ColorJitter`` followed by ``RandomGrayscale`` (same formulas, clamped after each step).

    The order is FIXED (brightness, contrast, saturation, hue): torchvision draws a random order
    per image, which would need every operation evaluated at every position to vectorise (4x the
    work) for a negligible change in the distribution at these strengths.

    Args:
        x: ``[N, C, H, W]`` in [0, 1], ``C`` 1 or 3. Not modified.
        brightness, contrast, saturation: ``[N]`` multiplicative factors (1 = unchanged).
            Saturation is ignored for one channel.
        hue: ``[N]`` hue shifts in turns of the colour circle (see :func:`adjust_hue`), or
            ``None`` to skip it (the round trip is exact only to rounding). Ignored for one
            channel. An HSV shift rather than a YIQ rotation so that saturation and value are
            preserved exactly and the colours stay in gamut, as in torchvision.
        grayscale: ``[N]`` bool, replace RGB by its luma replicated to three channels (ignored
            for one channel, which is grey already).
    """
    n, c = x.shape[:2]

    def per_image(t: Tensor) -> Tensor:
        return t.to(device=x.device, dtype=x.dtype).view(n, 1, 1, 1)

    # In-place arithmetic after the first (copying) multiply: these tensors are large.
    x = (x * per_image(brightness)).clamp_(0.0, 1.0)
    # Contrast blends towards the image's mean grey level (torchvision's definition).
    mean = (_gray(x) if c == 3 else x).mean(dim=(1, 2, 3), keepdim=True)
    cf = per_image(contrast)
    x.mul_(cf).add_((1.0 - cf) * mean).clamp_(0.0, 1.0)
    if c != 3:
        return x
    sf = per_image(saturation)
    gray = _gray(x).mul_(1.0 - sf)  # before x changes in place
    x.mul_(sf).add_(gray).clamp_(0.0, 1.0)
    if hue is not None:
        x = adjust_hue(x, hue).clamp_(0.0, 1.0)
    gmask = grayscale.to(x.device).view(n, 1, 1, 1)
    return torch.where(gmask, _gray(x).expand_as(x), x)


# --------------------------------------------------------------------------------------------
# The view generator
# --------------------------------------------------------------------------------------------


@dataclass
class ViewBatch:
    """One pre-training step's images (all tensors on the input's device).

    Attributes:
        images: ``[5B, C, S, S]`` float32, normalised (see :func:`normalize`); order: view1(I1),
            view1(I2), view2(I1), view2(I2), mix, each block ``B`` images.
        lam: ``[B]`` mix weights: ``mix = lam * view1(I1) + (1 - lam) * view1(I2)`` in [0, 1].
        flip: ``[2B]`` bool, view 2 of (I1..., I2...) got a 180-degree flip of both axes.
        rot_k: ``[2B]`` int64 in {0, 1, 2, 3}: view 2 was then rotated by ``torch.rot90(., k)``.
        raw: ``[5B, C, S, S]`` in [0, 1] before normalisation, only with ``keep_raw=True``.
    """

    images: Tensor
    lam: Tensor
    flip: Tensor
    rot_k: Tensor
    raw: Tensor | None = None

    @property
    def batch_size(self) -> int:
        """Number of items ``B`` (pairs of pool images)."""
        return int(self.lam.shape[0])


def _uniform(n: int, lo: float, hi: float, g: torch.Generator | None) -> Tensor:
    """``n`` draws of U(lo, hi) in float64 on the CPU; exactly ``lo`` when ``lo == hi``."""
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def _rotation(angle: Tensor) -> Tensor:
    """``[N, 2, 2]`` rotation matrices for angles in radians."""
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


class LDViews:
    """Batched two-view + mix generator (METHOD.md section 2).

    Args:
        size: output side ``S``; must be a multiple of 16 so that view 2's rot90/flip are exact
            on the 8x8 patch grid (and its even halves).
        modality: ``"fundus"`` (3 channels, zeros padding: the fundus background is black) or
            ``"xray"`` (1 channel, border padding). For X-rays, zeros would paint a black wedge
            into the rotated corners whose straight edge is a strong artificial contour and a
            cue to the rotation; reflection would mirror anatomy (ribs, clavicles) into fake local
            structure, which is exactly what local discrimination must not learn from. Border
            padding smears the edge values, which gives flat, uninformative corners.
        crop_scale: area fraction range of the random resized crop.
        crop_ratio: aspect ratio (width / height) range, torchvision's default (3/4, 4/3). For
            each image the ratio is drawn log-uniformly from this range CLIPPED to the ratios for
            which the crop fits inside the image, ``[s*W/H, W/(s*H)]`` for area scale ``s``.
            These are exactly the crops torchvision's rejection sampler would accept, but drawn
            in one vectorised step with no fallback to a centre crop; for scale >= 0.9 the crop
            can never leave the image and, on a square input (every pool's), the aspect
            distortion stays within about +-10 %. A non-square input's crop, nearly the whole
            image, is squashed into the square output by about the input's own aspect ratio.
        rotation: shared rotation range in degrees (U(-rotation, rotation)).
        view_rotation: per-view rotation range in degrees.
        brightness, contrast, saturation: jitter strengths; factors are U(max(0, 1-v), 1+v).
        hue: hue shift range U(-hue, hue) in fractions of the colour circle (<= 0.5).
        grayscale_p: probability that a view is turned to grey (3 channels only).
        lam_range: range of the mix weight.
        flip_p: probability of each shared horizontal and vertical flip.
        view2_flip_p: probability of view 2's 180-degree flip.
        view2_rot90: draw view 2's ``k`` uniformly in {0..3} (otherwise ``k = 0``).
        keep_raw: also return the [0, 1] images before normalisation.

    The geometric steps are composed into one affine map per output image, so their padding is
    that of a single resampling: the small per-view rotation therefore reveals pixels of the
    pool image just outside the crop instead of black corners.
    """

    def __init__(
        self,
        size: int = 448,
        modality: Modality = "fundus",
        *,
        crop_scale: tuple[float, float] = (0.9, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        rotation: float = 180.0,
        view_rotation: float = 2.0,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        hue: float = 0.02,
        grayscale_p: float = 0.2,
        lam_range: tuple[float, float] = (0.2, 0.8),
        flip_p: float = 0.5,
        view2_flip_p: float = 0.5,
        view2_rot90: bool = True,
        keep_raw: bool = False,
    ) -> None:
        if size <= 0 or size % 16 != 0:
            raise ValueError(
                f"size must be a positive multiple of 16 so that view 2's flips/rotations are "
                f"exact on the 8x8 patch grid, got {size}"
            )
        self.channels = modality_channels(modality)
        if not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {crop_scale}")
        if not 0.0 < crop_ratio[0] <= crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < lo <= hi, got {crop_ratio}")
        if not 0.0 <= lam_range[0] <= lam_range[1] <= 1.0:
            raise ValueError(f"lam_range must satisfy 0 <= lo <= hi <= 1, got {lam_range}")
        for name, v in [("brightness", brightness), ("contrast", contrast)]:
            if v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        if saturation < 0:
            raise ValueError(f"saturation must be >= 0, got {saturation}")
        if not 0.0 <= hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {hue}")
        for name, p in [
            ("grayscale_p", grayscale_p),
            ("flip_p", flip_p),
            ("view2_flip_p", view2_flip_p),
        ]:
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability, got {p}")
        self.size = size
        self.modality = modality
        self.crop_scale = crop_scale
        self.crop_ratio = crop_ratio
        self.rotation = rotation
        self.view_rotation = view_rotation
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation
        self.hue = hue
        self.grayscale_p = grayscale_p
        self.lam_range = lam_range
        self.flip_p = flip_p
        self.view2_flip_p = view2_flip_p
        self.view2_rot90 = view2_rot90
        self.keep_raw = keep_raw
        self.padding_mode = "zeros" if modality == "fundus" else "border"
        # The first float batch's range is checked (see __call__), not every step's.
        self._floats_checked = False

    def _thetas(self, n: int, height: int, width: int, g: torch.Generator | None) -> Tensor:
        """Affine matrices ``[2n, 2, 3]`` (float64, CPU) for view 1 then view 2 of ``n`` images.

        Each maps output normalised coordinates to input normalised coordinates (the convention
        of ``affine_grid``): small view rotation -> crop box -> undo shared rotation -> undo flips.
        The middle steps work in centred pixel units so that rotations stay rigid on
        non-square inputs.
        """
        f64 = torch.float64
        # Flip signs: -1 mirrors the axis (x_in = -x_out).
        sx = 1.0 - 2.0 * (torch.rand(n, generator=g, dtype=f64) < self.flip_p).to(f64)
        sy = 1.0 - 2.0 * (torch.rand(n, generator=g, dtype=f64) < self.flip_p).to(f64)
        theta = torch.deg2rad(_uniform(n, -self.rotation, self.rotation, g))
        scale = _uniform(n, *self.crop_scale, g)
        area = scale * (height * width)
        # Log-uniform ratio within torchvision's range, clipped to crops that fit (see class doc).
        lo = torch.clamp(area / height**2, min=self.crop_ratio[0])
        hi = torch.clamp(width**2 / area, max=self.crop_ratio[1])
        lo = torch.minimum(lo, hi)  # only for extreme aspect ratios of the input
        ratio = torch.exp(lo.log() + (hi.log() - lo.log()) * torch.rand(n, generator=g, dtype=f64))
        cw = torch.sqrt(area * ratio).clamp(max=width)
        ch = torch.sqrt(area / ratio).clamp(max=height)
        cx = (torch.rand(n, generator=g, dtype=f64) - 0.5) * (width - cw)
        cy = (torch.rand(n, generator=g, dtype=f64) - 0.5) * (height - ch)
        phi = torch.deg2rad(_uniform(2 * n, -self.view_rotation, self.view_rotation, g))

        to_norm = torch.diag(torch.tensor([2.0 / width, 2.0 / height], dtype=f64))
        # Shared part: normalised input <- flips <- inverse shared rotation <- crop box.
        shared = to_norm @ torch.diag_embed(torch.stack([sx, sy], -1)) @ _rotation(-theta)
        lin = shared @ torch.diag_embed(torch.stack([cw / 2, ch / 2], -1))  # [n, 2, 2]
        shift = shared @ torch.stack([cx, cy], -1).unsqueeze(-1)  # [n, 2, 1]
        lin = lin.repeat(2, 1, 1) @ _rotation(-phi)  # views share geometry, not phi
        return torch.cat([lin, shift.repeat(2, 1, 1)], -1)

    def __call__(
        self, x1: Tensor, x2: Tensor, generator: torch.Generator | None = None
    ) -> ViewBatch:
        """Generate the ``5B`` images of one step from two ``[B, C, P, P]`` batches.

        Args:
            x1, x2: the images ``I1`` and ``I2`` of each item, of one dtype: uint8 (0..255),
                uint16 (0..65535) or float in [0, 1] (see :func:`intensities`; other integer
                types raise :class:`~localdisc.errors.InputError`), on any device (the work
                happens there). The first float batch an instance sees is checked to hold
                intensities in [0, 1] (:func:`check_intensities`: 0-255 values stored as floats
                would all clip to white); later ones are not, as that costs a wait for the
                device at every step.
            generator: CPU generator for all random draws; ``None`` uses torch's global RNG.
        """
        if x1.shape != x2.shape or x1.dim() != 4:
            raise ValueError(
                f"x1 and x2 must both be [B, C, P, P] of the same shape, got "
                f"{tuple(x1.shape)} and {tuple(x2.shape)}"
            )
        if x1.device != x2.device:
            raise ValueError(f"x1 and x2 are on different devices: {x1.device}, {x2.device}")
        if x1.dtype != x2.dtype:  # concatenated, uint8 and float would mix 0..255 with [0, 1]
            raise ValueError(f"x1 and x2 have different dtypes: {x1.dtype}, {x2.dtype}")
        if x1.is_floating_point() and not self._floats_checked:
            check_intensities(x1, "x1")
            check_intensities(x2, "x2")
            self._floats_checked = True
        b, c, height, width = x1.shape
        if c != self.channels:
            raise ValueError(f"{self.modality} needs {self.channels} channel(s), got {c}")
        if generator is not None and generator.device.type != "cpu":
            raise ValueError("generator must be a CPU torch.Generator (parameters are drawn there)")
        device, n, s = x1.device, 2 * b, self.size
        g = generator

        # --- all random draws, in a fixed order, on the CPU ---------------------------------
        theta = self._thetas(n, height, width, g)  # [2n, 2, 3]
        nv = 2 * n  # number of views
        bright = _uniform(nv, max(0.0, 1 - self.brightness), 1 + self.brightness, g)
        contr = _uniform(nv, max(0.0, 1 - self.contrast), 1 + self.contrast, g)
        satur = _uniform(nv, max(0.0, 1 - self.saturation), 1 + self.saturation, g)
        hue = _uniform(nv, -self.hue, self.hue, g)
        gray = torch.rand(nv, generator=g) < self.grayscale_p
        flip = torch.rand(n, generator=g) < self.view2_flip_p
        rot_k = torch.randint(0, 4, (n,), generator=g)
        if not self.view2_rot90:
            rot_k = torch.zeros_like(rot_k)
        lam = _uniform(b, *self.lam_range, g).float()

        # --- the draws to the device in one copy ---------------------------------------------
        # One copy per draw blocked the host on CUDA 8 times per step (see host_to_device).
        # float32: what the views are computed in (the same rounding as a conversion there).
        draws = [theta, bright, contr, satur, hue, gray, flip, rot_k, lam]
        packed = torch.cat([d.reshape(-1).float() for d in draws])
        parts = host_to_device(packed, device).split([d.numel() for d in draws])
        theta_d, bright_d, contr_d, satur_d, hue_d = parts[0].view(theta.shape), *parts[1:5]
        gray_d, flip_d, rot_d, lam_d = parts[5].bool(), parts[6].bool(), parts[7].long(), parts[8]

        # --- geometry: one bilinear resampling for all 4B views ------------------------------
        x = intensities(torch.cat([x1, x2]), "x1").float()
        grid = F.affine_grid(
            theta_d,
            [nv, c, s, s],
            align_corners=False,
        )
        # Views 1 and 2 of image i both read x[i]; one call for all 4B views (one kernel launch).
        views = F.grid_sample(
            x.repeat(2, 1, 1, 1),
            grid,
            mode="bilinear",
            padding_mode=self.padding_mode,
            align_corners=False,
        ).clamp_(0.0, 1.0)

        # --- photometric, per view -----------------------------------------------------------
        views = color_jitter(
            views, bright_d, contr_d, satur_d, hue_d if self.hue > 0 else None, gray_d
        )

        # --- view 2's exact flip/rot90, and the mix -------------------------------------------
        view1, view2 = views[:n], apply_view2(views[n:], flip_d, rot_d)
        lam4 = lam_d.view(b, 1, 1, 1)
        mix = lam4 * view1[:b] + (1.0 - lam4) * view1[b:]
        raw = torch.cat([view1, view2, mix])
        return ViewBatch(
            images=normalize(raw, self.modality),
            lam=lam_d,
            flip=flip_d,
            rot_k=rot_d,
            raw=raw if self.keep_raw else None,
        )
