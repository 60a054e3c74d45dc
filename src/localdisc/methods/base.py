"""What every peer pre-training objective shares: the interface, its views, momentum encoders.

A :class:`PretrainObjective` wraps an :class:`~localdisc.models.ld.LDModel` (as the submodule
``self.model``, which is what transfer takes: its VGG encoder, and for Models Genesis also its
decoder) together with everything else the method trains or keeps: projection heads, momentum
encoders, queues. The training engine calls, per step::

    terms = objective(x1, x2, generator)      # {"loss": total, ...named scalar terms}
    terms["loss"].backward(); optimizer.step()  # optimizer over objective.trainable_parameters()
    objective.after_step(progress)            # momentum update, queue update

``progress`` is the fraction of the run done (0..1): the step over the run's steps, or, under a
wall-clock budget, the larger of that and the budget's fraction spent; ``None`` lets an objective
fall back on its own step count.

``x1, x2`` are the uint8 ``[B, C, P, P]`` pool images the LD engine samples (LD feeds the pairs
to :class:`~localdisc.data.views.LDViews`). The peers have no use for LD's pairing: every
objective here treats ``torch.cat([x1, x2])`` as ``2B`` independent instances.

Views (:class:`PeerViews`) use the LD augmentation family of METHOD.md section 2 (flips p = 0.5,
rotation U(-180, 180), random resized crop, a small per-view rotation U(-2, 2), colour jitter
0.4/0.4/0.4/0.02 and grayscale p = 0.2, the same padding per modality) built from
:class:`LDViews`' own geometry sampler and :func:`~localdisc.data.views.color_jitter`, with one
change the instance-contrastive methods require: each view gets its OWN geometry (LD shares it
between a pair's views and learns rotation invariance through view 2's exact flip/rot90 instead).
The crop scale is an option of each objective (see :mod:`localdisc.methods`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from localdisc.data.views import LDViews, _uniform, color_jitter, intensities, normalize
from localdisc.engine.precision import bf16_autocast
from localdisc.models.ld import LDModel

__all__ = [
    "PeerViewBatch",
    "PeerViews",
    "PretrainObjective",
    "momentum_update",
    "shuffle_bn_permutation",
]


@dataclass
class PeerViewBatch:
    """Views of ``N`` instances.

    Attributes:
        images: ``[V * N, C, S, S]`` normalised network input; view ``v`` of instance ``i`` is
            row ``v * N + i``.
        raw: the same views in [0, 1] before normalisation.
        theta: ``[V * N, 2, 3]`` float64 CPU affine maps (``F.affine_grid`` convention: output
            normalised coordinates -> pool-image normalised coordinates, ``align_corners=False``).
        image_hw: ``(H, W)`` of the pool images.
    """

    images: Tensor
    raw: Tensor
    theta: Tensor
    image_hw: tuple[int, int]


class PeerViews:
    """Independent LD-family views of a batch of pool images (see the module docstring).

    Args:
        size: output side ``S`` (a multiple of 16, as for :class:`LDViews`).
        modality: ``"fundus"`` or ``"xray"`` (channels and padding as in :class:`LDViews`).
        crop_scale: area fraction range of each view's random resized crop.
        jitter: apply colour jitter + grayscale (``False``: geometry only).
        **ld_options: any other :class:`LDViews` option (``rotation``, ``view_rotation``,
            ``brightness``, ``contrast``, ``saturation``, ``hue``, ``grayscale_p``, ``flip_p``,
            ``crop_ratio``).
    """

    def __init__(
        self,
        size: int,
        modality: str,
        *,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        jitter: bool = True,
        **ld_options: object,
    ) -> None:
        self.ld = LDViews(size, modality, crop_scale=tuple(crop_scale), **ld_options)  # type: ignore[arg-type]
        self.jitter = jitter

    @property
    def size(self) -> int:
        return self.ld.size

    def __call__(
        self, x: Tensor, views: int, generator: torch.Generator | None = None
    ) -> PeerViewBatch:
        """``views`` independently augmented views of each of the ``N`` images ``x``.

        Args:
            x: ``[N, C, P, P]`` uint8 (0..255), uint16 (0..65535) or float in [0, 1], on any
                device (:func:`~localdisc.data.views.intensities`).
            views: views per image.
            generator: CPU generator for every random draw (fixed order, device independent).
        """
        ld = self.ld
        if x.dim() != 4 or x.shape[1] != ld.channels:
            raise ValueError(
                f"{ld.modality} images must be [N, {ld.channels}, P, P], got {tuple(x.shape)}"
            )
        if generator is not None and generator.device.type != "cpu":
            raise ValueError("generator must be a CPU torch.Generator (parameters are drawn there)")
        n, c, height, width = x.shape
        m, s, device, g = views * n, ld.size, x.device, generator
        # LDViews draws a shared geometry for m images and two views of each; its first m
        # matrices (view 1 of each) are m independent geometries with their own small rotation.
        theta = ld._thetas(m, height, width, g)[:m]
        # Photometric draws as in LDViews: factors U(max(0, 1 - v), 1 + v), hue U(-h, h).
        strengths = (ld.brightness, ld.contrast, ld.saturation)
        bright, contr, satur = (_uniform(m, max(0.0, 1 - v), 1 + v, g) for v in strengths)
        hue = _uniform(m, -ld.hue, ld.hue, g)
        gray = torch.rand(m, generator=g) < ld.grayscale_p

        src = intensities(x, "x").float()
        grid = F.affine_grid(
            theta.to(device=device, dtype=torch.float32), [m, c, s, s], align_corners=False
        )
        raw = F.grid_sample(
            src.repeat(views, 1, 1, 1),
            grid,
            mode="bilinear",
            padding_mode=ld.padding_mode,
            align_corners=False,
        ).clamp_(0.0, 1.0)
        if self.jitter:
            raw = color_jitter(
                raw,
                bright.to(device),
                contr.to(device),
                satur.to(device),
                hue.to(device) if ld.hue > 0 else None,
                gray.to(device),
            )
        return PeerViewBatch(normalize(raw, ld.modality), raw, theta, (height, width))


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """``target <- momentum * target + (1 - momentum) * online`` for every parameter.

    Buffers (batch-norm running statistics) are not averaged: the target network keeps its own,
    updated by its own forward passes, as in MoCo and BYOL.
    """
    for p_t, p_o in zip(target.parameters(), online.parameters(), strict=True):
        p_t.mul_(momentum).add_(p_o.detach(), alpha=1.0 - momentum)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with ``requires_grad=False`` (a momentum encoder's start)."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


def deepest_features(encoder: nn.Module, x: Tensor) -> Tensor:
    """The VGG encoder's last feature map (1/16 scale), the C5 counterpart of the papers."""
    return encoder(x)[-1]


def grouped_forward(
    fn: Callable[[Tensor], tuple[Tensor, ...]],
    x: Tensor,
    groups: int,
    perm: Tensor | None = None,
) -> tuple[Tensor, ...]:
    """``fn`` over ``groups`` chunks of ``x`` (each with its own batch-norm statistics).

    ``fn`` returns a tuple of per-row tensors; each is concatenated over the chunks. With
    ``perm`` the rows are permuted before chunking and the outputs permuted back: MoCo's
    "shuffling BN" (He et al., CVPR 2020, Sec. 3.3) emulated on one device. With a
    :func:`shuffle_bn_permutation` and chunks of 2+ rows, every key chunk mixes rows of different
    query chunks, so its batch statistics differ from those of its positives' query chunks.
    """
    n = x.shape[0]
    groups = max(1, min(groups, n))
    if perm is not None:
        x = x[perm.to(x.device)]
    parts = [fn(chunk) for chunk in x.chunk(groups)]
    out = tuple(torch.cat(p) if len(p) > 1 else p[0] for p in zip(*parts, strict=True))
    if perm is not None:
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(n)
        out = tuple(o[inverse.to(o.device)] for o in out)
    return out


def shuffle_bn_permutation(n: int, groups: int, generator: torch.Generator) -> Tensor:
    """A random permutation of ``n`` rows for :func:`grouped_forward`'s shuffled batch norm.

    The rows of each query chunk (``torch.arange(n).chunk(groups)``, as grouped_forward cuts)
    are shuffled, then dealt out in turn, one from each chunk per round. No two neighbours then
    come from the same query chunk, so every key chunk of 2+ rows holds rows of at least two
    query chunks: its statistics are never exactly a query chunk's (a uniform permutation gives
    the query chunks' own sets in 1/3 of the steps at 4 rows in 2 chunks). With one row per
    chunk no permutation can mix anything: each chunk's statistics are its one image's.
    """
    chunks = torch.arange(n).chunk(max(1, min(groups, n)))
    shuffled = torch.cat([c[torch.randperm(len(c), generator=generator)] for c in chunks])
    # Round r holds the r-th (shuffled) row of every chunk that has one, in chunk order; only
    # the last chunk can be shorter (by at most one row where there are two chunks).
    rank = torch.cat([torch.arange(len(c)) for c in chunks])
    chunk = torch.cat([torch.full((len(c),), i) for i, c in enumerate(chunks)])
    return shuffled[torch.argsort(rank * len(chunks) + chunk)]


class PretrainObjective(nn.Module):
    """Everything one peer method trains, built around an LDModel whose encoder (and, for
    Genesis, decoder) is what transfer uses.

    Args:
        model: the network; kept as ``self.model`` (the engine saves it alone for transfer).
        size: side of the views fed to the network (multiple of 16).
        modality: ``"fundus"`` or ``"xray"``; must match ``model.config.modality``.
        amp: bf16 autocast for the network forwards where it pays (CUDA, CPUs with bf16:
            :mod:`localdisc.engine.precision`); the losses run in float32.

    Subclasses implement :meth:`forward` and, where they have them, :meth:`after_step` and
    :meth:`online_modules`. Everything needed to resume exactly (momentum encoders, queues and
    their pointers, step counters) lives in parameters and buffers, so ``state_dict()`` holds it.
    """

    name: ClassVar[str] = ""
    #: Views per instance fed through the online network in one step (for throughput).
    views_per_instance: ClassVar[int] = 2

    def __init__(self, model: LDModel, *, size: int, modality: str, amp: bool = True) -> None:
        super().__init__()
        if modality != model.config.modality:
            raise ValueError(
                f"objective modality {modality!r} differs from the model's "
                f"{model.config.modality!r}"
            )
        if size <= 0 or size % 16:
            raise ValueError(f"size must be a positive multiple of 16, got {size}")
        self.model = model
        self.size = size
        self.modality = modality
        self.amp = amp

    # --- the engine's interface -------------------------------------------------------------
    def forward(  # type: ignore[override]
        self, x1: Tensor, x2: Tensor, generator: torch.Generator
    ) -> dict[str, Tensor]:
        raise NotImplementedError

    def after_step(self, progress: float | None = None) -> None:
        """Momentum-encoder and queue updates after ``optimizer.step()``; no-op by default.

        ``progress``: the fraction of the run done (see the module docstring), for objectives
        whose schedules follow the run; ``None``: their own step count.
        """

    def online_modules(self) -> list[nn.Module]:
        """The modules the optimiser trains (default: the model's encoder)."""
        return [self.model.encoder]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters for Adam: the online modules' (never a momentum encoder's), de-duplicated."""
        seen: set[int] = set()
        params: list[nn.Parameter] = []
        for module in self.online_modules():
            for p in module.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        return params

    def images_per_step(self, batch: int) -> int:
        """View images one step generates and feeds to the online network for ``batch`` pairs
        (``2 * batch`` instances). Momentum-encoder forwards of the same views are not counted
        again; the LD engine counts its ``5 * batch`` views the same way."""
        return self.views_per_instance * 2 * batch

    # --- helpers ----------------------------------------------------------------------------
    def _instances(self, x1: Tensor, x2: Tensor) -> Tensor:
        if x1.shape != x2.shape or x1.dim() != 4:
            raise ValueError(
                f"x1 and x2 must both be [B, C, P, P] of the same shape, got {tuple(x1.shape)} "
                f"and {tuple(x2.shape)}"
            )
        return torch.cat([x1, x2])

    def _autocast(self, device: torch.device) -> AbstractContextManager:
        return bf16_autocast(device, self.amp)
