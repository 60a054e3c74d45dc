"""Training a segmenter on pseudo-labels: the loop shared by the shape-guided refinement and the
filter-taught student (:mod:`localdisc.tasks.shape_guided`, :mod:`localdisc.tasks.self_training`).

There are no labels, so no validation set picks a step: the last one counts, and with ``cosine``
the learning rate decays to 0 rather than stopping mid-flight. Each step draws ``batch`` images
(and, with ``crop``, one window shared by the batch), augments them (flips, rotation) and takes
one Adam step on :func:`~localdisc.losses.pseudo_label.pseudo_label_loss`.

Given a ``checkpoint_dir``, :func:`fit_pseudo_labels` can be stopped and continued exactly, as
:func:`~localdisc.engine.finetune.finetune` can: at the end of a step, at most every
``checkpoint_seconds``, and after the last step, it writes a checkpoint there (engine.checkpoint's
format, the newest only: the weights with their batch-norm statistics, Adam's state, the
learning-rate schedule's, the batch generator's, the step and the seconds spent); the first
SIGINT or SIGTERM ends the step, writes one at that step and raises KeyboardInterrupt saying
where the training continues (engine.stop; a second signal during that write waits for it to
end, then does the same; a third one drops the write, saying so and what is kept in ``log``:
:func:`~localdisc.engine.checkpoint.save_resumable`, as fine-tuning's); and a call with the
same settings, images, pseudo-labels and network continues from the newest one, ending with the
weights of an uninterrupted run (bit for bit on a CPU). The batch generator is all the
randomness the loop draws (the augmentation draws from it; the networks have no dropout), so
its state is all there is to keep. A checkpoint of anything else (or a
damaged one) is said in ``log``, removed, and the training starts over: the folder holds
nothing but a way to save time. One of this training whose weights hold NaN or inf (it
diverged) raises :class:`~localdisc.errors.DivergedError` saying so; none is written now, as
weights that turn NaN or inf stop the training with that error (checked where the loss is
logged, before a checkpoint and at the end), or with the stop a signal asked for. The caller
removes the folder once what the network makes is written (``OUT/refine-checkpoint`` of
``localdisc shape-guided segment``, ``OUT/student-checkpoint`` of ``localdisc shape-guided
vessels``).
Without a folder nothing is written and a signal stops the training at once, as ever.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from localdisc.data.views import normalize
from localdisc.engine.checkpoint import (
    load_resumable,
    newest_position,
    nonfinite_names,
    optimizer_from_flat,
    optimizer_to_flat,
    remove_checkpoints,
    save_resumable,
    stop_at_checkpoint,
    tensor_digest,
    tensors_named,
)
from localdisc.engine.finetune import augment
from localdisc.engine.monitor import ProgressBar
from localdisc.engine.precision import bf16_autocast
from localdisc.engine.stop import GracefulStop
from localdisc.errors import LocaldiscError
from localdisc.losses.pseudo_label import pseudo_label_loss
from localdisc.models.segmenter import Segmenter

__all__ = ["checkpoint_position", "deterministic_cudnn", "fit_pseudo_labels", "kept_checkpoints"]


@contextmanager
def deterministic_cudnn() -> Iterator[None]:
    """cuDNN's deterministic algorithms, and no benchmarking of them, inside the block; its
    settings as they were after it. For the inference that makes pseudo-labels: a rerun computes
    them again, and a checkpoint continues only with a hash of the same ones (bit for bit), so
    an algorithm that differs in the last bit started the training over. No effect on a CPU."""
    cudnn = torch.backends.cudnn
    kept = cudnn.deterministic, cudnn.benchmark
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark = kept


def fit_pseudo_labels(
    model: Segmenter,
    images: Tensor,
    targets: Tensor,
    *,
    steps: int,
    batch: int,
    lr: float,
    rotation: float,
    flips: bool,
    crop: int | None = None,
    cosine: bool = True,
    bf16: bool = False,
    seed: int = 0,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] = print,
    name: str = "step",
    progress: bool = False,
    checkpoint_dir: str | Path | None = None,
    checkpoint_seconds: float = 60.0,
    lr_option: str | None = None,
) -> Segmenter:
    """Train ``model`` in place on ``images`` ``[N, C, S, S]`` (raw intensities in [0, 1]) and
    ``targets`` ``[N, 2, S, S]`` (label, then weight; any dtype, made float per batch); returns
    it, still in training mode.

    ``crop``: random ``crop x crop`` windows instead of whole images. ``bf16``: autocast where it
    pays (:func:`~localdisc.engine.precision.bf16_autocast`); the loss stays float32. Batches are
    drawn from a generator seeded with ``seed``, so a run repeats. ``log`` hears ``name`` and
    the loss five times over the run; ``progress`` also shows a progress bar.

    With ``checkpoint_dir`` (see the module docstring) the training continues from the newest
    checkpoint there when it is of this training, writes one every ``checkpoint_seconds`` and
    after the last step, and the first SIGINT/SIGTERM writes one and raises KeyboardInterrupt.
    ``model`` must be built as before (its weights are then the checkpoint's).

    Weights that turn NaN or inf raise :class:`~localdisc.errors.DivergedError`, whose hint
    names ``lr_option``, where the caller's user sets ``lr`` (``"RefineConfig.lr"``).
    """
    if not checkpoint_seconds >= 0:  # NaN too
        raise LocaldiscError(f"checkpoint_seconds must be >= 0, not {checkpoint_seconds}")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, steps))
    gen = torch.Generator().manual_seed(seed)
    folder = None if checkpoint_dir is None else Path(checkpoint_dir)
    first, earlier, record = 0, 0.0, {}
    if folder is not None:
        settings = {"steps": steps, "batch": batch, "lr": lr, "rotation": rotation,
                    "flips": flips, "crop": crop, "cosine": cosine, "bf16": bf16,
                    "seed": seed}  # fmt: skip
        record = _record(settings, model, images, targets)
        loaded = _load(folder, record, log)
        if loaded is not None:
            state, tensors = loaded
            model.load_state_dict(tensors["model"])
            optimizer.load_state_dict(
                optimizer_from_flat(tensors.get("optimizer", {}), state["optimizer"])
            )
            scheduler.load_state_dict(state["scheduler"])
            gen.set_state(tensors["rng"]["generator"])
            first, earlier = state["step"], state["seconds"]
    start, size = time.monotonic(), images.shape[-1]
    stop, last_save = GracefulStop(), time.monotonic()

    def refuse_diverged(done: int) -> None:
        """Stop a training whose weights (batch-norm statistics included) hold NaN or inf after
        ``done`` steps: it went on silently, and its network predicted nothing (NaN maps)."""
        bad = nonfinite_names(model.state_dict())
        if bad:  # a stop asked for meanwhile wins (stop.diverged)
            stop.diverged(
                f"the training diverged by {name} {done}/{steps}: its weights hold NaN or inf "
                f"(in {tensors_named(bad)}); a learning rate lower than {lr:g}"
                f"{f' ({lr_option})' if lr_option else ''} may keep it from diverging",
                log,
            )

    def save(done: int) -> None:
        """Checkpoint the training after ``done`` steps (not its NaN weights)."""
        refuse_diverged(done)
        opt_tensors, opt_meta = optimizer_to_flat(optimizer)
        tensors = {"model": model.state_dict(), "optimizer": opt_tensors,
                   "rng": {"generator": gen.get_state()}}  # fmt: skip
        # save_checkpoint adds "step", the steps done (the folder's name).
        state = {"pseudo_label": record, "name": name, "steps": steps, "optimizer": opt_meta,
                 "scheduler": scheduler.state_dict(),
                 "seconds": earlier + time.monotonic() - start}  # fmt: skip
        # A second signal waits for the write, a third one drops it (engine.checkpoint).
        save_resumable(stop, folder, done, tensors, state, what=f"{name} {done}/{steps}",
                       describe=_position, log=log)  # fmt: skip

    if folder is not None:  # a stop then writes a checkpoint first (engine/stop.py)
        stop.install()
    try:
        # The bar says "step" itself: titled "refine", not "refine step: step 3/5". Its elapsed
        # time counts the earlier starts' too, as its steps do.
        title = name.removesuffix(" step")
        with ProgressBar(steps, first, progress, title, before=earlier) as bar:
            for step in range(first, steps):
                idx = torch.randint(len(images), (batch,), generator=gen)
                xb, yb = images[idx], targets[idx].float()  # targets may be stored as bytes
                if crop is not None:
                    i, j = (int(v) for v in torch.randint(size - crop + 1, (2,), generator=gen))
                    xb, yb = (t[..., i : i + crop, j : j + crop] for t in (xb, yb))
                xb, yb = augment(xb, yb, rotation=rotation, flips=flips, generator=gen)
                xb, yb = xb.to(device), yb.to(device)
                with bf16_autocast(device, bf16):
                    logits = model(normalize(xb, model.config.modality))
                loss = pseudo_label_loss(logits.float(), yb[:, :1], yb[:, 1:])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if cosine:
                    scheduler.step()
                info = None
                if (step + 1) % max(1, steps // 5) == 0:
                    seconds, value = earlier + time.monotonic() - start, loss.item()
                    log(f"{name} {step + 1}/{steps}: loss {value:.4f} ({seconds:.0f} s)")
                    info = f"loss {value:.4f}"
                    refuse_diverged(step + 1)
                # One update with this step's loss: a plain line printed by an update before it
                # showed the loss of the log point before.
                bar.update(step + 1, info=info)
                if folder is None:
                    continue
                signum = stop.signum
                # After the last step too: stopped while the caller uses the network (the
                # refinement's maps of many images), nothing is trained again.
                due = time.monotonic() - last_save >= checkpoint_seconds
                if signum is not None or due or step + 1 == steps:
                    save(step + 1)
                    last_save = time.monotonic()
                if signum is not None:  # said: where the training continues
                    stop_at_checkpoint(stop, signum, folder, _position)
        if stop.signum is not None:  # after the last check: the last step's checkpoint is written
            stop_at_checkpoint(stop, stop.signum, folder, _position)
    finally:
        stop.restore()
    refuse_diverged(steps)
    return model


def _record(
    settings: dict[str, Any], model: Segmenter, images: Tensor, targets: Tensor
) -> dict[str, Any]:
    """What a checkpoint must match to be continued, as JSON reads it back: the settings that
    change the result, hashes of the images and pseudo-labels, and the network's layers (the
    names, shapes and types of its weights and buffers)."""
    layers = [[k, list(v.shape), str(v.dtype)] for k, v in model.state_dict().items()]
    record = {"settings": settings, "images": tensor_digest(images),
              "pseudo-labels": tensor_digest(targets), "layers": layers}  # fmt: skip
    return json.loads(json.dumps(record))


def _load(
    folder: Path, record: dict[str, Any], log: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, dict[str, Tensor]]] | None:
    """The newest checkpoint in ``folder`` when it is of the training ``record`` describes (said
    in ``log``); else None, the folder's checkpoints removed (one of another training, or
    damaged, is said), so that the training starts over."""
    loaded = load_resumable(folder, "pseudo_label", record, training="training",
                            describe=_position, log=log)  # fmt: skip
    if loaded is None:
        return None
    state, tensors, differ = loaded
    if not differ:
        return state, tensors
    log(f"{folder}: its checkpoint is of another training (its {' and '.join(differ)} "
        "differ from this one's): starting over")  # fmt: skip
    remove_checkpoints(folder)  # or it would stay "the newest"
    return None


def _position(state: dict[str, Any]) -> str:
    """Where the training of a checkpoint's ``state`` continues, as its log lines count the
    steps: "after refine step 340/2000"."""
    return f"after {state['name']} {state['step']}/{state['steps']}"


def checkpoint_position(checkpoint_dir: str | Path) -> str | None:
    """Where a training continues from the newest checkpoint in ``checkpoint_dir`` ("after
    refine step 340/2000"), or None where there is none (or it cannot be read)."""
    return newest_position(checkpoint_dir, _position)


def kept_checkpoints(out_dir: str | Path, folder: str) -> list[str]:
    """The checkpoint folders named ``folder`` in ``out_dir`` and in its sub-folders (an
    ensemble's runs, a cohort's groups) that hold one, each with where its training continues:
    ``OUT/run-1/refine-checkpoint (after refine step 340/2000)``; what a command's hint says."""
    out_dir = Path(out_dir)
    found = []
    for path in [out_dir / folder, *sorted(out_dir.glob(f"*/{folder}"))]:
        where = checkpoint_position(path)
        if where is not None:
            found.append(f"{path} ({where})")
    return found
