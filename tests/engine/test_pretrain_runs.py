"""What ``pretrain`` does with a run folder that already holds a run: fresh runs refuse it,
``--resume`` continues it (or does nothing when it finished), under the settings it was saved with
and with the number of processes it was trained with."""

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from helpers import tiny_pretrain_config
from localdisc.engine.checkpoint import list_checkpoints, load_safetensors
from localdisc.engine.pretrain import pretrain
from localdisc.errors import CheckpointError, LocaldiscError


@pytest.fixture(scope="module")
def pool() -> torch.Tensor:
    from localdisc.data.pool import synthetic_pool

    return synthetic_pool(6, "fundus", 48)


def quiet(message: str) -> None:
    pass


def _snapshot(run: Path) -> dict[str, bytes]:
    """Every file of the run, by relative path, with its bytes."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


# -- a fresh run into a used folder ---------------------------------------------------------------


@pytest.mark.parametrize("stop_at", [None, 3], ids=["finished", "interrupted"])
def test_a_fresh_run_into_a_used_folder_is_refused_and_nothing_is_deleted(
    tmp_path: Path, pool: torch.Tensor, stop_at: int | None
) -> None:
    run = tmp_path / "run"
    pretrain(tiny_pretrain_config(seed=0), run, pool=pool, stop_at_step=stop_at, log=quiet)
    before = _snapshot(run)
    with pytest.raises(CheckpointError) as info:
        pretrain(tiny_pretrain_config(seed=1), run, pool=pool, log=quiet)
    message = str(info.value)
    assert message.startswith(f"{run}: holds a run already")
    assert "--resume (in Python resume=True)" in message and "--out" in message
    assert "checkpoints/" in message
    assert _snapshot(run) == before  # nothing deleted, nothing written


def test_an_out_that_is_a_file_is_refused_before_the_pool_is_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import localdisc.engine.pretrain as engine

    def decode(*args: object, **kwargs: object) -> None:
        raise AssertionError("the pool was decoded before --out was checked")

    monkeypatch.setattr(engine, "resolve_pool", decode)
    run = tmp_path / "notes.txt"
    run.write_text("mine")
    with pytest.raises(CheckpointError, match=r"notes.txt: a file, not a folder; .*--out"):
        pretrain(tiny_pretrain_config(), run, log=quiet)
    assert run.read_text() == "mine"


def test_weights_alone_mark_a_used_folder(tmp_path: Path, pool: torch.Tensor) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "model_best.safetensors").write_bytes(b"old")
    with pytest.raises(CheckpointError, match="model_best.safetensors"):
        pretrain(tiny_pretrain_config(), run, pool=pool, log=quiet)
    assert (run / "model_best.safetensors").read_bytes() == b"old"


def test_a_folder_without_checkpoints_or_weights_takes_a_fresh_run(
    tmp_path: Path, pool: torch.Tensor
) -> None:
    """An empty folder, or one whose run was stopped before its first checkpoint (only its
    config.json and logs): nothing there to mix with."""
    run = tmp_path / "run"
    (run / "figures").mkdir(parents=True)
    result = pretrain(tiny_pretrain_config(), run, pool=pool, log=quiet)
    assert result.steps == 6 and (run / "model.safetensors").is_file()
    # As a run stopped before its first checkpoint leaves it: its config.json and log.csv.
    shutil.rmtree(run / "checkpoints")
    for weights in run.glob("*.safetensors"):
        weights.unlink()
    assert (run / "config.json").is_file() and (run / "log.csv").is_file()
    again = pretrain(tiny_pretrain_config(seed=4), run, pool=pool, log=quiet)
    assert (
        again.steps == 6 and json.loads((run / "config.json").read_text())["pretrain"]["seed"] == 4
    )


@pytest.mark.parametrize("mine", [["config.json"], ["log.csv"], ["config.json", "log.csv"]])
def test_a_users_own_config_or_log_in_out_is_refused_not_overwritten(
    tmp_path: Path, pool: torch.Tensor, mine: list[str]
) -> None:
    # `pretrain --out proj` wrote over the user's own config.json and log.csv (a reviewer), as
    # `finetune` refuses to.
    run = tmp_path / "proj"
    run.mkdir()
    own = {"config.json": '{"experiment": "my settings, not a run"}', "log.csv": "epoch,my_loss\n"}
    for name in mine:
        (run / name).write_text(own[name])
    with pytest.raises(CheckpointError) as info:
        pretrain(tiny_pretrain_config(), run, pool=pool, log=quiet)
    message = str(info.value)
    assert message.startswith(f"{run}: holds {' and '.join(mine)}, not of a pre-training (")
    assert "choose another --out (nothing was deleted)" in message
    if "log.csv" in mine:
        assert "'epoch,my_loss'" in message
    assert sorted(p.name for p in run.iterdir()) == sorted(mine)
    assert all((run / name).read_text() == own[name] for name in mine)


# -- --resume of a finished run -------------------------------------------------------------------


def test_resume_of_a_run_finished_by_its_time_budget_does_nothing(
    tmp_path: Path, pool: torch.Tensor
) -> None:
    run = tmp_path / "run"
    config = tiny_pretrain_config(stage1_steps=100_000, stage2_steps=0, stage1_seconds=0.3,
                                  checkpoint_every=100_000, val_every=100_000)  # fmt: skip
    first = pretrain(config, run, pool=pool, log=quiet)
    assert first.steps < config.total_steps  # ended by the budget, with steps left
    before = _snapshot(run)
    messages: list[str] = []
    again = pretrain(config, run, pool=pool, resume=True, log=messages.append)
    assert _snapshot(run) == before  # nothing trained, nothing overwritten
    assert again.already_finished and not first.already_finished
    assert (again.steps, again.trained_steps, again.skipped_steps) == (
        first.steps,
        first.trained_steps,
        first.skipped_steps,
    )
    assert again.images == first.images and again.final_loss == pytest.approx(first.final_loss)
    assert messages == [f"{run}: the run finished at step {first.steps} already; nothing to do"]


def test_resume_of_a_run_finished_by_its_step_count_does_nothing(
    tmp_path: Path, pool: torch.Tensor
) -> None:
    run = tmp_path / "run"
    config = tiny_pretrain_config()
    first = pretrain(config, run, pool=pool, log=quiet)
    before = _snapshot(run)
    messages: list[str] = []
    again = pretrain(config, run, pool=pool, resume=True, log=messages.append)
    assert _snapshot(run) == before
    assert again.already_finished and again.steps == first.steps == 6
    assert messages == [f"{run}: the run finished at step 6 already; nothing to do"]


def test_resume_of_a_finished_run_stopped_before_its_weights_writes_them(
    tmp_path: Path, pool: torch.Tensor
) -> None:
    """Killed between its final checkpoint and model.safetensors: resume writes the weights of
    that checkpoint, and trains nothing."""
    run = tmp_path / "run"
    config = tiny_pretrain_config()
    pretrain(config, run, pool=pool, log=quiet)
    final = load_safetensors(run / "model.safetensors")
    (run / "model.safetensors").unlink()
    (run / "encoder.safetensors").unlink()
    rows = (run / "log.csv").read_text()
    result = pretrain(config, run, pool=pool, resume=True, log=quiet)
    assert result.already_finished
    assert (run / "log.csv").read_text() == rows
    again = load_safetensors(run / "model.safetensors")
    assert (run / "encoder.safetensors").is_file()
    for k in final:
        torch.testing.assert_close(again[k], final[k], rtol=0, atol=0, msg=k)


def test_checkpoints_record_whether_the_run_finished(tmp_path: Path, pool: torch.Tensor) -> None:
    run = tmp_path / "run"
    pretrain(tiny_pretrain_config(checkpoint_every=2), run, pool=pool, log=quiet)
    states = {
        int(p.name.removeprefix("step_")): json.loads((p / "state.json").read_text())
        for p in list_checkpoints(run / "checkpoints")
    }
    assert {s: state["finished"] for s, state in states.items()} == {4: False, 6: True}
    assert all(state["world_size"] == 1 for state in states.values())
    assert math.isfinite(states[6]["last_loss"])


def test_a_finished_run_whose_last_checkpoint_is_corrupt_resumes_from_an_older_one_and_finishes(
    tmp_path: Path, pool: torch.Tensor
) -> None:
    """The newest checkpoint says finished but its weights are damaged: the fallback loads an
    older, unfinished checkpoint, which is resumed to the end, not left as a finished run."""
    run = tmp_path / "run"
    config = tiny_pretrain_config(checkpoint_every=2)
    pretrain(config, run, pool=pool, log=quiet)
    final = load_safetensors(run / "model.safetensors")
    newest = list_checkpoints(run / "checkpoints")[-1] / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    result = pretrain(config, run, pool=pool, resume=True, log=quiet)
    assert not result.already_finished and result.steps == config.total_steps == 6
    again = load_safetensors(run / "model.safetensors")
    for k in final:
        torch.testing.assert_close(again[k], final[k], rtol=0, atol=0, msg=k)


# -- --resume with another number of processes -----------------------------------------------------


def _set_state(run: Path, **changes: object) -> None:
    """Edit the newest checkpoint's state.json (not checksummed: only the tensor files are)."""
    path = list_checkpoints(run / "checkpoints")[-1] / "state.json"
    state = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
    path.write_text(json.dumps(state))


def test_resume_with_another_world_size_is_a_clear_error(
    tmp_path: Path, pool: torch.Tensor
) -> None:
    run = tmp_path / "run"
    config = tiny_pretrain_config()
    pretrain(config, run, pool=pool, stop_at_step=2, log=quiet)
    _set_state(run, world_size=2)  # as a run trained by 2 processes under torchrun
    with pytest.raises(CheckpointError) as info:
        pretrain(config, run, pool=pool, resume=True, log=quiet)
    message = str(info.value)
    assert str(run / "checkpoints") in message
    assert "trained with 2 process(es)" in message and "not 1" in message
    assert "with 2 processes in all" in message


def test_a_finished_run_resumed_with_another_world_size_is_left_as_it_is(
    tmp_path: Path, pool: torch.Tensor
) -> None:
    run = tmp_path / "run"
    config = tiny_pretrain_config()
    first = pretrain(config, run, pool=pool, log=quiet)
    _set_state(run, world_size=2)
    before = _snapshot(run)
    result = pretrain(config, run, pool=pool, resume=True, log=quiet)
    assert result.already_finished and _snapshot(run) == before
    # the images of the 2 processes it trained with, not of the 1 it was resumed under
    assert result.images == 2 * first.images


def test_a_finished_older_checkpoint_counts_its_processes_by_their_sampler_states(
    tmp_path: Path, pool: torch.Tensor
) -> None:
    run = tmp_path / "run"
    first = pretrain(tiny_pretrain_config(), run, pool=pool, log=quiet)
    _set_state(run, world_size=None)  # an older checkpoint: one sampler state, one process
    result = pretrain(tiny_pretrain_config(), run, pool=pool, resume=True, log=quiet)
    assert result.already_finished and result.images == first.images == 6 * 5


def test_a_checkpoint_without_the_world_size_resumes_as_before(
    tmp_path: Path, pool: torch.Tensor
) -> None:
    run = tmp_path / "run"
    config = tiny_pretrain_config()
    pretrain(config, run, pool=pool, stop_at_step=2, log=quiet)
    _set_state(run, world_size=None, finished=None, last_loss=None)  # an older checkpoint
    result = pretrain(config, run, pool=pool, resume=True, log=quiet)
    assert result.steps == 6 and not result.already_finished


# -- --resume with other settings ------------------------------------------------------------------


def test_resume_names_each_changed_setting_and_keeps_the_saved_one(
    tmp_path: Path, pool: torch.Tensor
) -> None:
    run = tmp_path / "run"
    pretrain(tiny_pretrain_config(), run, pool=pool, stop_at_step=2, log=quiet)
    messages: list[str] = []
    # device/workers/progress are runtime settings: free to change, not reported
    changed = tiny_pretrain_config(stage2_steps=10, lr=1e-4, workers=1, crop_scale=(0.9, 1.0))
    result = pretrain(changed, run, pool=pool, resume=True, log=messages.append)
    assert result.steps == 6  # the saved 3 + 3 steps
    notes = [m for m in messages if "saved settings" in m]
    assert notes == [
        f"{run / 'config.json'}: resuming with the run's saved settings, not the given ones: "
        "stage2_steps 3 (given 10), lr 0.001 (given 0.0001)"
    ]
    rows = [r for r in csv.DictReader((run / "log.csv").read_text().splitlines()) if r["lr"]]
    assert float(rows[-1]["lr"]) == 1e-3


def test_resume_with_the_same_settings_reports_none(tmp_path: Path, pool: torch.Tensor) -> None:
    run = tmp_path / "run"
    config = tiny_pretrain_config()
    pretrain(config, run, pool=pool, stop_at_step=2, log=quiet)
    messages: list[str] = []
    pretrain(config, run, pool=pool, resume=True, log=messages.append)
    assert not [m for m in messages if "saved settings" in m]


# -- a non-finite loss at the last step ------------------------------------------------------------


def test_a_skipped_last_step_still_checkpoints_and_validates(
    tmp_path: Path, pool: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    import localdisc.engine.pretrain as engine

    real = engine.ld_losses
    training_calls = []

    def nan_at_the_last_step(model, batch, stage, config, **kwargs):
        terms = real(model, batch, stage, config, **kwargs)
        if model.training:
            training_calls.append(stage)
            if len(training_calls) == config.total_steps:
                terms.total = terms.total * float("nan")
        return terms

    monkeypatch.setattr(engine, "ld_losses", nan_at_the_last_step)
    run = tmp_path / "run"
    config = tiny_pretrain_config(checkpoint_every=4, val_every=100)
    result = pretrain(config, run, pool=pool, log=quiet)
    assert (result.steps, result.trained_steps, result.skipped_steps) == (6, 5, 1)
    assert [p.name for p in list_checkpoints(run / "checkpoints")][-1] == "step_00000006"
    rows = list(csv.DictReader((run / "log.csv").read_text().splitlines()))
    assert any(r["step"] == "6" and r["val_loss"] for r in rows)  # the end-of-run validation
    monkeypatch.setattr(engine, "ld_losses", real)
    again = pretrain(config, run, pool=pool, resume=True, log=quiet)
    assert again.already_finished and again.trained_steps == 5


# -- settings that cannot train --------------------------------------------------------------------


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("width", 0, "width must be >= 1, not 0"),
        ("lr", float("nan"), "lr must be > 0 and finite, not nan"),
        ("lr", float("inf"), "lr must be > 0 and finite"),
        ("lr", 0.0, "lr must be > 0"),
        ("max_images", 0, "max_images must be >= 1, not 0"),
        ("max_images", -1, "max_images must be >= 1, not -1"),
        ("val_images", -2, "val_images must be >= 0, not -2"),  # it flipped the split
        ("stage1_seconds", float("nan"), "time budgets must be > 0 seconds and finite, not nan"),
        ("stage2_seconds", float("inf"), "time budgets must be > 0 seconds and finite, not inf"),
        ("stage1_seconds", -1.0, "time budgets must be > 0"),
        # NaN passed "<= 0" checks: every step non-finite, stopped as diverged, lr blamed
        ("center_sigma", float("nan"), "center_sigma must be > 0 and finite, not nan"),
        ("tau", float("nan"), "tau must be > 0 and finite, not nan"),
        ("tau_region", 0.0, "tau_region must be > 0 and finite, not 0.0"),
        ("disc_lr", float("nan"), "disc_lr must be > 0 and finite, not nan"),
        ("region_weight", float("nan"), "region_weight must be >= 0 and finite, not nan"),
        ("entropy_weight", -0.1, "entropy_weight must be >= 0 and finite, not -0.1"),
        ("prior_weight", float("inf"), "prior_weight must be >= 0 and finite, not inf"),
        ("prior_count", 0, "prior_count must be >= 1, not 0"),
    ],
)
def test_config_rejects_settings_that_cannot_train(field: str, value: object, message: str) -> None:
    with pytest.raises(LocaldiscError, match=message):
        tiny_pretrain_config(**{field: value})


def test_reflect_padding_needs_views_that_keep_2_x_2_pixels_in_the_deepest_block() -> None:
    # A 16-px view is 1 x 1 after four poolings, which torch cannot reflect-pad: it failed at
    # the first step with a bare RuntimeError.
    message = r"padding reflect needs size >= 32 with depth 5 \(2 x 2 pixels"
    with pytest.raises(LocaldiscError, match=message):
        tiny_pretrain_config(padding="reflect", size=16)
    tiny_pretrain_config(padding="reflect", size=32)
    tiny_pretrain_config(padding="reflect", size=16, depth=4)
    tiny_pretrain_config(padding="circular", size=16)


@pytest.mark.parametrize("padding", ["zeros", "reflect"])
@pytest.mark.parametrize("size", [0, -16, 8])
def test_an_invalid_size_is_reported_once_without_the_reflect_clause(padding, size) -> None:
    """``--size 0`` blamed "padding reflect" with the default zero padding: the reflect clause is
    for a reflect-padded size that is otherwise valid, not on top of the size's own problem."""
    with pytest.raises(LocaldiscError) as caught:
        tiny_pretrain_config(padding=padding, size=size)
    assert f"size must be a positive multiple of 16, not {size}" in str(caught.value)
    assert "padding reflect" not in str(caught.value)
