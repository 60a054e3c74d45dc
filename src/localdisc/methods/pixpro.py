"""PixPro on the LD encoder.

Z. Xie, Y. Lin, Z. Zhang, Y. Cao, S. Lin, H. Hu, "Propagate Yourself: Exploring Pixel-Level
Consistency for Unsupervised Visual Representation Learning", CVPR 2021. A regular encoder (the
LD model's VGG encoder + a projection head of two 1x1 convolutions with BN and ReLU between them +
the pixel propagation module, PPM) and a momentum encoder (EMA copy of encoder and projection
head, no PPM) see two views of every instance; cells of the two feature grids that lie within
``T = 0.7`` bin diagonals of each other in the original image are positive pairs, and the loss is
the symmetric pixel-to-propagation consistency ``-cos(y_i, x'_j) - cos(y_j, x'_i)``
(:mod:`localdisc.losses.pixpro`). No negatives, no queue.

Hyper-parameters (paper): PPM ``gamma = 2``, one linear layer in the transform ``g``, ``T = 0.7``,
momentum increased from 0.99 to 1 with a cosine schedule (BYOL's ``m = 1 - (1 - m0) (cos(pi k /
K) + 1) / 2``). The schedule follows the fraction of the run done, ``k / K``: the engine passes
it to :meth:`~PixProObjective.after_step` as ``progress``, which under a wall-clock budget is the
larger of the step fraction and the budget's fraction spent (a budget ends the run long before
its step count, where ``k / K`` alone would leave the momentum at 0.99). Without ``progress`` the
objective counts its own steps against ``momentum_steps``; without either the momentum stays at
0.99. Neither needs state of its own on resume: the engine restores its step and clock, and the
step counter is a buffer (in ``state_dict()``). Projection head 128 -> 256
-> 128 (the paper's BYOL-style head doubles the width in the hidden layer, 2048 -> 4096 -> 256;
we keep the output at 128 like the other peers, as 256 would exceed the 128-channel encoder).
The paper's optional instance-level branch (PixPro + "instance") is not used.

Adaptations: the feature grid is the encoder's 1/16 map (28 x 28 at the published S = 448); views
from :class:`~localdisc.methods.base.PeerViews` (LD family with an independent geometry per
view, crop scale 0.2-1; the paper's BYOL recipe with crops from 0.08, strong colour distortion,
blur and solarisation is tuned for ImageNet, see :mod:`localdisc.methods.simclr`). Because every
view's geometry is a known affine map of the pool image (crop, flips and rotations composed), the
cells are warped to the original image exactly, rotations included; a cell whose centre falls in
the padding (outside the image) is no positive (the paper's crops stay inside the image).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from localdisc.losses.pixpro import THRESHOLD, pixpro_consistency_loss, pixpro_positive_mask
from localdisc.methods.base import (
    PeerViews,
    PretrainObjective,
    deepest_features,
    frozen_copy,
    momentum_update,
)
from localdisc.models.ld import LDModel
from localdisc.models.projection import DenseProjectionHead, PixelPropagation

__all__ = ["PixProObjective"]


class PixProObjective(PretrainObjective):
    """PixPro: pixel-to-propagation consistency with a momentum encoder.

    Options:
        gamma: PPM sharpness (2). transform_layers: layers of the PPM's ``g`` (1).
        threshold: positive-pair distance in bin diagonals (0.7).
        momentum: base EMA momentum (0.99). momentum_steps: length of the cosine schedule to 1
            where :meth:`after_step` gets no ``progress`` (``None``: constant momentum then).
        hidden_dim, out_dim: projection head widths (256, 128).
        crop_scale: area range of each view's crop ((0.2, 1.0)).
        amp: bf16 autocast of the networks where it pays (CUDA, CPUs with bf16).
    """

    name = "pixpro"
    views_per_instance = 2

    def __init__(
        self,
        model: LDModel,
        *,
        size: int,
        modality: str,
        gamma: float = 2.0,
        transform_layers: int = 1,
        threshold: float = THRESHOLD,
        momentum: float = 0.99,
        momentum_steps: int | None = None,
        hidden_dim: int | None = None,
        out_dim: int = 128,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        amp: bool = True,
    ) -> None:
        super().__init__(model, size=size, modality=modality, amp=amp)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if momentum_steps is not None and momentum_steps < 1:
            raise ValueError(f"momentum_steps must be >= 1, got {momentum_steps}")
        if threshold <= 0:
            raise ValueError(f"threshold must be positive, got {threshold}")
        self.threshold = threshold
        self.base_momentum = momentum
        self.momentum_steps = momentum_steps
        width = model.encoder.channels[-1]
        self.projector = DenseProjectionHead(
            width, hidden_dim or 2 * width, out_dim, batch_norm=True
        )
        self.propagation = PixelPropagation(out_dim, gamma=gamma, layers=transform_layers)
        self.momentum_encoder = frozen_copy(model.encoder)
        self.momentum_projector = frozen_copy(self.projector)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.views = PeerViews(size, modality, crop_scale=crop_scale)

    def online_modules(self) -> list[nn.Module]:
        return [self.model.encoder, self.projector, self.propagation]

    @property
    def momentum(self) -> float:
        """The EMA momentum of the next :meth:`after_step` without ``progress`` (the cosine
        schedule over ``momentum_steps`` steps, else the base)."""
        return self.momentum_at(None)

    def momentum_at(self, progress: float | None) -> float:
        """The cosine schedule's momentum at ``progress`` (the fraction of the run done, clamped
        to 0..1); ``None``: at this objective's step count over ``momentum_steps``."""
        if progress is None:
            if self.momentum_steps is None:
                return self.base_momentum
            progress = min(int(self.step), self.momentum_steps) / self.momentum_steps
        progress = min(max(float(progress), 0.0), 1.0)
        return 1.0 - (1.0 - self.base_momentum) * (math.cos(math.pi * progress) + 1) / 2

    def forward(  # type: ignore[override]
        self, x1: Tensor, x2: Tensor, generator: torch.Generator
    ) -> dict[str, Tensor]:
        x = self._instances(x1, x2)
        n = x.shape[0]
        batch = self.views(x, 2, generator)
        with self._autocast(x.device):
            proj = self.projector(deepest_features(self.model.encoder, batch.images))
            with torch.no_grad():
                keys = self.momentum_projector(
                    deepest_features(self.momentum_encoder, batch.images)
                )
        y = self.propagation(proj.float())
        grid = tuple(y.shape[2:])
        theta = batch.theta.to(y.device)  # the geometry is computed where the features are
        mask = pixpro_positive_mask(theta[:n], theta[n:], grid, batch.image_hw, self.threshold)
        loss = pixpro_consistency_loss(y[:n], keys[n:], y[n:], keys[:n], mask)
        return {
            "loss": loss,
            "pixpro": loss.detach(),
            "positives": mask.sum(dim=(1, 2)).float().mean(),
        }

    @torch.no_grad()
    def after_step(self, progress: float | None = None) -> None:
        """EMA of the momentum encoder and projector at the schedule's momentum for
        ``progress`` (the fraction of the run done before this step; ``None``: the step
        count), then advance the step count."""
        m = self.momentum_at(progress)
        momentum_update(self.model.encoder, self.momentum_encoder, m)
        momentum_update(self.projector, self.momentum_projector, m)
        self.step += 1

    def extra_repr(self) -> str:
        return (
            f"threshold={self.threshold}, momentum={self.base_momentum}, "
            f"momentum_steps={self.momentum_steps}"
        )
