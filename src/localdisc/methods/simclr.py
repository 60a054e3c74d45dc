"""SimCLR on the LD encoder.

T. Chen, S. Kornblith, M. Norouzi, G. Hinton, "A Simple Framework for Contrastive Learning of
Visual Representations", ICML 2020. Two independently augmented views of every instance go
through the encoder ``f`` (here the VGG16-BN quarter-width encoder, globally average-pooled from
its deepest 128-channel map) and a projection head ``g`` (MLP with one hidden layer and ReLU,
``z = W2 ReLU(W1 h)``); NT-Xent (:func:`localdisc.losses.nt_xent.nt_xent_loss`) pulls the two
views of an instance together against the ``2N - 2`` other views of the batch.

Choices for the medical harness:

- Instances: the ``2B`` pool images of a step (``x1`` and ``x2``), two views each, so
  ``2N = 4B`` views (16 at the published LD batch ``B = 4``).
- Head widths 128 -> 128 -> 128: the paper keeps the hidden layer at the representation width
  (2048 -> 2048) and projects to 128.
- Temperature 0.2 (see :mod:`localdisc.losses.nt_xent` for why not 0.1 or 0.5).
- Augmentation: the LD family (:class:`~localdisc.methods.base.PeerViews`) with an independent
  geometry per view. SimCLR's own recipe (crop scale 0.08-1, colour distortion 0.8/0.8/0.8/0.2 with
  p = 0.8, Gaussian blur) is tuned for ImageNet: a hue shift of 0.2 turns a retina blue and crops
  of 8% of a 512 pool image at S = 448 are 3x zooms whose vessels look unlike any transfer input.
  We keep LD's photometric strengths (so the peers differ from LD in the objective, not in the
  data) and crop scale 0.2-1 (MoCo v2/DenseCL's lower bound; at most ~2x zoom); no blur, which
  LD's family lacks and which would erase the thin vessels the downstream tasks segment.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from localdisc.losses.nt_xent import TAU, nt_xent_loss
from localdisc.methods.base import PeerViews, PretrainObjective, deepest_features
from localdisc.models.ld import LDModel
from localdisc.models.projection import ProjectionHead

__all__ = ["SimCLRObjective"]


class SimCLRObjective(PretrainObjective):
    """SimCLR: NT-Xent over two views of each of the ``2B`` pool images of a step.

    Options:
        tau: NT-Xent temperature (0.2).
        hidden_dim, out_dim: projection head widths (default: encoder width, 128).
        crop_scale: area range of each view's crop ((0.2, 1.0)).
        amp: bf16 autocast of the network where it pays (CUDA, CPUs with bf16).
    """

    name = "simclr"
    views_per_instance = 2

    def __init__(
        self,
        model: LDModel,
        *,
        size: int,
        modality: str,
        tau: float = TAU,
        hidden_dim: int | None = None,
        out_dim: int = 128,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        amp: bool = True,
    ) -> None:
        super().__init__(model, size=size, modality=modality, amp=amp)
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.tau = tau
        width = model.encoder.channels[-1]
        self.head = ProjectionHead(width, hidden_dim or width, out_dim)
        self.views = PeerViews(size, modality, crop_scale=crop_scale)

    def online_modules(self) -> list[nn.Module]:
        return [self.model.encoder, self.head]

    def forward(  # type: ignore[override]
        self, x1: Tensor, x2: Tensor, generator: torch.Generator
    ) -> dict[str, Tensor]:
        x = self._instances(x1, x2)
        batch = self.views(x, 2, generator)  # rows: view 1 of all, then view 2 of all
        with self._autocast(x.device):
            z = self.head(deepest_features(self.model.encoder, batch.images))
        loss = nt_xent_loss(z, self.tau)
        return {"loss": loss, "nt_xent": loss.detach()}

    def extra_repr(self) -> str:
        return f"tau={self.tau}, size={self.size}, modality={self.modality!r}"
