import json
import re
import shutil
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

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


def test_a_fraction_half_way_between_counts_rounds_up():
    # round() sent halves to the even count: 0.5 of 5 images was 2 and of 7 was 4.
    assert [labelled_count("0.5", n) for n in (5, 7, 9, 11)] == [3, 4, 5, 6]
    assert [labelled_count("0.25", n) for n in (10, 14)] == [3, 4]
    # halves as typed, not as binary floats hold them (reviewer): 14.5, 31.5, 14.5
    assert [labelled_count(f, n) for f, n in (("0.29", 50), (0.35, 90), ("0.58", 25))] == [
        15, 32, 15
    ]  # fmt: skip


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
    # The same seed labels the same first images whatever the budget: the smaller budget's
    # images are among the larger's (against all, this held for any draw: reviewer).
    for small, large in ((2, 5), (5, 10), (10, "all")):
        picked = set(split_labelled(20, small, seed=3)[0] + split_labelled(20, small, seed=3)[1])
        more = split_labelled(20, large, seed=3)
        assert picked <= set(more[0] + more[1]), (small, large)


def tiny(dataset: str, init: str = "random", test_fraction: float = 0.2, **train) -> TransferConfig:
    schedule = FinetuneConfig(**{"frozen_epochs": 1, "epochs": 1, **QUIET, **train})
    return TransferConfig(
        dataset, None, init, "2", 32, max_test=2, test_fraction=test_fraction, train=schedule
    )


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


def test_a_folder_s_modality_is_given_or_guessed_and_a_guess_of_another_is_named(tmp_path):
    # Red-free fundus photographs are grey: a folder of them was guessed X-rays, and a fundus
    # LD run's fine-tuning on them refused ("the data set is xray") with no way on (reviewer).
    from helpers import save
    from localdisc.data.synthetic import synthetic_fundus
    from localdisc.models import LDConfig, LDModel

    for i in range(6):
        eye = synthetic_fundus(64, seed=i)
        save(tmp_path / "redfree" / f"eye{i}.png", (eye.image[..., 1] * 255).astype(np.uint8))
        save(tmp_path / "redfree" / "masks" / f"eye{i}.png", (eye.vessels * 255).astype(np.uint8))
    LDModel(LDConfig("fundus", width=4, depth=2, dim=8, clusters=4)).save(tmp_path / "ld")
    config = tiny(str(tmp_path / "redfree"), init=str(tmp_path / "ld"))
    guessed = r"data set is xray \(guessed from its images: grey; red-free fundus photographs"
    with pytest.raises(LocaldiscError, match=guessed):
        run_transfer(config, tmp_path / "a", log=lambda m: None)
    # Given, for every init alike: LD and random runs read the images, and their FOVs, the same
    for out, init in (("ft-ld", str(tmp_path / "ld")), ("ft-random", "random")):
        given = replace(tiny(str(tmp_path / "redfree"), init=init), modality="fundus")
        run_transfer(given, tmp_path / out, log=lambda m: None)
        record = json.loads((tmp_path / out / "config.json").read_text())
        assert record["data"]["modality"] == "fundus" and record["transfer"]["modality"] == "fundus"
        assert record["data"]["images_look"] == "xray"
    # predict's note of images unlike the model's training images: grey ones are like them
    from localdisc.tasks.predict import predict_images

    said: list[str] = []
    predict_images(tmp_path / "ft-ld", [tmp_path / "redfree"], tmp_path / "p", log=said.append)
    assert not any("may mean little" in line for line in said)
    save(
        tmp_path / "colour" / "eye.png", (synthetic_fundus(64, seed=9).image * 255).astype(np.uint8)
    )
    predict_images(tmp_path / "ft-ld", [tmp_path / "colour"], tmp_path / "q", log=said.append)
    assert any("are colour" in line and "trained on grey fundus" in line for line in said)
    # A known data set's images are of its own modality
    with pytest.raises(LocaldiscError, match="synthetic_xray holds xray images, not fundus"):
        run_transfer(replace(tiny("synthetic_xray:4"), modality="fundus"), tmp_path / "b")
    with pytest.raises(LocaldiscError, match="--modality must be fundus or xray"):
        replace(tiny("synthetic_xray:4"), modality="ct")


def folder_set(root, n: int = 8):
    """A folder set of ``n`` 64 x 64 synthetic X-rays with lung masks (no split)."""
    from helpers import save
    from localdisc.data.synthetic import synthetic_xray

    for i in range(n):
        s = synthetic_xray(64, seed=i)
        save(root / f"case{i}.png", (s.image[..., 0] * 255).astype(np.uint8))
        save(root / "masks" / f"case{i}.png", (s.lungs * 255).astype(np.uint8))
    return root


def test_training_images_that_use_a_small_part_of_the_range_are_named(tmp_path):
    # 12-bit radiographs in 16-bit PNGs read as 0 to 1/16: the network was fine-tuned on
    # near-black images without a word (only pre-training's pool said so).
    from PIL import Image

    data = folder_set(tmp_path / "data")
    for i in range(8):  # the same X-rays, their 8 bits spread over 12 of 16
        grey = np.asarray(Image.open(data / f"case{i}.png")).astype(np.uint16) * 16
        Image.fromarray(grey).save(data / f"case{i}.png")
    config = tiny(str(data), frozen_epochs=0, seed=0)
    said: list[str] = []
    run_transfer(config, tmp_path / "out", log=said.append)
    notes = [line for line in said if "1/8 of the intensity range" in line]
    assert len(notes) == 1 and notes[0].startswith(
        "note: 2 training image(s) use under 1/8 of the intensity range (case"
    )
    assert notes[0].endswith("the network sees them near black; rescale them to the full range "
                             "(12-bit data in a 16-bit file reads so)")  # fmt: skip
    said.clear()
    run_transfer(tiny(str(folder_set(tmp_path / "eight")), frozen_epochs=0), tmp_path / "o8",
                 log=said.append)  # fmt: skip
    assert not [line for line in said if "intensity range" in line]


def test_a_folder_is_tested_on_the_same_held_out_images_for_every_label_budget(tmp_path):
    """A folder has no test split: it used to test on the images left unlabelled, so --labels 2
    and 4 were scored on different images, --labels all failed ("no unlabelled images left"),
    and batch norm was recalibrated over the labelled images only."""
    data = folder_set(tmp_path / "data")
    tested, runs = [], {}
    for labels, seed in (("2", 0), ("4", 0), ("all", 0), ("2", 1)):
        config = tiny(str(data), frozen_epochs=0, seed=seed)
        config.labels, config.max_test = labels, None
        out = tmp_path / f"out-{labels}-{seed}"
        runs[labels, seed] = metrics = run_transfer(config, out, log=lambda m: None)
        tested.append([row["image"] for row in metrics["per_image"]])
        saved = json.loads((out / "config.json").read_text())["data"]
        trained = set(saved["train_images"]) | set(saved["val_images"])
        assert not trained & set(tested[-1]), "a test image was labelled"
        assert metrics["bn_images"] == 6  # the 6 images of the training part, labels unused
        assert "2 of its 8 images held out" in metrics["test_split"] == saved["test_split"]
    assert tested[0] == tested[1] == tested[2] == tested[3] and len(tested[0]) == 2
    assert runs["4", 0]["labels"] == 4 and runs["all", 0]["labels"] == 6


def test_a_folder_label_budget_beyond_its_training_part_says_where_the_images_went(tmp_path):
    data = folder_set(tmp_path / "data")
    config = tiny(str(data))
    config.labels = "8"
    with pytest.raises(LocaldiscError, match=r"only 6 labelled training images .* 2 of its 8"):
        run_transfer(config, tmp_path / "out", log=lambda m: None)
    one = folder_set(tmp_path / "one", n=1)
    with pytest.raises(LocaldiscError, match=r"one.*: 1 labelled image.*at least 2"):
        run_transfer(tiny(str(one)), tmp_path / "out", log=lambda m: None)


def test_a_folder_with_masks_for_some_images_learns_from_those_and_lists_the_others(
    tmp_path, monkeypatch
):
    """A researcher labels a few of a folder's images: finetune was refused at the first image
    without a mask. Now those are unlabelled: never tested or trained on, left out of the test
    split's draw (the same for every --labels and --seed), listed in metrics.json and the log,
    and among the images batch norm is recalibrated over (labels unused)."""
    from typer.testing import CliRunner

    import localdisc.tasks.transfer as transfer
    from localdisc.cli import app

    data = folder_set(tmp_path / "data")
    for i in (1, 4, 6):
        (data / "masks" / f"case{i}.png").unlink()
    unlabelled = ["case1", "case4", "case6"]
    labelled = ["case0", "case2", "case3", "case5", "case7"]
    # The test split of the labelled images alone: unlabelled images do not move it.
    expected_test = [labelled[i] for i in transfer.held_out_test(labelled)]
    recalibrated: list[int] = []
    real = transfer.recalibrate_batch_norm

    def spy(model, images):
        recalibrated.append(images.shape[0])
        return real(model, images)

    monkeypatch.setattr(transfer, "recalibrate_batch_norm", spy)
    # The command as typed, --labels all: it ran into the first unlabelled image (exit 2).
    out = tmp_path / "out-all-0"
    args = ["finetune", "--dataset", str(data), "--out", str(out), "--epochs", "1",
            "--frozen-epochs", "0", "--size", "64", "--labels", "all",
            "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "3 of the 8 images have no mask" in result.output
    assert "batch norm is recalibrated over them" in result.output
    runs = {("all", 0): json.loads((out / "metrics.json").read_text())}
    for labels, seed in (("2", 0), ("2", 1)):
        config = tiny(str(data), frozen_epochs=0, seed=seed)
        config.labels, config.max_test = labels, None
        out = tmp_path / f"out-{labels}-{seed}"
        runs[labels, seed] = run_transfer(config, out, log=lambda m: None)
    for (labels, seed), metrics in runs.items():
        out = tmp_path / f"out-{labels}-{seed}"
        saved = json.loads((out / "config.json").read_text())["data"]
        assert metrics["unlabelled"] == saved["unlabelled"] == unlabelled
        tested = [row["image"] for row in metrics["per_image"]]
        assert tested == expected_test and len(tested) == 1
        trained = set(saved["train_images"]) | set(saved["val_images"])
        assert trained <= set(labelled) - set(tested), "an unlabelled or test image trained on"
        # 4 labelled training images and the 3 unlabelled: the training split, test one aside.
        assert metrics["bn_images"] == saved["bn_images"] == 7
        assert "1 of its 5 labelled images held out" in metrics["test_split"]
    assert recalibrated == [7, 7, 7]
    assert runs["all", 0]["labels"] == 4 and runs["2", 0]["labels"] == 2
    # A budget beyond the labelled images is refused, saying where the others went.
    config = tiny(str(data))
    config.labels = "5"
    with pytest.raises(LocaldiscError) as info:
        run_transfer(config, tmp_path / "out-5", log=lambda m: None)
    assert str(info.value) == (
        f"--labels 5: only 4 labelled training images exist: {data}: 3 of its 8 images have no "
        "mask (unlabelled), and it has no test split, so 1 of its 5 labelled images are held "
        "out for testing (--labels all takes the rest; --test-fraction sets how many)"
    )
    # Thousands of unlabelled images would not fit in memory: at most UNLABELLED_BN, spread.
    monkeypatch.setattr(transfer, "UNLABELLED_BN", 2)
    config = tiny(str(data), frozen_epochs=0)
    config.labels = "all"
    capped = run_transfer(config, tmp_path / "out-capped", log=lambda m: None)
    assert capped["bn_images"] == 4 + 2 and recalibrated[-1] == 6
    assert capped["unlabelled"] == unlabelled  # all listed, as ever


def test_held_out_test_images_depend_on_the_names_alone():
    from localdisc.tasks.transfer import held_out_test

    names = [f"case{i:02d}" for i in range(20)]
    test = held_out_test(names)
    assert len(test) == 4 and test == sorted(test)
    # Another listing order holds out the same images.
    assert {names[::-1][i] for i in held_out_test(names[::-1])} == {names[i] for i in test}
    # One image more changes at most one test image (and adds one at 5% steps).
    more = held_out_test([*names, "case20"])
    assert len({names[i] for i in test} - {([*names, "case20"])[i] for i in more}) <= 1
    assert [len(held_out_test(names[:n])) for n in (2, 3, 7, 8)] == [1, 1, 1, 2]
    with pytest.raises(LocaldiscError, match="at least 2"):
        held_out_test(names[:1])


def test_the_paper_split_of_a_split_set_is_unchanged(tmp_path):
    """Official and generated sets keep their own test split: every test image, and batch norm
    over the whole training split."""
    config = tiny("synthetic_fundus:6", frozen_epochs=0)
    config.max_test = None
    metrics = run_transfer(config, tmp_path, log=lambda m: None)
    expected = [f"synthetic_fundus_test_{i:03d}" for i in range(3)]
    assert [row["image"] for row in metrics["per_image"]] == expected
    assert metrics["bn_images"] == 6 and "test_split" not in metrics
    train = json.loads((tmp_path / "config.json").read_text())["data"]["train_images"]
    order = split_labelled(6, "2", seed=0)[0]
    assert train == [f"synthetic_fundus_train_{i:03d}" for i in order]


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
    from localdisc.tasks.transfer import load_task_data

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
        load_task_data(spec, None)
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
    # Which pre-training made the encoder (a run that names no method is LD's); a random init
    # has none.
    assert metrics["init_method"] == "ld"
    run_config = json.loads((tmp_path / "ld" / "config.json").read_text())
    run_config["pretrain"] = {**run_config.get("pretrain", {}), "method": "pixpro"}
    (tmp_path / "ld" / "config.json").write_text(json.dumps(run_config))
    metrics = run_transfer(config, tmp_path / "ft-pixpro", log=lambda m: None)
    assert metrics["init_method"] == "pixpro"
    random = run_transfer(tiny(Path("synthetic_xray:4"), frozen_epochs=0), tmp_path / "ft-random",
                          log=lambda m: None)  # fmt: skip
    assert "init_method" not in random


def test_a_finished_run_is_left_as_it_is_and_one_with_other_settings_refused(tmp_path, monkeypatch):
    """A second run into the same --out wrote over the first, leaving its predictions of images
    the second did not test beside the new metrics.json. The same command again (a cluster job
    requeued after it finished) was refused too, where `pretrain --resume` has nothing to do:
    it returns the saved metrics, nothing trained or written."""
    import localdisc.tasks.transfer as transfer

    out = tmp_path / "ft"
    run_transfer(tiny("synthetic_fundus:4"), out, log=lambda m: None)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}

    def train(*args, **kwargs):
        raise AssertionError("trained before --out was checked")

    monkeypatch.setattr(transfer, "finetune", train)
    config = tiny("synthetic_fundus:4")
    config.labels = "3"
    with pytest.raises(
        LocaldiscError,
        match=r"ft: holds a finished fine-tuning with other settings "
        r"\(--labels \(labels\): '2' there, '3' now\); choose another --out",
    ):
        run_transfer(config, out, log=lambda m: None)
    logged: list[str] = []
    again = run_transfer(tiny("synthetic_fundus:4"), out, log=logged.append)
    assert again == json.loads((out / "metrics.json").read_text())
    assert logged == [f"reusing {out / 'metrics.json'}: finished already, with the same "
                      "settings; nothing to do"]  # fmt: skip
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_frozen_epochs_are_not_compared_for_a_random_init(tmp_path):
    """--init random trains one phase of --epochs: --frozen-epochs 100 there and 5 now refused
    a continuation it made no difference to. For an LD init it still counts."""
    from localdisc.tasks.transfer import protocol

    out = tmp_path / "ft"
    run_transfer(tiny("synthetic_fundus:4", frozen_epochs=3), out, log=lambda m: None)
    (out / "metrics.json").unlink()  # interrupted
    logged: list[str] = []
    run_transfer(tiny("synthetic_fundus:4", frozen_epochs=5), out, log=logged.append)
    assert "interrupted fine-tuning with the same settings" in logged[0]
    assert (out / "metrics.json").is_file()
    ld = str(tmp_path / "ld")
    assert protocol(asdict(tiny("synthetic_fundus:4", ld, frozen_epochs=3))) != protocol(
        asdict(tiny("synthetic_fundus:4", ld, frozen_epochs=5))
    )
    with pytest.raises(LocaldiscError, match=r"--epochs \(train.epochs\): 1 there, 2 now"):
        run_transfer(tiny("synthetic_fundus:4", epochs=2), out, log=lambda m: None)


def test_an_interrupted_run_is_redone_by_its_own_command_only(tmp_path):
    """The CLI says to run the same command again after an interruption (and `benchmark
    transfer` reruns a run without metrics.json): an interrupted run with the same settings
    and no checkpoint (stopped before its first one, or by an older version) is redone,
    replacing its outputs; with other settings it is refused."""
    out = tmp_path / "ft"
    run_transfer(tiny("synthetic_fundus:4"), out, log=lambda m: None)
    assert not (out / "checkpoint").exists()  # deleted once metrics.json is written
    (out / "metrics.json").unlink()  # interrupted while predicting, before checkpoints were kept
    stale = out / "predictions" / "other_image_mask.png"
    stale.write_bytes(b"not of this run")
    (out / "notes.txt").write_text("mine")
    config = tiny("synthetic_fundus:4")
    config.labels = "3"
    with pytest.raises(
        LocaldiscError, match=r"interrupted .*--labels \(labels\): '2' there, '3' now"
    ):
        run_transfer(config, out, log=lambda m: None)
    assert stale.exists()
    # Another device is the same run; a relative record (as saved before) is the same too.
    saved = json.loads((out / "config.json").read_text())
    saved["transfer"]["train"]["device"] = "cuda"
    del saved["transfer"]["train"]["checkpoint_seconds"]  # as an older version wrote it
    (out / "config.json").write_text(json.dumps(saved))
    logged: list[str] = []
    metrics = run_transfer(tiny("synthetic_fundus:4"), out, log=logged.append)
    assert any(
        "interrupted fine-tuning with the same settings; it kept no checkpoint: redoing it" in m
        for m in logged
    )
    assert (out / "metrics.json").is_file() and not stale.exists()
    assert metrics["resumed"][0]["continued_from"] == "the start (no checkpoint kept)"
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own outputs go
    assert sorted(p.name for p in (out / "predictions").iterdir()) == sorted(
        f"{row['image']}_{kind}.png" for row in metrics["per_image"] for kind in ("mask", "prob")
    )


def test_an_interrupted_finetuning_continues_from_its_checkpoint_to_the_same_results(
    tmp_path, monkeypatch
):
    """A stopped fine-tuning was redone from epoch 1 by the same command (hours at 512 px on a
    CPU): it now continues from the checkpoint written at the signal, to the same results."""
    import os
    import signal

    import localdisc.engine.finetune as engine

    data = str(folder_set(tmp_path / "data", n=4))  # 64 x 64 files: quicker than generated
    config = tiny(data, frozen_epochs=0, epochs=3, steps_per_epoch=2)
    straight = run_transfer(config, tmp_path / "straight", log=lambda m: None)
    real, taken = engine.augment, []

    def augment(*args, **kwargs):
        taken.append(1)
        if len(taken) == 3:  # epoch 2, step 1: a Ctrl-C
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "augment", augment)
    out = tmp_path / "ft"
    with pytest.raises(KeyboardInterrupt):
        run_transfer(config, out, log=lambda m: None)
    assert len(taken) == 3
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "config.json"]
    monkeypatch.undo()
    other = tiny(data, frozen_epochs=0, epochs=4, steps_per_epoch=2)
    with pytest.raises(
        LocaldiscError, match=r"interrupted .*--epochs \(train.epochs\): 3 there, 4 now"
    ):
        run_transfer(other, out, log=lambda m: None)
    logged: list[str] = []
    metrics = run_transfer(config, out, log=logged.append)
    assert "interrupted fine-tuning with the same settings" in logged[0]
    assert any(
        m.startswith("continuing the interrupted fine-tuning from its checkpoint")
        and m.endswith(": from scratch epoch 2/3, step 2/2")
        for m in logged
    )
    assert not (out / "checkpoint").exists()
    # Where and when it ran: the first start's environment, the continuation's in "resumed".
    first = json.loads((out / "config.json").read_text())
    assert first["environment"]["started"] <= first["resumed"][0]["started"]
    assert metrics["environment"] == first["environment"] and len(metrics["resumed"]) == 1
    # ... and where it went on from (it said only when, not from which epoch or from scratch)
    assert metrics["resumed"][0]["continued_from"] == "from scratch epoch 2/3, step 2/2"
    assert "resumed" not in straight and straight["environment"]["torch"] == torch.__version__
    unrecorded = ("seconds", "phases", "environment", "resumed")
    drop = lambda m: {k: v for k, v in m.items() if k not in unrecorded}  # noqa: E731
    assert drop(metrics) == drop(straight)
    assert [{**p, "seconds": 0} for p in metrics["phases"]] == [
        {**p, "seconds": 0} for p in straight["phases"]
    ]
    for name in ("model.safetensors", "history.csv"):
        assert (out / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name


def test_an_ld_run_is_not_written_over(tmp_path):
    """--out at the init's own folder replaced the LD run's model.safetensors and config.json."""
    from localdisc.models import LDConfig, LDModel

    LDModel(LDConfig("fundus", width=4, depth=2)).save(tmp_path / "ld")
    before = (tmp_path / "ld" / "config.json").read_text()
    config = tiny("synthetic_fundus:4", init=str(tmp_path / "ld"))
    with pytest.raises(LocaldiscError, match=r"ld: holds config.json.*not of a fine-tuning"):
        run_transfer(config, tmp_path / "ld", log=lambda m: None)
    assert (tmp_path / "ld" / "config.json").read_text() == before


def test_saved_paths_are_absolute_so_the_record_works_from_elsewhere(tmp_path, monkeypatch):
    """config.json kept "init": "ld" and the data folder as typed, relative to a working
    directory it does not name."""
    from localdisc.models import LDConfig, LDModel
    from localdisc.tasks.transfer import protocol

    work = tmp_path / "work"
    folder_set(work / "data", n=4)
    LDModel(LDConfig("xray", width=4, depth=2)).save(work / "ld")
    monkeypatch.chdir(work)
    config = tiny("data", init="ld", frozen_epochs=0)
    assert (config.dataset, config.init) == (str(work / "data"), str(work / "ld"))
    run_transfer(config, "ft", log=lambda m: None)
    saved = json.loads((work / "ft" / "config.json").read_text())["transfer"]
    assert (saved["dataset"], saved["init"]) == (str(work / "data"), str(work / "ld"))
    # NAME:ROOT keeps its name; generated sets, random and missing paths stay as typed.
    assert TransferConfig("folder:data").dataset == f"folder:{work / 'data'}"
    assert TransferConfig("synthetic_xray:4").dataset == "synthetic_xray:4"
    assert TransferConfig("drvie:/nowhere", init="nothing").init == "nothing"
    assert TransferConfig("drvie:/nowhere").dataset == "drvie:/nowhere"
    # A record with the relative paths that were saved before compares equal from here.
    old = {**saved, "dataset": "data", "init": "ld", "train": {**saved["train"], "device": "x"}}
    assert protocol(old) == protocol(saved)
    monkeypatch.chdir(tmp_path)
    assert protocol(old) != protocol(saved)  # from elsewhere, "ld" is another (missing) folder


def test_test_fraction_0_trains_on_every_image_of_a_folder_and_tests_none(tmp_path):
    """A folder always held out 20% of its images for testing: with 12 labelled images, no
    model could be trained on all of them (--labels all took the other 80%)."""
    from localdisc.tasks.predict import predict_images

    data = folder_set(tmp_path / "data", n=12)
    config = tiny(str(data), frozen_epochs=0, test_fraction=0)
    config.labels, config.max_test = "all", None
    logged: list[str] = []
    metrics = run_transfer(config, tmp_path / "ft", log=logged.append)
    saved = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert saved["transfer"]["test_fraction"] == 0
    trained = set(saved["data"]["train_images"]) | set(saved["data"]["val_images"])
    assert trained == {f"case{i}" for i in range(12)}
    assert metrics["labels"] == 12 and metrics["bn_images"] == 12
    # No test split: said so, and no test metrics, predictions or overlay of test images.
    assert "no test split" in metrics["test_split"] and "none of its 12" in metrics["test_split"]
    assert metrics["test_images"] == 0
    for key in ("summary", "per_image", "frozen", "recalibrated", "as_trained"):
        assert key not in metrics, key
    assert metrics["phases"][0]["best_val_dice"] >= 0  # the validation Dice is there
    assert json.loads((tmp_path / "ft" / "metrics.json").read_text()) == metrics
    assert not (tmp_path / "ft" / "predictions").exists()
    assert not (tmp_path / "ft" / "figures" / "overlay.png").exists()
    assert not (tmp_path / "ft" / "checkpoint").exists()
    assert "no test split" in logged[-1] and "validation Dice" in logged[-1], logged[-1]
    # The model segments new images.
    written = predict_images(tmp_path / "ft", [data / "case0.png"], tmp_path / "pred", log=print)
    assert read_mask(written[0]).shape == (64, 64)


def test_a_test_fraction_holds_out_the_images_held_out_test_picks(tmp_path):
    from localdisc.tasks.transfer import held_out_test

    data = folder_set(tmp_path / "data", n=8)
    names = [f"case{i}" for i in range(8)]
    expected = [names[i] for i in held_out_test(names, 0.5)]
    assert len(expected) == 4
    tested = []
    for labels, seed in (("2", 0), ("all", 1)):  # whatever --labels and --seed
        config = tiny(str(data), frozen_epochs=0, seed=seed, test_fraction=0.5)
        config.labels, config.max_test = labels, None
        out = tmp_path / f"out-{labels}"
        metrics = run_transfer(config, out, log=lambda m: None)
        tested.append(sorted(row["image"] for row in metrics["per_image"]))
        saved = json.loads((out / "config.json").read_text())["data"]
        assert not (set(saved["train_images"]) | set(saved["val_images"])) & set(expected)
        assert "4 of its 8 images held out" in metrics["test_split"]
        assert metrics["test_images"] == 4
    assert tested == [sorted(expected)] * 2
    assert metrics["labels"] == 4


def test_held_out_test_at_the_default_fraction_is_unchanged():
    """--test-fraction 0.2 (the default) holds out the images it always did."""
    from localdisc.tasks.transfer import held_out_test

    names = [f"case{i:02d}" for i in range(20)]
    assert held_out_test(names) == held_out_test(names, 0.2) == [9, 10, 14, 18]
    assert held_out_test(names, 0) == []
    assert held_out_test(names[:1], 0) == []  # nothing to hold out of one image


def test_test_and_validation_fractions_round_halves_up_as_labels_do():
    """One fraction of one folder is one count (reviewer): round() held out 0.1 of 25 images as
    2 test images, while --labels 0.1 took 3; 0.3 of 5 labels validated on 2 (1.5 -> 2) but of
    15 on 4 (4.5 -> 4)."""
    from localdisc.tasks.transfer import held_out_test

    for n, count in ((25, 3), (35, 4), (45, 5)):  # 2.5, 3.5, 4.5: round() made 2, 4, 4
        names = [f"img{i:03d}" for i in range(n)]
        assert len(held_out_test(names, 0.1)) == labelled_count("0.1", n) == count
    assert [len(split_labelled(n, "all", 0, val_fraction=0.3)[1]) for n in (5, 15)] == [2, 5]
    assert len(split_labelled(50, "all", 0, val_fraction=0.29)[1]) == 15  # 14.5 as typed


@pytest.mark.parametrize("fraction", [-0.1, 1, 1.5, float("nan"), "half"])
def test_a_test_fraction_outside_0_1_is_refused(fraction):
    with pytest.raises(LocaldiscError, match=r"--test-fraction must be in \[0, 1\)"):
        TransferConfig("folder:data", test_fraction=fraction)


def test_a_test_fraction_that_leaves_no_training_image_is_refused(tmp_path):
    from localdisc.tasks.transfer import held_out_test

    with pytest.raises(LocaldiscError, match=r"--test-fraction 0.9 holds out 4 of 4 image"):
        held_out_test([f"case{i}" for i in range(4)], 0.9)
    data = folder_set(tmp_path / "data", n=4)
    config = tiny(str(data), test_fraction=0.9)
    with pytest.raises(LocaldiscError, match=r"data: --test-fraction 0.9 .*no training image"):
        run_transfer(config, tmp_path / "out", log=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_a_test_fraction_for_a_set_with_its_own_test_split_is_refused(tmp_path, monkeypatch):
    import localdisc.tasks.transfer as transfer

    def train(*args, **kwargs):
        raise AssertionError("trained with a --test-fraction that the set cannot take")

    monkeypatch.setattr(transfer, "finetune", train)
    for fraction in (0, 0.5):
        config = tiny("synthetic_fundus:4", test_fraction=fraction)
        with pytest.raises(
            LocaldiscError, match=r"synthetic_fundus:4 has its own test split.*--test-fraction"
        ):
            run_transfer(config, tmp_path / "out", log=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_a_record_without_test_fraction_compares_as_the_default(tmp_path):
    """config.json files written before --test-fraction: their runs held out 0.2, so an
    interrupted one continues (and `benchmark transfer` reuses a finished one)."""
    from localdisc.tasks.transfer import protocol

    data = folder_set(tmp_path / "data", n=4)
    out = tmp_path / "ft"
    run_transfer(tiny(str(data), frozen_epochs=0), out, log=lambda m: None)
    (out / "metrics.json").unlink()  # interrupted
    saved = json.loads((out / "config.json").read_text())
    del saved["transfer"]["test_fraction"]  # as an older version wrote it
    (out / "config.json").write_text(json.dumps(saved))
    assert protocol(saved["transfer"]) == protocol(asdict(tiny(str(data), frozen_epochs=0)))
    assert protocol(saved["transfer"]) != protocol(
        asdict(tiny(str(data), frozen_epochs=0, test_fraction=0))
    )
    with pytest.raises(
        LocaldiscError, match=r"--test-fraction \(test_fraction\): 0.2 there, 0.5 now"
    ):
        run_transfer(tiny(str(data), test_fraction=0.5), out, log=lambda m: None)
    logged: list[str] = []
    run_transfer(tiny(str(data), frozen_epochs=0), out, log=logged.append)
    assert "interrupted fine-tuning with the same settings" in logged[0]
    assert (out / "metrics.json").is_file()


def test_an_out_holding_a_predict_is_not_called_a_finished_fine_tuning(tmp_path):
    """`finetune --out P` where `predict --masks` had written P/metrics.json: "P: holds a
    finished fine-tuning (metrics.json)"."""
    out = tmp_path / "P"
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps({"summary": {}, "masks_used": {}}))
    (out / "predict.json").write_text("{}")
    with pytest.raises(LocaldiscError) as error:
        run_transfer(tiny("synthetic_fundus:4"), out, log=lambda m: None)
    message = str(error.value)
    assert "finished fine-tuning" not in message
    assert "P: holds metrics.json, not of a fine-tuning" in message


def test_an_interrupted_run_with_other_settings_says_its_command_would_continue_it(
    tmp_path, monkeypatch
):
    """The refusal said "run its own command again to redo it" of a run whose checkpoint that
    command continues from."""
    import os
    import signal

    import localdisc.engine.finetune as engine

    data = str(folder_set(tmp_path / "data", n=4))
    config = tiny(data, frozen_epochs=0, epochs=2, steps_per_epoch=2)
    real, taken = engine.augment, []

    def augment(*args, **kwargs):
        taken.append(1)
        if len(taken) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "augment", augment)
    with pytest.raises(KeyboardInterrupt):
        run_transfer(config, tmp_path / "ft", log=lambda m: None)
    monkeypatch.undo()
    other = tiny(data, frozen_epochs=0, epochs=3, steps_per_epoch=2)
    with pytest.raises(LocaldiscError) as error:
        run_transfer(other, tmp_path / "ft", log=lambda m: None)
    message = str(error.value)
    assert "run its own command again to continue it from its checkpoint" in message
    assert "redo" not in message
    # Without a checkpoint its command redoes it, and says so.
    import shutil

    shutil.rmtree(tmp_path / "ft" / "checkpoint")
    with pytest.raises(LocaldiscError, match="run its own command again to redo it"):
        run_transfer(other, tmp_path / "ft", log=lambda m: None)


def test_test_fraction_0_with_a_few_labels_does_not_say_every_image_is_trained_on(tmp_path):
    """--labels 2 --test-fraction 0 logged "all 8 images for training and validation"."""
    data = folder_set(tmp_path / "data", n=8)
    config = tiny(str(data), frozen_epochs=0, test_fraction=0)
    logged: list[str] = []
    metrics = run_transfer(config, tmp_path / "ft", log=logged.append)
    assert metrics["labels"] == 2
    assert "all 8 images" not in metrics["test_split"]
    assert metrics["test_split"] == (
        "no test split: none of its 8 images held out for testing (--test-fraction 0)"
    )
    assert "none of the 8 images held out for testing" in logged[-1], logged[-1]


def test_a_stop_while_drawing_the_overlay_leaves_a_run_that_the_same_command_ends(
    tmp_path, monkeypatch
):
    """metrics.json was written before figures/overlay.png: a stop while drawing it left a run
    called finished, refused by the same command, without its figure for good."""
    import localdisc.eval.figures as figures

    config = tiny("synthetic_fundus:4", frozen_epochs=0)
    out = tmp_path / "ft"
    real = figures.overlay_figure

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(figures, "overlay_figure", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_transfer(config, out, log=lambda m: None)
    assert not (out / "metrics.json").exists()  # not finished: its command ends it
    monkeypatch.setattr(figures, "overlay_figure", real)
    logged: list[str] = []
    run_transfer(config, out, log=logged.append)
    assert "interrupted fine-tuning with the same settings" in logged[0]
    assert any(m.endswith(": the end of the training") for m in logged), logged
    assert (out / "figures" / "overlay.png").is_file() and (out / "metrics.json").is_file()


def _truncate(path):
    """Cut an image file short, as an interrupted copy leaves it."""
    path.write_bytes(path.read_bytes()[:200])
    return path


def test_skip_bad_leaves_an_unreadable_image_out_before_the_split(tmp_path):
    """finetune had no --skip-bad: a truncated image stopped it (for a test image, after the
    training), with no way on. With it, the image is named, left out before the test split is
    drawn and listed in metrics.json; without it, the error says the flag exists."""
    from localdisc.errors import ImageReadError
    from localdisc.tasks.predict import SKIP_BAD_HINT
    from localdisc.tasks.transfer import held_out_test

    data = folder_set(tmp_path / "data", n=6)
    bad = _truncate(data / "case3.png")
    config = tiny(str(data), frozen_epochs=0)
    with pytest.raises(ImageReadError, match=f"^{bad}: cannot decode .*; {SKIP_BAD_HINT}$"):
        run_transfer(config, tmp_path / "plain", log=lambda m: None)
    config = replace(config, skip_bad=True)
    logged: list[str] = []
    metrics = run_transfer(config, tmp_path / "ft", log=logged.append)
    assert logged[0].startswith(f"skipped {bad}: cannot decode as image")
    reason = logged[0].removeprefix(f"skipped {bad}: ")
    assert metrics["skipped"] == [{"name": "case3", "path": str(bad), "reason": reason}]
    assert (
        json.loads((tmp_path / "ft" / "metrics.json").read_text())["skipped"]
        == (metrics["skipped"])
    )
    names = [f"case{i}" for i in (0, 1, 2, 4, 5)]  # the split of the readable images alone
    tested = [names[i] for i in held_out_test(names)]
    assert [row["image"] for row in metrics["per_image"]] == tested
    record = json.loads((tmp_path / "ft" / "config.json").read_text())
    used = record["data"]["train_images"] + record["data"]["val_images"]
    assert "case3" not in used and not set(used) & set(tested)
    assert record["data"]["skipped"] == metrics["skipped"]


def test_skip_bad_still_stops_at_a_bad_mask_before_any_training(tmp_path, monkeypatch):
    """Only an image's own read error is skipped (as in predict): an unreadable mask, or one
    of another size than its image, stops the run, before the training, without the hint."""
    import localdisc.tasks.transfer as transfer
    from helpers import save
    from localdisc.errors import ImageReadError
    from localdisc.tasks.predict import SKIP_BAD_HINT

    def train(*args, **kwargs):
        raise AssertionError("trained before the masks were read")

    monkeypatch.setattr(transfer, "finetune", train)
    data = folder_set(tmp_path / "data", n=4)
    mask = _truncate(data / "masks" / "case2.png")
    config = replace(tiny(str(data), frozen_epochs=0), skip_bad=True)
    with pytest.raises(ImageReadError) as error:
        run_transfer(config, tmp_path / "ft", log=lambda m: None)
    assert error.value.path == mask and SKIP_BAD_HINT not in str(error.value)
    save(mask, np.zeros((32, 32), np.uint8))
    with pytest.raises(DatasetError, match=r"case2.png: mask is 32x32 but its image"):
        run_transfer(config, tmp_path / "ft", log=lambda m: None)
    assert not (tmp_path / "ft").exists()


def test_skip_bad_refuses_a_set_whose_images_are_all_unreadable(tmp_path):
    data = folder_set(tmp_path / "data", n=3)
    for i in range(3):
        _truncate(data / f"case{i}.png")
    config = replace(tiny(str(data), frozen_epochs=0), skip_bad=True)
    with pytest.raises(
        LocaldiscError,
        match=rf"^{data} \(all split\): every image was skipped as unreadable \(3; first: "
        rf"{data / 'case0.png'}: cannot decode",
    ):
        run_transfer(config, tmp_path / "ft", log=lambda m: None)
    assert not (tmp_path / "ft").exists()


def test_skip_bad_does_not_skip_an_error_of_the_installation(tmp_path, monkeypatch):
    """pydicom or a DICOM decoder missing (ReaderSetupError) would drop every DICOM of a
    cohort: it stops the run, flag or not, with no --skip-bad hint."""
    import localdisc.data.datasets as datasets
    from localdisc.errors import ReaderSetupError

    data = folder_set(tmp_path / "data", n=4)
    real = datasets.read_image

    def read_image(path, *args, **kwargs):
        if path.name == "case1.png":
            raise ReaderSetupError(path, "reading DICOM needs pydicom")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(datasets, "read_image", read_image)
    for skip_bad in (True, False):
        config = replace(tiny(str(data), frozen_epochs=0), skip_bad=skip_bad)
        with pytest.raises(ReaderSetupError) as error:
            run_transfer(config, tmp_path / f"ft{skip_bad}", log=lambda m: None)
        assert str(error.value) == f"{data / 'case1.png'}: reading DICOM needs pydicom"


def test_a_run_recorded_before_skip_bad_is_reused_with_or_without_it(tmp_path):
    """skip_bad is not compared (transfer.protocol): a config.json written before the setting
    existed is the same run, finished (reused) or interrupted (continued)."""
    from localdisc.tasks.transfer import protocol

    data = folder_set(tmp_path / "data", n=4)
    out = tmp_path / "ft"
    run_transfer(tiny(str(data), frozen_epochs=0), out, log=lambda m: None)
    saved = json.loads((out / "config.json").read_text())
    assert saved["transfer"]["skip_bad"] is False
    del saved["transfer"]["skip_bad"]  # as an older version wrote it
    (out / "config.json").write_text(json.dumps(saved))
    assert protocol(saved["transfer"]) == protocol(asdict(tiny(str(data), frozen_epochs=0)))
    flagged = replace(tiny(str(data), frozen_epochs=0), skip_bad=True)
    for config in (tiny(str(data), frozen_epochs=0), flagged):
        logged: list[str] = []
        run_transfer(config, out, log=logged.append)
        assert logged == [f"reusing {out / 'metrics.json'}: finished already, with the same "
                          "settings; nothing to do"]  # fmt: skip
    (out / "metrics.json").unlink()  # interrupted
    logged = []
    metrics = run_transfer(tiny(str(data), frozen_epochs=0), out, log=logged.append)
    assert "interrupted fine-tuning with the same settings" in logged[0]
    assert "skipped" not in metrics  # nothing was read first, nothing skipped


def test_a_run_of_other_init_weights_under_the_same_path_is_not_reused(tmp_path, monkeypatch):
    """finetune --out of a finished run with the same settings returned its metrics, and an
    interrupted one was continued, though the init's weights had changed under its path (the
    LD run trained again): the run records the SHA-256 of the weight file it loaded, and a
    run of other weights is refused, finished or interrupted, nothing deleted. A random init
    records none; a record without one (written before) is reused as it is."""
    import localdisc.tasks.transfer as transfer
    from localdisc.models import LDConfig, LDModel

    def pretrain(seed: int) -> None:
        torch.manual_seed(seed)
        LDModel(LDConfig("xray", width=4, depth=2)).save(tmp_path / "ld")

    pretrain(0)
    weights = tmp_path / "ld" / "encoder.safetensors"
    config = tiny("synthetic_xray:4", init=str(tmp_path / "ld"), frozen_epochs=0)
    out = tmp_path / "ft"
    run_transfer(config, out, log=lambda m: None)
    saved = json.loads((out / "config.json").read_text())
    assert saved["init_weights"] == {"file": str(weights), "sha256": transfer.sha256(weights)}
    random = tiny("synthetic_xray:4", frozen_epochs=0)
    run_transfer(random, tmp_path / "random", log=lambda m: None)
    assert "init_weights" not in json.loads((tmp_path / "random" / "config.json").read_text())
    pretrain(1)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}

    def train(*args, **kwargs):
        raise AssertionError("trained before --out was checked")

    monkeypatch.setattr(transfer, "finetune", train)
    changed = (
        rf" of other init weights: those of --init {re.escape(config.init)} "
        rf"\({re.escape(str(weights))}\) have changed since that fine-tuning started \(SHA-256 "
        r"\w{12}\.\.\. there, \w{12}\.\.\. now: trained again\?\); choose another --out, or "
        r"delete the folder \(and any other run of the old weights\) to run here"
    )
    with pytest.raises(
        LocaldiscError, match=rf"^{re.escape(str(out))}: holds a finished fine-tuning{changed}"
    ):
        run_transfer(config, out, log=lambda m: None)
    (out / "metrics.json").unlink()  # interrupted: not continued with other weights either
    interrupted = r" holds an interrupted fine-tuning \(config.json, no metrics.json\)"
    with pytest.raises(LocaldiscError, match=rf"^{re.escape(str(out))}:{interrupted}{changed}"):
        run_transfer(config, out, log=lambda m: None)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == {
        p: t for p, t in before.items() if p.name != "metrics.json"
    }
    # The same weights as that run's (a weight file named instead of the run): the same run.
    monkeypatch.undo()
    pretrain(0)
    logged: list[str] = []
    run_transfer(config, out, log=logged.append)
    assert "interrupted fine-tuning with the same settings" in logged[0]
    # A record written before the fingerprint existed: reused, whatever the weights now.
    pretrain(1)
    del saved["init_weights"]
    (out / "config.json").write_text(json.dumps(saved))
    logged.clear()
    run_transfer(config, out, log=logged.append)
    assert logged[0].startswith("reusing")


def test_a_mask_of_another_size_stops_the_fine_tuning_before_it_trains(tmp_path, monkeypatch):
    # The mask of an image read only after training (batch-norm recalibration, a test image)
    # stopped the run after every epoch had run (reviewer). The headers are checked first.
    import localdisc.tasks.transfer as transfer
    from helpers import own_folder, save

    data = own_folder(tmp_path / "own", n=6)
    save(data / "masks" / "case1.png", np.zeros((40, 48), np.uint8))  # read after training

    def trained(*args, **kwargs):
        raise AssertionError("trained before the masks were checked")

    monkeypatch.setattr(transfer, "finetune", trained)
    message = f"{data / 'masks' / 'case1.png'}: mask is 48x40 but its image case1.png is 48x48"
    with pytest.raises(DatasetError, match=re.escape(message)):
        run_transfer(tiny(str(data)), tmp_path / "out", log=lambda m: None)


def test_a_fine_tuning_into_a_folder_another_process_runs_in_is_refused(tmp_path):
    # As a pre-training's: two runs in one --out mixed their files (reviewer).
    from localdisc.engine.checkpoint import RunFolderLock

    out = tmp_path / "out"
    out.mkdir()
    busy = "another process is running in this folder"
    # as another process would hold it (flock: per open file)
    with RunFolderLock(out), pytest.raises(LocaldiscError, match=busy):
        run_transfer(tiny("synthetic_fundus:4"), out, log=lambda m: None)
    assert list(out.iterdir()) == []
    run_transfer(tiny("synthetic_fundus:4"), out, log=lambda m: None)  # free: it runs


def test_hrf_without_its_labels_given_as_a_folder_is_not_trained_on_its_fields_of_view(tmp_path):
    # images/ and mask/ (HRF's fields of view, 01_dr_mask.tif) without manual1/: a folder's
    # NAME_mask naming took the fields of view for labels, and fine-tuning learnt the disc.
    from helpers import save
    from localdisc.tasks.transfer import load_task_data

    root = tmp_path / "HRF"
    for stem in ("01_dr", "01_g", "01_h", "02_dr"):
        save(root / "images" / f"{stem}.jpg", np.full((24, 20, 3), 90, np.uint8))
        save(root / "mask" / f"{stem}_mask.tif", np.full((24, 20), 255, np.uint8))
    with pytest.raises(DatasetError, match=re.escape("01_dr_mask.tif: HRF's field of view, taken")):
        load_task_data(str(root), None)
    # Labels of one's own named so (an optic disc, a tenth of the image) are kept (reviewer).
    for stem in ("01_dr", "01_g", "01_h", "02_dr"):
        disc = np.zeros((24, 20), np.uint8)
        disc[8:14, 6:12] = 255
        save(root / "mask" / f"{stem}_mask.tif", disc)
    assert load_task_data(str(root), None)[2] == "mask"
    # DRIVE's test split as downloaded (images/ and mask/), given as a folder (reviewer).
    drive = tmp_path / "DRIVE" / "test"
    for ident in ("01", "02"):
        save(drive / "images" / f"{ident}_test.tif", np.full((24, 20, 3), 90, np.uint8))
        save(drive / "mask" / f"{ident}_test_mask.gif", np.full((24, 20), 255, np.uint8))
    with pytest.raises(DatasetError, match=re.escape("01_test_mask.gif: DRIVE's field of view")):
        load_task_data(str(drive), None)
    # A folder of one's own with masks/ named so is no such layout.
    own = tmp_path / "mine"
    for stem in ("case01", "case02"):
        save(own / "images" / f"{stem}.png", np.full((24, 20, 3), 90, np.uint8))
        save(own / "mask" / f"{stem}_mask.png", np.full((24, 20), 255, np.uint8))
    assert load_task_data(str(own), None)[2] == "mask"


def test_an_official_set_given_as_a_folder_is_told_its_name(tmp_path):
    # A DRIVE folder without drive: read as a folder of images: "no masks; put them in a folder
    # beside the images named masks, ..." (reviewer).
    from helpers import save
    from localdisc.tasks.transfer import load_task_data

    for ident in ("21", "22"):
        save(tmp_path / "DRIVE" / "training" / "images" / f"{ident}_training.tif",
             np.zeros((24, 20, 3), np.uint8))  # fmt: skip
        save(tmp_path / "DRIVE" / "training" / "1st_manual" / f"{ident}_manual1.gif",
             np.zeros((24, 20), np.uint8))  # fmt: skip
    root = tmp_path / "DRIVE"
    with pytest.raises(
        DatasetError, match=re.escape(f"it is laid out as drive is: give drive:{root}")
    ):
        load_task_data(str(root), None)


def test_a_finished_run_of_other_images_of_its_data_set_is_not_reused(tmp_path):
    # A partial download completed, the benchmark run again into its --out: the finished runs
    # were reused, scored on the old test set beside new runs scored on the new (reviewer).
    from helpers import own_folder, save
    from localdisc.data.synthetic import synthetic_fundus

    data = own_folder(tmp_path / "own", n=6)
    config = tiny(str(data))
    run_transfer(config, tmp_path / "out", log=lambda m: None)
    lines: list[str] = []
    run_transfer(config, tmp_path / "out", log=lines.append)  # the same images: reused
    assert any(line.startswith("reusing") for line in lines)
    extra = synthetic_fundus(48, seed=9)
    save(data / "images" / "case9.png", (extra.image * 255).astype(np.uint8))
    save(data / "masks" / "case9.png", (extra.vessels * 255).astype(np.uint8))
    message = r"holds a finished fine-tuning of other images of .* \(6 images then, 7 now\)"
    with pytest.raises(LocaldiscError, match=message):
        run_transfer(config, tmp_path / "out", log=lambda m: None)
    # A run made before outputs were left out of data sets read them: they are named
    added = {
        p: p.read_bytes() for p in (data / "images" / "case9.png", data / "masks" / "case9.png")
    }
    for path in added:
        path.unlink()
    (data / "pred").mkdir()
    (data / "pred" / "predict.json").write_text(json.dumps({"images": [{"name": "case0"}]}))
    save(data / "pred" / "case0_prob.png", (extra.image * 255).astype(np.uint8))
    record = json.loads((tmp_path / "out" / "config.json").read_text())
    record["data"]["listing"]["train"] += 1  # as a run of before, which read case0_prob
    (tmp_path / "out" / "config.json").write_text(json.dumps(record))
    named = rf"The data hold runs or outputs of localdisc \({re.escape(str(data / 'pred'))}\)"
    with pytest.raises(LocaldiscError, match=named):
        run_transfer(config, tmp_path / "out", log=lambda m: None)
    shutil.rmtree(data / "pred")
    for path, content in added.items():
        path.write_bytes(content)
    # With --skip-bad, the images used: a file cut short, skipped, then repaired, is another
    # data set; deleted, the same one (reviewer).
    from dataclasses import replace

    whole = (data / "images" / "case9.png").read_bytes()
    (data / "images" / "case9.png").write_bytes(whole[: len(whole) // 2])
    skipping = replace(config, skip_bad=True)
    run_transfer(skipping, tmp_path / "skip", log=lambda m: None)
    (data / "images" / "case9.png").write_bytes(whole)
    with pytest.raises(LocaldiscError, match=r"skipped .*case9\.png as unreadable, which reads"):
        run_transfer(skipping, tmp_path / "skip", log=lambda m: None)
    (data / "images" / "case9.png").unlink()
    (data / "masks" / "case9.png").unlink()
    lines.clear()
    run_transfer(skipping, tmp_path / "skip", log=lines.append)
    assert any(line.startswith("reusing") for line in lines)
