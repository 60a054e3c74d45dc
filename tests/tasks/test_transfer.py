import json

import numpy as np
import pytest

from helpers import shared
from localdisc.data.io import read_mask
from localdisc.engine.finetune import FinetuneConfig
from localdisc.errors import DatasetError, LocaldiscError
from localdisc.tasks.transfer import (
    TransferConfig,
    labelled_count,
    run_transfer,
    split_labelled,
)

QUIET = dict(device="cpu", progress=False)


@pytest.mark.parametrize(
    "labels,count", [("all", 20), ("2", 2), (2, 2), ("0.25", 5), (0.01, 1), ("20", 20)]
)
def test_labelled_count(labels, count):
    assert labelled_count(labels, 20) == count


@pytest.mark.parametrize("labels", ["21", "0", "1.5", "some", "-3"])
def test_bad_label_budgets_are_refused(labels):
    with pytest.raises(LocaldiscError, match="labels"):
        labelled_count(labels, 20)


def test_split_is_seeded_nested_and_holds_out_a_fifth():
    train, val, note = split_labelled(20, "all", seed=0)
    assert (len(train), len(val)) == (16, 4) and not set(train) & set(val)
    assert "16 train + 4 validation" in note
    assert split_labelled(20, "all", seed=0) == (train, val, note)
    assert split_labelled(20, "all", seed=1)[0] != train
    # Few labels: validate on the training images, and say so.
    two, two_val, note = split_labelled(20, 2, seed=0)
    assert two == two_val and len(two) == 2 and "no hold-out" in note
    # The same seed labels the same first images whatever the budget.
    assert set(two) <= set(train + val)


def tiny(dataset: str, init: str = "random", **train) -> TransferConfig:
    schedule = FinetuneConfig(**{"frozen_epochs": 1, "epochs": 1, **QUIET, **train})
    return TransferConfig(dataset, None, init, "2", 32, max_test=2, train=schedule)


def test_run_transfer_writes_model_metrics_predictions_and_figure(tmp_path):
    metrics = run_transfer(tiny("synthetic_fundus:4"), tmp_path, log=lambda m: None)
    for name in ("model.safetensors", "config.json", "metrics.json", "history.csv"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "figures" / "overlay.png").is_file()
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["target"] == "vessels" and saved["labels"] == 2
    assert {"dice", "f1", "auc", "cldice", "sensitivity"} <= set(saved["summary"])
    assert len(saved["per_image"]) == 2 and saved["summary"]["dice"]["n"] == 2
    assert "frozen" not in metrics  # random init: one phase
    mask = read_mask(tmp_path / "predictions" / "synthetic_fundus_test_000_mask.png")
    assert mask.shape == (256, 256)  # the test image's own size
    config = json.loads((tmp_path / "config.json").read_text())
    assert len(config["data"]["train_images"]) == 2


def test_pretrained_init_reports_the_frozen_model_too(tmp_path):
    from localdisc.models import LDConfig, LDModel

    LDModel(LDConfig("xray")).save(tmp_path / "ld")
    metrics = run_transfer(
        tiny("synthetic_xray:4", init=str(tmp_path / "ld")), tmp_path / "ft", log=lambda m: None
    )
    assert metrics["target"] == "lung"
    assert [p["name"] for p in metrics["phases"]] == ["frozen", "finetune"]
    assert metrics["frozen"]["summary"]["dice"]["n"] == 2
    assert "cldice" not in metrics["summary"]  # topology only for vessels


def test_modality_and_target_problems_are_named(tmp_path):
    from localdisc.models import LDConfig, LDModel

    LDModel(LDConfig("fundus")).save(tmp_path / "ld")
    with pytest.raises(LocaldiscError, match="pre-trained on fundus"):
        run_transfer(tiny("synthetic_xray:4", init=str(tmp_path / "ld")), tmp_path / "a")
    config = tiny("synthetic_xray:4")
    config.target = "vessels"
    with pytest.raises(DatasetError, match="no masks for target 'vessels'"):
        run_transfer(config, tmp_path / "b")


def test_a_folder_without_a_split_tests_on_the_unlabelled_images(tmp_path):
    from helpers import save
    from localdisc.data.synthetic import synthetic_xray

    for i in range(4):
        s = synthetic_xray(64, seed=i)
        save(tmp_path / "data" / f"case{i}.png", (s.image[..., 0] * 255).astype(np.uint8))
        save(tmp_path / "data" / "masks" / f"case{i}.png", (s.lungs * 255).astype(np.uint8))
    metrics = run_transfer(tiny(str(tmp_path / "data")), tmp_path / "out", log=lambda m: None)
    tested = {row["image"] for row in metrics["per_image"]}
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    trained = set(config["data"]["train_images"])
    assert len(tested) == 2 and not tested & trained
    assert metrics["bn_images"] == 2  # batch norm may not see the test images either


def test_drive_is_evaluated_in_the_fov_at_the_original_resolution(tmp_path):
    root = shared("DRIVE")
    config = tiny(f"drive:{root}", frozen_epochs=0)
    metrics = run_transfer(config, tmp_path, log=lambda m: None)
    assert [r["image"] for r in metrics["per_image"]] == ["01_test", "02_test"]
    assert read_mask(tmp_path / "predictions" / "01_test_prob.png").shape == (584, 565)
    for row in metrics["per_image"]:
        assert 0 <= row["dice"] <= 1 and 0 <= row["auc"] <= 1


def test_batch_norm_recalibrated_on_the_training_split_is_evaluated_and_can_be_saved(tmp_path):
    from localdisc.data.datasets import load_data_spec
    from localdisc.engine.checkpoint import load_safetensors

    quiet = dict(log=lambda m: None)
    paper = run_transfer(tiny("synthetic_fundus:4"), tmp_path / "paper", **quiet)
    # Statistics over all 4 training images (2 labelled), labels unused.
    assert paper["bn_images"] == len(load_data_spec("synthetic_fundus:4", "train")) == 4
    assert not paper["recalibrated_bn"] and "as_trained" not in paper
    recalibrated = paper["recalibrated"]["summary"]["dice"]
    assert recalibrated["n"] == 2 and recalibrated["mean"] != paper["summary"]["dice"]["mean"]

    config = tiny("synthetic_fundus:4")
    config.recalibrate_bn = True
    saved = run_transfer(config, tmp_path / "recal", **quiet)
    # The same training (same seed), the two models swapped.
    assert saved["summary"]["dice"] == paper["recalibrated"]["summary"]["dice"]
    assert saved["as_trained"]["summary"]["dice"] == paper["summary"]["dice"]
    stats = "encoder.blocks.0.0.1.running_mean"
    paper_weights = load_safetensors(tmp_path / "paper" / "model.safetensors")
    recal_weights = load_safetensors(tmp_path / "recal" / "model.safetensors")
    assert not np.allclose(paper_weights[stats], recal_weights[stats])
    np.testing.assert_array_equal(
        paper_weights["head.weight"].numpy(), recal_weights["head.weight"].numpy()
    )


def test_cli_finetune_saves_the_recalibrated_model_on_request(tmp_path):
    from typer.testing import CliRunner

    from localdisc.cli import app

    args = ["finetune", "--dataset", "synthetic_fundus:4", "--labels", "2", "--epochs", "1"]
    args += ["--size", "32", "--device", "cpu", "--recalibrate-bn", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "config.json").read_text())["transfer"]["recalibrate_bn"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["recalibrated_bn"] and "dice" in metrics["as_trained"]["summary"]
