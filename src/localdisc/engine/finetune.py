"""Fine-tuning a :class:`~localdisc.models.segmenter.Segmenter` with few labels (METHOD.md 4).

The paper's protocol (Chen et al., TPAMI 2023): soft Dice loss, Adam 1e-3, batch 2; with a
pre-trained encoder, ``frozen_epochs`` with the encoder frozen (its batch norm in eval mode), then
``epochs`` of fine-tuning everything from the best frozen model; from scratch, ``epochs`` of
training. After every epoch the model is scored on the validation images (mean per-image Dice at
0.5) and the best one is kept. Images and masks live in memory as tensors; augmentation (flips,
rotation) runs on the training device.

Given a ``checkpoint_dir``, :func:`finetune` can be stopped and continued exactly: at the end of
an epoch, at most every ``checkpoint_seconds`` (and after the last one), it writes a checkpoint
there (engine.checkpoint's format, the newest only: weights, best weights, Adam's state, the
sampler's state, the phases so far); the first SIGINT or SIGTERM ends the step, writes one at that
step and raises KeyboardInterrupt saying where the training continues (engine.stop; a second
signal during that write waits for it to end, then does the same; a third one drops the write,
saying so and what is kept in ``log``: :func:`~localdisc.engine.checkpoint.save_resumable`, as
the pseudo-label loop's); and a call with the same settings and images continues from the
newest one, ending with the weights and histories of an uninterrupted run: bit for bit on a
CPU; on a GPU (not measured) within the run-to-run differences of CUDA's kernels, by which two
uninterrupted runs may differ too (PyTorch lists bilinear upsampling's CUDA backward pass, the
decoder's, as nondeterministic; cuDNN's convolutions are left to their fastest algorithms).
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import Tensor

from localdisc.data.preprocess import LUMA, MODALITY_CHANNELS, raw_intensities
from localdisc.data.views import normalize
from localdisc.engine.checkpoint import (
    load_resumable,
    newest_position,
    newest_state,
    nonfinite_names,
    optimizer_from_flat,
    optimizer_to_flat,
    save_resumable,
    stop_at_checkpoint,
    tensor_digest,
    tensors_named,
)
from localdisc.engine.distributed import resolve_device
from localdisc.engine.monitor import ProgressBar
from localdisc.engine.precision import bf16_autocast
from localdisc.engine.stop import GracefulStop
from localdisc.errors import CheckpointError, InputError, LocaldiscError
from localdisc.models.modes import in_mode
from localdisc.models.segmenter import Segmenter

#: A phase as the progress bar and the log name it (``PhaseResult.name``, history.csv's phase,
#: is the key): "finetune finetune: ..." said the same word twice and not what trains.
PHASE_LABELS = {"frozen": "frozen encoder", "finetune": "whole network", "scratch": "from scratch"}

#: Rotation range (degrees, U(-r, r)) and flips of the paper's augmentation per modality.
AUGMENTATION = {"fundus": (180.0, True), "xray": (30.0, False)}

#: :class:`FinetuneConfig` fields that change how a run goes, not its result: not among the
#: settings a checkpoint (or ``localdisc finetune``'s record, tasks.transfer.protocol) must match.
RUNTIME_FIELDS = ("device", "progress", "checkpoint_seconds")


#: :class:`FinetuneConfig`'s number fields: the kind each must be and the type it is kept as.
_NUMBER_FIELDS = (
    *((n, Integral, int) for n in ("frozen_epochs", "epochs", "batch", "steps_per_epoch", "seed")),
    *((n, Real, float) for n in ("lr", "rotation", "checkpoint_seconds")),
)


def as_bool(value: object, name: str, *, none: bool = False) -> bool | None:
    """``value`` as Python's bool (numpy's ``np.True_`` failed in json.dumps of config.json),
    ``None`` where ``none`` allows it; anything else refused, naming ``name``."""
    if value is None and none:
        return None
    if not isinstance(value, bool | np.bool_):
        raise LocaldiscError(f"{name} must be True or False, not {value!r}")
    return bool(value)


@dataclass
class FinetuneConfig:
    """The training schedule; defaults are the paper's."""

    frozen_epochs: int = 100
    epochs: int = 100
    batch: int = 2
    # Steps per epoch; None: one pass over the training images (the paper's epoch). With 2
    # labelled images a pass is one step, so 100 epochs are 100 steps: this makes epochs longer.
    steps_per_epoch: int | None = None
    lr: float = 1e-3
    rotation: float | None = None  # None: the modality's (180 fundus, 30 X-ray)
    flips: bool | None = None  # None: the modality's (fundus yes, X-ray no)
    seed: int = 0
    amp: bool = True  # bf16 autocast where it pays: CUDA, CPUs with bf16 (engine.precision)
    device: str = "auto"
    progress: bool = True
    # With a checkpoint folder: seconds between checkpoints, written at the end of an epoch.
    # A checkpoint is about 5 copies of the weights (some 25 MB, well under a second to write):
    # every minute costs nothing measurable, while fast (GPU) epochs do not write each time, and
    # a SIGKILL or a crash, which no checkpoint follows, loses about a minute and one epoch.
    checkpoint_seconds: float = 60.0

    def __post_init__(self) -> None:
        problems = []
        # numpy's numbers as Python's (config.json is JSON: np.int64 failed there, after the
        # training); anything else named here, not a TypeError from a comparison below.
        for name, kind, cast in _NUMBER_FIELDS:
            value = getattr(self, name)
            if value is None and name in ("steps_per_epoch", "rotation"):
                continue
            if isinstance(value, bool) or not isinstance(value, kind):
                what = "a whole number" if kind is Integral else "a number"
                raise LocaldiscError(
                    f"invalid fine-tuning config: {name} must be {what}, not {value!r}"
                )
            setattr(self, name, cast(value))
        for name in ("amp", "progress", "flips"):  # flips None: the modality's
            value = as_bool(getattr(self, name), f"invalid fine-tuning config: {name}",
                            none=name == "flips")  # fmt: skip
            setattr(self, name, value)
        if self.frozen_epochs < 0 or self.epochs < 0:
            problems.append("epoch counts must be >= 0")
        if self.batch < 1:
            problems.append("batch must be >= 1")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            problems.append("steps_per_epoch must be >= 1")
        # NaN passes `lr <= 0` and inf too: both diverge, then evaluation fails far from here.
        if not (math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"lr must be > 0 and finite, not {self.lr}")
        # augment() rotates only where rotation > 0: a negative range or NaN trained without
        # rotation, silently (0 turns it off; None is the modality's).
        if self.rotation is not None and not (math.isfinite(self.rotation) and self.rotation >= 0):
            problems.append(
                f"rotation must be a range in degrees >= 0 and finite (U(-r, r); 0: no "
                f"rotation; None: the modality's), not {self.rotation!r}"
            )
        if not self.checkpoint_seconds >= 0:  # NaN too
            problems.append(f"checkpoint_seconds must be >= 0, not {self.checkpoint_seconds}")
        if problems:
            raise LocaldiscError("invalid fine-tuning config: " + "; ".join(problems))


@dataclass
class PhaseResult:
    """One training phase: ``frozen``, ``finetune`` or ``scratch``."""

    name: str
    epochs: int
    best_epoch: int
    best_val_dice: float
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class FinetuneResult:
    """The best model's weights, those of the best frozen model (pre-trained inits) and phases."""

    state: dict[str, Tensor]
    frozen_state: dict[str, Tensor] | None
    phases: list[PhaseResult]
    # Seconds that interrupted runs spent on this fine-tuning before the checkpoint it continued
    # from (0 without one); the phases' ``seconds`` include them.
    earlier_seconds: float = 0.0


def augment(
    images: Tensor,
    masks: Tensor,
    *,
    rotation: float,
    flips: bool,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Random flips (p = 0.5 each axis) and rotation U(-rotation, rotation) degrees per item.

    ``images`` are raw intensities in [0, 1] (outside the rotated image is black, as in a
    photograph's background); ``masks`` are rotated with nearest-neighbour sampling.
    """
    n = images.shape[0]
    draws = torch.rand(n, 3, generator=generator).to(images.device)
    if flips:
        h_flip = draws[:, 0] < 0.5
        v_flip = draws[:, 1] < 0.5
        images = torch.where(h_flip[:, None, None, None], images.flip(-1), images)
        masks = torch.where(h_flip[:, None, None, None], masks.flip(-1), masks)
        images = torch.where(v_flip[:, None, None, None], images.flip(-2), images)
        masks = torch.where(v_flip[:, None, None, None], masks.flip(-2), masks)
    if rotation > 0:
        angle = (draws[:, 2] * 2 - 1) * math.radians(rotation)
        cos, sin = torch.cos(angle), torch.sin(angle)
        zero = torch.zeros_like(cos)
        theta = torch.stack(
            [torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1
        )
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", align_corners=False)
        masks = F.grid_sample(masks, grid, mode="nearest", align_corners=False)
    return images, masks


@torch.no_grad()
def predict_batch(model: Segmenter, images: Tensor, batch: int, amp: bool = True) -> Tensor:
    """Probabilities ``[N, 1, H, W]`` (CPU) of raw [0, 1] images already at the model size."""
    device = next(model.parameters()).device
    out = []
    with in_mode(model, training=False):
        for start in range(0, images.shape[0], batch):
            x = normalize(images[start : start + batch].to(device), model.config.modality)
            with bf16_autocast(device, amp):
                out.append(torch.sigmoid(model(x).float()).cpu())
    return torch.cat(out)


def mean_dice(prob: Tensor, masks: Tensor, threshold: float = 0.5) -> float:
    """Mean per-image Dice of ``prob >= threshold`` (both empty counts as 1)."""
    pred = prob >= threshold
    target = masks > 0.5
    inter = (pred & target).flatten(1).sum(1).float()
    total = (pred.flatten(1).sum(1) + target.flatten(1).sum(1)).float()
    dice = torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))
    return dice.mean().item()


def _epoch_batches(n: int, config: FinetuneConfig, generator: torch.Generator) -> list[Tensor]:
    """Index batches of one epoch: a shuffled pass, or ``steps_per_epoch`` batches drawn from
    consecutive shuffled passes (every image once per pass)."""
    if config.steps_per_epoch is None:
        order = torch.randperm(n, generator=generator)
        return list(order.split(config.batch))
    need = config.steps_per_epoch * config.batch
    passes = [torch.randperm(n, generator=generator) for _ in range(-(-need // n))]
    return list(torch.cat(passes)[:need].split(config.batch))


@dataclass
class _Start:
    """Where a phase starts: epoch and step, and what a checkpoint kept of the phase so far."""

    epoch: int = 1
    step: int = 0  # steps of ``epoch`` done
    batches: list[Tensor] = field(default_factory=list)  # ``epoch``'s, when ``step`` > 0
    losses: list[float] = field(default_factory=list)  # of its steps done
    best: dict[str, Tensor] | None = None
    optimizer: dict[str, Any] | None = None
    result: PhaseResult | None = None


@dataclass
class _Run:
    """What a fine-tuning keeps across its phases, and its checkpoints (without a ``folder``,
    none: :meth:`save` does nothing and no signal is deferred)."""

    model: Segmenter
    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    config: FinetuneConfig
    generator: torch.Generator
    plan: list[tuple[str, int]]
    folder: Path | None
    # What a checkpoint must match to be continued: settings, phases, images (:func:`_record`).
    record: dict[str, Any] = field(default_factory=dict)
    phase: int = 0  # the plan's phase in progress
    phases: list[PhaseResult] = field(default_factory=list)  # the finished ones
    frozen_state: dict[str, Tensor] | None = None
    stop: GracefulStop = field(default_factory=GracefulStop)
    last_save: float = field(default_factory=time.monotonic)
    log: Callable[[str], None] = print
    # The encoder's parameters the caller left trainable (the others stay frozen throughout).
    trainable: list[bool] = field(default_factory=list)

    @property
    def steps_per_epoch(self) -> int:
        return self.config.steps_per_epoch or -(-self.train[0].shape[0] // self.config.batch)

    def due(self) -> bool:
        """Whether an epoch's end should write a checkpoint (``checkpoint_seconds`` passed)."""
        return time.monotonic() - self.last_save >= self.config.checkpoint_seconds

    def save(
        self,
        epoch: int,
        step: int,
        batches: list[Tensor],
        losses: list[float],
        best: dict[str, Tensor],
        optimizer: torch.optim.Optimizer,
        result: PhaseResult,
    ) -> None:
        """Checkpoint the phase in progress, to continue at ``step`` of ``epoch``."""
        if self.folder is None:
            return
        opt_tensors, opt_meta = optimizer_to_flat(optimizer)
        tensors = {
            "model": self.model.state_dict(), "best": best, "optimizer": opt_tensors,
            "rng": {"generator": self.generator.get_state()},
        }  # fmt: skip
        if self.frozen_state is not None:
            tensors["frozen"] = self.frozen_state
        state = {
            # save_checkpoint adds "step", the steps taken in all (the folder's name).
            "finetune": self.record, "phase": self.phase, "epoch": epoch, "epoch_step": step,
            "steps_per_epoch": self.steps_per_epoch, "batches": [b.tolist() for b in batches],
            "losses": losses, "optimizer": opt_meta, "current": asdict(result),
            "phases": [asdict(p) for p in self.phases],
        }  # fmt: skip
        # Named by the steps taken, so that the newest is the last (save_checkpoint keeps it).
        epochs_before = sum(e for _, e in self.plan[: self.phase])
        steps = (epochs_before + epoch - 1) * self.steps_per_epoch + step
        # A second signal waits for the write, a third one drops it (engine.checkpoint).
        save_resumable(self.stop, self.folder, steps, tensors, state, what=_position(state),
                       describe=_position, log=self.log)  # fmt: skip
        self.last_save = time.monotonic()

    def halt(self, signum: int) -> None:
        """Hand the signal on (engine.stop) once its checkpoint is written, saying where the
        fine-tuning continues."""
        stop_at_checkpoint(self.stop, signum, self.folder, _position)

    def _compared(self) -> dict[str, Any]:
        """The record a checkpoint must match: :attr:`record`, except that a plan without a
        frozen phase takes the checkpoint's own ``frozen_epochs``: it changes nothing there
        (where it does, the phases compared differ too). tasks.transfer.protocol leaves it out
        the same way, so a run folder stopped with ``--init random --frozen-epochs 100`` is "the
        same settings" with 5, and its checkpoint is continued. The record written stays whole,
        as the checkpoints already written hold it."""
        record = {k: v for k, v in self.record.items() if k != "frozen_by_caller"}  # (load)
        if any(name == "frozen" for name, _ in self.plan):
            return record
        state = newest_state(self.folder) if self.folder is not None else None
        try:
            saved = state["finetune"]["settings"]["frozen_epochs"]  # type: ignore[index]
        except (LookupError, TypeError):  # none, or not of this shape: compared as it is
            return record
        return {**record, "settings": {**record["settings"], "frozen_epochs": saved}}

    def load(self) -> _Start | None:
        """Restore the newest checkpoint; the phase to continue starts where it says (None
        without one: a corrupt one is said and removed, and the fine-tuning starts over)."""
        if self.folder is None:
            return None
        # The best weights too: the result, whatever the phases still to come train.
        loaded = load_resumable(self.folder, "finetune", self._compared(), training="fine-tuning",
                                describe=_position, log=self.log,
                                weights=("model", "best", "frozen"))  # fmt: skip
        if loaded is None:
            return None
        state, tensors, differ = loaded
        # Compared both ways, a checkpoint of before the record as none frozen: the optimizer's
        # state holds the trainable parameters alone (a bare ValueError of torch's).
        then = state["finetune"].get("frozen_by_caller", [])
        now = self.record.get("frozen_by_caller", [])
        if then != now:
            raise CheckpointError(
                f"{self.folder}: a checkpoint of a fine-tuning with other encoder parameters "
                f"frozen by its caller ({', '.join(then) or 'none'}; now "
                f"{', '.join(now) or 'none'}); freeze those again, or delete the folder to start "
                "over"
            )
        if differ:
            raise CheckpointError(
                f"{self.folder}: a checkpoint of another fine-tuning (its "
                f"{' and '.join(differ)} differ from this one's); delete the folder to start over"
            )
        self.model.load_state_dict(tensors["model"])
        self.generator.set_state(tensors["rng"]["generator"])
        self.frozen_state = tensors.get("frozen")
        self.phases = [PhaseResult(**p) for p in state["phases"]]
        self.phase = state["phase"]
        return _Start(
            epoch=state["epoch"],
            step=state["epoch_step"],
            batches=[torch.tensor(b, dtype=torch.long) for b in state["batches"]],
            losses=state["losses"],
            best=tensors["best"],
            optimizer=optimizer_from_flat(tensors["optimizer"], state["optimizer"]),
            result=PhaseResult(**state["current"]),
        )


def _record(
    config: FinetuneConfig,
    plan: list[tuple[str, int]],
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
) -> dict[str, Any]:
    """What a checkpoint must match to be continued, as JSON reads it back: the settings that
    change the result, the phases and a hash of the training and validation tensors."""
    settings = {k: v for k, v in asdict(config).items() if k not in RUNTIME_FIELDS}
    record = {"settings": settings, "phases": plan, "images": tensor_digest(*train, *val)}
    return json.loads(json.dumps(record))


def _phase(
    run: _Run,
    name: str,
    epochs: int,
    progress: Callable[[str, int, dict[str, float]], None],
    start: _Start | None = None,
) -> tuple[dict[str, Tensor], PhaseResult]:
    model, config, generator = run.model, run.config, run.generator
    start = start or _Start()
    device = next(model.parameters()).device
    frozen = name == "frozen"
    # The caller's frozen parameters stay so in every phase (a stem kept fixed was trained).
    for parameter, trainable in zip(model.encoder.parameters(), run.trainable, strict=True):
        parameter.requires_grad_(trainable and not frozen)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr)
    if start.optimizer is not None:
        optimizer.load_state_dict(start.optimizer)
    # Soft Dice of METHOD.md 4, -2 sum(y p) / (sum y + sum p + 1), over the whole batch: MONAI's
    # DiceLoss with these smoothing terms is 1 plus it (same gradient).
    loss_fn = DiceLoss(sigmoid=True, batch=True, smooth_nr=0.0, smooth_dr=1.0)
    modality = model.config.modality
    rotation, flips = AUGMENTATION[modality]
    rotation = rotation if config.rotation is None else config.rotation
    flips = flips if config.flips is None else config.flips

    images, masks = run.train
    n = images.shape[0]
    best_state = copy.deepcopy(model.state_dict()) if start.best is None else start.best
    result = start.result or PhaseResult(name, epochs, 0, -1.0, 0.0)
    seconds_before = result.seconds  # spent on the phase by interrupted runs
    t0 = time.perf_counter()

    def save(epoch: int, step: int, batches: list[Tensor], losses: list[float]) -> None:
        result.seconds = seconds_before + time.perf_counter() - t0
        run.save(epoch, step, batches, losses, best_state, optimizer, result)

    last_phase = run.phase == len(run.plan) - 1
    for epoch in range(start.epoch, epochs + 1):
        model.train()
        if frozen:  # frozen encoder: its batch-norm statistics stay those of pre-training
            model.encoder.eval()
        resumed = epoch == start.epoch and start.step > 0  # inside the epoch it stopped in
        batches = start.batches if resumed else _epoch_batches(n, config, generator)
        losses = list(start.losses) if resumed else []
        for step in range(start.step if resumed else 0, len(batches)):
            idx = batches[step]
            x, y = augment(
                images[idx].to(device),
                masks[idx].to(device),
                rotation=rotation,
                flips=flips,
                generator=generator,
            )
            with bf16_autocast(device, config.amp):
                logits = model(normalize(x, modality))
            loss = loss_fn(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item() - 1.0)  # report the paper's value
            # A signal: stop after this step (an epoch at 512 px on a CPU takes minutes). After
            # the epoch's last step, its validation and checkpoint come first, below.
            if run.stop.signum is not None and step + 1 < len(batches):
                # Not NaN weights over the checkpoint before (one is kept): the stop comes first.
                _refuse_diverged(model, name, epoch, losses, config.lr, run.stop, run.log)
                save(epoch, step + 1, batches, losses)
                run.halt(run.stop.signum)
        _refuse_diverged(model, name, epoch, losses, config.lr, run.stop, run.log)
        val_dice = mean_dice(predict_batch(model, run.val[0], config.batch, config.amp), run.val[1])
        row = {"epoch": epoch, "loss": sum(losses) / len(losses), "val_dice": val_dice}
        result.history.append(row)
        if val_dice > result.best_val_dice:
            result.best_val_dice, result.best_epoch = val_dice, epoch
            best_state = copy.deepcopy(model.state_dict())
        progress(name, epoch, row)
        signum = run.stop.signum
        # After the last epoch too: stopped while the caller evaluates, nothing is retrained.
        if signum is not None or run.due() or (last_phase and epoch == epochs):
            save(epoch + 1, 0, [], [])
        if signum is not None:
            run.halt(signum)
    result.seconds = seconds_before + time.perf_counter() - t0
    return best_state, result


def _refuse_diverged(
    model: Segmenter,
    phase: str,
    epoch: int,
    losses: list[float],
    lr: float,
    stop: GracefulStop,
    log: Callable[[str], None],
) -> None:
    """Stop a fine-tuning (:class:`~localdisc.errors.DivergedError`; a stop asked for wins:
    :meth:`GracefulStop.diverged`) whose weights (batch-norm statistics included) hold NaN or
    inf after an epoch: it went on, scoring a validation Dice of 0 per epoch, and its result
    failed far from here ("prob contains NaN", when the test images were scored) or predicted
    nothing. One pass of ``isfinite`` per epoch."""
    bad = nonfinite_names(model.state_dict())
    if bad:
        loss = "NaN" if any(math.isnan(v) for v in losses) else "finite"
        stop.diverged(
            f"the fine-tuning diverged ({PHASE_LABELS[phase]}, epoch {epoch}): its weights hold "
            f"NaN or inf (in {tensors_named(bad)}; loss {loss}); a learning rate lower than "
            f"{lr:g} (finetune --lr) may keep it from diverging",
            log,
        )


def _training_pair(pair: tuple[Tensor, Tensor], name: str, modality: str) -> tuple[Tensor, Tensor]:
    """``(images, masks)`` as the loop needs them: ``float32`` ``[N, C, S, S]`` in [0, 1] and
    ``[N, 1, S, S]`` of 0 and 1. Images take the values and channels that prediction takes
    (:func:`~localdisc.data.preprocess.raw_intensities`: ``uint8`` / 255, ``uint16`` / 65535,
    floats in [0, 1]; grey repeated for a fundus model, colour made luminance for an X-ray one,
    alpha dropped: :func:`~localdisc.data.preprocess.to_modality_channels`), so that the model
    learns the images it is later given (a grey batch for a fundus model failed inside the
    network, after training had started); masks are
    boolean or 0/1 of any type. Anything else is refused here, naming ``name``, rather than
    deep inside augmentation (grid_sample has no kernel for bool or uint8) or trained on (a
    0/255 mask entered the soft Dice as 255)."""
    images, masks = pair
    if images.ndim != 4 or masks.ndim != 4 or masks.shape[1] != 1:
        raise LocaldiscError(
            f"fine-tuning {name}: images must be [N, C, S, S] and masks [N, 1, S, S], not "
            f"{list(images.shape)} and {list(masks.shape)}"
        )
    if images.shape[0] != masks.shape[0] or images.shape[2:] != masks.shape[2:]:
        raise LocaldiscError(
            f"fine-tuning {name}: {list(images.shape)} images and {list(masks.shape)} masks "
            "differ in number or size"
        )
    values = raw_intensities(images, f"the fine-tuning's {name} images tensor")
    images = torch.from_numpy(values).to(images.device)
    if images.shape[1] not in (1, 3, 4):
        raise LocaldiscError(
            f"fine-tuning {name}: images of {images.shape[1]} channels; give 1 (grey), 3 (RGB) "
            "or 4 (RGBA)"
        )
    images = images[:, :3]  # alpha
    want = MODALITY_CHANNELS[modality]
    if images.shape[1] == 1 and want == 3:
        images = images.expand(-1, 3, -1, -1).contiguous()
    elif images.shape[1] == 3 and want == 1:
        luma = torch.tensor(LUMA, dtype=images.dtype, device=images.device)
        images = torch.einsum("nchw,c->nhw", images, luma)[:, None]
    if masks.dtype != torch.bool and not ((masks == 0) | (masks == 1)).all():
        # Not made 0/1 here: 0/255 is a mask, but 0..255 could be an image passed by mistake.
        found = np.unique(masks.detach().float().cpu().numpy()).tolist()  # one NaN, not each
        shown = ", ".join(f"{v:g}" for v in found[:4]) + (", ..." if len(found) > 4 else "")
        raise InputError(
            f"the fine-tuning's {name} masks must be boolean or hold only 0 and 1, not values "
            f"{shown} ({masks.dtype}): pass masks > 0 for 0/255 masks"
        )
    return images, masks.float()


def training_plan(config: FinetuneConfig, pretrained: bool) -> list[tuple[str, int]]:
    """The phases and their epochs: ``frozen`` then ``finetune`` from a pre-trained encoder,
    else ``scratch``; phases of 0 epochs left out, and none at all refused."""
    plan = [("frozen", config.frozen_epochs), ("finetune", config.epochs)]
    if not pretrained:
        plan = [("scratch", config.epochs)]
    plan = [(name, epochs) for name, epochs in plan if epochs > 0]
    if not plan:
        given = f"--frozen-epochs {config.frozen_epochs}, " if pretrained else "from scratch: "
        raise LocaldiscError(
            f"nothing to train: every phase has 0 epochs ({given}--epochs {config.epochs})"
        )
    return plan


def _position(state: dict[str, Any]) -> str:
    """Where the fine-tuning of a checkpoint's ``state`` continues, in words: the phase's
    epoch, and with two phases the epoch in all too, as the progress lines count them
    ("whole network: epoch 4/5"), or "whole network epoch 2/3" read as going back."""
    plan = state["finetune"]["phases"]
    phase, epoch, step = state["phase"], state["epoch"], state["epoch_step"]
    name, epochs = plan[phase]
    if epoch > epochs:  # the phase is done: on to the next one, if any
        if phase + 1 == len(plan):
            return "the end of the training"
        phase, (name, epochs), epoch = phase + 1, plan[phase + 1], 1
    text = f"{PHASE_LABELS[name]} epoch {epoch}/{epochs}"
    if len(plan) > 1:
        before = sum(e for _, e in plan[:phase])
        text += f" (epoch {before + epoch}/{sum(e for _, e in plan)} in all)"
    return text + (f", step {step + 1}/{state['steps_per_epoch']}" if step else "")


def checkpoint_position(checkpoint_dir: str | Path) -> str | None:
    """Where a fine-tuning continues from the newest checkpoint in ``checkpoint_dir`` ("whole
    network epoch 37/100"), or None where there is none (or it cannot be read)."""
    return newest_position(checkpoint_dir, _position)


def finetune(
    model: Segmenter,
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    config: FinetuneConfig,
    *,
    pretrained: bool,
    log: Callable[[str], None] = print,
    checkpoint_dir: str | Path | None = None,
) -> FinetuneResult:
    """Train ``model`` on ``train`` = (images ``[N, C, S, S]`` in [0, 1], masks ``[N, 1, S, S]``).

    With ``pretrained`` the frozen phase runs first and the fine-tuning phase starts from its best
    model; otherwise one ``scratch`` phase of ``config.epochs``. ``model`` ends holding the best
    weights, which are also returned.

    With ``checkpoint_dir`` (see the module docstring) the run continues from the newest
    checkpoint there, if any, and the first SIGINT/SIGTERM writes one and raises
    KeyboardInterrupt (a second one stops at once, or, during that checkpoint's write, once it
    is written; a third one then stops at once, keeping the checkpoint before). A checkpoint of
    other settings or images raises :class:`~localdisc.errors.CheckpointError`; ``model`` must
    be built as before (its weights are the checkpoint's).
    """
    modality = model.config.modality
    train, val = _training_pair(train, "train", modality), _training_pair(val, "val", modality)
    if train[0].shape[0] == 0 or val[0].shape[0] == 0:
        raise LocaldiscError("fine-tuning needs at least one training and one validation image")
    plan = training_plan(config, pretrained)
    grads = [p.requires_grad for p in model.encoder.parameters()]  # the caller's, given back
    device = resolve_device(config.device)
    model.to(device)
    model.to(memory_format=torch.channels_last)  # faster on GPUs and oneDNN CPUs
    generator = torch.Generator().manual_seed(config.seed)
    folder = None if checkpoint_dir is None else Path(checkpoint_dir)
    run = _Run(model, train, val, config, generator, plan, folder, log=log, trainable=grads)
    if folder is not None:
        run.record = _record(config, plan, train, val)
        # The optimizer holds the others alone: another set is another run (_Run.load).
        names = [name for name, _ in model.encoder.named_parameters()]
        run.record["frozen_by_caller"] = [n for n, g in zip(names, grads, strict=True) if not g]
    start = run.load()
    current = start.result if start is not None else None  # the phase stopped in, as far as done
    earlier = sum(p.seconds for p in run.phases) + (current.seconds if current else 0.0)

    done = sum(e for _, e in plan[: run.phase])  # epochs of the phases before

    def progress(name: str, epoch: int, row: dict[str, float]) -> None:
        # The loss is minus the soft Dice (METHOD.md 4): shown as the soft Dice, not "loss -0.14".
        shown = f"train soft Dice {-row['loss']:.4f}, val Dice {row['val_dice']:.4f}"
        bar.update(done + epoch, PHASE_LABELS[name], shown)

    epochs_in_all = sum(e for _, e in plan)
    first = done + (start.epoch - 1 if start else 0)
    with ProgressBar(
        epochs_in_all, first, config.progress, "finetune", unit="epoch", before=earlier
    ) as bar:  # elapsed from the run's start, as the epochs are counted
        if folder is not None:  # a stop then writes a checkpoint first (engine/stop.py)
            run.stop.install()
        try:
            for index in range(run.phase, len(plan)):
                name, epochs = plan[index]
                run.phase = index
                state, result = _phase(run, name, epochs, progress, start)
                start = None
                done += epochs
                model.load_state_dict(state)
                run.phases.append(result)
                if name == "frozen":
                    run.frozen_state = state
                log(
                    f"{PHASE_LABELS[name]}: best validation Dice {result.best_val_dice:.4f} at "
                    f"epoch {result.best_epoch}/{epochs} ({result.seconds:.0f} s)"
                )
            if run.stop.signum is not None:  # after the last check: the checkpoint is written
                run.halt(run.stop.signum)
        finally:
            run.stop.restore()
            # Stopped or failed in the frozen phase: the caller's model was left frozen, and a
            # loop of its own then trained the decoder alone. The caller's own flags, not all.
            for parameter, trainable in zip(model.encoder.parameters(), grads, strict=True):
                parameter.requires_grad_(trainable)
    return FinetuneResult(model.state_dict(), run.frozen_state, run.phases, earlier)
