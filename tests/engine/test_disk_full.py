"""A full disk while writing outputs: a clear error naming the file, earlier outputs intact.

Two ways to fill the disk:

* injected: ``os.fdopen`` (through which every checkpoint, weights file and atomic output is
  written) hands out files whose writes fail with ``ENOSPC`` once a byte budget is spent, as a
  real disk does (a partial write, then the error); ``tempfile.mkstemp`` and ``os.fsync``
  failing are tried too;
* real: a small tmpfs mounted for the test (needs root and permission to mount; skipped with
  the reason otherwise).

Expected: :class:`DiskFullError` (a :class:`CheckpointError`, so the CLI prints one line)
naming the file and "no space left on device"; no temporary file left behind; the previous
checkpoint (or version of the file) still verifies and loads; a run can resume from it once
there is space again.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save

from helpers import tiny_pretrain_config
from localdisc.engine.checkpoint import (
    DiskFullError,
    atomic_save_safetensors,
    atomic_write_bytes,
    list_checkpoints,
    load_latest_checkpoint,
    load_safetensors,
    save_checkpoint,
)
from localdisc.errors import CheckpointError, LocaldiscError

pytestmark = pytest.mark.timeout(120)

NO_SPACE = "no space left on device"


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny models: one thread is as fast, and far faster on a loaded 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- injection


class _FullFile:
    """A writable file that takes ``budget.free`` more bytes, then fails with ENOSPC."""

    def __init__(self, raw: Any, budget: FullDisk) -> None:
        self._raw = raw
        self._budget = budget

    def write(self, data: bytes) -> int:
        room = self._budget.room(len(data))
        if room < len(data):
            self._raw.write(data[:room])  # a real disk takes what fits, then refuses
            self._budget.faults += 1
            raise OSError(self._budget.errno, os.strerror(self._budget.errno))
        return self._raw.write(data)

    def __enter__(self) -> _FullFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._raw.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class FullDisk:
    """Inject a full disk into every write made through ``os.fdopen``.

    ``free``: bytes that still fit (None: unlimited until :attr:`full` is set); ``only``: a
    path fragment, to fill only the files whose path contains it.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, free: int | None = 0) -> None:
        self.free = free
        self.only: str | None = None
        self.errno = errno.ENOSPC
        self.faults = 0
        real = os.fdopen

        def fdopen(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            raw = real(fd, mode, *args, **kwargs)
            if not set(mode) & set("wax+"):
                return raw
            if self.only is not None and self.only not in os.readlink(f"/proc/self/fd/{fd}"):
                return raw
            return _FullFile(raw, self)

        monkeypatch.setattr(os, "fdopen", fdopen)

    def room(self, wanted: int) -> int:
        if self.free is None:
            return wanted
        room = min(wanted, self.free)
        self.free -= room
        return room


def _check_disk_full_error(exc: BaseException, path: Path) -> None:
    assert isinstance(exc, DiskFullError)
    assert isinstance(exc, CheckpointError) and isinstance(exc, LocaldiscError)
    assert str(exc).startswith(f"{path}: ") and NO_SPACE in str(exc), str(exc)
    assert isinstance(exc.__cause__, OSError) and exc.__cause__.errno == errno.ENOSPC


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(".") or "tmp" in p.name)


def _tensors(x: float, n: int = 1000) -> dict[str, dict[str, torch.Tensor]]:
    return {
        "model": {"w": torch.full((n,), x), "b": torch.full((3,), x)},
        "optimizer": {"0.exp_avg": torch.full((n,), -x)},
    }


@pytest.mark.parametrize("fault", ["first write", "partial write", "mkstemp", "fsync"])
def test_atomic_write_disk_full_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    path = tmp_path / "out" / "results.json"
    atomic_write_bytes(path, b'{"old": true}')
    disk = FullDisk(monkeypatch, free=None)
    if fault == "first write":
        disk.free = 0
    elif fault == "partial write":
        disk.free = 5
    elif fault == "mkstemp":

        def mkstemp(*args: Any, **kwargs: Any) -> Any:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    else:

        def fsync(fd: int) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(DiskFullError) as info:
        atomic_write_bytes(path, b'{"new": "a longer text than fits"}')
    _check_disk_full_error(info.value, path)
    assert "previous version of the file" in str(info.value)
    assert path.read_bytes() == b'{"old": true}'
    assert _leftovers(tmp_path) == []


def test_atomic_save_safetensors_disk_full_keeps_loadable_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model_best.safetensors"
    atomic_save_safetensors({"w": torch.ones(100)}, path)
    FullDisk(monkeypatch, free=1000)
    with pytest.raises(DiskFullError) as info:
        atomic_save_safetensors({"w": torch.zeros(1000)}, path)
    _check_disk_full_error(info.value, path)
    torch.testing.assert_close(load_safetensors(path)["w"], torch.ones(100))
    assert _leftovers(tmp_path) == []


def _sizes(tensors: dict[str, dict[str, torch.Tensor]]) -> dict[str, int]:
    return {stem: len(save(group)) for stem, group in tensors.items()}


@pytest.mark.parametrize(
    "where", ["nothing fits", "inside model", "inside optimizer", "state.json"]
)
def test_save_checkpoint_disk_full_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    first = save_checkpoint(tmp_path, 10, _tensors(1.0), {"stage": 1})
    sizes = _sizes(_tensors(2.0))
    free, failing = {
        "nothing fits": (0, "model.safetensors"),
        "inside model": (sizes["model"] // 2, "model.safetensors"),
        "inside optimizer": (sizes["model"] + 100, "optimizer.safetensors"),
        "state.json": (sizes["model"] + sizes["optimizer"] + 10, "state.json"),
    }[where]
    disk = FullDisk(monkeypatch, free=free)
    with pytest.raises(DiskFullError) as info:
        save_checkpoint(tmp_path, 20, _tensors(2.0), {"stage": 1})
    assert disk.faults == 1
    _check_disk_full_error(info.value, tmp_path / "step_00000020" / failing)
    assert "earlier checkpoints" in str(info.value) and "are intact" in str(info.value)
    assert list_checkpoints(tmp_path) == [first]
    assert _leftovers(tmp_path) == []
    state, tensors = load_latest_checkpoint(tmp_path)
    assert state["step"] == 10 and state["stage"] == 1
    torch.testing.assert_close(tensors["model"]["w"], torch.full((1000,), 1.0))

    disk.free = None  # space again: the next checkpoint is written and rotation goes on
    save_checkpoint(tmp_path, 30, _tensors(3.0), {"stage": 1}, keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000030"]


def test_quota_and_other_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = FullDisk(monkeypatch, free=0)
    disk.errno = errno.EDQUOT
    with pytest.raises(DiskFullError, match="disk quota exceeded"):
        save_checkpoint(tmp_path, 1, _tensors(1.0), {})
    disk.errno = errno.EIO  # not a full disk: the OSError is not disguised
    with pytest.raises(OSError) as info:
        atomic_write_bytes(tmp_path / "x.json", b"{}")
    assert not isinstance(info.value, LocaldiscError) and info.value.errno == errno.EIO


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def pool() -> torch.Tensor:
    from localdisc.data.pool import synthetic_pool

    return synthetic_pool(6, "fundus", 48)


def _after_first_checkpoint(monkeypatch: pytest.MonkeyPatch, then: Callable[[], None]) -> None:
    """Call ``then`` once the run's first checkpoint is written."""
    import localdisc.engine.pretrain as engine

    real = engine.save_checkpoint

    def save_then(*args: Any, **kwargs: Any) -> Path:
        path = real(*args, **kwargs)
        then()
        return path

    monkeypatch.setattr(engine, "save_checkpoint", save_then)


def test_pretrain_checkpoint_on_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pool: torch.Tensor
) -> None:
    from localdisc.engine.pretrain import pretrain

    disk = FullDisk(monkeypatch, free=None)

    def fill() -> None:
        disk.free = 0

    _after_first_checkpoint(monkeypatch, fill)
    run = tmp_path / "run"
    with pytest.raises(DiskFullError) as info:
        pretrain(tiny_pretrain_config(checkpoint_every=1), run, pool=pool)
    _check_disk_full_error(info.value, run / "checkpoints" / "step_00000002" / "model.safetensors")
    assert disk.faults == 1
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_00000001"]
    assert _leftovers(run / "checkpoints") == []
    state, tensors = load_latest_checkpoint(run / "checkpoints")
    assert state["step"] == 1 and set(tensors) == {"model", "optimizer", "rng", "log_window"}
    assert "step" in (run / "log.csv").read_text()  # written before the disk filled


def test_cli_reports_a_full_disk_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from localdisc import cli

    folder = _image_folder(tmp_path / "pool")
    out = tmp_path / "run"
    FullDisk(monkeypatch, free=0)
    monkeypatch.setattr(sys, "argv", ["localdisc", "pretrain", "--data", str(folder),
                                      "--out", str(out), *TINY_CLI])  # fmt: skip
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert str(out / "config.json") in lines[0] and NO_SPACE in lines[0]
    assert "Traceback" not in err


TINY_CLI = ["--stage1-steps", "2", "--stage2-steps", "2", "--size", "32", "--batch", "1",
            "--clusters", "4", "--dim", "8", "--device", "cpu", "--checkpoint-every", "1",
            "--workers", "1"]  # fmt: skip


def _image_folder(folder: Path) -> Path:
    from PIL import Image

    from localdisc.data.synthetic import synthetic_fundus

    folder.mkdir(parents=True)
    for i in range(4):
        image = (synthetic_fundus(64, seed=i).image * 255).astype("uint8")
        Image.fromarray(image).save(folder / f"img {i}.png")
    return folder


# ----------------------------------------------------------------------------- real disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """Mount tmpfs file systems of a given size; skip where mounting is not permitted."""
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        where = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
        where.mkdir()
        if sys.platform != "linux" or shutil.which("mount") is None:
            pytest.skip("a real full disk needs Linux and mount(8)")
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            pytest.skip(
                "cannot mount a small tmpfs for a real full disk (needs root and permission "
                f"to mount): {result.stderr.strip() or result.returncode}"
            )
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _resize(where: Path, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True)


def test_real_full_disk_checkpoint_and_atomic_write(small_disk: Callable[[int], Path]) -> None:
    disk = small_disk(256 * 1024)
    big = _tensors(1.0, n=30_000)  # about 240 kB: one checkpoint fits, two do not
    first = save_checkpoint(disk / "checkpoints", 1, big, {"stage": 1})
    used = shutil.disk_usage(disk).used
    with pytest.raises(DiskFullError) as info:
        save_checkpoint(disk / "checkpoints", 2, _tensors(2.0, n=30_000), {"stage": 1})
    assert str(info.value).startswith(str(disk / "checkpoints" / "step_00000002"))
    assert NO_SPACE in str(info.value)
    assert list_checkpoints(disk / "checkpoints") == [first]
    assert _leftovers(disk) == [] and shutil.disk_usage(disk).used == used
    state, tensors = load_latest_checkpoint(disk / "checkpoints")
    assert state["step"] == 1
    torch.testing.assert_close(tensors["model"]["w"], big["model"]["w"])

    disk = small_disk(256 * 1024)  # (the loaded tensors map the old files: a fresh disk)
    path = disk / "weights.safetensors"
    atomic_save_safetensors({"w": torch.ones(40_000)}, path)  # 160 kB: a second copy won't fit
    with pytest.raises(DiskFullError) as info:
        atomic_save_safetensors({"w": torch.zeros(40_000)}, path)
    _check_disk_full_error(info.value, path)
    torch.testing.assert_close(load_safetensors(path)["w"], torch.ones(40_000))
    assert _leftovers(disk) == []


def test_real_full_disk_during_pretrain_then_resume(
    small_disk: Callable[[int], Path], pool: torch.Tensor
) -> None:
    from localdisc.engine.pretrain import pretrain
    from localdisc.models.ld import LDConfig, LDModel

    config = tiny_pretrain_config(checkpoint_every=1)
    model = LDModel(LDConfig(config.modality, config.width, config.dim, config.clusters))
    weights = len(save(model.state_dict()))
    # Room for the step-1 checkpoint (weights and Adam's two moments), not for step 2's.
    disk = small_disk(int(4.5 * weights) + (1 << 20))
    run = disk / "run"
    with pytest.raises(DiskFullError) as info:
        pretrain(config, run, pool=pool)
    assert str(info.value).startswith(str(run / "checkpoints" / "step_00000002"))
    assert NO_SPACE in str(info.value)
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_00000001"]
    assert _leftovers(run / "checkpoints") == []
    assert load_latest_checkpoint(run / "checkpoints")[0]["step"] == 1

    _resize(disk, 12 * weights)  # space again: resume from the step-1 checkpoint
    result = pretrain(config, run, pool=pool, resume=True, stop_at_step=2)
    assert result.steps == 2
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == [
        "step_00000001",
        "step_00000002",
    ]


def test_real_full_disk_cli_one_line(small_disk: Callable[[int], Path], tmp_path: Path) -> None:
    disk = small_disk(512 * 1024)  # config and log fit, the first checkpoint does not
    folder = _image_folder(tmp_path / "pool")
    env = {**os.environ, "COLUMNS": "300", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "localdisc",
            "pretrain",
            "--data",
            str(folder),
            "--out",
            str(disk / "run"),
            *TINY_CLI,
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and NO_SPACE in errors[0], result.stderr
    assert str(disk / "run") in errors[0]


def test_a_full_disk_anywhere_else_is_one_line_at_the_cli(monkeypatch, capsys):
    """A log row or figure that hits a full disk outside the checkpoint writers."""
    import errno

    from localdisc import cli

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/ld/log.csv")

    monkeypatch.setattr(cli, "app", full)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "/runs/ld/log.csv: disk full" in err and "Traceback" not in err
