"""Segmentation without labels by shape-guided clustering (METHOD.md section 5).

A model trained with a shape prior on cluster 0 (``localdisc shape-guided train``, i.e.
:func:`localdisc.engine.pretrain.pretrain` with ``prior`` set) segments an image two ways:

- output A: the assignment to cluster 0 inside the field of view, ``a_0 * FOV``;
- output B: channel 0 of ``softmax_k(v(p) . z_k / 0.2)`` with the image's own region embeddings
  ``z_k``: each pixel goes to the region whose mean embedding it is closest to.

Both are thresholded at 0.5. :func:`refine` then trains a separate segmentation network on the
pseudo-labels of both, pixels where they are unsure (or disagree) weighted down: the refinement
of Chen et al. (TPAMI 2023) that is in the paper but not in its public code. A prior that keeps
its pose (organs) adds two votes, its masks that best match the image moved onto it and
averaged, and the intensity posterior they guide (:func:`atlas_votes`). For an organ prior,
:func:`segment_images` holds output A and the refined masks to the prior's topology (its number of
pieces, no holes: :mod:`localdisc.priors.topology`).

The refinement trains for long (thousands of steps, hours on a CPU), so :func:`segment_images`
keeps a checkpoint of it in ``OUT/refine-checkpoint`` (an ensemble's run in
``OUT/run-K/refine-checkpoint``; :func:`~localdisc.engine.pseudo_label.fit_pseudo_labels`): a
stopped call (Ctrl-C, SIGTERM, a crash) run again continues the refinement from there, to the
network an uninterrupted one trains, and the folder is removed once the refined maps are
written.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from localdisc.data.datasets import OUTPUT_RECORDS, MaskMatch
from localdisc.data.io import dim_note, read_image, read_mask, write_png
from localdisc.data.preprocess import (
    as_raw_image,
    fov_from_image,
    resize_image,
    resize_mask,
    roi_box,
    stretch_contrast,
    to_modality_channels,
)
from localdisc.engine.batch_norm import recalibrate_batch_norm
from localdisc.engine.checkpoint import atomic_write_text, check_safetensors
from localdisc.engine.distributed import resolve_device
from localdisc.engine.finetune import AUGMENTATION, predict_batch
from localdisc.engine.monitor import ProgressBar
from localdisc.engine.pseudo_label import deterministic_cudnn, fit_pseudo_labels
from localdisc.engine.rng import keeps_global_rng
from localdisc.errors import CheckpointError, InputError, LocaldiscError
from localdisc.eval.provenance import environment
from localdisc.losses.region import region_embeddings
from localdisc.models.ld import (
    LDConfig,
    LDModel,
    check_weights_file,
    refuse_peer_run,
    split_weights_path,
    untrained_clusters,
)
from localdisc.models.segmenter import Segmenter
from localdisc.priors.atlas import (
    fuse_atlases,
    intensity_posterior,
    shift_sideways,
    sideways_offset,
)
from localdisc.priors.sources import prior_masks
from localdisc.priors.topology import PriorTopology, enforce_topology, prior_topology
from localdisc.tasks.predict import (
    METRICS,
    SkippedImages,
    Written,
    as_inputs,
    check_metrics,
    collect_images,
    mask_png,
    note_headers,
    prob_png,
    remove_metrics,
    remove_outputs,
    score_prediction,
    sized_mask,
    true_masks,
    write_scores,
)
from localdisc.tasks.similarity import check_size


@dataclass
class ShapeGuidedMaps:
    """Both outputs of one image at its own size (``float32`` H x W in [0, 1], 0 outside FOV)."""

    prob_a: np.ndarray
    prob_b: np.ndarray
    fov: np.ndarray
    # How often each pixel is foreground in the prior's masks that best match this image, each
    # moved onto it (same size, 0 outside the FOV), for a prior that keeps its pose
    # (:func:`run_prior_masks`, :func:`atlas_votes`); None otherwise.
    prior: np.ndarray | None = None
    # P(inside | grey level) with that prior as the mixing weight (:func:`atlas_votes`).
    intensity: np.ndarray | None = None
    # ``(y0, y1, x0, x1)``: the part of the image LD saw (:func:`seen_box`), where known.
    box: tuple[int, int, int, int] | None = None

    # At or above 0.5, as the masks written to disk (:func:`mask_png`) and every metric
    # (:mod:`localdisc.eval.metrics`) count it.
    @property
    def mask_a(self) -> np.ndarray:
        return self.prob_a >= 0.5

    @property
    def mask_b(self) -> np.ndarray:
        return self.prob_b >= 0.5

    def pseudo_label(self) -> tuple[np.ndarray, np.ndarray]:
        """``(label, weight)`` for refinement: the mean of A and B thresholded at 0.5, weighted by
        its distance from 0.5 (1 where both are sure and agree, 0 where they cancel out).

        With :attr:`prior` (and :attr:`intensity`), that mean, the prior's fused atlases and
        the intensity posterior get one vote each: LD's image-specific map pulled towards the
        shape and place the structure has in the prior, and towards how bright it is on this
        image. The prior's vote was chosen on the generated radiographs (over three seeds,
        lungs refined 0.956 -> 0.975; heart 0.934 -> 0.950; benchmarks/RESULTS.md, "The prior's
        pixel frequency as a vote in the pseudo-labels"), the moved prior and the intensity
        vote on the harder ones ("A harder generated radiograph set"), the fused atlases on
        those too ("Atlases that match each image").
        """
        mean = self.consensus
        return mean > 0.5, np.abs(2 * mean - 1).astype(np.float32)

    @property
    def consensus(self) -> np.ndarray:
        """The map the pseudo-labels threshold: the mean of A and B, and of that and the votes
        of :attr:`prior` and :attr:`intensity` that are there."""
        votes = [0.5 * (self.prob_a + self.prob_b)]
        votes += [v for v in (self.prior, self.intensity) if v is not None]
        return np.mean(votes, axis=0)


def _fov(image: np.ndarray, fov: np.ndarray | None, modality: str) -> np.ndarray:
    if fov is None:
        return fov_from_image(image, modality=modality)
    if fov.shape != image.shape[:2]:
        raise LocaldiscError(f"FOV of shape {fov.shape} for an image of {image.shape[:2]}")
    return fov.astype(bool)


def seen_box(image: np.ndarray, modality: str) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)``: the part of ``image`` that LD and the refinement see, resized to
    their size: a fundus image's ROI box, as the pool holds it (data/pool.py), else the whole
    image. The whole frame resized to a square squashed a retina in a wide black frame (a 3:2
    photograph whose disc spans its height) to 2/3 across, unlike pre-training's views of it."""
    h, w = image.shape[:2]
    return roi_box(image) if modality == "fundus" else (0, h, 0, w)


@torch.no_grad()
def segment(
    model: LDModel,
    image: np.ndarray,
    fov: np.ndarray | None = None,
    *,
    size: int | None = None,
    tau: float = 0.2,
    prior: np.ndarray | None = None,
) -> ShapeGuidedMaps:
    """Outputs A and B of one raw image (``H x W (x C)`` in [0, 1]).

    Args:
        model: a shape-guided LD model (cluster 0 is the target).
        image: the image at its own size.
        fov: its field of view; derived from the image when omitted (whole image for X-ray).
        size: the side the model sees (the scale it was trained at, e.g. the pool size);
            default: the image as it is.
        tau: the temperature of output B (0.2, as region discrimination).
        prior: a kept-pose prior's masks (N x S x S at any size: :func:`run_prior_masks`),
            fused onto the image with an intensity vote (:func:`atlas_votes`) for the
            pseudo-labels (:meth:`ShapeGuidedMaps.pseudo_label`).
    """
    image = as_raw_image(image)  # uint8 too: resize_image would make it float 0 to 255
    fov = _fov(image, fov, model.config.modality)
    h, w = image.shape[:2]
    y0, y1, x0, x1 = seen_box(image, model.config.modality)
    crop = image[y0:y1, x0:x1]
    x = resize_image(crop, size) if size else crop
    v, a = model.embed_and_cluster(x)  # [D, h', w'], [K, h', w']
    z = region_embeddings(v[None], a[None])[0]  # [K, D]
    b = torch.softmax(torch.einsum("dhw,kd->khw", v, z) / tau, dim=0)
    maps = torch.stack([a[0], b[0]])[None].float()
    if maps.shape[-2:] != crop.shape[:2]:
        maps = F.interpolate(maps, size=crop.shape[:2], mode="bilinear", align_corners=False)
    prob = np.zeros((2, h, w), np.float32)  # outside the box: no target
    prob[:, y0:y1, x0:x1] = maps[0].clamp(0, 1).cpu().numpy()
    prob *= fov
    return atlas_votes(image, prob[0], prob[1], fov, prior, box=(y0, y1, x0, x1))


def segment_all(
    model: LDModel,
    images: Sequence[np.ndarray],
    fovs: Sequence[np.ndarray | None] | None = None,
    *,
    size: int | None = None,
    tau: float = 0.2,
    prior: np.ndarray | None = None,
    offset: float | None = None,
    log: Callable[[str], None] = print,
    progress: bool = False,
    run_name: str = "",
) -> list[ShapeGuidedMaps]:
    """:func:`segment` of each of ``images`` (with its FOV of ``fovs``, or derived).

    With a kept-pose ``prior`` the run's maps are first moved sideways by the one shift under
    which the images' grey levels are most likely (:func:`sideways_offset`), then get the
    prior's votes: LD's organ maps sit a few pixels to one side, the same for a whole run
    (benchmarks/RESULTS.md, "One sideways shift per run"). ``offset`` (a fraction of the width,
    positive: right) replaces that estimate, e.g. 0 to compare with the maps where they are.

    ``progress``: a progress bar of the images for each pass (LD's maps, the prior's votes),
    titled with ``run_name`` (which run, e.g. ``run-0``) too.
    """
    fovs = [None] * len(images) if fovs is None else fovs
    maps = []
    # The same maps on a rerun, bit for bit (deterministic cuDNN on a GPU): a refinement's
    # checkpoint continues only with the same pseudo-labels.
    title = _title("segment", run_name)
    with deterministic_cudnn(), ProgressBar(len(images), 0, progress, title, unit="image") as bar:
        for im, fov in zip(images, fovs, strict=True):
            maps.append(segment(model, im, fov, size=size, tau=tau))
            bar.update(len(maps))
    if prior is None or not maps:
        return maps
    if offset is None:
        offset = sideways_offset(images, [m.consensus for m in maps])
        log(f"the run's maps moved sideways by {offset:+.1%} of the width (grey-level likelihood)")
    moved = []
    with ProgressBar(
        len(images), 0, progress, _title("prior votes", run_name), unit="image"
    ) as bar:
        for image, m in zip(images, maps, strict=True):
            pixels = round(offset * image.shape[1])
            a, b = (shift_sideways(p, pixels) * m.fov for p in (m.prob_a, m.prob_b))
            moved.append(atlas_votes(image, a, b, m.fov, prior, box=m.box))
            bar.update(len(moved))
    return moved


def _title(what: str, run_name: str) -> str:
    """A progress bar's title: ``what`` is done, and of which run (``run_name``, when given): a
    plain line read alone in an ensemble's log still says which."""
    return f"{what} {run_name}" if run_name else what


def atlas_votes(
    image: np.ndarray,
    prob_a: np.ndarray,
    prob_b: np.ndarray,
    fov: np.ndarray,
    masks: np.ndarray | None,
    box: tuple[int, int, int, int] | None = None,
) -> ShapeGuidedMaps:
    """Outputs A and B of ``image`` with the votes of a kept-pose prior's ``masks`` (N x S x S;
    None: no votes): those that best match LD's map, the mean of A and B, moved onto it and
    averaged (:func:`localdisc.priors.atlas.fuse_atlases`), carried to the image's size, and the
    intensity posterior they mix (:func:`localdisc.priors.atlas.intensity_posterior`), both 0
    outside the FOV. ``box``: the part of the image LD saw (:func:`seen_box`), in whose frame
    the masks keep their pose, as the pool's views do; the whole image where omitted."""
    if masks is None:
        return ShapeGuidedMaps(prob_a, prob_b, fov, box=box)
    y0, y1, x0, x1 = box or (0, fov.shape[0], 0, fov.shape[1])
    inside = fov[y0:y1, x0:x1]
    fused = fuse_atlases(masks, 0.5 * (prob_a + prob_b)[y0:y1, x0:x1])[0]
    prior, intensity = np.zeros((2, *fov.shape), np.float32)
    prior[y0:y1, x0:x1] = np.clip(resize_image(fused, inside.shape), 0, 1) * inside
    intensity[y0:y1, x0:x1] = intensity_posterior(image[y0:y1, x0:x1], prior[y0:y1, x0:x1]) * inside
    return ShapeGuidedMaps(prob_a, prob_b, fov, prior, intensity, box)


def pretrain_settings(run_dir: str | Path) -> dict[str, Any]:
    """The ``pretrain`` section of a run's ``config.json`` ({} when it has none); ``run_dir``
    may also name one of the run's weight files, as :meth:`LDModel.from_pretrained` takes it."""
    folder, _ = split_weights_path(run_dir)
    return json.loads((folder / "config.json").read_text()).get("pretrain") or {}


def run_size(run_dir: str | Path) -> int | None:
    """The pool side a run trained at (its images' scale), from its ``config.json``."""
    from localdisc.engine.pretrain import PretrainConfig

    config = pretrain_settings(run_dir)
    return PretrainConfig.from_dict(config).resolved_pool_size if config else None


def run_topology(run_dir: str | Path, log: Callable[[str], None] = print) -> PriorTopology | None:
    """The topology of a run's shape prior when it is solid (an organ), else None (no prior, a
    tree prior, or a prior that cannot be read any more: said in ``log``)."""
    config = pretrain_settings(run_dir)
    if not config.get("prior"):
        return None
    try:
        topology = prior_topology(config["prior"])
    except LocaldiscError as exc:
        log(f"prior topology not applied: {exc}")
        return None
    return topology if topology.solid else None


def run_prior_bank(run_dir: str | Path) -> dict[str, int]:
    """``count`` and ``seed`` of :func:`~localdisc.priors.load_prior` as the run trained its
    prior with them (``PretrainConfig.prior_count`` and ``seed``; their defaults where the
    run's ``config.json`` lacks them): they pick a simulated prior's masks."""
    from localdisc.engine.pretrain import PretrainConfig

    config = pretrain_settings(run_dir)
    return {
        "count": config.get("prior_count", PretrainConfig.prior_count),
        "seed": config.get("seed", PretrainConfig.seed),
    }


def run_prior_masks(
    run_dir: str | Path, log: Callable[[str], None] = print, *, size: int | None = None
) -> np.ndarray | None:
    """A run's prior masks (``bool`` N x S x S at the run's size, or at ``size``:
    :func:`prior_masks`, the bank it was trained against: :func:`run_prior_bank`) when the prior
    keeps its pose (``prior_pose="kept"``: it says where the structure lies), else None (no
    prior, a prior free of pose, or one that cannot be read any more: said in ``log``)."""
    config = pretrain_settings(run_dir)
    if not config.get("prior") or config.get("prior_pose") != "kept":
        return None
    try:
        side = size or run_size(run_dir) or 512
        return prior_masks(config["prior"], side, pose="kept", **run_prior_bank(run_dir))
    except LocaldiscError as exc:
        log(f"prior masks not used in the pseudo-labels: {exc}")
        return None


def ensemble_prior_masks(
    runs: Sequence[str | Path], log: Callable[[str], None] = print
) -> np.ndarray | None:
    """The prior masks an ensemble's mean maps vote with (:func:`atlas_votes`): the banks of all
    ``runs`` whose prior keeps its pose (:func:`run_prior_masks`, each at the first one's size)
    together, each mask once and in the order they come; None where no run's prior keeps its
    pose.

    Runs of one recipe usually differ in seed, and a simulated prior's seed and count pick the
    masks a run trained against (:func:`run_prior_bank`): the mean of the runs' maps is held
    against every mask one of them was trained with, not the first run's alone. One run, or runs
    that share a bank, vote with that bank as it is.
    """
    banks: list[np.ndarray] = []
    banked = 0  # the runs that gave a bank
    for run in runs:
        bank = run_prior_masks(run, log, size=banks[0].shape[-1] if banks else None)
        banked += bank is not None
        if bank is not None and not any(bank is seen for seen in banks):  # cached: the same
            banks.append(bank)
    if len(banks) <= 1:
        return banks[0] if banks else None
    masks = np.concatenate(banks)
    # Banks of nearby seeds overlap (masks seed ... seed + count - 1): each mask votes once.
    packed = np.packbits(masks.reshape(len(masks), -1), axis=1)
    _, first = np.unique(packed, axis=0, return_index=True)
    masks = masks[np.sort(first)]
    log(f"the mean maps vote with the prior masks of {banked} runs together: "
        f"{len(masks)} masks")  # fmt: skip
    return masks


def segment_images(
    run_dir: str | Path | Sequence[str | Path],
    images: Sequence[str | Path],
    out_dir: str | Path,
    *,
    size: int | None = None,
    refine_steps: int = 0,
    topology: bool = True,
    device: str = "auto",
    log: Callable[[str], None] = print,
    progress: bool = False,
    masks: str | Path | None = None,
    skip_bad: bool = False,
) -> Written:
    """Write ``NAME_{A,B}_prob.png``, ``NAME_{A,B}_mask.png`` and ``NAME_uncertainty.png``; with
    ``refine_steps`` also ``NAME_refined_{prob,mask}.png`` of a network trained on the
    pseudo-labels of all the given images. Returns the masks' paths
    (:class:`~localdisc.tasks.predict.Written`, with what was skipped and scored).

    The uncertainty is ``1 - weight`` of :meth:`ShapeGuidedMaps.pseudo_label` (16 bits), whose
    pseudo-labels are A's and B's, with the prior's votes when it keeps its pose
    (:func:`run_prior_masks`, :func:`atlas_votes`; A and B then first moved sideways as one:
    :func:`segment_all`). With ``topology`` and an organ prior
    (:func:`run_topology`), A and the refined maps keep the prior's number of pieces and no
    holes.

    Several runs (e.g. the seeds of one recipe) segment as an ensemble: each run's outputs go to
    ``OUT/run-0``, ``OUT/run-1``, ... as they come, and their mean probability maps (held to the
    topology after averaging) to ``OUT``, whose uncertainty has the votes of every run's prior
    masks that keep their pose, together (:func:`ensemble_prior_masks`). Run again into ``OUT``
    with the same runs, images and settings, a run that got to its end there
    (``OUT/run-K/segment.json``, written last with the settings and the environment, marks it)
    is kept as it is: a stopped ensemble goes on from the run it stopped in. A refinement
    stopped midway continues from its checkpoint, ``OUT/refine-checkpoint`` (an ensemble's
    run: ``OUT/run-K/refine-checkpoint``), removed once the refined maps are written.

    ``OUT/segment.json`` records what made the outputs in ``OUT`` (each run with its prior, each
    image's file, the settings, the files written per image, the environment), written whole
    at the end; before the first output, it lists the images and parts alone (``"finished":
    false``), so that the outputs of a call stopped midway are named as outputs too.
    Run again into that ``OUT``, the outputs of the images it lists and this call does not
    segment, and the ``run-K`` parts this call does not have, are removed
    (:func:`_remove_earlier_outputs`): they would sit beside this call's as if of one run. Not
    before this call's first model has loaded and segmented the images, just before its first
    output is written (an ensemble whose runs are all kept: before its mean maps), so that a call
    that fails before (damaged weights, an image that cannot be read) keeps them and the record.

    ``progress``: progress bars (as ``predict``'s) of each run's images, its refinement's
    steps, and the ensemble's mean maps.

    ``masks``: a folder of true masks named as the images, matched as ``predict --masks``
    matches them (:func:`~localdisc.tasks.predict.target_mask_files`), each read and checked
    against its image's size before any work (:func:`~localdisc.tasks.predict.true_masks`).
    Every output written to ``OUT`` (A, B, refined; an ensemble's mean maps, not each run's) is
    scored against them into ``OUT/metrics.json`` and the log (:func:`_score_outputs`); images
    without a mask are named and not scored, as ``predict`` does. An earlier call's
    ``metrics.json`` is removed with its outputs, as above
    (:func:`~localdisc.tasks.predict.remove_metrics`): a
    call that fails before that keeps it.

    Every image is read once, before any model loads (the runs of an ensemble segment the same
    arrays). ``skip_bad``: an image the reader refuses there (a DICOM structured report, a
    truncated file: :class:`~localdisc.tasks.predict.SkippedImages`) is left out of the call,
    named in ``log`` and listed under ``skipped`` (name, file, reason) in ``OUT/segment.json``;
    an earlier call's outputs of it are removed as those of any image not segmented again.

    Raises:
        LocaldiscError: ``masks`` is missing, no image has a mask there, a mask cannot be read or
            is not its image's size, or ``OUT/metrics.json`` is not one this command wrote; an
            image cannot be read (without ``skip_bad``), or none can.
    """
    images = as_inputs(images)  # a folder alone: its masks were matched letter by letter
    runs = [run_dir] if isinstance(run_dir, str | Path) else list(run_dir)
    if not runs:
        raise LocaldiscError("segment_images needs at least one run")
    check_size(size, "--size")
    if isinstance(refine_steps, bool) or int(refine_steps) != refine_steps or refine_steps < 0:
        # A negative count used to write "refined" masks of a network that never trained.
        raise LocaldiscError(f"--refine-steps must be 0 (no refinement) or more, not "
                             f"{refine_steps!r}")  # fmt: skip
    # Every run is read before the first is used: an ensemble's mistyped last run used to fail
    # only after the others had segmented (and refined) every image.
    for run in runs:
        _check_run(run, log)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():  # it failed at the first write, after LD ran
        raise LocaldiscError(f"{out_dir}: a file, not a folder; --out names the output folder")
    # Listed once, before anything is written: each run of an ensemble writes into OUT/run-K,
    # which a later listing of an image folder holding OUT would take for more images.
    files = collect_images(images, out_dir=out_dir, suffixes=OUTPUT_SUFFIXES, log=log, guard=False)
    note_headers(files, log)
    check_metrics(out_dir, masks is not None, SEGMENT_COMMAND)
    # An ensemble's runs are held to one topology (one run's is its own: _segment_run); said
    # before any image is decoded.
    ensemble = runs if len(runs) > 1 else []
    modalities = {str(r): LDConfig.from_run(r).modality for r in ensemble}
    if len(set(modalities.values())) > 1:  # a fundus run's maps were averaged with an X-ray's
        found = "; ".join(f"{r}: {m}" for r, m in modalities.items())
        raise LocaldiscError(
            f"the runs are of different modalities ({found}); the ensemble's mean would average "
            "their maps: give runs of one modality"
        )
    topologies = {str(r): run_topology(r, log) if topology else None for r in ensemble}
    if len(set(topologies.values())) > 1:
        found = "; ".join(
            f"{r}: {t or 'none held (no organ prior)'}" for r, t in topologies.items()
        )
        raise LocaldiscError(f"the runs' priors have different topologies ({found}); the "
                             "ensemble's mean is held to one: give runs of one prior, or "
                             "--no-topology")  # fmt: skip
    skips = SkippedImages(skip_bad, log, len(files))
    arrays = [read[0] for name, path in files if (read := skips.read(name, path)) is not None]
    files = skips.kept(files)
    note = dim_note([(name, float(a.max())) for (name, _), a in zip(files, arrays, strict=True)],
                    "image(s)", "the network sees them near black")  # fmt: skip
    if note is not None:
        log(f"note: {note}")
    shapes = {name: array.shape for (name, _), array in zip(files, arrays, strict=True)}
    matched = (
        true_masks(files, images, masks, shapes=shapes, log=log) if masks is not None else None
    )
    env = environment(device)  # at the start: where and when these outputs were made
    parts = [out_dir / f"run-{i}" for i in range(len(runs))] if len(runs) > 1 else []

    def before_writing() -> None:  # damaged weights fail before: the earlier call's files stay
        _remove_earlier_outputs(out_dir, files, len(parts), log)
        remove_metrics(out_dir, SEGMENT_COMMAND,
                       "an earlier segment's scores, of the outputs this one replaces",
                       log)  # fmt: skip
        # Listed before the first is written: a call stopped midway left outputs no record
        # named, which a folder of images holding OUT read as images. The whole record, at the
        # end, replaces this one.
        out_dir.mkdir(parents=True, exist_ok=True)
        started = {"images": [{"name": name} for name, _ in files],
                   "parts": [p.name for p in parts], "finished": False}  # fmt: skip
        atomic_write_text(out_dir / SEGMENT_RECORD, json.dumps(started, indent=1))

    if not parts:
        written = _segment_run(runs[0], files, out_dir, size, refine_steps, topology, device,
                               log, progress=progress, before_writing=before_writing,
                               arrays=arrays)  # fmt: skip
    else:
        written = _segment_ensemble(runs, files, out_dir, parts, topologies[str(runs[0])], size,
                                    refine_steps, device, log, progress, before_writing,
                                    arrays)  # fmt: skip
    outputs = [s for s in OUTPUT_SUFFIXES if refine_steps or "_refined" not in s]
    record = {
        "runs": [{"run": str(Path(r).expanduser().resolve()),
                  **{k: settings.get(k) for k in ("prior", "prior_pose")},
                  "size": size or run_size(r)}
                 for r in runs for settings in [pretrain_settings(r)]],
        "parts": [p.name for p in parts],
        "images": [{"name": name, "image": str(path.resolve())} for name, path in files],
        "outputs": [f"NAME{s}.png" for s in outputs],
        "size": size, "refine_steps": refine_steps, "topology": topology,
        "masks": str(Path(masks).expanduser().resolve()) if masks is not None else None,
        "environment": env, "skipped": skips.record(),
    }  # fmt: skip
    metrics = None
    if matched is not None:  # before segment.json, written last
        scored = ("A", "B", "refined") if refine_steps else ("A", "B")
        metrics = _score_outputs(runs, files, arrays, out_dir, matched, scored, record, log,
                                 progress)  # fmt: skip
    atomic_write_text(out_dir / SEGMENT_RECORD, json.dumps(record, indent=1))
    # One a stopped call of one run left, where an ensemble now wrote (each run's is its own).
    shutil.rmtree(out_dir / REFINE_CHECKPOINT, ignore_errors=True)
    log(f"{len(files)} image(s) segmented into {out_dir}: {', '.join(record['outputs'])} "
        f"per image; what made them in {out_dir / SEGMENT_RECORD}"
        + skips.summary(out_dir / SEGMENT_RECORD))  # fmt: skip
    return Written(written, record["skipped"], metrics)


def _segment_ensemble(
    runs: Sequence[str | Path],
    files: Sequence[tuple[str, Path]],
    out_dir: Path,
    parts: Sequence[Path],
    prior_shape: PriorTopology | None,
    size: int | None,
    refine_steps: int,
    device: str,
    log: Callable[[str], None],
    progress: bool,
    before_writing: Callable[[], None] | None,
    arrays: Sequence[np.ndarray],
) -> list[Path]:
    """:func:`segment_images` with several runs, each into its part of ``parts``;
    ``before_writing`` called before a run writes its first output, and before the mean maps
    are written; ``arrays``: the images of ``files``, as read."""
    atlases = ensemble_prior_masks(runs, log)
    modality = LDConfig.from_run(runs[0]).modality
    for run, part in zip(runs, parts, strict=True):
        # Each run's outputs, its refinement's above all, take long: a finished one is kept.
        marker, settings = part / SEGMENT_RECORD, _part_settings(run, files, size, refine_steps)
        if marker.is_file() and _without_environment(json.loads(marker.read_text())) == settings:
            log(f"{part} holds {run}'s outputs of these images: kept as they are (deleting "
                "it segments again)")  # fmt: skip
            continue
        log(f"segmenting with {run} -> {part}")
        env = environment(device)  # where and when this run's outputs were made

        def start(marker: Path = marker) -> None:  # one that fails before writing keeps it
            marker.unlink(missing_ok=True)
            if before_writing is not None:
                before_writing()

        _segment_run(run, files, part, size, refine_steps, False, device, log,
                     progress=progress, run_name=part.name, before_writing=start,
                     arrays=arrays)  # fmt: skip
        atomic_write_text(marker, json.dumps({**settings, "environment": env}, indent=1))
    if prior_shape is not None:  # refined only when there is a refinement
        held = "the mean A and refined" if refine_steps else "the mean A"
        log(f"prior topology applied to {held}: {prior_shape}")
    outputs = ("A", "B", "refined") if refine_steps else ("A", "B")
    if before_writing is not None:  # every run's outputs kept: not called yet
        before_writing()
    if not refine_steps:
        drop_refined(out_dir, [name for name, _ in files])
    written = []
    with ProgressBar(len(files), 0, progress, "ensemble mean", unit="image") as bar:
        for done, (name, image) in enumerate(zip([n for n, _ in files], arrays, strict=True), 1):
            mean = {
                o: mean_probability([p / f"{name}_{o}_prob.png" for p in parts]) for o in outputs
            }
            for output, prob in mean.items():
                if output != "B" and prior_shape is not None:
                    prob = enforce_topology(prob, prior_shape)
                write_png(out_dir / f"{name}_{output}_prob.png", prob_png(prob))
                written.append(write_png(out_dir / f"{name}_{output}_mask.png", mask_png(prob)))
            # The uncertainty of the mean maps as they come, as for one run.
            if atlases is None:  # no votes of a prior: the image is not needed (A, B: 0 off FOV)
                fov = np.ones(mean["A"].shape, bool)
                maps = ShapeGuidedMaps(mean["A"], mean["B"], fov)
            else:  # the prior's votes inside the FOV only, as each run's (they were not, off it)
                fov = _fov(image, None, modality)
                box = seen_box(as_raw_image(image), modality)  # as each run's votes
                maps = atlas_votes(image, mean["A"], mean["B"], fov, atlases, box=box)
            _, weight = maps.pseudo_label()
            write_png(out_dir / f"{name}_uncertainty.png", prob_png(1 - weight))
            bar.update(done)
    return written


#: The record of what made the outputs of :func:`segment_images` in its ``OUT``.
SEGMENT_RECORD = "segment.json"
#: The refinement's checkpoint folder in an output folder (an ensemble's part), while it trains.
REFINE_CHECKPOINT = "refine-checkpoint"


def _remove_earlier_outputs(
    out_dir: Path, files: Sequence[tuple[str, Path]], parts: int, log: Callable[[str], None]
) -> None:
    """Remove what an earlier :func:`segment_images` into ``out_dir`` (its ``segment.json``)
    wrote and this call, of ``files`` with ``parts`` ``run-K`` folders (0: one run), does not
    write again: the outputs of images it listed and this call does not segment, in ``out_dir``
    and in its parts, and whole parts beyond ``parts`` (an ensemble of more runs, or any, where
    one run now writes to ``out_dir`` itself). Left beside this call's outputs, they mixed two
    calls. Only files named as outputs of listed images; this call's inputs are left alone.
    Called just before this call's first output is written, so that a call that fails before
    (damaged weights, an image that cannot be read) loses nothing; called again, it finds no
    record."""
    record_path = out_dir / SEGMENT_RECORD
    try:
        record = json.loads(record_path.read_text())
        listed = [entry["name"] for entry in record["images"]]
        earlier = [p for p in record["parts"] if isinstance(p, str) and p.startswith("run-")]
    except (OSError, ValueError, TypeError, KeyError):
        return  # none, or not one segment_images wrote (an ensemble's part marker, say)
    own = {f"run-{k}" for k in range(parts)}
    removed = 0
    for folder, whole in [(out_dir, False)] + [(out_dir / p, p not in own) for p in earlier]:
        removed += remove_outputs(folder, listed, files, OUTPUT_SUFFIXES, every=whole)
        if whole:  # a part this call has not: its marker and checkpoint too, and the folder
            (folder / SEGMENT_RECORD).unlink(missing_ok=True)
            shutil.rmtree(folder / REFINE_CHECKPOINT, ignore_errors=True)
            with contextlib.suppress(OSError):
                folder.rmdir()
    record_path.unlink()  # written again at the end, for this call's outputs
    if removed:
        log(f"removed {removed} file(s) of an earlier segment from {out_dir}: outputs of images, "
            "or runs of an ensemble, that this one does not have")  # fmt: skip


#: The command named in the ``metrics.json`` :func:`segment_images` writes with ``masks``
#: (:func:`~localdisc.tasks.predict.metrics_command`: another command's is not replaced).
SEGMENT_COMMAND = "shape-guided segment"
#: The metrics :func:`score_table` shows, after ``n``; ``cldice`` where it was scored.
TABLE_METRICS = ("dice", "auc", "sensitivity", "cldice")


def _tubular(run_dir: str | Path, log: Callable[[str], None]) -> bool:
    """Whether a run's prior is a tree (vessels: its masks have holes, :func:`prior_topology`),
    whose outputs clDice scores too, as ``finetune`` scores vessels; said in ``log`` when the
    prior cannot be read any more."""
    spec = pretrain_settings(run_dir).get("prior")
    if not spec:
        return False
    try:
        return not prior_topology(spec).solid
    except LocaldiscError as exc:
        log(f"no clDice in the scores: {exc}")
        return False


def _score_outputs(
    runs: Sequence[str | Path],
    files: Sequence[tuple[str, Path]],
    arrays: Sequence[np.ndarray],
    out_dir: Path,
    matched: dict[str, MaskMatch],
    outputs: Sequence[str],
    record: dict[str, Any],
    log: Callable[[str], None],
    progress: bool = False,
) -> dict[str, Any]:
    """Score each of ``outputs`` (``A``, ``B``, ``refined``) of the images with a true mask in
    ``matched``, as written in ``out_dir``, and write ``OUT/metrics.json``; returns what it
    holds. ``arrays``: the images of ``files``, as read (not decoded again).

    Each output is scored from its files at the image's own size
    (:func:`~localdisc.tasks.predict.score_prediction`: the binary metrics of the mask written,
    ``auc`` of the probability map; ``dice`` over the whole image, the others inside the FOV the
    outputs were held to: found in a fundus photograph, all of a radiograph), with ``cldice``
    where the first run's prior is a tree (:func:`_tubular`). ``metrics.json``: ``predict``'s
    (:func:`~localdisc.tasks.predict.write_scores`), per output; its summary is logged as
    :func:`score_table`."""
    modality = LDConfig.from_run(runs[0]).modality
    topology = _tubular(runs[0], log)
    rows: dict[str, list[dict[str, Any]]] = {output: [] for output in outputs}
    targets = [(name, path, image, mask) for (name, path), image in zip(files, arrays, strict=True)
               if (mask := matched[name].mask) is not None]  # fmt: skip
    with ProgressBar(len(targets), 0, progress, "score", unit="image") as bar:
        for done, (name, path, image, mask) in enumerate(targets, 1):
            target, fov = sized_mask(mask, path, image.shape), _fov(image, None, modality)
            for output in outputs:
                prob = read_image(out_dir / f"{name}_{output}_prob.png")[0][..., 0]
                binary = read_mask(out_dir / f"{name}_{output}_mask.png")
                scores = score_prediction(prob, target, fov, topology=topology, binary=binary)
                rows[output].append({"image": name, **scores})
            bar.update(done)
    header = {
        "command": SEGMENT_COMMAND,
        "runs": [entry["run"] for entry in record["runs"]],
        "masks": record["masks"],
        "threshold": 0.5,
        "fov": "found in each image" if modality == "fundus" else "the whole image",
    }
    metrics = write_scores(out_dir, header, rows, files, matched, record["environment"], log)
    log(f"scores against {record['masks']} (per image in {out_dir / METRICS}):")
    log(score_table(metrics["summary"]))
    return metrics


def score_table(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    """The ``summary`` of :func:`_score_outputs` as a plain-text table: per output, ``n`` and
    the mean of :data:`TABLE_METRICS` (``dice`` with its std over two or more images: one of 0
    reads as images that agreed), those scored; ``(n=K)`` where a metric has fewer images than
    the row (AUC is undefined on an image of one class)."""
    keys = [k for k in TABLE_METRICS if any(k in s for s in summary.values())]
    rows = []
    for output, s in summary.items():
        n = int(s["dice"]["n"]) if "dice" in s else 0  # finite for every image scored
        cells = []
        for k in keys:
            v = s.get(k, {"mean": float("nan"), "std": float("nan"), "n": 0})
            text = f"{v['mean']:.4f}" + (f" +- {v['std']:.4f}" if k == "dice" and n > 1 else "")
            cells.append(text + (f" (n={int(v['n'])})" if int(v["n"]) < n else ""))
        rows.append([output, str(n), *cells])
    heads = ["output", "n", *keys]
    widths = [max(len(row[i]) for row in [heads, *rows]) for i in range(len(heads))]
    widths[1:] = [max(w, 4 if i == 0 else 11) for i, w in enumerate(widths[1:])]

    def line(row: list[str]) -> str:
        return " ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )

    return "\n".join(line(row) for row in [heads, *rows])


def _part_settings(
    run_dir: str | Path, files: Sequence[tuple[str, Path]], size: int | None, refine_steps: int
) -> dict[str, Any]:
    """What one run's outputs in an ensemble depend on (JSON as written): the run's weights and
    config, the images (each by path, size and time of change) and the settings."""

    def stamp(path: Path) -> list[Any]:
        info = path.stat()
        return [str(path.resolve()), info.st_size, info.st_mtime_ns]

    folder, weights = split_weights_path(run_dir)
    return {
        "run": stamp(folder / weights), "config": stamp(folder / "config.json"),
        "images": [[name, *stamp(Path(path))] for name, path in files], "size": size,
        "refine_steps": refine_steps,
        # outputs of before (the whole frame, 8-bit maps) are not kept: LD sees the ROI box
        "seen": "roi_box", "prob_bits": 16,
    }  # fmt: skip


def _without_environment(marker: Any) -> Any:
    """A ``segment.json`` as :func:`_part_settings` made it: the ``environment`` it also records
    (:func:`~localdisc.eval.provenance.environment`) is no setting."""
    return (
        {k: v for k, v in marker.items() if k != "environment"}
        if isinstance(marker, dict)
        else marker
    )


def _check_run(run_dir: str | Path, log: Callable[[str], None]) -> None:
    """Raise :class:`~localdisc.errors.CheckpointError` when ``run_dir`` is no LD run with its
    weights, or with damaged ones (a peer method's run too: refused now, not at its first image,
    after an ensemble's other runs); say in ``log`` when it was trained without a shape prior
    (cluster 0, output A, then marks nothing in particular)."""
    folder, weights = split_weights_path(run_dir)
    LDConfig.from_run(folder)  # names a folder that is no run
    refuse_peer_run(run_dir)
    check_weights_file(folder, weights)  # an unfinished run is named, with how to finish it
    # A damaged file too, before any run segments: an ensemble's earlier runs are work lost.
    check_safetensors(folder / weights)
    settings = pretrain_settings(run_dir)
    untrained = untrained_clusters(run_dir)
    if untrained is not None:
        raise CheckpointError(
            f"{folder / weights}: {untrained[0]}, whose clustering head never trained (stage 1 "
            f"trains the embedding alone): outputs A and B would come from its random weights; "
            f"{untrained[1]}"
        )
    if not settings.get("prior"):
        log(
            f"warning: {folder} was trained without a shape prior (`localdisc shape-guided "
            "train`): its cluster 0, output A, is not guided to any structure"
        )


#: What :func:`segment_images` appends to an image's name.
OUTPUT_SUFFIXES = OUTPUT_RECORDS[SEGMENT_RECORD]


def mean_probability(files: Sequence[Path]) -> np.ndarray:
    """The mean of probability maps written as PNGs (:func:`prob_png`): an ensemble's map."""
    return np.mean([read_image(f)[0][..., 0] for f in files], axis=0)


def _segment_run(
    run_dir: str | Path,
    files: Sequence[tuple[str, Path]],
    out_dir: Path,
    size: int | None,
    refine_steps: int,
    topology: bool,
    device: str,
    log: Callable[[str], None],
    *,
    progress: bool = False,
    run_name: str = "",
    before_writing: Callable[[], None] | None = None,
    arrays: Sequence[np.ndarray],
) -> list[Path]:
    """:func:`segment_images` with one run, of ``files`` (:func:`collect_images`) read as
    ``arrays``; ``progress`` bars titled with ``run_name`` (which run of an ensemble) too;
    ``before_writing`` called once the model has loaded and segmented every image, just before
    the first output is written."""
    device = str(resolve_device(device))
    model = LDModel.from_pretrained(run_dir, device=device)
    size = size or run_size(run_dir)
    prior_shape = run_topology(run_dir, log) if topology else None
    if prior_shape is not None:  # refined only when there is a refinement
        log(f"prior topology applied to {'A and refined' if refine_steps else 'A'}: {prior_shape}")

    def held(prob: np.ndarray) -> np.ndarray:
        return prob if prior_shape is None else enforce_topology(prob, prior_shape)

    atlases = run_prior_masks(run_dir, log)
    if atlases is not None:
        log(
            "the prior keeps its pose: its masks that best match each image, moved onto it, "
            "and an intensity posterior are votes in the pseudo-labels"
        )
    written = []
    names = [name for name, _ in files]
    all_maps = segment_all(model, arrays, size=size, prior=atlases, log=log, progress=progress,
                           run_name=run_name)  # fmt: skip
    if before_writing is not None:
        before_writing()
    for name, maps in zip(names, all_maps, strict=True):
        for output, prob in (("A", held(maps.prob_a)), ("B", maps.prob_b)):
            write_png(out_dir / f"{name}_{output}_prob.png", prob_png(prob))
            written.append(write_png(out_dir / f"{name}_{output}_mask.png", mask_png(prob, 0.5)))
        _, weight = maps.pseudo_label()
        write_png(out_dir / f"{name}_uncertainty.png", prob_png(1 - weight))
    if refine_steps:
        config = RefineConfig(steps=refine_steps, size=size or 512, device=device)
        checkpoint = out_dir / REFINE_CHECKPOINT  # a stopped call's refinement continues there
        network = refine(run_dir, arrays, all_maps, config, log=log, progress=progress,
                         checkpoint_dir=checkpoint)  # fmt: skip
        title = _title("refined", run_name)
        with ProgressBar(len(names), 0, progress, title, unit="image") as bar:
            for i, (name, image, maps) in enumerate(zip(names, arrays, all_maps, strict=True)):
                prob = held(
                    refined_probability(network, image, maps.fov, stretch=config.stretch_contrast)
                )
                write_png(out_dir / f"{name}_refined_prob.png", prob_png(prob))
                written.append(write_png(out_dir / f"{name}_refined_mask.png", mask_png(prob)))
                bar.update(i + 1)
        shutil.rmtree(checkpoint, ignore_errors=True)  # the refined maps are written
    else:
        drop_refined(out_dir, names)
    return written


def drop_refined(out_dir: Path, names: Sequence[str]) -> None:
    """Delete refined maps an earlier call left in ``out_dir`` for ``names``: without refinement
    they would sit beside this call's A and B as if they were its own; and the checkpoint of a
    refinement an earlier call stopped in."""
    shutil.rmtree(out_dir / REFINE_CHECKPOINT, ignore_errors=True)
    for name in names:
        for kind in ("prob", "mask"):
            (out_dir / f"{name}_refined_{kind}.png").unlink(missing_ok=True)


# --- refinement ----------------------------------------------------------------------------


@dataclass
class RefineConfig:
    """Training of the refinement network on pseudo-labels (short: it fits what LD found)."""

    steps: int = 600
    batch: int = 2
    lr: float = 1e-3
    size: int = 512
    rotation: float | None = None  # None: the modality's, as in transfer (180 fundus, 30 X-ray)
    flips: bool | None = None  # None: the modality's (fundus yes, X-ray no)
    # With no labels there is no validation set to pick a step by: the last one counts, so the
    # learning rate decays to 0 ("cosine") rather than stopping mid-flight ("constant").
    schedule: str = "cosine"
    # Batch-norm statistics recomputed on the un-augmented images after training, so the
    # evaluated network normalises as the data says, not as the last noisy batches of 2 did.
    recalibrate: bool = True
    # X-ray inputs stretched to their own 0.5-99.5 percentiles (training and prediction alike):
    # a network that sees each image a few times learns the usual exposure and gives up on a
    # washed-out one, even one it was trained on. No effect on fundus photographs.
    stretch_contrast: bool = True
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        problems = []
        if self.schedule not in ("constant", "cosine"):
            problems.append(f"schedule must be 'constant' or 'cosine', not {self.schedule!r}")
        if self.steps < 1 or self.batch < 1:
            problems.append(f"steps and batch must be >= 1, not {self.steps} and {self.batch}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"lr must be > 0 and finite, not {self.lr}")
        if self.size < 16:
            problems.append(f"size must be at least 16 pixels, not {self.size}")
        # As FinetuneConfig's: a negative range or NaN refined without rotation, silently.
        if self.rotation is not None and not (math.isfinite(self.rotation) and self.rotation >= 0):
            problems.append(
                f"rotation must be a range in degrees >= 0 and finite (0: none; None: the "
                f"modality's), not {self.rotation!r}"
            )
        if problems:
            raise InputError("invalid refinement config: " + "; ".join(problems))


@keeps_global_rng
def refine(
    run_dir: str | Path,
    images: Sequence[np.ndarray],
    maps: Sequence[ShapeGuidedMaps],
    config: RefineConfig | None = None,
    *,
    log: Callable[[str], None] = print,
    progress: bool = False,
    checkpoint_dir: str | Path | None = None,
) -> Segmenter:
    """Train a segmenter (encoder from ``run_dir``) on the pseudo-labels of ``maps``.

    No label is used: the targets are what the LD model itself found in ``images``.
    ``progress``: a progress bar of the steps. ``checkpoint_dir``: where the training keeps a
    checkpoint, continued by a call of the same run, images, maps and config
    (:func:`~localdisc.engine.pseudo_label.fit_pseudo_labels`; its first SIGINT/SIGTERM writes
    one and raises KeyboardInterrupt); the caller removes it once the network's maps are written.
    """
    config = config or RefineConfig()
    if len(images) != len(maps) or not images:
        raise LocaldiscError("refine needs one map per image, and at least one image")
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model = _refine_network(run_dir, config.size, log)
    config = replace(config, size=model.config.size)
    model = model.to(device).train()
    modality = model.config.modality
    rotation, flips = AUGMENTATION[modality]
    rotation = rotation if config.rotation is None else config.rotation
    flips = flips if config.flips is None else config.flips
    images = [_refine_input(as_raw_image(im), modality, config.stretch_contrast) for im in images]
    # as segment() gave LD the images (found by it where the maps are its)
    boxes = [m.box or seen_box(im, modality) for im, m in zip(images, maps, strict=True)]
    x = torch.from_numpy(
        np.stack([resize_image(im[y0:y1, x0:x1], config.size) for im, (y0, y1, x0, x1) in
                  zip(images, boxes, strict=True)])
    )  # fmt: skip
    x = x.permute(0, 3, 1, 2).contiguous()
    targets = []
    for m, (y0, y1, x0, x1) in zip(maps, boxes, strict=True):
        label, weight = (a[y0:y1, x0:x1] for a in m.pseudo_label())
        targets.append([resize_mask(label, config.size), resize_image(weight, config.size)])
    y = torch.from_numpy(np.asarray(targets, dtype=np.float32))  # [N, 2, S, S]
    fit_pseudo_labels(model, x, y, steps=config.steps, batch=config.batch, lr=config.lr,
                      rotation=rotation, flips=flips, cosine=config.schedule == "cosine",
                      seed=config.seed, device=device, log=log, name="refine step",
                      progress=progress, checkpoint_dir=checkpoint_dir,
                      lr_option="RefineConfig.lr")  # fmt: skip
    if config.recalibrate:
        log(f"recalibrating batch norm over the {len(x)} image(s) trained on ...")  # else silent
        recalibrate_batch_norm(model, x, batch=8)
    return model.eval()


def refine_size(size: int, depth: int) -> int:
    """``size`` rounded up to what a segmenter of ``depth`` blocks takes: each block below the
    first halves the image and the decoder doubles it back, so a multiple of 2^(depth-1)."""
    unit = 2 ** (depth - 1)
    return max(unit, -(-size // unit) * unit)


def _refine_network(
    run_dir: str | Path, size: int, log: Callable[[str], None] = print
) -> Segmenter:
    """The segmenter that :func:`refine` trains: the encoder of ``run_dir`` (a run folder, or one
    of its weight files, whose encoder is then the one taken), at ``size`` rounded up to
    :func:`refine_size` (said in ``log``)."""
    folder, _ = split_weights_path(run_dir)
    depth = LDConfig.from_run(folder).depth
    side = refine_size(size, depth)
    if side != size:
        log(
            f"refinement at {side} px, not {size}: the network of depth {depth} needs a "
            f"multiple of {2 ** (depth - 1)}"
        )
    return Segmenter.from_ld_run(run_dir, size=side)


def _refine_input(image: np.ndarray, modality: str, stretch: bool) -> np.ndarray:
    # The network's channels, as LDModel gives them to LD: a grey fundus photograph or an RGB
    # radiograph is segmented by LD, and must be refined too (and stacked with the others).
    image = to_modality_channels(image, modality)
    return stretch_contrast(image) if stretch and modality == "xray" else image


def refined_probability(
    model: Segmenter, image: np.ndarray, fov: np.ndarray, *, stretch: bool = True
) -> np.ndarray:
    """The refinement network's probability map at the image's own size, 0 outside the FOV.

    ``stretch`` must be what the network was trained with (``RefineConfig.stretch_contrast``).
    """
    image = _refine_input(as_raw_image(image), model.config.modality, stretch)
    y0, y1, x0, x1 = seen_box(image, model.config.modality)  # as refine() trained on it
    crop = image[y0:y1, x0:x1]
    x = torch.from_numpy(resize_image(crop, model.config.size)).permute(2, 0, 1)[None]
    prob = predict_batch(model, x, 1)
    prob = F.interpolate(prob, size=crop.shape[:2], mode="bilinear", align_corners=False)
    full = np.zeros(image.shape[:2], np.float32)  # outside the box: no target
    full[y0:y1, x0:x1] = prob[0, 0].clamp(0, 1).numpy()
    return full * fov
