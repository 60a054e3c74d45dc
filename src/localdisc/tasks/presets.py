"""LD pre-training runs that benchmarks make themselves (the init or model ``ld``), and the
benchmarks' memory of a run that diverged."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from localdisc.engine.checkpoint import atomic_write_text
from localdisc.errors import CheckpointError, DivergedError, LocaldiscError

if TYPE_CHECKING:
    from localdisc.engine.pretrain import PretrainConfig

#: A few steps on generated fundus images at 64 x 64: what ``--quick`` benchmarks pre-train.
QUICK_PRETRAIN: dict[str, Any] = {
    "data": ["synthetic_fundus:8"], "modality": "fundus", "stage1_steps": 3, "stage2_steps": 3,
    "batch": 1, "size": 64, "workers": 1, "val_images": 1,
}  # fmt: skip


def refuse_device(quick: bool, cpu_scale: bool, device: str) -> None:
    """``--quick`` and ``--cpu-scale`` run on the CPU: another ``--device`` is refused, not
    replaced unseen."""
    if (quick or cpu_scale) and device not in ("auto", "cpu"):
        flag = "--quick" if quick else "--cpu-scale"
        raise LocaldiscError(f"{flag} runs on the CPU: --device {device} is not for it")


#: In a benchmark's run folder: the run diverged (its reason); a rerun does not train it again.
DIVERGED_FILE = "diverged.json"

T = TypeVar("T")


def unless_diverged(
    run_dir: Path, train: Callable[[], T], finished: bool = False, key: Any = None
) -> T:
    """``train()``, unless an earlier call recorded in ``run_dir`` that it diverged: that
    :class:`DivergedError` is raised again at once. One raised by ``train()`` is recorded (in
    ``DIVERGED_FILE``) and raised. A benchmark's rerun continues its grid without spending a
    training on a run that diverges every time; deleting the file trains it again.
    ``finished``: ``run_dir`` holds a finished run (resumed by hand since it diverged, say),
    whose record is stale: it is removed and ``train()`` reuses the run. ``key`` (JSON): the
    settings the record holds for, where a folder's training may change (an evaluation's
    refinement): a record of another key is stale, and ``train()`` runs."""
    marker = run_dir / DIVERGED_FILE
    key = None if key is None else json.loads(json.dumps(key))  # as the record reads back
    if finished:
        marker.unlink(missing_ok=True)
    elif marker.is_file():
        try:
            record = json.loads(marker.read_text())
            reason, recorded_key = record["reason"], record.get("key")
        except (OSError, ValueError, KeyError, TypeError):
            reason, recorded_key = "it diverged", key
        if recorded_key == key:
            raise DivergedError(
                f"{reason} [recorded by an earlier call in {marker}; delete that file to train "
                "this run again]"
            )
    try:
        result = train()
    except DivergedError as exc:
        recorded = datetime.now().astimezone().isoformat(timespec="seconds")
        record = {"reason": str(exc), "recorded": recorded, "key": key}
        # A record that cannot be written (a full disk: DiskFullError, a CheckpointError) must
        # not hide the divergence.
        with contextlib.suppress(OSError, CheckpointError):
            atomic_write_text(marker, json.dumps(record))
        raise
    marker.unlink(missing_ok=True)  # a stale one (of another key)
    return result


def check_preset(settings: dict[str, Any], run_dir: Path) -> PretrainConfig:
    """``settings`` (PretrainConfig fields) as the config :func:`pretrain_preset` runs, checked
    before any work: refused without a preset's data (no settings to check a run in ``run_dir``
    against: whatever it holds, another call's few-step model or another data set's, would be
    reused unchecked), and where ``run_dir`` holds a run of other settings (runtime fields
    aside), naming them: reused or resumed, it would stand in for these."""
    from localdisc.data.pool import guess_pool_modality
    from localdisc.engine.pretrain import PretrainConfig, refuse_other_settings
    from localdisc.models.ld import LDConfig

    if not settings.get("data"):
        raise LocaldiscError(
            "the model 'ld' pre-trains with the --quick or --cpu-scale preset; otherwise give an "
            "LD run directory (from `localdisc pretrain`)"
        )
    config = PretrainConfig(**settings)
    if config.modality is None:  # as the run takes it (the plan skips by it): a run's own, or
        # its data's (a finished run's pool may have moved away: its record says)
        try:
            config.modality = LDConfig.from_run(run_dir).modality
        except LocaldiscError:  # no run there yet
            config.modality = guess_pool_modality(config.data)
    refuse_other_settings(run_dir, config)
    return config


#: In a benchmark's run started from another run (``init_from``): the SHA-256 of its weights.
INIT_WEIGHTS_FILE = "init_weights.json"


def weights_sha256(run: str | Path) -> str:
    """The SHA-256 of the weight file ``LDModel.from_pretrained(run)`` loads (a run folder's
    ``model.safetensors``, or the weight file named)."""
    from localdisc.engine.checkpoint import sha256
    from localdisc.models.ld import split_weights_path

    folder, weights = split_weights_path(run)
    return sha256(folder / weights)


def pretrain_preset(settings: dict[str, Any], run_dir: Path, log: Callable[[str], None]) -> Path:
    """Pre-train with ``settings`` (PretrainConfig fields) into ``run_dir``, or reuse a finished
    run there; an interrupted one is resumed. Refused as :func:`check_preset` refuses, and where
    the run started from other weights of its ``init_from`` (a stage 1 made again under its
    path: the run is named by the path alone, and was reused): :data:`INIT_WEIGHTS_FILE`."""
    from localdisc.engine.pretrain import pretrain

    config = check_preset(settings, run_dir)
    init = settings.get("init_from")
    record = run_dir / INIT_WEIGHTS_FILE
    if init is not None:
        sha = weights_sha256(init)
        if not record.is_file():  # before a new run, or a run of before the record: from now on
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(record, json.dumps({"init_from": str(init), "sha256": sha}))
        elif json.loads(record.read_text()).get("sha256") != sha:
            raise LocaldiscError(
                f"{run_dir}: started from other weights of {init} (made again since?); "
                "delete the folder to pre-train it again from these"
            )
    if (run_dir / "encoder.safetensors").is_file():
        log(f"reusing the LD pre-training in {run_dir}")
        return run_dir
    resume = (run_dir / "config.json").is_file()
    result = unless_diverged(run_dir, lambda: pretrain(config, run_dir, resume=resume, log=log))
    log(f"LD pre-training: {result.steps} steps, {result.images_per_s:.1f} images/s")
    return run_dir


def run_label(run: str, runs: list[str]) -> str:
    """How a run is named in tables: ``random`` and ``ld`` as they are, else the run's folder
    name, with parent folders added while another run of ``runs`` would share it (``x/exp/a``
    and ``y/exp/a``: two runs of one label made one row); the path as given where no parent
    tells them apart (one folder in two spellings)."""
    if run in ("random", "ld"):
        return run

    def folders(r: str) -> tuple[str, ...]:
        return Path(os.path.abspath(Path(r).expanduser())).parts[1:]

    mine = folders(run)
    others = [folders(r) for r in runs if r != run and r not in ("random", "ld")]
    for depth in range(1, len(mine) + 1):
        tail = mine[-depth:]
        if all(other[-depth:] != tail for other in others):
            return "/".join(tail)
    return run
