"""Augmentation of reference masks for the shape discriminator (METHOD.md 5).

Per mask: random horizontal and vertical flips, a rotation by U(0, 360) degrees, a crop of
U(0, ``max_crop``) of the side from each of the four sides independently, a resize to the
output size, and binarisation at ``threshold``. For anatomy imaged in a standard pose (the
lungs and heart of a PA radiograph), ``max_rotation`` and ``flips=False`` keep the pose, so
that the prior says where the structure lies as well as what it looks like.

Rotation, crop and resize are one affine map, so they are applied as a single bilinear
``grid_sample`` (zeros outside): the same geometry as doing them one after the other, with one
interpolation instead of two, so thin vessels are not blurred twice before the threshold.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Random numbers per sample: h-flip, v-flip, angle, crop left, right, top, bottom.
_DRAWS = 7


class PriorAugment:
    """METHOD.md 5: flips, rotation U(0, 360), crop up to 10% per side, resize, binarise at 0.1.

    Args:
        size: output height and width.
        max_crop: the largest fraction of the side cropped from each side.
        threshold: output is ``interpolated > threshold``; 0.1 keeps one-pixel vessels, which
            bilinear resampling spreads over neighbouring pixels, connected.
        max_rotation: rotation U(-max_rotation, max_rotation) degrees; 180 (published) is any
            angle.
        flips: random horizontal and vertical flips (published); False keeps left and right.
    """

    def __init__(
        self,
        size: int,
        *,
        max_crop: float = 0.1,
        threshold: float = 0.1,
        max_rotation: float = 180.0,
        flips: bool = True,
    ) -> None:
        if isinstance(size, bool) or int(size) != size or size < 1:
            raise ValueError(f"augmented mask size must be a positive integer, got {size!r}")
        if not 0.0 <= max_crop < 0.5:
            raise ValueError(f"max_crop must be in [0, 0.5), got {max_crop!r}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
        if not 0.0 <= max_rotation <= 180.0:
            raise ValueError(f"max_rotation must be in [0, 180] degrees, got {max_rotation!r}")
        self.size = int(size)
        self.max_crop = float(max_crop)
        self.threshold = float(threshold)
        self.max_rotation = float(max_rotation)
        self.flips = bool(flips)

    def __repr__(self) -> str:
        return (
            f"PriorAugment(size={self.size}, max_crop={self.max_crop}, threshold={self.threshold}"
            f", max_rotation={self.max_rotation}, flips={self.flips})"
        )

    def _theta(self, u: torch.Tensor) -> torch.Tensor:
        """Affine matrices [B, 2, 3] (float64, CPU) from uniforms [B, 7].

        ``affine_grid`` maps each output location p (normalised, -1..1) to where it samples
        the input: p -> crop box (c + s * p) -> rotation R -> flips F, i.e. F R (diag(s) p + c).
        """
        b = u.shape[0]
        flip_x = torch.where((u[:, 0] < 0.5) & self.flips, -1.0, 1.0)
        flip_y = torch.where((u[:, 1] < 0.5) & self.flips, -1.0, 1.0)
        if self.max_rotation >= 180.0:
            angle = u[:, 2] * (2.0 * math.pi)  # the published U(0, 360), draw for draw
        else:
            angle = (2.0 * u[:, 2] - 1.0) * math.radians(self.max_rotation)
        left, right, top, bottom = (u[:, 3 + k] * self.max_crop for k in range(4))
        # Normalised coordinates span 2 per side: cropping a fraction f moves an edge by 2 f.
        scale = torch.stack([1.0 - left - right, 1.0 - top - bottom], dim=1)
        centre = torch.stack([left - right, top - bottom], dim=1)
        cos, sin = torch.cos(angle), torch.sin(angle)
        rot = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
        flips = torch.zeros(b, 2, 2, dtype=u.dtype)
        flips[:, 0, 0], flips[:, 1, 1] = flip_x, flip_y
        fr = flips @ rot
        linear = fr * scale[:, None, :]  # fr @ diag(scale)
        shift = (fr @ centre[:, :, None])[:, :, 0]
        return torch.cat([linear, shift[:, :, None]], dim=2)

    def __call__(self, masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment ``masks`` [B, 1, H, W] (bool, uint8 or float in {0, 1}).

        Returns ``float32`` [B, 1, size, size] in {0, 1} on the masks' device. All random
        numbers come from ``generator`` (on its own device, then copied), so the result
        depends only on the generator's state, not on where the masks live.
        """
        if masks.ndim != 4 or masks.shape[1] != 1:
            raise ValueError(f"expected masks [B, 1, H, W], got {tuple(masks.shape)}")
        b = masks.shape[0]
        device = masks.device
        u = torch.rand(b, _DRAWS, generator=generator, device=generator.device)
        theta = self._theta(u.to("cpu", torch.float64)).to(device, torch.float32)
        x = masks.to(torch.float32)
        h, w = x.shape[-2:]
        if (h, w) != (self.size, self.size):
            # Large masks first come down to the output size with antialiasing: grid_sample
            # alone would skip thin vessels between its sample points. Non-square masks are
            # stretched; the bank from load_prior is square.
            x = F.interpolate(
                x,
                size=(self.size, self.size),
                mode="bilinear",
                align_corners=False,
                antialias=h > self.size or w > self.size,
            )
        if b == 0:
            return x
        grid = F.affine_grid(theta, [b, 1, self.size, self.size], align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return (out > self.threshold).to(torch.float32)


def sample_prior_batch(
    bank: torch.Tensor, batch: int, augment: PriorAugment, generator: torch.Generator
) -> torch.Tensor:
    """``batch`` masks drawn with replacement from ``bank`` [N, 1, S, S], augmented.

    Returns ``float32`` [batch, 1, augment.size, augment.size] on the bank's device.
    """
    if bank.ndim != 4 or bank.shape[1] != 1 or bank.shape[0] == 0:
        raise ValueError(f"expected a non-empty bank [N, 1, S, S], got {tuple(bank.shape)}")
    index = torch.randint(
        bank.shape[0], (int(batch),), generator=generator, device=generator.device
    )
    return augment(bank[index.to(bank.device)], generator)
