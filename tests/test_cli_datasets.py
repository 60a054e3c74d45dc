"""Tests for ``localdisc datasets list`` and ``localdisc datasets inspect``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from helpers import save
from localdisc.cli import app
from localdisc.errors import DatasetError, LocaldiscError

runner = CliRunner()
H, W = 24, 20


def make_drive(root: Path) -> Path:
    image = np.zeros((H, W, 3), np.uint8)
    image[3:-3, 3:-3] = (170, 80, 30)
    vessels = np.zeros((H, W), np.uint8)
    vessels[:, 9:11] = 255
    for folder, kind, ident in (
        ("training", "training", "21"),
        ("test", "test", "01"),
        ("test", "test", "02"),
    ):
        save(root / folder / "images" / f"{ident}_{kind}.tif", image)
        save(root / folder / "1st_manual" / f"{ident}_manual1.gif", vessels)
        save(
            root / folder / "mask" / f"{ident}_{kind}_mask.gif", (image[..., 0] > 0) * np.uint8(255)
        )
    return root


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "localdisc", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=full_env,
    )


def test_list_names_every_data_set() -> None:
    result = runner.invoke(app, ["datasets", "list"])
    assert result.exit_code == 0, result.output
    for name in ("drive", "stare", "chase_db1", "hrf", "jsrt_scr", "folder", "synthetic_fundus"):
        assert name in result.stdout
    assert "drive.grand-challenge.org" in result.stdout.replace("\n", "").replace("│", "").replace(
        " ", ""
    )


def test_list_in_a_real_subprocess() -> None:
    result = run_cli("datasets", "list")
    assert result.returncode == 0, result.stderr
    assert "jsrt_scr" in result.stdout and "Staal et al." in result.stdout


def test_inspect_json_prints_only_json(tmp_path: Path) -> None:
    root = make_drive(tmp_path / "DRIVE")
    result = runner.invoke(app, ["datasets", "inspect", "drive", str(root), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["name"] == "drive" and report["modality"] == "fundus"
    assert report["splits"]["train"]["images"] == 1
    assert report["splits"]["test"]["masks"] == {"vessels": 2}
    assert report["splits"]["train"]["coverage"]["vessels"] == pytest.approx(2 / 14, abs=1e-3)


def test_inspect_tables_spec_and_preview(tmp_path: Path) -> None:
    root = make_drive(tmp_path / "DRIVE")
    preview = tmp_path / "preview.png"
    result = runner.invoke(
        app,
        ["datasets", "inspect", f"drive:{root}", "--preview", str(preview)],
        env={"COLUMNS": "400"},
    )
    assert result.exit_code == 0, result.output
    assert "vessels: 1" in result.stdout and "24x20: 1" in result.stdout
    assert "sizes (HxW)" in result.stdout  # 24 high, 20 wide: not the usual W x H
    # The vessels' share is of the FOV (the image less a 3-pixel border), not of the image.
    assert "coverage (of FOV)" in result.stdout
    with Image.open(preview) as im:
        assert im.format == "PNG"


def test_inspect_folder_path_as_name(tmp_path: Path) -> None:
    for i in range(2):
        save(tmp_path / "pool" / "images" / f"{i}.png", np.full((6, 7), 100, np.uint8))
    result = runner.invoke(app, ["datasets", "inspect", str(tmp_path / "pool"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["name"] == "folder" and report["modality"] == "xray"
    assert report["splits"]["all"]["images"] == 2


def test_inspect_skip_bad_lists_the_file(tmp_path: Path) -> None:
    root = make_drive(tmp_path / "DRIVE")
    (root / "test" / "1st_manual" / "01_manual1.gif").unlink()
    result = runner.invoke(app, ["datasets", "inspect", "drive", str(root)])
    assert isinstance(result.exception, DatasetError)
    assert "01_manual1" in str(result.exception)
    result = runner.invoke(app, ["datasets", "inspect", "drive", str(root), "--skip-bad", "--json"])
    # Exit 1: a script tells a download with bad files from a clean one; the report is whole.
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["splits"]["test"]["images"] == 1
    assert report["skipped"][0]["path"].endswith("01_test.tif")
    assert "01_manual1" in report["skipped"][0]["reason"]
    assert "1 bad item(s) skipped; exit code 1" in result.stderr
    tables = runner.invoke(
        app, ["datasets", "inspect", "drive", str(root), "--skip-bad"], env={"COLUMNS": "400"}
    )
    assert tables.exit_code == 1 and "01_test.tif" in tables.stdout
    # Nothing bad: exit 0, with or without --skip-bad.
    clean = make_drive(tmp_path / "clean")
    result = runner.invoke(
        app, ["datasets", "inspect", "drive", str(clean), "--skip-bad", "--json"]
    )
    assert result.exit_code == 0 and json.loads(result.stdout)["skipped"] == []


def test_an_unreadable_image_that_stops_inspect_or_pretrain_names_skip_bad(
    tmp_path: Path,
) -> None:
    # Both commands have --skip-bad; an unreadable image stopped them without a word of it.
    pool = tmp_path / "pool"
    for i in range(3):
        save(pool / f"{i}.png", np.full((H, W, 3), 60 * i + 40, np.uint8))
    (pool / "9.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a PNG")
    inspect = ["datasets", "inspect", "folder", str(pool)]
    pretrain = ["pretrain", "--data", str(pool), "--out", str(tmp_path / "run"), "--modality",
                "fundus", "--stage1-steps", "1", "--stage2-steps", "0", "--size", "16"]  # fmt: skip
    for args in (inspect, pretrain):
        result = runner.invoke(app, args)
        assert "9.png" in str(result.exception), result.output
        assert str(result.exception).endswith("; --skip-bad skips unreadable images")
    assert runner.invoke(app, [*inspect, "--skip-bad"]).exit_code == 1  # skipped, as it says


def test_inspect_help_documents_the_exit_codes() -> None:
    result = runner.invoke(app, ["datasets", "inspect", "--help"])
    text = " ".join(result.stdout.split())  # as wrapped at any width
    assert "the exit code is 1 if any item was skipped" in text
    assert "Exit codes: 0 every item read; 1 with --skip-bad, some items were bad" in text


def test_inspect_jsrt_without_scr_masks(tmp_path: Path) -> None:
    from localdisc.data.datasets import paper_splits

    table = paper_splits()["SCR"]
    for stem in table["train"] + table["test"]:
        save(tmp_path / "JSRT" / "images" / f"{stem}.png", np.full((16, 16), 9, np.uint8))
    result = runner.invoke(
        app, ["datasets", "inspect", f"jsrt_scr:{tmp_path}"], env={"COLUMNS": "400"}
    )
    assert result.exit_code == 0, result.output
    # One line for the seven targets that share the reason, each split named once.
    lines = [line for line in result.stdout.splitlines() if line.startswith("no masks in")]
    assert lines == [
        f"no masks in train, test: {tmp_path}: no SCR masks found (masks/<organ>/JPCLN001.gif), "
        "so the images have no organ masks"
    ]


def test_inspect_says_why_a_split_has_no_masks(tmp_path: Path) -> None:
    # DRIVE as grand-challenge.org ships it has no test/1st_manual: the table showed "-" only.
    root = make_drive(tmp_path / "DRIVE")
    for file in (root / "test" / "1st_manual").iterdir():
        file.unlink()
    (root / "test" / "1st_manual").rmdir()
    result = runner.invoke(app, ["datasets", "inspect", f"drive:{root}"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert f"no masks in test: {root / 'test' / '1st_manual'}" in result.stdout


def test_bad_root_is_one_error_line_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_drive"
    result = run_cli("datasets", "inspect", "drive", str(missing))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "error:" in result.stderr and "no_such_drive" in result.stderr
    assert "training/images" in result.stderr.replace("\n", "")
    result = run_cli("datasets", "inspect", "nosuchset", str(tmp_path))
    assert result.returncode == 2 and "unknown data set 'nosuchset'" in result.stderr


@pytest.mark.parametrize("where", ["folder", "under a file", "not a png", "in the data set"])
def test_a_bad_preview_path_is_refused_before_the_data_set_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """--preview to a folder, or under a file, failed only after every image was read, with an
    error that did not name --preview."""
    import localdisc.data.inspect

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the data set was read before --preview was checked")

    monkeypatch.setattr(localdisc.data.inspect, "inspect_dataset", no_work)
    (tmp_path / "figs").mkdir()
    (tmp_path / "afile.txt").write_text("x")
    preview = {
        "folder": tmp_path / "figs",
        "under a file": tmp_path / "afile.txt" / "sub" / "p.png",
        "not a png": tmp_path / "p.jpg",  # PNG bytes were written into it
        # It overwrote an image of the data set (reviewer).
        "in the data set": tmp_path / "DRIVE" / "training" / "images" / "21_training.png",
    }[where]
    root = make_drive(tmp_path / "DRIVE")
    result = runner.invoke(
        app, ["datasets", "inspect", "drive", str(root), "--preview", str(preview)]
    )
    assert isinstance(result.exception, LocaldiscError), result.output
    expected = {
        "folder": f"--preview {preview} is a folder; give the preview's PNG file name",
        "under a file": f"--preview {preview}: {tmp_path / 'afile.txt'} is a file, not a folder",
        "not a png": f"--preview {preview}: the preview is a PNG; name it .png",
        "in the data set": f"--preview {preview} lies in the data set's folder {root}; write it "
        "elsewhere",
    }[where]
    assert str(result.exception) == expected


def test_inspect_names_the_official_images_missing(tmp_path: Path) -> None:
    root = make_drive(tmp_path / "DRIVE")  # 21_training, 01_test and 02_test of DRIVE's 40
    result = runner.invoke(app, ["datasets", "inspect", "drive", str(root)],
                           env={"COLUMNS": "400"})  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "test: 18 image(s) of the official split missing: 03_test.tif, 04_test.tif" in (
        result.stdout
    )
    report = json.loads(
        runner.invoke(app, ["datasets", "inspect", "drive", str(root), "--json"]).stdout
    )
    assert len(report["splits"]["train"]["missing_images"]) == 19
