"""DenseCL on the LD encoder.

X. Wang, R. Zhang, C. Shen, T. Kong, L. Li, "Dense Contrastive Learning for Self-Supervised
Visual Pre-Training", CVPR 2021 (built on MoCo v2: K. He et al., CVPR 2020; X. Chen et al., arXiv
2003.04297). A query encoder (the LD model's VGG encoder + a global MLP head + a dense 1x1-conv
head) sees view 1 of every instance; a momentum copy of all three sees view 2. The loss is
``(1 - lambda) L_global + lambda L_dense``
(:func:`localdisc.losses.dense_contrastive.densecl_loss`): MoCo's InfoNCE against a queue of past
global keys, and a dense InfoNCE in which each query cell's positive is the key cell with the most
similar backbone feature and the negatives are a queue of pooled dense keys of past images.

Hyper-parameters: lambda = 0.5, tau = 0.2, momentum 0.999, heads 128 -> 128 -> 128 (the papers'
2048 -> 2048 -> 128 at our encoder's width), feature grid = the encoder's 1/16 map (28 x 28 at the
published S = 448; the paper's is ResNet C5, 7 x 7 at 224).

Adaptations:

- Queue length 4096 for both queues (the paper: 65 536), or less on a small pool. Queued keys are
  only useful while the key encoder that produced them is close to the current one; with
  momentum 0.999 the key encoder forgets on a scale of ~1000 steps. A medical step has ``2B = 8``
  instances at the published ``B = 4`` (MoCo: 256), so 65 536 keys would reach back 8192 steps,
  far beyond that horizon (stale, inconsistent negatives). MoCo's negatives are also other
  images: a queue as long as the pool holds about one key of every image, so each query would
  meet its own image among its negatives. The engine therefore sizes the queue from the
  training pool with :func:`queue_size_for`: at most an eighth of the training images (about
  1/8 of a copy of the query's own image among the negatives; 118 keys for the 950 training
  images of the methods benchmark, about 3740 for the whole 30 000-image Kaggle DR pool), never
  fewer than one step's keys, and 4096 (512 steps at ``B = 4``) from 32 768 training images on.
  A resumed run keeps its checkpoint's queue length.
- Shuffled batch norm: MoCo shuffles the key batch across GPUs so that a query and its positive
  key never share batch statistics (which otherwise leak the positive). On one device we forward
  queries in ``shuffle_bn_groups`` contiguous chunks and keys in as many chunks of a permutation
  drawn from the step's generator (:func:`~localdisc.methods.base.shuffle_bn_permutation`) such
  that every key chunk mixes images of different query chunks (MoCo's random shuffle leaves a
  GPU its own images by chance). This needs 2+ images per chunk: with one (``B = 1`` and two
  chunks) each chunk's statistics are its one image's, in the query and the key forward alike,
  and no permutation helps. ``shuffle_bn_groups=1`` disables it.
- Instances: the ``2B`` pool images of a step; views from :class:`PeerViews` (LD family,
  independent geometry per view, crop scale 0.2-1 as in MoCo v2; no blur, see
  :mod:`localdisc.methods.simclr`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from localdisc.losses.dense_contrastive import (
    DENSE_WEIGHT,
    TAU,
    dense_correspondence,
    densecl_loss,
    pooled_dense_keys,
)
from localdisc.methods.base import (
    PeerViews,
    PretrainObjective,
    deepest_features,
    frozen_copy,
    grouped_forward,
    momentum_update,
    shuffle_bn_permutation,
)
from localdisc.models.ld import LDModel
from localdisc.models.projection import DenseProjectionHead, ProjectionHead

__all__ = ["QUEUE_SIZE", "DenseCLObjective", "queue_size_for"]

#: Default length of the global and dense negative queues (see the module docstring).
QUEUE_SIZE = 4096
#: The queue holds at most 1 / this of the training images (see the module docstring).
QUEUE_POOL_DIVISOR = 8


def queue_size_for(train_images: int, instances_per_step: int) -> int:
    """The queue length for a run on ``train_images`` training images with
    ``instances_per_step`` (``2B``) keys enqueued per step: ``QUEUE_SIZE`` capped at an eighth of
    the training images, so that a query rarely meets its own image among the negatives, but
    never below one step's keys (which a step enqueues at once)."""
    if train_images < 1 or instances_per_step < 1:
        raise ValueError(
            f"train_images and instances_per_step must be >= 1, got {train_images} and "
            f"{instances_per_step}"
        )
    return max(instances_per_step, min(QUEUE_SIZE, train_images // QUEUE_POOL_DIVISOR))


class DenseCLObjective(PretrainObjective):
    """DenseCL: global + dense InfoNCE with momentum keys and negative queues.

    Options:
        tau: temperature (0.2). dense_weight: lambda (0.5). momentum: key-encoder EMA (0.999).
        queue_size: length of both queues (4096; the engine passes :func:`queue_size_for` the
            training pool). hidden_dim, out_dim: head widths (128, 128).
        crop_scale: area range of each view's crop ((0.2, 1.0)).
        shuffle_bn_groups: chunks for MoCo's shuffled batch norm on one device (2; 1 = off).
        amp: bf16 autocast of the networks where it pays (CUDA, CPUs with bf16).
    """

    name = "densecl"
    views_per_instance = 2

    def __init__(
        self,
        model: LDModel,
        *,
        size: int,
        modality: str,
        tau: float = TAU,
        dense_weight: float = DENSE_WEIGHT,
        momentum: float = 0.999,
        queue_size: int = QUEUE_SIZE,
        hidden_dim: int | None = None,
        out_dim: int = 128,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        shuffle_bn_groups: int = 2,
        amp: bool = True,
    ) -> None:
        super().__init__(model, size=size, modality=modality, amp=amp)
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.tau, self.dense_weight, self.momentum = tau, dense_weight, momentum
        self.shuffle_bn_groups = shuffle_bn_groups
        width = model.encoder.channels[-1]
        hidden = hidden_dim or width
        self.global_head = ProjectionHead(width, hidden, out_dim)
        self.dense_head = DenseProjectionHead(width, hidden, out_dim)
        self.momentum_encoder = frozen_copy(model.encoder)
        self.momentum_global_head = frozen_copy(self.global_head)
        self.momentum_dense_head = frozen_copy(self.dense_head)
        # MoCo's initial queue: random unit vectors (seeded: construction is reproducible).
        g = torch.Generator().manual_seed(0)
        self.register_buffer(
            "global_queue", F.normalize(torch.randn(queue_size, out_dim, generator=g), dim=1)
        )
        self.register_buffer(
            "dense_queue", F.normalize(torch.randn(queue_size, out_dim, generator=g), dim=1)
        )
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.views = PeerViews(size, modality, crop_scale=crop_scale)
        self._pending: tuple[Tensor, Tensor] | None = None

    def online_modules(self) -> list[nn.Module]:
        return [self.model.encoder, self.global_head, self.dense_head]

    def _query(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        f = deepest_features(self.model.encoder, x)
        return f, self.global_head(f), self.dense_head(f)

    @torch.no_grad()
    def _key(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        f = deepest_features(self.momentum_encoder, x)
        return f, self.momentum_global_head(f), self.momentum_dense_head(f)

    def forward(  # type: ignore[override]
        self, x1: Tensor, x2: Tensor, generator: torch.Generator
    ) -> dict[str, Tensor]:
        x = self._instances(x1, x2)
        n = x.shape[0]
        batch = self.views(x, 2, generator)
        groups = self.shuffle_bn_groups
        perm = shuffle_bn_permutation(n, groups, generator)
        query_img, key_img = batch.images[:n], batch.images[n:]
        with self._autocast(x.device):
            fq, q, r = grouped_forward(self._query, query_img, groups)
            fk, k, t = grouped_forward(self._key, key_img, groups, perm)
        match = dense_correspondence(fq.detach(), fk)
        terms = densecl_loss(
            q, k, self.global_queue, r, t, match, self.dense_queue,
            tau=self.tau, dense_weight=self.dense_weight,
        )  # fmt: skip
        if self.training:
            self._pending = (F.normalize(k.detach().float(), dim=1), pooled_dense_keys(t))
        return {
            "loss": terms.total,
            "global": terms.global_.detach(),
            "dense": terms.dense.detach(),
        }

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        # A checkpoint's queues keep their length (a run saved with another length, e.g. 4096
        # before the queue followed the pool, resumes exactly rather than failing on the shape).
        for name in ("global_queue", "dense_queue"):
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != getattr(self, name).shape:
                setattr(self, name, getattr(self, name).new_empty(saved.shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def after_step(self, progress: float | None = None) -> None:
        """EMA of the key network, then enqueue the last training forward's keys (the momentum
        is constant: ``progress`` is not used)."""
        momentum_update(self.model.encoder, self.momentum_encoder, self.momentum)
        momentum_update(self.global_head, self.momentum_global_head, self.momentum)
        momentum_update(self.dense_head, self.momentum_dense_head, self.momentum)
        if self._pending is None:
            return
        keys, dense_keys = self._pending
        self._pending = None
        size = self.global_queue.shape[0]
        if keys.shape[0] > size:
            raise ValueError(f"{keys.shape[0]} keys per step exceed the queue length {size}")
        idx = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.global_queue[idx] = keys.to(self.global_queue.dtype)
        self.dense_queue[idx] = dense_keys.to(self.dense_queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % size)

    def extra_repr(self) -> str:
        return (
            f"tau={self.tau}, dense_weight={self.dense_weight}, momentum={self.momentum}, "
            f"queue={self.global_queue.shape[0]}, shuffle_bn_groups={self.shuffle_bn_groups}"
        )
