"""LD pre-training: stage 1 (patch discrimination + hypersphere mixup), then stage 2 (+ region
discrimination and entropy), as in METHOD.md sections 2-3.

One function, :func:`pretrain`, runs both stages on one device or under ``torchrun`` on many. The
pool is decoded once into memory (see :mod:`localdisc.data.pool`); each step samples ``B`` image
pairs, builds the ``5B`` views on the training device and takes one Adam step. Checkpoints are
atomic and hold every RNG state, so ``resume=True`` continues exactly where a run stopped.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from localdisc.data.pool import resolve_pool
from localdisc.data.preprocess import MODALITY_CHANNELS
from localdisc.data.views import LDViews, ViewBatch, undo_view2
from localdisc.engine import distributed
from localdisc.engine.checkpoint import (
    atomic_save_safetensors,
    atomic_write_text,
    load_latest_checkpoint,
    optimizer_from_flat,
    optimizer_to_flat,
    save_checkpoint,
)
from localdisc.engine.monitor import ProgressBar, TrainingLog, write_figures
from localdisc.errors import CheckpointError, LocaldiscError
from localdisc.losses import (
    entropy_loss,
    hypersphere_mixup_loss,
    patch_discrimination_loss,
    patch_embeddings,
    region_discrimination_loss,
)
from localdisc.models.ld import LDConfig, LDModel

# Fields that may differ when a run is resumed (they do not change what is computed).
RUNTIME_FIELDS = {"device", "workers", "progress"}


@dataclass
class PretrainConfig:
    """Everything that defines a pre-training run; defaults are the published configuration."""

    data: list[str] = field(default_factory=list)
    modality: str = "fundus"
    stage1_steps: int = 20_000
    stage2_steps: int = 80_000
    # Wall-clock budgets per stage (seconds; None: none): a stage ends at its step count or its
    # budget, whichever comes first. For fixed-time comparisons; a resumed run restarts the clock.
    stage1_seconds: float | None = None
    stage2_seconds: float | None = None
    batch: int = 4
    size: int = 448
    pool_size: int | None = None  # None: size * 8/7 (512 for 448), as the paper's 512 -> 448
    crop_scale: tuple[float, float] = (0.9, 1.0)  # random resized crop, fraction of the area
    clusters: int = 16
    dim: int = 32
    width: int = 16
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
    seed: int = 0
    max_images: int | None = None
    val_images: int | None = None  # None: 5% of the pool, at most 50
    val_every: int = 1_000
    checkpoint_every: int = 1_000
    figure_every: int = 5_000
    log_every: int = 10
    max_nonfinite: int = 20
    skip_bad: bool = False
    amp: bool = True  # bf16 autocast on CUDA (CPU runs stay fp32)
    channels_last: bool = True
    sync_bn: bool = False
    device: str = "auto"
    workers: int = 4
    progress: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.modality not in ("fundus", "xray"):
            problems.append(f"modality must be fundus or xray, not {self.modality!r}")
        if self.stage1_steps < 0 or self.stage2_steps < 0:
            problems.append("step counts must be >= 0")
        for budget in (self.stage1_seconds, self.stage2_seconds):
            if budget is not None and budget <= 0:
                problems.append("stage time budgets must be > 0 seconds")
        if self.stage1_steps + self.stage2_steps == 0:
            problems.append("at least one training step is needed")
        if self.batch < 1:
            problems.append("batch must be >= 1")
        if self.size < 16 or self.size % 16:
            problems.append(f"size must be a positive multiple of 16, not {self.size}")
        if self.padding not in ("zeros", "circular", "reflect", "replicate"):
            problems.append(
                f"padding must be zeros, circular, reflect or replicate, not {self.padding!r}"
            )
        if self.center_sigma is not None and self.center_sigma <= 0:
            problems.append(f"center_sigma must be > 0, not {self.center_sigma}")
        if self.clusters < 2:
            problems.append(f"clusters must be >= 2, not {self.clusters}")
        if self.dim < 2:
            problems.append(f"dim must be >= 2, not {self.dim}")
        if self.lr <= 0:
            problems.append("lr must be > 0")
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

    def as_dict(self) -> dict[str, Tensor]:
        d = {"loss": self.total, "pd": self.pd, "mix": self.mix}
        if self.rd is not None:
            d["rd"] = self.rd
            d["ent"] = self.ent  # type: ignore[assignment]
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
    device_type = batch.images.device.type
    use_amp = config.amp and device_type == "cuda"
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=use_amp):
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
    return LossTerms(total, pd, mix, rd, ent)


def _split_pool(pool: Tensor, config: PretrainConfig) -> tuple[Tensor, Tensor]:
    """Seeded hold-out of validation images (5% of the pool, at most 50, none for tiny pools)."""
    n = pool.shape[0]
    n_val = config.val_images
    if n_val is None:
        n_val = min(50, n // 20)
    n_val = min(n_val, n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))
    return pool[order[n_val:]], pool[order[:n_val]]


@dataclass
class PretrainResult:
    run_dir: Path
    steps: int
    images_per_s: float
    final_loss: float
    best_val: float | None
    skipped_steps: int


def _budget_spent(start: float, budget: float, ctx: distributed.DistContext) -> bool:
    """Whether ``budget`` seconds have passed since ``start`` (rank 0's clock decides for all)."""
    spent = time.perf_counter() - start >= budget
    if not ctx.distributed:
        return spent
    flag = torch.tensor([float(spent)], device=ctx.device)
    torch.distributed.broadcast(flag, 0)
    return bool(flag.item())


def _prepare_model(model: LDModel, stage: int, ctx: distributed.DistContext) -> nn.Module:
    """Freeze the clustering head in stage 1 and wrap in DDP when distributed."""
    model.cluster_head.requires_grad_(stage == 2)
    if not ctx.distributed:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def _new_optimizer(model: LDModel, lr: float) -> torch.optim.Adam:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=lr)


@torch.no_grad()
def validation_loss(
    model: LDModel, val_pool: Tensor, views: LDViews, config: PretrainConfig, stage: int
) -> float:
    """Mean loss of the current stage on the held-out images, with fixed views (eval-mode BN)."""
    if val_pool.shape[0] == 0:
        return math.nan
    gen = torch.Generator().manual_seed(config.seed + 7919)
    n = val_pool.shape[0]
    was_training = model.training
    model.eval()
    losses = []
    for start in range(0, n, config.batch):
        idx = torch.arange(start, min(start + config.batch, n))
        x1 = val_pool[idx]
        x2 = val_pool[(idx + 1) % n]
        batch = views(x1, x2, generator=gen)
        losses.append(ld_losses(model, batch, stage, config).total.float())
    model.train(was_training)
    return torch.stack(losses).mean().item()


def pretrain(
    config: PretrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    pool: Tensor | None = None,
    stop_at_step: int | None = None,
    log: Callable[[str], None] = print,
) -> PretrainResult:
    """Run LD pre-training into ``run_dir`` (``config.json``, weights, checkpoints, logs, figures).

    Args:
        config: the run's configuration; on resume the saved one is used (runtime fields aside).
        run_dir: output folder.
        resume: continue from the newest valid checkpoint in ``run_dir/checkpoints``.
        pool: pre-decoded uint8 pool ``[N, C, P, P]``; default: read ``config.data``.
        stop_at_step: stop after this global step, as an interruption would (for tests).
    """
    run_dir = Path(run_dir)
    ctx = distributed.setup(config.device)
    config_path = run_dir / "config.json"
    if resume:
        if not config_path.is_file():
            raise CheckpointError(f"{run_dir}: nothing to resume (no config.json)")
        saved = json.loads(config_path.read_text())["pretrain"]
        saved.update({k: getattr(config, k) for k in RUNTIME_FIELDS})
        config = PretrainConfig.from_dict(saved)
    device = ctx.device
    main = ctx.is_main

    skipped_files: list[tuple[Path, str]] = []
    if pool is None:
        pool, skipped_files = resolve_pool(
            config.data,
            config.modality,
            config.resolved_pool_size,
            seed=config.seed,
            workers=config.workers,
            max_images=config.max_images,
            skip_bad=config.skip_bad,
            log=log if main else lambda message: None,
        )
    pool_channels = MODALITY_CHANNELS[config.modality]
    if pool.shape[1] != pool_channels:
        raise LocaldiscError(
            f"pool has {pool.shape[1]} channels, {config.modality} needs {pool_channels}"
        )
    train_pool, val_pool = _split_pool(pool, config)
    if ctx.distributed:  # each rank samples from its own shard
        train_pool = train_pool[ctx.rank :: ctx.world_size]
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

    torch.manual_seed(config.seed)  # identical initial weights on every rank
    model = LDModel(
        LDConfig(config.modality, config.width, config.dim, config.clusters, config.padding)
    )
    if config.sync_bn and ctx.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    if config.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    views = LDViews(config.size, config.modality, crop_scale=tuple(config.crop_scale))
    gen = torch.Generator().manual_seed(config.seed * 1009 + ctx.rank)

    step = 0
    stage = config.stage_at(0)
    best_val = math.inf
    skipped_steps = 0
    nonfinite_in_row = 0
    opt_state: dict | None = None
    loaded = load_latest_checkpoint(run_dir / "checkpoints", warn=log) if resume else None
    if resume and loaded is None:  # stopped before its first checkpoint: nothing to keep
        log(f"{run_dir}: no checkpoint yet, starting from step 0")
    if loaded is not None:
        state, tensors = loaded
        model.load_state_dict(tensors["model"])
        gen.set_state(tensors["rng"][f"sampler_{ctx.rank}"])
        step = state["step"]
        # A checkpoint at the end of stage 1 holds stage 1's optimizer: resume in stage 1 and
        # let the loop switch, as an uninterrupted run does.
        stage = state["stage"]
        best_val = state["best_val"]
        skipped_steps = state["skipped_steps"]
        nonfinite_in_row = state["nonfinite_in_row"]
        opt_state = optimizer_from_flat(tensors["optimizer"], state["optimizer"])
        log(f"resumed from step {step}")
    elif main and not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        meta = {"pretrain": asdict(config), "model": asdict(model.config)}
        meta["pool"] = {"images": int(pool.shape[0]), "val_images": int(val_pool.shape[0])}
        if skipped_files:
            meta["skipped_files"] = [[str(p), r] for p, r in skipped_files]
        atomic_write_text(config_path, json.dumps(meta, indent=2))

    ddp_model = _prepare_model(model, stage, ctx)
    optimizer = _new_optimizer(model, config.lr_at(step))
    if opt_state is not None:
        optimizer.load_state_dict(opt_state)
    csv_log = TrainingLog(run_dir, step) if main else None
    (run_dir / "figures").mkdir(exist_ok=True, parents=True)

    def checkpoint() -> None:
        rng_states = {f"sampler_{ctx.rank}": gen.get_state()}
        if ctx.distributed:  # every rank's sampler state, so that all resume exactly
            gathered: list[Any] = [None] * ctx.world_size
            torch.distributed.all_gather_object(gathered, gen.get_state())
            rng_states = {f"sampler_{r}": s for r, s in enumerate(gathered)}
        if not main:
            return
        opt_tensors, opt_meta = optimizer_to_flat(optimizer)
        save_checkpoint(
            run_dir / "checkpoints",
            step,
            {"model": model.state_dict(), "optimizer": opt_tensors, "rng": rng_states},
            {
                "stage": stage,
                "best_val": best_val,
                "skipped_steps": skipped_steps,
                "nonfinite_in_row": nonfinite_in_row,
                "optimizer": opt_meta,
            },
        )

    b = config.batch
    sums: dict[str, Tensor] = {}
    n_summed = 0
    last_loss = math.nan
    t_start = time.perf_counter()
    t_window = t_start
    steps_done_here = 0
    window_steps = 0
    img_per_s = 0.0
    progress = ProgressBar(config.total_steps, step, enabled=main and config.progress)
    stage_start = time.perf_counter()
    finished = False
    try:
        while step < config.total_steps:
            budget = config.stage1_seconds if stage == 1 else config.stage2_seconds
            if budget is not None and _budget_spent(stage_start, budget, ctx):
                log(f"stage {stage}: time budget of {budget:.0f} s spent at step {step}")
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
                stage = 2
                stage_start = time.perf_counter()
                best_val = math.inf
                ddp_model = _prepare_model(model, stage, ctx)
                optimizer = _new_optimizer(model, config.lr_at(step))
            for group in optimizer.param_groups:
                group["lr"] = config.lr_at(step)

            idx = torch.randint(train_pool.shape[0], (2 * b,), generator=gen)
            x = train_pool[idx.to(train_pool.device)].to(device, non_blocking=True)
            batch = views(x[:b], x[b:], generator=gen)
            if config.channels_last and device.type == "cuda":
                batch.images = batch.images.contiguous(memory_format=torch.channels_last)
            terms = ld_losses(ddp_model, batch, stage, config, distributed_losses=ctx.distributed)
            optimizer.zero_grad(set_to_none=True)
            finite = torch.isfinite(terms.total.detach()).float()
            if ctx.distributed:  # all ranks must agree, or the gradient all-reduce hangs
                torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
            if not finite.item():
                skipped_steps += 1
                nonfinite_in_row += 1
                log(f"step {step}: non-finite loss, step skipped ({nonfinite_in_row} in a row)")
                if nonfinite_in_row >= config.max_nonfinite:
                    raise LocaldiscError(
                        f"{nonfinite_in_row} non-finite losses in a row at step {step}; stopped. "
                        f"The last good checkpoint is in {run_dir / 'checkpoints'}"
                    )
                step += 1
                continue
            nonfinite_in_row = 0
            terms.total.backward()
            optimizer.step()
            step += 1
            steps_done_here += 1
            window_steps += 1

            for k, val in terms.as_dict().items():
                sums[k] = sums.get(k, 0) + val.detach()
            n_summed += 1
            if step % config.log_every == 0 or step == config.total_steps:
                means = {k: (v / n_summed).item() for k, v in sums.items()}
                now = time.perf_counter()
                img_per_s = window_steps * 5 * b * ctx.world_size / max(now - t_window, 1e-9)
                t_window, window_steps = now, 0
                last_loss = means["loss"]
                if csv_log:
                    csv_log.write(
                        step=step,
                        stage=stage,
                        lr=config.lr_at(step - 1),
                        img_per_s=round(img_per_s, 2),
                        **{k: round(v, 6) for k, v in means.items()},
                    )
                progress.update(step, stage, means, img_per_s)
                sums, n_summed = {}, 0

            end_of_stage = step == config.total_steps or config.stage_at(step) != stage
            if main and (step % config.val_every == 0 or end_of_stage):
                val = validation_loss(model, val_pool, views, config, stage)
                if csv_log and not math.isnan(val):
                    csv_log.write(step=step, stage=stage, val_loss=round(val, 6))
                    if val < best_val:
                        best_val = val
                        atomic_save_safetensors(
                            model.state_dict(), run_dir / "model_best.safetensors"
                        )
            if main and (step % config.figure_every == 0 or step == config.total_steps):
                write_figures(
                    model,
                    val_pool if val_pool.shape[0] else train_pool[:4],
                    run_dir / "figures",
                    step,
                    clusters=config.stage_at(step - 1) == 2,
                )
            if step % config.checkpoint_every == 0 or step == config.total_steps:
                checkpoint()
            if stop_at_step is not None and step >= stop_at_step:
                break
    finally:
        progress.close()
        if csv_log:
            csv_log.close()

    if finished:  # ended by a time budget: the outputs a full run ends with
        checkpoint()
        if main:
            write_figures(model, val_pool if val_pool.shape[0] else train_pool[:4],
                          run_dir / "figures", step, clusters=stage == 2)  # fmt: skip
    finished = finished or step == config.total_steps
    if main and finished:
        model.save(run_dir)
        if not (run_dir / "model_best.safetensors").exists():
            atomic_save_safetensors(model.state_dict(), run_dir / "model_best.safetensors")
    # No rank may leave (and tear down gloo/NCCL) while rank 0 is still writing.
    distributed.barrier()
    elapsed = time.perf_counter() - t_start
    overall = steps_done_here * 5 * b * ctx.world_size / max(elapsed, 1e-9)
    return PretrainResult(
        run_dir, step, overall, last_loss, None if math.isinf(best_val) else best_val, skipped_steps
    )
