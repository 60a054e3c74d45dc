"""``localdisc finetune``: what a user sees before any training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from helpers import save
from localdisc.cli import app
from localdisc.data.datasets import paper_splits
from localdisc.errors import DatasetError


def test_finetuning_on_jsrt_without_scr_masks_says_they_are_needed(tmp_path: Path) -> None:
    # The masks are optional for pre-training and inspection, not for learning a target.
    table = paper_splits()["SCR"]
    for stem in table["train"] + table["test"]:
        save(tmp_path / "JSRT" / "images" / f"{stem}.png", np.full((16, 16), 7, np.uint8))
    # Without --target too: the set's usual target is named, with why it is absent (it said
    # "no masks for target None" with no reason).
    for target in (["--target", "lung"], []):
        args = ["finetune", "--dataset", f"jsrt_scr:{tmp_path}", *target,
                "--out", str(tmp_path / "ft"), "--size", "32", "--device", "cpu"]  # fmt: skip
        result = CliRunner().invoke(app, args)
        assert isinstance(result.exception, DatasetError)
        message = str(result.exception)
        assert "no masks for target 'lung' (available: none)" in message
        assert "no SCR masks found" in message
        assert not (tmp_path / "ft").exists()
