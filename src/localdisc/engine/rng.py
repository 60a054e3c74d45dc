"""The caller's random state, kept across a seeded run."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch

_P = ParamSpec("_P")
_R = TypeVar("_R")


def keeps_global_rng(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """``function``, which seeds torch's global generator for its own draws, run with that
    state forked: the caller's is as before after it. A notebook's loop of "pre-train, then draw
    a split" drew the same split whatever it had seeded. CUDA's state is forked for the current
    device where CUDA is in use already (forking every device would start CUDA on each, in
    every process of a multi-GPU run)."""

    @functools.wraps(function)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=devices):
            return function(*args, **kwargs)

    return run
