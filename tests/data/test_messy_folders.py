"""Data set folders as users really have them: the usual mistakes, all at once.

A ``folder`` set and a DRIVE download are built in tmp_path with a mask missing for one image,
unrelated files (``notes.txt``, ``Thumbs.db``, ``.DS_Store``, macOS ``._*`` resource forks),
mixed image sizes, a grey image among RGB ones, an all-zero image, a mask stored as 0/1
instead of 0/255, names with spaces and non-ASCII characters (stored decomposed, as macOS does,
for the image and composed for its mask), a corrupt image and a mask of the wrong size.

Documented behaviour (datasets.py): a listing problem raises :class:`DatasetError` naming the
file, a file that cannot be read raises :class:`ImageReadError` naming it; with
``skip_bad=True`` both are recorded in ``dataset.skipped`` with the reason and the rest loads.
Masks are binary whatever their encoding; images get the modality's channel count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import save
from localdisc.cli import app
from localdisc.data.datasets import load_dataset
from localdisc.errors import DatasetError, ImageReadError

pytestmark = pytest.mark.timeout(60)

H, W = 24, 20
UNICODE = "Ünïcode name 01"
JUNK = {
    "notes.txt": b"exported from the scanner on Tuesday\n",
    "Thumbs.db": bytes(64),
    ".DS_Store": b"\x00\x00\x00\x01Bud1" + bytes(32),
}


def fundus(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    """A textured bright disc on black."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= (0.45 * min(h, w)) ** 2
    image = np.zeros((h, w, 3), np.uint8)
    image[disc] = rng.integers(120, 200, (int(disc.sum()), 3)).astype(np.uint8)
    return image


def pattern(h: int = H, w: int = W, period: int = 5) -> np.ndarray:
    """The known foreground of every mask: a diagonal line pattern (bool)."""
    yy, xx = np.mgrid[:h, :w]
    return (xx + yy) % period == 0


def junk(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in JUNK.items():
        (folder / name).write_bytes(data)


def nfd(name: str) -> str:
    return unicodedata.normalize("NFD", name)


def nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def make_messy_folder(root: Path) -> Path:
    images, masks = root / "images", root / "masks"
    grey = np.full((H, W), 90, np.uint8)
    grey[4:-4, 4:-4] = 160
    save(images / "a.png", fundus())
    save(masks / "a.png", pattern().astype(np.uint8) * 255)
    save(images / "b big.png", fundus(32, 28, seed=1))  # another size
    save(masks / "b big.png", pattern(32, 28).astype(np.uint8))  # 0/1, not 0/255
    save(images / "c grey.png", grey)  # grey among RGB
    save(masks / "c grey.png", pattern().astype(np.uint8) * 255)
    save(images / "d zero.png", np.zeros((H, W, 3), np.uint8))  # all zero
    save(masks / "d zero.png", np.zeros((H, W), np.uint8))
    # The image's name decomposed (macOS), its mask's composed (typed on Linux or Windows).
    save(images / f"{nfd(UNICODE)}.png", fundus(seed=2))
    save(masks / f"{nfc(UNICODE)}.png", pattern().astype(np.uint8) * 255)
    save(images / "e no mask.png", fundus(seed=3))  # its mask is missing
    (images / "f corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))  # corrupt
    save(masks / "f corrupt.png", pattern().astype(np.uint8) * 255)
    save(images / "g wrong size.png", fundus(seed=4))
    save(masks / "g wrong size.png", pattern(W, H).astype(np.uint8) * 255)  # transposed
    save(masks / "orphan.png", pattern().astype(np.uint8) * 255)  # a mask without image
    (images / "._a.png").write_bytes(b"\x00\x05\x16\x07" + bytes(60))  # macOS resource fork
    junk(images)
    junk(masks)
    return root


def by_name(dataset) -> dict:  # type: ignore[no-untyped-def]
    return {nfc(sample.name): sample for sample in dataset}


# ----------------------------------------------------------------------------- folder


def test_folder_listing_names_the_image_without_mask(tmp_path: Path) -> None:
    # An image without a mask is unlabelled (few are labelled, as a rule), not a bad item.
    root = make_messy_folder(tmp_path / "set")
    ds = load_dataset("folder", root)
    assert [dict(item.masks) for item in ds.items if item.name == "e no mask"] == [{}]
    why = ds.missing_labels["mask"]
    assert why.startswith(f"1 of the 8 images have no mask in {root / 'masks'}, so are unlabelled")
    assert "e no mask.png: no mask with the same file stem" in why


def test_folder_skip_bad_lists_each_bad_item_with_its_reason(tmp_path: Path) -> None:
    root = make_messy_folder(tmp_path / "set")
    ds = load_dataset("folder", root, skip_bad=True)
    # Listing: junk, hidden files and the orphan mask are ignored; the unpaired image is an
    # unlabelled one, not skipped.
    names = sorted(nfc(item.name) for item in ds.items)
    assert names == sorted(
        ["a", "b big", "c grey", "d zero", nfc(UNICODE), "e no mask", "f corrupt", "g wrong size"]
    )
    assert ds.skipped == []

    ds.verify()
    skipped = {path.name: reason for path, reason in ds.skipped}
    assert set(skipped) == {"f corrupt.png", "g wrong size.png"}
    assert "PNG" in skipped["f corrupt.png"]  # "content is not a PNG, JPEG, ... image"
    reason = skipped["g wrong size.png"]
    assert str(root / "masks" / "g wrong size.png") in reason and "20x24" in reason
    assert len(ds) == 6


def test_folder_samples_grey_zero_binary_masks_unicode(tmp_path: Path) -> None:
    root = make_messy_folder(tmp_path / "set")
    ds = load_dataset("folder", root, skip_bad=True)
    ds.verify()
    assert ds.modality == "fundus"  # the colour images decide
    samples = by_name(ds)
    assert set(samples) == {"a", "b big", "c grey", "d zero", nfc(UNICODE), "e no mask"}
    assert samples.pop("e no mask").masks == {}  # unlabelled
    for name, s in samples.items():
        assert s.image.dtype == np.float32 and s.image.shape[2] == 3, name
        assert np.isfinite(s.image).all() and 0.0 <= s.image.min() <= s.image.max() <= 1.0
        assert s.masks["mask"].dtype == bool and s.fov.dtype == bool
        assert s.masks["mask"].shape == s.image.shape[:2] == s.fov.shape
    assert samples["b big"].image.shape == (32, 28, 3)
    np.testing.assert_array_equal(samples["b big"].masks["mask"], pattern(32, 28))  # 0/1 mask
    np.testing.assert_array_equal(samples["a"].masks["mask"], pattern())  # 0/255 mask
    grey = samples["c grey"].image
    np.testing.assert_array_equal(grey[..., 0], grey[..., 1])  # grey repeated to RGB
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
    assert grey[0, 0, 0] == pytest.approx(90 / 255)
    zero = samples["d zero"]
    assert not zero.image.any() and zero.fov.all()  # no foreground: the whole image is FOV
    assert not zero.masks["mask"].any()
    np.testing.assert_array_equal(samples[nfc(UNICODE)].masks["mask"], pattern())


def test_folder_as_xray_converts_rgb_to_one_channel(tmp_path: Path) -> None:
    root = make_messy_folder(tmp_path / "set")
    ds = load_dataset("folder", root, skip_bad=True, modality="xray")
    ds.verify()
    samples = by_name(ds)
    assert all(s.image.shape[2] == 1 for s in samples.values())
    assert samples["c grey"].image[0, 0, 0] == pytest.approx(90 / 255)
    assert samples["c grey"].fov.all()


def test_folder_corrupt_image_without_skip_bad_names_the_file(tmp_path: Path) -> None:
    root = make_messy_folder(tmp_path / "set")
    (root / "images" / "e no mask.png").unlink()
    (root / "images" / "g wrong size.png").unlink()
    ds = load_dataset("folder", root)
    with pytest.raises(ImageReadError) as info:
        ds.verify()
    assert info.value.path == root / "images" / "f corrupt.png"
    assert str(info.value).startswith(str(root / "images" / "f corrupt.png") + ": ")


def test_folder_blank_first_image_does_not_decide_the_modality(tmp_path: Path) -> None:
    # The modality is guessed from the first image; an all-black one says nothing about it.
    root = tmp_path / "set"
    save(root / "images" / "0 blank.png", np.zeros((H, W, 3), np.uint8))
    save(root / "images" / "1 colour.png", fundus())
    ds = load_dataset("folder", root)
    assert ds.modality == "fundus"
    assert [s.image.shape for s in ds] == [(H, W, 3), (H, W, 3)]


def test_folder_decomposed_and_composed_names_match(tmp_path: Path) -> None:
    # macOS stores names decomposed (NFD): such an image must find its mask typed composed.
    save(tmp_path / "set" / "images" / f"{nfd('Bérénice é')}.png", fundus())
    save(tmp_path / "set" / "masks" / f"{nfc('BÉRÉNICE É')}.png", pattern().astype(np.uint8))
    ds = load_dataset("folder", tmp_path / "set")
    assert len(ds) == 1 and ds.skipped == []
    np.testing.assert_array_equal(ds[0].masks["mask"], pattern())


# ----------------------------------------------------------------------------- DRIVE


def make_messy_drive(root: Path) -> Path:
    base = root / "training"
    rgb = {"21": fundus(), "23": np.zeros((H, W, 3), np.uint8), "25": fundus(seed=5)}
    for ident, image in rgb.items():
        save(base / "images" / f"{ident}_training.tif", image)
    save(base / "images" / "22_training.tif", fundus(30, 26, seed=2)[..., 1])  # grey, 30x26
    (base / "images" / "24_training.tif").write_bytes(b"II*\x00" + bytes(60))  # corrupt
    for ident in ("21", "22", "23", "24", "25"):
        h, w = (30, 26) if ident == "22" else (H, W)
        if ident != "25":  # 25's tracing is missing
            values = pattern(h, w).astype(np.uint8) * (1 if ident == "22" else 255)  # 22: 0/1
            save(base / "1st_manual" / f"{ident}_manual1.gif", values)
        fov = np.zeros((h, w), np.uint8)
        fov[1:-1, 1:-1] = 255
        save(base / "mask" / f"{ident}_training_mask.gif", fov)
    (base / "images" / "._21_training.tif").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    (base / "1st_manual" / "._21_manual1.gif").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    for folder in ("images", "1st_manual", "mask"):
        junk(base / folder)
    return root


def test_drive_listing_names_the_missing_tracing(tmp_path: Path) -> None:
    root = make_messy_drive(tmp_path / "DRIVE")
    with pytest.raises(DatasetError) as info:
        load_dataset("drive", root, "train")
    message = str(info.value)
    assert str(root / "training" / "images" / "25_training.tif") in message
    assert "25_manual1" in message and "missing" in message
    assert "._21" not in message  # macOS resource forks are not images


def test_drive_skip_bad_and_what_loads(tmp_path: Path) -> None:
    root = make_messy_drive(tmp_path / "DRIVE")
    ds = load_dataset("drive", root, "train", skip_bad=True)
    assert [item.name for item in ds.items] == ["21_training", "22_training", "23_training",
                                                "24_training"]  # fmt: skip
    ds.verify()
    skipped = {path.name: reason for path, reason in ds.skipped}
    assert set(skipped) == {"25_training.tif", "24_training.tif"}
    assert "25_manual1" in skipped["25_training.tif"]
    assert "TIFF" in skipped["24_training.tif"]
    samples = {s.name: s for s in ds}
    assert set(samples) == {"21_training", "22_training", "23_training"}
    grey = samples["22_training"]
    assert grey.image.shape == (30, 26, 3)  # grey TIFF -> the fundus modality's 3 channels
    np.testing.assert_array_equal(grey.image[..., 0], grey.image[..., 2])
    np.testing.assert_array_equal(grey.masks["vessels"], pattern(30, 26))  # 0/1 GIF
    np.testing.assert_array_equal(samples["21_training"].masks["vessels"], pattern())
    zero = samples["23_training"]
    assert not zero.image.any() and zero.fov.sum() == (H - 2) * (W - 2)  # the official FOV


def test_drive_corrupt_image_without_skip_bad(tmp_path: Path) -> None:
    root = make_messy_drive(tmp_path / "DRIVE")
    save(root / "training" / "1st_manual" / "25_manual1.gif", pattern().astype(np.uint8) * 255)
    ds = load_dataset("drive", root, "train")
    assert len(ds) == 5
    with pytest.raises(ImageReadError) as info:
        ds.verify()
    assert info.value.path == root / "training" / "images" / "24_training.tif"


# ----------------------------------------------------------------------------- CLI

runner = CliRunner()


def test_cli_inspect_messy_folder_report(tmp_path: Path) -> None:
    root = make_messy_folder(tmp_path / "set")
    result = runner.invoke(app, ["datasets", "inspect", "folder", str(root)])
    assert isinstance(result.exception, ImageReadError)
    assert "f corrupt.png" in str(result.exception)

    result = runner.invoke(
        app, ["datasets", "inspect", "folder", str(root), "--skip-bad", "--json"]
    )
    assert result.exit_code == 1, result.output  # bad items were skipped (the report is whole)
    report = json.loads(result.stdout)
    split = report["splits"]["all"]
    assert report["name"] == "folder" and report["modality"] == "fundus"
    assert split["images"] == 6 and split["masks"] == {"mask": 5}  # "e no mask": unlabelled
    assert "e no mask" in split["missing_labels"]["mask"]
    assert split["sizes"] == {"24x20": 5, "32x28": 1}
    skipped = {Path(e["path"]).name: e["reason"] for e in report["skipped"]}
    assert set(skipped) == {"f corrupt.png", "g wrong size.png"}
    assert all(skipped.values())

    result = runner.invoke(app, ["datasets", "inspect", "folder", str(root), "--skip-bad"])
    assert result.exit_code == 1, result.output
    flat = "".join(ch for ch in result.stdout if ch not in " \n│┃┆")
    assert "skipped(2)" in flat and "1ofthe8imageshavenomask" in flat
    for name in ("fcorrupt.png", "gwrongsize.png", "24x20:5", "32x28:1"):
        assert name in flat, name


def test_cli_inspect_messy_folder_error_is_one_line(tmp_path: Path) -> None:
    root = make_messy_folder(tmp_path / "set")
    env = {**os.environ, "COLUMNS": "200", "PYTHONIOENCODING": "utf-8"}
    result = subprocess.run(
        [sys.executable, "-m", "localdisc", "datasets", "inspect", "folder", str(root)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        env=env,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "f corrupt.png" in lines[0] and "starts as a PNG file but cannot be decoded" in lines[0]
