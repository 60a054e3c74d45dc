"""What a fine-tuning makes of odd inputs before it trains (reviewers, session 57): EXIF-oriented
labelled images, unreadable files it reads only after training, symbolic-link aliases, a
folder of mixed modalities, and settings out of range (``max_test``, ``val_fraction``)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import localdisc.tasks.transfer as transfer
from helpers import save
from localdisc.engine.finetune import FinetuneConfig
from localdisc.errors import ImageReadError, LocaldiscError
from localdisc.tasks.predict import SKIP_BAD_HINT
from localdisc.tasks.transfer import TransferConfig, held_out_test, run_transfer, split_labelled


class Trained(Exception):
    """Raised in place of the training: what a test looks at happened before it, or not."""


@pytest.fixture
def no_training(monkeypatch):
    def train(*args, **kwargs):
        raise Trained

    monkeypatch.setattr(transfer, "finetune", train)


def config(data: Path, **overrides) -> TransferConfig:
    schedule = FinetuneConfig(frozen_epochs=0, epochs=1, device="cpu", progress=False)
    settings = {"labels": "all", "size": 32, "train": schedule, **overrides}
    return TransferConfig(str(data), **settings)


def folder(root: Path, n: int = 8, unlabelled: int = 0) -> Path:
    """``n`` labelled 48 x 48 grey images ``case{i}.png`` (masks/) and ``unlabelled`` more."""
    for i in range(n + unlabelled):
        image = np.random.default_rng(i).integers(0, 120, (48, 48), dtype=np.uint8)
        image[10:30, 12:34] += 120
        name = f"case{i}.png" if i < n else f"u{i - n}.png"
        save(root / name, image)
        if i < n:
            mask = np.zeros((48, 48), np.uint8)
            mask[10:30, 12:34] = 255
            save(root / "masks" / name, mask)
    return root


def _truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return path


# -- settings ---------------------------------------------------------------------------


@pytest.mark.parametrize("max_test", [-1, 0, 1.5, True, "2"])
def test_a_max_test_that_is_no_count_of_test_images_is_refused(tmp_path, max_test):
    """-1 scored over all test images but the last (a slice), 0 tested none, saying
    "--test-fraction 0"."""
    with pytest.raises(LocaldiscError, match=r"^max_test \(the test images evaluated\) must be"):
        config(tmp_path, max_test=max_test)
    assert config(tmp_path, max_test=1).max_test == 1 and config(tmp_path).max_test is None


@pytest.mark.parametrize("fraction", [-0.5, 1.0, 1.5, float("nan"), True, "0.2"])
def test_a_val_fraction_outside_0_1_is_refused(tmp_path, fraction):
    """-0.5 gave one validation image, 1.0 none to train on, 1.5 "-5 train", NaN a bare
    ValueError, all without a word."""
    with pytest.raises(LocaldiscError, match=r"^val_fraction must be in \[0, 1\)"):
        config(tmp_path, val_fraction=fraction)
    with pytest.raises(LocaldiscError, match=r"^val_fraction must be in \[0, 1\)"):
        split_labelled(20, 10, 0, val_fraction=fraction)


def test_numpy_numbers_are_taken_as_python_s(tmp_path):
    # A reviewer's np.int64(5) and np.float32(0.25) were refused as no count and no fraction;
    # np.int64(64) as no size, np.float32 as no test fraction, and numpy numbers in the schedule
    # failed in json.dumps of config.json, after the training.
    from dataclasses import asdict

    schedule = FinetuneConfig(frozen_epochs=np.int64(0), epochs=np.int32(1), batch=np.int64(2),
                              steps_per_epoch=np.int64(3), seed=np.int64(4), lr=np.float32(0.5),
                              rotation=np.int64(30), checkpoint_seconds=np.float64(5),
                              flips=np.True_, amp=np.False_, device="cpu",
                              progress=np.bool_(False))  # fmt: skip
    taken = config(tmp_path, max_test=np.int64(5), val_fraction=np.float32(0.25),
                   size=np.int64(64), test_fraction=np.float32(0.5), train=schedule,
                   recalibrate_bn=np.True_, skip_bad=np.False_)  # fmt: skip
    assert (taken.max_test, taken.val_fraction, taken.size) == (5, 0.25, 64)
    numbers = [v for v in (*asdict(taken).values(), *asdict(schedule).values()) if v is not None]
    assert not any(isinstance(v, np.generic) for v in numbers)
    assert json.loads(json.dumps(asdict(taken)))["train"]["rotation"] == 30.0
    assert (taken.recalibrate_bn, schedule.flips) == (True, True)
    with pytest.raises(LocaldiscError, match="^recalibrate_bn must be True or False, not 1"):
        config(tmp_path, recalibrate_bn=1)


@pytest.mark.parametrize(
    ("field", "value", "what"),
    [("epochs", 2.5, "a whole"), ("batch", "2", "a whole"), ("seed", True, "a whole"),
     ("lr", "0.1", "a"), ("amp", 1, "True or False,"), ("flips", "yes", "True or False,"),
     ("amp", None, "True or False,"), ("progress", None, "True or False,")],  # flips alone
)  # fmt: skip
def test_a_schedule_field_of_another_type_is_refused_naming_it(field, value, what):
    message = f"^invalid fine-tuning config: {field} must be {what} "
    with pytest.raises(LocaldiscError, match=message):
        FinetuneConfig(**{field: value})


def test_val_fraction_0_validates_on_the_training_images():
    """0 gave one validation image, as a fraction of 0.05 did."""
    train, val, note = split_labelled(20, 10, 0, val_fraction=0)
    assert train == val and len(train) == 10
    assert note == "10 labelled image(s): validated on the training images (val_fraction 0: no " \
        "hold-out)"  # fmt: skip
    assert split_labelled(20, 10, 0)[2] == "8 train + 2 validation images"  # the default


def test_a_val_fraction_that_leaves_no_training_image_is_refused():
    with pytest.raises(LocaldiscError, match=r"^val_fraction 0.95 holds out 10 of 10 .* no "):
        split_labelled(20, 10, 0, val_fraction=0.95)


# -- unreadable files read after the training -------------------------------------------


def _test_names(n: int = 8) -> list[str]:
    names = [f"case{i}" for i in range(n)]
    return [names[i] for i in held_out_test(names)]


@pytest.mark.parametrize("which", ["test image", "test mask", "unlabelled image"])
def test_an_unreadable_file_read_after_training_stops_the_run_before_it(
    tmp_path, no_training, which
):
    """A test image or mask, or an unlabelled image of the batch-norm recalibration, was read
    only after the training, which it then stopped: its minutes (hours at 512 px) lost."""
    data = folder(tmp_path / "data", unlabelled=2)
    name = _test_names()[0]
    bad = _truncate(
        data / f"{name}.png"
        if which == "test image"
        else data / "masks" / f"{name}.png"
        if which == "test mask"
        else data / "u1.png"
    )
    with pytest.raises(ImageReadError) as error:
        run_transfer(config(data), tmp_path / "out", log=lambda m: None)
    assert error.value.path == bad
    assert str(error.value).endswith(SKIP_BAD_HINT) == (which != "test mask")
    assert not (tmp_path / "out").exists()  # nothing written: no config.json of a run begun


def test_with_skip_bad_an_unreadable_test_image_is_left_out_at_the_start(tmp_path, no_training):
    data = folder(tmp_path / "data", n=10, unlabelled=1)
    bad = _truncate(data / f"{_test_names(10)[0]}.png")
    said: list[str] = []
    with pytest.raises(Trained):
        run_transfer(config(data, skip_bad=True), tmp_path / "out", log=said.append)
    assert said[0].startswith(f"skipped {bad}: cannot decode")


def test_the_files_read_after_training_are_read_once_before_it(tmp_path, monkeypatch):
    """The check reads the test and recalibration items once each, before the training; the
    training images are read as before (for their tensors), and nothing else."""
    data = folder(tmp_path / "data", unlabelled=2)
    loads: list[str] = []
    real = transfer.FolderDataset.load

    def load(self, item):
        loads.append(item.name)
        return real(self, item)

    def train(*args, **kwargs):
        loads.append("<training>")
        raise Trained

    monkeypatch.setattr(transfer.FolderDataset, "load", load)
    monkeypatch.setattr(transfer, "finetune", train)
    with pytest.raises(Trained):
        run_transfer(config(data, labels="2"), tmp_path / "out", log=lambda m: None)
    record = json.loads((tmp_path / "out" / "config.json").read_text())["data"]
    before = loads[: loads.index("<training>")]
    trained = record["train_images"]  # two labels: validated on the training images
    assert sorted(before) == sorted(
        trained * 2  # the training and validation tensors
        + [f"case{i}" for i in range(8) if f"case{i}" not in trained]  # recalibration + test
        + ["u0", "u1"]
    )


# -- headers of the labelled images -----------------------------------------------------


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[274] = orientation
    return exif.tobytes()


def test_labelled_images_with_an_exif_orientation_are_warned_of(tmp_path, no_training):
    """A phone photograph held upside down (orientation 3), its mask drawn in a viewer that
    turns it: the mask has the stored size and was paired with the unturned pixels without a
    word (IoU 0 with the object)."""
    data = tmp_path / "photos"
    for i in range(6):
        image = np.full((40, 56, 3), (120, 60, 30), np.uint8)
        image[4:14, 6:20] = 250
        save(data / "images" / f"c{i}.jpg", image, exif=_exif(3), quality=95)
        mask = np.zeros((40, 56), np.uint8)
        mask[26:36, 36:50] = 255  # drawn on the image as shown: turned 180 degrees
        save(data / "masks" / f"c{i}.png", mask)
    said: list[str] = []
    with pytest.raises(Trained):
        run_transfer(config(data), tmp_path / "out", log=said.append)
    warnings = [line for line in said if line.startswith("warning:")]
    assert warnings == [
        "warning: 6 image(s) carry an EXIF orientation that localdisc does not apply (first: "
        f"{data / 'images' / 'c0.jpg'}, 3: viewers show it turned 180 degrees): masks are read "
        "against the pixels as stored, 56 wide and 40 high there: a mask made by a program from "
        "them fits, and one drawn on the image as a viewer that applies the tag shows it lies "
        "turned against its image; save such images as viewers show them (without the tag), or "
        "turn their masks back"
    ]
    said.clear()
    with pytest.raises(Trained):  # upright images: nothing to say
        run_transfer(config(folder(tmp_path / "plain")), tmp_path / "out2", log=said.append)
    assert not [line for line in said if "EXIF" in line]


# -- listing -----------------------------------------------------------------------------


def test_symbolic_link_aliases_are_not_both_tested_and_trained_on(tmp_path, no_training):
    """10 images and 10 links to them under other names (masks linked alike): 4 files were
    held out for testing under one name and trained on under the other."""
    data = folder(tmp_path / "data", n=10)
    try:
        for i in range(10):
            (data / f"alias{i}.png").symlink_to(f"case{i}.png")
            (data / "masks" / f"alias{i}.png").symlink_to(f"case{i}.png")
    except OSError:
        pytest.skip("symbolic links are not available here")
    said: list[str] = []
    with pytest.raises(Trained):
        run_transfer(config(data), tmp_path / "out", log=said.append)
    assert said[0] == (
        f"note: {data}: 10 image file(s) have a second name here, a symbolic or hard link (first: "
        "alias0.png, the same file as case0.png); each file is used once, under the name kept, "
        "so that none is both trained and tested on"
    )
    record = json.loads((tmp_path / "out" / "config.json").read_text())["data"]
    trained = {(data / f"{n}.png").resolve() for n in record["train_images"] + record["val_images"]}
    tested = {(data / f"{n}.png").resolve() for n in _test_names(10)}
    assert record["listing"]["train"] == 10 and not trained & tested


def test_a_folder_of_mixed_modalities_is_taken_for_fundus_and_says_so(tmp_path, no_training):
    """A fundus folder whose first file is a red-free (grey) photograph was trained as X-rays
    ("pre-trained on fundus images, but the data set is xray" for an LD init)."""
    data = tmp_path / "fundus"
    for i in range(6):
        image = np.zeros((48, 48, 3), np.uint8)
        image[8:40, 8:40] = (200, 90 + i, 40)
        if i == 0:
            image[8:40, 8:40] = 120  # red-free: grey
        save(data / f"{'a_redfree' if i == 0 else f'f{i}'}.png", image)
        mask = np.zeros((48, 48), np.uint8)
        mask[20:28, 20:28] = 255
        save(data / "masks" / f"{'a_redfree' if i == 0 else f'f{i}'}.png", mask)
    said: list[str] = []
    with pytest.raises(Trained):
        run_transfer(config(data), tmp_path / "out", log=said.append)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["data"]["modality"] == (
        "fundus"
    )
    assert said[0].startswith("note: f1.png is a colour image, and 1 grey one(s) came before it")
