"""Tests for localdisc.data.inspect: full-read reports and preview grids."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import save, shared
from localdisc.data.datasets import load_dataset
from localdisc.data.inspect import inspect_dataset, write_preview
from localdisc.errors import ImageReadError

H, W = 30, 26


def make_drive(root: Path) -> Path:
    """A DRIVE copy: 2 + 2 images; vessels cover rows 10-14 (5 of 30 rows) in all FOV columns."""
    yy, xx = np.mgrid[:H, :W]
    image = np.zeros((H, W, 3), np.uint8)
    image[(yy - H / 2) ** 2 + (xx - W / 2) ** 2 <= 12**2] = (180, 90, 40)
    vessels = np.zeros((H, W), np.uint8)
    vessels[10:15] = 255
    fov = np.full((H, W), 255, np.uint8)
    for folder, kind, ids in (
        ("training", "training", ("21", "22")),
        ("test", "test", ("01", "02")),
    ):
        for ident in ids:
            save(root / folder / "images" / f"{ident}_{kind}.tif", image)
            save(root / folder / "1st_manual" / f"{ident}_manual1.gif", vessels)
            save(root / folder / "mask" / f"{ident}_{kind}_mask.gif", fov)
        if folder == "test":
            for ident in ids:
                save(root / folder / "2nd_manual" / f"{ident}_manual2.gif", vessels[::-1])
    return root


def test_inspect_reports_counts_sizes_coverage(tmp_path: Path) -> None:
    root = make_drive(tmp_path / "DRIVE")
    report = inspect_dataset("drive", root, progress=False)
    assert report["name"] == "drive" and report["root"] == str(root)
    assert report["modality"] == "fundus" and report["skipped"] == []
    assert list(report["splits"]) == ["train", "test"]
    train, test = report["splits"]["train"], report["splits"]["test"]
    assert train["images"] == 2 and train["masks"] == {"vessels": 2} and train["fov"] == 2
    assert test["masks"] == {"vessels": 2, "vessels_2nd": 2}
    assert train["sizes"] == {"30x26": 2}
    assert train["coverage"]["vessels"] == pytest.approx(5 / 30, abs=1e-4)
    assert train["fov_source"] == "official mask files" and train["fov_fraction"] == 1.0


def test_inspect_says_whether_coverage_is_of_the_fov_or_the_image(tmp_path: Path) -> None:
    # The CLI's "coverage" column stood beside "FOV ... % of image" but is a share of the FOV.
    from localdisc.data.inspect import coverage_header

    root = make_drive(tmp_path / "DRIVE")  # FOV files covering the whole image, as JSRT's
    report = inspect_dataset("drive", root, progress=False)
    assert {s["coverage_of"] for s in report["splits"].values()} == {"image"}
    assert coverage_header(report) == "coverage (of image)"
    fov = np.zeros((H, W), np.uint8)
    fov[:, : W // 2] = 255  # the left half: vessels (rows 10-14) cover 5 of 30 rows of it
    for path in root.glob("*/mask/*_mask.gif"):
        save(path, fov)
    report = inspect_dataset("drive", root, progress=False)
    train = report["splits"]["train"]
    assert train["coverage_of"] == "FOV" and train["fov_fraction"] == 0.5
    assert train["coverage"]["vessels"] == pytest.approx(5 / 30, abs=1e-4)  # not 5 / 60
    assert coverage_header(report) == "coverage (of FOV)"


def test_inspect_reports_drive_public_test_split_as_unlabelled(tmp_path: Path) -> None:
    # DRIVE as downloaded from grand-challenge.org / Kaggle: no test tracings.
    root = make_drive(tmp_path / "DRIVE")
    for folder in ("1st_manual", "2nd_manual"):
        shutil.rmtree(root / "test" / folder)
    report = inspect_dataset("drive", root, progress=False)
    train, test = report["splits"]["train"], report["splits"]["test"]
    assert train["labelled"] and train["masks"] == {"vessels": 2}
    assert train["missing_labels"] == {}
    assert not test["labelled"] and test["images"] == 2 and test["fov"] == 2
    assert test["masks"] == {} and test["coverage"] == {} and test["default_target"] is None
    assert "test/1st_manual: no such folder" in test["missing_labels"]["vessels"]
    out = write_preview("drive", tmp_path / "test.png", root=root, split="test")
    assert out.stat().st_size > 0


def test_inspect_unsplit_folder_reports_all(tmp_path: Path) -> None:
    for i in range(3):
        save(tmp_path / "pool" / f"img{i}.png", np.full((8, 9, 3), 60 * i + 30, np.uint8))
    report = inspect_dataset("folder", tmp_path / "pool", progress=False)
    assert list(report["splits"]) == ["all"]
    split = report["splits"]["all"]
    assert split["images"] == 3 and split["masks"] == {} and split["sizes"] == {"8x9": 3}


def test_inspect_names_low_contrast_images(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from localdisc.cli import app

    ramp = np.tile(np.linspace(0, 1, 40), (30, 1))
    save(tmp_path / "pool" / "normal.png", (255 * ramp).astype(np.uint8))
    # Like JSRT's washed-out 8-bit conversions: all the anatomy in grey levels 237-255.
    save(tmp_path / "pool" / "washed_out.png", (237 + 18 * ramp).astype(np.uint8))
    report = inspect_dataset("folder", tmp_path / "pool", progress=False)
    assert report["splits"]["all"]["low_contrast"] == ["washed_out"]
    result = CliRunner().invoke(app, ["datasets", "inspect", "folder", str(tmp_path / "pool")])
    assert result.exit_code == 0, result.output
    assert "low contrast in all (1: " in result.output and "washed_out" in result.output


def test_inspect_names_12_bit_data_in_16_bit_files_as_dim_not_low_contrast(tmp_path: Path) -> None:
    # Full-contrast 12-bit radiographs in 16-bit PNGs read as 0 to 1/16: inspect called them all
    # "low contrast", never the cause that pretrain, finetune and predict name (reviewer).
    ramp = np.tile(np.linspace(0, 4095, 40), (30, 1)).astype(np.uint16)
    for i in range(2):
        (tmp_path / "pool").mkdir(exist_ok=True)
        Image.fromarray(ramp).save(tmp_path / "pool" / f"x{i}.png")
    save(tmp_path / "pool" / "washed_out.png", (237 + 18 * ramp / 4095).astype(np.uint8))
    report = inspect_dataset("folder", tmp_path / "pool", progress=False)
    assert report["splits"]["all"]["low_contrast"] == ["washed_out"]
    assert (
        "2 image(s) use under 1/8 of the intensity range (x0, x1): the network sees them near "
        "black; rescale them to the full range (12-bit data in a 16-bit file reads so)"
    ) in report["notes"]


def test_inspect_says_a_label_map_is_trained_as_one_foreground(tmp_path: Path) -> None:
    labels = np.zeros((30, 40), np.uint8)
    labels[2:10, 2:10], labels[15:25, 20:30] = 1, 2
    save(tmp_path / "set" / "images" / "a.png", np.full((30, 40), 90, np.uint8))
    save(tmp_path / "set" / "masks" / "a.png", labels)
    notes = inspect_dataset("folder", tmp_path / "set", progress=False)["notes"]
    assert [n for n in notes if "a label map of 2 labels (1, 2)" in n]


def test_inspect_names_a_dim_fundus_photograph_by_its_fov_not_its_black_border(
    tmp_path: Path,
) -> None:
    # Only a radiograph (no black border) was tested: measuring the span over the whole image
    # (the border's black) or from darkest to brightest (a few specular reflexes) hid a dim
    # fundus photograph and passed (reviewer's mutations).
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:60, :60]
    disc = (yy - 30) ** 2 + (xx - 30) ** 2 <= 27**2
    dim = np.zeros((60, 60, 3), np.uint8)
    dim[disc] = (100, 60, 30) + rng.integers(0, 12, (int(disc.sum()), 3))
    dim[28:30, 20:24] = 255  # specular reflexes: 8 of 2,289 FOV pixels, under 1 %
    normal = np.zeros_like(dim)
    normal[disc] = (np.linspace(40, 230, int(disc.sum()))[:, None] * (1, 0.6, 0.3)).astype(int)
    save(tmp_path / "pool" / "dim.png", dim)
    save(tmp_path / "pool" / "normal.png", normal)
    split = inspect_dataset("folder", tmp_path / "pool", progress=False)["splits"]["all"]
    assert split["fov"] == 2 and split["coverage_of"] == "FOV"  # the disc, found by threshold
    assert 0.5 < split["fov_fraction"] < 0.8
    assert split["low_contrast"] == ["dim"]


def test_inspect_stops_at_or_skips_an_unreadable_file(tmp_path: Path) -> None:
    root = make_drive(tmp_path / "DRIVE")
    bad = root / "test" / "2nd_manual" / "02_manual2.gif"
    bad.write_bytes(b"GIF89a truncated")
    with pytest.raises(ImageReadError, match="02_manual2.gif"):
        inspect_dataset("drive", root, progress=False)
    report = inspect_dataset("drive", root, skip_bad=True, progress=True)
    assert report["splits"]["test"]["images"] == 1
    assert [s["path"] for s in report["skipped"]] == [str(bad)]
    assert report["skipped"][0]["reason"]


def test_write_preview_png(tmp_path: Path) -> None:
    root = make_drive(tmp_path / "DRIVE")
    out = write_preview("drive", tmp_path / "out" / "preview.png", n=3, root=root, split="test")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 100 and im.height > 100
        pixels = np.asarray(im.convert("RGB"))
    # The green vessel overlay is drawn.
    assert ((pixels[..., 1] > 150) & (pixels[..., 0] < 150)).any()
    ds = load_dataset("drive", root, "train")
    assert write_preview(ds, tmp_path / "train.png", n=8).stat().st_size > 0


# -- real data (skipped when /work/shared/data is absent) -------------------------------------


def test_inspect_real_drive() -> None:
    report = inspect_dataset("drive", shared("DRIVE"), progress=False)
    for split in ("train", "test"):
        s = report["splits"][split]
        assert s["images"] == 20 and s["masks"]["vessels"] == 20 and s["fov"] == 20
        assert s["fov_source"] == "official mask files" and s["sizes"] == {"584x565": 20}
        assert 0.08 < s["coverage"]["vessels"] < 0.18
    assert report["splits"]["test"]["masks"]["vessels_2nd"] == 20


def test_inspect_real_stare() -> None:
    report = inspect_dataset("stare", shared("STARE"), progress=False)
    splits = report["splits"]
    assert splits["train"]["images"] == splits["test"]["images"] == 10
    assert splits["train"]["masks"]["vessels"] + splits["test"]["masks"]["vessels"] == 20
    for s in splits.values():
        assert s["fov_source"] == "derived from the image"
        assert 0.5 < s["fov_fraction"] < 0.9


def test_write_preview_draws_file_names_with_dollar_signs(tmp_path: Path) -> None:
    # Matplotlib reads text between two $ as mathtext ("Double subscript" here).
    save(tmp_path / "pool" / "scan_$a_b_c$.png", np.full((8, 9, 3), 90, np.uint8))
    out = write_preview("folder", tmp_path / "preview.png", root=tmp_path / "pool")
    assert out.stat().st_size > 0
