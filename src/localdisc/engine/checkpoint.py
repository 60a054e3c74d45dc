"""Safe persistence: atomic writes, safetensors weights (no pickle), verifiable checkpoints.

A checkpoint is a folder ``checkpoints/step_00001000/`` holding ``model.safetensors``,
``optimizer.safetensors`` (the optimizer's tensors, flattened) and ``state.json`` (step, stage, RNG
states, optimizer hyper-parameters and the SHA-256 of each tensor file). It is written into a
temporary folder and renamed into place, so a crash never leaves a half-written checkpoint under
its final name; a corrupt one is detected by its checksums and skipped on resume. One whose
weights hold NaN or inf (a diverged training's, its checksums valid) is refused where a training
loads it (:func:`refuse_diverged`).

A full disk (or exhausted quota) while writing raises :class:`DiskFullError` naming the file;
the temporary file or folder is removed and whatever was there before (the previous
checkpoint, the previous version of the file) is left intact.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from localdisc.errors import CheckpointError, DivergedError, LocaldiscError

if TYPE_CHECKING:
    from localdisc.engine.stop import GracefulStop

CHECKPOINT_PREFIX = "step_"
_ASIDE = ".tmp-old-"  # a checkpoint renamed out of the checkpoint names: replaced, or deleted

_DISK_FULL = {
    errno.ENOSPC: "disk full (no space left on device)",
    errno.EDQUOT: "disk quota exceeded",
}


class DiskFullError(CheckpointError):
    """An output could not be written because the disk (or the user's quota) is full."""


def _disk_full(path: Path, exc: BaseException, kept: str) -> DiskFullError | None:
    """The error to raise for ``exc`` if it means "disk full", else None."""
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        return DiskFullError(
            f"{path}: cannot write: {_DISK_FULL[exc.errno]}; {kept}. "
            "Free some space (or write elsewhere) and run again"
        )
    return None


def _write_file(path: Path, data: bytes) -> None:
    """Write and fsync a new file (inside a temporary folder: no atomicity needed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's umask (only readable by setting it: set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_mode(path: Path, directory: bool = False) -> int:
    """Permissions for ``path`` written through a temporary: the mode of the file it replaces,
    else what ``open`` or ``mkdir`` would give. ``mkstemp``/``mkdtemp`` create their files
    ``0600``/``0700``, which the rename would keep: runs that others on the machine cannot read.
    """
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return (0o777 if directory else 0o666) & ~_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    The file gets the mode of the file it replaces, or the usual one for a new file.
    """
    path = Path(path)
    kept = "the previous version of the file, if any, is unchanged"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        full = _disk_full(path, exc, kept)
        if full is None:
            raise
        raise full from exc
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, _new_mode(path))
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        full = _disk_full(path, exc, kept)
        if full is not None:
            raise full from exc
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: t.detach().contiguous().cpu() for k, t in tensors.items()}


def atomic_save_safetensors(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Save tensors as safetensors through a temporary file and an atomic rename."""
    atomic_write_bytes(path, save(_contiguous(tensors), metadata=metadata))


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing or corrupt file raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file ({exc})") from exc


def check_safetensors(path: str | Path) -> None:
    """Raise :class:`CheckpointError` as :func:`load_safetensors` would for a missing or
    corrupt file, reading only its header (safetensors checks that the header's tensors cover
    the file exactly): cheap enough to check many runs' weights before loading any."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), "pt"):
            pass
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file ({exc})") from exc


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Load weights from safetensors, or from a ``.pt``/``.pth`` file without unpickling code.

    PyTorch files go through ``torch.load(weights_only=True)``, which refuses anything but
    tensors and plain containers.
    """
    path = Path(path)
    if path.suffix in {".pt", ".pth", ".bin", ".ckpt"}:
        if not path.is_file():
            raise CheckpointError(f"{path}: weights file not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # any unpickling refusal or corruption
            raise CheckpointError(
                f"{path}: could not be loaded with torch.load(weights_only=True) ({exc})"
            ) from exc
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise CheckpointError(f"{path}: expected a dict of tensors")
        return state
    return load_safetensors(path)


def few_names(names: list[str]) -> str:
    """The first three of ``names`` and how many more: a short list for an error message."""
    more = f", ... ({len(names) - 3} more)" if len(names) > 3 else ""
    return ", ".join(names[:3]) + more


def nonfinite_names(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The names of ``tensors`` holding NaN or inf: one pass of ``isfinite`` over the floating
    ones (integer ones, step counts, cannot be NaN)."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not v.isfinite().all()]


def tensors_named(names: list[str]) -> str:
    """``names`` of tensors counted and a few named, for an error message: "2 tensors: a, b"."""
    return f"{len(names)} tensor{'s' if len(names) > 1 else ''}: {few_names(names)}"


def refuse_nonfinite(
    tensors: dict[str, torch.Tensor],
    path: str | Path,
    why: str,
    error: type[CheckpointError] = CheckpointError,
) -> None:
    """Raise ``error`` naming ``path`` and a few of ``tensors`` holding NaN or inf
    (:func:`nonfinite_names`), then ``why``: weights that loaded silently and trained or
    predicted nothing."""
    nonfinite = nonfinite_names(tensors)
    if nonfinite:
        raise error(
            f"{path}: weights hold NaN or inf values (in {tensors_named(nonfinite)}); {why}"
        )


def refuse_diverged(
    checkpoint_dir: str | Path,
    state: dict[str, Any],
    tensors: dict[str, dict[str, torch.Tensor]],
    groups: Sequence[str],
    remedy: str,
) -> None:
    """Refuse to continue a loaded checkpoint (``state`` and ``tensors`` of the newest one in
    ``checkpoint_dir``) whose weights, the tensor groups ``groups`` it holds, have NaN or inf
    (:func:`refuse_nonfinite`, raising :class:`DivergedError`): a training that diverged wrote
    them, with valid checksums, and went on from them silently. ``remedy`` says what to do
    instead, after the checkpoint before it, where ``checkpoint_dir`` keeps one."""
    folder = Path(checkpoint_dir) / f"{CHECKPOINT_PREFIX}{state['step']:08d}"  # save_checkpoint's
    before = [p.name for p in list_checkpoints(checkpoint_dir) if p.name < folder.name]
    back = f"delete {folder} to continue from the one before ({before[-1]}), or " if before else ""
    why = f"the training diverged before this checkpoint was written; {back}{remedy}"
    for group in groups:
        if group in tensors:
            refuse_nonfinite(tensors[group], folder / f"{group}.safetensors", why, DivergedError)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 of tensors' shapes and bytes: what a checkpoint records of the data it was
    trained on, so that one of other data is not continued."""
    h = hashlib.sha256()
    for tensor in tensors:
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into flat tensors (for safetensors) and a JSON part."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for idx, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{name}"] = value
            else:
                plain.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "plain": plain}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, entry in meta.get("plain", {}).items():
        state.setdefault(int(idx), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}


class RunFolderLock:
    """An exclusive lock on a run folder for one call (``with``), so that a second process
    started into the same ``--out`` is refused: two runs there mixed one's ``config.json`` with
    the other's weights, and each deleted the other's checkpoint while it was being written.

    The folder itself is locked (``flock`` on its descriptor: no file is added to it), now if it
    exists, else at :meth:`hold` once the caller has made it. Released when the call ends, and
    by the system when its process does. Where ``flock`` does not exist (Windows) or the file
    system does not lock (some NFS, Lustre), it does nothing; the latter is said in ``log``."""

    def __init__(
        self, folder: str | Path, enabled: bool = True, log: Callable[[str], None] | None = None
    ) -> None:
        self.folder, self.enabled, self.fd, self.log = Path(folder), enabled, None, log

    def __enter__(self) -> RunFolderLock:
        if self.folder.is_dir():
            self.hold()
        return self

    def hold(self) -> None:
        """Lock the folder (made by now), unless held; refuse where another process holds it."""
        try:
            import fcntl
        except ImportError:  # Windows
            return
        if not self.enabled or self.fd is not None:
            return
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LocaldiscError(
                f"{self.folder}: another process is running in this folder; wait for it to "
                "end, or choose another --out (nothing was changed)"
            ) from None
        except OSError as exc:  # a file system without flock (some NFS, Lustre): run unlocked
            os.close(fd)
            if self.log is not None:
                self.log(f"note: {self.folder}: not locked ({exc.strerror}): a second run "
                         "started into it would not be refused")  # fmt: skip
            return
        self.fd = fd

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock
            self.fd = None


def save_checkpoint(
    checkpoint_dir: str | Path,
    step: int,
    tensors: dict[str, dict[str, torch.Tensor]],
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write one checkpoint atomically and keep the newest ``keep`` ones.

    Args:
        checkpoint_dir: the run's ``checkpoints/`` folder.
        step: global step, names the folder.
        tensors: file stem -> tensors, e.g. ``{"model": ..., "optimizer": ..., "rng": ...}``.
        state: JSON-serialisable training state; checksums are added to it.
    """
    checkpoint_dir = Path(checkpoint_dir)
    final = checkpoint_dir / f"{CHECKPOINT_PREFIX}{step:08d}"
    kept = f"earlier checkpoints in {checkpoint_dir}, if any, are intact"
    try:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        list_checkpoints(checkpoint_dir)  # puts back one a kill left renamed aside, not deleted
        for stale in checkpoint_dir.glob(".tmp-*"):  # left by a process killed mid-write
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=checkpoint_dir, prefix=".tmp-"))
        os.chmod(tmp, _new_mode(final, directory=True))  # not mkdtemp's 0700
    except OSError as exc:
        full = _disk_full(final, exc, kept)
        if full is None:
            raise
        raise full from exc
    writing = final  # named in a disk-full error: the file as it would be called when done
    replaced = None
    try:
        checksums = {}
        for stem, group in tensors.items():
            writing = final / f"{stem}.safetensors"
            # Serialised here and written by Python: safetensors' own save_file reports a full
            # disk as a SafetensorError without an errno.
            data = save(_contiguous(group))
            _write_file(tmp / writing.name, data)
            checksums[writing.name] = hashlib.sha256(data).hexdigest()
        state = {**state, "step": step, "checksums": checksums}
        writing = final / "state.json"
        _write_file(tmp / writing.name, json.dumps(state, indent=1).encode())
        writing = final
        # the folder's entries too: else after a power cut the renamed folder may lack its files
        _fsync_dir(tmp)
        if final.exists():
            # Renamed aside, not deleted first: a kill while deleting a step of this name (with
            # keep=1, the only one) left no checkpoint. Stopped between the two renames, it is
            # renamed back below; killed there, list_checkpoints renames it back.
            replaced = final.with_name(f"{_ASIDE}{final.name}")
            shutil.rmtree(replaced, ignore_errors=True)
            os.replace(final, replaced)
        os.replace(tmp, final)
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)
    except BaseException as exc:
        if replaced is not None and not final.exists():  # the old one aside, the new one not in
            with contextlib.suppress(OSError):  # else list_checkpoints puts it back
                os.replace(replaced, final)
        shutil.rmtree(tmp, ignore_errors=True)
        full = _disk_full(writing, exc, kept)
        if full is None:
            raise
        raise full from exc
    _fsync_dir(checkpoint_dir)
    for old in list_checkpoints(checkpoint_dir)[:-keep]:
        # Out of the checkpoint names first: a kill mid-delete then leaves a temporary folder
        # (removed by the next save), never a half-deleted step_ folder.
        doomed = old.with_name(f"{_ASIDE}{old.name}")  # a newer one exists: never put back
        try:
            os.replace(old, doomed)
        except OSError:
            continue
        shutil.rmtree(doomed, ignore_errors=True)
    return final


def list_checkpoints(checkpoint_dir: str | Path) -> list[Path]:
    """Checkpoint folders, oldest first (temporary folders of interrupted writes excluded).

    A checkpoint that :func:`save_checkpoint` renamed aside to replace it by one of the same
    step, where a kill came before the new one was renamed in, is renamed back first (where it
    verifies and no newer checkpoint exists): with ``keep=1`` it was the only one, and the next
    save deleted it as a leftover."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return []
    kept = sorted(
        p for p in checkpoint_dir.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
    )
    return _put_back_aside(checkpoint_dir, kept)


def _put_back_aside(checkpoint_dir: Path, kept: list[Path]) -> list[Path]:
    """``kept`` (the checkpoints in ``checkpoint_dir``) with the newest folder renamed aside
    (``.tmp-old-step_N``) renamed back, where it is newer than every one kept and verifies. One
    renamed aside to be deleted (an older one beyond ``keep``) always has a newer one, and is
    left to the next save to delete; so is a damaged one."""
    newest = kept[-1].name if kept else ""
    for aside in sorted(checkpoint_dir.glob(f"{_ASIDE}{CHECKPOINT_PREFIX}*"), reverse=True):
        final = aside.with_name(aside.name.removeprefix(_ASIDE))
        if final.name <= newest or not aside.is_dir():
            continue
        try:
            verify_checkpoint(aside)
            os.replace(aside, final)
        except (CheckpointError, OSError):
            continue
        _fsync_dir(checkpoint_dir)
        return [*kept, final]
    return kept


def newest_state(checkpoint_dir: str | Path) -> dict[str, Any] | None:
    """The ``state.json`` of the newest checkpoint in ``checkpoint_dir`` as written (unverified:
    for saying where a training would continue), or None where there is none or it cannot be
    read."""
    kept = list_checkpoints(checkpoint_dir)
    if not kept:
        return None
    try:
        state = json.loads((kept[-1] / "state.json").read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def newest_position(
    checkpoint_dir: str | Path, describe: Callable[[dict[str, Any]], str]
) -> str | None:
    """Where a training continues from the newest checkpoint in ``checkpoint_dir``: ``describe``
    of its state (:func:`newest_state`), or None where there is none or it is of another shape."""
    state = newest_state(checkpoint_dir)
    try:
        return None if state is None else describe(state)
    except (LookupError, TypeError, ValueError):
        return None


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Return the checkpoint's state if every file matches its checksum, else raise."""
    state_path = path / "state.json"
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: bad JSON, and bytes that are not UTF-8
        raise CheckpointError(f"{state_path}: unreadable ({exc})") from exc
    # state.json has no checksum of its own: a damaged one may still parse.
    if not isinstance(state, dict) or not isinstance(state.get("checksums"), dict):
        raise CheckpointError(f"{state_path}: corrupt (not a checkpoint state with checksums)")
    for name, digest in state["checksums"].items():
        f = path / name
        if not f.is_file() or sha256(f) != digest:
            raise CheckpointError(f"{f}: missing or corrupt (checksum mismatch)")
    return state


def load_latest_checkpoint(
    checkpoint_dir: str | Path, warn: Any = None
) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]] | None:
    """Load the newest valid checkpoint, falling back to older ones when one is corrupt.

    Returns ``(state, tensors)`` or None when there is no checkpoint at all.
    """
    loaded = _load_newest_valid(checkpoint_dir, warn)
    return None if loaded is None else loaded[:2]


def _load_newest_valid(
    checkpoint_dir: str | Path, warn: Any = None
) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]], list[Path]] | None:
    """:func:`load_latest_checkpoint`, and the damaged checkpoints it skipped (those after the
    one it loaded)."""
    candidates = list_checkpoints(checkpoint_dir)
    skipped: list[Path] = []
    for path in reversed(candidates):
        try:
            state = verify_checkpoint(path)
            tensors = {
                name.removesuffix(".safetensors"): load_safetensors(path / name)
                for name in state["checksums"]
            }
        except CheckpointError as exc:
            if warn is not None:
                warn(f"skipping checkpoint {path.name}: {exc}")
            skipped.append(path)
            continue
        return state, tensors, skipped
    if candidates:
        raise CheckpointError(f"{checkpoint_dir}: no valid checkpoint among {len(candidates)}")
    return None


# --- checkpoints of a training that a signal stops and the same call continues ---------------
# The pattern of engine.finetune and engine.pseudo_label: the newest checkpoint only, whose state
# holds under ``key`` a record of what it must match (settings, data hashes); ``describe`` of a
# state says where the training continues from it ("after refine step 4/6").


def remove_checkpoints(checkpoint_dir: str | Path) -> None:
    """Delete the checkpoints in ``checkpoint_dir`` (the folder stays): one that is not
    continued (damaged, or of another training) would otherwise stay "the newest"."""
    for stale in list_checkpoints(checkpoint_dir):
        shutil.rmtree(stale, ignore_errors=True)


def load_resumable(
    checkpoint_dir: str | Path,
    key: str,
    record: dict[str, Any],
    *,
    training: str,
    describe: Callable[[dict[str, Any]], str],
    log: Callable[[str], None],
    weights: Sequence[str] = ("model",),
) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]], list[str]] | None:
    """The newest valid checkpoint in ``checkpoint_dir`` as ``(state, tensors, differ)``:
    ``differ``, the keys of ``record`` that its ``state[key]`` does not match (none: it is of
    this training, and ``log`` hears that the ``training`` continues, and from where; else the
    caller says what happens). None where there is none valid: damaged ones are said in ``log``
    and removed (:func:`remove_checkpoints`), and the training starts over. One of this
    training whose ``weights`` (tensor groups) hold NaN or inf raises :class:`DivergedError`
    (:func:`refuse_diverged`) rather than starting over: the same settings may diverge again."""
    try:
        loaded = _load_newest_valid(checkpoint_dir, warn=log)
    except CheckpointError as exc:  # every one damaged: nothing to continue from
        log(f"{exc}; starting the {training} over")
        loaded = None
    if loaded is None:
        remove_checkpoints(checkpoint_dir)
        return None
    state, tensors, skipped = loaded
    # The damaged ones after it: kept, they stayed "the newest" (save_resumable's keep=1
    # rotation then removed the checkpoint it had just written) and the next start found none.
    for damaged in skipped:
        shutil.rmtree(damaged, ignore_errors=True)
        log(f"removed the damaged checkpoint {damaged.name}")
    saved = state.get(key)
    saved = saved if isinstance(saved, dict) else {}
    differ = [k for k in record if saved.get(k) != record[k]]
    if not differ:
        refuse_diverged(checkpoint_dir, state, tensors, weights,
                        f"delete {checkpoint_dir} to start the {training} over (a lower "
                        "learning rate may keep it from diverging again)")  # fmt: skip
        log(f"continuing the interrupted {training} from its checkpoint ({checkpoint_dir}): "
            f"{describe(state)}")  # fmt: skip
    return state, tensors, differ


def save_resumable(
    stop: GracefulStop,
    checkpoint_dir: str | Path,
    step: int,
    tensors: dict[str, dict[str, torch.Tensor]],
    state: dict[str, Any],
    *,
    what: str,
    describe: Callable[[dict[str, Any]], str],
    log: Callable[[str], None],
) -> None:
    """Write the checkpoint of ``what`` ("refine step 4/6") in place of the one before
    (:func:`save_checkpoint`, ``keep=1``) while ``stop`` defers SIGINT/SIGTERM.

    A second signal waits for the write (a fraction of a second; it cut the write the first one
    asked for), then stops as :func:`stop_at_checkpoint` does. A third one acts at once, for a
    write that hangs: the write is dropped whole, and ``log`` hears that and what is kept."""
    written = False
    try:
        with stop.deferring():
            try:
                save_checkpoint(checkpoint_dir, step, tensors, state, keep=1)
            except KeyboardInterrupt:  # a third one
                newest = list_checkpoints(checkpoint_dir)
                if newest and newest[-1].name == f"{CHECKPOINT_PREFIX}{step:08d}":
                    # In save_checkpoint's tail (after the rename): written all the same.
                    raise _stopped(checkpoint_dir, describe) from None
                # Before it: save_checkpoint removed what it wrote.
                before = newest_position(checkpoint_dir, describe)
                kept = f"the one before is kept ({before})" if before else "none is kept"
                log(f"{checkpoint_dir}: the checkpoint of {what} was not written (stopped again "
                    f"while writing it); {kept}")  # fmt: skip
                raise
            written = True
    except KeyboardInterrupt:
        if not written:
            raise
        raise _stopped(checkpoint_dir, describe) from None  # the held second signal's


def stop_at_checkpoint(
    stop: GracefulStop,
    signum: int,
    checkpoint_dir: str | Path,
    describe: Callable[[dict[str, Any]], str],
) -> NoReturn:
    """Hand ``signum`` on (:meth:`GracefulStop.stop`) once its checkpoint is written in
    ``checkpoint_dir``: the KeyboardInterrupt says where the same call continues."""
    try:
        stop.stop(signum)
    except KeyboardInterrupt:
        raise _stopped(checkpoint_dir, describe) from None


def _stopped(
    checkpoint_dir: str | Path, describe: Callable[[dict[str, Any]], str]
) -> KeyboardInterrupt:
    """The KeyboardInterrupt of a training stopped at its newest checkpoint."""
    where = newest_position(checkpoint_dir, describe)
    where = f" ({where})" if where else ""
    return KeyboardInterrupt(
        f"stopped with its checkpoint in {checkpoint_dir}{where}: the same call continues "
        "from there"
    )
