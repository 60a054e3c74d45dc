"""Tests for the DRIVE optic-disc annotations (package data ``drive_optic_disc.json``).

The JSON is checked on its own; with the real DRIVE images present, every point must lie in
(or just outside) the image's field of view and match the rule in
``benchmarks/drive_optic_disc.py`` except for the images listed as manually corrected.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from functools import cache
from importlib import resources
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from scipy import ndimage as ndi

from helpers import shared

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "drive_optic_disc.py"
NAMES = [f"{i}_training" for i in range(21, 41)] + [f"{i:02d}_test" for i in range(1, 21)]
WIDTH, HEIGHT = 565, 584


@cache
def annotations() -> dict:
    """The packaged JSON document."""
    text = resources.files("localdisc.data").joinpath("drive_optic_disc.json").read_text("utf-8")
    return json.loads(text)


@cache
def script() -> ModuleType:
    """``benchmarks/drive_optic_disc.py`` loaded as a module (it is not part of the package)."""
    spec = importlib.util.spec_from_file_location("drive_optic_disc_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_json_has_every_drive_image_inside_the_frame() -> None:
    doc = annotations()
    assert {"description", "coordinates", "landmarks"} <= set(doc)
    assert "x (column), y (row)" in doc["coordinates"]
    landmarks = doc["landmarks"]
    assert sorted(landmarks) == sorted(NAMES)
    for name in NAMES:
        x, y = landmarks[name]["optic_disc"]
        assert 0 <= x < WIDTH and 0 <= y < HEIGHT, name
        assert round(x, 1) == x and round(y, 1) == y, name


def test_manual_corrections_are_declared() -> None:
    """Hand corrections in the script are exactly those listed in the JSON and its text."""
    doc = annotations()
    manual = script().MANUAL
    assert sorted(manual) == doc["manually_corrected"]
    assert set(manual) <= set(NAMES)
    for name, (x, y) in manual.items():
        assert f"{name} (" in doc["description"]
        assert doc["landmarks"][name]["optic_disc"] == [round(x, 1), round(y, 1)]
    assert "Manually corrected" in doc["description"] or not manual


def test_rule_on_a_synthetic_disc() -> None:
    """A bright disc where thick vessels converge is found, and off-disc lesions are not."""
    rows, cols = np.mgrid[:HEIGHT, :WIDTH]
    fov = (rows - 292) ** 2 + (cols - 282) ** 2 <= 270**2
    image = np.full((HEIGHT, WIDTH, 3), 0.4)
    disc = (rows - 280) ** 2 + (cols - 450) ** 2 <= 38**2
    image[disc] = 0.8
    lesion = (rows - 400) ** 2 + (cols - 150) ** 2 <= 25**2  # bright, but no vessels
    image[lesion] = 0.9
    vessels = np.zeros((HEIGHT, WIDTH), bool)
    for angle in np.linspace(0.5, 5.8, 6):  # thick vessels leaving the disc centre
        r = np.arange(0, 200)
        vy = np.clip((280 + r * np.sin(angle)).astype(int), 0, HEIGHT - 1)
        vx = np.clip((450 + r * np.cos(angle)).astype(int), 0, WIDTH - 1)
        vessels[vy, vx] = True
    vessels = ndi.binary_dilation(vessels, iterations=3) & fov
    image[vessels] = 0.2
    image[~fov] = 0.0
    x, y = script().optic_disc_centre(image.astype(np.float32), vessels, fov)
    assert abs(x - 450) < 8 and abs(y - 280) < 8


@pytest.fixture(scope="module")
def drive_samples() -> list:
    """All 40 DRIVE samples (training then test), or skip when the data set is absent."""
    root = shared("DRIVE")
    from localdisc.data.datasets import load_dataset

    samples = []
    for split in ("train", "test"):
        ds = load_dataset("drive", root, split=split)
        samples += [ds[i] for i in range(len(ds))]
    return samples


def test_points_lie_in_the_field_of_view(drive_samples: list) -> None:
    landmarks = annotations()["landmarks"]
    assert sorted(s.name for s in drive_samples) == sorted(NAMES)
    for sample in drive_samples:
        x, y = landmarks[sample.name]["optic_disc"]
        near = ndi.binary_dilation(sample.fov, iterations=30)
        assert near[int(round(y)), int(round(x))], sample.name


def test_json_matches_the_rule(drive_samples: list) -> None:
    doc = annotations()
    module = script()
    manual = set(doc["manually_corrected"])
    for sample in drive_samples:
        if sample.name in manual:
            continue
        x, y = module.optic_disc_centre(sample.image, sample.masks["vessels"], sample.fov)
        ax, ay = doc["landmarks"][sample.name]["optic_disc"]
        assert abs(x - ax) <= 0.5 and abs(y - ay) <= 0.5, (sample.name, (x, y), (ax, ay))
