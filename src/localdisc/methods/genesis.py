"""Models Genesis on the LD U-Net.

Z. Zhou, V. Sodha, M. M. Rahman Siddiquee, R. Feng, N. Tajbakhsh, M. B. Gotway, J. Liang,
"Models Genesis: Generic Autodidactic Models for 3D Medical Image Analysis", MICCAI 2019;
Z. Zhou, V. Sodha, J. Pang, M. B. Gotway, J. Liang, "Models Genesis", Medical Image Analysis 67,
2021. The whole encoder-decoder learns to restore images from corrupted copies (local pixel
shuffling, non-linear intensity curves, in-/out-painting: :mod:`localdisc.data.genesis`) under an
MSE loss (:mod:`localdisc.losses.restoration`).

Network: the LD model's U-Net (``model.backbone``: VGG16-BN quarter-width encoder + decoder, 32
channels at full resolution) and a reconstruction head, a 1x1 convolution to the image's channels
followed by a sigmoid (Models Genesis ends in a sigmoid and regresses intensities in [0, 1]). The
corrupted image is normalised per modality like every network input of the harness; the target
is the uncorrupted view in [0, 1]. Transfer takes the encoder (and may take the decoder); the head
is discarded, as are LD's embedding and clustering heads, which this objective does not train.

Views: one view per instance (the ``2B`` pool images of a step) with LD's geometry (flips,
rotation U(-180, 180), a random resized crop, small rotation) at the run's crop scale (the
engine passes LD's ``crop_scale``; default 0.9-1, LD's default) and LD's colour jitter and
grayscale, so that the views match LD's at the same setting; the jittered view is the
restoration target, the Genesis corruptions act on top of it. This is the harness's choice, not
the papers': Models Genesis restores sub-volumes cut at native resolution, without resized
crops. Its own input/target flips (flip_rate 0.4 in the public code) are subsumed by the
geometry.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from localdisc.data.genesis import GenesisCorruption
from localdisc.data.views import normalize
from localdisc.losses.restoration import restoration_loss
from localdisc.methods.base import PeerViews, PretrainObjective
from localdisc.models.ld import LDModel

__all__ = ["GenesisObjective"]


class GenesisObjective(PretrainObjective):
    """Models Genesis: restore corrupted views with the whole U-Net (MSE).

    Options:
        shuffle_p, nonlinear_p, paint_p, outpaint_p: corruption probabilities (0.5, 0.9, 0.9,
            0.8; see :class:`~localdisc.data.genesis.GenesisCorruption`).
        crop_scale: area range of the view's crop ((0.9, 1.0), LD's default; the engine
            passes the run's).
        jitter: LD's colour jitter + grayscale on the view before corruption (True).
        amp: bf16 autocast of the network where it pays (CUDA, CPUs with bf16).
    """

    name = "genesis"
    views_per_instance = 1

    def __init__(
        self,
        model: LDModel,
        *,
        size: int,
        modality: str,
        shuffle_p: float = 0.5,
        nonlinear_p: float = 0.9,
        paint_p: float = 0.9,
        outpaint_p: float = 0.8,
        crop_scale: tuple[float, float] = (0.9, 1.0),
        jitter: bool = True,
        amp: bool = True,
    ) -> None:
        super().__init__(model, size=size, modality=modality, amp=amp)
        self.corruption = GenesisCorruption(
            shuffle_p=shuffle_p, nonlinear_p=nonlinear_p, paint_p=paint_p, outpaint_p=outpaint_p
        )
        self.reconstruction_head = nn.Conv2d(
            model.backbone.out_channels, model.config.in_channels, 1
        )
        self.views = PeerViews(size, modality, crop_scale=crop_scale, jitter=jitter)

    def online_modules(self) -> list[nn.Module]:
        return [self.model.backbone, self.reconstruction_head]

    def restore(self, corrupted: Tensor) -> Tensor:
        """Reconstruction in [0, 1] of ``[N, C, S, S]`` corrupted images in [0, 1]."""
        with self._autocast(corrupted.device):
            out = self.reconstruction_head(self.model.backbone(normalize(corrupted, self.modality)))
        return torch.sigmoid(out.float())

    def forward(  # type: ignore[override]
        self, x1: Tensor, x2: Tensor, generator: torch.Generator
    ) -> dict[str, Tensor]:
        x = self._instances(x1, x2)
        target = self.views(x, 1, generator).raw
        corrupted = self.corruption(target, generator)
        loss = restoration_loss(self.restore(corrupted), target)
        return {"loss": loss, "restoration": loss.detach()}

    def extra_repr(self) -> str:
        return f"size={self.size}, modality={self.modality!r}, corruption={self.corruption}"
