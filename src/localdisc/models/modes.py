"""Train/eval mode of a network for the length of a block."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def in_mode(module: nn.Module, training: bool = False) -> Iterator[nn.Module]:
    """``module`` in train (``training``) or eval mode within the block, and after it every
    submodule in its own mode again: ``module.train(was_training)`` put each one in the whole
    network's, so a prediction during fine-tuning put a frozen encoder's batch norm back to
    training (METHOD.md: it stays in eval mode)."""
    modes = [(m, m.training) for m in module.modules()]
    module.train(training)
    try:
        yield module
    finally:
        for m, was in modes:
            m.training = was
