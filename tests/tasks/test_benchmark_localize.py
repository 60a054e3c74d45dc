import json
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import shared
from localdisc.cli import app
from localdisc.errors import LocaldiscError
from localdisc.eval.provenance import environment_line
from localdisc.tasks.benchmark_localize import (
    LocalizeBenchmarkConfig,
    _task,
    _template_index,
    drive_optic_discs,
    run_localize_benchmark,
    scr_landmarks,
)
from localdisc.tasks.localize import radial_error, radial_summary


def test_quick_benchmark_compares_ld_and_template_matching(tmp_path):
    out = tmp_path / "loc"
    result = CliRunner().invoke(
        app, ["benchmark", "localize", "--quick", "--tasks", "synthetic_fundus,jsrt",
              "--data-root", str(tmp_path / "none"), "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    methods = results["tasks"]["synthetic_fundus"]["methods"]
    assert any("center-sensitive" in m for m in methods)
    assert any("uniform pooling" in m for m in methods)
    ncc = next(m for m in methods if m.startswith("NCC"))
    for m in methods.values():
        assert set(m["landmarks"]) == {"optic_disc", "fovea"}
        assert m["landmarks"]["fovea"]["n"] == 3
    assert results["skipped"][0]["task"] == "jsrt"
    assert "| optic_disc |" in (out / "results.md").read_text()
    report = (out / "results.md").read_text()
    # Each method's scale is said: LD at its working size, NCC at the images' own (reviewer).
    sizes = {m: s["search_size"] for m, s in methods.items()}
    assert {s for m, s in sizes.items() if m.startswith("LD")} == {80} and sizes[ncc] is None
    height, width = results["tasks"]["synthetic_fundus"]["first_test_image_size"]
    assert (f"LD searches at 80 px (longer side); template matching at each image's own size "
            f"({height} x {width} for the first test image).") in report  # fmt: skip
    assert report.rstrip().endswith(environment_line(results["environment"]))
    assert list((out / "figures").glob("synthetic_fundus_*.png"))


def test_radial_summary_by_hand():
    s = radial_summary([3.0, 4.0, 20.0], mm=[1.5, 2.0, 10.0])
    assert s["mean_px"] == 9.0 and s["median_px"] == 4.0
    assert s["mean_mm"] == 4.5 and s["within_5mm"] == 2 / 3 and s["within_10mm"] == 1.0
    assert "mean_mm" not in radial_summary([1.0])


def test_mm_errors_are_each_images_px_times_its_spacing(tmp_path, monkeypatch):
    """The mm summaries are of each error times its image's spacing (JSRT's square pixels). A
    test image without one landmark (JSRT: an empty SCR mask) put one spacing per image beside
    fewer errors: a broadcasting error, or mm of other images' errors."""
    from localdisc.tasks import benchmark_localize

    real = benchmark_localize._synthetic

    def spaced(size, count, seed):
        task = real(size, count, seed)
        cases = task.tests

        def tests():
            for i, case in enumerate(cases()):
                marks = {k: v for k, v in case.landmarks.items() if (i, k) != (0, "fovea")}
                yield replace(case, landmarks=marks, spacing=0.25 + 0.5 * i)

        return replace(task, tests=tests)

    monkeypatch.setattr(benchmark_localize, "_synthetic", spaced)
    monkeypatch.setattr(benchmark_localize, "landmark_figure", lambda *a, **k: None)
    from localdisc.models import LDConfig, LDModel

    # An X-ray model has no say on fundus images: NCC only, fast.
    LDModel(LDConfig(modality="xray", dim=8, clusters=4, width=4, depth=2)).save(tmp_path / "run")
    config = LocalizeBenchmarkConfig(
        models=[str(tmp_path / "run")],
        tasks=["synthetic_fundus"],
        quick=True,  # 3 at 64 px
    )
    logged: list[str] = []
    results = run_localize_benchmark(config, tmp_path / "out", log=logged.append)
    methods = results["tasks"]["synthetic_fundus"]["methods"]
    assert list(methods) == ["NCC template matching (16 px patch)"]
    # Said and listed: it was left out without a word.
    reason = f"model {tmp_path / 'run'} (xray) not run: the task's images are fundus"
    assert results["skipped"] == [{"task": "synthetic_fundus", "model": str(tmp_path / "run"),
                                   "reason": reason}]  # fmt: skip
    assert f"skipped on synthetic_fundus: {reason}" in logged
    assert f"- synthetic_fundus: {reason}" in (tmp_path / "out" / "results.md").read_text()
    # The errors themselves, from NCC again (deterministic), each image's px and mm.
    task = spaced(64, 3, 0)
    by_landmark: dict[str, list[tuple[float, float]]] = {}
    for case in task.tests():
        found = benchmark_localize.ncc_localize(
            task.template.image, task.template.landmarks, case.image, 16, mirror=True
        )
        for k, true in case.landmarks.items():
            px = radial_error((found[k].x, found[k].y), true)
            by_landmark.setdefault(k, []).append((px, px * case.spacing))
    landmarks = methods["NCC template matching (16 px patch)"]["landmarks"]
    assert landmarks["fovea"]["n"] == 2 and landmarks["optic_disc"]["n"] == 3
    for k, errors in by_landmark.items():
        px, mm = zip(*errors, strict=True)
        assert landmarks[k] == pytest.approx(radial_summary(px, mm=mm))
    # results.md's rows print results.json's summaries of a real spaced run. (Here some columns
    # agree, e.g. both rates 100%: test_results_md_prints_each_summary_in_its_own_column tells
    # every column apart.)
    report = (tmp_path / "out" / "results.md").read_text().splitlines()
    seconds = methods["NCC template matching (16 px patch)"]["seconds_per_image"]
    for k, s in landmarks.items():
        row = (
            f"| NCC template matching (16 px patch) | {k} | {s['mean_px']:.1f} | "
            f"{s['median_px']:.1f} | {s['mean_mm']:.1f} | {s['median_mm']:.1f} | "
            f"{100 * s['within_5mm']:.0f}% | {100 * s['within_10mm']:.0f}% | {seconds:.2f} |"
        )
        assert row in report, (row, report)


def test_scr_landmarks_are_mask_centroids():
    masks = {name: np.zeros((10, 10), bool) for name in
             ("heart", "left_lung", "right_lung", "left_clavicle", "right_clavicle")}  # fmt: skip
    masks["heart"][2:4, 6:8] = True  # centre (x 6.5, y 2.5)
    assert scr_landmarks(masks) == {"heart": (6.5, 2.5)}  # empty masks give no landmark


def test_drive_optic_discs_cover_every_image_and_jsrt_landmarks_fall_on_organs():
    discs = drive_optic_discs()
    assert len(discs) == 40 and all(0 <= x < 565 and 0 <= y < 584 for x, y in discs.values())
    root = shared("JSRT")
    from localdisc.data.datasets import load_dataset

    sample = load_dataset("jsrt_scr", root.parent, "train")[0]
    landmarks = scr_landmarks(sample.masks)
    assert len(landmarks) == 5
    x, y = landmarks["heart"]
    assert sample.masks["heart"][round(y), round(x)]


def test_a_bad_model_is_an_error_not_a_skipped_task(tmp_path):
    config = LocalizeBenchmarkConfig(
        models=[str(tmp_path / "nowhere")], tasks=["synthetic_fundus"], device="cpu"
    )
    with pytest.raises(LocaldiscError, match="nowhere"):
        run_localize_benchmark(config, tmp_path / "out", log=lambda m: None)
    assert not (tmp_path / "out" / "results.json").exists()


def test_max_test_limits_the_synthetic_task_too():
    task = _task("synthetic_fundus", LocalizeBenchmarkConfig(max_test=2, quick=True), 0)
    assert task.count == 2 and len(list(task.tests())) == 2
    task = _task("synthetic_fundus", LocalizeBenchmarkConfig(quick=True), 0)
    assert task.count == 3  # the default without --max-test


@pytest.mark.parametrize(
    "change,message",
    [
        ({"max_test": 0}, "--max-test must be at least 1"),
        ({"size": 4}, "--size"),
        ({"seeds": 0}, "--seeds must be at least 1, not 0"),
        ({"seeds": -2}, "--seeds must be at least 1, not -2"),
    ],
)
def test_bad_limits_are_refused_before_any_work(tmp_path, change, message):
    config = LocalizeBenchmarkConfig(models=[str(tmp_path / "nowhere")], **change)
    with pytest.raises(LocaldiscError, match=message):
        run_localize_benchmark(config, tmp_path / "out", log=lambda m: None)


@pytest.mark.parametrize("quick", [True, False])
def test_unknown_tasks_are_refused_before_any_work(tmp_path, monkeypatch, quick):
    """A misspelt --tasks name was caught per task as missing data: listed as skipped, exit 0,
    after the --quick pre-training. It is refused first, as `benchmark transfer` refuses it."""
    import localdisc.tasks.benchmark_localize as benchmark_localize

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the tasks were checked")

    monkeypatch.setattr(benchmark_localize, "pretrain_preset", no_work)
    monkeypatch.setattr(benchmark_localize, "load_model", no_work)
    models = ["--quick"] if quick else ["--models", str(tmp_path / "run")]
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["benchmark", "localize", *models, "--tasks", "jsrt,drvie,synthetic_fundus,foo",
              "--data-root", str(tmp_path / "none"), "--device", "cpu", "--out", str(out)],
    )  # fmt: skip
    assert isinstance(result.exception, LocaldiscError), result.output
    assert str(result.exception) == (
        "unknown task(s) drvie, foo; known: jsrt, drive, synthetic_fundus"
    )
    assert not out.exists()


def test_each_seed_draws_a_different_template():
    """--seeds N scores N distinct templates: independent draws repeated one (DRIVE's 20
    training images: seeds 2 and 3 both drew index 16) and counted it twice."""
    names = [f"{i + 21}_training" for i in range(20)]
    drawn = [_template_index(names, "21_training", seed) for seed in range(20)]
    assert drawn[0] == 0 and sorted(drawn) == list(range(20))
    assert drawn == [_template_index(names, "21_training", seed) for seed in range(20)]
    with pytest.raises(LocaldiscError, match="only 20 training images"):
        _template_index(names, "21_training", 20)


def test_more_seeds_than_drive_templates_is_found_before_any_work(tmp_path):
    root = shared("DRIVE").parent
    from localdisc.models import LDConfig, LDModel

    LDModel(LDConfig(dim=8, clusters=4)).save(tmp_path / "run")
    config = LocalizeBenchmarkConfig(
        models=[str(tmp_path / "run")], tasks=["drive"], data_root=str(root), seeds=21,
        device="cpu", max_test=1,
    )  # fmt: skip
    results = run_localize_benchmark(config, tmp_path / "out", log=lambda m: None)
    assert results["tasks"] == {}
    assert "--seeds 21 needs 21 templates" in results["skipped"][0]["reason"]
    assert not (tmp_path / "out" / "figures").exists()  # no image was localised


def test_a_rerun_into_the_same_out_keeps_only_its_own_figures(tmp_path):
    """results.json was replaced whole but figures/ kept an earlier run's figures (of tasks or
    test images not localised again) beside this run's; files the benchmark did not write stay."""
    from localdisc.models import LDConfig, LDModel

    LDModel(LDConfig(dim=8, clusters=4, width=4, depth=2)).save(tmp_path / "run")
    out = tmp_path / "out"
    config = LocalizeBenchmarkConfig(models=[str(tmp_path / "run")], size=64, quick=True)
    run_localize_benchmark(config, out, log=lambda m: None)
    first = sorted(p.name for p in (out / "figures").iterdir())
    assert len(first) == 3
    (out / "figures" / "notes.png").write_bytes(b"mine")  # the user's: not listed, kept
    logged: list[str] = []
    run_localize_benchmark(replace(config, max_test=1), out, log=logged.append)
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["notes.png", first[0]]
    assert any("removed 2 figure(s) of an earlier run" in line for line in logged), logged
    results = json.loads((out / "results.json").read_text())  # what the next run removes
    assert results["tasks"]["synthetic_fundus"]["figures"] == [first[0]]
    config = replace(config, tasks=["drive"], data_root=str(tmp_path / "none"))
    results = run_localize_benchmark(config, out, log=lambda m: None)  # drive skipped: no data
    assert results["tasks"] == {} and [p.name for p in (out / "figures").iterdir()] == ["notes.png"]


def test_the_benchmark_scores_as_localize_truth_does():
    """One scoring for `benchmark localize` and `localize --truth`: score_predictions."""
    from localdisc.tasks import benchmark_localize, localize

    assert benchmark_localize.score_predictions is localize.score_predictions
    assert radial_error((13.0, 24.0), (10.0, 20.0)) == 5.0
    found, true = (-36.21, 12.7), (0.0, 0.0)
    px = radial_error(found, true)
    prediction = {"x": found[0], "y": found[1], "confidence": 1.0}
    scores = localize.score_predictions({"a": {"m": prediction}}, {"a": {"m": true}}, 0.175)
    assert scores["errors"]["a"]["m"] == pytest.approx({"px": px, "mm": px * 0.175})


class _FakeSet:
    """A stand-in for a loaded data set: the samples ``_jsrt`` and ``_drive`` read."""

    def __init__(self, samples, targets=()):
        self.samples, self.targets = samples, targets
        self.items = samples  # each has a .name

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


def _fake_jsrt(monkeypatch, width: int = 512):
    """load_dataset's JSRT/SCR and DRIVE as small in-memory sets (for _task): JSRT images
    ``width`` px wide with a heart mask (the other organs empty: no landmark), whose centroid
    is 3 px right of and 4 px below the blob it marks in the test image (a 5 px error)."""
    from types import SimpleNamespace

    import localdisc.data.datasets as datasets
    from localdisc.tasks.benchmark_localize import SCR_LANDMARKS

    rng = np.random.default_rng(0)

    def radiograph(at, mark_at):
        image = (0.3 + 0.1 * rng.random((width, width, 1))).astype(np.float32)
        x, y = at
        image[y - 20 : y + 20, x - 20 : x + 20] = 0.9
        image[y - 8 : y + 8, x - 8 : x + 8] = 0.1
        masks = {k: np.zeros((width, width), bool) for k in SCR_LANDMARKS}
        mx, my = mark_at
        masks["heart"][my - 5 : my + 6, mx - 5 : mx + 6] = True  # centroid (mx, my)
        return image, masks

    def jsrt(name, at, mark_at):
        image, masks = radiograph(at, mark_at)
        return SimpleNamespace(name=name, image=image, masks=masks)

    def drive(name):
        return SimpleNamespace(name=name, image=np.zeros((8, 8, 3), np.float32), masks={})

    sets = {
        ("jsrt_scr", "train"): _FakeSet([jsrt("JPCLN001", (200, 200), (200, 200))],
                                        SCR_LANDMARKS),
        ("jsrt_scr", "test"): _FakeSet([jsrt("JPCLN002", (300, 260), (303, 264))],
                                       SCR_LANDMARKS),
        ("drive", "train"): _FakeSet([drive("21_training")]),
        ("drive", "test"): _FakeSet([drive("01_test")]),
    }  # fmt: skip
    monkeypatch.setattr(datasets, "load_dataset", lambda name, root, split: sets[name, split])


def test_the_jsrt_task_gives_mm_at_0_7_per_pixel_of_its_512_px_images(tmp_path, monkeypatch):
    # Guards JSRT's spacing: 0.175 mm per pixel of the 2048 px originals, so 0.175 * 2048 / 512
    # = 0.7 mm per pixel of the 512 px images the benchmark works on; 0.175 unscaled made every
    # mm error 4 times too small (reviewer's mutation of _jsrt).
    from localdisc.models import LDConfig, LDModel

    _fake_jsrt(monkeypatch)
    config = LocalizeBenchmarkConfig(tasks=["jsrt"], data_root=str(tmp_path))
    task = _task("jsrt", config, 0)
    assert task.template.spacing == pytest.approx(0.175 * 2048 / 512) == pytest.approx(0.7)
    assert [case.spacing for case in task.tests()] == [pytest.approx(0.7)]
    # A whole run: each mm error is its px error times 0.7 (a fundus model has no say on
    # X-rays: NCC only, fast).
    LDModel(LDConfig(modality="fundus", dim=8, clusters=4, width=4, depth=2)).save(tmp_path / "r")
    config = replace(config, models=[str(tmp_path / "r")], device="cpu")
    from localdisc.tasks import benchmark_localize

    monkeypatch.setattr(benchmark_localize, "landmark_figure", lambda *a, **k: None)
    results = run_localize_benchmark(config, tmp_path / "out", log=lambda m: None)
    (heart,) = [m["landmarks"]["heart"] for m in results["tasks"]["jsrt"]["methods"].values()]
    assert heart["n"] == 1 and heart["mean_px"] == pytest.approx(5.0, abs=1.5)
    assert heart["mean_mm"] == pytest.approx(0.7 * heart["mean_px"])
    assert heart["within_5mm"] == 1.0  # 3.5 mm: 0.875 mm at 0.175 also passed this


def test_the_jsrt_spacing_follows_the_images_width(tmp_path, monkeypatch):
    # Guards the scaling itself: 2048 px wide images (the raw .IMG files) get 0.175 mm.
    _fake_jsrt(monkeypatch, width=2048)
    task = _task("jsrt", LocalizeBenchmarkConfig(data_root=str(tmp_path)), 0)
    assert task.template.spacing == pytest.approx(0.175)


def test_the_real_jsrt_task_has_0_7_mm_pixels():
    # Guards the spacing on the shared JSRT copy (512 px PNGs of the 2048 px originals).
    root = shared("JSRT").parent
    shared("SCR")
    task = _task("jsrt", LocalizeBenchmarkConfig(data_root=str(root), max_test=1), 0)
    assert task.template.name == "JPCLN001" and task.template.image.shape[1] == 512
    assert task.template.spacing == pytest.approx(0.7)
    (case,) = task.tests()
    assert case.spacing == pytest.approx(0.7) and len(case.landmarks) == 5


def test_the_drive_and_synthetic_fundus_tasks_try_the_mirrored_template(tmp_path, monkeypatch):
    # Guards mirror=True of the fundus tasks: a left eye's template meets right eyes there
    # (DRIVE lost it unnoticed under a reviewer's mutation); JSRT's radiographs are not mirrored.
    _fake_jsrt(monkeypatch)
    config = LocalizeBenchmarkConfig(data_root=str(tmp_path), quick=True)
    assert _task("drive", config, 0).mirror is True
    assert _task("synthetic_fundus", config, 0).mirror is True
    assert _task("jsrt", config, 0).mirror is False


def test_the_real_drive_task_mirrors():
    # Guards the same on the shared DRIVE copy, when present.
    root = shared("DRIVE").parent
    task = _task("drive", LocalizeBenchmarkConfig(data_root=str(root), max_test=1), 0)
    assert task.mirror is True and task.template.name == "21_training"


def test_each_ld_row_searches_as_its_name_says_and_ncc_takes_a_quarter_of_the_width():
    # Guards the rows of a center-sensitive model: "(center-sensitive)" with the model's own
    # Gaussian kernel, "(uniform pooling)" with a uniform one (both rows uniform passed
    # unnoticed); and NCC's patch, a quarter of the template's width, not of its height
    # (a non-square template tells them apart).
    import torch

    from localdisc.tasks.benchmark_localize import Case, LandmarkTask, _methods
    from localdisc.tasks.similarity import LoadedModel, PatchKernel

    class Colour(torch.nn.Module):
        config = type("C", (), {"modality": "xray"})()

        def embed(self, image):
            x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
            return torch.nn.functional.normalize(torch.cat([x, 1 - x]), dim=0)

    rng = np.random.default_rng(0)
    template = rng.random((48, 96, 1)).astype(np.float32)  # 48 tall, 96 wide
    task = LandmarkTask("t", "xray", Case("t0", template, {"a": (40.0, 20.0)}), iter, 0)
    kernel = PatchKernel(6, 0.25)
    loaded = LoadedModel(Colour(), kernel, 48)  # type: ignore[arg-type]
    methods = _methods(task, {"ld": loaded}, LocalizeBenchmarkConfig())
    assert list(methods) == ["LD ld (center-sensitive)", "LD ld (uniform pooling)",
                             "NCC template matching (24 px patch)"]  # fmt: skip
    sensitive, uniform = methods["LD ld (center-sensitive)"], methods["LD ld (uniform pooling)"]
    assert sensitive.kernel == kernel and not sensitive.config.uniform
    assert uniform.kernel == PatchKernel(6) and uniform.config.uniform
    # A model without a center-sensitive kernel: one row, its own uniform kernel.
    plain = LoadedModel(Colour(), PatchKernel(6), 48)  # type: ignore[arg-type]
    methods = _methods(task, {"ld": plain}, LocalizeBenchmarkConfig())
    assert list(methods)[0] == "LD ld" and methods["LD ld"].kernel == PatchKernel(6)


def test_results_md_prints_each_summary_in_its_own_column():
    # Guards the table's columns: "median mm" printed mean_mm and "<= 10 mm" within_5mm under
    # reviewers' mutations; every value differs here, so each column shows its own.
    from localdisc.tasks.benchmark_localize import localize_markdown

    summary = {"n": 4, "mean_px": 1.04, "median_px": 2.04, "std_px": 9.0, "mean_mm": 3.04,
               "median_mm": 4.04, "within_5mm": 0.25, "within_10mm": 0.75}  # fmt: skip
    method = {"seconds_per_image": 0.5, "search_size": None, "landmarks": {"a": summary}}
    results = {
        "tasks": {"t": {"templates": ["t0"], "test_images": 4, "methods": {"m": method}}},
        "skipped": [],
    }
    lines = localize_markdown(results).splitlines()
    assert ("| method | landmark | mean px | median px | mean mm | median mm | <= 5 mm | "
            "<= 10 mm | s / image |") in lines  # fmt: skip
    assert "| m | a | 1.0 | 2.0 | 3.0 | 4.0 | 25% | 75% | 0.50 |" in lines


def test_a_seeded_run_counts_test_images_once_and_times_each_localisation(tmp_path, monkeypatch):
    # Guards the per-seed accounting of --seeds 2 --quick: 2 templates x 3 test images make 6
    # localisations per method; "test_images" is 3 (not 6), and seconds per image is each
    # method's time over the 6 (not over 3: twice the time). A fake clock: 1 s per call.
    import itertools
    from types import SimpleNamespace

    from localdisc.models import LDConfig, LDModel
    from localdisc.tasks import benchmark_localize

    ticks = itertools.count()
    clock = SimpleNamespace(perf_counter=lambda: float(next(ticks)))
    monkeypatch.setattr(benchmark_localize, "time", clock)
    monkeypatch.setattr(benchmark_localize, "landmark_figure", lambda *a, **k: None)
    # An X-ray model has no say on fundus images: NCC only, fast.
    LDModel(LDConfig(modality="xray", dim=8, clusters=4, width=4, depth=2)).save(tmp_path / "r")
    config = LocalizeBenchmarkConfig(models=[str(tmp_path / "r")], quick=True, seeds=2)
    results = run_localize_benchmark(config, tmp_path / "out", log=lambda m: None)
    task = results["tasks"]["synthetic_fundus"]
    assert task["test_images"] == 3 and len(set(task["templates"])) == 2
    (method,) = task["methods"].values()
    assert method["seconds_per_image"] == 1.0
    assert all(s["n"] == 6 for s in method["landmarks"].values())
    assert "; 3 test images" in (tmp_path / "out" / "results.md").read_text()


def test_a_stopped_benchmark_s_figures_are_no_images_of_the_folder_holding_it(
    tmp_path, monkeypatch
):
    # results.json was written at the end, its figures during the loop: a benchmark killed
    # after its first figure, its --out inside a folder of images, had them pooled (reviewer).
    import localdisc.tasks.benchmark_localize as bench
    from localdisc.data.datasets import folder_image_files

    real = bench.landmark_figure

    def stop_after_one(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "landmark_figure", stop_after_one)
    out = tmp_path / "data" / "bench"
    args = ["benchmark", "localize", "--quick", "--tasks", "synthetic_fundus", "--out", str(out)]
    CliRunner().invoke(app, args)
    assert list((out / "figures").glob("*.png"))
    assert json.loads((out / "results.json").read_text())["tasks"] == {}
    assert folder_image_files(tmp_path / "data") == []
