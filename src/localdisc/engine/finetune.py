"""Fine-tuning a :class:`~localdisc.models.segmenter.Segmenter` with few labels (METHOD.md 4).

The paper's protocol (Chen et al., TPAMI 2023): soft Dice loss, Adam 1e-3, batch 2; with a
pre-trained encoder, ``frozen_epochs`` with the encoder frozen (its batch norm in eval mode), then
``epochs`` of fine-tuning everything from the best frozen model; from scratch, ``epochs`` of
training. After every epoch the model is scored on the validation images (mean per-image Dice at
0.5) and the best one is kept. Images and masks live in memory as tensors; augmentation (flips,
rotation) runs on the training device.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import Tensor

from localdisc.data.views import normalize
from localdisc.engine.distributed import resolve_device
from localdisc.engine.monitor import ProgressBar
from localdisc.engine.precision import bf16_autocast
from localdisc.errors import LocaldiscError
from localdisc.models.segmenter import Segmenter

#: A phase as the progress bar and the log name it (``PhaseResult.name``, history.csv's phase,
#: is the key): "finetune finetune: ..." said the same word twice and not what trains.
PHASE_LABELS = {"frozen": "frozen encoder", "finetune": "whole network", "scratch": "from scratch"}

#: Rotation range (degrees, U(-r, r)) and flips of the paper's augmentation per modality.
AUGMENTATION = {"fundus": (180.0, True), "xray": (30.0, False)}


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

    def __post_init__(self) -> None:
        problems = []
        if self.frozen_epochs < 0 or self.epochs < 0:
            problems.append("epoch counts must be >= 0")
        if self.batch < 1:
            problems.append("batch must be >= 1")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            problems.append("steps_per_epoch must be >= 1")
        # NaN passes `lr <= 0` and inf too: both diverge, then evaluation fails far from here.
        if not (math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"lr must be > 0 and finite, not {self.lr}")
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
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, images.shape[0], batch):
        x = normalize(images[start : start + batch].to(device), model.config.modality)
        with bf16_autocast(device, amp):
            out.append(torch.sigmoid(model(x).float()).cpu())
    model.train(was_training)
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


def _phase(
    model: Segmenter,
    name: str,
    epochs: int,
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    config: FinetuneConfig,
    generator: torch.Generator,
    progress: Callable[[str, int, dict[str, float]], None],
) -> tuple[dict[str, Tensor], PhaseResult]:
    device = next(model.parameters()).device
    frozen = name == "frozen"
    model.encoder.requires_grad_(not frozen)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr)
    # Soft Dice of METHOD.md 4, -2 sum(y p) / (sum y + sum p + 1), over the whole batch: MONAI's
    # DiceLoss with these smoothing terms is 1 plus it (same gradient).
    loss_fn = DiceLoss(sigmoid=True, batch=True, smooth_nr=0.0, smooth_dr=1.0)
    modality = model.config.modality
    rotation, flips = AUGMENTATION[modality]
    rotation = rotation if config.rotation is None else config.rotation
    flips = flips if config.flips is None else config.flips

    images, masks = train
    n = images.shape[0]
    best_state = copy.deepcopy(model.state_dict())
    result = PhaseResult(name, epochs, 0, -1.0, 0.0)
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        if frozen:  # frozen encoder: its batch-norm statistics stay those of pre-training
            model.encoder.eval()
        losses = []
        for idx in _epoch_batches(n, config, generator):
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
        val_dice = mean_dice(predict_batch(model, val[0], config.batch, config.amp), val[1])
        row = {"epoch": epoch, "loss": sum(losses) / len(losses), "val_dice": val_dice}
        result.history.append(row)
        if val_dice > result.best_val_dice:
            result.best_val_dice, result.best_epoch = val_dice, epoch
            best_state = copy.deepcopy(model.state_dict())
        progress(name, epoch, row)
    result.seconds = time.perf_counter() - t0
    model.encoder.requires_grad_(True)
    return best_state, result


def _training_pair(pair: tuple[Tensor, Tensor], name: str) -> tuple[Tensor, Tensor]:
    """``(images, masks)`` as the loop needs them: ``float32`` ``[N, C, S, S]`` in [0, 1] and
    ``[N, 1, S, S]``. Integer images are scaled (``uint8`` / 255, as files are read) and boolean
    or integer masks made float; other shapes are refused here, naming ``name``, rather than
    deep inside augmentation (grid_sample has no kernel for bool or uint8)."""
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
    if not images.is_floating_point():
        if images.dtype not in (torch.uint8, torch.uint16, torch.int16, torch.int32):
            raise LocaldiscError(f"fine-tuning {name}: images of type {images.dtype}")
        top = 255.0 if images.dtype == torch.uint8 else 65535.0
        images = images.float() / top
    return images.float(), masks.float()


def finetune(
    model: Segmenter,
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    config: FinetuneConfig,
    *,
    pretrained: bool,
    log: Callable[[str], None] = print,
) -> FinetuneResult:
    """Train ``model`` on ``train`` = (images ``[N, C, S, S]`` in [0, 1], masks ``[N, 1, S, S]``).

    With ``pretrained`` the frozen phase runs first and the fine-tuning phase starts from its best
    model; otherwise one ``scratch`` phase of ``config.epochs``. ``model`` ends holding the best
    weights, which are also returned.
    """
    train, val = _training_pair(train, "train"), _training_pair(val, "val")
    if train[0].shape[0] == 0 or val[0].shape[0] == 0:
        raise LocaldiscError("fine-tuning needs at least one training and one validation image")
    device = resolve_device(config.device)
    model.to(device)
    model.to(memory_format=torch.channels_last)  # faster on GPUs and oneDNN CPUs
    generator = torch.Generator().manual_seed(config.seed)
    plan = [("frozen", config.frozen_epochs), ("finetune", config.epochs)]
    if not pretrained:
        plan = [("scratch", config.epochs)]
    plan = [(name, epochs) for name, epochs in plan if epochs > 0]
    if not plan:
        raise LocaldiscError("nothing to train: every phase has 0 epochs")

    done = 0  # epochs of the phases before

    def progress(name: str, epoch: int, row: dict[str, float]) -> None:
        # The loss is minus the soft Dice (METHOD.md 4): shown as the soft Dice, not "loss -0.14".
        shown = f"train soft Dice {-row['loss']:.4f}, val Dice {row['val_dice']:.4f}"
        bar.update(done + epoch, PHASE_LABELS[name], shown)

    phases: list[PhaseResult] = []
    frozen_state = None
    epochs_in_all = sum(e for _, e in plan)
    with ProgressBar(epochs_in_all, 0, config.progress, "finetune", unit="epoch") as bar:
        for name, epochs in plan:
            state, result = _phase(model, name, epochs, train, val, config, generator, progress)
            done += epochs
            model.load_state_dict(state)
            phases.append(result)
            if name == "frozen":
                frozen_state = state
            log(
                f"{PHASE_LABELS[name]}: best validation Dice {result.best_val_dice:.4f} at epoch "
                f"{result.best_epoch}/{epochs} ({result.seconds:.0f} s)"
            )
    return FinetuneResult(model.state_dict(), frozen_state, phases)
