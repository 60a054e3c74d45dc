"""``localdisc benchmark localize``: one-shot landmarks, LD against template matching.

Tasks (one template from the training split, every test image):

- ``jsrt``: JSRT radiographs, landmarks derived from the SCR masks as the centroids of the heart,
  the left lung, the right lung, the left clavicle and the right clavicle. JSRT's pixel spacing
  is 0.175 mm at 2048 x 2048, so errors are also given in millimetres. Template JPCLN001.
- ``drive``: the optic-disc centre on the DRIVE test images, from the annotations shipped with
  localdisc (``data/drive_optic_disc.json``: how they were made is written in the file).
  Template 21_training. Pixels only.
- ``synthetic_fundus``: optic disc and fovea of generated fundus images, whose true centres the
  generator knows. Needs no data.

Rows: each LD model (with its own patch kernel: center-sensitive or uniform), for a
center-sensitive model also the same model with uniform pooling, and normalised
cross-correlation template matching with a patch a quarter of the image wide (128 px at 512).
On fundus tasks every method also tries the mirrored template (left and right eyes are mirror
images) and keeps its better match.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from localdisc.data.io import JSRT_SIZE, JSRT_SPACING
from localdisc.engine.checkpoint import atomic_write_text
from localdisc.errors import LocaldiscError
from localdisc.eval.report import environment_markdown
from localdisc.losses.patch import CENTER_SIGMA
from localdisc.tasks.localize import (
    Localizer,
    Prediction,
    SearchConfig,
    landmark_figure,
    ncc_localize,
    score_predictions,
)
from localdisc.tasks.presets import QUICK_PRETRAIN, pretrain_preset, run_label
from localdisc.tasks.similarity import LoadedModel, Point, check_size, load_model

SCR_LANDMARKS = ("heart", "left_lung", "right_lung", "left_clavicle", "right_clavicle")
TASKS = ("jsrt", "drive", "synthetic_fundus")


@dataclass
class Case:
    """One image with its true landmarks (x, y pixels) and pixel spacing (mm per pixel, square
    pixels, if known)."""

    name: str
    image: np.ndarray
    landmarks: dict[str, Point]
    spacing: float | None = None


@dataclass
class LandmarkTask:
    """A template case and an iterator over the test cases."""

    name: str
    modality: str
    template: Case
    tests: Callable[[], Iterator[Case]]
    count: int
    mirror: bool = False  # fundus: left and right eyes are mirror images, try both


def centroid(mask: np.ndarray) -> Point:
    """Centre of mass (x, y) of a mask."""
    from scipy import ndimage

    y, x = ndimage.center_of_mass(mask)
    return float(x), float(y)


def scr_landmarks(masks: dict[str, np.ndarray]) -> dict[str, Point]:
    """Centroids of the SCR heart, lungs and clavicles: the JSRT landmarks of this benchmark."""
    return {name: centroid(masks[name]) for name in SCR_LANDMARKS if masks[name].any()}


@cache
def drive_optic_discs() -> dict[str, Point]:
    """The optic-disc centres shipped with localdisc, by DRIVE image name."""
    text = resources.files("localdisc.data").joinpath("drive_optic_disc.json").read_text("utf-8")
    raw = json.loads(text)["landmarks"]
    return {name: tuple(v["optic_disc"]) for name, v in raw.items()}  # type: ignore[misc]


def _template_index(names: list[str], default: str, seed: int) -> int:
    """Seed 0: the documented template; seed s > 0: the s-th of the other training images in
    one fixed random order, so that no two seeds share a template (independent draws did: DRIVE
    seeds 2 and 3 both gave 37_training, counting one template twice)."""
    first = names.index(default) if default in names else 0
    if seed == 0:
        return first
    others = [i for i in range(len(names)) if i != first]
    if seed > len(others):
        raise LocaldiscError(
            f"--seeds {seed + 1} needs {seed + 1} templates, but there are only {len(names)} "
            "training images"
        )
    return others[int(np.random.default_rng(0).permutation(len(others))[seed - 1])]


def _jsrt(root: Path, max_test: int | None, seed: int) -> LandmarkTask:
    from localdisc.data.datasets import load_dataset

    train = load_dataset("jsrt_scr", root, "train")
    test = load_dataset("jsrt_scr", root, "test")
    for target in SCR_LANDMARKS:
        if target not in train.targets:
            raise LocaldiscError(f"{root}: no SCR {target} masks for the JSRT landmarks")

    def case(sample: Any) -> Case:
        spacing = JSRT_SPACING * JSRT_SIZE / sample.image.shape[1]  # the raw files' at this size
        return Case(sample.name, sample.image, scr_landmarks(sample.masks), spacing)

    names = [item.name for item in train.items]
    template = case(train[_template_index(names, "JPCLN001", seed)])
    n = len(test) if max_test is None else min(max_test, len(test))
    return LandmarkTask("jsrt", "xray", template, lambda: (case(test[i]) for i in range(n)), n)


def _drive(root: Path, max_test: int | None, seed: int) -> LandmarkTask:
    from localdisc.data.datasets import load_dataset

    discs = drive_optic_discs()
    train = load_dataset("drive", root, "train")
    test = load_dataset("drive", root, "test")

    def case(sample: Any) -> Case:
        return Case(sample.name, sample.image, {"optic_disc": discs[sample.name]})

    names = [item.name for item in train.items]
    template = case(train[_template_index(names, "21_training", seed)])
    n = len(test) if max_test is None else min(max_test, len(test))
    tests = lambda: (case(test[i]) for i in range(n))  # noqa: E731
    return LandmarkTask("drive", "fundus", template, tests, n, mirror=True)


def _synthetic(size: int, count: int, seed: int) -> LandmarkTask:
    from localdisc.data.synthetic import synthetic_fundus

    def case(seed: int) -> Case:
        s = synthetic_fundus(size, seed=seed)
        return Case(
            f"synthetic_{seed:03d}", s.image, {"optic_disc": s.optic_disc, "fovea": s.fovea}
        )

    tests = lambda: (case(100 + i) for i in range(count))  # noqa: E731
    return LandmarkTask("synthetic_fundus", "fundus", case(seed), tests, count, mirror=True)


@dataclass
class LocalizeBenchmarkConfig:
    models: list[str] = field(default_factory=list)  # LD run folders, or "ld" (preset)
    tasks: list[str] | None = None
    data_root: str | None = None
    size: int | None = None  # working size; None: each model's pre-training pool size
    max_test: int | None = None
    device: str = "auto"
    quick: bool = False
    seeds: int = 1  # seed 0: the documented template; each further seed adds a random template


def _task(name: str, config: LocalizeBenchmarkConfig, seed: int) -> LandmarkTask:
    if name == "synthetic_fundus":
        count = 3 if config.quick else 20
        count = count if config.max_test is None else min(config.max_test, count)
        return _synthetic(64 if config.quick else 256, count, seed)
    if config.data_root is None:
        raise LocaldiscError("no data root: pass --data-root or set LOCALDISC_DATA")
    root = Path(config.data_root).expanduser()
    if name == "jsrt":
        return _jsrt(root, config.max_test, seed)
    if name == "drive":
        return _drive(root / "DRIVE", config.max_test, seed)
    raise LocaldiscError(f"unknown task {name!r}; known: {', '.join(TASKS)}")


def run_localize_benchmark(
    config: LocalizeBenchmarkConfig, out_dir: str | Path, *, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run every task with data for every method; write results.json, results.md, figures."""
    from localdisc.engine.distributed import resolve_device
    from localdisc.eval.provenance import environment

    out_dir = Path(out_dir)
    check_size(config.size, "--size")
    if config.max_test is not None and config.max_test < 1:
        raise LocaldiscError(f"--max-test must be at least 1, not {config.max_test}")
    if config.seeds < 1:  # no template: nothing to score (0 also divided by zero below)
        raise LocaldiscError(f"--seeds must be at least 1, not {config.seeds}")
    # Before any pre-training or model: a misspelt task is an error, not a task without data.
    unknown = [t for t in dict.fromkeys(config.tasks or []) if t not in TASKS]
    if unknown:
        raise LocaldiscError(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
    device = "cpu" if config.quick else str(resolve_device(config.device))
    env = environment(device, amp=True)  # at the start, before any pre-training (amp default)
    tasks = config.tasks or (["synthetic_fundus"] if config.quick else ["jsrt", "drive"])
    models = list(config.models) or (["ld"] if config.quick else [])
    if not models:
        raise LocaldiscError("give at least one LD run with --models")
    if "ld" in models:
        if not config.quick:
            raise LocaldiscError("the model 'ld' (pre-trained here) is only for --quick")
        settings = {**QUICK_PRETRAIN, "center_sigma": CENTER_SIGMA, "progress": False}
        settings["device"] = device
        models[models.index("ld")] = str(pretrain_preset(settings, out_dir / "pretrain", log))
    # Every model once, before any task: a bad --models path is an error, not a skipped task.
    loaded = {run: load_model(run, device=device) for run in models}

    results: dict[str, Any] = {
        "config": asdict(config), "environment": env, "tasks": {}, "skipped": []
    }  # fmt: skip
    earlier = _listed_figures(out_dir / "results.json")  # before it is replaced
    if not (out_dir / "results.json").is_file():
        # Before the first figure: an --out inside a folder of images is a benchmark's (no
        # images of it) however far this call gets; an earlier call's results stay till the end.
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2))
    for task_name in tasks:
        # method -> {seed and test image: predictions}; their truth and (row, column) spacing.
        predictions: dict[str, dict[str, dict[str, Prediction]]] = {}
        truth: dict[str, dict[str, Point]] = {}
        spacings: dict[str, tuple[float, float] | None] = {}
        seconds: dict[str, float] = {}
        # Each method's working size (longer side; None: the image's own, as NCC's), and the
        # first test image's (height, width): the table compared them unsaid (reviewer).
        search: dict[str, int | None] = {}
        image_size: list[int] = []
        templates, count = [], 0
        figures: list[str] = []  # in out_dir/figures, listed in results.json
        try:
            # Every seed's template first: too many seeds for the training images is then
            # found before any work, not after the other seeds' (which it would throw away).
            seeded = [_task(task_name, config, s) for s in range(config.seeds)]
            for seed, task in enumerate(seeded):
                templates.append(task.template.name)
                methods = _methods(task, loaded, config)
                for case in task.tests():
                    count += 1
                    key = f"{seed} {case.name}"  # each test image once per seed's template
                    truth[key] = case.landmarks
                    spacings[key] = None if case.spacing is None else (case.spacing,) * 2
                    image_size = image_size or list(case.image.shape[:2])
                    found = {}
                    for method, locate in methods.items():
                        search[method] = getattr(locate, "size", None)  # a Localizer's
                        t0 = time.perf_counter()
                        found[method] = locate(case.image)
                        seconds[method] = seconds.get(method, 0.0) + time.perf_counter() - t0
                        predictions.setdefault(method, {})[key] = found[method]
                    if count <= 3:
                        figures.append(f"{task_name}_{case.name}.png")
                        landmark_figure(task.template.image, task.template.landmarks, case.image,
                                        found, out_dir / "figures" / figures[-1],
                                        truth=case.landmarks)  # fmt: skip
        except LocaldiscError as exc:
            if count:  # a failure after some images is an error, not missing data
                raise
            log(f"skipped {task_name}: {exc}")
            results["skipped"].append({"task": task_name, "reason": str(exc)})
            continue
        for run, other in loaded.items():  # not among the methods (_methods): said, listed
            if other.model.config.modality != seeded[0].modality:
                reason = (f"model {run} ({other.model.config.modality}) not run: the task's "
                          f"images are {seeded[0].modality}")  # fmt: skip
                log(f"skipped on {task_name}: {reason}")
                results["skipped"].append({"task": task_name, "model": run, "reason": reason})
        results["tasks"][task_name] = {
            "templates": templates,
            "test_images": count // config.seeds,
            "figures": figures,
            "first_test_image_size": image_size,
            "methods": {
                m: {
                    "seconds_per_image": seconds[m] / count,
                    "search_size": search[m],
                    # In mm too where every test image has a spacing (JSRT's square pixels).
                    "landmarks": score_predictions(by_image, truth, spacings=spacings)["summary"][
                        "landmarks"
                    ],
                }
                for m, by_image in predictions.items()
            },
        }
        log(f"{task_name}: {count} localisations per method, {len(predictions)} methods")
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2))
    atomic_write_text(out_dir / "results.md", localize_markdown(results))
    _remove_earlier_figures(out_dir / "figures", earlier, _listed_figures(results), log)
    return results


def _listed_figures(results: Path | dict[str, Any]) -> set[str]:
    """The figure file names a benchmark's ``results.json`` (a path, or the results) lists;
    none for a missing file, or one this benchmark did not write."""
    try:
        if isinstance(results, Path):
            results = json.loads(results.read_text())
        names = {n for task in results["tasks"].values() for n in task.get("figures", [])}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return set()
    # Plain PNG file names only: a listed path elsewhere is never removed.
    return {n for n in names if isinstance(n, str) and Path(n).name == n and n.endswith(".png")}


def _remove_earlier_figures(
    folder: Path, earlier: set[str], keep: set[str], log: Callable[[str], None]
) -> None:
    """Remove the figures an earlier run in the same ``--out`` listed and this one did not
    write again (of tasks not run, or of other test images): the folder mixed two runs. Only
    those: other files of the folder are left alone."""
    removed = 0
    for name in sorted(earlier - keep):
        path = folder / name
        if path.is_file():
            path.unlink()
            removed += 1
    if removed:
        log(f"removed {removed} figure(s) of an earlier run from {folder}: not of this run")


def _methods(
    task: LandmarkTask, models: dict[str, LoadedModel], config: LocalizeBenchmarkConfig
) -> dict[str, Callable[[np.ndarray], dict[str, Prediction]]]:
    template, landmarks = task.template.image, task.template.landmarks
    methods: dict[str, Callable[[np.ndarray], dict[str, Prediction]]] = {}
    for run, loaded in models.items():
        if loaded.model.config.modality != task.modality:
            continue  # an X-ray model has nothing to say about fundus images
        search = SearchConfig(size=config.size, mirror=task.mirror)
        label = run_label(run, list(models))
        if loaded.kernel.center_sigma is not None:
            methods[f"LD {label} (center-sensitive)"] = Localizer(
                loaded, template, landmarks, search
            )
            uniform = replace(search, uniform=True)
            methods[f"LD {label} (uniform pooling)"] = Localizer(
                loaded, template, landmarks, uniform
            )
        else:
            methods[f"LD {label}"] = Localizer(loaded, template, landmarks, search)
    patch = max(8, template.shape[1] // 4)
    methods[f"NCC template matching ({patch} px patch)"] = lambda image: ncc_localize(
        template, landmarks, image, patch, mirror=task.mirror
    )
    return methods


def localize_markdown(results: dict[str, Any]) -> str:
    """One table per task: rows method x landmark; radial errors and rates, time per image."""
    lines = ["# One-shot landmark localisation", ""]
    for task_name, task in results["tasks"].items():
        lines += [
            f"## {task_name}: template {', '.join(task['templates'])}; "
            f"{task['test_images']} test images",
            "",
            "| method | landmark | mean px | median px | mean mm | median mm | <= 5 mm | "
            "<= 10 mm | s / image |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for method, m in task["methods"].items():
            for landmark, s in m["landmarks"].items():
                mm = "mean_mm" in s

                def f(key: str, pct: bool = False, s: dict = s, mm: bool = mm) -> str:
                    if key.endswith(("mm", "_5mm", "_10mm")) and not mm:
                        return "-"
                    return f"{100 * s[key]:.0f}%" if pct else f"{s[key]:.1f}"

                lines.append(
                    f"| {method} | {landmark} | {f('mean_px')} | {f('median_px')} | "
                    f"{f('mean_mm')} | {f('median_mm')} | {f('within_5mm', True)} | "
                    f"{f('within_10mm', True)} | {m['seconds_per_image']:.2f} |"
                )
        sizes = {m.get("search_size") for m in task["methods"].values()} - {None}
        if sizes:  # LD at its working size, NCC at the images' own
            first = task.get("first_test_image_size") or ["?", "?"]
            ld = ", ".join(f"{s} px" for s in sorted(sizes))
            lines += [
                "",
                f"LD searches at {ld} (longer side); template matching at each image's own "
                f"size ({first[0]} x {first[1]} for the first test image).",
            ]
        lines.append("")
    if results["tasks"].get("jsrt"):
        lines += [
            "JSRT landmarks are the centroids of the SCR heart, left lung, right lung, left "
            "clavicle and right clavicle masks; millimetres use 0.175 mm per pixel at 2048 x 2048.",
            "",
        ]
    if results["skipped"]:
        lines += ["## Skipped", ""] + [f"- {s['task']}: {s['reason']}" for s in results["skipped"]]
        lines.append("")
    if results.get("environment"):
        lines.append(environment_markdown(results["environment"]))
    return "\n".join(lines) + "\n"
