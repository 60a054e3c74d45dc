"""Checkpoint behaviours a mutation review found unguarded: every file's checksum is checked, a
missing file falls back like a corrupt one, damaged checkpoints of a resumable training are
removed, rotation keeps the newest ``keep`` by step, and the helpers' refusals name the file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal

import pytest
import torch

from localdisc.engine import checkpoint
from localdisc.engine.checkpoint import (
    RunFolderLock,
    few_names,
    list_checkpoints,
    load_latest_checkpoint,
    load_resumable,
    load_safetensors,
    load_weights,
    newest_position,
    newest_state,
    optimizer_from_flat,
    optimizer_to_flat,
    refuse_diverged,
    remove_checkpoints,
    save_checkpoint,
    save_resumable,
    stop_at_checkpoint,
    tensor_digest,
    tensors_named,
    verify_checkpoint,
)
from localdisc.engine.stop import GracefulStop
from localdisc.errors import CheckpointError, DivergedError, LocaldiscError

GROUPS = ("model", "optimizer", "rng")


def _groups(x: float) -> dict[str, dict[str, torch.Tensor]]:
    """Three tensor groups, as a training saves them (weights, optimizer, RNG states)."""
    return {
        "model": {"w": torch.full((3,), x)},
        "optimizer": {"0.exp_avg": torch.full((3,), x + 0.5)},
        "rng": {"cpu": torch.tensor([int(x)], dtype=torch.int64)},
    }


def _flip_last_byte(path) -> None:
    """Change one byte of the last tensor's data: the file still parses as safetensors, so only
    its checksum tells that it is not what was written (bit rot, a bad copy)."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _describe(state: dict) -> str:
    return f"step {state['step']}"


# --- every file of a checkpoint is verified (survivor: only the first group was) ---------------


def test_the_state_records_a_checksum_of_every_file_as_written(tmp_path):
    """The checksums are what resume trusts: one missing for any group leaves that file
    unchecked, and a group left out of them is not even loaded."""
    caller_state = {"stage": 1}
    folder = save_checkpoint(tmp_path, 7, _groups(1.0), caller_state)
    state = json.loads((folder / "state.json").read_text())
    files = [f"{g}.safetensors" for g in GROUPS]
    assert state["checksums"] == {
        name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in files
    }
    assert state["step"] == 7 and state["stage"] == 1
    assert caller_state == {"stage": 1}  # the caller's dict is not changed
    assert verify_checkpoint(folder) == state
    loaded_state, tensors = load_latest_checkpoint(tmp_path)
    assert loaded_state == state and set(tensors) == set(GROUPS)
    torch.testing.assert_close(tensors["optimizer"]["0.exp_avg"], torch.full((3,), 1.5))
    assert tensors["rng"]["cpu"].dtype == torch.int64


@pytest.mark.parametrize("group", GROUPS)
def test_a_changed_byte_in_any_file_falls_back_to_the_checkpoint_before(tmp_path, group):
    """A flipped byte parses as valid safetensors: only the checksum catches it, and it must be
    checked for the optimizer's and RNG files too, not the first group alone (a resume would
    continue with a wrong optimizer state silently)."""
    save_checkpoint(tmp_path, 1, _groups(1.0), {})
    newest = save_checkpoint(tmp_path, 2, _groups(2.0), {})
    damaged = newest / f"{group}.safetensors"
    _flip_last_byte(damaged)
    load_safetensors(damaged)  # still readable: the checksum is the only guard
    with pytest.raises(CheckpointError, match=rf"{group}\.safetensors: missing or corrupt"):
        verify_checkpoint(newest)
    warnings: list[str] = []
    state, tensors = load_latest_checkpoint(tmp_path, warn=warnings.append)
    assert state["step"] == 1 and tensors["model"]["w"][0] == 1
    assert len(warnings) == 1 and "step_00000002" in warnings[0]
    assert f"{group}.safetensors" in warnings[0] and "checksum" in warnings[0]


# --- a missing file is a damaged checkpoint, not a bare FileNotFoundError ----------------------


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors", "state.json"])
def test_a_missing_file_falls_back_to_the_checkpoint_before(tmp_path, name):
    """A half-copied or half-deleted checkpoint: resume goes on from the one before, and with
    none before it is the documented CheckpointError, not a FileNotFoundError traceback."""
    save_checkpoint(tmp_path / "two", 1, _groups(1.0), {})
    newest = save_checkpoint(tmp_path / "two", 2, _groups(2.0), {})
    (newest / name).unlink()
    warnings: list[str] = []
    state, _ = load_latest_checkpoint(tmp_path / "two", warn=warnings.append)
    assert state["step"] == 1
    assert "step_00000002" in warnings[0] and name in warnings[0]
    only = save_checkpoint(tmp_path / "one", 1, _groups(1.0), {})
    (only / name).unlink()
    with pytest.raises(CheckpointError, match="no valid checkpoint among 1"):
        load_latest_checkpoint(tmp_path / "one")  # no warn: skipped quietly, then refused


def test_a_checksummed_file_replaced_by_a_folder_is_damaged(tmp_path):
    folder = save_checkpoint(tmp_path, 1, _groups(1.0), {})
    (folder / "rng.safetensors").unlink()
    (folder / "rng.safetensors").mkdir()
    with pytest.raises(CheckpointError, match=r"rng\.safetensors: missing or corrupt"):
        verify_checkpoint(folder)


# --- a resumable training removes what it cannot continue (survivors: not removed) -------------


def test_a_resumable_training_removes_its_damaged_checkpoint_and_says_so(tmp_path):
    """load_resumable: "damaged ones are said in log and removed": left there, the damaged one
    stayed "the newest" (where a stop said the training would continue) and was skipped again
    at every start."""
    folder = tmp_path / "refine-checkpoint"
    only = save_checkpoint(folder, 4, _groups(1.0), {"finetune": {"lr": 1}}, keep=1)
    _flip_last_byte(only / "optimizer.safetensors")
    (folder / "notes.txt").write_text("kept")  # not a checkpoint: not removed
    logged: list[str] = []
    loaded = load_resumable(folder, "finetune", {"lr": 1}, training="fine-tuning",
                            describe=_describe, log=logged.append)  # fmt: skip
    assert loaded is None
    assert logged[0].startswith("skipping checkpoint step_00000004: ")
    assert logged[1] == f"{folder}: no valid checkpoint among 1; starting the fine-tuning over"
    assert list_checkpoints(folder) == [] and not only.exists()
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]  # the folder stays


def test_a_damaged_checkpoint_after_the_one_continued_is_removed(tmp_path):
    """A damaged newest checkpoint and a sound one before it (a kill before the rotation, then
    a bad copy): kept, the damaged one stayed "the newest", so save_resumable's keep=1 rotation
    removed the checkpoint it had just written and the next start found none valid."""
    folder = tmp_path / "checkpoints"
    save_checkpoint(folder, 1, _groups(1.0), {"finetune": {"lr": 1}}, keep=2)
    newer = save_checkpoint(folder, 3, _groups(3.0), {"finetune": {"lr": 1}}, keep=2)
    _flip_last_byte(newer / "model.safetensors")
    logged: list[str] = []
    state, _, differ = load_resumable(folder, "finetune", {"lr": 1}, training="fine-tuning",
                                      describe=_describe, log=logged.append)  # fmt: skip
    assert (state["step"], differ) == (1, [])
    assert "removed the damaged checkpoint step_00000003" in logged and not newer.exists()
    with GracefulStop() as stop:
        save_resumable(stop, folder, 2, _groups(2.0), {"finetune": {"lr": 1}}, what="step 2",
                       describe=_describe, log=logged.append)  # fmt: skip
    assert [p.name for p in list_checkpoints(folder)] == ["step_00000002"]
    assert load_latest_checkpoint(folder)[0]["step"] == 2
    # The one continued is never taken for a damaged one (a sound copy, listed after its step).
    shutil.copytree(folder / "step_00000002", folder / "step_00000002_copy")
    logged.clear()
    load_resumable(folder, "finetune", {"lr": 1}, training="fine-tuning", describe=_describe,
                   log=logged.append)  # fmt: skip
    assert (folder / "step_00000002_copy").is_dir() and not any("removed" in m for m in logged)


def test_remove_checkpoints_deletes_every_checkpoint_and_keeps_the_folder(tmp_path):
    for step in (1, 2):
        save_checkpoint(tmp_path / "c", step, _groups(step), {}, keep=2)
    remove_checkpoints(tmp_path / "c")
    assert (tmp_path / "c").is_dir() and list(tmp_path.joinpath("c").iterdir()) == []
    remove_checkpoints(tmp_path / "absent")  # nothing to remove: no error


def test_a_resumable_training_continues_only_a_checkpoint_of_itself(tmp_path):
    """``differ`` names what does not match; only a match is said as continued and checked for
    NaN weights (a mismatch is the caller's to refuse or start over, and deletes nothing)."""
    logged: list[str] = []

    def load(record, weights=("model",)):
        return load_resumable(tmp_path, "finetune", record, training="fine-tuning",
                              describe=_describe, log=logged.append, weights=weights)  # fmt: skip

    assert load({"lr": 1}) is None and logged == []  # none at all: nothing said
    save_checkpoint(tmp_path, 3, _groups(1.0), {"finetune": {"lr": 1, "images": "a"}})
    state, tensors, differ = load({"lr": 1, "images": "a"})
    assert state["step"] == 3 and set(tensors) == set(GROUPS) and differ == []
    assert logged == [
        f"continuing the interrupted fine-tuning from its checkpoint ({tmp_path}): step 3"
    ]
    logged.clear()
    assert load({"lr": 2, "images": "a", "size": 32})[2] == ["lr", "size"]
    assert logged == [] and len(list_checkpoints(tmp_path)) == 1
    save_checkpoint(tmp_path, 4, _groups(1.0), {"finetune": "not a record"})
    assert load({"lr": 1})[2] == ["lr"]  # a state of another shape matches nothing


def test_nan_weights_of_this_training_are_refused_and_only_in_the_groups_named(tmp_path):
    groups = _groups(1.0)
    groups["best"] = {"w": torch.tensor([float("nan")])}
    save_checkpoint(tmp_path, 2, groups, {"k": {"a": 1}})

    def load(record, weights):
        return load_resumable(tmp_path, "k", record, training="training", describe=_describe,
                              log=lambda m: None, weights=weights)  # fmt: skip

    assert load({"a": 1}, ("model",))[2] == []  # NaN in a group not named: not refused
    with pytest.raises(DivergedError, match=r"best\.safetensors: weights hold NaN"):
        load({"a": 1}, ("model", "best"))
    assert load({"a": 2}, ("model", "best"))[2] == ["a"]  # of another training: not refused
    assert len(list_checkpoints(tmp_path)) == 1  # a refusal deletes nothing


def test_refuse_diverged_skips_groups_the_checkpoint_does_not_hold(tmp_path):
    state, tensors = {"step": 1}, {"model": {"w": torch.ones(2)}}
    refuse_diverged(tmp_path, state, tensors, ["model", "discriminator"], "start over")


# --- rotation and ordering ----------------------------------------------------------------------


@pytest.mark.parametrize("keep", [1, 3])
def test_rotation_keeps_the_newest_keep_checkpoints_by_step(tmp_path, keep):
    """Steps 9, 10, 100, 1000: named zero-padded so that the name order is the step order (as a
    plain number, step_9 sorted after step_1000 and the newest would be deleted)."""
    steps = [9, 10, 100, 1000]
    for step in steps:
        save_checkpoint(tmp_path, step, _groups(step), {}, keep=keep)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == [f"step_{s:08d}" for s in steps[-keep:]]
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # nothing else left behind
    state, tensors = load_latest_checkpoint(tmp_path)
    assert state["step"] == 1000 and tensors["model"]["w"][0] == 1000


def test_list_checkpoints_lists_only_checkpoint_folders_oldest_first(tmp_path):
    assert list_checkpoints(tmp_path / "absent") == []
    for step in (20, 3, 100):
        save_checkpoint(tmp_path, step, _groups(1.0), {}, keep=5)
    (tmp_path / "step_00000500").write_text("a file, not a checkpoint")
    (tmp_path / ".tmp-abc").mkdir()  # an interrupted write
    (tmp_path / "other").mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "step_00000003", "step_00000020", "step_00000100"
    ]  # fmt: skip


def test_newest_state_of_an_unreadable_checkpoint_is_none(tmp_path):
    """Where a training would continue is said from the newest state.json unverified; one that
    cannot be read says nothing rather than failing the message."""
    newest = save_checkpoint(tmp_path, 2, _groups(1.0), {"stage": 2})
    assert newest_position(tmp_path, lambda s: s["missing"]) is None  # describe's KeyError
    (newest / "state.json").write_text("[1, 2]")
    assert newest_state(tmp_path) is None
    (newest / "state.json").write_text("{")
    assert newest_state(tmp_path) is None
    assert newest_position(tmp_path, _describe) is None
    (newest / "state.json").unlink()
    assert newest_state(tmp_path) is None


# --- loading weights ----------------------------------------------------------------------------


def test_load_weights_names_a_missing_or_damaged_file(tmp_path):
    for name in ("absent.pt", "absent.pth", "absent.bin", "absent.safetensors"):
        with pytest.raises(CheckpointError, match=rf"{name}: weights file not found"):
            load_weights(tmp_path / name)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors at all")
    with pytest.raises(CheckpointError, match=r"bad\.safetensors: not a valid safetensors"):
        load_weights(bad)
    with pytest.raises(CheckpointError, match=r"bad\.safetensors: not a valid safetensors"):
        load_safetensors(bad)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointError, match=r"garbage\.pth: could not be loaded"):
        load_weights(garbage)


@pytest.mark.parametrize(
    "content",
    [[torch.ones(2)], {"w": torch.ones(2), "epoch": 3}, {"state_dict": [torch.ones(2)]}],
    ids=["a-list", "a-plain-entry", "a-state-dict-list"],
)
def test_a_pytorch_file_that_is_not_a_dict_of_tensors_is_refused(tmp_path, content):
    """A file of other content loaded "successfully" failed later in load_state_dict, far from
    the file's name."""
    path = tmp_path / "w.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=r"w\.pt: expected a dict of tensors"):
        load_weights(path)


def test_a_bin_file_loads_through_torch_load(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.full((2,), 3.0)}, path)
    assert load_weights(path)["w"].tolist() == [3.0, 3.0]


# --- small helpers ------------------------------------------------------------------------------


def test_optimizer_state_that_is_not_a_tensor_round_trips():
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.ones(2)
    opt.step()
    opt.state[p]["count"] = 3  # a plain value beside the tensors
    tensors, meta = optimizer_to_flat(opt)
    assert set(tensors) == {"0.momentum_buffer"} and meta["plain"] == {"0": {"count": 3}}
    meta = json.loads(json.dumps(meta))  # as state.json holds it
    state = optimizer_from_flat(tensors, meta)
    assert state["state"][0]["count"] == 3
    torch.testing.assert_close(
        state["state"][0]["momentum_buffer"], opt.state[p]["momentum_buffer"]
    )
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.5, momentum=0.9)
    opt2.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == 0.1


def test_the_data_digest_tells_shapes_and_values_apart():
    """A checkpoint records the digest of its data: the same bytes in another shape, or other
    values, are other data."""
    x = torch.arange(6.0)
    assert tensor_digest(x) == tensor_digest(x.clone())
    assert tensor_digest(x) != tensor_digest(x.reshape(2, 3))
    assert tensor_digest(x) != tensor_digest(x + 1)
    assert tensor_digest(x, x) != tensor_digest(x)


def test_error_messages_name_a_few_tensors_and_count_the_rest():
    assert few_names(["a", "b", "c"]) == "a, b, c"
    assert few_names(list("abcde")) == "a, b, c, ... (2 more)"
    assert tensors_named(["w"]) == "1 tensor: w"
    assert tensors_named(list("abcd")) == "4 tensors: a, b, c, ... (1 more)"


def test_a_run_folder_is_locked_against_a_second_holder(tmp_path):
    """A second run into the same --out mixed the two runs' files: it is refused while the
    first holds the folder, and may start once the first ends."""
    missing = tmp_path / "later"
    with RunFolderLock(tmp_path) as first:
        assert first.fd is not None
        with pytest.raises(LocaldiscError, match="another process is running in this folder"):
            RunFolderLock(tmp_path).hold()
        with RunFolderLock(tmp_path, enabled=False) as off:  # --no-lock: not checked
            off.hold()
            assert off.fd is None
    with RunFolderLock(tmp_path) as again:
        assert again.fd is not None
    assert again.fd is None  # released on exit
    with RunFolderLock(missing) as lock:  # made by the caller after the start
        assert lock.fd is None
        missing.mkdir()
        lock.hold()
        assert lock.fd is not None
        with pytest.raises(LocaldiscError):
            RunFolderLock(missing).__enter__()


# --- a stop at a checkpoint ---------------------------------------------------------------------


def test_a_stop_at_a_written_checkpoint_says_where_the_same_call_continues(tmp_path):
    save_checkpoint(tmp_path, 5, _groups(1.0), {})
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt) as caught:
            stop_at_checkpoint(stop, stop.signum, tmp_path, _describe)
    assert str(caught.value) == (
        f"stopped with its checkpoint in {tmp_path} (step 5): the same call continues from there"
    )


def test_a_second_signal_during_save_resumable_stops_once_the_checkpoint_is_written(
    tmp_path, monkeypatch
):
    """The second Ctrl-C waits for the write the first one asked for, then stops, saying the
    checkpoint is written (keep=1: the one before is replaced)."""
    save_checkpoint(tmp_path, 1, _groups(1.0), {}, keep=1)
    real = checkpoint.save_checkpoint
    calls: list[int] = []

    def second_signal_while_writing(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        calls.append(kwargs["keep"])
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_checkpoint", second_signal_while_writing)
    logged: list[str] = []
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # the first: a request to stop
        with pytest.raises(KeyboardInterrupt, match=r"stopped with its checkpoint in .*\(step 2\)"):
            save_resumable(stop, tmp_path, 2, _groups(2.0), {}, what="step 2",
                           describe=_describe, log=logged.append)  # fmt: skip
    assert calls == [1] and logged == []
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002"]
    with GracefulStop() as stop:  # no signal: written, nothing raised
        save_resumable(stop, tmp_path, 3, _groups(3.0), {}, what="step 3", describe=_describe,
                       log=logged.append)  # fmt: skip
    assert calls == [1, 1] and logged == []
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003"]


@pytest.mark.parametrize("before", [True, False], ids=["one-before", "none-before"])
def test_a_third_signal_during_save_resumable_drops_the_write_and_says_what_is_kept(
    tmp_path, monkeypatch, before
):
    """A write that hangs: the third Ctrl-C stops at once, the new checkpoint is not written,
    and the log says which one the same call continues from (not "stopped with its
    checkpoint", which would name the new one)."""
    if before:
        save_checkpoint(tmp_path, 1, _groups(1.0), {}, keep=1)

    def hanging_write(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # the second: held
        os.kill(os.getpid(), signal.SIGINT)  # the third: raises here, nothing written
        raise AssertionError("the third signal did not act")

    monkeypatch.setattr(checkpoint, "save_checkpoint", hanging_write)
    logged: list[str] = []
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt) as caught:
            save_resumable(stop, tmp_path, 2, _groups(2.0), {}, what="step 2",
                           describe=_describe, log=logged.append)  # fmt: skip
    assert str(caught.value) == ""  # Python's own, handed on as it is
    kept = "the one before is kept (step 1)" if before else "none is kept"
    assert logged == [f"{tmp_path}: the checkpoint of step 2 was not written (stopped again "
                      f"while writing it); {kept}"]  # fmt: skip
    assert [p.name for p in list_checkpoints(tmp_path)] == (["step_00000001"] if before else [])
