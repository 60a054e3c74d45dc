"""Tests for survivors of a mutation review of ``localdisc.tasks.transfer`` (session 61): the
seed as a setting of a run (its record, its split, its initial weights, its schedule), the
frozen model's own scores, the test images in a run's data listing, settings only one side of
a comparison has, and the boundary below which validation uses the training images."""

import copy
import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

import localdisc.tasks.transfer as transfer
from helpers import save
from localdisc.engine.finetune import FinetuneConfig
from localdisc.errors import LocaldiscError
from localdisc.tasks.transfer import (
    FLAGS,
    MIN_LABELS_FOR_HOLDOUT,
    TransferConfig,
    data_listing,
    load_task_data,
    protocol,
    run_transfer,
    split_labelled,
)

QUIET = dict(device="cpu", progress=False)


def tiny(dataset: str, init: str = "random", **train) -> TransferConfig:
    """Two labelled images at 32 x 32, one epoch a phase, two test images."""
    schedule = FinetuneConfig(**{"frozen_epochs": 1, "epochs": 1, **QUIET, **train})
    return TransferConfig(dataset, None, init, "2", 32, max_test=2, train=schedule)


class Trained(Exception):
    """Raised in place of the training: what a test looks at was decided before it."""


def quiet(message: str) -> None:
    pass


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished fine-tuning of seed 0 (synthetic_fundus:4, its settings those of
    ``tiny``), for tests to copy and run again into."""
    out = tmp_path_factory.mktemp("finished") / "ft"
    run_transfer(tiny("synthetic_fundus:4", seed=0), out, log=quiet)
    return out


def copy_of(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "ft"
    shutil.copytree(run, out)
    return out


def no_training(monkeypatch) -> None:
    def train(*args, **kwargs):
        raise AssertionError("trained: the folder was taken for free or interrupted")

    monkeypatch.setattr(transfer, "finetune", train)


# -- the seed ---------------------------------------------------------------------------------


def test_a_finished_run_of_another_seed_is_refused_and_of_the_same_seed_reused(
    finished, tmp_path, monkeypatch
):
    """The seed draws the labelled images and the initial weights: a finished run of seed 0
    returned as the result of seed 1 put one run twice in a table of seeds (and its mean and
    spread over seeds were of fewer runs than said)."""
    out = copy_of(finished, tmp_path)
    no_training(monkeypatch)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(
        LocaldiscError,
        match=r"holds a finished fine-tuning with other settings "
        r"\(--seed \(train\.seed\): 0 there, 1 now\); choose another --out",
    ):
        run_transfer(tiny("synthetic_fundus:4", seed=1), out, log=quiet)
    logged: list[str] = []
    again = run_transfer(tiny("synthetic_fundus:4", seed=0), out, log=logged.append)
    assert logged[0].startswith("reusing") and again["seed"] == 0
    assert again == json.loads((out / "metrics.json").read_text())
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    # What defines a run: the seed in it, for an LD init as for a random one
    for init in ("random", str(tmp_path / "ld")):
        seeds = [protocol(asdict(tiny("synthetic_fundus:4", init, seed=s))) for s in (0, 1, 0)]
        assert seeds[0] != seeds[1] and seeds[0] == seeds[2]


def test_an_interrupted_run_of_another_seed_is_not_continued(finished, tmp_path, monkeypatch):
    """A checkpoint of seed 0 continued by the command of seed 1 would end as a run of neither."""
    out = copy_of(finished, tmp_path)
    (out / "metrics.json").unlink()  # interrupted
    no_training(monkeypatch)
    with pytest.raises(LocaldiscError, match=r"interrupted .*--seed \(train\.seed\): 0 there"):
        run_transfer(tiny("synthetic_fundus:4", seed=1), out, log=quiet)


def _started(monkeypatch, config: TransferConfig, out: Path) -> dict:
    """What :func:`run_transfer` hands the training for ``config``: the model's initial weights
    and the schedule, stopped there; with the record it wrote before (``config.json``)."""
    seen: dict = {}

    def train(model, train, val, schedule, **kwargs):
        seen.update(state=copy.deepcopy(model.state_dict()), schedule=schedule)
        seen.update(train=train, val=val)
        raise Trained

    monkeypatch.setattr(transfer, "finetune", train)
    with pytest.raises(Trained):
        run_transfer(config, out, log=quiet)
    seen["record"] = json.loads((out / "config.json").read_text())
    return seen


def test_the_seed_reaches_the_split_the_initial_weights_and_the_schedule(tmp_path, monkeypatch):
    """Runs of several seeds are to differ in all that the seed drives: which images are
    labelled, the network's initial weights (its new decoder's for an LD init), and the
    training's shuffles and augmentations, which the schedule's seed draws; and one seed is to
    give one run. A seed replaced by 0 anywhere made runs of other seeds alike there."""
    runs = {
        (seed, n): _started(monkeypatch, tiny("synthetic_fundus:4", seed=seed), tmp_path / f"{n}")
        for n, seed in enumerate((0, 1, 0))
    }
    (a, b, again) = runs.values()
    train_set = load_task_data("synthetic_fundus:4", None)[0]
    for (seed, _), run in runs.items():
        assert run["schedule"].seed == seed
        assert run["record"]["transfer"]["train"]["seed"] == seed
        picked = split_labelled(len(train_set), "2", seed)[0]
        assert run["record"]["data"]["train_images"] == [train_set.items[i].name for i in picked]
    assert a["record"]["data"]["train_images"] != b["record"]["data"]["train_images"]
    assert not torch.equal(a["train"][0], b["train"][0])
    # The initial weights: another seed, others; the same seed, the same
    assert a["state"].keys() == b["state"].keys()
    assert any(not torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    assert all(torch.equal(a["state"][k], again["state"][k]) for k in a["state"])
    assert all(torch.equal(a["train"][i], again["train"][i]) for i in (0, 1))


# -- the frozen model's scores ----------------------------------------------------------------


def test_the_frozen_phase_is_scored_with_the_frozen_model_s_weights(tmp_path, monkeypatch):
    """The paper reports the model of the frozen-encoder phase beside the fine-tuned one:
    ``metrics.json``'s ``frozen`` scores were the final model's, the two columns equal."""
    from localdisc.models import LDConfig, LDModel

    LDModel(LDConfig("xray")).save(tmp_path / "ld")
    real, seen = transfer.finetune, {}

    def train(model, *args, **kwargs):
        result = real(model, *args, **kwargs)
        seen.update(model=copy.deepcopy(model), state=copy.deepcopy(result.state))
        seen.update(frozen=copy.deepcopy(result.frozen_state))
        return result

    monkeypatch.setattr(transfer, "finetune", train)
    config = tiny("synthetic_xray:4", init=str(tmp_path / "ld"), lr=0.05)
    metrics = run_transfer(config, tmp_path / "ft", log=quiet)
    saved = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert seen["frozen"] is not None
    model = seen["model"].to(memory_format=torch.contiguous_format)
    test = load_task_data(config.dataset, None)[1]

    def scores(state: dict) -> list[dict]:
        model.load_state_dict(state)
        return transfer.evaluate(model, test, [0, 1], "lung")

    frozen, final = scores(seen["frozen"]), scores(seen["state"])
    assert frozen != final  # else this test could not tell them apart
    for rows in (metrics["frozen"]["per_image"], saved["frozen"]["per_image"]):
        assert [r["image"] for r in rows] == [r["image"] for r in frozen]
        for row, expected in zip(rows, frozen, strict=True):
            assert row == pytest.approx(expected, nan_ok=True)
    for row, expected in zip(saved["per_image"], final, strict=True):
        assert row == pytest.approx(expected, nan_ok=True)  # the saved model: the final one


# -- the test images in the data listing -------------------------------------------------------


def drive_like(root: Path, test_ids: tuple[str, ...] = ("01", "02")) -> Path:
    """A DRIVE layout of 2 training and ``test_ids`` test images (40 x 40, vessel tracings)."""
    rng = np.random.default_rng(0)
    for folder, kind, ids in (("training", "training", ("21", "22")), ("test", "test", test_ids)):
        for ident in ids:
            image = rng.integers(0, 120, (40, 40, 3), np.uint8)
            image[10:30, 10:30] += 100
            save(root / folder / "images" / f"{ident}_{kind}.tif", image)
            vessels = np.zeros((40, 40), np.uint8)
            vessels[:, 18:22] = 255
            save(root / folder / "1st_manual" / f"{ident}_manual1.gif", vessels)
    return root


def test_the_data_listing_names_the_test_images(tmp_path, monkeypatch):
    """A finished run is reused only on the images it used: a test image replaced by another
    (a download completed otherwise, a file renamed) leaves the counts as they were, and the
    old scores were reused beside runs scored on the new test images."""
    data = drive_like(tmp_path / "DRIVE")
    spec = f"drive:{data}"
    train_set, test, _ = load_task_data(spec, None)
    listing = data_listing(train_set, test)
    assert (listing["train"], listing["test"]) == (2, 2)
    renamed = copy.copy(test)
    renamed.items = [replace(item, name=f"{item.name}x") for item in test.items]
    assert data_listing(train_set, renamed)["sha256"] != listing["sha256"]
    assert data_listing(train_set, None)["test"] == 0
    assert data_listing(train_set, None)["sha256"] != listing["sha256"]
    # Its record, in a run's config.json, and what a finished run is compared on
    out = tmp_path / "ft"
    record = _started(monkeypatch, tiny(spec, frozen_epochs=0), out)["record"]
    assert record["data"]["listing"] == {**listing, "skipped": []}
    (out / "metrics.json").write_text("{}")  # as finished
    no_training(monkeypatch)
    assert run_transfer(tiny(spec, frozen_epochs=0), out, log=quiet) == {}  # the same images
    for path in data.glob("test/*/02_*"):
        path.rename(path.with_name(path.name.replace("02_", "03_")))
    assert [item.name for item in load_task_data(spec, None)[1].items] == ["01_test", "03_test"]
    with pytest.raises(
        LocaldiscError,
        match=r"holds a finished fine-tuning of other images of .* \(2 training and 2 test "
        r"images then, 2 and 2 now\)",
    ):
        run_transfer(tiny(spec, frozen_epochs=0), out, log=quiet)


# -- settings on one side only ----------------------------------------------------------------


def test_a_setting_only_the_new_run_has_is_a_difference():
    """A record without a setting (written before it existed, or by hand) is the same run only
    where the setting then had the value given now: keys of the new run alone were not
    compared, and a record that lacks one was taken for a run of any value of it."""
    saved = {"labels": "2", "train": {"epochs": 1}}
    given = {"labels": "2", "max_test": 2, "train": {"epochs": 1, "lr": 0.1}}
    assert transfer._differences(saved, given, FLAGS) == [
        "max_test: None there, 2 now",
        "--lr (train.lr): None there, 0.1 now",
    ]
    assert transfer._differences(given, saved, FLAGS) == [
        "max_test: 2 there, None now",
        "--lr (train.lr): 0.1 there, None now",
    ]
    # None now and nothing there: the same (a setting added as None, "not set")
    assert transfer._differences(saved, {**saved, "modality": None}, FLAGS) == []


def test_a_finished_run_recorded_without_a_setting_given_now_is_refused(
    finished, tmp_path, monkeypatch
):
    """A record without ``max_test`` tested every test image: reused for a run of
    ``max_test`` 2, its scores were of other images than asked for; one of every test image
    (None) is the same run."""
    out = copy_of(finished, tmp_path)
    record = json.loads((out / "config.json").read_text())
    del record["transfer"]["max_test"]
    del record["transfer"]["train"]["lr"]
    (out / "config.json").write_text(json.dumps(record))
    no_training(monkeypatch)
    with pytest.raises(
        LocaldiscError,
        match=r"other settings \(max_test: None there, 2 now; "
        r"--lr \(train\.lr\): None there, 0\.001 now\)",
    ):
        run_transfer(tiny("synthetic_fundus:4", seed=0), out, log=quiet)
    record["transfer"]["train"]["lr"] = 1e-3
    (out / "config.json").write_text(json.dumps(record))
    every = replace(tiny("synthetic_fundus:4", seed=0), max_test=None)
    logged: list[str] = []
    run_transfer(every, out, log=logged.append)
    assert logged[0].startswith("reusing")


# -- validation on the training images below 5 labels ------------------------------------------


@pytest.mark.parametrize("seed", [0, 3])
def test_four_labelled_images_validate_on_themselves_and_five_hold_one_out(seed):
    """With fewer than 5 labelled images there is none to spare, and validation uses the
    training images (as the paper's 2-label runs); from 5 on, 20% (at least one) are held out
    for validation (METHOD.md 4) and not trained on."""
    assert MIN_LABELS_FOR_HOLDOUT == 5
    four, four_val, note = split_labelled(20, 4, seed)
    assert four == four_val and len(four) == 4
    assert note == "4 labelled image(s): validated on the training images (no hold-out)"
    five, five_val, note = split_labelled(20, 5, seed)
    assert (len(five), len(five_val)) == (4, 1) and not set(five) & set(five_val)
    assert note == "4 train + 1 validation images"
    assert set(five + five_val) >= set(four)  # the same first images, one more
    # A set of exactly 4 or 5 labelled images, all of them taken
    assert split_labelled(4, "all", seed)[0] == split_labelled(4, "all", seed)[1]
    train, val, _ = split_labelled(5, "all", seed)
    assert (len(train), len(val)) == (4, 1) and sorted(train + val) == list(range(5))


@pytest.mark.parametrize("seed", [0, 7])
def test_label_budgets_are_the_first_n_of_one_seeded_shuffle(seed):
    """--labels N takes the first N images after the seed's shuffle (issue 4), so a budget's
    images are among every larger one's and the inits of one seed see the same images; the
    validation images are the first of those, disjoint from the training ones."""
    order = torch.randperm(20, generator=torch.Generator().manual_seed(seed)).tolist()
    labelled = {}
    for budget in ("2", "5", "10", "all"):
        train, val, _ = split_labelled(20, budget, seed)
        labelled[budget] = train + val if train != val else train
        n = len(labelled[budget])
        assert sorted(labelled[budget]) == sorted(order[:n])
        if train != val:
            assert val == order[: len(val)] and train == order[len(val) : n]
    assert set(labelled["2"]) < set(labelled["5"]) < set(labelled["10"]) < set(labelled["all"])
    assert split_labelled(20, "5", seed) == split_labelled(20, "5", seed)
    assert split_labelled(20, "5", seed)[0] != split_labelled(20, "5", seed + 1)[0]
