"""LD pre-training runs that benchmarks make themselves: reused only when of their settings."""

from __future__ import annotations

import errno

import pytest

from localdisc.errors import LocaldiscError
from localdisc.tasks.presets import QUICK_PRETRAIN, pretrain_preset


def test_a_pre_training_of_other_settings_is_refused_not_reused(tmp_path):
    run_dir, said = tmp_path / "pretrain", []
    settings = {**QUICK_PRETRAIN, "stage1_steps": 1, "stage2_steps": 1, "device": "cpu",
                "progress": False}  # fmt: skip
    pretrain_preset(settings, run_dir, said.append)
    # The same settings (runtime fields aside) reuse it.
    assert pretrain_preset({**settings, "progress": True}, run_dir, said.append) == run_dir
    assert said[-1] == f"reusing the LD pre-training in {run_dir}"
    # Others, e.g. a longer preset given the same folder, would have been handed this one.
    with pytest.raises(LocaldiscError, match=r"pretrain: holds a pre-training with other "
                                             r"settings \(stage1_steps 1 \(given 5\)"):  # fmt: skip
        pretrain_preset({**settings, "stage1_steps": 5}, run_dir, said.append)
    # An interrupted run of other settings too: resumed, it would keep its own.
    (run_dir / "encoder.safetensors").unlink()
    with pytest.raises(LocaldiscError, match="size 64 \\(given 32\\)"):
        pretrain_preset({**settings, "size": 32}, run_dir, said.append)


def test_ld_without_a_preset_is_refused_whatever_its_folder_holds(tmp_path):
    """Without a preset's data there are no settings to check a run against: whatever the
    folder held (another call's --quick model of 6 steps) was reused unchecked."""
    run_dir = tmp_path / "pretrain"
    run_dir.mkdir()
    (run_dir / "encoder.safetensors").write_bytes(b"")  # a finished run, of settings unknown
    with pytest.raises(LocaldiscError, match="the model 'ld' pre-trains with the --quick or"):
        pretrain_preset({"device": "cpu", "progress": True}, run_dir, print)


def test_a_divergence_is_recorded_and_raised_again_without_training(tmp_path):
    from localdisc.errors import DivergedError
    from localdisc.tasks.presets import DIVERGED_FILE, unless_diverged

    calls: list[str] = []

    def diverges() -> None:
        calls.append("trained")
        raise DivergedError("the fine-tuning diverged (epoch 3)")

    run_dir = tmp_path / "run"
    with pytest.raises(DivergedError, match=r"^the fine-tuning diverged \(epoch 3\)$"):
        unless_diverged(run_dir, diverges)
    with pytest.raises(DivergedError, match=r"diverged \(epoch 3\) \[recorded by an earlier call"):
        unless_diverged(run_dir, diverges)
    assert calls == ["trained"]
    # A damaged record still stops it, naming the file to delete.
    (run_dir / DIVERGED_FILE).write_text("{")
    with pytest.raises(DivergedError, match=f"it diverged .*{DIVERGED_FILE}; delete that file"):
        unless_diverged(run_dir, diverges)
    # Other errors are not recorded; deleted, the run trains again.
    (run_dir / DIVERGED_FILE).unlink()
    assert unless_diverged(run_dir, lambda: 7) == 7

    def fails() -> None:
        raise LocaldiscError("no such data set")

    with pytest.raises(LocaldiscError, match="no such data set"):
        unless_diverged(run_dir, fails)
    assert not (run_dir / DIVERGED_FILE).exists()


def test_a_record_keyed_by_settings_holds_for_those_settings_only(tmp_path):
    """An evaluation's refinement diverged under some settings: the same settings raise it again
    at once, other ones train (and a success removes the stale record)."""
    from localdisc.errors import DivergedError
    from localdisc.tasks.presets import DIVERGED_FILE, unless_diverged

    def diverges() -> None:
        raise DivergedError("the training diverged by refine step 2/6")

    with pytest.raises(DivergedError):
        unless_diverged(tmp_path, diverges, key={"refine_steps": 6})
    with pytest.raises(DivergedError, match=r"step 2/6 \[recorded by an earlier call"):
        unless_diverged(tmp_path, lambda: 7, key={"refine_steps": 6})
    assert unless_diverged(tmp_path, lambda: 7, key={"refine_steps": 3}) == 7
    assert not (tmp_path / DIVERGED_FILE).exists()
    # A key as JSON reads it back: a tuple is a list, and its record holds.
    with pytest.raises(DivergedError):
        unless_diverged(tmp_path, diverges, key={"crop_scale": (0.2, 0.35)})
    with pytest.raises(DivergedError, match=r"\[recorded by an earlier call"):
        unless_diverged(tmp_path, lambda: 7, key={"crop_scale": (0.2, 0.35)})


def test_a_finished_run_outlives_its_divergence_record_and_a_record_left_unwritten(
    tmp_path, monkeypatch
):
    import localdisc.tasks.presets as presets
    from localdisc.errors import DivergedError

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / presets.DIVERGED_FILE).write_text('{"reason": "it diverged at epoch 3"}')
    # Resumed by hand since and finished: the record was stale, and hid the finished run.
    assert presets.unless_diverged(run_dir, lambda: "reused", finished=True) == "reused"
    assert not (run_dir / presets.DIVERGED_FILE).exists()

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    def diverges() -> None:
        raise DivergedError("the fine-tuning diverged (epoch 3)")

    # A record that cannot be written does not turn the divergence into an OSError, which the
    # benchmarks do not catch (one run would stop the grid again).
    monkeypatch.setattr("localdisc.engine.checkpoint.tempfile.mkstemp", full_disk)
    with pytest.raises(DivergedError, match="epoch 3"):
        presets.unless_diverged(run_dir, diverges)


def test_a_run_from_a_stage_1_made_again_under_its_path_is_refused(tmp_path):
    # A run is named by its init's path alone: benchmark shape-guided reused the LD + prior
    # runs of a stage 1 that had been made again under that path (reviewer).
    import shutil

    said: list[str] = []
    stage1 = tmp_path / "stage1"
    base = {**QUICK_PRETRAIN, "stage1_steps": 2, "stage2_steps": 0}
    pretrain_preset(base, stage1, said.append)
    settings = {**QUICK_PRETRAIN, "stage1_steps": 0, "stage2_steps": 2, "init_from": str(stage1)}
    pretrain_preset(settings, tmp_path / "run", said.append)
    said.clear()
    (tmp_path / "run" / "init_weights.json").unlink()  # a run of before the record: written now
    pretrain_preset(settings, tmp_path / "run", said.append)
    assert said == [f"reusing the LD pre-training in {tmp_path / 'run'}"]
    assert (tmp_path / "run" / "init_weights.json").is_file()
    shutil.rmtree(stage1)
    pretrain_preset({**base, "seed": 5}, stage1, said.append)
    with pytest.raises(LocaldiscError, match="run: started from other weights of .*stage1"):
        pretrain_preset(settings, tmp_path / "run", said.append)


def test_a_finished_run_whose_pool_moved_away_is_reused_by_its_own_modality(tmp_path):
    # Its modality left to its data (as --cpu-scale's KaggleDR pool leaves it), a finished run
    # whose pool was moved away was refused ("no such folder") where it had been reused.
    import shutil

    from helpers import save
    from localdisc.data.synthetic import synthetic_fundus

    data = tmp_path / "pool"
    for i in range(4):
        save(data / f"{i}.png", (synthetic_fundus(48, seed=i).image * 255).astype("uint8"))
    settings = {**QUICK_PRETRAIN, "data": [str(data)], "modality": None, "progress": False}
    run = pretrain_preset(settings, tmp_path / "run", log=lambda m: None)
    shutil.move(data, tmp_path / "archived")
    said: list[str] = []
    assert pretrain_preset(settings, run, log=said.append) == run
    assert said == [f"reusing the LD pre-training in {run}"]
