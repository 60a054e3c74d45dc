"""Waits for the device in pre-training's loop: each ``.item()`` of a GPU tensor makes the host
wait for every kernel queued so far (and the GPU then idles while the host queues the next)."""

from __future__ import annotations

import csv
import sys
from collections import Counter

import pytest
import torch

from helpers import tiny_pretrain_config, torch_threads
from localdisc.data.pool import synthetic_pool
from localdisc.engine.pretrain import pretrain


def test_a_log_row_waits_for_the_device_once(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    waits: Counter = Counter()  # calls from pre-training's log_row that bring values to the host

    def counted(name: str):
        original = getattr(torch.Tensor, name)

        def wrapper(self: torch.Tensor, *args: object, **kwargs: object) -> object:
            caller = sys._getframe(1)
            if caller.f_code.co_name.startswith("<"):  # a comprehension's own frame
                caller = caller.f_back
            if caller is not None and caller.f_code.co_name == "log_row":
                waits[name] += 1
            return original(self, *args, **kwargs)

        return wrapper

    for name in ("item", "tolist", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, counted(name))
    config = tiny_pretrain_config(
        stage1_steps=1, stage2_steps=1, checkpoint_every=100, val_every=100
    )
    with torch_threads(1):
        pretrain(config, tmp_path, pool=synthetic_pool(6, "fundus", 48), log=lambda _: None)
    rows = [r for r in csv.DictReader((tmp_path / "log.csv").open()) if r["loss"]]
    assert len(rows) == 2 and rows[-1]["rd"]  # a row per step, stage 2's with more terms
    # One wait per row (was one per term: 3 in stage 1, 5 in stage 2).
    assert sum(waits.values()) == len(rows), dict(waits)
