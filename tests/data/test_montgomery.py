"""Tests for the Montgomery County reader: its official layout faked in tmp_path with tiny PNGs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import save
from localdisc.cli import app
from localdisc.data.datasets import (
    DATASETS,
    MontgomeryDataset,
    load_data_spec,
    load_dataset,
    parse_data_spec,
    pool_image_paths,
    split_target,
)
from localdisc.errors import DatasetError

#: (file name, height, width): portrait and landscape, as the 4020x4892 / 4892x4020 originals.
CASES = (
    ("MCUCXR_0001_0.png", 40, 32),
    ("MCUCXR_0002_0.png", 32, 40),
    ("MCUCXR_0104_1.png", 40, 32),
)


def lung_box(h: int, w: int, side: str) -> np.ndarray:
    """A 0/255 mask of the image's size: leftMask in the left half, rightMask in the right."""
    out = np.zeros((h, w), np.uint8)
    x0, x1 = (w // 8, w // 2 - 1) if side == "leftMask" else (w // 2 + 1, w - w // 8)
    out[h // 5 : h - h // 5, x0:x1] = 255
    return out


def make_montgomery(parent: Path, *, masks: bool = True) -> Path:
    """``parent/MontgomerySet`` in the official layout, with a clinical reading per X-ray."""
    base = parent / "MontgomerySet"
    rng = np.random.default_rng(0)
    for name, h, w in CASES:
        save(base / "CXR_png" / name, rng.integers(0, 256, (h, w), np.uint8))
        readings = base / "ClinicalReadings" / name.replace(".png", ".txt")
        readings.parent.mkdir(parents=True, exist_ok=True)
        readings.write_text("Patient's Sex: F\nPatient's Age: 040Y\nnormal\n")
        if masks:
            for side in ("leftMask", "rightMask"):
                save(base / "ManualMask" / side / name, lung_box(h, w, side))
    return base


def test_montgomery_lists_items_and_unions_lung_masks(tmp_path: Path) -> None:
    base = make_montgomery(tmp_path / "data")
    # ROOT may be the MontgomerySet folder or a folder above it.
    for root in (base, tmp_path / "data", tmp_path):
        ds = load_dataset("montgomery", root)
        assert ds.split == "all" and ds.modality == "xray" and ds.default_target == "lung"
        assert [item.name for item in ds.items] == [
            "MCUCXR_0001_0",
            "MCUCXR_0002_0",
            "MCUCXR_0104_1",
        ]
        assert ds.targets == ("lung", "left_lung", "right_lung") and ds.missing_labels == {}
    for (name, h, w), sample in zip(CASES, ds, strict=True):
        left, right = (lung_box(h, w, side) > 127 for side in ("leftMask", "rightMask"))
        assert sample.image.shape == (h, w, 1)
        assert np.array_equal(sample.masks["left_lung"], left)
        assert np.array_equal(sample.masks["right_lung"], right)
        assert np.array_equal(sample.masks["lung"], left | right)
        assert sample.fov.all() and sample.image_path == base / "CXR_png" / name
    assert ds.fov_source == "whole image"
    with pytest.raises(DatasetError, match=r"montgomery has no split 'test'; its splits are: all"):
        load_dataset("montgomery", base, "test")


def test_montgomery_mask_of_another_size_is_an_error(tmp_path: Path) -> None:
    base = make_montgomery(tmp_path)
    mask = base / "ManualMask" / "leftMask" / "MCUCXR_0002_0.png"
    save(mask, np.zeros((8, 8), np.uint8))
    ds = load_dataset("montgomery", tmp_path)
    with pytest.raises(DatasetError, match=rf"{mask}: mask is 8x8 but its image .* is 40x32"):
        ds[1]


def test_montgomery_without_manual_mask_is_unlabelled(tmp_path: Path) -> None:
    base = make_montgomery(tmp_path, masks=False)
    ds = load_dataset("montgomery", base)
    assert len(ds) == 3 and ds.targets == () and ds.default_target is None
    assert ds[0].masks == {} and ds[0].image.shape == (40, 32, 1)
    assert set(ds.missing_labels) == {"lung", "left_lung", "right_lung"}
    assert ds.missing_labels["lung"] == (
        f"{base / 'ManualMask'}: no such folder, so the X-rays have no lung masks"
    )


def test_montgomery_missing_right_mask_is_a_problem_naming_the_file(tmp_path: Path) -> None:
    base = make_montgomery(tmp_path)
    missing = base / "ManualMask" / "rightMask" / "MCUCXR_0002_0.png"
    missing.unlink()
    image = base / "CXR_png" / "MCUCXR_0002_0.png"
    with pytest.raises(DatasetError) as caught:
        load_dataset("montgomery", base)
    assert str(caught.value) == f"{image}: its lung mask {missing} is missing"
    ds = load_dataset("montgomery", base, skip_bad=True)
    assert [item.name for item in ds.items] == ["MCUCXR_0001_0", "MCUCXR_0104_1"]
    assert ds.skipped == [(image, f"its lung mask {missing} is missing")]
    # Pre-training reads no mask: the X-ray stays in the pool.
    assert len(pool_image_paths(f"montgomery:{base}")) == 3
    # A missing side folder is a layout error, not a bad item.
    shutil.rmtree(base / "ManualMask" / "rightMask")
    with pytest.raises(DatasetError, match=r"rightMask: missing folder; expected the montgomery"):
        load_dataset("montgomery", base, skip_bad=True)


def test_montgomery_finds_one_set_folder(tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"no CXR_png folder with Montgomery X-rays"):
        load_dataset("montgomery", tmp_path)
    base = make_montgomery(tmp_path / "data")
    # A macOS zip's __MACOSX copy holds only "._" files: not a second set.
    save(tmp_path / "data" / "__MACOSX" / "MontgomerySet" / "CXR_png" / "._MCUCXR_0001_0.png",
         np.zeros((4, 4), np.uint8))  # fmt: skip
    assert len(load_dataset("montgomery", tmp_path)) == 3
    copy = tmp_path / "copy"
    shutil.copytree(base, copy / "MontgomerySet")
    with pytest.raises(DatasetError, match=r"2 CXR_png folders with Montgomery X-rays"):
        load_dataset("montgomery", tmp_path)
    assert len(load_dataset("montgomery", copy)) == 3


def test_montgomery_name_is_a_data_set(tmp_path: Path) -> None:
    base = make_montgomery(tmp_path)
    assert DATASETS["montgomery"] is MontgomeryDataset
    assert parse_data_spec(f"montgomery:{base}") == ("montgomery", base)
    assert parse_data_spec(f"Montgomery:{base}") == ("montgomery", base)
    assert split_target(f"montgomery:{base}:left_lung") == (f"montgomery:{base}", "left_lung")
    assert len(load_data_spec(f"montgomery:{base}")) == 3
    assert len(load_dataset("MONTGOMERY", base)) == 3


def test_montgomery_pretraining_pool_and_transfer_split(tmp_path: Path) -> None:
    from localdisc.data.pool import resolve_pool
    from localdisc.tasks.transfer import held_out_split, load_task_data

    base = make_montgomery(tmp_path)
    paths = pool_image_paths(f"montgomery:{base}")
    assert paths == [base / "CXR_png" / name for name, _, _ in CASES]
    pool, _ = resolve_pool([f"montgomery:{base}"], "xray", 8, log=lambda m: None)
    assert pool.shape == (3, 1, 8, 8)
    # No official test split: transfer holds out part of "all" by file name.
    train, test, target = load_task_data(f"montgomery:{base}", None)
    assert test is None and target == "lung" and len(train) == 3
    pool_idx, test_idx, unlabelled = held_out_split(train, target)
    assert len(test_idx) == 1 and len(pool_idx) == 2 and unlabelled == []


def test_montgomery_cli_list_and_inspect(tmp_path: Path) -> None:
    runner = CliRunner()
    listed = runner.invoke(app, ["datasets", "list"], env={"COLUMNS": "400"})
    assert listed.exit_code == 0, listed.output
    assert "montgomery" in listed.stdout and "Jaeger et al." in listed.stdout
    base = make_montgomery(tmp_path)
    result = runner.invoke(app, ["datasets", "inspect", f"montgomery:{base}", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["name"] == "montgomery" and report["modality"] == "xray"
    assert list(report["splits"]) == ["all"]
    split = report["splits"]["all"]
    assert split["images"] == 3 and split["masks"] == {"lung": 3, "left_lung": 3, "right_lung": 3}
    assert split["sizes"] == {"40x32": 2, "32x40": 1} and split["default_target"] == "lung"
