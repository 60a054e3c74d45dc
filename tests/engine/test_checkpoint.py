import os
import pathlib
import pickle
import stat

import pytest
import torch

from localdisc.engine.checkpoint import (
    atomic_save_safetensors,
    atomic_write_text,
    list_checkpoints,
    load_latest_checkpoint,
    load_weights,
    optimizer_from_flat,
    optimizer_to_flat,
    save_checkpoint,
)
from localdisc.errors import CheckpointError


def _tensors(x: float) -> dict:
    return {"model": {"w": torch.full((3,), x)}}


def test_checkpoints_rotate_and_load_newest(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, _tensors(step), {"stage": 1}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002", "step_00000003"]
    state, tensors = load_latest_checkpoint(tmp_path)
    assert state["step"] == 3 and tensors["model"]["w"][0] == 3


def test_rotation_never_leaves_a_half_deleted_checkpoint(tmp_path, monkeypatch):
    import shutil

    save_checkpoint(tmp_path, 1, _tensors(1), {"stage": 1}, keep=1)
    # A process killed while deleting the old checkpoint: the delete never completes.
    monkeypatch.setattr(shutil, "rmtree", lambda path, ignore_errors=False: None)
    save_checkpoint(tmp_path, 2, _tensors(2), {"stage": 1}, keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002"]
    assert (tmp_path / ".tmp-old-step_00000001").is_dir()  # out of the checkpoint names
    monkeypatch.undo()
    save_checkpoint(tmp_path, 3, _tensors(3), {"stage": 1}, keep=1)  # cleans the leftover
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000003"]


def test_a_step_saved_again_is_never_left_half_deleted(tmp_path, monkeypatch):
    import shutil

    from localdisc.engine import checkpoint

    save_checkpoint(tmp_path, 5, _tensors(1), {"stage": 1}, keep=1)
    rmtree = shutil.rmtree

    def killed_while_deleting(path, ignore_errors=False):
        files = sorted(p for p in pathlib.Path(path).glob("*") if p.is_file())
        if not files:
            return rmtree(path, ignore_errors=ignore_errors)
        files[0].unlink()  # one file gone, then the kill
        raise KeyboardInterrupt

    # Step 5 again (fine-tuning's stop after an epoch's checkpoint at the same step): the old
    # folder was deleted in place, so a kill mid-delete left a broken step_5, the only one.
    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed_while_deleting)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 5, _tensors(2), {"stage": 1}, keep=1)
    monkeypatch.setattr(checkpoint.shutil, "rmtree", rmtree)
    state, tensors = load_latest_checkpoint(tmp_path)
    assert state["step"] == 5 and tensors["model"]["w"][0] == 2


@pytest.mark.parametrize("stop", [KeyboardInterrupt, OSError], ids=["third-signal", "oserror"])
def test_a_step_saved_again_and_stopped_between_the_renames_keeps_the_old_one(
    tmp_path, monkeypatch, stop
):
    """Stopped after the old step_5 was renamed aside and before the new one was renamed in,
    the new one was deleted and the old one left aside: no checkpoint (keep=1)."""
    from localdisc.engine import checkpoint

    save_checkpoint(tmp_path, 5, _tensors(1), {"stage": 1}, keep=1)
    replace = os.replace
    calls = []

    def stopped_at_the_second(src, dst):
        calls.append(pathlib.Path(dst).name)
        if len(calls) == 2:  # step_5 -> .tmp-old-step_5 done; the new one -> step_5 next
            raise stop("stopped")
        return replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", stopped_at_the_second)
    with pytest.raises(stop):
        save_checkpoint(tmp_path, 5, _tensors(2), {"stage": 1}, keep=1)
    monkeypatch.setattr(checkpoint.os, "replace", replace)
    assert calls[0] == ".tmp-old-step_00000005"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000005"]
    state, tensors = load_latest_checkpoint(tmp_path)
    assert state["step"] == 5 and tensors["model"]["w"][0] == 1  # the old one, whole


def test_a_step_renamed_aside_by_a_killed_save_is_put_back(tmp_path):
    """A kill (SIGKILL) between the two renames of a step saved again leaves the only checkpoint
    as .tmp-old-step_N: resume found none, and the next save deleted it as a leftover."""
    aside = tmp_path / ".tmp-old-step_00000005"
    save_checkpoint(tmp_path, 5, _tensors(1), {"stage": 1}, keep=1).rename(aside)
    (tmp_path / ".tmp-killed").mkdir()  # the new one, not renamed in
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000005"]
    state, tensors = load_latest_checkpoint(tmp_path)
    assert state["step"] == 5 and tensors["model"]["w"][0] == 1
    # and found by a save that comes first: kept (keep=2), not deleted with the leftovers
    (tmp_path / "step_00000005").rename(aside)
    save_checkpoint(tmp_path, 6, _tensors(2), {"stage": 1}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000005", "step_00000006"]


def test_a_checkpoint_renamed_aside_to_be_deleted_is_not_put_back(tmp_path):
    # A pruned one (killed after its rename: a newer one exists) and a damaged one with no newer
    # one: both left to the next save to delete.
    first, newest, damaged = (
        save_checkpoint(tmp_path, s, _tensors(s), {}, keep=3) for s in (1, 2, 3)
    )
    first.rename(tmp_path / ".tmp-old-step_00000001")
    (damaged / "model.safetensors").unlink()  # half deleted
    damaged.rename(tmp_path / ".tmp-old-step_00000003")
    assert list_checkpoints(tmp_path) == [newest]
    assert load_latest_checkpoint(tmp_path)[0]["step"] == 2
    assert (tmp_path / ".tmp-old-step_00000001").is_dir()
    assert (tmp_path / ".tmp-old-step_00000003").is_dir()
    save_checkpoint(tmp_path, 4, _tensors(4), {}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000002", "step_00000004"]


def test_corrupt_checkpoint_falls_back_to_previous(tmp_path):
    save_checkpoint(tmp_path, 1, _tensors(1), {})
    newest = save_checkpoint(tmp_path, 2, _tensors(2), {})
    data = (newest / "model.safetensors").read_bytes()
    (newest / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    warnings = []
    state, tensors = load_latest_checkpoint(tmp_path, warn=warnings.append)
    assert state["step"] == 1 and tensors["model"]["w"][0] == 1
    assert "checksum" in warnings[0]


@pytest.mark.parametrize(
    "damage",
    [b"\x93\xff\x00garbage", b"[1, 2]", b'{"step": 2}', b'{"checksums": 3}'],
    ids=["not-utf8", "not-an-object", "no-checksums", "bad-checksums"],
)
def test_a_damaged_state_file_falls_back_to_the_previous_checkpoint(tmp_path, damage):
    save_checkpoint(tmp_path, 1, _tensors(1), {})
    newest = save_checkpoint(tmp_path, 2, _tensors(2), {})
    (newest / "state.json").write_bytes(damage)
    warnings = []
    state, tensors = load_latest_checkpoint(tmp_path, warn=warnings.append)
    assert state["step"] == 1 and tensors["model"]["w"][0] == 1
    assert "step_00000002" in warnings[0] and "state.json" in warnings[0]


def test_no_valid_checkpoint_is_an_error(tmp_path):
    only = save_checkpoint(tmp_path, 1, _tensors(1), {})
    (only / "state.json").write_text("{")
    with pytest.raises(CheckpointError, match="no valid checkpoint"):
        load_latest_checkpoint(tmp_path)
    assert load_latest_checkpoint(tmp_path / "absent") is None


def test_interrupted_write_leaves_no_checkpoint(tmp_path, monkeypatch):
    import localdisc.engine.checkpoint as ckpt

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 5, _tensors(5), {})
    assert list_checkpoints(tmp_path) == []
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())


def test_optimizer_state_round_trips_through_safetensors():
    p = torch.nn.Parameter(torch.randn(4))
    opt = torch.optim.Adam([p], lr=0.1)
    p.grad = torch.randn(4)
    opt.step()
    tensors, meta = optimizer_to_flat(opt)
    opt2 = torch.optim.Adam([torch.nn.Parameter(p.detach().clone())], lr=0.5)
    opt2.load_state_dict(optimizer_from_flat(tensors, meta))
    assert opt2.param_groups[0]["lr"] == 0.1
    torch.testing.assert_close(
        opt2.state[opt2.param_groups[0]["params"][0]]["exp_avg"], opt.state[p]["exp_avg"]
    )


def test_pickled_weights_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"w": Evil()}, protocol=2))
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_weights(path)
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    assert load_weights(good)["w"].sum() == 2
    atomic_save_safetensors({"w": torch.ones(2)}, tmp_path / "w.safetensors")
    assert load_weights(tmp_path / "w.safetensors")["w"].sum() == 2


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_atomic_writes_get_the_usual_permissions(tmp_path):
    # mkstemp/mkdtemp create 0600/0700: renamed into place, others could not read a run.
    old_umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "config.json", "{}")
        atomic_save_safetensors({"w": torch.ones(2)}, tmp_path / "model.safetensors")
        folder = save_checkpoint(tmp_path / "checkpoints", 1, _tensors(1), {})
        os.chmod(tmp_path / "config.json", 0o640)
        atomic_write_text(tmp_path / "config.json", "{}")  # a rewrite keeps the file's mode
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "model.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "config.json").stat().st_mode) == 0o640


def test_check_safetensors_reads_the_header_only_and_names_a_damaged_file(tmp_path):
    from safetensors.torch import save_file

    from localdisc.engine.checkpoint import check_safetensors

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.rand(64, 64)}, str(path))
    check_safetensors(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a copy cut short
    with pytest.raises(CheckpointError, match=r"w\.safetensors: not a valid safetensors file"):
        check_safetensors(path)
    with pytest.raises(CheckpointError, match="not found"):
        check_safetensors(tmp_path / "none.safetensors")


def test_a_third_signal_after_the_rename_says_the_checkpoint_is_written(tmp_path, monkeypatch):
    """A third signal in save_checkpoint's tail (the fsync after the rename) was said as "not
    written; the one before is kept (step 3)", naming the new checkpoint as the one before."""
    import localdisc.engine.checkpoint as checkpoint
    from localdisc.engine.stop import GracefulStop

    def interrupted(folder):
        if not folder.name.startswith(".tmp-"):  # the temporary folder's is before the rename
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "_fsync_dir", interrupted)
    logged: list[str] = []
    with pytest.raises(KeyboardInterrupt, match=r"stopped with its checkpoint in .* \(step 3\)"):
        checkpoint.save_resumable(GracefulStop(), tmp_path, 3, {"model": {"w": torch.zeros(1)}},
                                  {}, what="step 3", describe=lambda s: f"step {s['step']}",
                                  log=logged.append)  # fmt: skip
    assert logged == []
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step_00000003"]


def test_the_temporary_folder_is_synced_with_its_files_before_the_rename(tmp_path, monkeypatch):
    # Its files were fsynced but not its entries: after a power cut the renamed folder could be
    # missing them (from reading; the order is what can be checked here).
    import localdisc.engine.checkpoint as checkpoint

    synced: list[tuple[str, list[str]]] = []
    real = checkpoint._fsync_dir

    def record(folder):
        synced.append((folder.name, sorted(p.name for p in folder.iterdir())))
        real(folder)

    monkeypatch.setattr(checkpoint, "_fsync_dir", record)
    save_checkpoint(tmp_path, 3, _tensors(1.0), {})
    assert synced[0][0].startswith(".tmp-") and synced[0][1] == ["model.safetensors", "state.json"]
    assert synced[1] == (tmp_path.name, ["step_00000003"])


def test_a_folder_the_file_system_cannot_lock_runs_unlocked_and_says_so(tmp_path, monkeypatch):
    # Some NFS and Lustre mounts have no flock: every run stopped with a bare OSError, then ran
    # unlocked without a word (reviewers).
    import errno
    import fcntl

    from localdisc.engine.checkpoint import RunFolderLock

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    said: list[str] = []
    with RunFolderLock(tmp_path, log=said.append) as lock:
        assert lock.fd is None
    assert said == [f"note: {tmp_path}: not locked (No locks available): a second run started "
                    "into it would not be refused"]  # fmt: skip


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=str)
def test_weights_holding_inf_are_refused_as_those_holding_nan_are(bad):
    # A diverged training's weights hold inf as often as NaN: both trained or predicted nothing.
    from localdisc.engine.checkpoint import nonfinite_names, refuse_nonfinite

    tensors = {"ok": torch.ones(2), "w": torch.tensor([1.0, bad]), "count": torch.tensor([7])}
    assert nonfinite_names(tensors) == ["w"]
    with pytest.raises(CheckpointError, match=r"^w\.safetensors: weights hold NaN or inf values "
                       r"\(in 1 tensor: w\); why$"):  # fmt: skip
        refuse_nonfinite(tensors, "w.safetensors", "why")


def test_a_lightning_checkpoint_loads_its_state_dict(tmp_path):
    # A PyTorch Lightning .ckpt holds the weights under "state_dict", beside plain entries.
    path = tmp_path / "encoder.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 3}, path)
    weights = load_weights(path)
    assert list(weights) == ["w"] and weights["w"].sum() == 2


def test_newest_state_is_the_newest_checkpoints(tmp_path):
    from localdisc.engine.checkpoint import newest_position, newest_state

    assert newest_state(tmp_path) is None
    for step in (100, 200):
        save_checkpoint(tmp_path, step, _tensors(step), {"stage": step // 100}, keep=2)
    assert len(list_checkpoints(tmp_path)) == 2
    assert newest_state(tmp_path)["step"] == 200
    assert newest_position(tmp_path, lambda s: f"stage {s['stage']}") == "stage 2"


def test_a_diverged_checkpoint_names_the_one_before_only_where_there_is_one(tmp_path):
    from localdisc.engine.checkpoint import refuse_diverged
    from localdisc.errors import DivergedError

    def refused(folder: pathlib.Path) -> str:
        state, tensors = load_latest_checkpoint(folder)
        with pytest.raises(DivergedError) as caught:
            refuse_diverged(folder, state, tensors, ["model"], "start over")
        return str(caught.value)

    newest = save_checkpoint(tmp_path / "one", 2, _tensors(float("nan")), {})
    assert refused(tmp_path / "one") == (
        f"{newest / 'model.safetensors'}: weights hold NaN or inf values (in 1 tensor: w); the "
        "training diverged before this checkpoint was written; start over"
    )
    save_checkpoint(tmp_path / "two", 1, _tensors(1), {})
    newest = save_checkpoint(tmp_path / "two", 2, _tensors(float("inf")), {})
    assert refused(tmp_path / "two") == (
        f"{newest / 'model.safetensors'}: weights hold NaN or inf values (in 1 tensor: w); the "
        f"training diverged before this checkpoint was written; delete {newest} to continue "
        "from the one before (step_00000001), or start over"
    )
