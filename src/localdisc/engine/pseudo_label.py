"""Training a segmenter on pseudo-labels: the loop shared by the shape-guided refinement and the
filter-taught student (:mod:`localdisc.tasks.shape_guided`, :mod:`localdisc.tasks.self_training`).

There are no labels, so no validation set picks a step: the last one counts, and with ``cosine``
the learning rate decays to 0 rather than stopping mid-flight. Each step draws ``batch`` images
(and, with ``crop``, one window shared by the batch), augments them (flips, rotation) and takes
one Adam step on :func:`~localdisc.losses.pseudo_label.pseudo_label_loss`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor

from localdisc.data.views import normalize
from localdisc.engine.finetune import augment
from localdisc.engine.monitor import ProgressBar
from localdisc.engine.precision import bf16_autocast
from localdisc.losses.pseudo_label import pseudo_label_loss
from localdisc.models.segmenter import Segmenter

__all__ = ["fit_pseudo_labels"]


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
) -> Segmenter:
    """Train ``model`` in place on ``images`` ``[N, C, S, S]`` (raw intensities in [0, 1]) and
    ``targets`` ``[N, 2, S, S]`` (label, then weight; any dtype, made float per batch); returns
    it, still in training mode.

    ``crop``: random ``crop x crop`` windows instead of whole images. ``bf16``: autocast where it
    pays (:func:`~localdisc.engine.precision.bf16_autocast`); the loss stays float32. Batches are
    drawn from a generator seeded with ``seed``, so a run repeats. ``log`` hears ``name`` and
    the loss five times over the run; ``progress`` also shows a progress bar.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, steps))
    gen = torch.Generator().manual_seed(seed)
    start, size = time.time(), images.shape[-1]
    # The bar says "step" itself: titled "refine", not "refine step: step 3/5".
    with ProgressBar(steps, 0, progress, name.removesuffix(" step")) as bar:
        for step in range(steps):
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
                seconds, value = time.time() - start, loss.item()
                log(f"{name} {step + 1}/{steps}: loss {value:.4f} ({seconds:.0f} s)")
                info = f"loss {value:.4f}"
            # One update with this step's loss: a plain line printed by an update before it
            # showed the loss of the log point before.
            bar.update(step + 1, info=info)
    return model
