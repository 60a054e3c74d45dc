"""A segmentation network taught by a vesselness filter: label-free vessels from its sure pixels.

A vesselness filter (:func:`~localdisc.tasks.vesselness.vesselness`: by default the multi-scale
line detector, ``"line"``) knows what a vessel looks like locally; thresholded at a prior's
vessel fraction it is the strong baseline of the shape-guided benchmark. A network trained on
the filter's *sure* pixels only (:func:`~localdisc.tasks.vesselness.vesselness_pseudo_label`:
the top of its ranking as vessel but for isolated specks, the bottom as background, the rest
left silent) learns what they share and fills the band from context, so it ranks pixels better
than its teacher (DRIVE FOV AUC 0.954-0.956 against 0.912, Dice 0.761-0.764 over three seeds
against 0.737, on the test images themselves), though the filter alone does as well at a better
vessel fraction or with its specks dropped (0.762-0.765: ``benchmarks/RESULTS.md``).

What the filter cannot know can come from the simulated prior: with ``painted``, the network
also sees each image with simulated vessel trees painted on
(:func:`~localdisc.data.synthetic.paint_vessels`), their exact masks as labels, so it meets
vessels of every calibre, thin ones its teacher leaves silent among them. Its ranking improves
again (DRIVE AUC 0.960-0.962, STARE 0.971-0.975 against 0.961-0.965). The trees double the share
of vessel it learns from, so once trained its head is moved back by :func:`label_shift`; then
at 0.5 it is level with the plain network on STARE (0.737, 0.715 against 0.732, 0.721) and
ahead on DRIVE (0.774, 0.760 against 0.763, 0.761), and with its specks dropped ahead on both
(STARE 0.757, 0.746 against 0.745, 0.739; DRIVE 0.776-0.778, above every filter).
``painted`` is off by default (STARE's Dice at 0.5 chooses). This is teacher-student
self-training (Lee, "Pseudo-label", ICML workshop 2013; Xie et al., "Self-training with Noisy
Student", CVPR 2020), with strong augmentation (rotations, flips, random crops) as the student's
noise and, with ``painted``, copy-paste of simulated structures with exact labels (Ghiasi et
al., "Simple Copy-Paste", CVPR 2021, paste real ones).

Two outputs, neither using a label:

* :func:`student_probability`: the network's probability (averaged over the four flips);
* :func:`mean_rank`: the mean of the network's and the filter's ranks inside the eroded FOV,
  cut at the prior's fraction: above either after 400 steps, below the network alone after
  1 200.

:func:`~localdisc.tasks.vessels.segment_vessels_self_trained` does it all for files
(``localdisc shape-guided vessels``): it teaches a network on the given photographs, with trees
painted, and writes their masks with specks dropped. Its training keeps a checkpoint in
``OUT/student-checkpoint`` (:data:`STUDENT_CHECKPOINT`; each group's and the unusual images'
network in its own folder's), which a stopped command run again continues from
(:func:`~localdisc.engine.pseudo_label.fit_pseudo_labels`), removed once the network is saved.

Usage::

    model = train_student(images, fovs, fraction=0.15, config=StudentConfig())
    prob = student_probability(model, image, fov)
    score = mean_rank([prob, vesselness(image, fov, method="line")], fov)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from localdisc.data.preprocess import resize_image, resize_mask, to_modality_channels
from localdisc.data.synthetic import paint_vessels
from localdisc.engine.batch_norm import recalibrate_batch_norm
from localdisc.engine.distributed import resolve_device
from localdisc.engine.finetune import predict_batch
from localdisc.engine.pseudo_label import fit_pseudo_labels
from localdisc.engine.rng import keeps_global_rng
from localdisc.errors import InputError, LocaldiscError
from localdisc.models.segmenter import Segmenter
from localdisc.tasks.vesselness import (
    check_method,
    mean_rank,
    vesselness,
    vesselness_pseudo_label,
)

__all__ = [
    "STUDENT_CHECKPOINT",
    "StudentConfig",
    "label_shift",
    "mean_rank",
    "student_probability",
    "student_training_set",
    "train_student",
]

#: The student's checkpoint folder in an output folder of ``localdisc shape-guided vessels``,
#: while it trains (:func:`train_student`'s ``checkpoint_dir``).
STUDENT_CHECKPOINT = "student-checkpoint"


@dataclass(frozen=True)
class StudentConfig:
    """How the student network is taught. Chosen on STARE's 20 images (``benchmarks/
    RESULTS.md``, network Dice at 0.5): ``steps`` (0.67 at 400, 0.70 at 1 200 and 2 400), the
    teacher ``method`` and the ``size`` (Sato at 512 0.696, at 768 0.705; the line detector at
    512 0.710 (a first form), at 768 0.713 and 0.709 with another seed; both joined at 768
    0.709) and ``speck_area`` (4e-4, the one value tried: 0.715 to 0.732; on DRIVE, measured after,
    0.758 to 0.763). ``painted``: STARE's FOV AUC 0.965 with none, 0.971 with 1, 0.975 with 2
    and 4, but Dice at 0.5 0.732, 0.700, 0.719, 0.714 (with specks dropped 0.745, 0.732, 0.745,
    0.744); with the copies' :func:`label_shift` taken out, 2 copies give 0.737 and 0.715 over
    two seeds (none: 0.732, 0.721), so 0 stays the default and the benchmark reports 2 beside
    it (with specks dropped 2 are ahead: 0.757, 0.746 against 0.745, 0.739). The rest was fixed
    before any measurement (width 32, or sure/unsure 0.8/1.5 or 0.4/3, moved STARE's mean rank
    by less than 0.01)."""

    method: str = "line"  # the teacher: a vesselness filter, or several joined by "+"
    sure: float = 0.6  # the top sure x fraction of the FOV: vessel
    unsure: float = 2.0  # below the top unsure x fraction: background
    speck_area: float = 4e-4  # sure-vessel pieces smaller than this share of the FOV: silent
    painted: int = 0  # copies of each image with a simulated tree painted on, its mask as labels
    erode_fov: int = 8  # the filter is undefined on the FOV's rim
    size: int = 768  # images resized to size x size
    crop: int = 256  # random training crops of that
    width: int = 16
    depth: int = 4
    steps: int = 1200
    batch: int = 4
    lr: float = 1e-3  # Adam, cosine schedule
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        check_method(self.method)
        problems = []
        if not 0.0 <= self.speck_area < 1.0:
            problems.append(f"speck_area must lie in [0, 1), not {self.speck_area!r}")
        if self.painted < 0:
            problems.append(f"painted must be >= 0, not {self.painted!r}")
        if self.steps < 1 or self.batch < 1:
            problems.append(f"steps and batch must be >= 1, not {self.steps} and {self.batch}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"lr must be > 0 and finite, not {self.lr}")
        if not 0 < self.crop <= self.size:
            problems.append(f"need 0 < crop <= size, not crop={self.crop}, size={self.size}")
        elif self.size % 2**self.depth:
            problems.append(f"size {self.size} is not a multiple of 2**depth ({2**self.depth})")
        if problems:
            raise InputError("invalid student config: " + "; ".join(problems))


@keeps_global_rng
def train_student(
    images: Sequence[np.ndarray],
    fovs: Sequence[np.ndarray],
    fraction: float,
    config: StudentConfig | None = None,
    *,
    teachers: Sequence[np.ndarray] | None = None,
    log: Callable[[str], None] = print,
    progress: bool = False,
    checkpoint_dir: str | Path | None = None,
) -> Segmenter:
    """A fresh U-Net trained on the pseudo-labels of a filter at ``fraction`` of the FOV.

    ``images`` are RGB fundus photographs in [0, 1], ``fovs`` their FOV masks; ``teachers`` the
    teacher's scores when already computed (``None``: ``config.method`` on each image, see
    :func:`~localdisc.tasks.vesselness.vesselness`). No label is read. Batch norm statistics
    are recomputed at the end over what it trained on (:func:`student_training_set`).
    ``progress`` shows a progress bar of the steps. ``checkpoint_dir``: where the training keeps
    a checkpoint, continued by a call of the same images, teachers and config
    (:func:`~localdisc.engine.pseudo_label.fit_pseudo_labels`; its first SIGINT/SIGTERM writes
    one and raises KeyboardInterrupt); the caller removes it once the network is saved.
    """
    config = config or StudentConfig()
    if not images or len(images) != len(fovs):
        raise LocaldiscError("train_student needs one FOV per image, and at least one image")
    if teachers is None:
        log(f"the teacher ({config.method}) scores {len(images)} image(s) ...")
        teachers = [
            vesselness(im, f, method=config.method, erode_fov=config.erode_fov)
            for im, f in zip(images, fovs, strict=True)
        ]
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    xs, ys = student_training_set(images, fovs, teachers, fraction, config)
    model = Segmenter(width=config.width, depth=config.depth, size=config.size).to(device)
    fit_pseudo_labels(model, xs, ys, steps=config.steps, batch=config.batch, lr=config.lr,
                      rotation=180.0, flips=True, crop=config.crop, bf16=True, seed=config.seed,
                      device=device, log=log, name="student step", progress=progress,
                      checkpoint_dir=checkpoint_dir, lr_option="StudentConfig.lr")  # fmt: skip
    # A forward pass over every image, painted copies too: tens of seconds on a CPU, else silent.
    log(f"recalibrating batch norm over the {len(xs)} image(s) trained on ...")
    recalibrate_batch_norm(model, xs, batch=config.batch)
    shift = label_shift(ys, config.painted)
    if shift:
        log(f"painted trees raised the vessel share trained on: head bias lowered by {shift:.3f}")
        with torch.no_grad():
            model.head.bias -= shift
    return model.eval()


def label_shift(targets: torch.Tensor, painted: int) -> float:
    """How much the painted copies raise the log-odds of vessel in what the student trains on.

    ``targets`` ``[N, 2, S, S]`` (label, weight) as :func:`student_training_set` builds them:
    each image, then ``painted`` copies. The trees add vessel pixels that real images do not
    have, so a network fitted to the mix marks too much on them. Subtracting this from its
    logits moves it back to the images' own share (the prior-shift correction of Saerens et al.,
    "Adjusting the outputs of a classifier to new a priori probabilities", Neural Computation
    2002; logit adjustment in Menon et al., ICLR 2021). 0 without painted copies.
    """

    def log_odds(t: torch.Tensor) -> float:
        t = t.float()
        share = float((t[:, 0] * t[:, 1]).sum() / t[:, 1].sum().clamp_min(1.0))
        share = min(max(share, 1e-6), 1 - 1e-6)
        return math.log(share / (1 - share))

    if not painted:
        return 0.0
    return log_odds(targets) - log_odds(targets[:: painted + 1])


def student_training_set(
    images: Sequence[np.ndarray],
    fovs: Sequence[np.ndarray],
    teachers: Sequence[np.ndarray],
    fraction: float,
    config: StudentConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What the student trains on: images ``[N, 3, S, S]`` and targets ``[N, 2, S, S]`` (label,
    weight; ``uint8`` 0/1) at ``config.size``.

    Each image comes with its teacher's pseudo-labels
    (:func:`~localdisc.tasks.vesselness.vesselness_pseudo_label`), then ``config.painted``
    copies with a simulated tree painted on (:func:`~localdisc.data.synthetic.paint_vessels`):
    the tree is sure vessel, a one-pixel rim around it silent (blurred, it is neither), the
    rest keeps the image's pseudo-labels. The trees teach vessels of every calibre, thin ones
    the teacher leaves silent among them, with exact masks.
    """
    x, y = [], []
    for i, (image, fov, score) in enumerate(zip(images, fovs, teachers, strict=True)):
        label, weight = vesselness_pseudo_label(
            score, fov, fraction, sure=config.sure, unsure=config.unsure,
            erode_fov=config.erode_fov, speck_area=config.speck_area,
        )  # fmt: skip
        # RGB, as the network takes it: a grey (red-free) photograph used to crash the stack.
        image = resize_image(to_modality_channels(image, "fundus"), config.size)
        fov = resize_mask(fov, config.size)
        label, weight = (resize_mask(m > 0.5, config.size) for m in (label, weight))
        x.append(image)
        y.append([label, weight])
        for k in range(config.painted):
            painted, tree = paint_vessels(image, fov, np.random.default_rng([config.seed, i, k]))
            rim = ndi.binary_dilation(tree) & ~tree
            x.append(painted)
            y.append([label | tree, (weight | tree) & ~rim])
    xs = torch.from_numpy(np.stack(x)).permute(0, 3, 1, 2).contiguous()
    return xs, torch.from_numpy(np.asarray(y, dtype=np.uint8))  # 0/1: a quarter of float32


def student_probability(
    model: Segmenter, image: np.ndarray, fov: np.ndarray, *, flips: bool = True
) -> np.ndarray:
    """The student's vessel probability at the image's own size, 0 outside ``fov``; with
    ``flips`` the mean over the image as it is and flipped along each axis and both. A grey
    image is repeated to RGB, as :func:`student_training_set` takes it. ``fov`` is taken as
    bool (inside where nonzero), as :func:`~localdisc.tasks.vesselness.vesselness` takes it: a
    0/255 mask as a PNG reads scaled the probabilities to 255."""
    fov = np.asarray(fov, dtype=bool)
    image = resize_image(to_modality_channels(image, "fundus"), model.config.size)
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    dims = [(), (2,), (3,), (2, 3)] if flips else [()]
    prob = sum(predict_batch(model, x.flip(d), 1).flip(d) for d in dims) / len(dims)
    prob = F.interpolate(prob, size=fov.shape, mode="bilinear", align_corners=False)
    return prob[0, 0].clamp(0, 1).numpy() * fov
