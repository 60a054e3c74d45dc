"""``localdisc shape-guided vessels``: vessel masks of fundus photographs with no label anywhere.

:func:`segment_vessels_self_trained` teaches a network on the given photographs themselves
(:func:`~localdisc.tasks.self_training.train_student`: a filter's sure pixels at the prior's
vessel fraction, and simulated trees painted on copies) and writes their masks with specks
dropped; :func:`predict_vessels` segments further photographs with the network it saved
(``localdisc predict --model OUT_DIR``). Nothing here learns from a label (with ``masks``,
true tracings of some images, it scores the masks written against them: :func:`_score_vessels`);
what it gives without them is an order to look at the masks in, per image in ``vessels.csv``:

* the share of the FOV a mask covers, held against the shares on the images taught on
  (:func:`share_yardstick`, :func:`is_unusual`): a network that marks far too much or too little
  on an image unlike those it learnt from; the log names such images, and ``reteach_unusual``
  gives them a network of their own;
* how far a mask strays from its teacher (:func:`teacher_disagreement`), which ranks poor masks
  better than the share does, but names none.

Large cohorts are taught on a seeded draw of ``train_images`` (memory grows with them), or with
``teach_all`` in groups of that many, a network each.

Usage::

    masks = segment_vessels_self_trained(["DRIVE/test/images"], "vessels/")
    more = predict_vessels("vessels/", ["new_photos/"], "vessels-new/")
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from localdisc.data.datasets import MaskMatch, absolute_path
from localdisc.data.io import read_image, read_mask, write_png
from localdisc.data.preprocess import (
    fov_from_image,
    resize_image,
    resize_inside,
    resize_mask,
    to_modality_channels,
)
from localdisc.engine.checkpoint import atomic_write_text
from localdisc.engine.distributed import resolve_device
from localdisc.engine.monitor import ProgressBar
from localdisc.errors import ImageReadError, LocaldiscError
from localdisc.eval.provenance import environment, resumed
from localdisc.models.segmenter import Segmenter, read_config, saved_together
from localdisc.tasks.predict import (
    METRICS,
    SkippedImages,
    as_inputs,
    check_metrics,
    check_threshold,
    collect_images,
    fov_mask_files,
    mask_png,
    note_headers,
    prob_png,
    read_fov_mask,
    remove_metrics,
    remove_outputs,
    score_prediction,
    sized_mask,
    true_masks,
    write_scores,
)
from localdisc.tasks.self_training import (
    STUDENT_CHECKPOINT,
    StudentConfig,
    student_probability,
    train_student,
)
from localdisc.tasks.vesselness import eroded_fov, remove_specks, vesselness

__all__ = [
    "PAINTED",
    "SPECK_AREA",
    "TRAIN_IMAGES",
    "UNUSUAL_SHARE",
    "is_unusual",
    "predict_vessels",
    "segment_vessels_self_trained",
    "share_yardstick",
    "teacher_disagreement",
]


SPECK_AREA = 6e-4  # the benchmark's, chosen on STARE (:func:`remove_specks`)
# Painted copies, for masks with their specks dropped: on STARE, where the student's settings are
# chosen, 0.757 and 0.746 over two seeds against 0.745 and 0.739 without copies
# (``benchmarks/RESULTS.md``); on DRIVE 0.778 and 0.776, above every filter (0.765).
PAINTED = 2
# Images taught on at most, for memory: the command's peak was 1.90 GiB taught on 10 DRIVE
# images, 2.27 GiB on 20 and 3.31 GiB on 40 (``benchmarks/RESULTS.md``), so about 3.8 GiB on 50;
# one network on DRIVE's 40 did as well as one per split of 20 (0.772 both). Images not taught
# on lose a little (taught on 10 of 20: median change -0.004 on DRIVE's test images, -0.015 on
# its training images, -0.011 on STARE) and a few much (0.70 to 0.54, 0.65 to 0.54 and 0.64 to
# 0.53 on DRIVE): the log names those three, and ``reteach_unusual`` teaches a network on them.
# ``teach_all`` leaves none out, a network per group of this many (two groups of 10: 0.777,
# 0.754 and 0.760 on DRIVE's test images, STARE and DRIVE's training images; one network on all
# 20: 0.774, 0.758 and 0.767).
TRAIN_IMAGES = 50
RETAUGHT = "unusual"  # the folder of the network taught on the unusual images alone


def segment_vessels_self_trained(
    images: Sequence[str | Path],
    out_dir: str | Path,
    *,
    prior: str = "simulated:vessels",
    fraction: float | None = None,
    config: StudentConfig | None = None,
    speck_area: float = SPECK_AREA,
    max_size: int = 768,
    fov_masks: str | Path | None = None,
    train_images: int = TRAIN_IMAGES,
    reteach_unusual: bool = False,
    teach_all: bool = False,
    masks: str | Path | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
    skip_bad: bool = False,
) -> list[Path]:
    """Vessel masks of fundus photographs, no label anywhere (``localdisc shape-guided vessels``).

    A network (:func:`train_student`; ``config`` default :class:`StudentConfig` with
    :data:`PAINTED` copies; a ``config`` given is taken whole, and :class:`StudentConfig`'s own
    default is no painted copy: give ``painted=PAINTED`` to keep the command's) is taught on
    the given images themselves (``train_images`` of them at most, drawn with ``config.seed``:
    memory grows with them, and images unlike any taught on may fare worse,
    :data:`TRAIN_IMAGES`): its teacher's sure pixels at ``fraction`` of the FOV (``None``: the
    vessel fraction ``prior``'s masks imply, inside their convex hulls) and the simulated trees
    painted on copies. Each image's FOV is read from
    ``fov_masks`` (a folder: :func:`fov_mask_files`) or else found in the image
    (:func:`~localdisc.data.preprocess.fov_from_image`); images whose longer side
    exceeds ``max_size`` are shrunk to it first (the filter's scales are those of DRIVE- and
    STARE-sized photographs, 565-700 pixels wide).

    Writes, per image at its own size, ``NAME_prob.png`` (probability in 16 bits, the mean over the
    four flips) and ``NAME_mask.png`` (0/255, probability >= 0.5 without the pieces smaller than
    ``speck_area`` of the FOV: :func:`remove_specks`); the network (``model.safetensors`` +
    ``config.json``, which ``localdisc predict --model OUT_DIR`` takes for further images, as
    :func:`predict_vessels`); and ``figures/overlay.png`` (the first four masks). Every image
    is read, and checked against its FOV mask, before training starts; images not taught on
    whose masks cover an unusual share of the FOV are named in the log (:func:`is_unusual`),
    and every image's share, and how far its mask strays from its teacher
    (:func:`teacher_disagreement`), is listed in ``vessels.csv``. With ``reteach_unusual``,
    those are then given a run of their own, in ``OUT_DIR/unusual`` (a network taught on them
    alone, as this function would teach it on them), whose masks replace theirs. With
    ``teach_all``, more images than ``train_images`` are split into seeded groups of at most that
    many instead, each taught on and segmented by a network of its own, in ``OUT_DIR/group-K``
    (with its figure and table; :func:`_teach_in_groups`): no image is left out, for one
    training per group. Run again into ``OUT_DIR`` with the same settings and images, a run that
    got to its end there is kept as it is (``vessels.csv``, written last, marks it), and one that
    stopped after its training segments with the network it saved: a stopped ``teach_all`` run
    goes on from where it stopped; one laid out otherwise than the run there (one network or a
    network per group, ``group-K/`` beyond its groups, an ``unusual/`` it would not write) is
    refused before any work (:func:`_check_layout`). ``progress`` shows progress bars. Returns
    the masks' paths.
    The network's ``config.json`` also records the ``environment`` it was taught in
    (:func:`~localdisc.eval.provenance.environment`).

    ``masks``: a folder of true vessel masks named as the images, matched as ``predict --masks``
    matches them, each read and checked against its image's size before any training
    (:func:`~localdisc.tasks.predict.true_masks`); images without one are named and not scored.
    Once every mask is written (those of all groups with ``teach_all``), each is scored against
    its true mask as written (specks dropped) inside the FOV it was written in, its probability
    map for ``auc``, with clDice (:func:`_score_vessels`), into ``OUT_DIR/metrics.json`` and a
    table in the log. Scoring is no training setting: a finished run is kept and scored. An
    earlier call's ``metrics.json`` is removed once this call has read its inputs; another
    command's is left alone, and refused with ``masks``.

    ``skip_bad``: every image is read once first, and one the reader refuses (a DICOM structured
    report, a truncated file: :class:`~localdisc.tasks.predict.SkippedImages`), or whose FOV
    the teacher's erosion leaves empty (:func:`_read_photo`), is left out of the call, as if
    not given: named in ``log`` and listed under ``skipped`` (name, file,
    reason) in the ``config.json`` of the network that segments the others (each group's, with
    ``teach_all``). An earlier run's masks of it are removed, as those of any image not
    segmented again. Without it, such an image stops the command before any training.

    Raises:
        LocaldiscError: besides bad settings and images: ``masks`` is missing, no image has a
            mask there, a mask cannot be read or is not its image's size, or ``OUT_DIR`` holds a
            ``metrics.json`` this command did not write; an image cannot be read (without
            ``skip_bad``), or none can.
    """
    images = as_inputs(images)
    config = config or StudentConfig(painted=PAINTED)
    if max_size < MIN_SIDE:
        raise LocaldiscError(f"max_size must be at least {MIN_SIDE} pixels, got {max_size}")
    if not 0.0 <= speck_area < 1.0:
        raise LocaldiscError(f"speck_area is a share of the FOV in [0, 1), not {speck_area!r}")
    if config.steps < 1:
        raise LocaldiscError(f"the network needs at least one step, got {config.steps}")
    if train_images < 1:
        raise LocaldiscError(f"the network needs at least one image to learn from, got "
                             f"{train_images}")  # fmt: skip
    _check_out_dir(Path(out_dir))
    # out_dir may lie in an images folder: its masks are not images to segment on a second run.
    files = collect_images(images, out_dir=out_dir, log=log)
    note_headers(files, log)
    skips = SkippedImages(skip_bad, log, len(files))
    # The unreadable ones (and those with no FOV left to segment: _read_photo) known before the
    # images are drawn, grouped, or found to be those of a finished run (without skip_bad, a
    # check below stops there). A grouped run checks each once, here; a single network's run
    # reads each again, once drawn (a read more of each image, only with skip_bad).
    if skip_bad:
        fovs = fov_mask_files([path for _, path in files], fov_masks) if fov_masks else None
        for i, (name, path) in enumerate(files):
            try:
                _check_photo(path, max_size, None if fovs is None else fovs[i], config.erode_fov)
            except ImageReadError as exc:
                skips.unreadable(name, path, exc)  # raised where it is another file's
        files = skips.kept(files)
    grouped = teach_all and len(files) > train_images
    groups = math.ceil(len(files) / train_images) if grouped else 0  # as _teach_in_groups splits
    _check_layout(Path(out_dir), groups, reteach_unusual)
    check_metrics(Path(out_dir), masks is not None, VESSELS_COMMAND)
    matched = true_masks(files, images, masks, skips) if masks is not None else None
    env = environment(config.device) if masks is not None else None  # where and when scored
    if grouped:
        if not skip_bad:  # every image checked before the first training (above, with it)
            fovs = fov_mask_files([path for _, path in files], fov_masks) if fov_masks else None
            for i, (_, path) in enumerate(files):
                try:
                    _check_photo(path, max_size, None if fovs is None else fovs[i],
                                 config.erode_fov)  # fmt: skip
                except ImageReadError as exc:
                    raise skips.hinted(path, exc)  # noqa: B904 - the hinted error holds its cause
        _clear_earlier_run(Path(out_dir), files, log)  # each group clears its own folder
        group_run = partial(_self_train, prior=prior, fraction=fraction, config=config,
                            speck_area=speck_area, max_size=max_size, fov_masks=fov_masks,
                            train_images=train_images, reteach_unusual=False, log=log,
                            progress=progress, skips=skips)  # fmt: skip
        written = _teach_in_groups(files, Path(out_dir), train_images, config.seed, group_run, log)
        networks = sorted(Path(out_dir).glob("group-*/config.json"))
    else:
        written = _self_train(files, Path(out_dir), prior=prior, fraction=fraction,
                              config=config, speck_area=speck_area, max_size=max_size,
                              fov_masks=fov_masks, train_images=train_images,
                              reteach_unusual=reteach_unusual, log=log,
                              progress=progress, skips=skips)  # fmt: skip
        networks = [Path(out_dir) / "config.json"]
    for path in networks:  # what this call skipped, beside what taught each network
        _record_skipped(path, skips.record())
    # Once per command: not for each group, nor for the run of the unusual images.
    _name_first_to_review(Path(out_dir) / "vessels.csv", log)
    if matched is not None:  # all groups' masks together, in the top out_dir
        _score_vessels(files, Path(out_dir), matched, masks, fov_masks=fov_masks,
                       max_size=max_size, env=env, log=log,
                       progress=progress)  # fmt: skip
    # The command's last word: where everything is (it ended on the review order, or on a
    # progress line, or the scores), and how to segment further photographs.
    network = Path(out_dir) / "group-K" if grouped else out_dir
    figure = "group-K/figures/overlay.png" if grouped else "figures/overlay.png"  # each group's
    scores = f"; {METRICS}" if matched is not None else ""
    log(
        f"{len(written)} mask(s) in {out_dir} (NAME_mask.png, NAME_prob.png; vessels.csv; "
        f"{figure}{scores}); further photographs: localdisc predict --model {network}"
        + skips.summary(Path(network) / "config.json")
    )
    return written


def _record_skipped(path: Path, skipped: list[dict[str, str]]) -> None:
    """Write ``skipped`` (:meth:`~localdisc.tasks.predict.SkippedImages.record`) into the
    network's ``config.json`` at ``path``, where it differs from what an earlier call wrote
    there (none written: none skipped). Not a setting (:func:`_same_settings` compares
    ``self_trained_vessels``): a finished run is kept whatever an earlier call skipped."""
    saved = read_config(path.parent)
    if saved.get("skipped", []) != skipped:
        saved["skipped"] = skipped
        atomic_write_text(path, json.dumps(saved, indent=2))


def _self_train(
    files: Sequence[tuple[str, Path]],
    out_dir: Path,
    *,
    prior: str,
    fraction: float | None,
    config: StudentConfig,
    speck_area: float,
    max_size: int,
    fov_masks: str | Path | None,
    train_images: int,
    reteach_unusual: bool,
    log: Callable[[str], None],
    progress: bool,
    skips: SkippedImages | None = None,
) -> list[Path]:
    """One network's run of :func:`segment_vessels_self_trained` on ``files`` (``(name, path)``
    as :func:`collect_images` named them for the whole command: a subset named on its own could
    clash, ``a/x.png`` and ``b/x.png`` both ``x``; checked settings), into ``out_dir``: kept when
    finished there, else taught (or taken from a stopped run) and segmenting every image;
    ``vessels.csv`` last. ``skips``: what an image that cannot be read raises
    (:meth:`~localdisc.tasks.predict.SkippedImages.hinted`)."""
    skips = skips or SkippedImages(count=len(files))
    masks = fov_mask_files([path for _, path in files], fov_masks) if fov_masks else None
    chosen = set(range(len(files)))
    if len(files) > train_images:
        rng = np.random.default_rng(config.seed)
        chosen = set(rng.choice(len(files), train_images, replace=False).tolist())
    given_fraction, source = fraction, prior if fraction is None else None  # for config.json
    if fraction is None:
        from localdisc.priors import load_prior
        from localdisc.tasks.benchmark_shape_guided import expected_fraction

        bank = load_prior(prior, 128, count=32, seed=0)
        fraction = expected_fraction(bank, tubular=True, spec=prior)
    if not 0.0 < fraction < 1.0:
        raise LocaldiscError(f"the vessel fraction must lie in (0, 1), got {fraction!r}")
    settings = {"student": asdict(config), "prior": source, "fraction": fraction,
                "speck_area": speck_area, "max_size": max_size,
                "images": [str(path.resolve()) for i, (_, path) in enumerate(files) if i in chosen],
                "fov_masks": None if fov_masks is None else absolute_path(str(fov_masks)),
                "reteach_unusual": reteach_unusual}  # fmt: skip
    names = [name for name, _ in files]
    earlier = _same_settings(out_dir, settings)  # a network of these settings in out_dir
    if earlier and _finished(out_dir, names):
        log(f"{out_dir} holds a finished run of these settings on these images: kept as it is "
            f"(another --out, or deleting it, runs again)")  # fmt: skip
        # This call's scores, if any, replace them.
        remove_metrics(out_dir, VESSELS_COMMAND, EARLIER_SCORES, log)
        return [out_dir / f"{name}_mask.png" for name in names]
    # Where and when, in config.json beside the settings (not among them: _same_settings
    # compares those); a stopped run's network keeps the environment it was trained in.
    env = environment(config.device)
    provenance = resumed(read_config(out_dir), env) if earlier else {"environment": env}
    taught = {}  # index -> (image, FOV, own size); the others are only read, to check them
    for i, (_, path) in enumerate(files):
        mask = None if masks is None else masks[i]
        try:
            if i in chosen:
                taught[i] = _read_photo(path, max_size, mask, config.erode_fov)
            else:
                _check_photo(path, max_size, mask, config.erode_fov)
        except ImageReadError as exc:
            raise skips.hinted(path, exc)  # noqa: B904 - the hinted error holds its cause
    _clear_earlier_run(out_dir, files, log)  # once every image is read: a bad one removes nothing
    pictures, fovs = [taught[i][0] for i in sorted(taught)], [taught[i][1] for i in sorted(taught)]
    log(
        f"{len(files)} image(s): a network taught on {len(pictures)} of them by {config.method} "
        f"at {fraction:.3f} of the FOV and by {config.painted} painted copies per image, "
        f"{config.steps} steps"
    )
    # A stopped training continues from its checkpoint there, removed once the network is saved
    # (a run stopped after that segments with the network).
    checkpoint = out_dir / STUDENT_CHECKPOINT
    if earlier:  # stopped after its training: the network it saved segments
        log(f"the network an earlier run of these settings trained in {out_dir} segments them")
        device = str(resolve_device(config.device))
        model, scores = Segmenter.from_pretrained(out_dir, device=device), {}
    else:
        log(f"the teacher ({config.method}) scores {len(pictures)} image(s) ...")
        scores = {i: vesselness(image, fov, method=config.method, erode_fov=config.erode_fov)
                  for i, (image, fov, _) in sorted(taught.items())}  # fmt: skip
        model = train_student(pictures, fovs, fraction, config, teachers=list(scores.values()),
                              log=log, progress=progress, checkpoint_dir=checkpoint)  # fmt: skip
    # Before a long segmentation, with the images it writes masks of ("writes": a rerun into
    # the images' folder replaces those alone, not a true mask of an image added since).
    extra = {"self_trained_vessels": settings, "writes": names, **provenance}
    model.save(out_dir, extra=extra)
    shutil.rmtree(checkpoint, ignore_errors=True)  # (one a kill just after the save left, too)
    written, shares, strays = _write_vessels(model, files, masks, out_dir, max_size, speck_area,
                                             (config.method, config.erode_fov), log=log,
                                             loaded=taught, scores=scores,
                                             progress=progress)  # fmt: skip
    # What the network marks on images it was taught on: the yardstick for the others.
    yardstick = share_yardstick([shares[i] for i in sorted(chosen)])
    settings["vessel_share"], settings["vessel_share_range"] = yardstick[0], list(yardstick[1:])
    settings["teacher_disagreement"] = float(np.median([strays[i] for i in sorted(chosen)]))
    model.save(out_dir, extra=extra)
    seen = [i in chosen for i in range(len(files))]
    odd = _name_unusual(names, shares, seen, yardstick, log)
    if reteach_unusual and not odd and (out_dir / RETAUGHT).is_dir():  # (_check_layout)
        log(
            f"{out_dir / RETAUGHT}: an earlier run's network of its unusual images; none "
            "is unusual in this run, so none of its masks is used (delete it, or move it)"
        )
    if reteach_unusual and odd:
        log(f"a second network, taught on the {len(odd)} unusual image(s) alone, replaces their "
            f"masks: {out_dir / RETAUGHT}")  # fmt: skip
        _self_train([files[i] for i in odd], out_dir / RETAUGHT, prior=prior,
                    fraction=given_fraction, config=config, speck_area=speck_area,
                    max_size=max_size, fov_masks=fov_masks, train_images=train_images,
                    reteach_unusual=False, log=log, progress=progress)  # fmt: skip
        _adopt_masks(files, odd, out_dir / RETAUGHT, out_dir)
    _write_share_table(out_dir, names, shares, seen, yardstick, strays,
                       settings["teacher_disagreement"],
                       [reteach_unusual and i in odd for i in range(len(files))])  # fmt: skip
    return written


def predict_vessels(
    model_dir: str | Path,
    images: Sequence[str | Path],
    out_dir: str | Path,
    *,
    fov_masks: str | Path | None = None,
    threshold: float = 0.5,
    device: str = "auto",
    log: Callable[[str], None] = print,
    progress: bool = False,
    model: Segmenter | None = None,
    files: Sequence[tuple[str, Path]] | None = None,
    skips: SkippedImages | None = None,
) -> list[Path]:
    """Segment further photographs with a network :func:`segment_vessels_self_trained` saved,
    as it segmented its own (``localdisc predict`` on its folder): FOVs from ``fov_masks`` or
    found in the images, images shrunk to the same ``max_size``, the mean over the four flips,
    masks at ``threshold`` without the specks it dropped. Images not taught on whose masks cover
    a share of the FOV far from what it marked on those it was taught on are named in the log
    (:func:`is_unusual`); every image's share and :func:`teacher_disagreement` are listed in
    ``vessels.csv``. Both are held against the network's only at :data:`YARDSTICK_THRESHOLD`,
    the threshold of the masks they were measured on: at another, none is named and the
    table's ratios are left empty (the log says why). ``progress`` shows a progress bar;
    ``model``: the network of ``model_dir`` when the caller loaded it already; ``files``:
    ``images`` as :func:`~localdisc.tasks.predict.collect_images` listed them, when the caller
    did already.
    ``skips``: what becomes of an image that cannot be read
    (:class:`~localdisc.tasks.predict.SkippedImages`: skipped where it is read, before anything
    is written for it, with ``SkippedImages(True)``; default: it stops the command). Returns the
    masks' paths. A ``threshold`` outside [0, 1] is refused (:func:`check_threshold`)."""
    threshold = check_threshold(threshold)
    settings = read_config(model_dir).get("self_trained_vessels")
    if not isinstance(settings, dict):
        raise LocaldiscError(f"{model_dir}: not a network of `localdisc shape-guided vessels`")
    if model is None:
        model = Segmenter.from_pretrained(model_dir, device=str(resolve_device(device)))
    if files is None:
        # not the masks of a run before into it
        files = collect_images(images, out_dir=out_dir, log=log)
    skips = skips or SkippedImages(count=len(files))
    masks = fov_mask_files([path for _, path in files], fov_masks) if fov_masks else None
    student = settings.get("student", {})
    teacher = student.get("method", "line"), student.get("erode_fov", 8)
    written, shares, strays = _write_vessels(model, files, masks, Path(out_dir),
                                             settings.get("max_size", 768),
                                             settings["speck_area"], teacher, threshold,
                                             log=log, progress=progress,
                                             skips=skips)  # fmt: skip
    files = skips.kept(files)
    taught_on = {Path(path).resolve() for path in settings.get("images", [])}
    names, seen = [name for name, _ in files], [path.resolve() in taught_on for _, path in files]
    yardstick, usual_stray = _saved_yardstick(settings), settings.get("teacher_disagreement")
    if threshold != YARDSTICK_THRESHOLD and (yardstick or usual_stray):
        # Shares and strays move with the threshold: held against those of masks at another,
        # every image would look unusual, or none, for the threshold alone.
        log(f"masks at threshold {threshold:g}, not the {YARDSTICK_THRESHOLD:g} the network's "
            "vessel share and teacher disagreement were measured at on the images it was taught "
            "on: no image is judged unusual (ratio, unusual and disagreement_ratio left empty "
            f"in {Path(out_dir) / 'vessels.csv'})")  # fmt: skip
        yardstick, usual_stray = None, None
    _name_unusual(names, shares, seen, yardstick, log)
    _write_share_table(Path(out_dir), names, shares, seen, yardstick, strays,
                       usual_stray)  # fmt: skip
    _name_first_to_review(Path(out_dir) / "vessels.csv", log)
    return written


# The threshold of the masks a network's yardstick (:func:`share_yardstick`) and usual teacher
# disagreement are measured on (:func:`_self_train`'s, ``_write_vessels``' default):
# :func:`predict_vessels` holds masks at another threshold against neither.
YARDSTICK_THRESHOLD = 0.5

# An image not taught on is named in the log as unusual when its mask covers a share of its FOV
# beyond both the shares marked on the images taught on and this many times their median (or its
# inverse). The band alone came from one DRIVE case, 15_test (a tessellated fundus, not taught on:
# 1.74 times, 0.16 Dice lost; the other 19 lay at 0.70-1.22 times); on STARE, where the share
# marked on the images taught on ranged from 0.39 to 1.32 times their median, the band alone
# named an image that had not lost (0.62 times), hence the range. On DRIVE's training images,
# measured after, it named the two of ten that lost most (0.11 each: 1.59 and 2.38 times) and
# missed one (0.08 lost at 1.02 times): it catches a network that marks too much or too little,
# not every failure (``benchmarks/RESULTS.md``).
UNUSUAL_SHARE = 1.5


def share_yardstick(shares: Sequence[float]) -> tuple[float, float, float]:
    """The median, lowest and highest share of the FOV the network marks on the images it was
    taught on: what the others are held against (:func:`is_unusual`)."""
    return float(np.median(shares)), float(min(shares)), float(max(shares))


def is_unusual(share: float, yardstick: Sequence[float]) -> bool:
    """Whether ``share`` lies beyond both the taught images' range and :data:`UNUSUAL_SHARE`
    times their median, or its inverse (:func:`share_yardstick`); never when they had nothing
    marked."""
    median, low, high = yardstick
    return median > 0 and not min(low, median / UNUSUAL_SHARE) <= share <= max(
        high, median * UNUSUAL_SHARE
    )


def teacher_disagreement(
    mask: np.ndarray, score: np.ndarray, fov: np.ndarray, erode_fov: int = 8
) -> float:
    """How far a vessel ``mask`` strays from its teacher: 1 - the Dice between it and as many of
    the teacher's highest-``score`` pixels, inside the FOV eroded by ``erode_fov`` pixels (where
    the filter is defined). The teacher is cut at the mask's own size, so a mask of a usual
    share of the FOV in the wrong places is told too. 1 when nothing is marked there.

    The student is taught to go beyond its teacher, so some disagreement is its gain; more of it
    goes with worse masks: Spearman's rho with the masks' Dice -0.57 to -0.72 in six runs of 20
    images on STARE and DRIVE, taught on all or on half (the mask's share of the FOV: -0.04 to
    -0.32). It was chosen on STARE among four label-free signals (``benchmarks/RESULTS.md``). It
    tells poor masks rather than images unlike those taught on: what an image lost by not being
    taught on it follows on one set of three (rho with the change -0.04, -0.79 and +0.08).
    """
    region = eroded_fov(fov, erode_fov)
    marked = mask[region]
    k = int(marked.sum())
    if k == 0:
        return 1.0
    top = np.zeros(marked.size, bool)
    top[np.argsort(-score[region], kind="stable")[:k]] = True
    return float(1 - (top & marked).sum() / k)  # both hold k pixels: Dice is the overlap / k


def _same_settings(out_dir: Path, settings: Mapping) -> bool:
    """Whether ``out_dir`` holds a network that a run of ``settings`` trained (it is saved with
    them, atomically, before the run segments). The student's ``device`` aside: where it trained
    does not change what it learnt, and a run stopped on one device goes on on another.

    A network that is not the one saved with that config (a save cut between its two files,
    or weights changed by hand) is refused, not taken for this run's nor trained over."""
    if not (out_dir / "model.safetensors").is_file():
        return False
    try:
        config = read_config(out_dir)
    except LocaldiscError:
        return False
    saved = config.get("self_trained_vessels")

    def same(key: str, value: object) -> bool:
        if key == "student" and isinstance(value, dict) and isinstance(saved.get(key), dict):
            return {**saved[key], "device": None} == {**value, "device": None}
        return saved.get(key) == value

    if not (isinstance(saved, dict) and all(same(k, v) for k, v in settings.items())):
        return False
    if not saved_together(out_dir, config):
        raise LocaldiscError(
            f"{out_dir / 'model.safetensors'}: not the network saved with the config.json of "
            "these settings beside it (a save cut short by a full disk or a kill, or weights "
            "changed since): delete it to train again, or give another --out"
        )
    return True


def _listed(out_dir: Path) -> list[str] | None:
    """The images ``out_dir/vessels.csv`` lists (a run's of this command, or a ``predict``'s
    with its network), or ``None`` where there is none that reads."""
    try:
        with (out_dir / "vessels.csv").open(newline="") as file:
            return [row["image"] for row in csv.DictReader(file)]
    except (OSError, KeyError, csv.Error):
        return None


def _finished(out_dir: Path, names: Sequence[str]) -> bool:
    """Whether the run in ``out_dir`` got to its end: its ``vessels.csv`` (written last, and
    removed when a run starts) lists ``names``, each with its masks."""
    return _listed(out_dir) == list(names) and all(
        (out_dir / f"{n}_{kind}.png").is_file() for n in names for kind in ("prob", "mask")
    )


def _check_out_dir(out_dir: Path) -> None:
    """Refuse, before any work, an ``out_dir`` holding another command's run (a fine-tuning,
    a pre-training: a ``config.json`` that is not this command's network's), whose network and
    config this run would save over."""
    if not (out_dir / "config.json").is_file():
        return
    try:
        saved = read_config(out_dir)
    except LocaldiscError:
        return  # unreadable: as before, a network is taught and saved over it
    if "self_trained_vessels" not in saved:
        raise LocaldiscError(
            f"{out_dir}: holds the run of another command (config.json), whose network this "
            "one would replace; choose another --out (nothing was written)"
        )


def _check_layout(out_dir: Path, groups: int, reteach_unusual: bool) -> None:
    """Refuse, before any work, an ``out_dir`` holding networks of an earlier run that this one
    (``groups`` of them in ``group-K/``, or 0: one in ``out_dir``, and one in ``unusual/`` with
    ``reteach_unusual``) would not save over: a single run's ``config.json``, ``model.safetensors``
    or stopped training under a grouped run, ``group-K/`` beyond its groups, an ``unusual/``
    without ``reteach_unusual`` or under a grouped run. Left there they are stale beside its
    outputs (``localdisc predict --model OUT_DIR`` took a single run's network after a grouped
    run); removing them, hours of training, is the user's call. A run laid out as the earlier
    one goes on as any rerun: fewer ``group-K/`` than its groups are a stopped run's, and an
    ``unusual/`` with ``reteach_unusual`` is written again where images are unusual (else
    :func:`_self_train` says it is not used)."""
    found = []
    single = [n for n in ("config.json", "model.safetensors", STUDENT_CHECKPOINT)
              if (out_dir / n).exists()]  # fmt: skip
    if groups and single:
        found.append(f"one network for all its images ({', '.join(single)})")
    numbered = sorted((int(p.name[6:]), p.name) for p in out_dir.glob("group-*")
                      if p.is_dir() and p.name[6:].isdigit())  # fmt: skip
    beyond = [name for k, name in numbered if not 1 <= k <= groups]
    if beyond:
        kind = f"networks of groups beyond its {groups}" if groups else "a network per group"
        found.append(f"{kind} ({', '.join(beyond)})")
    if (out_dir / RETAUGHT).is_dir() and (groups or not reteach_unusual):
        found.append(f"a network of its unusual images ({RETAUGHT}/)")
    if not found:
        return
    this = f"a network per group, in group-1 ... group-{groups}" if groups else "one network"
    if not groups and not reteach_unusual and (out_dir / RETAUGHT).is_dir():
        this += ", no unusual/ without --reteach-unusual"
    raise LocaldiscError(
        f"{out_dir}: holds networks of an earlier run that this one ({this}) would not replace: "
        f"{'; '.join(found)}; they would stay beside its outputs, stale, and `localdisc predict "
        "--model` take them for this run's. Choose another --out, or delete those first "
        "(nothing was written)"
    )


def _clear_earlier_run(
    out_dir: Path, files: Sequence[tuple[str, Path]], log: Callable[[str], None]
) -> None:
    """Before a run writes into ``out_dir``: remove the masks an earlier run there (its
    ``vessels.csv``) wrote of images this one does not segment (:func:`remove_outputs`), else
    the two runs' masks lie mixed; then that ``vessels.csv``, which marks a finished run, and
    the scores of an earlier call (:func:`~localdisc.tasks.predict.remove_metrics`)."""
    removed = remove_outputs(out_dir, _listed(out_dir) or [], files)
    if removed:
        log(f"removed {removed} file(s) of an earlier run from {out_dir}: masks of images this "
            "one does not segment")  # fmt: skip
    (out_dir / "vessels.csv").unlink(missing_ok=True)  # written last: marks a finished run
    remove_metrics(out_dir, VESSELS_COMMAND, EARLIER_SCORES, log)


#: The command named in the ``metrics.json`` :func:`segment_vessels_self_trained` writes with
#: ``masks`` (:func:`~localdisc.tasks.predict.metrics_command`: another command's is not
#: replaced).
VESSELS_COMMAND = "shape-guided vessels"
#: Why an earlier call's ``metrics.json`` is removed (``remove_metrics``, once this call has read
#: its inputs): scores of masks this call writes again, or of another folder of true masks.
EARLIER_SCORES = "an earlier call's scores"


def _written_fov(path: Path, max_size: int, fov_mask: Path | None) -> np.ndarray:
    """The FOV an image's masks were written in, at its own size, as :func:`_write_vessels`
    held them: ``fov_mask`` as it is, where given (the user's FOV, not one shrunk to
    ``max_size`` and blown back up, which strays from it by a pixel or two at its rim), else
    the one found in the image once shrunk to ``max_size``, resized back."""
    _, fov, shape = _read_photo(path, max_size, fov_mask)
    if fov.shape == shape:
        return fov
    return resize_mask(fov, shape) if fov_mask is None else read_fov_mask(fov_mask, shape, path)


def score_vessel_files(
    files: Sequence[tuple[str, Path]],
    out_dir: Path,
    targets: Mapping[str, Path],
    *,
    fov_masks: str | Path | None,
    max_size: int,
    threshold: float = 0.5,
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """The scores, by name, of the masks a network of this command wrote in ``out_dir`` of each
    image of ``files`` with a true mask in ``targets`` (name -> its file), as both
    :func:`_score_vessels` and ``predict --masks`` score them, so that the two agree: from the
    files at the image's own size (:func:`~localdisc.tasks.predict.score_prediction`), the
    binary metrics of ``NAME_mask.png`` as written (specks dropped), ``auc`` of
    ``NAME_prob.png``, ``cldice`` (vessels are trees), inside the FOV the masks were written in
    (:func:`_written_fov`: ``fov_masks``' as they are where given, else the one found at the
    network's ``max_size``)."""
    fovs = fov_mask_files([path for _, path in files], fov_masks) if fov_masks else None
    todo = [(i, name, path) for i, (name, path) in enumerate(files) if name in targets]
    scores = {}
    with ProgressBar(len(todo), 0, progress, "score", unit="image") as bar:
        for done, (i, name, path) in enumerate(todo, 1):
            fov = _written_fov(path, max_size, None if fovs is None else fovs[i])
            prob = read_image(out_dir / f"{name}_prob.png")[0][..., 0]
            binary = read_mask(out_dir / f"{name}_mask.png")
            # The FOV is at the image's own size: its shape checks the mask (no decode more).
            truth = sized_mask(targets[name], path, fov.shape)
            scores[name] = score_prediction(prob, truth, fov,
                                            threshold=threshold, topology=True,
                                            binary=binary)  # fmt: skip
            bar.update(done)
    return scores


def _score_vessels(
    files: Sequence[tuple[str, Path]],
    out_dir: Path,
    matched: dict[str, MaskMatch],
    masks: str | Path,
    *,
    fov_masks: str | Path | None,
    max_size: int,
    env: dict[str, Any] | None,
    log: Callable[[str], None],
    progress: bool = False,
) -> dict[str, Any]:
    """Score the masks written in ``out_dir`` of the images with a true mask in ``matched``
    (:func:`~localdisc.tasks.predict.true_masks` of ``masks``), write ``OUT_DIR/metrics.json``
    and log its summary as a table (:func:`~localdisc.tasks.shape_guided.score_table`); returns
    what it holds.

    Each image is scored from its files at its own size, as ``predict --masks`` scores a network
    of this command (:func:`~localdisc.tasks.predict.score_prediction`): the binary metrics of
    ``NAME_mask.png`` as written (specks dropped), ``auc`` of ``NAME_prob.png``, ``cldice``
    (vessels are trees); ``dice`` over the whole image, the others inside the FOV the masks
    were written in (:func:`_written_fov`). ``metrics.json``: ``predict``'s
    (:func:`~localdisc.tasks.predict.write_scores`)."""
    from localdisc.tasks.shape_guided import score_table

    where = str(Path(masks).expanduser().resolve())
    targets = {name: m.mask for name, m in matched.items() if m.mask is not None}
    scores = score_vessel_files(files, out_dir, targets, fov_masks=fov_masks,
                                max_size=max_size, progress=progress)  # fmt: skip
    rows = [{"image": name, **scores[name]} for name, _ in files if name in scores]
    header = {
        "command": VESSELS_COMMAND,
        "masks": where,
        "threshold": 0.5,
        "fov": f"the FOV masks in {absolute_path(str(fov_masks))}" if fov_masks
        else "found in each image",
    }  # fmt: skip
    metrics = write_scores(out_dir, header, rows, files, matched, env, log)
    log(f"scores against {where} (per image in {out_dir / METRICS}):")
    log(score_table({"vessels": metrics["summary"]}))
    return metrics


def _saved_yardstick(settings: Mapping) -> tuple[float, float, float] | None:
    """The :func:`share_yardstick` a network's config holds (networks saved before the range
    was kept: their median alone)."""
    if "vessel_share" not in settings:
        return None
    median = float(settings["vessel_share"])
    low, high = settings.get("vessel_share_range", (median, median))
    return median, float(low), float(high)


def _name_unusual(
    names: Sequence[str],
    shares: Sequence[float],
    taught: Sequence[bool],
    yardstick: Sequence[float] | None,
    log: Callable[[str], None],
) -> list[int]:
    """The indices of the unusual images not taught on (:func:`is_unusual`), named in the log."""
    if not yardstick:
        return []
    median, low, high = yardstick
    odd = [i for i, (x, seen) in enumerate(zip(shares, taught, strict=True))
           if not seen and is_unusual(x, yardstick)]  # fmt: skip
    if odd:
        span = f" ({low / median:.2f}x to {high / median:.2f}x)" if low < high else ""
        log(f"masks to look at, of images unlike those taught on? Their vessel share of the FOV "
            f"is far from the {median:.3f} marked on those{span}: "
            + ", ".join(f"{names[i]} ({shares[i] / median:.2f}x)" for i in odd))  # fmt: skip
    return odd


def _write_share_table(
    out_dir: Path,
    names: Sequence[str],
    shares: Sequence[float],
    taught: Sequence[bool],
    yardstick: Sequence[float] | None,
    strays: Sequence[float],
    usual_stray: float | None,
    retaught: Sequence[bool] | None = None,
) -> None:
    """``out_dir/vessels.csv``, per image: whether the network was taught on it, the share of
    its FOV its mask covers, the ratio of that to the median share on the images taught on, for
    the others whether it is unusual (:func:`is_unusual`: what the log names, kept, to sort a
    large cohort by), whether its mask was then replaced by that of a network taught on the
    unusual images alone (``retaught``; that network's folder lists them again), and how far the
    mask strays from its teacher (``strays``: :func:`teacher_disagreement`), alone and as a ratio
    to ``usual_stray``, its median on the images taught on: masks to look at first."""
    median = yardstick[0] if yardstick else 0.0
    retaught = retaught or [False] * len(names)
    with (out_dir / "vessels.csv").open("w", newline="") as file:
        table = csv.writer(file)
        table.writerow(["image", "taught", "vessel_share", "ratio", "unusual", "retaught",
                        "teacher_disagreement", "disagreement_ratio"])  # fmt: skip
        rows = zip(names, shares, taught, retaught, strays, strict=True)
        for name, x, seen, again, stray in rows:
            ratio = f"{x / median:.3f}" if median > 0 else ""
            odd = str(is_unusual(x, yardstick)).lower() if median > 0 and not seen else ""
            off = f"{stray / usual_stray:.3f}" if usual_stray else ""
            table.writerow([name, str(seen).lower(), f"{x:.5f}", ratio, odd, str(again).lower(),
                            f"{stray:.4f}", off])  # fmt: skip


# Masks the log names as the first to look at, furthest from their teacher, in runs of more.
FIRST_TO_REVIEW = 3


def _name_first_to_review(table: Path, log: Callable[[str], None]) -> list[str]:
    """The :data:`FIRST_TO_REVIEW` images of ``table`` (a ``vessels.csv``) whose masks stray
    furthest from their teacher (:func:`teacher_disagreement`, as a ratio to the median on the
    images taught on where there is one), named in the log: an order to look at masks in, not
    a verdict (it ranks poor masks, Spearman's rho with their Dice -0.57 to -0.72 on cohorts of
    20, ``benchmarks/RESULTS.md``; a student that goes beyond its teacher strays too). Masks
    that mark nothing are said first, apart: each strays the most, 1, so an order of them is
    arbitrary (a network taught for a few steps marks nothing at all: no order then).
    Returns the images it names as the first to look at, those that mark nothing aside."""
    with table.open(newline="") as file:
        rows = list(csv.DictReader(file))
    empty = [row["image"] for row in rows if float(row["vessel_share"]) == 0.0]
    if empty and len(empty) == len(rows):
        log(f"all {len(rows)} mask(s) mark nothing (vessel_share 0 in {table}): no vessel "
            "found in any image; a network taught for too few --steps does that")  # fmt: skip
        return []
    if empty:
        more = f" and {len(empty) - FIRST_TO_REVIEW} more" if len(empty) > FIRST_TO_REVIEW else ""
        log(f"{len(empty)} of {len(rows)} mask(s) mark nothing, to look at first (vessel_share 0 "
            f"in {table}): {', '.join(empty[:FIRST_TO_REVIEW])}{more}")  # fmt: skip
        rows = [row for row in rows if float(row["vessel_share"]) > 0.0]
    if len(rows) <= FIRST_TO_REVIEW:
        return []
    ratio = all(row["disagreement_ratio"] for row in rows)
    key = "disagreement_ratio" if ratio else "teacher_disagreement"
    first = sorted(rows, key=lambda row: -float(row[key]))[:FIRST_TO_REVIEW]
    unit = "x" if ratio else ""
    among = " among those that mark vessels" if empty else ""
    log(f"masks to look at first, furthest from their teacher{among} ({key} in {table}): "
        + ", ".join(f"{row['image']} ({float(row[key]):.2f}{unit})" for row in first))  # fmt: skip
    return [row["image"] for row in first]


def _teach_in_groups(
    files: Sequence[tuple[str, Path]],
    out_dir: Path,
    size: int,
    seed: int,
    run: Callable[[list[tuple[str, Path]], Path], list[Path]],
    log: Callable[[str], None],
) -> list[Path]:
    """``files`` split into seeded groups of at most ``size`` (as even as they go), each given
    to ``run`` (the command on that group alone, its images named as here) in
    ``out_dir/group-K``; their masks are copied into ``out_dir`` and their ``vessels.csv`` rows
    listed together in ``out_dir/vessels.csv``, in the files' order, each with its ``group``.
    Returns the masks' paths in ``out_dir``."""
    order = np.random.default_rng(seed).permutation(len(files))
    groups = [sorted(g.tolist()) for g in np.array_split(order, math.ceil(len(files) / size))]
    log(f"{len(files)} image(s) taught on in {len(groups)} groups of at most {size}, a network "
        f"each: {out_dir}/group-1 ... group-{len(groups)}")  # fmt: skip
    rows: dict[int, dict[str, str]] = {}
    for k, group in enumerate(groups, 1):
        folder = out_dir / f"group-{k}"
        log(f"group {k}/{len(groups)}: {len(group)} image(s) into {folder}")
        run([files[i] for i in group], folder)
        _adopt_masks(files, group, folder, out_dir)
        with (folder / "vessels.csv").open(newline="") as file:
            table = {row["image"]: row for row in csv.DictReader(file)}
        for i in group:
            rows[i] = {**table[files[i][0]], "group": f"group-{k}"}
    with (out_dir / "vessels.csv").open("w", newline="") as file:
        fields = ["image", "group", *(f for f in rows[0] if f not in ("image", "group"))]
        table = csv.DictWriter(file, fieldnames=fields)
        table.writeheader()
        table.writerows(rows[i] for i in range(len(files)))
    return [out_dir / f"{name}_mask.png" for name, _ in files]


def _adopt_masks(
    files: Sequence[tuple[str, Path]], indices: Sequence[int], folder: Path, out_dir: Path
) -> None:
    """Copy the ``prob`` and ``mask`` PNGs a run on ``files[indices]`` alone wrote in ``folder``
    (under the same names, :func:`_self_train`) into ``out_dir``."""
    for i in indices:
        for kind in ("prob", "mask"):
            name = f"{files[i][0]}_{kind}.png"
            shutil.copyfile(folder / name, out_dir / name)


# Images smaller than this (a side, once shrunk to max_size) are refused: the filter's lines
# (15 pixels) and the FOV's 8-pixel erosion leave too little of them to learn from.
MIN_SIDE = 64


def _check_side(path: Path, shape: tuple[int, int], max_size: int) -> tuple[int, int]:
    """``shape``, once :data:`MIN_SIDE` is checked on the image as it will be segmented."""
    scale = min(1.0, max_size / max(shape))
    h, w = (round(n * scale) for n in shape)  # as _read_photo shrinks it
    if min(h, w) < MIN_SIDE:
        shrunk = f" ({w}x{h} once shrunk to max_size {max_size})" if scale < 1 else ""
        raise LocaldiscError(f"{path}: {shape[1]}x{shape[0]} pixels{shrunk} is too small to find "
                             f"vessels in: at least {MIN_SIDE} a side")  # fmt: skip
    return shape


def _check_photo(path: Path, max_size: int, fov_mask: Path | None, erode_fov: int) -> None:
    """Read an image only to refuse it before any training (:func:`_read_photo`): unreadable,
    too small (:func:`_check_side`), with a FOV mask that does not fit, or no FOV left once
    eroded by ``erode_fov`` pixels."""
    _read_photo(path, max_size, fov_mask, erode_fov)


def _read_photo(
    path: Path, max_size: int, fov_mask: Path | None, erode_fov: int = 0
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """A photograph shrunk to ``max_size`` at most, its FOV (read from ``fov_mask``, or found in
    the image) and its own size. A FOV that eroding by ``erode_fov`` pixels (the teacher's, as
    :func:`~localdisc.tasks.vesselness.vesselness` and :func:`teacher_disagreement` erode it)
    leaves empty is refused as the image's :class:`~localdisc.errors.ImageReadError`, which
    ``skip_bad`` skips: the teacher has nothing there to score."""
    image = to_modality_channels(read_image(path)[0], "fundus")
    shape = _check_side(path, image.shape[:2], max_size)
    fov = None if fov_mask is None else read_fov_mask(fov_mask, shape, path)
    scale = max_size / max(shape)
    if scale < 1:
        image = resize_image(image, tuple(max(1, round(n * scale)) for n in shape))
        fov = None if fov is None else resize_mask(fov, image.shape[:2])
    fov = fov_from_image(image) if fov is None else fov
    if not eroded_fov(fov, erode_fov).any():
        where = f"its FOV mask {fov_mask}" if fov_mask is not None else "found in the image"
        size = f" at {image.shape[1]}x{image.shape[0]} pixels" if scale < 1 else ""
        raise ImageReadError(path, f"its field of view ({where}, {int(fov.sum())} pixels{size}) "
                                   f"is empty once its rim of {erode_fov} pixels is dropped: "
                                   "no vessels to find in it")  # fmt: skip
    return image, fov, shape


def _write_vessels(
    model: Segmenter,
    files: Sequence[tuple[str, Path]],
    fov_masks: Sequence[Path] | None,
    out_dir: Path,
    max_size: int,
    speck_area: float,
    teacher: tuple[str, int],
    threshold: float = YARDSTICK_THRESHOLD,
    log: Callable[[str], None] | None = None,
    loaded: Mapping[int, tuple[np.ndarray, np.ndarray, tuple[int, int]]] | None = None,
    scores: Mapping[int, np.ndarray] | None = None,
    progress: bool = False,
    skips: SkippedImages | None = None,
) -> tuple[list[Path], list[float], list[float]]:
    """``NAME_prob.png`` and ``NAME_mask.png`` per image at its own size, one image at a time,
    and the overlays of the first four; returns the masks' paths, their shares of the FOV and
    how far each strays from the ``teacher`` (method, FOV erosion) at the size segmented
    (:func:`teacher_disagreement`). ``loaded`` and ``scores``: :func:`_read_photo`'s results and
    the teacher's scores already at hand, by index in ``files``; ``progress``: a progress bar.
    ``skips``: an image that cannot be read is skipped there (nothing returned for it, and an
    earlier run's masks of it removed) where it allows it, else raised."""
    from localdisc.eval.figures import overlay_figure

    written, shares, strays, overlays = [], [], [], []
    loaded, scores = loaded or {}, scores or {}
    with ProgressBar(len(files), 0, progress, "segment", unit="image") as bar:
        for i, (name, path) in enumerate(files):
            if i in loaded:
                image, fov, shape = loaded[i]
            else:
                mask = None if fov_masks is None else fov_masks[i]
                reader = partial(_read_photo, max_size=max_size, fov_mask=mask,
                                 erode_fov=teacher[1])  # fmt: skip
                # Without skips, an unreadable image's error is raised as it is (count=1).
                read = (skips or SkippedImages(count=1)).read_replacing(
                    name, path, out_dir, files, reader
                )
                if read is None:
                    bar.update(i + 1)
                    continue
                image, fov, shape = read
            prob = student_probability(model, image, fov)  # 0 outside the FOV
            # & fov: at threshold 0 the 0 outside would pass; the mask keeps to the FOV (as below)
            mask = remove_specks((prob >= threshold) & fov, fov, speck_area)
            score = scores.get(i)
            if score is None:
                score = vesselness(image, fov, method=teacher[0], erode_fov=teacher[1])
            strays.append(teacher_disagreement(mask, score, fov, teacher[1]))
            if prob.shape != shape:
                # From the FOV's pixels alone, and 0 outside the FOV it is written in, as at the
                # size segmented (a bilinear resize spreads past its nearest-neighbour one): a
                # FOV mask given at the image's own size as it is (:func:`_written_fov`).
                prob = np.clip(resize_inside(prob, fov, shape), 0, 1)
                given = None if fov_masks is None else fov_masks[i]
                fov = read_fov_mask(given, shape, path) if given else resize_mask(fov, shape)
                prob *= fov
                mask = remove_specks((prob >= threshold) & fov, fov, speck_area)
            write_png(out_dir / f"{name}_prob.png", prob_png(prob))
            written.append(write_png(out_dir / f"{name}_mask.png", mask_png(mask)))
            shares.append(float(mask[fov].mean()) if fov.any() else 0.0)
            if len(overlays) < 4:
                overlays.append((name, image, resize_mask(mask, image.shape[:2]), None))
            if log is not None and ((i + 1) % max(1, len(files) // 5) == 0 or i + 1 == len(files)):
                log(f"segmented {i + 1}/{len(files)} into {out_dir}")
            bar.update(i + 1)
    if skips is not None:
        skips.kept(files)  # refused when none could be read: no figure then
    overlay_figure(overlays, out_dir / "figures" / "overlay.png")
    return written, shares, strays
