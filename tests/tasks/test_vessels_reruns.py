"""`localdisc shape-guided vessels` into a folder that already holds outputs: another command's
run, or its own of other images or settings."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from functools import partial

import numpy as np
import pytest

from helpers import save
from localdisc.data.synthetic import synthetic_fundus
from localdisc.errors import LocaldiscError
from localdisc.models.segmenter import Segmenter
from localdisc.tasks.self_training import StudentConfig
from localdisc.tasks.vessels import segment_vessels_self_trained

CONFIG = StudentConfig(size=64, crop=32, depth=2, width=4, steps=1, painted=1, device="cpu")


def quiet(_: str) -> None:
    pass


def _photos(folder, names):
    for seed, name in enumerate(names):
        eye = synthetic_fundus(64, seed=seed)
        save(folder / f"{name}.png", np.round(eye.image * 255).astype(np.uint8))
    return folder


def _digest(folder):
    return {p.relative_to(folder): hashlib.md5(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}  # fmt: skip


def test_a_fine_tuning_s_folder_as_out_is_refused_before_any_work(tmp_path):
    """`shape-guided vessels --out ft/` on a fine-tuning's folder trained its network and
    saved it over the fine-tuned model.safetensors and config.json."""
    ft = tmp_path / "ft"
    Segmenter(modality="fundus", size=32, width=4, depth=2).save(ft, {"transfer": {}})
    before = _digest(ft)
    photos = _photos(tmp_path / "photos", ["a"])
    with pytest.raises(LocaldiscError, match=r"ft: holds the run of another command"):
        segment_vessels_self_trained([photos], ft, fraction=0.12, config=CONFIG, log=quiet,
                                     progress=False)  # fmt: skip
    assert _digest(ft) == before


@pytest.mark.parametrize("teach_all", [False, True])
def test_a_run_of_other_images_into_the_same_out_leaves_none_of_the_earlier_masks(
    tmp_path, teach_all
):
    """A second run into the same --out of other images (or other settings) taught a network
    again and wrote its masks, but left the first run's masks of the images it did not segment
    beside them, listed nowhere: two runs mixed. A run that fails at a bad image removes
    nothing."""
    photos = _photos(tmp_path / "photos", ["a", "b", "c"])
    out = tmp_path / "out"
    run = {"fraction": 0.12, "config": CONFIG, "train_images": 2, "teach_all": teach_all,
           "progress": False}  # fmt: skip
    segment_vessels_self_trained([photos], out, log=quiet, **run)
    assert (out / "c_mask.png").is_file()
    bad = tmp_path / "bad"
    _photos(bad, ["a", "e"])  # three files: laid out as the earlier run (_check_layout)
    (bad / "broken.png").write_bytes(b"not a png")
    before = _digest(out)
    with pytest.raises(LocaldiscError, match="broken.png"):
        segment_vessels_self_trained([bad], out, log=quiet, **run)
    assert _digest(out) == before  # the earlier run stays whole, and finished
    said: list[str] = []
    other = _photos(tmp_path / "other", ["d"])
    segment_vessels_self_trained([photos / "a.png", photos / "b.png", other], out,
                                 log=said.append, **run)  # fmt: skip
    masks = sorted(p.name for p in out.glob("*.png"))
    assert masks == [f"{n}_{kind}.png" for n in "abd" for kind in ("mask", "prob")]
    assert any(f"removed 2 file(s) of an earlier run from {out}:" in line for line in said), said


def test_the_same_fov_masks_folder_spelt_otherwise_is_the_same_run(tmp_path, monkeypatch):
    """config.json saved --fov-masks as typed: the same command from another directory, or
    with the folder spelt absolute, taught the network again instead of keeping the run."""
    from localdisc.tasks import vessels

    photos = _photos(tmp_path / "photos", ["a"])
    fov = np.zeros((64, 64), np.uint8)
    fov[4:60, 4:60] = 255
    save(tmp_path / "fov" / "a_mask.png", fov)
    monkeypatch.chdir(tmp_path)
    run = {"fraction": 0.12, "config": CONFIG, "progress": False, "log": quiet}
    segment_vessels_self_trained([photos], tmp_path / "out", fov_masks="fov", **run)
    trainings, real = [], vessels.train_student
    monkeypatch.setattr(
        vessels, "train_student", lambda *a, **k: trainings.append(1) or real(*a, **k)
    )
    said: list[str] = []
    segment_vessels_self_trained([photos], tmp_path / "out", fov_masks=tmp_path / "fov",
                                 **{**run, "log": said.append})  # fmt: skip
    assert trainings == [] and any("kept as it is" in line for line in said), said


def test_the_command_ends_saying_where_its_outputs_are(tmp_path):
    """The command's last line was the review order of its masks (or, for three images or
    fewer, a progress line): nothing said where the masks, the table and the network were."""
    photos = _photos(tmp_path / "photos", ["a", "b", "c"])
    run = {"fraction": 0.12, "config": CONFIG, "progress": False, "train_images": 2}
    # (one --out each: a grouped run into a single run's is refused, _check_layout)
    # (a grouped run's figures are each group's: group-K/figures/overlay.png)
    for teach_all, out, group in ((False, "one", ""), (True, "all", "group-K/")):
        said: list[str] = []
        segment_vessels_self_trained([photos], tmp_path / out, teach_all=teach_all,
                                     log=said.append, **run)  # fmt: skip
        assert said[-1] == (
            f"3 mask(s) in {tmp_path / out} (NAME_mask.png, NAME_prob.png; vessels.csv; "
            f"{group}figures/overlay.png); further photographs: localdisc predict --model "
            f"{tmp_path / out / group}"
        )


def test_a_run_laid_out_otherwise_than_the_earlier_one_in_out_is_refused_before_any_work(
    tmp_path,
):
    """A --teach-all run into a single run's --out left its config.json and model.safetensors,
    which `localdisc predict --model OUT` then took, stale; group-K/ beyond the new groups, or an
    unusual/ the run would not write, stayed too, as did group-K/ under a single run. Refused,
    naming them, nothing written; a run laid out as the earlier one goes on."""
    photos = _photos(tmp_path / "photos", ["a", "b", "c"])
    run = partial(segment_vessels_self_trained, [photos], fraction=0.12, config=CONFIG,
                  log=quiet, progress=False)  # fmt: skip
    one, groups, stopped = tmp_path / "one", tmp_path / "groups", tmp_path / "stopped"
    run(one)
    run(groups, teach_all=True, train_images=1)  # group-1 ... group-3
    (stopped / "student-checkpoint" / "step_00000001").mkdir(parents=True)  # a stopped training
    grouped = {"teach_all": True, "train_images": 2}
    for out, this, named in (
        (one, grouped, r"one network for all its images \(config\.json, model\.safetensors\)"),
        (stopped, grouped, r"one network for all its images \(student-checkpoint\)"),
        (groups, {}, r"a network per group \(group-1, group-2, group-3\)"),
        (groups, grouped, r"networks of groups beyond its 2 \(group-3\)"),
    ):
        before = _digest(out)
        with pytest.raises(LocaldiscError, match=rf"{out.name}: holds networks of an earlier run "
                           rf"that this one \(.*\) would not replace: {named}; .* another --out, "
                           r"or delete those"):  # fmt: skip
            run(out, **this)
        assert _digest(out) == before, (out, this)
    # An earlier unusual/ (--reteach-unusual): refused where this run cannot write one.
    (one / "unusual").mkdir()
    (one / "unusual" / "model.safetensors").write_bytes(b"an earlier network")
    before = _digest(one)
    for this in ({}, grouped):
        with pytest.raises(LocaldiscError, match=r"a network of its unusual images \(unusual/\)"):
            run(one, **this)
        assert _digest(one) == before
    # With --reteach-unusual it would write one: it runs, and says when it finds none unusual.
    said: list[str] = []
    run(one, reteach_unusual=True, log=said.append)  # one step marks nothing: none unusual
    note = f"{one / 'unusual'}: an earlier run's network of its unusual images; none is unusual"
    assert any(line.startswith(note) for line in said), said
    assert (one / "unusual" / "model.safetensors").read_bytes() == b"an earlier network"
    # Fewer group-K/ than this run's groups: a stopped run's, which goes on.
    shutil.rmtree(groups / "group-3")
    run(groups, teach_all=True, train_images=1)
    assert (groups / "group-3" / "model.safetensors").is_file()


def test_a_finished_run_given_masks_is_scored_without_training_again(tmp_path, monkeypatch):
    """Scoring is no training setting: a finished run rerun with --masks (a researcher who got
    the tracings after) is kept as it is and scored, its network untouched; an earlier call's
    scores stay through a call that fails on its inputs, and go with a call without --masks
    (another command's metrics.json is left alone)."""
    from localdisc.tasks import vessels

    photos = _photos(tmp_path / "photos", ["a", "b"])
    truth = tmp_path / "truth"
    save(truth / "a.png", (synthetic_fundus(64, seed=0).vessels > 0).astype(np.uint8) * 255)
    out = tmp_path / "out"
    run = partial(segment_vessels_self_trained, [photos], out, fraction=0.12, config=CONFIG,
                  progress=False)  # fmt: skip
    run(log=quiet)
    network = (out / "config.json").read_bytes(), (out / "model.safetensors").read_bytes()
    trainings, real = [], vessels.train_student
    monkeypatch.setattr(
        vessels, "train_student", lambda *a, **k: trainings.append(1) or real(*a, **k)
    )
    said: list[str] = []
    run(masks=truth, log=said.append)
    assert trainings == [] and any("kept as it is" in line for line in said), said
    assert ((out / "config.json").read_bytes(), (out / "model.safetensors").read_bytes()) == network
    metrics = json.loads((out / "metrics.json").read_text())
    assert [row["image"] for row in metrics["per_image"]] == ["a"]
    assert metrics["unscored"] == [str(photos / "b.png")]
    scored = (out / "metrics.json").read_text()
    (photos / "broken.png").write_bytes(b"not a png")  # other images: it would teach again
    for masks in (tmp_path / "missing", truth, None):
        with pytest.raises(LocaldiscError):
            run(masks=masks, log=quiet)
        assert (out / "metrics.json").read_text() == scored
    (photos / "broken.png").unlink()
    said.clear()
    run(log=said.append)  # kept as it is, not scored: the earlier scores go
    assert trainings == [] and not (out / "metrics.json").exists()
    assert any(f"removed {out / 'metrics.json'}" in line for line in said), said
    other = {"summary": {}, "phases": []}  # another command's: left alone without --masks
    (out / "metrics.json").write_text(json.dumps(other))
    run(log=quiet, fraction=0.2)  # taught again
    assert len(trainings) == 1 and json.loads((out / "metrics.json").read_text()) == other


def test_a_run_that_teaches_again_removes_the_earlier_scores_once_its_images_are_read(tmp_path):
    """Scores of an earlier call beside masks this one replaces would be of other masks."""
    photos = _photos(tmp_path / "photos", ["a"])
    truth = tmp_path / "truth"
    save(truth / "a.png", (synthetic_fundus(64, seed=0).vessels > 0).astype(np.uint8) * 255)
    out = tmp_path / "out"
    run = partial(segment_vessels_self_trained, [photos], out, config=CONFIG, progress=False)
    run(fraction=0.12, masks=truth, log=quiet)
    assert (out / "metrics.json").is_file()
    said: list[str] = []
    run(fraction=0.2, log=said.append)  # other settings: taught again, not scored
    assert not (out / "metrics.json").exists()
    assert any(f"removed {out / 'metrics.json'}" in line for line in said), said


@pytest.mark.parametrize("teach_all", [False, True])
def test_skip_bad_leaves_unreadable_images_out_as_if_not_given(tmp_path, teach_all):
    """A truncated PNG or text named .png among the photographs stopped the command before any
    training, with no way to go on. skip_bad reads every image first: the others are drawn,
    grouped and taught on as if the bad ones were not given (the same run), an earlier run's
    masks of them are removed, and each network's config.json lists them; a finished run of
    the same images is kept on a rerun."""
    photos = _photos(tmp_path / "photos", ["a", "b", "c", "d"])
    out = tmp_path / "out"
    run = {"fraction": 0.12, "config": CONFIG, "train_images": 2, "teach_all": teach_all,
           "progress": False}  # fmt: skip
    segment_vessels_self_trained([photos], out, log=quiet, **run)
    assert (out / "d_mask.png").is_file()
    broken = photos / "d.png"
    broken.write_bytes(broken.read_bytes()[:150])
    (photos / "notes.png").write_text("not an image")
    with pytest.raises(LocaldiscError) as error:
        segment_vessels_self_trained([photos], out, log=quiet, **run)
    assert str(error.value) == (
        f"{broken}: cannot decode as image: OSError: image file is truncated; --skip-bad skips "
        "unreadable images"
    )
    said: list[str] = []
    written = segment_vessels_self_trained([photos], out, log=said.append, skip_bad=True, **run)
    assert [p.name for p in written] == ["a_mask.png", "b_mask.png", "c_mask.png"]
    assert not list(out.glob("d_*")) and not list(out.glob("notes_*"))
    with (out / "vessels.csv").open() as file:
        assert [row["image"] for row in csv.DictReader(file)] == ["a", "b", "c"]
    assert f"skipped {broken}: cannot decode as image: OSError: image file is truncated" in said
    networks = sorted(out.glob("group-*")) if teach_all else [out]
    assert len(networks) == (2 if teach_all else 1)  # three images in groups of at most two
    for folder in networks:
        record = json.loads((folder / "config.json").read_text())["skipped"]
        assert [(e["name"], e["path"]) for e in record] == [
            ("d", str(broken.resolve())), ("notes", str((photos / "notes.png").resolve()))
        ]  # fmt: skip
    network = out / "group-K" if teach_all else out
    assert said[-1].endswith(
        f"; 2 unreadable image(s) skipped, listed under skipped in {network / 'config.json'}"
    )
    # The same as a run on the readable images alone, byte for byte.
    alone = tmp_path / "alone"
    segment_vessels_self_trained([photos / f"{n}.png" for n in "abc"], alone, log=quiet, **run)
    for name in ("a_mask.png", "b_prob.png", "c_mask.png"):
        assert (out / name).read_bytes() == (alone / name).read_bytes(), name
    # A rerun finds the run finished, the same images skipped: kept as it is.
    before = _digest(out)
    said.clear()
    segment_vessels_self_trained([photos], out, log=said.append, skip_bad=True, **run)
    assert any("kept as it is" in line for line in said) and _digest(out) == before
    with pytest.raises(LocaldiscError, match=r"every image was skipped as unreadable \(2; first"):
        segment_vessels_self_trained([broken, photos / "notes.png"], tmp_path / "none",
                                     log=quiet, skip_bad=True, **run)  # fmt: skip
    assert not (tmp_path / "none").exists()


def test_skip_bad_checks_each_image_once_before_a_grouped_run(tmp_path, monkeypatch):
    """With skip_bad and teach_all, each image is decoded once to find the unreadable ones and
    check it before any training (not once for skip_bad and again for the groups)."""
    from localdisc.tasks import predict, vessels

    photos = _photos(tmp_path / "photos", ["a", "b", "c"])
    (photos / "notes.png").write_text("not an image")
    checked: list[str] = []
    check, read = vessels._check_photo, predict.read_image

    def checking(path, *args):
        checked.append(path.name)
        return check(path, *args)

    def reading(path, *args, **kwargs):
        checked.append(path.name)
        return read(path, *args, **kwargs)

    def teach(*args):
        raise RuntimeError("checked")  # the checks alone, before any training

    monkeypatch.setattr(vessels, "_check_photo", checking)
    monkeypatch.setattr(predict, "read_image", reading)
    monkeypatch.setattr(vessels, "_teach_in_groups", teach)
    with pytest.raises(RuntimeError, match="checked"):
        segment_vessels_self_trained([photos], tmp_path / "out", fraction=0.12, config=CONFIG,
                                     train_images=2, teach_all=True, skip_bad=True, log=quiet,
                                     progress=False)  # fmt: skip
    assert sorted(checked) == ["a.png", "b.png", "c.png", "notes.png"]


def test_a_rerun_into_the_images_folder_keeps_a_true_mask_of_an_image_added_since(tmp_path):
    # The network's config.json waived the guard for every name: c_mask.png, drawn by hand for
    # an image added after the first run, was replaced by the rerun, exit 0 (reviewer).
    folder = _photos(tmp_path / "d", ["a", "b"])
    run = partial(segment_vessels_self_trained, config=CONFIG, log=quiet, max_size=64)
    run([folder], folder)
    assert json.loads((folder / "config.json").read_text())["writes"] == ["a", "b"]
    _photos(folder, ["c"])
    truth = np.zeros((64, 64), np.uint8)
    truth[20:30, 5:60] = 255
    save(folder / "c_mask.png", truth)
    drawn = (folder / "c_mask.png").read_bytes()
    with pytest.raises(LocaldiscError, match=r"c_mask\.png: an output of this run would replace"):
        run([folder], folder)
    assert (folder / "c_mask.png").read_bytes() == drawn


@pytest.mark.parametrize("failing", ["model.safetensors", "config.json"])
def test_a_save_cut_short_never_passes_an_earlier_network_off_as_the_new_run_s(
    tmp_path, monkeypatch, failing
):
    # Run A finished in OUT; run B, of other steps, failed to save (a full disk: the small
    # config fitted, the weights did not; or a kill between the two files). Rerun, B found "a
    # network of these settings" and segmented with A's, under B's config (reviewer).
    import errno
    from pathlib import Path

    import localdisc.engine.checkpoint as checkpoint

    photos = _photos(tmp_path / "photos", ["a", "b"])

    def run(steps: int, out) -> str:
        config = StudentConfig(size=64, crop=32, depth=2, width=4, steps=steps, batch=2,
                               painted=0, device="cpu")  # fmt: skip
        segment_vessels_self_trained([photos], out, config=config, fraction=0.12, log=quiet)
        return hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()

    out = tmp_path / "out"
    first = run(2, out)
    real = checkpoint.atomic_write_bytes

    def full(path, data):
        if Path(path).name == failing:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", full)
    with pytest.raises(OSError, match="No space"):
        run(4, out)
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", real)
    again = run(4, out)
    assert again != first
    assert again == run(4, tmp_path / "uninterrupted")  # continued from its checkpoint
    assert Segmenter.from_pretrained(out) is not None


def test_a_network_changed_since_its_save_is_refused_not_trained_over(tmp_path):
    # Weights cast to float16 by hand were trained over silently, the reviewed masks rewritten
    from safetensors.torch import load_file, save_file

    photos = _photos(tmp_path / "photos", ["a"])
    config = StudentConfig(size=64, crop=32, depth=2, width=4, steps=1, batch=2, painted=0,
                           device="cpu")  # fmt: skip
    out = tmp_path / "out"
    segment_vessels_self_trained([photos], out, config=config, fraction=0.12, log=quiet)
    weights = out / "model.safetensors"
    save_file({k: v.half() for k, v in load_file(weights).items()}, weights)
    before = _digest(out)
    with pytest.raises(LocaldiscError, match="not the network saved with the config.json"):
        segment_vessels_self_trained([photos], out, config=config, fraction=0.12, log=quiet)
    assert _digest(out) == before


def test_a_rerun_on_just_the_images_taught_on_is_no_finished_run_of_them(tmp_path, monkeypatch):
    """Run on a, b, c taught on b and c (the seeded draw of 2); run again on b and c alone: the
    same settings (the images taught on), but the run there finished on other images. It is
    not kept as this one's: its network segments b and c again, and a's masks go."""
    from localdisc.tasks import vessels

    photos = _photos(tmp_path / "photos", ["a", "b", "c"])
    out = tmp_path / "out"
    run = {"fraction": 0.12, "config": CONFIG, "train_images": 2, "progress": False}
    segment_vessels_self_trained([photos], out, log=quiet, **run)
    taught = json.loads((out / "config.json").read_text())["self_trained_vessels"]["images"]
    assert [p.rsplit("/", 1)[1] for p in taught] == ["b.png", "c.png"]  # else not the case
    trainings, real = [], vessels.train_student
    monkeypatch.setattr(
        vessels, "train_student", lambda *a, **k: trainings.append(1) or real(*a, **k)
    )
    said: list[str] = []
    segment_vessels_self_trained([photos / "b.png", photos / "c.png"], out, log=said.append,
                                 **run)  # fmt: skip
    assert trainings == [] and not any("kept as it is" in line for line in said), said
    assert sorted(p.name for p in out.glob("*_mask.png")) == ["b_mask.png", "c_mask.png"]
    with (out / "vessels.csv").open(newline="") as file:
        assert [row["image"] for row in csv.DictReader(file)] == ["b", "c"]


def test_a_run_of_other_settings_stopped_once_its_network_is_saved_is_not_taken_as_finished(
    tmp_path, monkeypatch
):
    """Run A finished in OUT; run B, of other steps, saved its network and stopped while it
    segmented. A's vessels.csv (which marks a finished run) must go when B starts: else the
    rerun of B finds a finished run of its settings and keeps A's masks as B's."""
    from dataclasses import replace

    from localdisc.tasks import vessels

    photos = _photos(tmp_path / "photos", ["a"])
    out = tmp_path / "out"
    segment_vessels_self_trained([photos], out, fraction=0.12, config=CONFIG, log=quiet)
    other = replace(CONFIG, steps=2)
    real = vessels._write_vessels

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vessels, "_write_vessels", killed)
    with pytest.raises(KeyboardInterrupt):
        segment_vessels_self_trained([photos], out, fraction=0.12, config=other, log=quiet)
    assert not (out / "vessels.csv").exists()  # B's network saved, its masks not yet written
    monkeypatch.setattr(vessels, "_write_vessels", real)
    said: list[str] = []
    segment_vessels_self_trained([photos], out, fraction=0.12, config=other, log=said.append)
    assert not any("kept as it is" in line for line in said), said
    assert any("an earlier run of these settings trained" in line for line in said), said
