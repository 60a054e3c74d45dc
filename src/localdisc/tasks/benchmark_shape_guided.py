"""``localdisc benchmark shape-guided``: segmentation without labels, every prior and baseline in
one run and one table.

Per task the LD model first learns stage 1 on the task's own images (every split, labels unused;
or starts from ``--from``, a pre-training run). Then, per prior and seed, stage 2 runs with the
adversarial prior on cluster 0 (METHOD.md 5) and the test images are segmented three ways:
outputs A and B and the refinement network trained on their pseudo-labels (with a prior that
keeps its pose, the run's maps are first moved sideways by the one shift under which the images'
grey levels are most likely, and the prior votes in the pseudo-labels with its masks that best
match each image). Rows in the same run:

- ``LD + PRIOR (A|B|refined)`` for each prior (OCTA, DSA, another data set's masks, simulated);
  for an organ prior also ``(A + topology)`` and ``(refined + topology)``, the masks held to the
  prior's number of pieces with no holes (:mod:`localdisc.priors.topology`; chosen on the
  generated radiographs: lungs 0.962 -> 0.964, heart 0.914 -> 0.933 refined);
- with several seeds, ``LD + PRIOR (A|refined[ + topology], N seeds together)``: the seeds'
  runs as one ensemble, their probability maps averaged per image (``shape-guided segment`` with
  several ``--model``); one value, not a mean over seeds;
- ``k-means (no prior)``: k-means (K = 8) on the stage-1 model's pixel embeddings, the cluster
  whose area is closest to the prior's expected fraction;
- vessels only, each filter (``sato``, ``frangi``, ``line``: :mod:`localdisc.tasks.vesselness`;
  ``sato+line``, their mean rank; and the student's teacher) at each prior's expected fraction
  and, but for mean ranks, with Otsu's threshold; at each fraction also ``..., specks
  removed``: the mask's pieces below ``--speck-area`` of the FOV dropped
  (:func:`~localdisc.tasks.vesselness.remove_specks`: vessels form a tree);
- vessels only, ``TEACHER-taught network`` (:mod:`localdisc.tasks.self_training`): a U-Net
  trained on the test images' pseudo-labels from the teacher filter (``--student-teacher``) at
  the simulated prior's fraction (transductive, as the refinement; the teacher's sure specks
  left silent): its probability at 0.5, the same with its specks removed, and ``TEACHER +
  TEACHER-taught network (mean rank)``, both ranks averaged and thresholded at that fraction;
  one per seed; and the same three for ``TEACHER-taught network, trees painted``, also taught
  by ``--student-painted`` copies of each image with a simulated vessel tree painted on, the
  trees' masks their labels (:func:`~localdisc.data.synthetic.paint_vessels`: the simulated
  prior's shapes, which no filter can use), the vessel share they add taken out of its head
  (:func:`~localdisc.tasks.self_training.label_shift`);
- organs only, ``mean shape of PRIOR (no image)``: the prior's average mask thresholded at its
  expected fraction, the same mask for every image: what the prior alone knows.

No label of the target data set is used to train or to choose anything: hyper-parameters are the
published ones (K = 8, weight 1, discriminator lr 5e-5) unless given; other choices are made on the
generated tasks (``synthetic_fundus``, ``synthetic_xray`` for lungs, ``synthetic_heart``, and their
harder ``synthetic_xray_hard`` and ``synthetic_heart_hard``), whose masks are exact, or, for the
vessel filters and their network, on STARE (another data set). The filters and k-means get the same
prior knowledge LD's prior carries (its expected foreground fraction; the filters also that vessels
are connected). Runs are kept under ``OUT/runs`` and reused, so an interrupted benchmark continues;
a refinement from its checkpoint in ``RUN/eval/refine-checkpoint``, as ``shape-guided segment``'s.
Each evaluation keeps the environment it was made in: ``results.md`` names the commits of rows
an earlier call made. An LD run's evaluation is keyed by a SHA-256 of its weights (weights
replaced in the run's folder are evaluated again) and records one of each map it wrote; the
seeds-together rows are keyed by those of the maps they average, read from that record where the
maps were deleted since (a cleaned ``RUN/eval`` keeps them reused; averaging them again needs the
maps, and says which are missing).
A seed whose pre-training diverges (stage 1, or stage 2 with a prior) is left out of its rows,
listed under Skipped (those cells say ``(n=K)``), and the other seeds go on.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from localdisc.data.datasets import Sample, SegmentationDataset, dataset_class, load_data_spec
from localdisc.data.io import write_png
from localdisc.engine.checkpoint import atomic_write_text, sha256
from localdisc.errors import DatasetError, DivergedError, LocaldiscError
from localdisc.eval.metrics import summarize
from localdisc.eval.report import jsonable
from localdisc.models.ld import LDModel
from localdisc.priors.topology import PriorTopology, enforce_topology, measure_topology
from localdisc.tasks.predict import mask_png, prob_png
from localdisc.tasks.presets import (
    pretrain_preset,
    refuse_device,
    unless_diverged,
    weights_sha256,
)
from localdisc.tasks.vesselness import FILTERS, check_method, threshold_vessels, vesselness

VESSEL_PRIORS = ("octa", "dsa", "other", "simulated")


@dataclass(frozen=True)
class ShapeTask:
    """A target to segment without labels and the priors that fit it."""

    dataset: str
    folder: str | None  # under the data root; None: generated images
    target: str
    modality: str
    simulator: str  # the simulated prior
    priors: tuple[str, ...]
    other: str | None = None  # the data set whose masks are the "other" prior

    @property
    def tubular(self) -> bool:
        return self.target == "vessels"


TASKS: dict[str, ShapeTask] = {
    "drive": ShapeTask("drive", "DRIVE", "vessels", "fundus", "vessels", VESSEL_PRIORS, "stare"),
    "stare": ShapeTask("stare", "STARE", "vessels", "fundus", "vessels", VESSEL_PRIORS, "drive"),
    "chase_db1": ShapeTask(
        "chase_db1", "CHASE_DB1", "vessels", "fundus", "vessels", VESSEL_PRIORS, "drive"
    ),
    "scr_lung": ShapeTask("jsrt_scr", ".", "lung", "xray", "lungs", ("simulated",)),
    "scr_heart": ShapeTask("jsrt_scr", ".", "heart", "xray", "heart", ("simulated",)),
    "synthetic_fundus": ShapeTask(
        "synthetic_fundus", None, "vessels", "fundus", "vessels", ("simulated",)
    ),
    # Generated radiographs with exact lung and heart masks: where the organ settings can be
    # tuned without any JSRT/SCR label.
    "synthetic_xray": ShapeTask("synthetic_xray", None, "lung", "xray", "lungs", ("simulated",)),
    "synthetic_heart": ShapeTask("synthetic_xray", None, "heart", "xray", "heart", ("simulated",)),
    # The same closer to real films, with organs out of the prior's pose: a harder proxy.
    "synthetic_xray_hard": ShapeTask(
        "synthetic_xray_hard", None, "lung", "xray", "lungs", ("simulated",)
    ),
    "synthetic_heart_hard": ShapeTask(
        "synthetic_xray_hard", None, "heart", "xray", "heart", ("simulated",)
    ),
}
DATA_FOLDERS = {"drive": "DRIVE", "stare": "STARE", "chase_db1": "CHASE_DB1"}


#: Each mode's settings, taken where a :class:`ShapeBenchmarkConfig` leaves them ``None``
#: (:func:`preset`). ``pool_size`` ``None``: size x 8/7, as pre-training (``--quick`` reads its
#: 48-pixel crops from 64-pixel images, a ``size`` of one's own as pre-training would);
#: ``max_test`` ``None``: every test image.
RUN_DEFAULTS: dict[str, dict[str, int | None]] = {
    "full": {
        "size": 448, "pool_size": None, "eval_size": 512, "stage1_steps": 2_000,
        "stage2_steps": 4_000, "batch": 4, "refine_steps": 600, "student_steps": 1200,
        "max_test": None,
    },
    "quick": {
        "size": 48, "pool_size": 64, "eval_size": 64, "stage1_steps": 3, "stage2_steps": 3,
        "batch": 1, "refine_steps": 2, "student_steps": 2, "max_test": 2,
    },
}  # fmt: skip


@dataclass
class ShapeBenchmarkConfig:
    """What to run; ``quick`` is a preset applied by :func:`preset`: settings left ``None`` take
    the mode's defaults (:data:`RUN_DEFAULTS`), given ones stay."""

    tasks: list[str] | None = None  # None: drive, stare, scr_lung, scr_heart (quick: synthetic)
    priors: list[str] | None = None  # None: every prior a task has
    seeds: int = 1
    data_root: str | None = None
    init: str | None = None  # a pre-training run to start stage 2 from (skips stage 1)
    size: int | None = None  # training crop
    pool_size: int | None = None  # None: size * 8/7, as pre-training (--quick: 64, see above)
    eval_size: int | None = None  # the paper's Dice at 512 x 512
    stage1_steps: int | None = None
    stage2_steps: int | None = None
    stage1_seconds: float | None = None
    stage2_seconds: float | None = None
    batch: int | None = None
    refine_steps: int | None = None
    # The side the refinement network sees; None: the LD run's pool size, as `shape-guided
    # segment`: the context LD saw, at a fraction of the cost of 512 (where a 3-block network
    # lost the JSRT heart: RESULTS.md).
    refine_size: int | None = None
    student_steps: int | None = None  # the filter-taught network (vessels; 0: no such rows)
    student_teacher: str = "line"  # its filter: a vesselness method, or several joined by "+"
    # A second such network also taught by this many copies of each image with simulated trees
    # painted on (0: no such rows).
    student_painted: int = 2
    # Vessels: "..., specks removed" rows drop the pieces of a filter's mask at a prior's fraction
    # or of the network's below this share of the FOV (0: no such rows; chosen on STARE).
    speck_area: float = 6e-4
    kmeans_clusters: int = 8
    max_test: int | None = None
    device: str = "auto"
    quick: bool = False
    pretrain: dict[str, Any] = field(default_factory=dict)  # extra PretrainConfig fields


def preset(config: ShapeBenchmarkConfig) -> ShapeBenchmarkConfig:
    """Apply ``--quick`` over the defaults (explicit choices stay; it runs on the CPU, so another
    ``--device`` is refused)."""
    refuse_device(config.quick, False, config.device)
    defaults = dict(RUN_DEFAULTS["quick" if config.quick else "full"])
    if config.size is not None:  # a crop of one's own: its pool as pre-training's
        defaults["pool_size"] = None
    given = {
        name: value if getattr(config, name) is None else getattr(config, name)
        for name, value in defaults.items()
    }
    if config.quick:
        return replace(
            config, tasks=config.tasks or ["synthetic_fundus"], device="cpu",
            pretrain={"val_images": 1, "workers": 1, "prior_count": 8, **config.pretrain},
            **given,
        )  # fmt: skip
    return replace(
        config, tasks=config.tasks or ["drive", "stare", "scr_lung", "scr_heart"], **given
    )


def prior_spec(name: str, task: ShapeTask, data_root: Path | None) -> str:
    """The ``--prior`` of a prior name for ``task`` (data-root relative for the real ones)."""
    if name == "simulated":
        return f"simulated:{task.simulator}"
    if data_root is None:
        raise LocaldiscError("no data root: pass --data-root or set LOCALDISC_DATA")
    if name in ("octa", "dsa"):
        return str(data_root / "priors" / f"{name}_vessels")
    if name == "other" and task.other:
        return f"{task.other}:{data_root / DATA_FOLDERS[task.other]}:{task.target}"
    raise LocaldiscError(f"no prior {name!r} for {task.dataset} {task.target}")


def prior_label(name: str, task: ShapeTask) -> str:
    return task.other if name == "other" else name


def expected_fraction(bank: torch.Tensor, tubular: bool, spec: str = "") -> float:
    """The foreground fraction a prior implies: of each mask's convex hull for trees (vessel
    masks come without their field of view), of the whole image for organs. Callers load the
    bank at 128 px: the simulated trees' thinnest vessels keep a width in pixels, so their
    fraction falls with the size (32 masks: 0.150 at 128, 0.142 at 256, 0.120 at 565;
    benchmarks/RESULTS.md); masks of a folder keep theirs.

    Raises:
        DatasetError: a tree prior (``spec``) whose masks are mostly foreground: vessels drawn
            dark on white were taken for 95 % of the FOV, the filters thresholded there.
    """
    from skimage.morphology import convex_hull_image

    from localdisc.tasks.vesselness import prior_fraction

    share = float(bank.float().mean((1, 2, 3)).median())
    if tubular and share > 0.5:
        raise DatasetError(
            f"shape prior {spec!r}: its masks are {share:.0%} foreground (median), no vessel "
            "tree: drawn dark on white? Vessels must be non-zero, or bright on a black background"
        )
    masks = list(bank[:, 0].bool().numpy())
    return prior_fraction(masks, [convex_hull_image(m) for m in masks] if tubular else None)


def _test_set(spec: str) -> SegmentationDataset:
    name = spec.partition(":")[0]
    return load_data_spec(spec, "test" if "test" in dataset_class(name).splits else None)


def _spec(task: ShapeTask, data_root: Path | None, quick: bool) -> str:
    if task.folder is None:
        return f"{task.dataset}:{4 if quick else 20}"
    if data_root is None:
        raise LocaldiscError("no data root: pass --data-root or set LOCALDISC_DATA")
    return f"{task.dataset}:{data_root / task.folder}"


def run_shape_benchmark(
    config: ShapeBenchmarkConfig, out_dir: str | Path, *, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run every task, prior, seed and baseline; write ``results.json`` and ``results.md``."""
    from localdisc.eval.provenance import environment
    from localdisc.eval.report import write_report

    config = preset(config)
    out_dir = Path(out_dir)
    env = environment(config.device, amp=True)  # at the start, before any training
    unknown = [t for t in config.tasks or [] if t not in TASKS]
    if unknown:
        raise LocaldiscError(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
    # A task leaves out the priors that do not fit it: a misspelt one would leave out all.
    known = list(dict.fromkeys(p for task in TASKS.values() for p in task.priors))
    unknown = [p for p in config.priors or [] if p not in known]
    if unknown:
        raise LocaldiscError(f"unknown prior(s) {', '.join(unknown)}; known: {', '.join(known)}")
    try:
        check_method(config.student_teacher)
    except ValueError as exc:
        raise LocaldiscError(f"--student-teacher: {exc}") from None
    if config.student_painted < 0:
        raise LocaldiscError(
            f"--student-painted is a count of copies, not {config.student_painted}"
        )
    if not 0.0 <= config.speck_area < 1.0:
        raise LocaldiscError(
            f"--speck-area is a share of the FOV in [0, 1), not {config.speck_area}"
        )
    # A negative count used to give rows of networks that never trained; no seed, no LD rows.
    # --max-test -1 dropped the last image, 0 stopped after the pre-training, and
    # --refine-size 0 was taken for the default while results.json said 0. Every LD row trains
    # a prior in stage 2, which needs steps (--stage2-seconds only cuts them short): 0 was
    # refused by that training, after stage 1.
    for option, value, least in (("--refine-steps", config.refine_steps, 0),
                                 ("--student-steps", config.student_steps, 0),
                                 ("--seeds", config.seeds, 1),
                                 ("--max-test", config.max_test, 1),
                                 ("--refine-size", config.refine_size, 16),
                                 ("--stage1-steps", config.stage1_steps, 0),
                                 ("--stage2-steps", config.stage2_steps, 1)):  # fmt: skip
        if value is None:
            continue
        if value < least:
            raise LocaldiscError(f"{option} must be at least {least}, not {value}")
    # Stage 2's were refused only by its first training, after stage 1 (NaN, 0, inf).
    for option, budget in (("--stage1-seconds", config.stage1_seconds),
                           ("--stage2-seconds", config.stage2_seconds)):  # fmt: skip
        if budget is not None and not 0 < budget < math.inf:
            raise LocaldiscError(f"{option} must be > 0 seconds and finite, not {budget}")
    data_root = Path(config.data_root).expanduser() if config.data_root else None
    runs: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    planned: list[tuple[str, ShapeTask, str, SegmentationDataset]] = []
    for name in config.tasks or []:
        task = TASKS[name]
        try:
            spec = _spec(task, data_root, config.quick)
            test = _test_set(spec)
            if task.target not in test.targets:  # e.g. DRIVE's public test split, no tracings
                why = test.missing_labels.get(task.target, f"available: {test.targets}")
                raise DatasetError(f"{spec}: no {task.target} masks to score with ({why})")
        except LocaldiscError as exc:
            log(f"skipped {name}: {exc}")
            skipped.append({"task": name, "init": "all", "reason": str(exc)})
            continue
        note = test.incomplete_note()
        if note is not None:
            log(f"note: {note}")
        planned.append((name, task, spec, test))
    if config.init is not None:  # against every task, before the first one's training
        _check_from(config, planned)
    for name, task, spec, test in planned:
        runs += _run_task(config, name, task, spec, test, data_root, out_dir, skipped, env, log)
    results = {"config": asdict(config), "environment": env, "runs": runs, "skipped": skipped}
    refine_at = config.refine_size or "the LD run's pool size"
    intro = [
        "Segmentation without any label of the target data set. Rows: LD with each shape prior "
        "(outputs A, B and refined; for organs also A and refined held to the prior's number of "
        "pieces, with no holes), k-means on LD embeddings without a prior, and vesselness "
        "filters given the prior's expected fraction or Otsu's threshold and a network taught "
        f"by {config.student_teacher} on the test images (vessels), or the prior's mean shape, "
        "which does not look at the image (organs).",
        f"Seeds: {config.seeds}; {_stages(config)} at {config.size}; refinement "
        f"{config.refine_steps} steps at {refine_at}. "
        "Cells: mean +- population std (ddof 0) over seeds of the mean over test images (the "
        "value alone for one seed).",
    ]
    write_report(results, out_dir, title="Shape-guided segmentation benchmark", intro=intro,
                 row_header="method")  # fmt: skip
    return results


def _stages(config: ShapeBenchmarkConfig) -> str:
    """What the report's intro says of stage 1 and 2: steps, or a time budget, or the given run."""

    def length(steps: int, seconds: float | None) -> str:
        return f"{steps} steps" if seconds is None else f"{seconds:g} s (at most {steps} steps)"

    stage1 = length(config.stage1_steps, config.stage1_seconds)
    stage1 = f"stage 1 {stage1}" if config.init is None else f"stage 1 from {config.init}"
    return f"{stage1}, stage 2 {length(config.stage2_steps, config.stage2_seconds)}"


def _check_from(
    config: ShapeBenchmarkConfig, planned: list[tuple[str, ShapeTask, str, SegmentationDataset]]
) -> None:
    """Refuse ``--from`` where a task to run cannot start from it (a peer method's run; another
    modality, width, depth ...: what pretrain's ``init_from`` refuses), before any training:
    pretrain said it only when that task's stage 2 began, after the whole of the tasks before
    it."""
    from localdisc.engine.pretrain import PretrainConfig
    from localdisc.models.ld import BACKBONE_FIELDS, LDConfig, refuse_peer_run

    saved = LDConfig.from_run(config.init)  # first: a mistyped path is "no such folder"
    refuse_peer_run(config.init)
    for name, task, spec, _ in planned:
        given = PretrainConfig(**_settings(config, task, spec, seed=0))
        mismatch = [k for k in BACKBONE_FIELDS if getattr(saved, k) != getattr(given, k)]
        if mismatch:
            raise LocaldiscError(
                f"--from {config.init}: task {name} cannot start from this run: its "
                + ", ".join(f"{k} is {getattr(saved, k)!r}, not {getattr(given, k)!r}"
                            for k in mismatch)
            )  # fmt: skip


def _settings(config: ShapeBenchmarkConfig, task: ShapeTask, spec: str, seed: int) -> dict:
    return {
        "data": [spec], "modality": task.modality, "size": config.size,
        "pool_size": config.pool_size, "batch": config.batch, "clusters": 8, "seed": seed,
        "stage1_steps": config.stage1_steps, "stage2_steps": config.stage2_steps,
        "stage1_seconds": config.stage1_seconds, "stage2_seconds": config.stage2_seconds,
        "device": config.device, "progress": not config.quick, **config.pretrain,
    }  # fmt: skip


def _run_task(
    config: ShapeBenchmarkConfig,
    name: str,
    task: ShapeTask,
    spec: str,
    test: SegmentationDataset,
    data_root: Path | None,
    out_dir: Path,
    skipped: list[dict[str, Any]],
    env: dict[str, Any],
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """One task's rows (``env``: the benchmark's :func:`~localdisc.eval.provenance.environment`,
    kept with each evaluation computed now; a reused one's rows keep the one they were made in)."""
    from localdisc.priors import load_prior
    from localdisc.tasks.shape_guided import run_size

    indices = list(range(len(test)))[: config.max_test]
    samples = [test[i] for i in indices]
    target = task.target
    task_dir = out_dir / "runs" / name
    priors: dict[str, tuple[str, float, torch.Tensor]] = {}
    asked = config.priors or task.priors
    if not any(prior in task.priors for prior in asked):  # said, not an empty column
        reason = f"no prior of {', '.join(asked)} fits it; its priors: {', '.join(task.priors)}"
        log(f"skipped {name}: {reason}")
        skipped.append({"task": name, "init": "all", "reason": reason})
        return []
    for prior in asked:
        if prior not in task.priors:
            continue
        try:
            prior_path = prior_spec(prior, task, data_root)
            bank = load_prior(prior_path, 128, count=32, seed=0)
            fraction = expected_fraction(bank, task.tubular, spec=prior_path)
        except LocaldiscError as exc:
            log(f"skipped prior {prior} for {name}: {exc}")
            skipped.append({"task": name, "init": prior, "reason": str(exc)})
            continue
        priors[prior_label(prior, task)] = (prior_path, fraction, bank)
    if not priors:
        return []
    runs: list[dict[str, Any]] = []

    def record(
        method: str, seed: int, per_image: list[dict[str, Any]], made: dict[str, Any] | None
    ) -> None:
        # "environment": where the rows were computed (an earlier call's for reused ones), which
        # results.md names where it is not this call's (report.runs_made_at); none in an
        # evaluation cached before it was kept.
        summary = summarize([{k: v for k, v in r.items() if k != "image"} for r in per_image])
        metrics = {"target": target, "summary": summary, "per_image": per_image}
        runs.append({
            "task": name, "init": method, "labels": "no labels", "seed": seed,
            "run_dir": str(task_dir / _slug(method) / f"seed-{seed}"),
            "metrics": {**metrics, **({"environment": made} if made else {})},
        })  # fmt: skip

    # The fraction k-means and the filter-taught network are given.
    fraction_from = "simulated" if "simulated" in priors else next(iter(priors))
    fraction = priors[fraction_from][1]
    # An organ prior's pieces and holes (None for trees): the "+ topology" rows.
    topologies = {label: measure_topology(bank) for label, (_, _, bank) in priors.items()}
    topologies = {label: t if t.solid else None for label, t in topologies.items()}

    def refinement(topology: PriorTopology | None) -> dict[str, Any]:
        # "prob_png": the evaluation writes the outputs' maps, which the seeds' ensemble reads.
        # "prior_vote": the pseudo-labels count a kept-pose prior's masks that best match each
        # image, fused onto it, and their intensity posterior ("atlases"; "atlas" was the
        # frequency moved onto the image, True the frequency as it is). "sideways": such a
        # run's maps are first moved by the shift the images' grey levels find most likely.
        # The topology as recorded before PriorTopology.thin (always False for an organ), and
        # "pieces": evaluations held to 4-connected pieces (before it) are not reused.
        held = topology and {"components": topology.components, "holes": topology.holes,
                             "pieces": "8-connected"}  # fmt: skip
        # "seen": LD and the refinement see a fundus image's ROI box (de2f536, 11adf92);
        # "prob_bits": the maps the seeds' ensemble averages are 16-bit PNGs (4331463).
        return {**_eval_settings(config, samples, "refine_steps", "refine_size"),
                "topology": held, "prob_png": True,
                "prior_vote": "atlases", "sideways": "likelihood", "seen": "roi_box",
                "prob_bits": 16}  # fmt: skip

    # A pre-training that diverges leaves its seed's rows out, listed, and the others go on.
    diverged: list[tuple[dict[str, Any], Callable[[str], bool]]] = []

    def skip(seed: int, what: str, reason: object, fills: Callable[[str], bool]) -> None:
        log(f"skipped {name} {what}, seed {seed}: {reason}")
        entry = {"task": name, "init": what, "labels": "no labels", "seed": seed,
                 "reason": str(reason)}  # fmt: skip
        skipped.append(entry)
        diverged.append((entry, fills))

    def per_seed(row: str) -> bool:  # a row of one seed's run, not of the seeds together
        return "seeds together)" not in row

    def skip_rows(seed: int, what: str, reason: object, prefix: str) -> None:
        # The rows of that seed's run whose name starts with prefix (value bound now).
        skip(seed, what, reason, lambda row: per_seed(row) and row.startswith(prefix))

    ensembles: dict[str, list[Path]] = {}  # per prior: the seeds with A maps
    written: dict[Path, dict[str, str]] = {}  # per run: its evaluation's maps' SHA-256
    refined: dict[str, list[Path]] = {}  # and those with refined maps
    for seed in range(config.seeds):
        stage1 = config.init
        if stage1 is None:
            settings = {**_settings(config, task, spec, seed), "stage2_steps": 0}
            settings.pop("stage2_seconds")
            try:
                stage1 = str(pretrain_preset(settings, task_dir / f"stage1-seed-{seed}", log))
            except DivergedError as exc:  # no k-means and no prior's run for this seed
                skip(seed, "LD stage 1", exc, lambda row: per_seed(row) and (
                    row == "k-means (no prior)" or row.startswith("LD + ")))  # fmt: skip
                continue
        base = LDModel.from_pretrained(stage1, device=_device(config.device))
        # Its cluster is the one nearest the fraction, which comes from the priors asked for
        # (simulated, else the first): a rerun with other --priors or --from recomputes.
        # Its weights too: a stage 1 made again under its path kept the old k-means rows.
        kmeans = {**_eval_settings(config, samples, "kmeans_clusters"), "fraction": fraction,
                  "stage1": stage1, "stage1_sha256": weights_sha256(stage1),
                  "seen": "roi_box"}  # fmt: skip
        rows, made = _cached(task_dir / "kmeans" / f"seed-{seed}", kmeans, env, _kmeans_rows,
                             base, samples, target, config, fraction, seed,
                             run_size(stage1))  # fmt: skip
        record("k-means (no prior)", seed, rows, made)
        for label, (prior_path, _, _) in priors.items():
            settings = {
                **_settings(config, task, spec, seed), "stage1_steps": 0, "prior": prior_path,
                "init_from": stage1,
            }  # fmt: skip
            try:
                run_dir = pretrain_preset(settings, task_dir / f"ld-{label}" / f"seed-{seed}", log)
            except DivergedError as exc:
                skip_rows(seed, f"LD + {label}", exc, f"LD + {label} (")
                continue
            topology = topologies[label]
            # Its weights: a model.safetensors replaced in the run's folder (a checkpoint copied
            # over it) kept the old weights' evaluation.
            key = {**refinement(topology), **_prior_bank_key(run_dir),
                   "weights_sha256": weights_sha256(run_dir)}  # fmt: skip
            try:
                outputs, made = _cached(run_dir / "eval", key, env, _ld_evaluation, run_dir,
                                        samples, target, config, topology, log)  # fmt: skip
            except DivergedError as exc:  # the refinement's, recorded before A and B were kept
                skip_rows(seed, f"LD + {label} refinement", exc, f"LD + {label} (")
                continue
            diverged_refinement = outputs.pop(REFINEMENT_DIVERGED, None)  # saved already
            written[run_dir] = outputs.pop(MAPS_WRITTEN, {})  # none in one cached before
            for output, per_image in outputs.items():
                record(f"LD + {label} ({output})", seed, per_image, made)
            ensembles.setdefault(label, []).append(run_dir)
            if diverged_refinement:  # A and B stand; no refined maps for the ensemble
                skip_rows(seed, f"LD + {label} refinement", diverged_refinement,
                          f"LD + {label} (refined")  # fmt: skip
            elif config.refine_steps:
                refined.setdefault(label, []).append(run_dir)
    both = ("A", "refined") if config.refine_steps else ("A",)
    for label, with_a in ensembles.items():
        # One evaluation of both outputs where the same seeds have them (as always before), else
        # one each, in its own folder.
        with_refined = refined.get(label, [])
        groups = {both: with_a}
        if config.refine_steps and with_refined != with_a:
            groups = {("A",): with_a, ("refined",): with_refined}
        topology = topologies[label]
        for outputs_of, run_dirs in groups.items():
            if len(run_dirs) < 2:  # one seed (asked, or the others diverged): no ensemble
                continue
            settings = {**refinement(topology), "seeds": len(run_dirs)}
            if len(run_dirs) < config.seeds:  # which ones, as the diverged seeds may change
                settings["seed_dirs"] = [d.name for d in run_dirs]
            banks = [_prior_bank_key(d) for d in run_dirs]
            if any(banks):  # the seeds' maps, which it averages, are the banks' too
                settings["prior_banks"] = banks
            if topology is not None:  # mean maps exactly at 0.5 (2 seeds) are in the mask
                settings["topology_mask"] = ">= 0.5"
            # The maps it averages: a seed's run made again (a stage 1 made again: "delete the
            # folder"), or refined again, kept the old maps' mean. Maps deleted since their
            # evaluation (a cleaned RUN/eval) are known by its record: the rows stay reused.
            settings["maps_sha256"] = _maps_sha256(run_dirs, outputs_of, samples, written)
            folder = "ensemble" if outputs_of == both else f"ensemble-{outputs_of[0]}"
            outputs, made = _cached(task_dir / f"ld-{label}" / folder, settings, env,
                                    _ensemble_rows, run_dirs, outputs_of, samples, target,
                                    config, topology)  # fmt: skip
            for output, per_image in outputs.items():
                row = f"LD + {label} ({output}, {len(run_dirs)} seeds together)"
                record(row, 0, per_image, made)
    if task.tubular:  # deterministic: one "seed"
        thresholds = {f"{label} fraction ({f:.3f})": f for label, (_, f, _) in priors.items()}

        @functools.cache  # a filter once per image for all its rows, when one is not cached
        def scores(method: str) -> list[np.ndarray]:
            return [vesselness(s.image, s.fov, method=method) for s in samples]

        # Every filter, Sato and the line detector joined (the best on DRIVE: RESULTS.md) and
        # the student's teacher: the bar. A mean rank is uniform: Otsu cuts it in half.
        # Vessels form a tree: the same rows without specks, where the network has such a row.
        specks = (0.0, config.speck_area) if config.speck_area else (0.0,)
        for method in dict.fromkeys([*FILTERS, "sato+line", config.student_teacher]):
            otsu = {} if "+" in method else {"Otsu": None}
            for label, value in {**thresholds, **otsu}.items():
                for area in specks if value is not None else (0.0,):
                    row = f"{method} @ {label}" + (", specks removed" if area else "")
                    # "calibrate": scaled below the threshold (58790f0), not shifted and clipped
                    settings = {**_eval_settings(config, samples), "speck_area": area,
                                "calibrate": "scaled"}  # fmt: skip
                    rows, made = _cached(task_dir / _slug(row), settings, env, _filter_rows,
                                         samples, target, scores, method, value, area,
                                         config)  # fmt: skip
                    record(row, 0, rows, made)
        students = [(0, seed) for seed in range(config.seeds if config.student_steps else 0)]
        if config.student_painted:
            students += [(config.student_painted, seed) for _, seed in students]
        for painted, seed in students:
            student = _student_config(config, seed, painted)  # its pseudo-labels' settings too
            # Not its device: `--device cpu` and `auto` on a CPU trained every student again.
            taught = {k: v for k, v in asdict(student).items() if k != "device"}
            settings = {**_eval_settings(config, samples, "speck_area"), "fraction": fraction,
                        "student": taught, "calibrate": "scaled"}  # fmt: skip
            suffix = f"-painted-{painted}" if painted else ""
            folder = task_dir / _slug(f"{config.student_teacher}-student{suffix}") / f"seed-{seed}"
            at = f" @ {fraction_from} fraction ({fraction:.3f})"
            try:
                rows, made = _cached(folder, settings, env, _student_rows, samples, target,
                                     scores, fraction, config, student, log)  # fmt: skip
            except DivergedError as exc:
                names = _student_outputs(student)
                skip(seed, names[0], exc, {f"{row}{at}" for row in names}.__contains__)
                continue
            for output, per_image in rows.items():
                record(f"{output}{at}", seed, per_image, made)
    else:  # what the prior alone gives: its mean shape, the same on every image
        for label, (_, f, bank) in priors.items():
            rows, made = _cached(task_dir / _slug(f"mean-shape-{label}"),
                                 _eval_settings(config, samples), env, _mean_shape_rows, samples,
                                 target, bank, f, config)  # fmt: skip
            record(f"mean shape of {label} (no image)", 0, rows, made)
    # The rows a diverged seed would have filled: their cells say (n=K) (report.collect).
    for entry, fills in diverged:
        entry["rows"] = sorted({run["init"] for run in runs if fills(run["init"])})
    return runs


def _device(device: str) -> str:
    from localdisc.engine.distributed import resolve_device

    return str(resolve_device(device))


def _slug(method: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in method).strip("_")


def _prior_bank_key(run_dir: Path) -> dict[str, Any]:
    """What a run's pseudo-labels depend on beyond :func:`_run_task`'s ``refinement`` key: the
    masks a kept-pose simulated prior votes with (:func:`~localdisc.tasks.shape_guided.
    run_prior_bank`), when they are not the 200 from seed 0 that every run voted with before
    segmentation took the run's own ({} then: evaluations cached before stay valid)."""
    from localdisc.priors.sources import is_simulated
    from localdisc.tasks.shape_guided import pretrain_settings, run_prior_bank

    config = pretrain_settings(run_dir)
    prior = config.get("prior")
    if config.get("prior_pose") != "kept" or not prior or not is_simulated(prior):
        return {}
    bank = run_prior_bank(run_dir)
    return {} if bank == {"count": 200, "seed": 0} else {"prior_bank": bank}


def _eval_settings(
    config: ShapeBenchmarkConfig, samples: Sequence[Sample], *fields: str
) -> dict[str, Any]:
    """What an evaluation's numbers depend on beyond its run: a cache key. The test images by
    name: a data set completed after a run (a partial download) was scored on the old ones."""
    return {
        **{f: getattr(config, f) for f in ("eval_size", "max_test", *fields)},
        "test_images": [s.name for s in samples],
    }


def _cached(
    folder: Path,
    settings: dict[str, Any],
    env: dict[str, Any],
    compute: Callable[..., Any],
    *args: Any,
) -> tuple[Any, dict[str, Any] | None]:
    """``compute(*args)`` and the environment it was made in: saved as ``folder/per_image.json``
    with ``settings`` and ``env`` (the benchmark's), and reused while the settings are the same
    (a rerun with another refinement or test set recomputes), with the environment saved then
    (``None`` in a file of before it was kept): a resumed benchmark's report names the commits
    of the rows it reused. One whose training diverges (a filter-taught network; a refinement,
    recorded so before :func:`_ld_rows` kept outputs A and B) is remembered the same way
    (:func:`~localdisc.tasks.presets.unless_diverged`, keyed by ``settings``): a rerun raises it
    again at once, without training to the same end."""
    path = folder / "per_image.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if isinstance(saved, dict) and saved.get("settings") == jsonable(settings):
            return saved["rows"], saved.get("environment")
    result = unless_diverged(folder, lambda: compute(*args), key=jsonable(settings))
    saved = {"settings": settings, "rows": result, "environment": env}
    atomic_write_text(path, json.dumps(jsonable(saved), indent=1))
    return result, env


def _eval_map(run_dir: Path, name: str, output: str) -> Path:
    """A seed's probability map of image ``name``, ``output`` (A, B, refined), as :func:`_ld_rows`
    writes it: what :func:`_ensemble_rows` averages and :func:`_maps_sha256` hashes."""
    return run_dir / "eval" / f"{name}_{output}_prob.png"


def _maps_sha256(
    run_dirs: Sequence[Path],
    outputs: Sequence[str],
    samples: Sequence[Sample],
    written: dict[Path, dict[str, str]],
) -> list[str]:
    """Per run, a SHA-256 of the probability maps :func:`_ensemble_rows` averages (``outputs``
    of ``samples``, as :func:`_ld_rows` wrote them): part of the ensemble's cache key, so that a
    seed whose maps changed (its run made again, or refined again) is averaged again. A map
    deleted since counts by the SHA-256 its evaluation recorded (``written``, per run:
    :data:`MAPS_WRITTEN`), so the ensemble's rows stay reused: the key it had while the map was
    there. One missing and not recorded counts as missing (for :func:`_ensemble_rows` to name
    it)."""
    digests = []
    for run_dir in run_dirs:
        recorded = written.get(run_dir, {})
        h = hashlib.sha256()
        for output in outputs:
            for s in samples:
                path = _eval_map(run_dir, s.name, output)
                digest = sha256(path) if path.is_file() else recorded.get(path.name, "(missing)")
                h.update(f"{path.name}\0{digest}\n".encode())
        digests.append(h.hexdigest())
    return digests


def _metrics(prob: np.ndarray, sample: Any, target: str, size: int) -> dict[str, Any]:
    from localdisc.tasks.transfer import image_metrics

    return {"image": sample.name, **image_metrics(prob, sample, target, size)}


#: The key of :func:`_ld_rows`' result that holds why its refinement diverged (no refined rows).
REFINEMENT_DIVERGED = "refinement diverged"
#: The key of :func:`_ld_evaluation`'s result that holds the SHA-256 of each map it wrote.
MAPS_WRITTEN = "maps sha256"
#: The outputs whose maps the seeds' ensemble averages.
ENSEMBLE_OUTPUTS = ("A", "refined")


def _ld_evaluation(
    run_dir: Path,
    samples: list[Any],
    target: str,
    config: ShapeBenchmarkConfig,
    topology: PriorTopology | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """:func:`_ld_rows`, and under :data:`MAPS_WRITTEN` the SHA-256 of each map of
    :data:`ENSEMBLE_OUTPUTS` in ``RUN/eval`` after it, by file name: cached with the rows, it
    lets :func:`_maps_sha256` know maps deleted since (``RUN/eval`` cleaned to save space)."""
    out = _ld_rows(run_dir, samples, target, config, topology, log)
    maps = [_eval_map(run_dir, s.name, output) for output in ENSEMBLE_OUTPUTS for s in samples]
    return {**out, MAPS_WRITTEN: {p.name: sha256(p) for p in maps if p.is_file()}}


def _ld_rows(
    run_dir: Path,
    samples: list[Any],
    target: str,
    config: ShapeBenchmarkConfig,
    topology: PriorTopology | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Outputs A, B and refined of a shape-guided run; with an organ prior's ``topology`` also A
    and refined held to it (the maps and masks written to ``RUN/eval`` are the outputs as they
    come). The refinement keeps a checkpoint in ``RUN/eval/refine-checkpoint``, continued by a
    rerun and removed once the refined maps are written. A refinement that diverges leaves
    the refined rows out, the others kept, and its reason under :data:`REFINEMENT_DIVERGED`
    (cached with them: a rerun with the same settings does not refine again)."""
    from localdisc.tasks.shape_guided import (
        REFINE_CHECKPOINT,
        RefineConfig,
        refine,
        refined_probability,
        run_prior_masks,
        run_size,
        segment_all,
    )

    model = LDModel.from_pretrained(run_dir, device=_device(config.device))
    size = run_size(run_dir)
    prior = run_prior_masks(run_dir, log)
    maps = segment_all(model, [s.image for s in samples], [s.fov for s in samples], size=size,
                       prior=prior, log=log)  # fmt: skip
    out: dict[str, list[dict[str, Any]]] = {"A": [], "B": [], "refined": []}
    if topology is not None:
        out |= {"A + topology": [], "refined + topology": []}
    predictions = run_dir / "eval"
    for s, m in zip(samples, maps, strict=True):
        out["A"].append(_metrics(m.prob_a, s, target, config.eval_size))
        out["B"].append(_metrics(m.prob_b, s, target, config.eval_size))
        if topology is not None:
            held = enforce_topology(m.prob_a, topology)
            out["A + topology"].append(_metrics(held, s, target, config.eval_size))
        for output, prob in (("A", m.prob_a), ("B", m.prob_b)):
            write_png(_eval_map(run_dir, s.name, output), prob_png(prob))
            write_png(predictions / f"{s.name}_{output}_mask.png", mask_png(prob, 0.5))
    # A stopped benchmark's refinement continues there (the same run, images and config).
    checkpoint = predictions / REFINE_CHECKPOINT
    if config.refine_steps:
        refine_size = config.refine_size or size or config.eval_size
        refine_config = RefineConfig(steps=config.refine_steps, size=refine_size,
                                     device=config.device)  # fmt: skip
        try:
            network = refine(run_dir, [s.image for s in samples], maps, refine_config, log=log,
                             checkpoint_dir=checkpoint)  # fmt: skip
        except DivergedError as exc:  # a stop in its step raised KeyboardInterrupt instead
            # Its last good checkpoint would only lead to the same divergence again.
            shutil.rmtree(checkpoint, ignore_errors=True)
            saved = predictions / "per_image.json"  # where _cached keeps this result
            reason = f"{exc} [outputs A and B kept in {saved}; delete it to refine again]"
            return {**{k: v for k, v in out.items() if v}, REFINEMENT_DIVERGED: reason}
        stretch = refine_config.stretch_contrast
        for s, m in zip(samples, maps, strict=True):
            prob = refined_probability(network, s.image, m.fov, stretch=stretch)
            out["refined"].append(_metrics(prob, s, target, config.eval_size))
            write_png(_eval_map(run_dir, s.name, "refined"), prob_png(prob))
            write_png(predictions / f"{s.name}_refined_mask.png", mask_png(prob, 0.5))
            if topology is not None:
                held = enforce_topology(prob, topology)
                out["refined + topology"].append(_metrics(held, s, target, config.eval_size))
    # The refined maps are written (or none are wanted now: a stopped one's checkpoint goes too).
    shutil.rmtree(checkpoint, ignore_errors=True)
    return {k: v for k, v in out.items() if v}


def _ensemble_rows(
    run_dirs: list[Path], outputs: tuple[str, ...], samples: list[Any], target: str,
    config: ShapeBenchmarkConfig, topology: PriorTopology | None,
) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """``outputs`` (A, refined) of several runs as one: the mean of their probability maps (as
    :func:`_ld_rows` wrote them), held to an organ prior's ``topology`` too.

    Raises:
        LocaldiscError: maps deleted since their runs' evaluations (which are reused without
            them), naming them and how to write them again.
    """
    from localdisc.tasks.shape_guided import mean_probability

    missing = [path for d in run_dirs for output in outputs for s in samples
               if not (path := _eval_map(d, s.name, output)).is_file()]  # fmt: skip
    if missing:
        evaluations = sorted({str(path.parent / "per_image.json") for path in missing})
        shown = ", ".join(str(path) for path in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise LocaldiscError(
            f"the {len(run_dirs)} seeds together average their runs' probability maps, and "
            f"{len(missing)} of them are missing (deleted since their evaluation): {shown}{more}; "
            "restore them, or delete " + ", ".join(evaluations) + " for those evaluations to run "
            "again and write them"
        )
    out: dict[str, list[dict[str, Any]]] = {}
    for output in outputs:
        for s in samples:
            prob = mean_probability([_eval_map(d, s.name, output) for d in run_dirs])
            out.setdefault(output, []).append(_metrics(prob, s, target, config.eval_size))
            if topology is not None:
                held = enforce_topology(prob, topology)
                row = _metrics(held, s, target, config.eval_size)
                out.setdefault(f"{output} + topology", []).append(row)
    return out


def _kmeans_rows(
    model: LDModel, samples: list[Any], target: str, config: ShapeBenchmarkConfig,
    fraction: float, seed: int, size: int | None,
) -> list[dict[str, Any]]:  # fmt: skip
    return [_kmeans_row(model, s, target, config, fraction, seed, size) for s in samples]


def _kmeans_row(
    model: LDModel, sample: Any, target: str, config: ShapeBenchmarkConfig, fraction: float,
    seed: int, size: int | None,
) -> dict[str, Any]:  # fmt: skip
    """k-means on the image's pixel embeddings (FOV only) at ``size``, the scale the model was
    trained at (its pool size), as outputs A and B are; the cluster nearest ``fraction``."""
    from scipy.cluster.vq import kmeans2

    from localdisc.data.preprocess import resize_image, resize_mask
    from localdisc.tasks.shape_guided import seen_box

    size = size or config.eval_size
    y0, y1, x0, x1 = seen_box(sample.image, model.config.modality)  # as outputs A and B
    image = resize_image(sample.image[y0:y1, x0:x1], size)
    fov = resize_mask(sample.fov[y0:y1, x0:x1], size)
    v = model.embed(image).permute(1, 2, 0).cpu().numpy()  # [H, W, D]
    features = v[fov].astype(np.float64)
    rng = np.random.default_rng(seed)
    _, labels = kmeans2(features, config.kmeans_clusters, minit="++", seed=rng)
    areas = np.bincount(labels, minlength=config.kmeans_clusters) / len(labels)
    chosen = int(np.argmin(np.abs(areas - fraction)))
    mask = np.zeros(fov.shape, dtype=np.float32)
    mask[fov] = labels == chosen
    prob = np.zeros(sample.fov.shape, np.float32)
    prob[y0:y1, x0:x1] = np.clip(resize_image(mask, (y1 - y0, x1 - x0)), 0, 1)
    return _metrics(prob * sample.fov, sample, target, config.eval_size)


def _mean_shape_rows(
    samples: list[Any], target: str, bank: torch.Tensor, fraction: float,
    config: ShapeBenchmarkConfig,
) -> list[dict[str, Any]]:  # fmt: skip
    """The prior's average mask, thresholded so that ``fraction`` of the image is foreground."""
    from localdisc.data.preprocess import resize_image

    mean = bank[:, 0].float().mean(0).numpy()
    rows = []
    for sample in samples:
        score = np.clip(resize_image(mean, sample.fov.shape), 0, 1)
        mask = score >= np.quantile(score, 1 - fraction)
        rows.append(_metrics(calibrate(score, mask) * sample.fov, sample, target, config.eval_size))
    return rows


def _filter_rows(
    samples: list[Any], target: str, scores: Callable[[str], list[np.ndarray]], method: str,
    fraction: float | None, speck_area: float, config: ShapeBenchmarkConfig,
) -> list[dict[str, Any]]:  # fmt: skip
    """A filter's ``scores(method)`` thresholded at ``fraction`` of the FOV (None: Otsu), its
    pieces below ``speck_area`` of the FOV dropped, each as a probability map whose 0.5 level is
    the mask (ranked as the filter ranks pixels inside and outside it)."""
    threshold = "otsu" if fraction is None else fraction
    return [
        _metrics(calibrate(score, threshold_vessels(score, s.fov, threshold,
                                                    speck_area=speck_area)),
                 s, target, config.eval_size)
        for s, score in zip(samples, scores(method), strict=True)
    ]  # fmt: skip


def _student_config(config: ShapeBenchmarkConfig, seed: int, painted: int) -> Any:
    from localdisc.tasks.self_training import StudentConfig

    return StudentConfig(method=config.student_teacher, size=_student_size(config.eval_size),
                         crop=config.eval_size // 2, steps=config.student_steps,
                         batch=config.batch, painted=painted, seed=seed,
                         device=config.device)  # fmt: skip


def _student_rows(
    samples: list[Any], target: str, scores: Callable[[str], list[np.ndarray]], fraction: float,
    config: ShapeBenchmarkConfig, student: Any, log: Callable[[str], None],
) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """A network taught as ``student`` (a ``StudentConfig``) by its teacher (its ``scores``) on
    the test images themselves (no label; transductive, as the refinement) and, with
    ``student.painted``, on that many copies of each with a simulated tree painted on: its
    probability; the same without specks (``config.speck_area``, when not 0); and its rank
    averaged with its teacher's at ``fraction``. It sees the images at 3/2 of ``eval_size`` (768
    for 512: chosen on STARE, ``benchmarks/RESULTS.md``)."""
    from localdisc.tasks.self_training import student_probability, train_student
    from localdisc.tasks.vesselness import eroded_fov, mean_rank, remove_specks, threshold_fraction

    teachers = scores(student.method)
    model = train_student([s.image for s in samples], [s.fov for s in samples], fraction, student,
                          teachers=teachers, log=log)  # fmt: skip
    network, clean, ranked = _student_outputs(student)
    out: dict[str, list[dict[str, Any]]] = {network: [], clean: [], ranked: []}
    for s, teacher in zip(samples, teachers, strict=True):
        prob = student_probability(model, s.image, s.fov)
        out[network].append(_metrics(prob, s, target, config.eval_size))
        if config.speck_area:
            mask = remove_specks(prob >= 0.5, s.fov, config.speck_area)
            out[clean].append(_metrics(calibrate(prob, mask), s, target, config.eval_size))
        rank = mean_rank([prob, teacher], s.fov, student.erode_fov)
        mask = threshold_fraction(rank, eroded_fov(s.fov, student.erode_fov), fraction)
        out[ranked].append(_metrics(calibrate(rank, mask), s, target, config.eval_size))
    return {name: rows for name, rows in out.items() if rows}


def _student_outputs(student: Any) -> tuple[str, str, str]:
    """The rows of :func:`_student_rows`: the network, without specks, and its mean rank with its
    teacher."""
    network = f"{student.method}-taught network" + (", trees painted" if student.painted else "")
    return network, f"{network}, specks removed", f"{student.method} + {network} (mean rank)"


def _student_size(eval_size: int) -> int:
    """3/2 of ``eval_size``, rounded to the U-Net's multiple of 16."""
    return max(16, 16 * round(1.5 * eval_size / 16))


def calibrate(score: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A monotone map of ``score`` (in [0, 1]) to [0, 1] with ``mask`` exactly where it is
    >= 0.5 (0.501 to 1 inside, 0 to 0.499 outside). The outside scores are scaled, not shifted
    down and clipped: scores under 0.002 of the highest outside one all became 0, ties that
    changed the AUC."""
    inside, outside = score[mask], score[~mask]
    t_low = float(outside.max()) if outside.size else 0.0
    t_high = float(inside.min()) if inside.size else 1.0
    prob = np.where(
        mask,
        0.501 + 0.499 * (score - t_high) / max(1.0 - t_high, 1e-6),
        0.499 * score / max(t_low, 1e-6),
    )
    return np.clip(prob, 0, 1).astype(np.float32)
