"""LD pre-training: stage 1 (patch discrimination + hypersphere mixup), then stage 2 (+ region
discrimination and entropy), as in METHOD.md sections 2-3.

One function, :func:`pretrain`, runs both stages on one device or under ``torchrun`` on many. The
pool is decoded once into memory (see :mod:`localdisc.data.pool`); each step samples ``B`` image
pairs, builds the ``5B`` views on the training device and takes one Adam step. Checkpoints are
atomic and hold every RNG state, so ``resume=True`` continues exactly where a run stopped (with
the run's saved settings and number of processes; a finished run is left as it is). A fresh run
refuses a folder that holds a run: the two would mix.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from itertools import zip_longest
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from localdisc.data.datasets import (
    absolute_data_spec,
    absolute_path,
    parse_data_spec,
    written_below,
)
from localdisc.data.pool import files_sha256, guess_pool_modality, pool_files, resolve_pool
from localdisc.data.preprocess import MODALITY_CHANNELS
from localdisc.data.sampling import SAMPLERS, EpochSampler
from localdisc.data.views import LDViews, ViewBatch, host_to_device, undo_view2
from localdisc.engine import distributed
from localdisc.engine.checkpoint import (
    RunFolderLock,
    atomic_save_safetensors,
    atomic_write_text,
    list_checkpoints,
    load_latest_checkpoint,
    newest_state,
    optimizer_from_flat,
    optimizer_to_flat,
    refuse_diverged,
    save_checkpoint,
)
from localdisc.engine.monitor import ProgressBar, TrainingLog, write_figures
from localdisc.engine.precision import bf16_autocast, bf16_autocast_pays
from localdisc.engine.rng import keeps_global_rng
from localdisc.engine.shape_prior import KEPT_POSE_ROTATION, PRIOR_POSES, AdversarialPrior
from localdisc.engine.stop import GracefulStop
from localdisc.errors import CheckpointError, LocaldiscError
from localdisc.eval.provenance import environment, resumed
from localdisc.losses import (
    entropy_loss,
    hypersphere_mixup_loss,
    patch_discrimination_loss,
    patch_embeddings,
    region_discrimination_loss,
)
from localdisc.methods.base import PretrainObjective
from localdisc.models.ld import (
    BACKBONE_FIELDS,
    LDConfig,
    LDModel,
    refuse_peer_run,
    smallest_side,
)
from localdisc.models.modes import in_mode
from localdisc.priors.sources import absolute_prior_spec, load_prior

# Fields that may differ when a run is resumed (they do not change what is computed). skip_bad
# changes which files are read, not how: a resume compares the pool itself (refuse_changed_pool).
RUNTIME_FIELDS = {"device", "workers", "progress", "compile", "skip_bad"}


@dataclass
class PretrainConfig:
    """Everything that defines a pre-training run; defaults are the published configuration."""

    data: list[str] = field(default_factory=list)
    # "fundus" or "xray"; None: that of data, as `pretrain` without --modality takes it (a known
    # set's own, a folder's guessed: grey images are X-rays), said in the log and config.json.
    modality: str | None = None
    # "ld", or a peer method of localdisc.methods (one stage: it runs stage1 + stage2 steps
    # within the sum of the stage budgets; stored folded into stage 1).
    method: str = "ld"
    stage1_steps: int = 20_000
    stage2_steps: int = 80_000
    # Wall-clock budgets per stage (seconds; None: none): a stage ends at its step count or its
    # budget, whichever comes first. For fixed-time comparisons; a resumed run's stage counts
    # the seconds it trained before the stop.
    stage1_seconds: float | None = None
    stage2_seconds: float | None = None
    batch: int = 4
    size: int = 448
    pool_size: int | None = None  # None: size * 8/7 (512 for 448), as the paper's 512 -> 448
    crop_scale: tuple[float, float] = (0.9, 1.0)  # random resized crop, fraction of the area
    clusters: int = 16
    dim: int = 32
    width: int = 16
    depth: int = 5  # encoder blocks (LDConfig.depth)
    padding: str = "zeros"
    lr: float = 1e-3
    lr_halve_every: int = 10_000
    tau: float = 0.1
    # Center-sensitive patch embeddings (TPAMI Sec. 6): Gaussian pooling of this width (fraction
    # of the patch side) instead of the uniform average; None: uniform (published LD).
    center_sigma: float | None = None
    tau_region: float = 0.2
    region_weight: float = 10.0
    entropy_weight: float = 0.1
    # Shape-guided clustering (METHOD.md 5): an adversarial prior on cluster 0 in stage 2.
    prior: str | None = None  # a folder of masks, NAME:ROOT[:TARGET] or simulated:NAME
    prior_weight: float = 1.0
    prior_count: int = 200  # masks drawn from a simulator
    prior_pose: str = "free"  # "kept": stage-2 views and prior keep the pose (shape_prior.py)
    disc_lr: float = 5e-5
    # Start from this run's weights (all but the clustering head, which starts random as in
    # stage 2); with stage1_steps = 0 that is "stage 2 from a stage-1 run". RUN/stage1.safetensors
    # starts from the weights a run had at the end of its stage 1.
    init_from: str | None = None
    seed: int = 0
    # How a step draws its pool images (data/sampling.py): "epoch", each image once per epoch
    # and a step's images distinct; "replacement", as runs saved before this setting drew.
    sampler: str = "epoch"
    max_images: int | None = None
    val_images: int | None = None  # None: 5% of the pool, at most 50
    val_every: int = 1_000
    checkpoint_every: int = 1_000
    figure_every: int = 5_000
    log_every: int = 10
    max_nonfinite: int = 20
    skip_bad: bool = False
    amp: bool = True  # bf16 autocast where it pays: CUDA, CPUs with bf16 (engine.precision)
    channels_last: bool = True
    # torch.compile of the network (inductor); for GPUs, where the step benchmark measured +29 %
    # (benchmarks/RESULTS.md). The first steps of each stage pay the compilation.
    compile: bool = False
    sync_bn: bool = False
    device: str = "auto"
    workers: int = 4
    progress: bool = True

    def __post_init__(self) -> None:
        from localdisc.methods import PEER_METHODS

        # Paths as well as str (a notebook's Path objects are not JSON for config.json, and the
        # specs are parsed as text); one source alone is a source, not a list of its letters.
        if isinstance(self.data, str | os.PathLike):
            self.data = [self.data]
        self.data = [os.fspath(spec) for spec in self.data]
        for name in ("init_from", "prior"):
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        problems = []
        if self.method != "ld" and self.method not in PEER_METHODS:
            problems.append(f"unknown method {self.method!r}; known: ld, {', '.join(PEER_METHODS)}")
        if self.method != "ld":
            if self.prior is not None:
                problems.append("a shape prior needs --method ld")
            if self.compile:
                problems.append("--compile is for --method ld")
        # Checked before a peer's stages are folded into one, where a negative count or
        # budget was netted against the other stage's.
        if self.stage1_steps < 0 or self.stage2_steps < 0:
            problems.append("step counts must be >= 0")
        for budget in (self.stage1_seconds, self.stage2_seconds):
            # not (> 0) also catches NaN, which compares False to everything
            if budget is not None and not (0 < budget < math.inf):
                problems.append(f"stage time budgets must be > 0 seconds and finite, not {budget}")
        if self.method != "ld" and (self.stage2_steps or self.stage2_seconds):
            # One stage: stage 2 folded into it, within the sum of the budgets of the stages
            # that have steps. One of them alone with a budget is refused: for LD the other is
            # unlimited, and its budget alone was the peer's whole run.
            budgets = [b for s, b in ((self.stage1_steps, self.stage1_seconds),
                                      (self.stage2_steps, self.stage2_seconds)) if s]  # fmt: skip
            if None in budgets and any(b is not None for b in budgets):
                problems.append(
                    f"--method {self.method} trains one stage of the two stages' steps, within the "
                    "sum of their time budgets: give both stages a budget, or neither (or give "
                    "the stage without one no steps)"
                )
            self.stage1_steps += self.stage2_steps
            self.stage2_steps = 0
            self.stage1_seconds = None if None in budgets or not budgets else sum(budgets)
            self.stage2_seconds = None
        if self.modality not in (None, "fundus", "xray"):
            problems.append(f"modality must be fundus or xray, not {self.modality!r}")
        if self.stage1_steps + self.stage2_steps == 0:
            problems.append("at least one training step is needed")
        if self.batch < 1:
            problems.append("batch must be >= 1")
        size_ok = self.size >= 16 and self.size % 16 == 0
        if not size_ok:
            problems.append(f"size must be a positive multiple of 16, not {self.size}")
        if self.pool_size is not None and self.pool_size < 1:
            problems.append(f"pool_size must be >= 1, not {self.pool_size}")
        if not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            problems.append(f"crop_scale must be 0 < min <= max <= 1, not {self.crop_scale}")
        if self.width < 1:
            problems.append(f"width must be >= 1, not {self.width}")
        if not 2 <= self.depth <= 5:
            problems.append(f"depth must be 2 to 5 encoder blocks, not {self.depth}")
        if self.padding not in ("zeros", "circular", "reflect", "replicate"):
            problems.append(
                f"padding must be zeros, circular, reflect or replicate, not {self.padding!r}"
            )
        elif (
            size_ok  # an invalid size is reported once, above, whatever the padding
            and 2 <= self.depth <= 5
            and self.size < smallest_side(self.padding, self.depth)
        ):
            # torch cannot reflect-pad the 1 x 1 maps a 16-px view has after 4 poolings (a
            # valid size is below smallest_side only with reflect padding)
            problems.append(
                f"padding reflect needs size >= {smallest_side(self.padding, self.depth)} with "
                f"depth {self.depth} (2 x 2 pixels in the deepest block), not {self.size}"
            )
        # NaN fails these too: it would train to NaN and stop as diverged, blaming the lr
        positive = ["tau", "tau_region", "disc_lr"]
        if self.center_sigma is not None:
            positive.append("center_sigma")
        for name in positive:
            if not 0 < getattr(self, name) < math.inf:
                problems.append(f"{name} must be > 0 and finite, not {getattr(self, name)}")
        for name in ("region_weight", "entropy_weight", "prior_weight"):
            if not 0 <= getattr(self, name) < math.inf:
                problems.append(f"{name} must be >= 0 and finite, not {getattr(self, name)}")
        if self.clusters < 2:
            problems.append(f"clusters must be >= 2, not {self.clusters}")
        if self.dim < 2:
            problems.append(f"dim must be >= 2, not {self.dim}")
        if not 0 < self.lr < math.inf:  # NaN fails this too; it would train to NaN silently
            problems.append(f"lr must be > 0 and finite, not {self.lr}")
        if self.max_images is not None and self.max_images < 1:
            problems.append(f"max_images must be >= 1, not {self.max_images}")
        if self.val_images is not None and self.val_images < 0:  # it would flip the split
            problems.append(f"val_images must be >= 0, not {self.val_images}")
        if self.prior is not None and self.stage2_steps == 0:
            problems.append("a shape prior acts in stage 2: give stage 2 some steps")
        if self.prior_count < 1:
            problems.append(f"prior_count must be >= 1, not {self.prior_count}")
        if self.prior is not None and self.seed < 0:  # it picks a simulated prior's masks
            problems.append(f"seed must be >= 0 with a shape prior, not {self.seed}")
        if self.sampler not in SAMPLERS:
            problems.append(f"sampler must be {' or '.join(SAMPLERS)}, not {self.sampler!r}")
        if self.prior_pose not in PRIOR_POSES:
            problems.append(
                f"prior_pose must be {' or '.join(PRIOR_POSES)}, not {self.prior_pose!r}"
            )
        for name in (
            "val_every",
            "checkpoint_every",
            "figure_every",
            "log_every",
            "lr_halve_every",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if problems:
            raise LocaldiscError("invalid pre-training config: " + "; ".join(problems))

    @property
    def total_steps(self) -> int:
        return self.stage1_steps + self.stage2_steps

    @property
    def resolved_pool_size(self) -> int:
        if self.pool_size is not None:
            return self.pool_size
        return max(self.size, int(round(self.size * 8 / 7 / 16)) * 16)

    def stage_at(self, step: int) -> int:
        return 1 if step < self.stage1_steps else 2

    def lr_at(self, step: int) -> float:
        """Adam's learning rate, halved every ``lr_halve_every`` steps within each stage."""
        stage_step = step if step < self.stage1_steps else step - self.stage1_steps
        return self.lr * 0.5 ** (stage_step // self.lr_halve_every)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class LossTerms:
    total: Tensor
    pd: Tensor
    mix: Tensor
    rd: Tensor | None = None
    ent: Tensor | None = None
    adv: Tensor | None = None  # generator term of the shape prior
    assignments: Tensor | None = None  # stage 2: a of the 4B non-mixed views

    def as_dict(self) -> dict[str, Tensor]:
        d = {"loss": self.total, "pd": self.pd, "mix": self.mix}
        for name in ("rd", "ent", "adv"):
            if getattr(self, name) is not None:
                d[name] = getattr(self, name)
        return d


def ld_losses(
    model: nn.Module,
    batch: ViewBatch,
    stage: int,
    config: PretrainConfig,
    *,
    distributed_losses: bool = False,
) -> LossTerms:
    """Forward the ``5B`` views and compute the LD loss of the given stage (METHOD.md 3)."""
    b = batch.lam.shape[0]
    with bf16_autocast(batch.images.device, config.amp):
        v, a = model(batch.images, with_clusters=stage == 2, cluster_count=4 * b)
    patches = patch_embeddings(v, 8, config.center_sigma)
    view1 = patches[: 2 * b]
    view2 = undo_view2(patches[2 * b : 4 * b], batch.flip, batch.rot_k)
    pd = patch_discrimination_loss(view1, view2, config.tau, distributed=distributed_losses)
    mix = hypersphere_mixup_loss(
        patches[4 * b :], view1[:b], view1[b:], batch.lam, config.tau,
        distributed=distributed_losses,
    )  # fmt: skip
    total = pd + mix
    if stage == 1:
        return LossTerms(total, pd, mix)
    assert a is not None
    rd = region_discrimination_loss(
        v[: 4 * b], a, config.tau_region, distributed=distributed_losses
    )
    ent = entropy_loss(a)
    total = total + config.region_weight * rd + config.entropy_weight * ent
    return LossTerms(total, pd, mix, rd, ent, assignments=a)


def _split_pool(n: int, config: PretrainConfig) -> tuple[list[int], list[int]]:
    """Seeded hold-out of validation images (5% of the pool, at most 50, none for tiny pools):
    the indices of the training and of the validation images in a pool of ``n``."""
    n_val = config.val_images
    if n_val is None:
        n_val = min(50, n // 20)
    n_val = min(n_val, n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed)).tolist()
    return order[n_val:], order[:n_val]


def _device_text(device: torch.device) -> str:
    """``device``, with the GPU's model where it is one (``cuda:0 (NVIDIA H100 ...)``)."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def _no_validation_reason(n: int, config: PretrainConfig) -> str:
    """Why :func:`_split_pool` held out no validation image from a pool of ``n``."""
    if config.val_images == 0:
        return "no validation images (val_images 0)"
    if n < 2:
        return f"no validation images (a pool of {n} image keeps it for training)"
    return f"no validation images (pool of {n} < 20: 5% of it is under one image)"


@dataclass
class PretrainResult:
    """What a call of :func:`pretrain` reached."""

    run_dir: Path
    steps: int
    # Images trained on in this call per second of its training loop's wall-clock time, with
    # its validation, figures and checkpoints (log.csv's img_per_s leaves those out).
    images_per_s: float
    final_loss: float
    best_val: float | None
    skipped_steps: int
    trained_steps: int = 0  # optimizer steps taken (a time budget can skip step numbers)
    images: int = 0  # images fed through the network in those steps
    # a resume of a run that had finished: nothing was trained (the counts are the run's)
    already_finished: bool = False
    # Seconds of training over all the run's starts, as ``steps`` and ``images`` count them;
    # None where an earlier start's checkpoint (older versions) did not record its seconds.
    elapsed: float | None = None


#: Weights a finished run ends with; with ``model_best`` and ``stage1`` they mark a used folder.
FINAL_WEIGHTS = ("model.safetensors", "encoder.safetensors")
RUN_WEIGHTS = (*FINAL_WEIGHTS, "model_best.safetensors", "stage1.safetensors")


#: How the header of a pre-training's ``log.csv`` starts, in every version of
#: :class:`~localdisc.engine.monitor.TrainingLog` (new columns go last).
LOG_HEADER_START = ",".join(TrainingLog.COLUMNS[:4]) + ","


def _not_a_pretraining_record(path: Path) -> str | None:
    """Why ``path`` (a ``config.json``) is not a pre-training's record, or ``None`` if it is."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"config.json unreadable as a run's record ({type(exc).__name__})"
    if not isinstance(record, dict) or not isinstance(record.get("pretrain"), dict):
        return "no 'pretrain' settings in config.json"
    return None


def _not_a_pretraining_log(path: Path) -> str | None:
    """Why ``path`` (a ``log.csv``) is not a pre-training's log, or ``None`` if it is."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            header = f.readline(4096).strip()
    except (OSError, UnicodeDecodeError) as exc:
        return f"log.csv unreadable ({type(exc).__name__})"
    if not header.startswith(LOG_HEADER_START):
        shown = header if len(header) <= 40 else header[:40] + "..."
        return f"log.csv's columns {shown!r}, not {LOG_HEADER_START}..."
    return None


def refuse_foreign_files(run_dir: Path) -> None:
    """Raise :class:`CheckpointError` if ``run_dir`` holds a ``config.json`` or ``log.csv`` that
    is not a pre-training's (a user's own settings or log, another command's record): a new run
    writes over both. A pre-training's own pass: one stopped before its first checkpoint leaves
    them, and starts again there. Nothing is deleted."""
    checks = {"config.json": _not_a_pretraining_record, "log.csv": _not_a_pretraining_log}
    found, why = [], []
    for name, check in checks.items():
        if (run_dir / name).exists() and (reason := check(run_dir / name)) is not None:
            found.append(name)
            why.append(reason)
    if found:
        raise CheckpointError(
            f"{run_dir}: holds {' and '.join(found)}, not of a pre-training ({'; '.join(why)}); "
            "a run there would write over them: choose another --out (nothing was deleted)"
        )


def refuse_used_run_dir(run_dir: Path) -> None:
    """Raise :class:`CheckpointError` if ``run_dir`` holds a run (checkpoints or weights), a
    ``config.json`` or ``log.csv`` not of a pre-training (:func:`refuse_foreign_files`), or is
    a file.

    A fresh run there would mix with it: the old run's later checkpoints survive pruning and a
    later ``--resume`` continues the old run; its ``model_best`` survives. Nothing is deleted.
    """
    if run_dir.exists() and not run_dir.is_dir():  # said now, not after decoding the pool
        raise CheckpointError(f"{run_dir}: a file, not a folder; choose another --out for the run")
    refuse_foreign_files(run_dir)
    found = [name for name in RUN_WEIGHTS if (run_dir / name).is_file()]
    if list_checkpoints(run_dir / "checkpoints"):
        found.insert(0, "checkpoints/")
    if found:
        raise CheckpointError(
            f"{run_dir}: holds a run already ({', '.join(found)}); pass --resume (in Python "
            "resume=True) to continue it, or choose another --out for a new run (nothing was "
            "deleted)"
        )


def _silent(message: str) -> None:
    """The log of the processes other than the first under torchrun."""


def _run_record(run_dir: Path) -> dict[str, Any]:
    """``run_dir/config.json``: the run's settings (``pretrain``), pool and environment."""
    path = Path(run_dir) / "config.json"
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: cannot read this run's settings ({type(exc).__name__}: {exc}); the file is "
            "damaged: restore it, or start the run again in a new --out"
        ) from exc
    if not isinstance(record.get("pretrain"), dict):  # a sound file of another command's
        what = "a fine-tuning's (finetune)" if "transfer" in record else "another program's"
        raise CheckpointError(
            f"{path}: not a pre-training's record but {what}, with no 'pretrain' settings: "
            "--resume continues a pre-training; give the --out of the run to continue"
        )
    return record


def _saved_config(
    run_dir: Path, given: PretrainConfig, record: dict[str, Any] | None = None
) -> PretrainConfig:
    """The settings saved in ``run_dir/config.json`` (``record``: that file, read already),
    with ``given``'s runtime fields."""
    saved = dict((record or _run_record(run_dir))["pretrain"])
    saved.setdefault("sampler", "replacement")  # saved before it was a setting: drawn so
    saved.update({k: getattr(given, k) for k in RUNTIME_FIELDS})
    try:
        return PretrainConfig.from_dict(saved)
    except (TypeError, ValueError, LocaldiscError) as exc:  # "3" for 3, null for a number
        path = Path(run_dir) / "config.json"
        raise CheckpointError(
            f"{path}: cannot read this run's settings ({type(exc).__name__}: {exc}); the file is "
            "damaged: restore it, or start the run again in a new --out"
        ) from exc


#: The fields of :class:`PretrainConfig` that hold paths, and how each is made absolute.
PATH_FIELDS: dict[str, Callable[..., str]] = {
    "data": absolute_data_spec,
    "prior": absolute_prior_spec,
    "init_from": absolute_path,
}


def _with_absolute_paths(config: PretrainConfig) -> dict[str, Any]:
    """``asdict(config)`` with every path in it absolute: what ``config.json`` saves, so that
    ``--resume`` (and the tools that read a run's prior or data) work from any directory."""
    d = asdict(config)
    for name, absolute in PATH_FIELDS.items():
        value = d[name]
        if isinstance(value, list):
            d[name] = [absolute(spec) for spec in value]
        elif value is not None:
            d[name] = absolute(value)
    return d


def settings_differences(run_dir: Path, config: PretrainConfig) -> list[str] | None:
    """``field saved (given value)`` for each setting (runtime fields aside) in which the run of
    ``run_dir`` differs from ``config``; ``None`` when ``run_dir`` holds no readable run."""
    try:
        return _changed_settings(config, _saved_config(run_dir, config))
    except (OSError, KeyError, TypeError, ValueError, LocaldiscError):
        return None


def refuse_other_settings(run_dir: Path, config: PretrainConfig) -> None:
    """Raise :class:`CheckpointError` if ``run_dir`` holds a run of other settings than
    ``config``'s (runtime fields aside), naming them: reused or resumed, it would stand in for a
    run of ``config``. A folder without a readable run passes."""
    differences = settings_differences(run_dir, config)
    if differences:
        raise CheckpointError(
            f"{run_dir}: holds a pre-training with other settings ({', '.join(differences)}); "
            "give another --out, or the settings it was run with"
        )
    refuse_other_files(run_dir, config)
    refuse_other_prior(run_dir, config)


def refuse_other_files(run_dir: Path, config: PretrainConfig) -> None:
    """Raise :class:`CheckpointError` if ``run_dir`` holds a run with weights (finished, or a
    checkpoint) whose pool read other files than ``config.data`` gives now (files added,
    removed or renamed since: a grown ``--pool``): reused, it would stand in for a pre-training
    on these. Its ``config.json`` keeps one SHA-256 of the pooled files' resolved paths
    (``pool.files_sha256``, contents unread; runs recorded before it are not checked), and the
    files it skipped as unreadable are skipped again, their places filled as they were. Data
    that cannot be listed now (moved away) are not compared."""
    try:
        saved = json.loads((run_dir / "config.json").read_text())
        recorded = saved["pool"]["files_sha256"]
        skipped = {Path(str(p)).resolve() for p, _ in saved.get("skipped_files") or []}
        modality = config.modality or saved["pretrain"]["modality"]
    except (OSError, ValueError, TypeError, KeyError):
        return
    weights = (run_dir / "encoder.safetensors").is_file() or list_checkpoints(
        run_dir / "checkpoints"
    )
    if not weights:  # a run stopped before its first checkpoint starts over on the data as is
        return
    # A run that skipped files filled their places (--skip-bad, a runtime field): so again.
    skip_bad = config.skip_bad or bool(skipped)
    try:
        files = pool_files(config.data, modality, max_images=config.max_images,
                           skip_bad=skip_bad, unreadable=skipped)  # fmt: skip
    except LocaldiscError:
        return
    if files_sha256(files) == recorded:
        return
    then = saved["pool"].get("files")
    raise CheckpointError(
        f"{run_dir}: pre-trained on other files than its data ({', '.join(config.data)}) hold "
        f"now ({len(files)} files now, {then if then is not None else 'another set'} then): "
        "reused, it would stand in for a pre-training on these. Restore the data as it was, or "
        f"give another --out (nothing was changed).{_written_in_data(run_dir, config)}"
    )


def refuse_other_prior(run_dir: Path, config: PretrainConfig) -> None:
    """Raise :class:`CheckpointError` if ``run_dir`` holds a finished run trained against other
    shape prior masks than ``config.prior`` gives now (its recorded :func:`prior_record`): a
    benchmark reuses a finished run as it is (:func:`_leave_finished` reads no prior), which
    would then stand in for a run against these. A resume compares its prior itself; runs
    recorded before the prior was, and a prior that cannot be read now (moved away), are not
    compared, nor is a simulated one: its masks are fixed by the settings compared already
    (size, count, seed, pose), and drawing them again costs a benchmark 16 s per run."""
    if not config.prior or str(config.prior).startswith("simulated:"):
        return
    if not (run_dir / "encoder.safetensors").is_file():
        return
    try:
        saved = json.loads((run_dir / "config.json").read_text()).get("prior")
    except (OSError, ValueError, AttributeError):
        return
    if not prior_recorded(saved):
        return
    try:
        bank = load_prior(config.prior, config.size, count=config.prior_count, seed=config.seed,
                          pose=config.prior_pose)  # fmt: skip
    except LocaldiscError:
        return
    now = prior_record(bank)
    if now["sha256"] != saved["sha256"]:
        raise CheckpointError(
            f"{run_dir}: pre-trained against other shape prior masks than {config.prior} gives "
            f"now ({now['masks']} masks now, {saved.get('masks')} then): reused, it would stand "
            "in for a run against these. Restore the prior as it was (where its files are "
            "unchanged, another version of localdisc read them otherwise), or give another "
            "--out (nothing was changed)"
        )


def _written_in_data(run_dir: Path, config: PretrainConfig) -> str:
    """A sentence naming the training runs and outputs of this package that the folders of
    ``config.data`` hold (but ``run_dir``), which pools leave out: a run started before they
    were left out pooled them, its data unchanged. Empty where there are none."""
    # Pools leave out the training runs inside their data since 3866259, the outputs of
    # predict, segment, vessels and localize --overlay since 7a0ee12, similarity's figures
    # and benchmarks' --out since 2b8816b and 5e1c4e8 (all 2026-12-07).
    runs = [
        folder for spec in config.data
        if (root := parse_data_spec(spec)[1]) is not None and root.is_dir()
        for folder in written_below(root, own=run_dir)
    ]  # fmt: skip
    if not runs:
        return ""
    shown = ", ".join(str(r) for r in runs[:3]) + (", ..." if len(runs) > 3 else "")
    return (
        f" The data hold training runs or outputs of localdisc ({shown}), which a run started "
        "with an earlier version may have pooled, and pools leave out now: then only a new run "
        "goes on."
    )


def holds_run_of(run_dir: Path, config: PretrainConfig) -> bool:
    """Whether ``run_dir`` holds a run started with ``config``'s settings (runtime fields aside):
    one that ``--resume`` continues, or leaves as it is once finished."""
    return settings_differences(run_dir, config) == []


def _compared_path(name: str, spec: str) -> str:
    """``spec``, of the path field ``name``, made absolute as config.json saves it
    (:data:`PATH_FIELDS`), a missing folder or file too (moved away since the run started, as a
    finished run's data and prior may be): saved, it is left as typed, which compared with the
    absolute path saved when it existed read as another setting."""
    return PATH_FIELDS[name](spec, missing=True)


def _changed_settings(given: PretrainConfig, saved: PretrainConfig) -> list[str]:
    """``field saved (given value)`` for each non-runtime setting that differs; paths are
    compared made absolute (:func:`_compared_path`), so that a folder given relatively or
    absolutely is the same, there or moved away."""
    # Through JSON: config.json holds lists where the given config holds tuples.
    a, b = (json.loads(json.dumps(asdict(c))) for c in (given, saved))

    def compared(value: Any, k: str) -> Any:
        if isinstance(value, list):
            return [_compared_path(k, spec) for spec in value]
        return None if value is None else _compared_path(k, value)

    def differs(k: str) -> bool:
        if k in PATH_FIELDS:
            return compared(a[k], k) != compared(b[k], k)
        if k == "modality" and a[k] is None:  # the run's, taken from its data when it started
            return False
        return a[k] != b[k]

    return [f"{k} {b[k]!r} (given {a[k]!r})" for k in a if k not in RUNTIME_FIELDS and differs(k)]


def _same_file(old: str, new: str) -> bool:
    """Whether the validation names ``old`` (a run's first start) and ``new`` (now) are one
    file: a name two pool folders share became the file's path, once resolved (links followed),
    now absolute as listed (data/pool.py)."""
    if new.endswith(f"/{old}"):
        return True
    return os.path.isabs(old) and os.path.isabs(new) and Path(old).resolve() == Path(new).resolve()


def refuse_changed_pool(
    run_dir: Path, config: PretrainConfig, saved: dict[str, Any] | None, now: dict[str, Any]
) -> None:
    """Raise :class:`CheckpointError` if the pool read for a resume (``now``: its record) differs
    from the one the run started with (``saved``: config.json's ``pool``; older runs have none)
    in its number of images or its validation images: the resumed run would train and validate
    on other images than its checkpoint's, and config.json would name the wrong ones."""
    if not isinstance(saved, dict):
        return
    changes = []
    if saved.get("images") != now["images"]:
        changes.append(f"{now['images']} images now, {saved.get('images')} at the first start")
    elif saved.get("files_sha256") not in (None, now.get("files_sha256")):
        changes.append(f"other files ({now.get('files')} now, {saved.get('files')} then)")
    old = saved.get("val_names")
    if isinstance(old, list) and old != now["val_names"]:
        # a name that two pool files share is now the file's path (data/pool.py): the same file
        pairs = [
            (a, b)
            for a, b in zip_longest(old, now["val_names"])
            if a != b and not (isinstance(a, str) and isinstance(b, str) and _same_file(a, b))
        ]
        shown = ", ".join(f"{a!r} -> {b!r}" for a, b in pairs[:3])
        more = f", ... ({len(pairs) - 3} more)" if len(pairs) > 3 else ""
        if pairs:
            changes.append(f"other validation images (first start -> now: {shown}{more})")
    if not changes:
        return
    skip = "; with --skip-bad, the same files must be unreadable" if config.skip_bad else ""
    raise CheckpointError(
        f"{run_dir}: the pool differs from the one the run started with ({'; '.join(changes)}): "
        "resumed, it would train and validate on other images than its checkpoints. Restore "
        f"the data ({', '.join(config.data)}) as it was at the first start{skip}, or start a new "
        f"run with another --out (nothing was changed).{_written_in_data(run_dir, config)}"
    )


def prior_record(bank: Tensor) -> dict[str, Any]:
    """What ``config.json`` keeps of a shape prior's masks (``bank``, :func:`load_prior`'s):
    their number and one SHA-256 of the masks themselves (shape and pixels, as trained against),
    so that a resume notices a prior folder or data set changed since the first start. Of the
    bank, not the files: it covers every kind of prior, a copy of the same masks is the same, and
    decoded and resized by nearest neighbour a bool mask is the same on any machine."""
    masks = bank.detach().cpu().numpy()
    digest = hashlib.sha256(repr(masks.shape).encode())
    digest.update(masks.tobytes())
    return {"masks": int(masks.shape[0]), "sha256": digest.hexdigest()}


def prior_recorded(saved: object) -> bool:
    """Whether ``saved`` (config.json's ``prior``) is a :func:`prior_record`: runs started by
    versions before it have none."""
    return isinstance(saved, dict) and isinstance(saved.get("sha256"), str)


def refuse_changed_prior(
    run_dir: Path,
    config: PretrainConfig,
    saved: dict[str, Any] | None,
    now: dict[str, Any],
    log: Callable[[str], None],
) -> None:
    """Raise :class:`CheckpointError` if the shape prior's masks read for a resume (``now``:
    :func:`prior_record`) differ from the ones the run started with (``saved``: config.json's
    ``prior``): resumed, its discriminator and clusters would go on against other masks than its
    checkpoints learnt, unsaid. Runs recorded before the prior was are not compared (said): the
    caller records ``now`` for them (:func:`prior_recorded`), compared from the next resume."""
    if not prior_recorded(saved):
        log(
            f"{run_dir / 'config.json'}: no record of the shape prior's masks (a run started by "
            "an earlier version): not compared with the first start's; recorded now, compared "
            "from the next resume"
        )
        return
    if saved["sha256"] == now["sha256"]:
        return
    then = saved.get("masks")
    if then != now["masks"]:
        change = f"{now['masks']} masks now, {then} at the first start"
    else:
        change = f"other masks ({now['masks']} now, {then} then)"
    raise CheckpointError(
        f"{run_dir}: the shape prior ({config.prior}) differs from the one the run started with "
        f"({change}): resumed, it would train against other masks than its checkpoints. Restore "
        "the prior as it was at the first start, or start a new run with another --out (nothing "
        "was changed)"
    )


def _run_finished(state: dict[str, Any], config: PretrainConfig) -> bool:
    """Whether a checkpoint's ``state`` is that of a finished run: ended by its step count, or
    by a time budget (recorded: it has steps left)."""
    return bool(state.get("finished")) or state["step"] >= config.total_steps


def _newest_finished(checkpoint_dir: Path, config: PretrainConfig) -> bool | None:
    """Whether the newest checkpoint in ``checkpoint_dir`` says the run finished; None where
    there is none or its state cannot be read. Cheap (its files are verified only when loaded),
    for deciding before the prior and the pool are read: a checkpoint that turns out corrupt
    falls back to an older one of the same run."""
    state = newest_state(checkpoint_dir)
    try:
        return None if state is None else _run_finished(state, config)
    except (LookupError, TypeError):  # not a checkpoint state: left to its loading
        return None


def _trained_with(state: dict[str, Any], tensors: dict[str, dict[str, Tensor]]) -> int:
    """The number of processes a checkpoint's run trained with: its ``state``'s, or for older
    checkpoints, which do not record it, the number of sampler states (one per process)."""
    return state.get("world_size") or sum(key.startswith("sampler_") for key in tensors["rng"])


def _leave_finished(
    run_dir: Path,
    config: PretrainConfig,
    ctx: distributed.DistContext,
    loaded: tuple[dict[str, Any], dict[str, dict[str, Tensor]]],
    log: Callable[[str], None],
) -> PretrainResult:
    """``--resume`` of a finished run, ``loaded`` its checkpoint: trains nothing and rewrites
    nothing but the final weights of a run stopped before writing them. Its pool and shape prior
    are not read: a finished run needs neither, and either may have moved since."""
    state, tensors = loaded
    refuse_diverged(run_dir / "checkpoints", state, tensors, ("model", "objective",
                    "discriminator"), "start over in another --out (a lower learning rate may "
                    "keep it from diverging)")  # fmt: skip
    backbone = {k: getattr(config, k) for k in BACKBONE_FIELDS}
    model = LDModel(LDConfig(**backbone, clusters=config.clusters))
    model.load_state_dict(tensors["model"])
    objective = build_objective(config, model) if config.method != "ld" else None
    b = config.batch
    # of the processes it trained with, not of those it is resumed under (which train nothing)
    world_size = _trained_with(state, tensors)
    images_per_step = (objective.images_per_step(b) if objective else 5 * b) * world_size
    step = state["step"]
    if ctx.is_main:
        log(f"{run_dir}: the run finished at step {step} already; nothing to do")
        if not all((run_dir / name).is_file() for name in FINAL_WEIGHTS):
            _save_final_weights(model, run_dir)  # it was stopped before writing them
    distributed.barrier()
    best_val = state["best_val"]
    trained_steps = state.get("trained_steps", step)
    seconds_known = "elapsed" in state and not state.get("elapsed_partial", False)
    return PretrainResult(
        run_dir, step, 0.0, float(state.get("last_loss", math.nan)),
        None if math.isinf(best_val) else best_val, state["skipped_steps"], trained_steps,
        trained_steps * images_per_step, already_finished=True,
        elapsed=state.get("elapsed", 0.0) if seconds_known else None,
    )  # fmt: skip


def _world_size_problem(run_dir: Path, trained_with: int, now: int) -> str:
    how = "without torchrun" if trained_with == 1 else f"with {trained_with} processes in all"
    return (
        f"{run_dir / 'checkpoints'}: the run was trained with {trained_with} process(es) and "
        f"resumes only with as many (each has its own sampler state), not {now}: run it {how}"
    )


def _save_final_weights(model: LDModel, run_dir: Path) -> None:
    """``model.safetensors``, ``encoder.safetensors``, and ``model_best`` if validation wrote
    none."""
    model.save(run_dir)
    if not (run_dir / "model_best.safetensors").exists():
        atomic_save_safetensors(model.state_dict(), run_dir / "model_best.safetensors")


def _budget_spent(start: float, budget: float | None) -> bool:
    """Whether ``budget`` seconds (``None``: no budget) have passed since ``start`` on this
    process's clock (under torchrun rank 0's decides for all, in ``GracefulStop.agree``)."""
    return budget is not None and time.perf_counter() - start >= budget


def budget_time_left(
    config: PretrainConfig, step: int, stage: int, stage_seconds: float, stage_steps: int
) -> float | None:
    """Seconds the run has left when a wall-clock budget bounds a stage; ``None`` without
    budgets (the progress bar then estimates from the pace of the steps).

    Each stage left ends at its last step or at its budget, whichever comes first: its steps
    take the pace of the current stage so far (``stage_steps`` steps in ``stage_seconds``); the
    current stage's budget has ``stage_seconds`` spent, the next one's is whole. Counting the
    steps alone would promise hours to a run that its budget ends in minutes."""
    budgets = {1: config.stage1_seconds, 2: config.stage2_seconds}
    if budgets[1] is None and budgets[2] is None:
        return None
    pace = stage_seconds / stage_steps if stage_steps else None
    ends = {1: config.stage1_steps, 2: config.total_steps}
    left = 0.0
    for s in range(stage, 3):
        steps = ends[s] - max(step, config.stage1_steps if s == 2 else 0)
        if steps <= 0:
            continue
        budget = budgets[s]
        seconds = math.inf if budget is None else budget - (stage_seconds if s == stage else 0.0)
        if pace is not None:
            seconds = min(seconds, steps * pace)
        left += max(seconds, 0.0)
    return None if math.isinf(left) else left


def _prepare_model(
    model: LDModel, stage: int, ctx: distributed.DistContext, compile_model: bool = False
) -> nn.Module:
    """Freeze the clustering head in stage 1, wrap in DDP when distributed, compile if asked.

    The returned module trains; ``model`` itself stays the plain module that is saved.
    """
    model.cluster_head.requires_grad_(stage == 2)
    net: nn.Module = model
    if ctx.distributed:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return torch.compile(net) if compile_model else net


def init_from_run(model: LDModel, run_dir: str | Path) -> None:
    """Copy a run's weights (``RUN`` or ``RUN/stage1.safetensors``) into ``model``, all but the
    clustering head (it starts random)."""
    source = LDModel.from_pretrained(run_dir)
    mine, theirs = asdict(model.config), asdict(source.config)
    mismatch = [k for k in BACKBONE_FIELDS if mine[k] != theirs[k]]
    if mismatch:
        raise CheckpointError(
            f"{run_dir}: cannot start from this run: its "
            + ", ".join(f"{k} is {theirs[k]!r}, not {mine[k]!r}" for k in mismatch)
        )
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("cluster_head.")}
    model.load_state_dict(state, strict=False)


def _new_optimizer(
    model: LDModel, lr: float, objective: PretrainObjective | None = None
) -> torch.optim.Adam:
    if objective is not None:
        return torch.optim.Adam(objective.trainable_parameters(), lr=lr)
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=lr)


def build_objective(
    config: PretrainConfig, model: LDModel, train_images: int | None = None
) -> PretrainObjective:
    """The peer method's objective around ``model`` (``config.method`` other than ``ld``), for
    a run on ``train_images`` training images (``None``: unknown, DenseCL's default queue)."""
    from localdisc.methods import PEER_METHODS
    from localdisc.methods.densecl import queue_size_for

    # (PixPro's momentum follows the run_progress each step is given)
    options: dict[str, Any] = {"amp": config.amp}
    if config.method == "densecl" and train_images is not None:  # negatives: other images
        options["queue_size"] = queue_size_for(train_images, 2 * config.batch)
    if config.method == "genesis":  # LD's crop geometry at the run's crop scale
        options["crop_scale"] = tuple(config.crop_scale)
    cls = PEER_METHODS[config.method]
    return cls(model, size=config.size, modality=config.modality, **options)


def run_progress(config: PretrainConfig, step: int, stage_seconds: float) -> float:
    """The fraction of a peer's run done at ``step`` (its one stage, ``stage_seconds`` in):
    the steps', or under a time budget the larger of that and the budget's fraction spent
    (a budget ends the run long before its step count). For schedules over the run."""
    progress = step / config.total_steps if config.total_steps else 1.0
    if config.stage1_seconds is not None:  # a peer's budgets are folded into stage 1
        progress = max(progress, stage_seconds / config.stage1_seconds)
    return min(progress, 1.0)


@torch.no_grad()
def validation_loss(
    model: LDModel,
    val_pool: Tensor,
    views: LDViews,
    config: PretrainConfig,
    stage: int,
    objective: PretrainObjective | None = None,
    partners: Tensor | None = None,
) -> float:
    """Mean loss of the current stage (or of the peer ``objective``) on the held-out images,
    with fixed views and eval-mode batch norm.

    Held-out image ``i`` is paired with ``partners[i % len(partners)]`` (training images, where
    given), else with the next held-out image. Paired among themselves, each image of a batch
    came twice among its 2B (first and second of two pairs; a lone one with itself), and PD
    scored its own patches as negatives, which training never does (a step's images are
    distinct)."""
    if val_pool.shape[0] == 0:
        return math.nan
    gen = torch.Generator().manual_seed(config.seed + 7919)
    n = val_pool.shape[0]
    network = objective if objective is not None else model
    losses = []
    with in_mode(network, training=False):
        for start in range(0, n, config.batch):
            idx = torch.arange(start, min(start + config.batch, n))
            x1 = val_pool[idx]
            x2 = val_pool[(idx + 1) % n] if partners is None else partners[idx % len(partners)]
            if objective is not None:
                losses.append(objective(x1, x2, gen)["loss"].float())
                continue
            batch = views(x1, x2, generator=gen)
            losses.append(ld_losses(model, batch, stage, config).total.float())
    return torch.stack(losses).mean().item()


def _diverged_hint(checkpoint_dir: Path, config: PretrainConfig) -> str:
    """What a diverged run leaves to continue from: it may have stopped before its first
    checkpoint, and then only a fresh start with a lower learning rate helps."""
    saved = list_checkpoints(checkpoint_dir)
    if not saved:
        return (
            f"No checkpoint was written before it (one every {config.checkpoint_every} steps): "
            f"start over with a learning rate lower than {config.lr:g} (--lr)."
        )
    return (
        f"The newest checkpoint is {saved[-1]} (--resume continues from it; it is refused if "
        f"its weights are already non-finite), or start over with a learning rate lower than "
        f"{config.lr:g} (--lr)."
    )


@keeps_global_rng
def pretrain(
    config: PretrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    pool: Tensor | None = None,
    pool_names: Sequence[str] | None = None,
    stop_at_step: int | None = None,
    log: Callable[[str], None] = print,
) -> PretrainResult:
    """Run LD pre-training into ``run_dir`` (``config.json``, weights, checkpoints, logs, figures).

    Args:
        config: the run's configuration; on resume the saved one is used (runtime fields aside).
        run_dir: output folder.
        resume: continue from the newest valid checkpoint in ``run_dir/checkpoints`` (a run
            that finished, by its steps or its time budget, is left as it is). Without it,
            a ``run_dir`` that holds a run (checkpoints or weights) raises CheckpointError.
        pool: pre-decoded uint8 pool ``[N, C, P, P]``; default: read ``config.data``.
        pool_names: the source of each image of ``pool``, which figures and ``config.json``
            name them by (default ``pool image 0`` ...; read with the pool from ``config.data``).
        stop_at_step: stop after this global step, as an interruption would (for tests).

    A second process started into ``run_dir`` while this one runs is refused
    (:class:`~localdisc.engine.checkpoint.RunFolderLock`).
    """
    # Under torchrun the first process holds the lock for all: they share its folder.
    first = int(os.environ.get("RANK", "0")) == 0
    with RunFolderLock(run_dir, enabled=first, log=log) as lock:
        return _pretrain(config, Path(run_dir), lock, resume=resume, pool=pool,
                         pool_names=pool_names, stop_at_step=stop_at_step, log=log)  # fmt: skip


def _data_modality(config: PretrainConfig, pool: Tensor | None, log: Callable[[str], None]) -> str:
    """The modality of a run whose config leaves it to its data: a given pool's by its channels,
    else that of ``config.data`` (:func:`~localdisc.data.pool.guess_pool_modality`), logged.
    With ``init_from`` of another modality than the data's guess, refused naming both, as
    ``finetune`` refuses it: red-free fundus photographs are grey, X-rays grey too."""
    if pool is not None:
        return "xray" if pool.shape[1] == MODALITY_CHANNELS["xray"] else "fundus"
    if not config.data:  # the pool's reading says what is missing
        return "fundus"
    modality = guess_pool_modality(config.data, log)
    if config.init_from and (init := LDConfig.from_run(config.init_from).modality) != modality:
        raise LocaldiscError(
            f"{', '.join(config.data)}: its images look {modality} (guessed: grey ones are "
            f"X-rays), and init_from {config.init_from} was pre-trained on {init} images: give "
            f"PretrainConfig.modality ({init!r} for red-free fundus photographs)"
        )
    log(f"modality {modality}: that of the data (PretrainConfig.modality chooses)")
    return modality


def _pretrain(
    config: PretrainConfig,
    run_dir: Path,
    lock: RunFolderLock,
    *,
    resume: bool,
    pool: Tensor | None,
    pool_names: Sequence[str] | None,
    stop_at_step: int | None,
    log: Callable[[str], None],
) -> PretrainResult:
    """:func:`pretrain`, ``lock`` held from the start where ``run_dir`` exists, else from where
    it is made."""
    if not resume:  # before anything is written (or a process group is joined)
        refuse_used_run_dir(run_dir)
    ctx = distributed.setup(config.device)
    if not ctx.is_main:  # under torchrun the first process speaks for all
        log = _silent
    config_path = run_dir / "config.json"
    if resume:
        if not config_path.is_file():
            raise CheckpointError(f"{run_dir}: nothing to resume (no config.json)")
        saved_meta = _run_record(run_dir)  # read once: the settings, the pool, the environment
        given, config = config, _saved_config(run_dir, config, saved_meta)
        if given.method != config.method:  # another method's run, not a setting of this one
            raise CheckpointError(
                f"{run_dir}: holds a --method {config.method} run, which --resume continues only "
                f"as {config.method}, not as --method {given.method}: give --method "
                f"{config.method}, or another --out for the {given.method} run"
            )
        changed = _changed_settings(given, config)
        if changed:  # the saved settings win; say so rather than silently
            log(
                f"{config_path}: resuming with the run's saved settings, not the given ones: "
                + ", ".join(changed)
            )
    if config.modality is None:  # a new run's: of its data, as the command takes it
        config = copy.copy(config)
        config.modality = _data_modality(config, pool, log)
    device = ctx.device
    main = ctx.is_main
    if config.sync_bn and ctx.distributed and device.type != "cuda":  # before the pool is read
        raise LocaldiscError(
            f"--sync-bn on {device.type}: torch's SyncBatchNorm runs on CUDA GPUs only; "
            "run without --sync-bn (each process then normalises its own batch; a run saved "
            "with it resumes on GPUs only)"
        )
    # Where and when it ran, for config.json: taken now, the start, before the pool is read.
    env = environment(device, ctx.world_size, amp=config.amp) if main else None
    # A resume decides by its newest checkpoint's state before the prior and the pool are read:
    # a finished run is left as it is without them (either may have moved since), an unfinished
    # one has its prior compared before a large pool is decoded. A checkpoint that turns out
    # corrupt falls back to an older one: of the same run, unfinished.
    newest_finished = _newest_finished(run_dir / "checkpoints", config) if resume else None
    loaded: tuple[dict[str, Any], dict[str, dict[str, Tensor]]] | None = None
    if newest_finished:
        loaded = load_latest_checkpoint(run_dir / "checkpoints", warn=log)
        if loaded is not None and _run_finished(loaded[0], config):
            return _leave_finished(run_dir, config, ctx, loaded, log)
    # The prior's masks are read before a large pool is decoded: a mistyped prior, a folder of
    # photographs or of empty masks were named only after it.
    prior_bank = (
        load_prior(config.prior, config.size, count=config.prior_count, seed=config.seed,
                   pose=config.prior_pose)
        if config.prior
        else None
    )  # fmt: skip
    prior_now = prior_record(prior_bank) if prior_bank is not None else None
    # resumed from an unfinished run's checkpoint (loaded above: one before a corrupt last one)
    prior_compared = prior_now is not None and (newest_finished is False or loaded is not None)
    if prior_compared:  # a changed prior was refused only after the pool was decoded
        refuse_changed_prior(run_dir, config, saved_meta.get("prior"), prior_now, log)
    # A resumed checkpoint holds every weight: the init_from run is not read, and may be gone.
    from_checkpoint = resume and bool(list_checkpoints(run_dir / "checkpoints"))
    if config.init_from and not from_checkpoint:  # a peer's run has no trained embedding head
        refuse_peer_run(config.init_from)

    skipped_files: list[tuple[Path, str]] = []
    read_files: list[Path] | None = None  # the pool's files, where it was read here
    if pool is None:
        pool_names, read_files = [], []
        pool, skipped_files = resolve_pool(
            config.data,
            config.modality,
            config.resolved_pool_size,
            seed=config.seed,
            workers=config.workers,
            max_images=config.max_images,
            skip_bad=config.skip_bad,
            log=log,
            progress=main and config.progress,
            names=pool_names,
            files=read_files,
        )
    if pool_names is None:
        pool_names = [f"pool image {i}" for i in range(pool.shape[0])]
    if len(pool_names) != pool.shape[0]:
        raise LocaldiscError(f"{len(pool_names)} pool_names for a pool of {pool.shape[0]} images")
    if skipped_files:  # --skip-bad: said, not only written into config.json
        first, why = skipped_files[0]
        more = f", and {len(skipped_files) - 1} more" if len(skipped_files) > 1 else ""
        listed = "" if resume else f"; all are listed under skipped_files in {config_path}"
        log(
            f"skipped {len(skipped_files)} unreadable pool image file(s) (--skip-bad): "
            f"{first} ({why}){more}{listed}"
        )
    pool_channels = MODALITY_CHANNELS[config.modality]
    if pool.shape[1] != pool_channels:
        raise LocaldiscError(
            f"pool has {pool.shape[1]} channels, {config.modality} needs {pool_channels}"
        )
    train_idx, val_idx = _split_pool(pool.shape[0], config)
    train_pool, val_pool = pool[train_idx], pool[val_idx]
    if val_pool.shape[0] == 0:  # else it is only seen as best_val Infinity
        log(
            f"{_no_validation_reason(pool.shape[0], config)}: model_best.safetensors is the "
            "last model, not the best by validation loss"
        )
    # Each validation image's pair (validation_loss): training images, fixed for the run; and
    # the figures' images: the validation images, else (none) the first training images, each
    # named by its source (a file relative to its folder). Of the whole training set, before
    # it is sharded: rank 0's shard gave a run of 2 processes another validation loss.
    val_partners = train_pool[: max(1, len(val_idx))].clone()
    figure_pool = val_pool[:4] if val_idx else train_pool[:4].clone()
    figure_names = [pool_names[i] for i in (val_idx or train_idx)[:4]]
    if ctx.distributed:  # each rank samples from its own shard
        train_pool = train_pool[ctx.rank :: ctx.world_size]
        train_idx = train_idx[ctx.rank :: ctx.world_size]
    if train_pool.shape[0] == 0:
        raise LocaldiscError("the pool is too small to train on")
    # On GPU keep the pool there when it is small against the card (the common case).
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if train_pool.numel() < 0.3 * free:
            train_pool = train_pool.to(device)
        else:
            train_pool = train_pool.pin_memory()
    val_pool = val_pool.to(device)
    val_partners = val_partners.to(device)
    pool_record = {
        "images": int(pool.shape[0]),
        "val_images": int(val_pool.shape[0]),
        # which images validate, and which the figures show (on a resume: the same)
        "val_names": [pool_names[i] for i in val_idx],
        "figure_names": figure_names,
    }
    if read_files is not None:  # which files, so that a changed folder is not reused as this
        pool_record.update(files=len(read_files), files_sha256=files_sha256(read_files))

    # Read before the model is made: a resumed checkpoint's weights replace init_from's.
    if resume and not newest_finished:  # (else loaded above: of an older, unfinished step)
        loaded = load_latest_checkpoint(run_dir / "checkpoints", warn=log)
    if loaded is not None:  # a diverged run's NaN weights were resumed silently
        refuse_diverged(run_dir / "checkpoints", *loaded, ("model", "objective", "discriminator"),
                        "start over in another --out (a lower learning rate may keep it from "
                        "diverging)")  # fmt: skip
    finals = [name for name in FINAL_WEIGHTS if (run_dir / name).is_file()]
    if resume and loaded is None and finals:  # it retrained over a finished run's outputs
        raise CheckpointError(
            f"{run_dir}: holds a finished run's {' and '.join(finals)} but no checkpoint "
            f"(checkpoints/ deleted?): nothing to resume. Its weights are there to use; to "
            "train again, choose another --out (nothing was changed)"
        )
    if resume and loaded is None:  # stopped before its first checkpoint: nothing to keep
        log(f"{run_dir}: no checkpoint yet, starting from step 0")
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    backbone = {k: getattr(config, k) for k in BACKBONE_FIELDS}
    model = LDModel(LDConfig(**backbone, clusters=config.clusters))
    if config.sync_bn and ctx.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if config.init_from and loaded is None:
        refuse_peer_run(config.init_from)  # again: listed checkpoints may all be unreadable
        init_from_run(model, config.init_from)
    objective = None
    if config.method != "ld":
        if ctx.distributed:  # queues and negatives would silently be per process
            raise LocaldiscError(
                f"--method {config.method} runs in one process, not under torchrun"
            )
        objective = build_objective(config, model, train_images=train_pool.shape[0]).to(device)
        default_crop = tuple(config.crop_scale) == PretrainConfig.crop_scale
        if config.method != "genesis" and not default_crop:
            log(
                f"crop_scale {tuple(config.crop_scale)} is LD's: {config.method} keeps its own, "
                "(0.2, 1.0) as in MoCo v2 and DenseCL (localdisc.methods says why)"
            )
    stage1_views = LDViews(config.size, config.modality, crop_scale=tuple(config.crop_scale))
    stage2_views = stage1_views
    gen = torch.Generator().manual_seed(config.seed * 1009 + ctx.rank)
    adversary = None
    if config.prior:
        adversary = AdversarialPrior(
            config.prior, config.size, device, count=config.prior_count, lr=config.disc_lr,
            seed=config.seed, pose=config.prior_pose, view_area=config.crop_scale[0],
            log=log, bank=prior_bank,
        )  # fmt: skip
        if config.prior_pose == "kept":  # cluster 0 in the pose of the reference masks
            stage2_views = LDViews(
                config.size, config.modality, crop_scale=tuple(config.crop_scale),
                rotation=KEPT_POSE_ROTATION, flip_p=0.0, view2_flip_p=0.0, view2_rot90=False,
            )  # fmt: skip

    step = 0
    stage = config.stage_at(0)
    best_val = math.inf
    skipped_steps = 0
    trained_steps = 0
    nonfinite_in_row = 0
    opt_state: dict | None = None
    seconds_before = 0.0  # trained by the run's earlier starts (older checkpoints: unknown, 0)
    seconds_known = True  # False: seconds_before leaves out an older checkpoint's starts
    stage_before = 0.0  # of those, in the checkpoint's stage: its time budget counts them
    # The steps since the last log row, as a checkpoint in between saved them: a resumed run's
    # first row then averages the same steps as an uninterrupted run's (older ones: none).
    window: tuple[dict[str, Tensor], dict[str, Any]] | None = None
    already_finished = False
    if loaded is not None:
        state, tensors = loaded
        # as newest_finished decides (finished here only where the newest state was unreadable)
        already_finished = _run_finished(state, config)
        trained_with = _trained_with(state, tensors)
        if not already_finished and trained_with != ctx.world_size:
            raise CheckpointError(_world_size_problem(run_dir, trained_with, ctx.world_size))
        if not already_finished:
            refuse_changed_pool(run_dir, config, saved_meta.get("pool"), pool_record)
            if prior_now is not None and not prior_compared:
                refuse_changed_prior(run_dir, config, saved_meta.get("prior"), prior_now, log)
        model.load_state_dict(tensors["model"])
        if not already_finished:  # a finished run samples no more (and may have other ranks)
            gen.set_state(tensors["rng"][f"sampler_{ctx.rank}"])
        step = state["step"]
        # A checkpoint at the end of stage 1 holds stage 1's optimizer: resume in stage 1 and
        # let the loop switch, as an uninterrupted run does.
        stage = state["stage"]
        best_val = state["best_val"]
        skipped_steps = state["skipped_steps"]
        trained_steps = state.get("trained_steps", step)
        nonfinite_in_row = state["nonfinite_in_row"]
        seconds_before = state.get("elapsed", 0.0)
        seconds_known = "elapsed" in state and not state.get("elapsed_partial", False)
        stage_before = state.get("stage_elapsed", 0.0)
        if "log_window" in state and "log_window" in tensors:
            window = tensors["log_window"], state["log_window"]
        opt_state = optimizer_from_flat(tensors["optimizer"], state["optimizer"])
        if objective is not None:
            model_state = {f"model.{k}": v for k, v in tensors["model"].items()}
            objective.load_state_dict({**model_state, **tensors["objective"]})
        if adversary is not None:
            adversary.load_state(tensors, state)
        if not already_finished:
            log(f"resumed from step {step}")
    elif main and not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock.hold()  # a second run started at once into this --out is refused here
        meta = {"pretrain": _with_absolute_paths(config), "model": asdict(model.config)}
        meta["pool"] = pool_record
        if prior_now is not None:  # which masks, so that a changed prior is not resumed as this
            meta["prior"] = prior_now
        if skipped_files:
            meta["skipped_files"] = [[os.path.abspath(p), r] for p, r in skipped_files]
        meta["environment"] = env  # outside "pretrain": a resume does not compare it
        atomic_write_text(config_path, json.dumps(meta, indent=2))
    if main and resume and not already_finished:  # the first start's environment stays
        saved = saved_meta
        if loaded is None:  # starting over: on the pool as it is now, which the record says
            saved["pool"] = pool_record
            saved.pop("prior", None)
            if prior_now is not None:
                saved["prior"] = prior_now
            saved.pop("skipped_files", None)
            if skipped_files:
                saved["skipped_files"] = [[os.path.abspath(p), r] for p, r in skipped_files]
        elif prior_now is not None and not prior_recorded(saved.get("prior")):
            saved["prior"] = prior_now  # a run started by an earlier version: compared from now
        meta = {**saved, **resumed(saved, env, step=step)}
        atomic_write_text(config_path, json.dumps(meta, indent=2))

    b = config.batch
    images_per_step = (objective.images_per_step(b) if objective else 5 * b) * ctx.world_size
    # Each rank draws from its own shard of the pool; 2b images a step (two per LD pair).
    sampler = EpochSampler(train_pool.shape[0], 2 * b, (config.seed, ctx.rank))
    if already_finished:  # resuming a finished run trains nothing and rewrites nothing
        return _leave_finished(run_dir, config, ctx, loaded, log)

    ddp_model = _prepare_model(model, stage, ctx, config.compile)
    optimizer = _new_optimizer(model, config.lr_at(step), objective)
    if opt_state is not None:
        optimizer.load_state_dict(opt_state)
    csv_log = TrainingLog(run_dir, step) if main else None
    if objective is None:  # a peer draws no figures (its embedding head is not trained)
        (run_dir / "figures").mkdir(exist_ok=True, parents=True)

    def checkpoint() -> None:
        rng_states = {f"sampler_{ctx.rank}": gen.get_state()}
        if ctx.distributed:  # every rank's sampler state, so that all resume exactly
            gathered: list[Any] = [None] * ctx.world_size
            torch.distributed.all_gather_object(gathered, gen.get_state())
            rng_states = {f"sampler_{r}": s for r, s in enumerate(gathered)}
        # The window so far as the next row will log it (the mean over the ranks), so that after
        # a resume, where every rank starts from it, that row's mean is the same.
        window_sums = distributed.mean_over_ranks(sums)
        if not main:
            return
        opt_tensors, opt_meta = optimizer_to_flat(optimizer)
        tensors = {
            "model": model.state_dict(),
            "optimizer": opt_tensors,
            "rng": rng_states,
            "log_window": window_sums,
        }
        meta = {
            "stage": stage,
            "best_val": best_val,
            # a resume at a spent budget validates this step only where it was not (one row)
            "validated_at": validated_at,
            "skipped_steps": skipped_steps,
            "trained_steps": trained_steps,
            "nonfinite_in_row": nonfinite_in_row,
            "optimizer": opt_meta,
            # resume needs as many processes: each has its own sampler RNG state
            "world_size": ctx.world_size,
            # a run ended by its time budget has steps left: this tells --resume it is done
            "finished": finished or step >= config.total_steps,
            "last_loss": last_loss,
            "elapsed": run_seconds(),
            # an older checkpoint's starts are not in it: the run's total time is unknown
            "elapsed_partial": not seconds_known,
            # the current stage's share: a resumed stage's time budget goes on from it
            "stage_elapsed": time.perf_counter() - stage_start,
            # and whether it is spent, as decided at this step (the stage ends at the next)
            "budget_spent": budget_agreed,
            # the log window's steps (summed in the tensors) and their seconds so far
            "log_window": {"steps": n_summed, "seconds": time.perf_counter() - t_window},
        }
        if objective is not None:  # momentum encoders, queues (the model is saved above)
            tensors["objective"] = {
                k: v for k, v in objective.state_dict().items() if not k.startswith("model.")
            }
        if adversary is not None:
            adv_tensors, adv_meta = adversary.state_tensors()
            tensors.update(adv_tensors)
            meta.update(adv_meta)
        # After a first signal, a second one waits for the write (a fraction of a second): it
        # cut the checkpoint of the stop, and --resume went back to the one before.
        with stopper.deferring():
            save_checkpoint(run_dir / "checkpoints", step, tensors, meta)

    sums: dict[str, Tensor] = {}
    n_summed = 0
    # the loss of the last log row, before the stop too: a budget may end the resumed run
    # before its first row ("final loss nan" in the methods benchmark's table)
    last_loss = float(state.get("last_loss", math.nan)) if loaded is not None else math.nan
    t_start = time.perf_counter()
    t_window = t_start
    steps_done_here = 0
    window_steps = 0
    if window is not None:
        sums = {k: v.to(device) for k, v in window[0].items()}
        n_summed = window_steps = int(window[1]["steps"])
        t_window -= window[1]["seconds"]
    img_per_s = 0.0

    def run_seconds() -> float:
        """Seconds the run has trained, in this start and the earlier ones."""
        return seconds_before + time.perf_counter() - t_start

    def log_row() -> None:
        """Write the log window's means (log.csv, progress bar) and start a new window."""
        nonlocal sums, n_summed, t_window, window_steps, last_loss, img_per_s
        if not n_summed:  # a window of skipped steps only has no means to log
            return
        # Under torchrun the mean over the ranks: every rank gets here at the same step (they
        # agree on each step's skip, and on stops and budgets) with the same terms.
        sums = distributed.mean_over_ranks(sums)
        # One wait for the device for the whole row (an .item() per term waited once each).
        stacked = torch.stack([v.float().reshape(()) for v in sums.values()]) / n_summed
        means = dict(zip(sums, stacked.tolist(), strict=True))
        now = time.perf_counter()
        img_per_s = window_steps * images_per_step / max(now - t_window, 1e-9)
        t_window, window_steps = now, 0
        last_loss = means["loss"]
        if csv_log:
            csv_log.write(
                step=step,
                stage=stage,
                lr=config.lr_at(step - 1),
                img_per_s=round(img_per_s, 2),
                **{k: round(v, 6) for k, v in means.items()},
                elapsed=round(run_seconds(), 1),
            )
        info = " ".join(f"{k} {v:.3f}" for k, v in means.items())
        left = budget_time_left(config, step, stage, now - stage_start, step - stage_first)
        progress.update(step, f"stage {stage}", f"{info} | {img_per_s:.1f} img/s", time_left=left)
        sums, n_summed = {}, 0

    # the step of the run's last validation (older checkpoints: unknown)
    validated_at = state.get("validated_at", -1) if loaded is not None else -1

    def validate() -> None:
        """The held-out loss at ``step`` (rank 0): a row of log.csv, and model_best.safetensors
        where it is the stage's best so far."""
        nonlocal best_val, validated_at
        validated_at = step
        val = validation_loss(
            model, val_pool, stage1_views if stage == 1 else stage2_views, config, stage,
            objective, partners=val_partners,
        )  # fmt: skip
        if csv_log and not math.isnan(val):
            csv_log.write(
                step=step, stage=stage, val_loss=round(val, 6), elapsed=round(run_seconds(), 1)
            )
            if val < best_val:
                best_val = val
                atomic_save_safetensors(model.state_dict(), run_dir / "model_best.safetensors")

    # what a log file of a cluster job cannot tell otherwise
    log(f"training on {_device_text(device)} in "
        f"{'bf16 autocast' if config.amp and bf16_autocast_pays(device) else 'float32'}, "
        f"{ctx.world_size} process(es), {images_per_step} images per step"
        # a peer's log names it: its progress lines say "stage 1", as LD's do
        + (f", --method {config.method}: one stage" if objective else ""))  # fmt: skip
    progress = ProgressBar(
        config.total_steps, step, main and config.progress, "pretrain", before=seconds_before
    )
    # A resumed stage's clock goes on from its stop: else each resume gave the stage its whole
    # budget again, and an interrupted run of a fixed-time comparison trained longer.
    stage_start = time.perf_counter() - stage_before
    # the step at stage_start: the pace behind a budget's time left
    stage_first = step if not stage_before else (config.stage1_steps if stage == 2 else 0)
    finished = False
    # Whether the stage's time budget is spent, decided once a step, before its log row,
    # validation and checkpoint, which keeps it: a resume from there ends the stage where the
    # straight run did (it trained one step more). Under torchrun rank 0's clock, agreed on at
    # the step's finite check (no collective of its own); alone the clock after the step. The
    # stage ends at the top of the next step; a fresh run's first step looks at the clock (a
    # budget spent before any step).
    if loaded is not None and "budget_spent" in loaded[0]:
        budget_agreed = bool(loaded[0]["budget_spent"])
    else:  # a fresh run, or a checkpoint of before the record: the clock, as then
        first_budget = config.stage1_seconds if stage == 1 else config.stage2_seconds
        budget_agreed = not ctx.distributed and _budget_spent(stage_start, first_budget)
    # Ctrl-C or SIGTERM in the loop ends the step, writes a checkpoint there and then stops
    # (engine/stop.py); a second one stops at once.
    stopper = GracefulStop()
    try:
        stopper.install()
        while step < config.total_steps:
            budget = config.stage1_seconds if stage == 1 else config.stage2_seconds
            if budget_agreed:
                done = step - (config.stage1_steps if stage == 2 else 0)
                log(
                    f"stage {stage}: time budget of {budget:.0f} s spent after {done} steps of "
                    f"the stage (global step {step})"
                )
                log_row()  # the steps since the last row, as at the stage's last step
                # ... and its validation: else a stage 2 ended by its budget before its first
                # validation left model_best as stage 1's model, its clustering head untrained.
                if main and validated_at != step:
                    validate()
                if stage == 2 or config.stage2_steps == 0:
                    finished = True
                    break
                step = config.stage1_steps  # on to stage 2
                if step >= config.total_steps:
                    finished = True
                    break
            if config.stage_at(step) != stage:  # stage 1 -> 2: save, unfreeze, new optimizer
                if main:
                    atomic_save_safetensors(model.state_dict(), run_dir / "stage1.safetensors")
                    # Stage 1's best, its clustering head untrained: until stage 2's first
                    # validation the run has no model_best (segment and view would take it).
                    (run_dir / "model_best.safetensors").unlink(missing_ok=True)
                stage = 2
                budget = config.stage2_seconds
                budget_agreed = False  # stage 1's, read at the top of this step
                stage_start = time.perf_counter()
                stage_first = step
                best_val = math.inf
                ddp_model = _prepare_model(model, stage, ctx, config.compile)
                optimizer = _new_optimizer(model, config.lr_at(step))
            views = stage1_views if stage == 1 else stage2_views
            for group in optimizer.param_groups:
                group["lr"] = config.lr_at(step)

            if config.sampler == "epoch":
                idx = sampler.indices(step)
            else:
                idx = torch.randint(train_pool.shape[0], (2 * b,), generator=gen)
            # No blocking copy of the indices to a pool on the GPU (see host_to_device). The
            # batch of a pool on the CPU: non-blocking to CUDA only (a temporary's copy
            # elsewhere is not held for the device).
            x = train_pool[host_to_device(idx, train_pool.device)]
            x = x.to(device, non_blocking=device.type == "cuda")
            assignments = None
            if objective is not None:
                logged = objective(x[:b], x[b:], gen)
                total = logged["loss"]
            else:
                batch = views(x[:b], x[b:], generator=gen)
                if config.channels_last:
                    batch.images = batch.images.contiguous(memory_format=torch.channels_last)
                terms = ld_losses(
                    ddp_model, batch, stage, config, distributed_losses=ctx.distributed
                )
                assignments = terms.assignments
                if adversary is not None and assignments is not None:
                    terms.adv = adversary.generator_loss(assignments[:, :1])
                    terms.total = terms.total + config.prior_weight * terms.adv
                total, logged = terms.total, terms.as_dict()
            optimizer.zero_grad(set_to_none=True)
            # All ranks agree on a finite loss (or the gradient all-reduce hangs), on a stop and
            # on rank 0's budget, in one all_reduce and one host sync.
            finite, agreed_signum, budget_agreed = stopper.agree(
                torch.isfinite(total.detach()).float(),
                ctx.distributed,
                ctx.distributed and main and _budget_spent(stage_start, budget),
            )
            if not finite:
                skipped_steps += 1
                nonfinite_in_row += 1
                log(f"step {step}: non-finite loss, step skipped ({nonfinite_in_row} in a row)")
                if nonfinite_in_row >= config.max_nonfinite:  # a stop asked for wins
                    stopper.diverged(
                        f"{nonfinite_in_row} non-finite losses in a row at step {step}; stopped. "
                        + _diverged_hint(run_dir / "checkpoints", config),
                        log,
                        agreed_signum if ctx.distributed else None,
                    )
                # No `continue`: a skipped step still logs, validates and checkpoints where it
                # is due, or a skip at the last step would leave the run without its final
                # checkpoint (and --resume would redo finished steps).
                step += 1
            else:
                nonfinite_in_row = 0
                total.backward()
                optimizer.step()
                if objective is not None:  # the progress before this step, as its momentum
                    objective.after_step(
                        run_progress(config, step, time.perf_counter() - stage_start)
                    )
                if adversary is not None and assignments is not None:
                    logged["disc"] = adversary.discriminator_step(assignments[:, :1], gen)
                step += 1
                trained_steps += 1
                steps_done_here += 1
                window_steps += 1
                for k, val in logged.items():
                    sums[k] = sums.get(k, 0) + val.detach()
                n_summed += 1

            if not ctx.distributed:  # under torchrun: agreed on at the finite check
                budget_agreed = _budget_spent(stage_start, budget)
            # A stage's last steps are logged as a shorter row: carried on, they were averaged
            # with the next stage's (whose terms differ) or, at the run's end, never written.
            # A stage ended by its budget too, before its checkpoint: a resume from there wrote
            # the row and the validation again.
            end_of_stage = (
                step == config.total_steps or config.stage_at(step) != stage or budget_agreed
            )
            if step % config.log_every == 0 or end_of_stage:
                log_row()

            # Validation, figures and checkpoints are left out of the logged images/s: the
            # window after them would understate the training speed.
            aside_start = time.perf_counter()
            if main and (step % config.val_every == 0 or end_of_stage):
                validate()
            figures = main and objective is None  # a peer's embedding head is not trained
            if figures and (step % config.figure_every == 0 or step == config.total_steps):
                write_figures(
                    model,
                    figure_pool,
                    run_dir / "figures",
                    step,
                    clusters=config.stage_at(step - 1) == 2,
                    names=figure_names,
                )
            checkpointed = step % config.checkpoint_every == 0 or step == config.total_steps
            if checkpointed:
                checkpoint()
            t_window += time.perf_counter() - aside_start
            # Alone, the signal as it is now; under torchrun the one agreed on at this step's
            # finite check (a signal after it is agreed on at the next step). The last step
            # finishes the run instead.
            signum = agreed_signum if ctx.distributed else stopper.signum
            if signum and step < config.total_steps:
                if not checkpointed:
                    checkpoint()
                stopper.stop(signum)
            if stop_at_step is not None and step >= stop_at_step:
                break
        # Written while a first Ctrl-C or SIGTERM is still only a request: after restore() it
        # cut the checkpoint of a run ended by its time budget. The run ends as at its last step.
        if finished:  # ended by a time budget: the outputs a full run ends with
            checkpoint()
            if main and objective is None:
                write_figures(model, figure_pool, run_dir / "figures", step, clusters=stage == 2,
                              names=figure_names)  # fmt: skip
        finished = finished or step == config.total_steps
        if main and finished:
            _save_final_weights(model, run_dir)
    finally:
        stopper.restore()
        progress.close()
        if csv_log:
            csv_log.close()
    # No rank may leave (and tear down gloo/NCCL) while rank 0 is still writing.
    distributed.barrier()
    if stopper.signum:  # asked for during the run's last step or writes: the run is whole, and
        # the command stops (a benchmark went on to its next run)
        signal.raise_signal(stopper.signum)
    elapsed = time.perf_counter() - t_start
    overall = steps_done_here * images_per_step / max(elapsed, 1e-9)
    return PretrainResult(
        run_dir, step, overall, last_loss, None if math.isinf(best_val) else best_val,
        skipped_steps, trained_steps, trained_steps * images_per_step,
        elapsed=run_seconds() if seconds_known else None,
    )  # fmt: skip
