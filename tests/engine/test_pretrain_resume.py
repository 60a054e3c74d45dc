"""A resume continues the run it was started as: on the same pool, without its init_from run."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers import tiny_pretrain_config, torch_threads
from localdisc.data.pool import synthetic_pool
from localdisc.engine.checkpoint import load_latest_checkpoint, load_safetensors, save_checkpoint
from localdisc.engine.pretrain import _with_absolute_paths, pretrain, refuse_other_settings
from localdisc.errors import CheckpointError, LocaldiscError


def quiet(message: str) -> None:
    pass


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):  # tiny tensors: fastest on one, and no stall on busy cores
        yield


@pytest.fixture(scope="module")
def images():
    return synthetic_pool(9, "fundus", 48)


def save_images(folder: Path, images, indices) -> None:
    folder.mkdir(exist_ok=True)
    for i in indices:
        Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(folder / f"img{i}.png")


def test_a_resume_on_a_changed_pool_is_refused(tmp_path, images):
    # An image added to the folder between the stop and the resume: the split was drawn again
    # over the new pool, silently, while config.json kept naming the old validation images.
    data, run = tmp_path / "data", tmp_path / "run"
    save_images(data, images, range(8))
    config = tiny_pretrain_config(data=[str(data)], workers=1)
    pretrain(config, run, stop_at_step=2, log=quiet)
    save_images(data, images, [8])
    with pytest.raises(CheckpointError) as caught:
        pretrain(config, run, resume=True, log=quiet)
    message = str(caught.value)
    assert message.startswith(f"{run}: the pool differs from the one the run started with")
    assert "9 images now, 8 at the first start" in message
    assert "other validation images (first start -> now: 'img" in message
    assert f"Restore the data ({data}) as it was at the first start" in message
    assert "start a new run with another --out" in message
    (data / "img8.png").unlink()  # restored: the resume goes on
    assert pretrain(config, run, resume=True, log=quiet).steps == config.total_steps


def test_a_run_named_before_shared_names_were_paths_resumes():
    # Two folders' 0.png: a run started when both were "0.png" is not refused for the names
    # now being the files' paths, and another image is still a change.
    from localdisc.engine.pretrain import refuse_changed_pool

    config = tiny_pretrain_config()
    saved = {"images": 4, "val_names": ["0.png", "1.png"]}
    now = {"images": 4, "val_names": ["/data/a/0.png", "1.png"]}
    refuse_changed_pool(Path("run"), config, saved, now)
    with pytest.raises(CheckpointError, match=r"'1.png' -> '3.png'"):
        refuse_changed_pool(Path("run"), config, saved, {**now, "val_names": ["0.png", "3.png"]})


def test_a_run_that_named_a_file_by_its_resolved_path_resumes_behind_a_link(tmp_path):
    # Names two folders share were resolved paths for a while, now absolute as listed (links
    # kept): the same file by either name is not a change (reviewer).
    from localdisc.engine.pretrain import refuse_changed_pool

    (tmp_path / "real" / "a").mkdir(parents=True)
    (tmp_path / "real" / "a" / "0.png").write_bytes(b"")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    old, new = (tmp_path / "real" / "a" / "0.png").as_posix(), (tmp_path / "link" / "a" / "0.png")
    saved = {"images": 4, "val_names": [old]}
    refuse_changed_pool(Path("run"), tiny_pretrain_config(), saved,
                        {"images": 4, "val_names": [new.as_posix()]})  # fmt: skip


def test_a_resume_passes_when_max_images_and_skip_bad_give_the_same_pool(tmp_path, images):
    # The same unreadable file skipped again (img5 takes its place), and an image added beyond
    # --max-images, leave the pool as it was: no reason to refuse.
    data, run = tmp_path / "data", tmp_path / "run"
    save_images(data, images, range(6))
    (data / "img3.png").write_bytes(b"not a png")
    config = tiny_pretrain_config(data=[str(data)], skip_bad=True, max_images=5, workers=1)
    pretrain(config, run, stop_at_step=2, log=quiet)
    save_images(data, images, [8])  # img8.png sorts after the five kept
    assert pretrain(config, run, resume=True, log=quiet).steps == config.total_steps
    assert json.loads((run / "config.json").read_text())["pool"]["images"] == 5


def test_a_resume_before_the_first_checkpoint_records_the_pool_it_trains_on(tmp_path, images):
    # Without a checkpoint the resume starts over on the pool as it is now; config.json kept
    # the old pool's record, and a later resume would have compared with it.
    data, run = tmp_path / "data", tmp_path / "run"
    save_images(data, images, range(8))
    config = tiny_pretrain_config(data=[str(data)], workers=1)
    pretrain(config, run, stop_at_step=1, log=quiet)  # checkpoints come every 2 steps
    save_images(data, images, [8])
    pretrain(config, run, resume=True, stop_at_step=4, log=quiet)
    assert json.loads((run / "config.json").read_text())["pool"]["images"] == 9
    assert pretrain(config, run, resume=True, log=quiet).steps == config.total_steps


def test_a_resume_does_not_need_the_init_from_run(tmp_path, images):
    # Its checkpoint holds every weight; the resume failed on the stage-1 run moved away.
    pool = images[:6]
    pretrain(tiny_pretrain_config(stage2_steps=0), tmp_path / "stage1", pool=pool, log=quiet)
    config = tiny_pretrain_config(stage1_steps=0, stage2_steps=4,
                                  init_from=str(tmp_path / "stage1"))  # fmt: skip
    pretrain(config, tmp_path / "straight", pool=pool, log=quiet)
    pretrain(config, tmp_path / "resumed", pool=pool, stop_at_step=2, log=quiet)
    shutil.move(tmp_path / "stage1", tmp_path / "archived")
    assert pretrain(config, tmp_path / "resumed", pool=pool, resume=True, log=quiet).steps == 4
    a = load_safetensors(tmp_path / "straight" / "model.safetensors")
    b = load_safetensors(tmp_path / "resumed" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    with pytest.raises(CheckpointError, match="stage1: no such folder"):  # a fresh start needs it
        pretrain(config, tmp_path / "fresh", pool=pool, log=quiet)


def test_a_resume_from_a_checkpoint_of_a_diverged_run_is_refused(tmp_path, images):
    # Its NaN weights (with valid checksums) were resumed silently: every loss non-finite.
    run, config = tmp_path / "run", tiny_pretrain_config()
    pretrain(config, run, pool=images[:6], stop_at_step=4, log=quiet)  # checkpoints 2 and 4
    state, tensors = load_latest_checkpoint(run / "checkpoints")
    key = next(k for k, v in tensors["model"].items() if v.is_floating_point())
    tensors["model"][key] = torch.full_like(tensors["model"][key], float("nan"))
    save_checkpoint(run / "checkpoints", state["step"], tensors, state)
    with pytest.raises(CheckpointError) as caught:
        pretrain(config, run, pool=images[:6], resume=True, log=quiet)
    newest = run / "checkpoints" / "step_00000004"
    assert str(caught.value) == (
        f"{newest / 'model.safetensors'}: weights hold NaN or inf values (in 1 tensor: {key}); "
        f"the training diverged before this checkpoint was written; delete {newest} to "
        "continue from the one before (step_00000002), or start over in another --out (a "
        "lower learning rate may keep it from diverging)"
    )
    shutil.rmtree(newest)  # as it says
    assert pretrain(config, run, pool=images[:6], resume=True, log=quiet).steps == 6


def test_skip_bad_is_no_setting_a_resume_compares(tmp_path, images):
    # A run started without --skip-bad (every file read) resumed with it, or the other way
    # round, reads the same pool: it was refused as "other settings (skip_bad ...)", so that
    # benchmark pretrain-methods --skip-bad could not pass the flag to its pre-trainings.
    data, run = tmp_path / "data", tmp_path / "run"
    save_images(data, images, range(6))
    config = tiny_pretrain_config(data=[str(data)], workers=1)
    pretrain(config, run, stop_at_step=2, log=quiet)
    flagged, said = replace(config, skip_bad=True), []
    refuse_other_settings(run, flagged)  # raised: "other settings (skip_bad False (given True))"
    assert pretrain(flagged, run, resume=True, log=said.append).steps == config.total_steps
    assert not [m for m in said if "saved settings" in m]  # the given flag is used
    refuse_other_settings(run, config)  # finished: reused with or without it


def test_a_finished_run_on_other_files_is_refused_not_reused(tmp_path, images):
    # A benchmark reused a finished pre-training whatever its pool held now (a grown --pool in
    # pretrain-methods): one file swapped for another, the same count, went unseen, and so
    # would a resume's (it compared counts and validation names).
    data, run = tmp_path / "data", tmp_path / "run"
    save_images(data, images, range(8))
    config = tiny_pretrain_config(data=[str(data)], workers=1)
    pretrain(config, run, log=quiet)
    refuse_other_settings(run, config)  # the same files: reused
    (data / "img7.png").unlink()
    save_images(data, images, [8])
    with pytest.raises(CheckpointError) as caught:
        refuse_other_settings(run, config)
    assert str(caught.value).startswith(
        f"{run}: pre-trained on other files than its data ({data}) hold now (8 files now, 8 "
        "then): reused, it would stand in for a pre-training on these. Restore the data as it "
        "was, or give another --out (nothing was changed)."
    )
    (data / "img8.png").unlink()
    save_images(data, images, [7])
    refuse_other_settings(run, config)
    # A resume likewise, where the validation images are the same.
    stopped = tmp_path / "stopped"
    pretrain(config, stopped, stop_at_step=2, log=quiet)
    val = json.loads((stopped / "config.json").read_text())["pool"]["val_names"]
    (data / next(f"img{i}.png" for i in range(8) if f"img{i}.png" not in val)).unlink()
    save_images(data, images, [8])
    with pytest.raises(CheckpointError, match=r"the pool differs .* \(other files \(8 now, 8 then"):
        pretrain(config, stopped, resume=True, log=quiet)


def test_a_finished_run_is_reused_where_its_data_give_the_same_pool(tmp_path, images):
    # The skipped file deleted since, a file beyond --max-images added, an older run without
    # the record, data moved away: nothing to refuse (a count of files refused the first).
    data, run = tmp_path / "data", tmp_path / "run"
    save_images(data, images, range(6))
    (data / "img3.png").write_bytes(b"not a png")
    config = tiny_pretrain_config(data=[str(data)], skip_bad=True, max_images=5, workers=1)
    pretrain(config, run, log=quiet)
    save_images(data, images, [8])  # img8.png sorts after the five kept
    refuse_other_settings(run, config)  # img3 skipped again
    (data / "img3.png").unlink()
    refuse_other_settings(run, config)
    (data / "img0.png").unlink()  # now img8 enters the pool
    with pytest.raises(CheckpointError, match="other files .* \\(5 files now, 5 then\\)"):
        refuse_other_settings(run, config)
    shutil.move(data, tmp_path / "archived")
    refuse_other_settings(run, config)
    saved = json.loads((run / "config.json").read_text())
    del saved["pool"]["files_sha256"]
    (run / "config.json").write_text(json.dumps(saved))
    shutil.move(tmp_path / "archived", data)
    refuse_other_settings(run, config)


def test_a_config_without_a_modality_takes_its_data_s_as_the_command_does(tmp_path, images):
    # PretrainConfig's default was "fundus": chest radiographs pre-trained from Python were
    # cropped and coloured as fundus photographs, unsaid, where `pretrain --data` guessed X-ray.
    data, run, said = tmp_path / "data", tmp_path / "run", []
    save_images(data, images[:, :1].expand(-1, 3, -1, -1).contiguous(), range(6))  # grey
    config = tiny_pretrain_config(data=[str(data)], workers=1, modality=None)
    assert config.modality is None
    pretrain(config, run, stop_at_step=2, log=said.append)
    assert "modality xray: that of the data (PretrainConfig.modality chooses)" in said
    assert json.loads((run / "config.json").read_text())["pretrain"]["modality"] == "xray"
    refuse_other_settings(run, config)  # the run's own modality, not another setting
    said.clear()
    assert pretrain(config, run, resume=True, log=said.append).steps == config.total_steps
    assert not [m for m in said if "saved settings" in m or "modality" in m]
    from localdisc.models import LDModel

    assert LDModel.from_pretrained(run).config.modality == "xray"


def test_a_skip_bad_run_is_reused_from_another_folder_and_without_the_flag(
    tmp_path, images, monkeypatch
):
    # Its skipped files were recorded as listed (relative to where it ran), and only a check
    # with --skip-bad let later files fill their places: from another folder, or without the
    # flag (a runtime field), its unchanged data were refused as other files (reviewer).
    data, run = tmp_path / "data", tmp_path / "run"
    save_images(data, images, range(6))
    (data / "img1.png").write_bytes(b"not a png")
    monkeypatch.chdir(tmp_path)
    config = tiny_pretrain_config(data=["data"], skip_bad=True, max_images=4, workers=1)
    pretrain(config, run, log=quiet)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    for skip_bad in (True, False):
        refuse_other_settings(run, replace(config, data=["../data"], skip_bad=skip_bad))


def test_a_run_stopped_before_its_first_checkpoint_is_not_refused_for_its_data(tmp_path, images):
    # It starts over on the data as they are: nothing of it is reused.
    data, run = tmp_path / "data", tmp_path / "run"
    save_images(data, images, range(6))
    config = tiny_pretrain_config(data=[str(data)], workers=1)
    pretrain(config, run, stop_at_step=1, log=quiet)  # checkpoints come every 2 steps
    save_images(data, images, [7])
    refuse_other_settings(run, config)
    assert pretrain(config, run, resume=True, log=quiet).steps == config.total_steps


def test_a_config_without_a_modality_from_a_run_of_another_refuses_the_guess(tmp_path, images):
    # Grey images from a fundus stage 1: red-free photographs or X-rays? The error said only
    # "its modality is 'fundus', not 'xray'"; taking the run's trained X-rays as photographs.
    data = tmp_path / "grey"
    save_images(data, images[:, :1].expand(-1, 3, -1, -1).contiguous(), range(6))
    stage1 = tmp_path / "stage1"
    pretrain(tiny_pretrain_config(stage2_steps=0), stage1, pool=images[:6], log=quiet)
    config = tiny_pretrain_config(data=[str(data)], modality=None, stage1_steps=0,
                                  stage2_steps=2, init_from=str(stage1), workers=1)  # fmt: skip
    with pytest.raises(LocaldiscError) as caught:
        pretrain(config, tmp_path / "stage2", log=quiet)
    assert str(caught.value) == (
        f"{data}: its images look xray (guessed: grey ones are X-rays), and init_from {stage1} "
        "was pre-trained on fundus images: give PretrainConfig.modality ('fundus' for red-free "
        "fundus photographs)"
    )
    assert pretrain(replace(config, modality="fundus"), tmp_path / "stage2", log=quiet).steps


def test_a_relative_data_folder_moved_away_is_no_changed_setting(tmp_path, images, monkeypatch):
    # config.json saves the folder absolute; given relatively once it had moved away (a finished
    # run resumes without its data), it was said to differ: "data ['/abs/data'] (given ['data'])"
    monkeypatch.chdir(tmp_path)
    save_images(tmp_path / "data", images, range(8))
    config = tiny_pretrain_config(data=["data"], workers=1)
    pretrain(config, "run", log=quiet)
    (tmp_path / "data").rename(tmp_path / "moved")
    said: list[str] = []
    assert pretrain(config, "run", resume=True, log=said.append).already_finished
    assert not [m for m in said if "saved settings" in m]
    said.clear()  # another folder, missing too, still is another setting
    pretrain(replace(config, data=["other"]), "run", resume=True, log=said.append)
    assert [m for m in said if "saved settings" in m] == [
        f"{Path('run') / 'config.json'}: resuming with the run's saved settings, not the given "
        f"ones: data [{str(tmp_path / 'data')!r}] (given ['other'])"
    ]


@pytest.mark.parametrize(
    "given", ["prior", "prior/", "jsrt_scr:prior:heart", "drive:prior"], ids=str
)
def test_a_relative_prior_or_data_set_root_moved_away_is_no_changed_setting(
    tmp_path, monkeypatch, given
):
    from localdisc.engine.pretrain import _changed_settings

    monkeypatch.chdir(tmp_path)
    (tmp_path / "prior").mkdir()
    # as config.json saved them when the folder was there
    saved = tiny_pretrain_config(prior=given, data=[given.split(":heart")[0]])
    paths = _with_absolute_paths(saved)
    saved = replace(saved, prior=paths["prior"], data=paths["data"])
    (tmp_path / "prior").rmdir()  # moved away since
    assert str(tmp_path) in saved.prior and str(tmp_path) in saved.data[0]
    assert _changed_settings(tiny_pretrain_config(prior=given, data=[saved.data[0]]), saved) == []
    assert _changed_settings(replace(saved, data=[given.split(":heart")[0]]), saved) == []
    other = given.replace("prior", "other")
    assert [s.split(" ")[0] for s in _changed_settings(replace(saved, prior=other), saved)] == [
        "prior"
    ]
