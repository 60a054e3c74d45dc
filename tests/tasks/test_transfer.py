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
    # A generated set is named as such, not by its count ("4 (train split): ...").
    named = r"^synthetic_xray \(generated\) \(train split\): no masks for target 'vessels'"
    with pytest.raises(DatasetError, match=named):
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


def test_test_evaluation_is_what_predict_outputs_in_float32(tmp_path, monkeypatch):
    """metrics.json and predictions/ describe the saved model as `localdisc predict` runs it:
    float32, even where training uses bf16 autocast (forced here, as on a bf16 CPU or a GPU),
    and so do the frozen and batch-norm-recalibrated evaluations."""
    import torch
    from PIL import Image

    from localdisc.data.datasets import load_data_spec
    from localdisc.eval.metrics import summarize
    from localdisc.models import LDConfig, LDModel
    from localdisc.models.segmenter import Segmenter
    from localdisc.tasks import transfer
    from localdisc.tasks.predict import mask_png, prob_png

    monkeypatch.setattr("localdisc.engine.precision.cpu_has_native_bf16", lambda: True)
    evaluating, autocast_seen = [False], []
    forward = Segmenter.forward

    def spy_forward(self, x):
        if evaluating[0]:
            autocast_seen.append(torch.is_autocast_enabled("cpu"))
        return forward(self, x)

    def spy_evaluate(*args, **kwargs):
        evaluating[0] = True
        try:
            return evaluate(*args, **kwargs)
        finally:
            evaluating[0] = False

    evaluate = transfer.evaluate
    monkeypatch.setattr(Segmenter, "forward", spy_forward)
    monkeypatch.setattr(transfer, "evaluate", spy_evaluate)
    LDModel(LDConfig("fundus")).save(tmp_path / "ld")
    config = tiny("synthetic_fundus:4", init=str(tmp_path / "ld"))
    metrics = run_transfer(config, tmp_path / "run", log=lambda m: None)
    # Test, frozen and recalibrated evaluations: 2 images each, none under autocast.
    assert autocast_seen == [False] * 6

    model = Segmenter.from_pretrained(tmp_path / "run")
    test = load_data_spec("synthetic_fundus:4", "test")
    rows = []
    for i, row in enumerate(metrics["per_image"]):
        sample = test[i]
        assert row["image"] == sample.name
        prob = model.predict(sample.image)
        saved = tmp_path / "run" / "predictions" / f"{sample.name}"
        np.testing.assert_array_equal(read_mask(f"{saved}_mask.png"), mask_png(prob) > 0)
        np.testing.assert_array_equal(np.asarray(Image.open(f"{saved}_prob.png")), prob_png(prob))
        small, _ = model.predict_maps(sample.image)
        expected = transfer.image_metrics(prob, sample, "vessels", 32, prob_at_size=small)
        assert {k: v for k, v in row.items() if k != "image"} == expected
        rows.append(expected)
    assert metrics["summary"] == summarize(rows)


def test_an_out_that_is_a_file_is_refused_before_any_training(tmp_path, monkeypatch):
    import localdisc.tasks.transfer as transfer

    def train(*args, **kwargs):
        raise AssertionError("trained before --out was checked")

    monkeypatch.setattr(transfer, "finetune", train)
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    with pytest.raises(LocaldiscError, match=r"notes.txt: a file, not a folder; .*--out"):
        run_transfer(tiny("synthetic_fundus:4"), afile, log=lambda m: None)
    assert afile.read_text() == "mine"


@pytest.mark.parametrize("size", [0, 16, 40, 100, -32])
def test_a_size_the_network_cannot_take_is_refused_at_once(size):
    with pytest.raises(LocaldiscError, match=f"multiple of 16, at least 32, not {size}"):
        TransferConfig("synthetic_fundus:4", size=size)
    TransferConfig("synthetic_fundus:4", size=32)  # the smallest accepted


def test_a_test_split_without_labels_is_named_before_any_training(tmp_path):
    """DRIVE as downloaded from grand-challenge.org: test/ holds images and FOV masks only."""
    from helpers import save
    from localdisc.tasks.transfer import check_task_data

    rng = np.random.default_rng(0)
    for folder, kind, ids in (("training", "training", ("21", "22")), ("test", "test", ("01",))):
        for ident in ids:
            save(
                tmp_path / folder / "images" / f"{ident}_{kind}.tif",
                rng.integers(0, 255, (32, 32, 3), np.uint8),
            )
            if folder == "training":
                vessels = (rng.random((32, 32)) > 0.8).astype(np.uint8) * 255
                save(tmp_path / folder / "1st_manual" / f"{ident}_manual1.gif", vessels)
    spec = f"drive:{tmp_path}"
    with pytest.raises(DatasetError, match="test/1st_manual: no such folder"):
        check_task_data(spec, None)
    with pytest.raises(DatasetError, match="test split.*1st_manual"):
        run_transfer(tiny(spec), tmp_path / "out", log=lambda m: None)
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_paths_are_taken_as_str_and_init_may_be_a_weight_file_of_the_run(tmp_path):
    # TransferConfig(init=Path(...)) failed after the training ("PosixPath is not JSON
    # serializable"), leaving weights without config.json; and RUN/stage1.safetensors as init
    # said "no config.json", where LDModel.from_pretrained and similarity take it.
    import shutil
    from pathlib import Path

    from localdisc.models import LDConfig, LDModel
    from localdisc.tasks.transfer import init_modality

    LDModel(LDConfig("xray", width=4, depth=2)).save(tmp_path / "ld")
    shutil.copy(tmp_path / "ld" / "model.safetensors", tmp_path / "ld" / "stage1.safetensors")
    stage1 = tmp_path / "ld" / "stage1.safetensors"
    assert init_modality(stage1) == "xray"
    config = tiny(Path("synthetic_xray:4"), init=stage1, frozen_epochs=0)  # type: ignore[arg-type]
    assert (config.init, config.dataset) == (str(stage1), "synthetic_xray:4")
    metrics = run_transfer(config, tmp_path / "ft", log=lambda m: None)
    saved = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert saved["transfer"]["init"] == str(stage1) and metrics["init"] == str(stage1)
