"""`localdisc shape-guided vessels`: masks of every image at its own size, a network saved for
`localdisc predict`, and a label-free order to review the masks in."""

from __future__ import annotations

import csv
import json
import re
import shutil
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from localdisc.cli import app
from localdisc.data.io import read_image, write_png
from localdisc.data.preprocess import fov_from_image
from localdisc.data.synthetic import synthetic_fundus
from localdisc.errors import LocaldiscError
from localdisc.models.segmenter import Segmenter
from localdisc.tasks import vessels
from localdisc.tasks.predict import predict_images
from localdisc.tasks.self_training import StudentConfig
from localdisc.tasks.vesselness import remove_specks, vesselness
from localdisc.tasks.vessels import (
    UNUSUAL_SHARE,
    _name_first_to_review,
    _name_unusual,
    _saved_yardstick,
    _write_share_table,
    is_unusual,
    segment_vessels_self_trained,
    share_yardstick,
    teacher_disagreement,
)


def quiet(_: str) -> None:
    pass


def _photos(folder, sizes=(96, 160)):
    folder.mkdir()
    for seed, size in enumerate(sizes):
        eye = synthetic_fundus(size, seed=seed)
        write_png(folder / f"eye{seed}.png", np.round(eye.image * 255).astype(np.uint8))
    return folder


def test_segment_vessels_says_when_a_photograph_carries_an_exif_orientation(tmp_path):
    from PIL import Image

    photos = _photos(tmp_path / "photos", sizes=(64,))
    image = Image.open(photos / "eye0.png")
    exif = image.getexif()
    exif[274] = 6
    image.save(photos / "eye0.png", exif=exif)
    config = StudentConfig(size=64, crop=32, depth=2, width=4, steps=1, painted=1, device="cpu")
    logs: list[str] = []
    segment_vessels_self_trained([photos], tmp_path / "out", fraction=0.12, config=config,
                                 max_size=64, log=logs.append)  # fmt: skip
    assert any(line.startswith("note: 1 image(s) carry an EXIF orientation") and
               "masks are written in the pixels as stored" in line for line in logs)  # fmt: skip


def test_segment_vessels_self_trained_writes_masks_at_each_image_s_own_size(tmp_path, capsys):
    photos = _photos(tmp_path / "photos")
    out = tmp_path / "out"
    config = StudentConfig(size=64, crop=32, depth=2, width=4, steps=2, painted=1, device="cpu")
    written = segment_vessels_self_trained([photos], out, fraction=0.12, config=config,
                                           max_size=128, log=quiet)  # fmt: skip
    shown = capsys.readouterr().out  # progress bars of the training and of the segmentation
    assert "student: step" in shown and "2/2" in shown and "segment" in shown
    assert [p.name for p in written] == ["eye0_mask.png", "eye1_mask.png"]
    for seed, size in enumerate((96, 160)):  # the second was shrunk to 128 to be segmented
        prob = read_image(out / f"eye{seed}_prob.png")[0][..., 0]
        mask = read_image(out / f"eye{seed}_mask.png")[0][..., 0] > 0.5
        assert prob.shape == mask.shape == (size, size)
        # The mask is the probability's 0.5 level without its specks: a part of it.
        assert not (mask & (prob < 0.49)).any()
    assert (out / "figures" / "overlay.png").is_file()
    # The network is saved with what taught it, and segments further images.
    saved = Segmenter.from_pretrained(out)
    assert saved.config.size == 64
    saved = json.loads((out / "config.json").read_text())
    settings = saved["self_trained_vessels"]
    assert settings["fraction"] == 0.12 and settings["student"]["painted"] == 1
    assert saved["environment"]["device"] == "cpu"  # where and when: see test_provenance
    # `localdisc predict` on its folder segments as the command did: the same files.
    again = predict_images(out, [photos], tmp_path / "again", device="cpu")
    assert [p.name for p in again] == ["eye0_mask.png", "eye1_mask.png"]
    for name in ("eye0_prob.png", "eye0_mask.png", "eye1_prob.png", "eye1_mask.png"):
        np.testing.assert_array_equal(read_image(tmp_path / "again" / name)[0],
                                      read_image(out / name)[0])  # fmt: skip


def test_segment_vessels_self_trained_drops_specks_from_the_mask(tmp_path, monkeypatch):
    photos = _photos(tmp_path / "photos", sizes=(96,))
    config = StudentConfig(size=64, crop=32, depth=2, width=4, steps=1, device="cpu")
    noisy = np.random.default_rng(0).random((96, 96)).astype(np.float32)
    # 0 outside the FOV, as student_probability
    monkeypatch.setattr(vessels, "student_probability", lambda model, image, fov: noisy * fov)
    for area, name in ((0.0, "kept"), (0.05, "dropped")):
        segment_vessels_self_trained([photos], tmp_path / name, fraction=0.12, config=config,
                                     speck_area=area, log=quiet)  # fmt: skip
    kept = read_image(tmp_path / "kept" / "eye0_mask.png")[0][..., 0] > 0.5
    dropped = read_image(tmp_path / "dropped" / "eye0_mask.png")[0][..., 0] > 0.5
    fov = fov_from_image(read_image(photos / "eye0.png")[0])
    np.testing.assert_array_equal(kept, (noisy >= 0.5) & fov)
    np.testing.assert_array_equal(dropped, remove_specks(kept, fov, 0.05))
    assert 0 < dropped.sum() < kept.sum()
    # Its network segments further photographs with the specks it dropped dropped, too.
    vessels.predict_vessels(tmp_path / "dropped", [photos], tmp_path / "again", device="cpu",
                            log=quiet)  # fmt: skip
    np.testing.assert_array_equal(read_image(tmp_path / "again" / "eye0_mask.png")[0][..., 0] > 0.5,
                                  dropped)  # fmt: skip


def test_masks_scores_the_mask_as_written_without_its_specks(tmp_path, monkeypatch):
    """The binary scores are those of NAME_mask.png as written, specks dropped, not of the
    probability at 0.5 (which holds the specks)."""
    photos = _photos(tmp_path / "photos", sizes=(96,))
    truth = _tracings(photos, tmp_path / "truth", ["eye0"])
    config = StudentConfig(size=64, crop=32, depth=2, width=4, steps=1, device="cpu")
    noisy = np.random.default_rng(0).random((96, 96)).astype(np.float32)
    monkeypatch.setattr(vessels, "student_probability", lambda model, image, fov: noisy * fov)
    out = tmp_path / "out"
    segment_vessels_self_trained([photos], out, fraction=0.12, config=config, speck_area=0.05,
                                 masks=truth, log=quiet, progress=False)  # fmt: skip
    mask = read_image(out / "eye0_mask.png")[0][..., 0] > 0.5
    prob = read_image(out / "eye0_prob.png")[0][..., 0]
    assert 0 < mask.sum() < (prob >= 0.5).sum()  # specks were dropped
    row = json.loads((out / "metrics.json").read_text())["per_image"][0]
    assert row.pop("image") == "eye0"
    expected = _scores_by_hand(out, photos / "eye0.png", truth / "eye0.png")
    assert row == pytest.approx(expected, nan_ok=True)


def test_the_vessels_command_passes_its_settings_and_refuses_bad_ones(tmp_path, monkeypatch):
    photos = _photos(tmp_path / "photos", sizes=(64,))
    seen = {}

    def fake(images, out, **kwargs):
        seen.update(kwargs, images=images, out=out)
        return []

    monkeypatch.setattr(vessels, "segment_vessels_self_trained", fake)
    result = CliRunner().invoke(app, [
        "shape-guided", "vessels", "--images", str(photos), "--out", str(tmp_path / "o"),
        "--teacher", "sato", "--painted", "0", "--steps", "30", "--fraction", "0.1",
        "--device", "cpu",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert seen["config"] == StudentConfig(method="sato", painted=0, steps=30, device="cpu")
    assert seen["fraction"] == 0.1 and seen["prior"] == "simulated:vessels"
    assert seen["speck_area"] == 6e-4 and seen["images"] == [photos]
    assert seen["fov_masks"] is None and seen["train_images"] == 50
    assert seen["reteach_unusual"] is False and seen["teach_all"] is False
    assert seen["masks"] is None
    result = CliRunner().invoke(app, [
        "shape-guided", "vessels", "--images", str(photos), "--out", str(tmp_path / "o"),
        "--fov-masks", str(tmp_path / "masks"), "--reteach-unusual", "--teach-all",
        "--masks", str(tmp_path / "truth"),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert seen["fov_masks"] == tmp_path / "masks" and seen["reteach_unusual"] is True
    assert seen["masks"] == tmp_path / "truth"
    assert seen["teach_all"] is True
    result = CliRunner().invoke(app, [
        "shape-guided", "vessels", "--images", str(photos), "--out", str(tmp_path / "o"),
        "--teacher", "hessian",
    ])  # fmt: skip
    assert isinstance(result.exception, LocaldiscError)
    assert "unknown vesselness method" in str(result.exception)


def test_segment_vessels_self_trained_refuses_bad_input_before_training(tmp_path):
    config = StudentConfig(size=64, crop=32, depth=2, width=4, steps=1, device="cpu")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(LocaldiscError, match="notes.txt: not an image"):
        segment_vessels_self_trained([tmp_path / "notes.txt"], tmp_path / "o", config=config)
    photos = _photos(tmp_path / "photos", sizes=(64,))
    for kwargs, message in (({"speck_area": 1.0}, "speck_area"), ({"fraction": 0.0}, "fraction"),
                            ({"prior": str(tmp_path / "none")}, "none")):  # fmt: skip
        with pytest.raises(LocaldiscError, match=message):
            segment_vessels_self_trained([photos], tmp_path / "o", config=config, log=quiet,
                                         **kwargs)  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_segment_vessels_self_trained_keeps_to_given_fov_masks(tmp_path):
    photos = _photos(tmp_path / "photos")
    masks = tmp_path / "masks"
    masks.mkdir()
    discs = {}
    for seed, size in enumerate((96, 160)):  # a FOV far smaller than the eye's own
        yy, xx = np.mgrid[:size, :size]
        discs[seed] = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2
        write_png(masks / f"eye{seed}_mask.png", discs[seed].astype(np.uint8) * 255)
    config = StudentConfig(size=64, crop=32, depth=2, width=4, steps=2, device="cpu")
    out = tmp_path / "out"
    segment_vessels_self_trained([photos], out, fraction=0.12, config=config, max_size=128,
                                 fov_masks=masks, log=quiet)  # fmt: skip
    for seed in (0, 1):  # eye1, shrunk to max_size to be segmented, too: the given FOV as it is
        prob = read_image(out / f"eye{seed}_prob.png")[0][..., 0]
        mask = read_image(out / f"eye{seed}_mask.png")[0][..., 0] > 0.5
        assert prob[~discs[seed]].max() == 0 and prob[discs[seed]].max() > 0
        assert not mask[~discs[seed]].any()
    settings = json.loads((out / "config.json").read_text())["self_trained_vessels"]
    assert settings["fov_masks"] == str(masks)
    # A mask of another size, or an empty one, is refused before any training.
    write_png(masks / "eye1_mask.png", np.full((100, 100), 255, np.uint8))
    with pytest.raises(LocaldiscError, match=r"eye1_mask.png: FOV mask is 100x100, .*160x160"):
        segment_vessels_self_trained([photos], tmp_path / "o", fraction=0.12, config=config,
                                     fov_masks=masks, log=quiet)  # fmt: skip
    write_png(masks / "eye1_mask.png", np.zeros((160, 160), np.uint8))
    with pytest.raises(LocaldiscError, match="eye1_mask.png: the FOV mask is empty"):
        segment_vessels_self_trained([photos], tmp_path / "o", fraction=0.12, config=config,
                                     fov_masks=masks, log=quiet)  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_segment_vessels_self_trained_teaches_on_a_draw_and_segments_all(tmp_path):
    photos = _photos(tmp_path / "photos", sizes=(64, 64, 64))
    config = StudentConfig(size=64, crop=32, depth=2, width=4, steps=1, device="cpu")
    out = tmp_path / "out"
    written = segment_vessels_self_trained([photos], out, fraction=0.12, config=config,
                                           train_images=2, log=quiet)  # fmt: skip
    assert len(written) == 3
    settings = json.loads((out / "config.json").read_text())["self_trained_vessels"]
    taught = settings["images"]
    assert len(taught) == 2 and set(taught) < {str(p) for p in sorted(photos.iterdir())}
    # The yardstick for images not taught on: the median share of the FOV marked on those taught.
    shares = []
    for path in taught:
        mask = read_image(out / f"{Path(path).stem}_mask.png")[0][..., 0] > 0.5
        shares.append(mask[fov_from_image(read_image(path)[0])].mean())
    assert settings["vessel_share"] == pytest.approx(np.median(shares))
    assert settings["vessel_share_range"] == pytest.approx([min(shares), max(shares)])
    # vessels.csv lists every image: taught or not, its share and its ratio to the yardstick.
    rows = list(csv.DictReader((out / "vessels.csv").open()))
    assert [r["image"] for r in rows] == ["eye0", "eye1", "eye2"]
    assert {r["image"] for r in rows if r["taught"] == "true"} == {Path(t).stem for t in taught}
    for row in rows:
        mask = read_image(out / f"{row['image']}_mask.png")[0][..., 0] > 0.5
        share = mask[fov_from_image(read_image(photos / f"{row['image']}.png")[0])].mean()
        assert float(row["vessel_share"]) == pytest.approx(share, abs=1e-5)
    # And how far each mask strays from its teacher, against the median on the images taught on.
    strays = {}
    for row in rows:
        image = read_image(photos / f"{row['image']}.png")[0]
        fov = fov_from_image(image)
        mask = read_image(out / f"{row['image']}_mask.png")[0][..., 0] > 0.5
        score = vesselness(image, fov, method=config.method, erode_fov=config.erode_fov)
        strays[row["image"]] = teacher_disagreement(mask, score, fov, config.erode_fov)
        assert float(row["teacher_disagreement"]) == pytest.approx(strays[row["image"]], abs=1e-4)
    usual = np.median([strays[Path(t).stem] for t in taught])
    assert settings["teacher_disagreement"] == pytest.approx(usual)
    for row in rows:
        assert float(row["disagreement_ratio"]) == pytest.approx(strays[row["image"]] / usual, 1e-3)
    # `localdisc predict` lists them the same way, knowing which files were taught on.
    predict_images(out, [photos], tmp_path / "again", device="cpu")
    again = list(csv.DictReader((tmp_path / "again" / "vessels.csv").open()))
    assert [(r["image"], r["taught"], r["teacher_disagreement"], r["disagreement_ratio"])
            for r in again] == [(r["image"], r["taught"], r["teacher_disagreement"],
                                 r["disagreement_ratio"]) for r in rows]  # fmt: skip
    # An image that is not taught on is still read before training: a bad one stops it there.
    (photos / "eye9.png").write_bytes(b"not a png")
    with pytest.raises(LocaldiscError, match="eye9.png"):
        segment_vessels_self_trained([photos], tmp_path / "o", fraction=0.12, config=config,
                                     train_images=1, log=quiet)  # fmt: skip
    assert not (tmp_path / "o").exists()
    with pytest.raises(LocaldiscError, match="at least one image"):
        segment_vessels_self_trained([photos], tmp_path / "o", config=config, train_images=0)


def test_the_share_table_holds_images_not_taught_on_against_those_taught_on(tmp_path, monkeypatch):
    # One step marks nothing: with empty masks, a share of the whole image (its black frame
    # too) and a yardstick of every image, the untaught among them, passed the test above.
    photos = _photos(tmp_path / "photos", sizes=(64, 64, 64))
    config = StudentConfig(size=64, crop=32, depth=2, width=4, steps=1, device="cpu")
    out, calls = tmp_path / "out", []

    def marks(model, image, fov):  # the images in order: the untaught one marks 3 times more
        record = json.loads((out / "config.json").read_text())["self_trained_vessels"]
        name = f"eye{len(calls)}"
        calls.append(name)
        taught = name in {Path(p).stem for p in record["images"]}
        share = 0.1 + 0.02 * len(calls) if taught else 0.3
        columns = (np.arange(fov.shape[1]) % 20) < round(20 * share)
        return (fov & columns[None, :]).astype(np.float32)

    monkeypatch.setattr(vessels, "student_probability", marks)
    said: list[str] = []
    segment_vessels_self_trained([photos], out, fraction=0.12, config=config, train_images=2,
                                 log=said.append)  # fmt: skip
    assert calls == ["eye0", "eye1", "eye2"]
    rows = {r["image"]: r for r in csv.DictReader((out / "vessels.csv").open())}
    shares = {}
    for name in rows:
        mask = read_image(out / f"{name}_mask.png")[0][..., 0] > 0.5
        fov = fov_from_image(read_image(photos / f"{name}.png")[0])
        shares[name] = mask[fov].mean()  # of the FOV, not of the image and its frame
        assert float(rows[name]["vessel_share"]) == pytest.approx(shares[name], abs=1e-5)
    taught = [name for name, row in rows.items() if row["taught"] == "true"]
    (odd,) = set(rows) - set(taught)
    assert 0.25 < shares[odd] < 0.35 and all(0.1 < shares[t] < 0.2 for t in taught)
    settings = json.loads((out / "config.json").read_text())["self_trained_vessels"]
    assert settings["vessel_share"] == pytest.approx(np.median([shares[t] for t in taught]))
    assert rows[odd]["unusual"] == "true"
    assert any("masks to look at" in line and odd in line for line in said)


def test_unusual_images_can_get_a_run_of_their_own_whose_masks_replace_theirs(
    tmp_path, monkeypatch
):
    photos = _photos(tmp_path / "photos", sizes=(64, 64, 64))
    config = StudentConfig(size=64, crop=32, depth=2, width=4, steps=1, device="cpu")
    # One step marks nothing: a yardstick by hand, and every image beyond it.
    monkeypatch.setattr(vessels, "share_yardstick", lambda shares: (0.1, 0.1, 0.1))
    monkeypatch.setattr(vessels, "is_unusual", lambda share, yardstick: True)
    out = tmp_path / "out"
    segment_vessels_self_trained([photos], out, fraction=0.12, config=config, train_images=2,
                                 reteach_unusual=True, log=quiet)  # fmt: skip
    rows = list(csv.DictReader((out / "vessels.csv").open()))
    odd = [r["image"] for r in rows if r["taught"] == "false"]
    assert len(odd) == 1 and [r["image"] for r in rows if r["retaught"] == "true"] == odd
    # The second network is the run a user would give that image: the same files, byte for byte.
    alone = tmp_path / "alone"
    segment_vessels_self_trained([photos / f"{odd[0]}.png"], alone, fraction=0.12, config=config,
                                 train_images=2, log=quiet)  # fmt: skip
    for name in (f"{odd[0]}_prob.png", f"{odd[0]}_mask.png", "model.safetensors"):
        assert (out / "unusual" / name).read_bytes() == (alone / name).read_bytes(), name
    for name in (f"{odd[0]}_prob.png", f"{odd[0]}_mask.png"):  # and replaces its masks
        assert (out / name).read_bytes() == (alone / name).read_bytes(), name
    # Without the option nothing is taught again.
    segment_vessels_self_trained([photos], tmp_path / "once", fraction=0.12, config=config,
                                 train_images=2, log=quiet)  # fmt: skip
    assert not (tmp_path / "once" / "unusual").exists()
    once = list(csv.DictReader((tmp_path / "once" / "vessels.csv").open()))
    assert {r["retaught"] for r in once} == {"false"}


def test_teach_all_gives_each_group_of_images_a_network_of_its_own(tmp_path):
    photos = _photos(tmp_path / "photos", sizes=(64, 64, 64, 64, 64))
    config = StudentConfig(size=64, crop=32, depth=2, width=4, steps=1, device="cpu")
    out = tmp_path / "out"
    written = segment_vessels_self_trained([photos], out, fraction=0.12, config=config,
                                           train_images=2, teach_all=True, log=quiet)  # fmt: skip
    assert [p.name for p in written] == [f"eye{i}_mask.png" for i in range(5)]
    rows = list(csv.DictReader((out / "vessels.csv").open()))
    assert [r["image"] for r in rows] == [f"eye{i}" for i in range(5)]
    assert {r["taught"] for r in rows} == {"true"}  # every image, by its own group's network
    groups = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row["image"])
    assert sorted(groups) == ["group-1", "group-2", "group-3"]
    assert sorted(len(g) for g in groups.values()) == [1, 2, 2]  # 5 in groups of at most 2
    # Each group's folder is the command run by hand on that group, byte for byte.
    for group, names in groups.items():
        alone = tmp_path / group
        segment_vessels_self_trained([photos / f"{n}.png" for n in names], alone, fraction=0.12,
                                     config=config, train_images=2, log=quiet)  # fmt: skip
        for name in [f"{n}_{kind}.png" for n in names for kind in ("prob", "mask")]:
            assert (out / group / name).read_bytes() == (alone / name).read_bytes(), name
            assert (out / name).read_bytes() == (alone / name).read_bytes(), name
        assert (out / group / "model.safetensors").read_bytes() == (
            alone / "model.safetensors"
        ).read_bytes()
    # `localdisc predict` takes one group's network, and says so when given the folder.
    with pytest.raises(LocaldiscError, match=r"a network per group .* e\.g\. .*group-1"):
        predict_images(out, [photos], tmp_path / "p", device="cpu")
    # A bad image stops it before the first group is taught.
    (photos / "eye9.png").write_bytes(b"not a png")
    with pytest.raises(LocaldiscError, match="eye9.png"):
        segment_vessels_self_trained([photos], tmp_path / "o", fraction=0.12, config=config,
                                     train_images=2, teach_all=True, log=quiet)  # fmt: skip
    assert not (tmp_path / "o").exists()
    # As many images as train_images or fewer: one network, as without the option.
    segment_vessels_self_trained([photos / "eye0.png"], tmp_path / "one", fraction=0.12,
                                 config=config, train_images=2, teach_all=True,
                                 log=quiet)  # fmt: skip
    assert (tmp_path / "one" / "model.safetensors").exists()
    assert not list((tmp_path / "one").glob("group-*"))


def test_a_finished_run_is_kept_and_a_stopped_one_goes_on(tmp_path, monkeypatch):
    photos = _photos(tmp_path / "photos", sizes=(64, 64, 64))
    config = StudentConfig(size=64, crop=32, depth=2, width=4, steps=1, device="cpu")
    out = tmp_path / "out"
    run = partial(segment_vessels_self_trained, [photos], out, fraction=0.12, config=config,
                  train_images=2, teach_all=True, log=quiet)  # fmt: skip
    run()
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*.png")}
    trainings, real = [], vessels.train_student
    monkeypatch.setattr(
        vessels, "train_student", lambda *a, **k: trainings.append(1) or real(*a, **k)
    )
    said = []
    written = run(log=said.append)
    assert trainings == [] and sum("kept as it is" in line for line in said) == 2  # both groups
    assert [p.name for p in written] == ["eye0_mask.png", "eye1_mask.png", "eye2_mask.png"]
    # A group stopped while it segmented (vessels.csv is written last) segments again with the
    # network it saved; one stopped while it trained (no network yet) trains again, alone.
    (out / "group-2" / "vessels.csv").unlink()
    (out / "group-2" / "eye1_mask.png").unlink()
    # killed between saving its network and removing its checkpoint: that goes now
    (out / "group-2" / "student-checkpoint" / "step_00000001").mkdir(parents=True)
    said.clear()
    run(log=said.append)
    assert trainings == [] and any("an earlier run of these settings trained" in m for m in said)
    assert not (out / "group-2" / "student-checkpoint").exists()
    for name in ("model.safetensors", "config.json", "vessels.csv"):
        (out / "group-1" / name).unlink()
    run()
    assert len(trainings) == 1
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*.png")} == before
    # Other settings run again.
    run(config=replace(config, steps=2))
    assert len(trainings) == 3
    segment_vessels_self_trained([photos / "eye0.png"], tmp_path / "one", fraction=0.12,
                                 config=config, log=quiet)  # fmt: skip
    # Each change from the run before it (speck_area and max_size change what is written).
    again = {"reteach_unusual": True}
    for changed in ({"fraction": 0.2}, again, again, {**again, "speck_area": 0.01},
                    {**again, "speck_area": 0.01, "max_size": 100}):  # fmt: skip
        segment_vessels_self_trained([photos / "eye0.png"], tmp_path / "one", config=config,
                                     log=quiet, **{"fraction": 0.12, **changed})  # fmt: skip
    assert len(trainings) == 8  # the first run and each change train; the third finds the second


def test_a_run_stopped_on_one_device_goes_on_on_another_without_training_again(
    tmp_path, monkeypatch
):
    photos = _photos(tmp_path / "photos", sizes=(64,))
    config = StudentConfig(size=64, crop=32, depth=2, width=4, steps=1, device="cpu")
    out = tmp_path / "out"
    segment_vessels_self_trained([photos], out, fraction=0.12, config=config, log=quiet)
    (out / "vessels.csv").unlink()  # stopped while it segmented
    trainings, real = [], vessels.train_student
    monkeypatch.setattr(
        vessels, "train_student", lambda *a, **k: trainings.append(1) or real(*a, **k)
    )
    said = []
    elsewhere = replace(config, device="auto")
    first = json.loads((out / "config.json").read_text())["environment"]
    segment_vessels_self_trained([photos], out, fraction=0.12, config=elsewhere, log=said.append)
    assert trainings == [] and any("an earlier run of these settings trained" in m for m in said)
    saved = json.loads((out / "config.json").read_text())  # the environment it was taught in
    assert saved["environment"] == first and len(saved["resumed"]) == 1
    segment_vessels_self_trained([photos], out, fraction=0.12, config=replace(config, seed=1),
                                 log=quiet)  # fmt: skip
    assert trainings == [1]  # a setting that changes what it learns still trains again


def test_an_image_is_unusual_beyond_both_the_taught_range_and_the_band_around_its_median():
    yardstick = share_yardstick([0.06, 0.12, 0.12, 0.15])  # median, lowest, highest
    assert yardstick == (0.12, 0.06, 0.15)
    # The band, 0.08-0.18, widened below by the taught range to 0.06.
    for share, unusual in ((0.07, False), (0.05, True), (0.17, False), (0.19, True)):
        assert is_unusual(share, yardstick) is unusual, share
    assert not is_unusual(0.9, (0.0, 0.0, 0.0))  # nothing marked on the taught: no yardstick
    # A network saved before the range was kept holds its median: the band alone.
    assert _saved_yardstick({"vessel_share": 0.12}) == (0.12, 0.12, 0.12)
    assert _saved_yardstick({"vessel_share": 0.12, "vessel_share_range": [0.06, 0.15]}) == (
        0.12, 0.06, 0.15
    )  # fmt: skip
    assert _saved_yardstick({}) is None


def test_the_share_table_and_the_log_judge_only_images_not_taught_on(tmp_path):
    path, heard = tmp_path / "vessels.csv", []
    names = ["taught, dense", "usual", "dense", "empty"]
    shares = [0.3, 0.12, 0.12 * UNUSUAL_SHARE * 1.1, 0.01]
    taught, yardstick = [True, False, False, False], (0.12, 0.1, 0.14)
    assert _name_unusual(names, shares, taught, yardstick, heard.append) == [2, 3]
    assert len(heard) == 1 and "dense (1.65x), empty (0.08x)" in heard[0]
    assert "taught" not in heard[0].split(":")[-1] and "0.83x to 1.17x" in heard[0]
    strays = [0.1, 0.2, 0.3, 1.0]
    _write_share_table(tmp_path, names, shares, taught, yardstick, strays, 0.2,
                       [False, False, True, False])  # fmt: skip
    rows = list(csv.DictReader(path.open()))
    assert [r["image"] for r in rows] == names  # a comma in a name stays in its column
    assert [r["unusual"] for r in rows] == ["", "false", "true", "true"]
    assert [r["ratio"] for r in rows] == ["2.500", "1.000", "1.650", "0.083"]
    assert [r["retaught"] for r in rows] == ["false", "false", "true", "false"]
    assert [r["teacher_disagreement"] for r in rows] == ["0.1000", "0.2000", "0.3000", "1.0000"]
    assert [r["disagreement_ratio"] for r in rows] == ["0.500", "1.000", "1.500", "5.000"]
    for none in ((0.0, 0.0, 0.0), None):  # no yardstick (a network saved before): no ratios
        assert _name_unusual(names, shares, [False] * 4, none, heard.append) == []
        _write_share_table(tmp_path, names, shares, [False] * 4, none, strays, None)
        assert {(r["ratio"], r["unusual"], r["disagreement_ratio"])
                for r in csv.DictReader(path.open())} == {("", "", "")}  # fmt: skip
    assert len(heard) == 1


def test_the_log_names_the_masks_furthest_from_their_teacher_first(tmp_path):
    heard, names = [], ["a", "b", "c", "d", "e"]
    strays, shares = [0.2, 0.5, 0.1, 0.4, 0.3], [0.1] * 5
    _write_share_table(tmp_path, names, shares, [True] * 5, (0.1, 0.1, 0.1), strays, 0.3)
    assert _name_first_to_review(tmp_path / "vessels.csv", heard.append) == ["b", "d", "e"]
    assert "b (1.67x), d (1.33x), e (1.00x)" in heard[-1]
    # A network saved before the median was kept: the values themselves.
    _write_share_table(tmp_path, names, shares, [True] * 5, None, strays, None)
    assert _name_first_to_review(tmp_path / "vessels.csv", heard.append) == ["b", "d", "e"]
    assert "b (0.50), d (0.40), e (0.30)" in heard[-1]
    # As many images as it would name, or fewer: nothing to order.
    _write_share_table(tmp_path, names[:3], shares[:3], [True] * 3, None, strays[:3], None)
    assert _name_first_to_review(tmp_path / "vessels.csv", heard.append) == []
    assert len(heard) == 2


def test_masks_that_mark_nothing_are_said_and_not_ordered_among_the_first_to_review(tmp_path):
    """Every mask of a 5-step run was empty, each teacher_disagreement 1.0, and the log still
    named three arbitrary images as the masks to look at first (1.00x), saying nothing of it."""
    heard, table = [], tmp_path / "vessels.csv"
    names = list("abcde")
    _write_share_table(tmp_path, names, [0.0] * 5, [True] * 5, (0.0, 0.0, 0.0), [1.0] * 5, 1.0)
    assert _name_first_to_review(table, heard.append) == []
    assert heard == [f"all 5 mask(s) mark nothing (vessel_share 0 in {table}): no vessel found in "
                     "any image; a network taught for too few --steps does that"]  # fmt: skip
    # Some: said first, apart (three named), and the order is of the others.
    heard.clear()
    names = list("abcdefghi")
    shares = [0.1, 0.0, 0.1, 0.0, 0.0, 0.1, 0.0, 0.0, 0.1]
    strays = [0.2, 1.0, 0.5, 1.0, 1.0, 0.4, 1.0, 1.0, 0.1]
    _write_share_table(tmp_path, names, shares, [True] * 9, (0.1, 0.1, 0.1), strays, 0.2)
    assert _name_first_to_review(table, heard.append) == ["c", "f", "a"]
    assert heard[0] == (f"5 of 9 mask(s) mark nothing, to look at first (vessel_share 0 in "
                        f"{table}): b, d, e and 2 more")  # fmt: skip
    assert heard[1].startswith("masks to look at first, furthest from their teacher among those "
                               "that mark vessels")  # fmt: skip
    assert heard[1].endswith("c (2.50x), f (2.00x), a (1.00x)") and len(heard) == 2
    # Too few to order: an empty mask is still said.
    heard.clear()
    _write_share_table(tmp_path, ["a", "b"], [0.1, 0.0], [True] * 2, None, [0.3, 1.0], None)
    assert _name_first_to_review(table, heard.append) == []
    assert heard == [
        f"1 of 2 mask(s) mark nothing, to look at first (vessel_share 0 in {table}): b"
    ]


def test_a_cohort_taught_in_groups_gets_one_review_order_not_one_per_group(tmp_path):
    photos = _photos(tmp_path / "photos", sizes=(64,) * 8)
    config = StudentConfig(size=64, crop=32, depth=2, width=4, steps=1, device="cpu")
    said = []
    segment_vessels_self_trained([photos], tmp_path / "out", fraction=0.12, config=config,
                                 train_images=4, teach_all=True, log=said.append)  # fmt: skip
    # (one step marks nothing: the review order is then the line saying so)
    review = [line for line in said if line.startswith("masks to look at first")
              or "mask(s) mark nothing" in line]  # fmt: skip
    assert len(review) == 1 and str(tmp_path / "out" / "vessels.csv") in review[0]


def test_an_output_folder_inside_the_images_folder_is_not_read_as_images(tmp_path):
    photos = _photos(tmp_path / "photos", sizes=(64, 64))
    config = StudentConfig(size=64, crop=32, depth=2, width=4, steps=1, device="cpu")
    out, said = photos / "vessels", []
    names = ["eye0_mask.png", "eye1_mask.png"]
    for log in (quiet, said.append):  # the second run found the first's masks and taught on them
        written = segment_vessels_self_trained([photos], out, fraction=0.12, config=config,
                                               log=log)  # fmt: skip
        assert [p.name for p in written] == names
    assert any("kept as it is" in line for line in said)
    # `localdisc predict` with its network, into the images' folder too.
    shutil.move(out, tmp_path / "net")
    for _ in range(2):
        again = predict_images(tmp_path / "net", [photos], photos / "again", device="cpu")
        assert [p.name for p in again] == names


def test_images_of_one_name_in_several_folders_are_taught_in_groups_and_again(
    tmp_path, monkeypatch
):
    cohort = tmp_path / "cohort"  # one folder per patient, each photograph named alike
    for seed in range(3):
        eye = synthetic_fundus(64, seed=seed)
        (cohort / f"p{seed}").mkdir(parents=True)
        write_png(cohort / f"p{seed}" / "OD.png", np.round(eye.image * 255).astype(np.uint8))
    config = StudentConfig(size=64, crop=32, depth=2, width=4, steps=1, device="cpu")
    names = ["p0_OD", "p1_OD", "p2_OD"]
    written = segment_vessels_self_trained([cohort], tmp_path / "all", fraction=0.12,
                                           config=config, train_images=2, teach_all=True,
                                           log=quiet)  # fmt: skip
    assert [p.name for p in written] == [f"{n}_mask.png" for n in names]
    rows = list(csv.DictReader((tmp_path / "all" / "vessels.csv").open()))
    assert [r["image"] for r in rows] == names
    for row in rows:  # each group's masks, copied under the names the command gave
        assert (tmp_path / "all" / row["group"] / f"{row['image']}_mask.png").read_bytes() == (
            tmp_path / "all" / f"{row['image']}_mask.png"
        ).read_bytes()
    # Two unusual images of one name: a second network on both.
    monkeypatch.setattr(vessels, "share_yardstick", lambda shares: (0.1, 0.1, 0.1))
    monkeypatch.setattr(vessels, "is_unusual", lambda share, yardstick: True)
    segment_vessels_self_trained([cohort], tmp_path / "odd", fraction=0.12, config=config,
                                 train_images=1, reteach_unusual=True, log=quiet)  # fmt: skip
    rows = list(csv.DictReader((tmp_path / "odd" / "vessels.csv").open()))
    assert sum(r["retaught"] == "true" for r in rows) == 2
    for row in rows:
        if row["retaught"] == "true":
            assert (tmp_path / "odd" / "unusual" / f"{row['image']}_mask.png").read_bytes() == (
                tmp_path / "odd" / f"{row['image']}_mask.png"
            ).read_bytes()


def test_teacher_disagreement_is_the_share_of_the_mask_off_the_teacher_s_top_pixels():
    fov = np.ones((40, 40), bool)
    score = np.zeros((40, 40), np.float32)
    score[10:30, 20] = 1.0  # the teacher's top 20 pixels: a line inside the eroded FOV
    score[10:30, 21] = 0.5  # then the line beside it
    line = score == 1.0
    assert teacher_disagreement(line, score, fov, erode_fov=2) == 0.0
    # Half the mask on the top pixels, half beside them: the top 40 hold both lines.
    half = line.copy()
    half[20:30, 20] = False
    half[20:30, 10] = True
    assert teacher_disagreement(half, score, fov, erode_fov=2) == pytest.approx(0.5)
    both = line | (score == 0.5)
    assert teacher_disagreement(both, score, fov, erode_fov=2) == 0.0
    elsewhere = np.roll(line, 10, axis=1)
    assert teacher_disagreement(elsewhere, score, fov, erode_fov=2) == 1.0
    # Only the eroded FOV counts: the teacher is undefined on its rim; nothing marked there: 1.
    rim = np.zeros_like(line)
    rim[0, :] = True
    assert teacher_disagreement(rim, score, fov, erode_fov=2) == 1.0
    assert teacher_disagreement(line | rim, score, fov, erode_fov=2) == 0.0


def test_images_too_small_to_find_vessels_in_are_refused_before_training(tmp_path):
    photos = _photos(tmp_path / "photos", sizes=(96, 40))
    config = StudentConfig(size=64, crop=32, depth=2, width=4, steps=1, device="cpu")
    for train_images in (2, 1):  # taught on or only checked
        with pytest.raises(LocaldiscError, match=r"eye1.png: 40x40 pixels is too small"):
            segment_vessels_self_trained([photos], tmp_path / "o", fraction=0.12, config=config,
                                         train_images=train_images, log=quiet)  # fmt: skip
    write_png(tmp_path / "wide.png", np.zeros((96, 192, 3), np.uint8))
    with pytest.raises(LocaldiscError, match=r"wide.png: 192x96 pixels \(126x63 once shrunk"):
        segment_vessels_self_trained([tmp_path / "wide.png"], tmp_path / "o", fraction=0.12,
                                     config=config, max_size=126, log=quiet)  # fmt: skip
    with pytest.raises(LocaldiscError, match="max_size must be at least 64"):
        segment_vessels_self_trained([photos], tmp_path / "o", config=config, max_size=32)
    assert not (tmp_path / "o").exists()


def test_a_training_stopped_by_a_signal_continues_from_its_group_s_checkpoint(
    tmp_path, monkeypatch
):
    """`shape-guided vessels` stopped while a network trained taught it again from step 0; now
    the first SIGINT/SIGTERM keeps a checkpoint in that group's folder (OUT/group-K/
    student-checkpoint), the same command goes on from it to the masks of an uninterrupted run,
    and the folder is gone once the network is saved."""
    import os
    import signal

    from localdisc.engine import pseudo_label

    photos = _photos(tmp_path / "photos", sizes=(64, 64, 64))
    config = StudentConfig(size=64, crop=32, depth=2, width=4, steps=3, device="cpu")

    def run(out, log=quiet):
        segment_vessels_self_trained([photos], out, fraction=0.12, config=config,
                                     train_images=2, teach_all=True, log=log)  # fmt: skip
        return {p.relative_to(out): p.read_bytes() for p in out.rglob("*.png")}

    straight = run(tmp_path / "straight")
    assert not list((tmp_path / "straight").rglob("student-checkpoint"))
    real, taken = pseudo_label.augment, []

    def augment(*args, **kwargs):
        taken.append(1)
        if len(taken) == 5:  # group 2's step 2
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(pseudo_label, "augment", augment)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt, match="after student step 2/3"):
        run(out)
    assert [p.relative_to(out).as_posix() for p in out.rglob("student-checkpoint")] == [
        "group-2/student-checkpoint"
    ]
    said: list[str] = []
    assert run(out, log=said.append) == straight
    assert len(taken) == 6  # group 2's last step, nothing again
    assert any("continuing the interrupted training" in line for line in said)
    assert not list(out.rglob("student-checkpoint"))


def test_the_vessels_command_stopped_in_a_training_says_where_it_continues(tmp_path, monkeypatch):
    """Stopped in the first training, with no network saved yet, the rerun continues it and then
    segments (it said it segments with a saved network, which there was none of); stopped in
    group 2's, group 1's saved network is what it segments with."""
    out = tmp_path / "out"

    def stopped(images, out_dir, **kwargs):
        step = out_dir / "group-2" / "student-checkpoint" / "step_00000340"
        step.mkdir(parents=True)
        (step / "state.json").write_text(
            json.dumps({"name": "student step", "step": 340, "steps": 1200})
        )
        raise KeyboardInterrupt

    monkeypatch.setattr(vessels, "segment_vessels_self_trained", stopped)
    result = CliRunner().invoke(
        app, ["shape-guided", "vessels", "--images", str(tmp_path), "--out", str(out)]
    )
    assert result.exit_code == 130, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    checkpoint = out / "group-2" / "student-checkpoint"
    assert lines == [
        f"interrupted: the checkpoint of the network in training in {checkpoint} (after student "
        "step 340/1200); run the same command again (same --out): it continues the training "
        "from its checkpoint, then segments"
    ]
    shutil.rmtree(out)
    (out / "group-1").mkdir(parents=True)
    (out / "group-1" / "model.safetensors").touch()
    result = CliRunner().invoke(
        app, ["shape-guided", "vessels", "--images", str(tmp_path), "--out", str(out)]
    )
    assert result.exit_code == 130, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        f"interrupted: the network(s) saved in {out / 'group-1'} are kept, and the checkpoint of "
        f"the network in training in {checkpoint} (after student step 340/1200); run the same "
        "command again (same --out): it segments with a saved network of the same settings, and "
        "continues the training from its checkpoint"
    ]


# --- scores against a researcher's own true vessel tracings (--masks) --------------------------
def _tracings(photos, folder, names):
    """The true vessels of each of ``names`` (an ``eyeK.png`` of :func:`_photos`, its size read
    back) in ``folder``, 0/255, named as the images."""
    folder.mkdir()
    for name in names:
        size = read_image(photos / f"{name}.png")[0].shape[0]
        vessels_ = synthetic_fundus(size, seed=int(name[3:])).vessels
        write_png(folder / f"{name}.png", (vessels_ > 0).astype(np.uint8) * 255)
    return folder


def test_a_shrunk_image_s_probability_holds_to_the_edge_of_its_field_of_view(tmp_path, monkeypatch):
    """eye1, shrunk to max_size to be segmented, had its map brought back by a plain bilinear
    resize, which blended the FOV's border with the 0 outside: a probability of 1 everywhere
    inside came back below 1 along the edge (the mask could lose the vessels there)."""
    import localdisc.tasks.vessels as vessels

    sure = lambda model, image, fov: fov.astype(np.float32)  # noqa: E731
    monkeypatch.setattr(vessels, "student_probability", sure)
    photos = _photos(tmp_path / "photos")
    config = StudentConfig(size=64, crop=32, depth=2, width=4, steps=1, device="cpu")
    segment_vessels_self_trained([photos], tmp_path / "out", fraction=0.12, config=config,
                                 max_size=128, log=quiet, progress=False)  # fmt: skip
    prob = read_image(tmp_path / "out" / "eye1_prob.png")[0][..., 0]
    fov = vessels._written_fov(photos / "eye1.png", 128, None)
    assert prob.shape == fov.shape == (160, 160)
    assert prob[fov].min() == 1.0 and not prob[~fov].any()


def _scores_by_hand(out, photo, truth, max_size=768, fov_mask=None):
    """:func:`segmentation_metrics` of the mask written (specks dropped) against ``truth``
    inside the FOV it was written in (found in the photograph as shrunk to ``max_size``, or
    read from ``fov_mask``, at the photograph's own size), ``auc`` of the probability map, and
    clDice."""
    from localdisc.data.io import read_mask
    from localdisc.data.preprocess import resize_image, resize_mask, to_modality_channels
    from localdisc.eval.metrics import segmentation_metrics

    name = photo.stem
    prob = read_image(out / f"{name}_prob.png")[0][..., 0]
    mask = read_mask(out / f"{name}_mask.png")
    image = to_modality_channels(read_image(photo)[0], "fundus")
    shape = image.shape[:2]
    if fov_mask is not None:
        fov = read_mask(fov_mask)
    elif max(shape) > max_size:
        small = resize_image(image, tuple(round(n * max_size / max(shape)) for n in shape))
        fov = resize_mask(fov_from_image(small), shape)
    else:
        fov = fov_from_image(image)
    target = read_mask(truth)
    scores = segmentation_metrics(mask.astype(np.float32), target, fov, topology=True)
    scores["auc"] = segmentation_metrics(prob, target, fov)["auc"]
    return scores


def test_masks_scores_each_written_mask_inside_the_fov_it_was_written_in(tmp_path):
    """A researcher with true tracings for some images had no way to score the command on them
    in the same call: `masks` scores each mask as written (specks dropped) and its probability
    map inside the FOV the run held it to (eye1 was shrunk to max_size to be segmented), with
    clDice, into metrics.json and a table in the log; an image without a tracing is named, not
    scored."""
    photos = _photos(tmp_path / "photos", sizes=(96, 160, 96))
    truth = _tracings(photos, tmp_path / "truth", ["eye0", "eye1"])
    out, said = tmp_path / "out", []
    config = StudentConfig(size=64, crop=32, depth=2, width=4, steps=1, device="cpu")
    segment_vessels_self_trained([photos], out, fraction=0.12, config=config, max_size=128,
                                 masks=truth, log=said.append, progress=False)  # fmt: skip
    text = (out / "metrics.json").read_text()
    metrics = json.loads(text)
    assert text == json.dumps(metrics, indent=2)  # the format written, keys in this order:
    assert list(metrics) == ["command", "masks", "threshold", "fov", "summary", "per_image",
                             "masks_used", "unscored", "environment"]  # fmt: skip
    assert metrics["command"] == "shape-guided vessels" and metrics["masks"] == str(truth)
    assert metrics["fov"] == "found in each image" and metrics["threshold"] == 0.5
    assert [row["image"] for row in metrics["per_image"]] == ["eye0", "eye1"]
    for row in metrics["per_image"]:
        name = row.pop("image")
        expected = _scores_by_hand(out, photos / f"{name}.png", truth / f"{name}.png", 128)
        assert row == pytest.approx(expected, nan_ok=True), name
        assert set(row) >= {"dice", "f1", "auc", "sensitivity", "cldice"}
    dice = [row["dice"] for row in metrics["per_image"]]
    assert metrics["summary"]["dice"] == pytest.approx(
        {"mean": np.mean(dice), "std": np.std(dice), "n": 2}
    )
    assert metrics["unscored"] == [str(photos / "eye2.png")]
    assert metrics["masks_used"] == {n: str(truth / f"{n}.png") for n in ("eye0", "eye1")}
    assert metrics["environment"]["device"] == "cpu"
    assert any("1 image(s) without a mask" in line and "eye2.png" in line for line in said)
    table = next(line for line in said if line.startswith("output")).splitlines()
    assert table[0].split() == ["output", "n", "dice", "auc", "sensitivity", "cldice"]
    mean, std = metrics["summary"]["dice"]["mean"], metrics["summary"]["dice"]["std"]
    assert table[1].split()[:5] == ["vessels", "2", f"{mean:.4f}", "+-", f"{std:.4f}"]
    assert said[-1].startswith(f"3 mask(s) in {out} (NAME_mask.png, NAME_prob.png; vessels.csv; "
                               "figures/overlay.png; metrics.json)")  # fmt: skip
    # Scoring is no training setting: the network's config.json does not hold it.
    assert "masks" not in json.loads((out / "config.json").read_text())["self_trained_vessels"]


def test_masks_are_scored_inside_given_fov_masks(tmp_path):
    """Inside the FOV mask given as it is, also for an image shrunk to max_size to be segmented
    (its FOV shrunk with it and blown back up strayed from the given one at the rim: pixels
    outside it were scored, and some inside it were not)."""
    photos = _photos(tmp_path / "photos", sizes=(160,))
    truth = _tracings(photos, tmp_path / "truth", ["eye0"])
    yy, xx = np.mgrid[:160, :160]
    disc = (yy - 80) ** 2 + (xx - 80) ** 2 < 50**2  # far smaller than the eye's own
    write_png(tmp_path / "fov" / "eye0_mask.png", disc.astype(np.uint8) * 255)
    config = StudentConfig(size=64, crop=32, depth=2, width=4, steps=1, device="cpu")
    out = tmp_path / "out"
    segment_vessels_self_trained([photos], out, fraction=0.12, config=config, masks=truth,
                                 fov_masks=tmp_path / "fov", max_size=128, log=quiet,
                                 progress=False)  # fmt: skip
    given = tmp_path / "fov" / "eye0_mask.png"
    assert np.array_equal(vessels._written_fov(photos / "eye0.png", 128, given), disc)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fov"] == f"the FOV masks in {tmp_path / 'fov'}"
    row = metrics["per_image"][0]
    assert row.pop("image") == "eye0"
    expected = _scores_by_hand(out, photos / "eye0.png", truth / "eye0.png", fov_mask=given)
    assert row == pytest.approx(expected, nan_ok=True)
    # As `localdisc predict --masks` with its network scores the same files (not shrunk).
    predict_images(out, [photos], tmp_path / "again", fov_masks=tmp_path / "fov", masks=truth,
                   device="cpu", log=quiet)  # fmt: skip
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["per_image"] == [{"image": "eye0", **row}]
    assert not read_image(tmp_path / "again" / "eye0_prob.png")[0][..., 0][~disc].any()


def test_predict_scores_a_network_s_masks_as_it_scored_them_without_fov_masks(tmp_path):
    """Without FOV masks, an image shrunk to max_size to be segmented is scored inside the FOV
    found at that size by both commands (not the one found in the full-size image)."""
    photos = _photos(tmp_path / "photos", sizes=(160,))
    truth = _tracings(photos, tmp_path / "truth", ["eye0"])
    config = StudentConfig(size=64, crop=32, depth=2, width=4, steps=1, device="cpu")
    out = tmp_path / "out"
    segment_vessels_self_trained([photos], out, fraction=0.12, config=config, masks=truth,
                                 max_size=64, log=quiet, progress=False)  # fmt: skip
    row = json.loads((out / "metrics.json").read_text())["per_image"][0]
    assert row.pop("image") == "eye0"
    expected = _scores_by_hand(out, photos / "eye0.png", truth / "eye0.png", max_size=64)
    assert row == pytest.approx(expected, nan_ok=True)
    predict_images(out, [photos], tmp_path / "again", masks=truth, device="cpu", log=quiet)
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["per_image"] == [{"image": "eye0", **row}]


def test_true_masks_are_checked_before_any_training(tmp_path, monkeypatch):
    """A folder where no image has a tracing, a tracing not its image's size, or an OUT whose
    metrics.json another command wrote: refused before the network is taught, nothing
    written."""
    photos = _photos(tmp_path / "photos", sizes=(64, 64))
    truth = tmp_path / "truth"
    truth.mkdir()
    trainings = []
    monkeypatch.setattr(vessels, "train_student", lambda *a, **k: trainings.append(1))
    out = tmp_path / "out"
    run = partial(segment_vessels_self_trained, [photos], out, fraction=0.12, log=quiet,
                  config=StudentConfig(size=64, crop=32, depth=2, width=4, steps=1,
                                       device="cpu"), progress=False)  # fmt: skip
    with pytest.raises(LocaldiscError, match=r"missing: no such folder of masks"):
        run(masks=tmp_path / "missing")
    with pytest.raises(LocaldiscError, match=r"truth: no image has a mask there"):
        run(masks=truth)
    write_png(truth / "eye1.png", np.zeros((40, 64), np.uint8))
    with pytest.raises(LocaldiscError, match=r"eye1.png: mask is 64x40, its image .* is 64x64"):
        run(masks=truth)
    assert not out.exists()
    write_png(truth / "eye1.png", np.zeros((64, 64), np.uint8))
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps({"summary": {}, "phases": []}))
    with pytest.raises(LocaldiscError, match=r"out: holds metrics.json, not one `shape-guided "
                       r"vessels` wrote \(a fine-tuning's test results\?\)"):  # fmt: skip
        run(masks=truth)
    (out / "metrics.json").write_text(json.dumps({"command": "shape-guided segment",
                                                  "masks_used": {}, "unscored": []}))  # fmt: skip
    with pytest.raises(LocaldiscError, match=r"\(`shape-guided segment`'s scores\)"):
        run(masks=truth)
    assert trainings == [] and [p.name for p in out.iterdir()] == ["metrics.json"]


def test_teach_all_scores_every_group_s_images_in_one_metrics_json(tmp_path):
    photos = _photos(tmp_path / "photos", sizes=(64, 64, 64))
    truth = _tracings(photos, tmp_path / "truth", ["eye0", "eye1", "eye2"])
    config = StudentConfig(size=64, crop=32, depth=2, width=4, steps=1, device="cpu")
    out = tmp_path / "out"
    segment_vessels_self_trained([photos], out, fraction=0.12, config=config, train_images=2,
                                 teach_all=True, masks=truth, log=quiet,
                                 progress=False)  # fmt: skip
    assert sorted(p.name for p in out.glob("group-*")) == ["group-1", "group-2"]
    assert not list(out.glob("group-*/metrics.json"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert [row["image"] for row in metrics["per_image"]] == ["eye0", "eye1", "eye2"]
    assert metrics["summary"]["dice"]["n"] == 3 and metrics["unscored"] == []
    for row in metrics["per_image"]:
        name = row.pop("image")
        expected = _scores_by_hand(out, photos / f"{name}.png", truth / f"{name}.png")
        assert row == pytest.approx(expected, nan_ok=True), name


def test_the_vessels_command_scores_against_masks_and_prints_the_table(tmp_path, monkeypatch):
    from localdisc.tasks import self_training

    photos = _photos(tmp_path / "photos", sizes=(64,))
    truth = _tracings(photos, tmp_path / "truth", ["eye0"])
    tiny = partial(StudentConfig, size=64, crop=32, depth=2, width=4)  # the command's, smaller
    monkeypatch.setattr(self_training, "StudentConfig", tiny)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "shape-guided", "vessels", "--images", str(photos), "--out", str(out), "--masks",
        str(truth), "--steps", "1", "--fraction", "0.12", "--device", "cpu",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    dice, auc = summary["dice"], summary["auc"]
    # One image: no std (a std of 0 read as images that agreed)
    assert re.search(rf"^vessels +1 +{dice['mean']:.4f} +{auc['mean']:.4f} ", result.output,
                     re.M), result.output  # fmt: skip
    assert f"per image in {out / 'metrics.json'}" in result.output
