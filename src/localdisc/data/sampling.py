"""Which pool images each pre-training step draws.

``"epoch"`` (the default) draws as a shuffled :class:`torch.utils.data.DataLoader` with
``drop_last`` does: every image once per epoch, in an order seeded per epoch, so that one step's
images are distinct (the instance-contrastive peers, SimCLR and DenseCL, take two draws of one
image for a negative pair) and every image is seen as often. The draws are a function of the
step alone: a resumed run draws what an uninterrupted one would, with no state to save.

``"replacement"`` draws each step's images uniformly with replacement from the engine's
generator: how runs saved before the sampler was a setting drew (their ``config.json`` has no
``sampler``), kept so that they resume as they started.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["SAMPLERS", "EpochSampler"]

#: The ways a pre-training step can draw its pool images (``PretrainConfig.sampler``).
SAMPLERS = ("epoch", "replacement")


class EpochSampler:
    """Indices of ``per_step`` images of a pool of ``n`` for each step: every image once per
    epoch, in an order drawn from ``seed`` and the epoch.

    An epoch is ``n // per_step`` steps; the images an epoch's order leaves after its last full
    step are not drawn in that epoch (``drop_last``: a step straddling two epochs could hold one
    image twice). A pool smaller than a step gives one step per epoch, the epoch's order being
    as many orders of the pool as fill it (an image then comes as few times as it can).

    Args:
        n: images in the pool (under torchrun: in this process's shard).
        per_step: images one step draws.
        seed: integers seeding every epoch's order (e.g. the run's seed and the rank).
    """

    def __init__(self, n: int, per_step: int, seed: Sequence[int]) -> None:
        if n < 1 or per_step < 1:
            raise ValueError(f"n and per_step must be >= 1, got {n} and {per_step}")
        self.n, self.per_step = n, per_step
        self.seed = [int(s) % 2**64 for s in seed]  # SeedSequence takes no negative integers
        self.steps_per_epoch = max(1, n // per_step)
        self._epoch: tuple[int, np.ndarray] | None = None  # the last epoch's order

    def order(self, epoch: int) -> np.ndarray:
        """The image indices of ``epoch`` in the order its steps draw them."""
        if self._epoch is None or self._epoch[0] != epoch:
            rng = np.random.default_rng([*self.seed, epoch])
            copies = -(-self.per_step // self.n)  # ceil: 1 unless the pool is under a step
            self._epoch = (epoch, np.concatenate([rng.permutation(self.n) for _ in range(copies)]))
        return self._epoch[1]

    def indices(self, step: int) -> Tensor:
        """The ``per_step`` pool indices (int64) that ``step`` draws."""
        epoch, k = divmod(step, self.steps_per_epoch)
        start = k * self.per_step
        return torch.from_numpy(self.order(epoch)[start : start + self.per_step].astype(np.int64))
