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


def test_finetuning_on_a_folder_of_images_alone_says_where_masks_go(tmp_path: Path) -> None:
    """It said "no masks for target None" for a folder without a mask folder beside it: now
    where masks are looked for, as the transfer benchmark says it (transfer.load_task_data)."""
    for i in range(3):
        save(tmp_path / "photos" / f"p{i}.png", np.full((16, 16), 7 * i, np.uint8))
    args = ["finetune", "--dataset", str(tmp_path / "photos"), "--out", str(tmp_path / "ft"),
            "--size", "32", "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, DatasetError)
    assert f"{tmp_path / 'photos'}: no masks; put them in a folder beside the images named" in (
        str(result.exception)
    )
    assert not (tmp_path / "ft").exists()


def _folder(root: Path, n: int) -> Path:
    """``n`` 64 x 64 synthetic X-rays with lung masks in masks/ (a folder set: no test split)."""
    from localdisc.data.synthetic import synthetic_xray

    for i in range(n):
        s = synthetic_xray(64, seed=i)
        save(root / f"case{i}.png", (s.image[..., 0] * 255).astype(np.uint8))
        save(root / "masks" / f"case{i}.png", (s.lungs * 255).astype(np.uint8))
    return root


def test_finetune_with_test_fraction_0_trains_on_every_image_for_predict(tmp_path: Path) -> None:
    """12 labelled images and a model wanted for new ones: 20% were always held out."""
    import json

    data = _folder(tmp_path / "data", 6)
    out = tmp_path / "ft"
    args = ["finetune", "--dataset", f"folder:{data}", "--test-fraction", "0", "--epochs", "1",
            "--size", "32", "--device", "cpu", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    # 5 trained on and 1 validating: not "6 labelled image(s) trained on"
    assert "trained on" not in output
    assert (
        "no test split (--test-fraction 0): no image tested; validation Dice" in output
        and "(5 train + 1 validation images)" in output
    )
    assert "localdisc predict --model" in output
    saved = json.loads((out / "config.json").read_text())["data"]
    assert set(saved["train_images"]) | set(saved["val_images"]) == {f"case{i}" for i in range(6)}
    assert "summary" not in json.loads((out / "metrics.json").read_text())

    new = save(tmp_path / "new" / "unlabelled.png", np.full((48, 40), 90, np.uint8))
    args = ["predict", "--model", str(out), "--images", str(new.parent),
            "--out", str(tmp_path / "pred"), "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pred" / "unlabelled_mask.png").is_file()


def test_finetune_test_fraction_is_refused_for_a_set_with_its_own_test_split(
    tmp_path: Path,
) -> None:
    from localdisc.errors import LocaldiscError

    args = ["finetune", "--dataset", "synthetic_fundus:4", "--test-fraction", "0.3",
            "--size", "32", "--device", "cpu", "--out", str(tmp_path / "ft")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, LocaldiscError)
    assert "synthetic_fundus:4 has its own test split" in str(result.exception)
    assert "--test-fraction 0.3 is only for a set without one" in str(result.exception)
    assert not (tmp_path / "ft").exists()
    result = CliRunner().invoke(app, [*args[:4], "1", *args[5:]])
    assert "--test-fraction must be in [0, 1)" in str(result.exception)


def test_finetune_again_on_a_finished_run_succeeds_and_other_settings_name_the_flag(
    tmp_path: Path,
) -> None:
    """A cluster job requeued after its fine-tuning finished exited 2 ("holds a finished
    fine-tuning"), where `pretrain --resume` has nothing to do; and a refusal named
    `train.epochs`, a field, where the user typed --epochs."""
    out = tmp_path / "ft"
    args = ["finetune", "--dataset", "synthetic_fundus:4", "--labels", "2", "--epochs", "1",
            "--frozen-epochs", "1", "--size", "32", "--device", "cpu",
            "--out", str(out)]  # fmt: skip
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    weights = (out / "model.safetensors").stat().st_mtime_ns
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    output = " ".join(again.output.split())
    assert "finished already, with the same settings; nothing to do" in output
    assert "test (" in output and "dice" in output  # the usual summary, from metrics.json
    assert (out / "model.safetensors").stat().st_mtime_ns == weights
    from localdisc.errors import LocaldiscError

    other = CliRunner().invoke(app, [*args[:6], "2", *args[7:]])  # `main` exits 2 with it
    assert isinstance(other.exception, LocaldiscError)
    message = str(other.exception)
    assert "holds a finished fine-tuning with other settings" in message
    assert "--epochs (train.epochs): 1 there, 2 now" in message
    assert (out / "model.safetensors").stat().st_mtime_ns == weights


def test_finetune_skip_bad_goes_on_without_a_truncated_image(tmp_path: Path) -> None:
    """A truncated image stopped `finetune` with no way on, where predict, localize and
    pretrain have --skip-bad: the error now names the flag, which leaves the image out (named,
    listed in metrics.json, counted in the last line)."""
    import json

    from helpers import own_folder
    from localdisc.errors import ImageReadError

    data = own_folder(tmp_path / "data")
    bad = data / "images" / "case3.png"
    bad.write_bytes(bad.read_bytes()[:200])
    out = tmp_path / "ft"
    args = ["finetune", "--dataset", str(data), "--out", str(out), "--size", "32",
            "--device", "cpu", "--frozen-epochs", "1", "--epochs", "1"]  # fmt: skip
    plain = CliRunner().invoke(app, args)
    assert isinstance(plain.exception, ImageReadError)
    assert str(plain.exception).endswith("; --skip-bad skips unreadable images")
    result = CliRunner().invoke(app, [*args, "--skip-bad"])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert f"skipped {bad}: cannot decode as image" in output
    assert output.endswith(
        f"; 1 unreadable image(s) skipped, listed under skipped in {out / 'metrics.json'}"
    )
    skipped = json.loads((out / "metrics.json").read_text())["skipped"]
    assert [(s["name"], s["path"]) for s in skipped] == [("case3", str(bad))]
