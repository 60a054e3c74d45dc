"""Edges of the label-free vessel pipeline (``localdisc.tasks.vessels``): masks at another
threshold than the network's yardstick, images with no FOV left once eroded, masks resized back
to an image's own size, and the last log line of a grouped run."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from localdisc.data.io import read_image, read_mask, write_png
from localdisc.data.synthetic import synthetic_fundus
from localdisc.errors import ImageReadError
from localdisc.models.segmenter import Segmenter
from localdisc.tasks import vessels
from localdisc.tasks.predict import SkippedImages
from localdisc.tasks.self_training import StudentConfig
from localdisc.tasks.vessels import predict_vessels, segment_vessels_self_trained

CONFIG = StudentConfig(size=64, crop=32, depth=2, width=4, steps=1, device="cpu")


def quiet(_: str) -> None:
    pass


def _eye(path, size=96, seed=0):
    write_png(path, np.round(synthetic_fundus(size, seed=seed).image * 255).astype(np.uint8))
    return path


def _small_fov(path, size=96, radius=7):
    """A photograph whose bright FOV, a disc of ``radius`` pixels, the 8-pixel erosion empties."""
    image = np.zeros((size, size, 3), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    image[np.hypot(yy - size // 2, xx - size // 2) <= radius] = (200, 110, 60)
    write_png(path, image)
    return path


def _network(folder, bias, max_size=768):
    """A saved network of this command whose probability is sigmoid(``bias``) everywhere in the
    FOV, with the yardstick and usual teacher disagreement a run saves beside it."""
    model = Segmenter(width=4, depth=2, size=64).eval()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(bias)
    settings = {"student": {"method": "line", "erode_fov": 8}, "speck_area": 0.0,
                "max_size": max_size, "images": [], "vessel_share": 0.12,
                "vessel_share_range": [0.1, 0.14], "teacher_disagreement": 0.3}  # fmt: skip
    model.save(folder, extra={"self_trained_vessels": settings})
    return folder


def _rows(folder):
    with (folder / "vessels.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def test_masks_at_another_threshold_are_not_judged_against_the_yardstick_measured_at_0_5(
    tmp_path,
):
    """The yardstick (vessel share) and usual teacher disagreement are measured on masks at 0.5:
    predict at another threshold named images unusual for the threshold alone."""
    photo = _eye(tmp_path / "eye.png")
    network = _network(tmp_path / "net", bias=1.0)  # 0.73 everywhere: the same mask at 0.5, 0.7
    said: list[str] = []
    predict_vessels(network, [photo], tmp_path / "at0.5", device="cpu", log=said.append)
    (row,) = _rows(tmp_path / "at0.5")
    assert row["ratio"] and row["unusual"] == "true" and row["disagreement_ratio"]
    assert any("unlike those taught on" in line for line in said)
    said.clear()
    predict_vessels(network, [photo], tmp_path / "at0.7", threshold=0.7, device="cpu",
                    log=said.append)  # fmt: skip
    (other,) = _rows(tmp_path / "at0.7")
    assert other["vessel_share"] == row["vessel_share"]  # the same mask
    assert (other["ratio"], other["unusual"], other["disagreement_ratio"]) == ("", "", "")
    assert not any("unlike those taught on" in line for line in said)
    why = [line for line in said if "threshold 0.7, not the 0.5" in line]
    assert len(why) == 1 and "no image is judged unusual" in why[0]


def test_an_image_with_no_fov_left_once_eroded_is_refused_before_anything_is_removed(tmp_path):
    """A photograph whose FOV the teacher's 8-pixel erosion empties raised a bare ValueError
    from the teacher, naming no image, after an earlier run's outputs were removed; --skip-bad
    could not skip it. It is now the image's ImageReadError, raised where images are checked."""
    photos = tmp_path / "photos"
    photos.mkdir()
    _eye(photos / "eye0.png")
    small = _small_fov(photos / "small.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "vessels.csv").write_text("image\nold\n")  # an earlier run's, which a run clears
    (out / "old_mask.png").write_bytes(b"earlier")
    for train_images in (2, 1):  # taught on, or only checked
        with pytest.raises(ImageReadError, match=r"small.png: its field of view .* empty") as e:
            segment_vessels_self_trained([photos], out, fraction=0.12, config=CONFIG,
                                         train_images=train_images, log=quiet)  # fmt: skip
        assert e.value.path == small
        assert (out / "vessels.csv").is_file() and (out / "old_mask.png").is_file()
    said: list[str] = []
    written = segment_vessels_self_trained([photos], out, fraction=0.12, config=CONFIG,
                                           skip_bad=True, log=said.append)  # fmt: skip
    assert [p.name for p in written] == ["eye0_mask.png"]
    skipped = json.loads((out / "config.json").read_text())["skipped"]
    assert [entry["name"] for entry in skipped] == ["small"]
    assert any(line.startswith(f"skipped {small}: its field of view") for line in said)
    # predict with such a network: the same error, skipped with skips that allow it.
    with pytest.raises(ImageReadError, match=r"small.png: its field of view"):
        predict_vessels(out, [photos], tmp_path / "p", device="cpu", log=quiet)
    written = predict_vessels(out, [photos], tmp_path / "q", device="cpu", log=quiet,
                              skips=SkippedImages(True, quiet))  # fmt: skip
    assert [p.name for p in written] == ["eye0_mask.png"]


def test_masks_resized_to_the_image_s_own_size_stay_inside_the_fov_written_with_them(tmp_path):
    """An image shrunk to max_size was segmented there, its map resized back bilinearly and its
    FOV by nearest neighbour: the mask and probability spilled past that FOV."""
    photo = _eye(tmp_path / "eye.png", size=200, seed=1)
    network = _network(tmp_path / "net", bias=50.0, max_size=128)  # "vessel" everywhere
    out = tmp_path / "out"
    predict_vessels(network, [photo], out, device="cpu", log=quiet)
    fov = vessels._written_fov(photo, 128, None)  # as scoring holds it
    mask = read_mask(out / "eye_mask.png")
    prob = read_image(out / "eye_prob.png")[0][..., 0]
    assert mask.shape == fov.shape == (200, 200)
    assert not (mask & ~fov).any()
    assert not prob[~fov].any()
    assert mask[fov].mean() > 0.99  # still marked inside it


def test_a_grouped_run_s_last_line_names_the_figures_it_wrote(tmp_path):
    """With teach_all, each group's figure is in group-K/figures; the last line named
    OUT/figures/overlay.png, which no grouped run writes."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for seed in range(3):
        _eye(photos / f"eye{seed}.png", size=64, seed=seed)
    out, said = tmp_path / "out", []
    segment_vessels_self_trained([photos], out, fraction=0.12, config=CONFIG, train_images=2,
                                 teach_all=True, log=said.append, progress=False)  # fmt: skip
    assert "; group-K/figures/overlay.png)" in said[-1]
    assert not (out / "figures").exists()
    for k in (1, 2):
        assert (out / f"group-{k}" / "figures" / "overlay.png").is_file()


@pytest.mark.parametrize("max_size", [768, 64])  # the 96-pixel photo segmented as it is, or shrunk
def test_masks_at_threshold_0_keep_to_the_fov(tmp_path, max_size):
    """At threshold 0 (check_threshold takes it) the probability's 0 outside the FOV passed
    ``prob >= 0``: an image segmented at its own size got a mask of the whole photograph, one
    shrunk to max_size a mask of its FOV (reviewer)."""
    photo = _eye(tmp_path / "eye.png")
    network = _network(tmp_path / "net", bias=-3.0, max_size=max_size)
    predict_vessels(network, [photo], tmp_path / "out", threshold=0.0, device="cpu", log=quiet)
    mask = read_mask(tmp_path / "out" / "eye_mask.png")
    np.testing.assert_array_equal(mask, vessels._written_fov(photo, max_size, None))
