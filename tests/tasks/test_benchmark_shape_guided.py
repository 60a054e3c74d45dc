import json
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from localdisc.cli import app
from localdisc.data.datasets import Sample
from localdisc.eval.provenance import environment_line
from localdisc.tasks.benchmark_shape_guided import (
    TASKS,
    ShapeBenchmarkConfig,
    _kmeans_row,
    _mean_shape_rows,
    _stages,
    calibrate,
    expected_fraction,
    preset,
    prior_spec,
)


def test_quick_benchmark_has_every_row_and_resumes(tmp_path):
    out = tmp_path / "sg"
    args = ["benchmark", "shape-guided", "--quick", "--out", str(out),
            "--data-root", str(tmp_path / "none")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    rows = set(results["table"]["dice"])
    sato = next(r for r in rows if r.startswith("sato @ simulated fraction"))
    fraction = sato.split("(")[1].split(")")[0]
    for row in ("LD + simulated (A)", "LD + simulated (B)", "LD + simulated (refined)",
                "k-means (no prior)", "sato @ Otsu", "frangi @ Otsu", "line @ Otsu"):  # fmt: skip
        assert row in rows, rows
    assert any(r.startswith("sato @ simulated fraction") for r in rows)
    assert f"sato+line @ simulated fraction ({fraction})" in rows and "sato+line @ Otsu" not in rows
    taught = {r for r in rows if "taught network" in r}
    assert taught == {
        f"{network} @ simulated fraction ({fraction})"
        for painted in ("", ", trees painted")
        for network in (
            f"line-taught network{painted}",
            f"line-taught network{painted}, specks removed",
            f"line + line-taught network{painted} (mean rank)",
        )
    }, rows
    painted = json.loads(
        (out / "runs/synthetic_fundus/line-student-painted-2/seed-0/per_image.json").read_text()
    )
    assert painted["settings"]["student"]["painted"] == 2
    # Not its device: --device cpu and auto on a CPU trained every student again (reviewer).
    assert "device" not in painted["settings"]["student"]
    # Specks removed from each filter at each fraction, never from Otsu's masks.
    specks = {r for r in rows if r.endswith("specks removed")}
    fractions = {r for r in rows if " @ " in r and "fraction (" in r and "taught" not in r}
    assert specks == {f"{r}, specks removed" for r in fractions - specks}, rows
    assert not any("topology" in r for r in rows)  # a vessel tree's pieces are not anatomy
    # One column, the task's, for every row (a filter's row once named its own column).
    assert {run["task"] for run in results["runs"]} == {"synthetic_fundus"}
    columns = {column for cells in results["table"]["dice"].values() for column in cells}
    assert columns == {"synthetic_fundus (no labels)"}, columns
    cell = results["table"]["dice"]["LD + simulated (A)"]["synthetic_fundus (no labels)"]
    assert cell["n_images"] == 2 and 0 <= cell["mean"] <= 1
    assert "## auc" in (out / "results.md").read_text()
    assert "stage 1 3 steps, stage 2 3 steps at 48" in (out / "results.md").read_text()
    report = (out / "results.md").read_text()
    assert report.rstrip().endswith(environment_line(results["environment"]))
    # A second call reuses every run and evaluation.
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "reusing" in again.output
    assert json.loads((out / "results.json").read_text())["table"] == results["table"]
    # --student-steps 0, --speck-area 0: neither taught rows nor specks, the others as they were.
    plain = CliRunner().invoke(app, [*args, "--student-steps", "0", "--speck-area", "0"])
    assert plain.exit_code == 0, plain.output
    table = json.loads((out / "results.json").read_text())["table"]["dice"]
    assert set(table) == rows - taught - specks
    for row in set(table):
        assert table[row] == results["table"]["dice"][row], row
    # --student-painted 0: the painted network's rows alone are gone.
    unpainted = CliRunner().invoke(app, [*args, "--student-painted", "0"])
    assert unpainted.exit_code == 0, unpainted.output
    table = json.loads((out / "results.json").read_text())["table"]["dice"]
    assert set(table) == {r for r in rows if "trees painted" not in r}
    # Another teacher: rows named after it.
    joined = CliRunner().invoke(app, [*args, "--student-teacher", "sato+line"])
    assert joined.exit_code == 0, joined.output
    table = json.loads((out / "results.json").read_text())["table"]["dice"]
    assert f"sato+line-taught network @ simulated fraction ({fraction})" in table, set(table)
    bad = CliRunner().invoke(app, [*args, "--student-teacher", "sato+hessian"])
    assert bad.exit_code != 0 and "--student-teacher" in str(bad.exception)
    bad = CliRunner().invoke(app, [*args, "--student-painted", "-1"])
    assert bad.exit_code != 0 and "--student-painted" in str(bad.exception)
    bad = CliRunner().invoke(app, [*args, "--speck-area", "1.5"])
    assert bad.exit_code != 0 and "--speck-area" in str(bad.exception)


def test_a_student_that_diverges_is_left_out_and_listed(tmp_path, monkeypatch):
    """A filter-taught network that diverges (fit_pseudo_labels' DivergedError) stopped the
    whole benchmark with no table; now its rows are left out and listed, the others kept."""
    import localdisc.tasks.self_training as self_training
    from localdisc.errors import DivergedError

    real = self_training.train_student
    diverging = True

    def train_student(*args, **kwargs):
        if diverging and args[3].painted == 0:
            raise DivergedError("the training diverged by student step 1/2: ...")
        return real(*args, **kwargs)

    monkeypatch.setattr(self_training, "train_student", train_student)
    out = tmp_path / "sg"
    args = ["benchmark", "shape-guided", "--quick", "--out", str(out), "--student-painted", "1",
            "--data-root", str(tmp_path / "none")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    table = results["table"]["dice"]
    assert not any(row.startswith("line-taught network @") for row in table)
    assert any(row.startswith("line-taught network, trees painted @") for row in table)
    assert "LD + simulated (refined)" in table
    [skip] = results["skipped"]
    assert (skip["init"], skip["seed"], skip["rows"]) == ("line-taught network", 0, [])
    report = (out / "results.md").read_text()
    assert "- synthetic_fundus (line-taught network, seed 0): the training diverged" in report
    # A rerun lists it again from its record, not trained again; the record deleted, it trains.
    diverging = False
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    [skip] = json.loads((out / "results.json").read_text())["skipped"]
    assert "[recorded by an earlier call in " in skip["reason"]
    (out / "runs/synthetic_fundus/line-student/seed-0/diverged.json").unlink()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert not results["skipped"]
    assert any(row.startswith("line-taught network @") for row in results["table"]["dice"])


@pytest.mark.parametrize(
    ("task", "target", "shape"),
    [("synthetic_xray", "lung", "lungs"), ("synthetic_heart", "heart", "heart")],
)
def test_generated_radiographs_give_organ_rows_and_the_prior_settings_reach_training(
    tmp_path, task, target, shape
):
    out = tmp_path / "sg"
    result = CliRunner().invoke(app, [
        "benchmark", "shape-guided", "--quick", "--tasks", task, "--prior-weight",
        "10", "--prior-pose", "kept", "--crop-scale", "0.5", "1.0", "--out", str(out),
        "--data-root", str(tmp_path / "none"),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert {
        "LD + simulated (A)",
        "LD + simulated (A + topology)",
        "LD + simulated (refined + topology)",
        "mean shape of simulated (no image)",
    } <= set(results["table"]["dice"])
    settings = json.loads((out / "runs" / task / "ld-simulated" / "seed-0" / "eval" /
                           "per_image.json").read_text())["settings"]  # fmt: skip
    # "pieces": held to 4-connected pieces (before) is another evaluation, not reused.
    components = 2 if shape == "lungs" else 1
    assert settings["topology"] == {"components": components, "holes": False,
                                    "pieces": "8-connected"}  # fmt: skip
    # The test images by name: a data set completed after the run was scored on the old ones.
    tested = [r["image"] for r in json.loads((out / "runs" / task / "ld-simulated" / "seed-0" /
              "eval" / "per_image.json").read_text())["rows"]["A"]]  # fmt: skip
    assert settings["test_images"] == tested and len(tested) == 2
    assert {r["metrics"]["target"] for r in results["runs"]} == {target}
    run = out / "runs" / task / "ld-simulated" / "seed-0"
    config = json.loads((run / "config.json").read_text())["pretrain"]
    assert config["prior_weight"] == 10 and config["prior"] == f"simulated:{shape}"
    assert config["prior_pose"] == "kept" and config["crop_scale"] == [0.5, 1.0]


def test_seeds_together_are_an_ensemble_of_their_probability_maps(tmp_path):
    from localdisc.data.io import read_image
    from localdisc.tasks.benchmark_shape_guided import _test_set
    from localdisc.tasks.transfer import image_metrics

    out = tmp_path / "sg"
    args = ["benchmark", "shape-guided", "--quick", "--tasks", "synthetic_heart", "--seeds", "2",
            "--out", str(out), "--data-root", str(tmp_path / "none")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    table = json.loads((out / "results.json").read_text())["table"]["dice"]
    for output in ("A", "refined", "A + topology", "refined + topology"):
        cell = table[f"LD + simulated ({output}, 2 seeds together)"]["synthetic_heart (no labels)"]
        assert cell["n_seeds"] == 1 and cell["n_images"] == 2
    # Output A of the ensemble is the mean of the two runs' maps, scored like any output.
    runs = out / "runs" / "synthetic_heart" / "ld-simulated"
    sample = _test_set("synthetic_xray:4")[0]
    prob = np.mean([read_image(runs / f"seed-{s}" / "eval" / f"{sample.name}_A_prob.png")[0][..., 0]
                    for s in (0, 1)], axis=0)  # fmt: skip
    expected = image_metrics(prob, sample, "heart", 64)["dice"]
    rows = json.loads((runs / "ensemble" / "per_image.json").read_text())["rows"]["A"]
    assert rows[0]["image"] == sample.name and rows[0]["dice"] == pytest.approx(expected)


def test_a_seed_whose_refinement_diverges_keeps_its_a_and_b_rows_and_is_listed(
    tmp_path, monkeypatch
):
    """A refinement that diverges (fit_pseudo_labels' DivergedError) stopped the whole
    benchmark with no table, then left out all of that seed's rows of the prior (one cached
    evaluation) and of the ensemble; now only its refined rows are left out, and listed."""
    import localdisc.tasks.shape_guided as shape_guided
    from localdisc.errors import DivergedError

    real, refined = shape_guided.refine, []

    def refine(run_dir, *args, **kwargs):
        refined.append(run_dir.name)
        if run_dir.name == "seed-1":  # after a good checkpoint, which would diverge again
            (kwargs["checkpoint_dir"] / "step_00000001").mkdir(parents=True)
            raise DivergedError("the training diverged by refine step 2/2: ...")
        return real(run_dir, *args, **kwargs)

    monkeypatch.setattr(shape_guided, "refine", refine)
    out = tmp_path / "sg"
    args = ["benchmark", "shape-guided", "--quick", "--tasks", "synthetic_heart", "--seeds", "2",
            "--out", str(out), "--data-root", str(tmp_path / "none")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    table = results["table"]["dice"]
    column = "synthetic_heart (no labels)"
    for row in ("refined", "refined + topology"):
        assert table[f"LD + simulated ({row})"][column]["seed_ids"] == [0]
    for row in ("A", "B", "A + topology"):
        assert table[f"LD + simulated ({row})"][column]["seed_ids"] == [0, 1]
    assert table["k-means (no prior)"][column]["seed_ids"] == [0, 1]
    # Both seeds' A maps together; one refined seed is no ensemble.
    together = sorted(row for row in table if "seeds together" in row)
    assert together == ["LD + simulated (A + topology, 2 seeds together)",
                        "LD + simulated (A, 2 seeds together)"]  # fmt: skip
    ensemble = out / "runs/synthetic_heart/ld-simulated/ensemble-A/per_image.json"
    assert list(json.loads(ensemble.read_text())["rows"]) == ["A", "A + topology"]
    [skip] = results["skipped"]
    assert (skip["init"], skip["seed"]) == ("LD + simulated refinement", 1)
    assert skip["rows"] == ["LD + simulated (refined + topology)", "LD + simulated (refined)"]
    eval_dir = out / "runs/synthetic_heart/ld-simulated/seed-1/eval"
    assert f"[outputs A and B kept in {eval_dir / 'per_image.json'}; delete it" in skip["reason"]
    report = (out / "results.md").read_text()
    assert "- synthetic_heart (LD + simulated refinement, seed 1): the training diverged" in report
    assert (eval_dir / "synthetic_xray_test_000_B_mask.png").is_file()
    assert not (eval_dir / "refine-checkpoint").exists()
    # A rerun lists it again from the cached evaluation, without refining again.
    refined.clear()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert refined == []
    rerun = json.loads((out / "results.json").read_text())
    assert rerun["skipped"] == results["skipped"]
    assert rerun["table"]["dice"]["LD + simulated (B)"][column]["seed_ids"] == [0, 1]
    assert not (eval_dir / "diverged.json").exists()


def test_a_refinement_divergence_recorded_before_a_and_b_were_kept_is_still_listed(
    tmp_path, monkeypatch
):
    """An evaluation folder whose refinement diverged under the earlier scheme holds a
    diverged.json of its settings: it is listed at once (all that seed's rows of the prior),
    not refined again."""
    import localdisc.tasks.shape_guided as shape_guided

    out = tmp_path / "sg"
    args = ["benchmark", "shape-guided", "--quick", "--tasks", "synthetic_heart", "--seeds", "2",
            "--out", str(out), "--data-root", str(tmp_path / "none")]  # fmt: skip
    assert CliRunner().invoke(app, args).exit_code == 0
    eval_dir = out / "runs/synthetic_heart/ld-simulated/seed-1/eval"
    settings = json.loads((eval_dir / "per_image.json").read_text())["settings"]
    (eval_dir / "per_image.json").unlink()
    record = {"reason": "the training diverged by refine step 1/2", "key": settings}
    (eval_dir / "diverged.json").write_text(json.dumps(record))
    refined = []
    monkeypatch.setattr(shape_guided, "refine", lambda run_dir, *a, **k: refined.append(run_dir))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert refined == []
    [skip] = json.loads((out / "results.json").read_text())["skipped"]
    assert (skip["init"], skip["seed"]) == ("LD + simulated refinement", 1)
    assert "LD + simulated (A)" in skip["rows"]
    assert "[recorded by an earlier call in " in skip["reason"]


def test_refinement_sees_the_ld_run_scale_and_a_new_size_is_evaluated_again(tmp_path, monkeypatch):
    import localdisc.tasks.shape_guided as shape_guided

    sizes = []
    real_refine = shape_guided.refine

    def spy(run_dir, images, maps, config, **kwargs):
        sizes.append(config.size)
        return real_refine(run_dir, images, maps, config, **kwargs)

    monkeypatch.setattr(shape_guided, "refine", spy)
    # The run's scale stands apart from the quick eval size (64), so the default shows.
    monkeypatch.setattr(shape_guided, "run_size", lambda run_dir: 48)
    args = ["benchmark", "shape-guided", "--quick", "--tasks", "synthetic_heart", "--out",
            str(tmp_path / "sg"), "--data-root", str(tmp_path / "none")]  # fmt: skip
    for extra in ([], ["--refine-size", "32"], ["--refine-size", "32"]):
        result = CliRunner().invoke(app, args + extra)
        assert result.exit_code == 0, result.output
    assert sizes == [48, 32]  # the third call reuses the second's evaluation
    assert "refinement 2 steps at 32" in (tmp_path / "sg" / "results.md").read_text()


def test_the_report_says_how_long_each_stage_ran():
    # The report is of a preset config: stage 1's steps not given are the mode's (2000).
    budget = preset(
        ShapeBenchmarkConfig(stage1_seconds=60, stage2_seconds=240.5, stage2_steps=80_000)
    )
    assert (
        _stages(budget)
        == "stage 1 60 s (at most 2000 steps), stage 2 240.5 s (at most 80000 steps)"
    )
    given = preset(ShapeBenchmarkConfig(init="runs/stage1", stage2_steps=600))
    assert _stages(given) == "stage 1 from runs/stage1, stage 2 600 steps"


def test_quick_keeps_explicit_settings_and_refuses_what_it_cannot_honour(monkeypatch):
    """--quick replaced --max-test, --size, the step counts (all but a lower --student-steps)
    and --device whatever was typed: the settings given stay, those left out are the mode's, and
    a device other than the CPU is refused, not replaced unseen."""
    import localdisc.tasks.benchmark_shape_guided as bench
    from localdisc.errors import LocaldiscError

    names = ("size", "pool_size", "eval_size", "stage1_steps", "stage2_steps", "batch",
             "refine_steps", "student_steps", "max_test")  # fmt: skip

    def settings(config: ShapeBenchmarkConfig) -> tuple:
        return tuple(getattr(config, name) for name in names)

    # The defaults are those of old: the full protocol's and --quick's.
    assert settings(preset(ShapeBenchmarkConfig())) == (
        448, None, 512, 2000, 4000, 4, 600, 1200, None
    )  # fmt: skip
    quick = preset(ShapeBenchmarkConfig(quick=True))
    assert settings(quick) == (48, 64, 64, 3, 3, 1, 2, 2, 2) and quick.device == "cpu"
    assert quick.tasks == ["synthetic_fundus"] and preset(quick) == quick  # applied once or twice
    mine = preset(ShapeBenchmarkConfig(
        quick=True, size=64, eval_size=96, stage1_steps=4, stage2_steps=5, batch=2,
        refine_steps=6, student_steps=7, max_test=3, device="cpu",
    ))  # fmt: skip
    # A crop of one's own is read from images of its own x 8/7, as pre-training's (None).
    assert settings(mine) == (64, None, 96, 4, 5, 2, 6, 7, 3)
    assert preset(ShapeBenchmarkConfig(quick=True, pool_size=80)).pool_size == 80
    assert preset(ShapeBenchmarkConfig(size=224, batch=2)).batch == 2  # and without --quick
    with pytest.raises(LocaldiscError, match="--quick runs on the CPU: --device cuda is not"):
        preset(ShapeBenchmarkConfig(quick=True, device="cuda"))
    # Through the command: `--quick --max-test 3` tests 3 images, not 2.
    seen: list[ShapeBenchmarkConfig] = []

    def spy(config, out_dir, log):
        seen.append(preset(config))
        raise LocaldiscError("spied")

    monkeypatch.setattr(bench, "run_shape_benchmark", spy)
    args = ["benchmark", "shape-guided", "--quick", "--max-test", "3", "--stage2-steps", "4",
            "--out", "unused"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert str(result.exception) == "spied"
    assert (seen[0].max_test, seen[0].stage2_steps, seen[0].stage1_steps) == (3, 4, 3)


def test_missing_data_is_skipped_with_the_reason(tmp_path):
    result = CliRunner().invoke(app, [
        "benchmark", "shape-guided", "--quick", "--tasks", "drive", "--out", str(tmp_path / "o"),
        "--data-root", str(tmp_path / "none"),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    skipped = json.loads((tmp_path / "o" / "results.json").read_text())["skipped"]
    assert skipped[0]["task"] == "drive" and "none" in skipped[0]["reason"]


def test_prior_specs_point_at_the_shared_layout(tmp_path):
    drive = TASKS["drive"]
    assert prior_spec("octa", drive, tmp_path) == str(tmp_path / "priors" / "octa_vessels")
    assert prior_spec("other", drive, tmp_path) == f"stare:{tmp_path / 'STARE'}:vessels"
    assert prior_spec("simulated", TASKS["scr_lung"], None) == "simulated:lungs"


def test_calibration_keeps_the_ranking_and_the_mask():
    rng = np.random.default_rng(0)
    score = rng.random((20, 20)).astype(np.float32)
    mask = score > np.quantile(score, 0.8)
    prob = calibrate(score, mask)
    assert np.array_equal(prob > 0.5, mask)
    order = np.argsort(score.ravel())
    assert np.all(np.diff(prob.ravel()[order]) >= 0)


def test_expected_fraction_of_trees_is_relative_to_their_hull():
    bank = torch.zeros(1, 1, 20, 20)
    bank[0, 0, 2:18, 2] = 1
    bank[0, 0, 2, 2:18] = 1
    bank[0, 0, 2:18, 17] = 1  # a U of 46 pixels spanning a 16 x 16 hull
    assert abs(expected_fraction(bank, tubular=True) - 46 / 256) < 0.02
    assert abs(expected_fraction(bank, tubular=False) - 46 / 400) < 1e-6


def test_mean_shape_of_the_prior_is_the_same_mask_on_every_image(tmp_path):
    bank = torch.zeros(4, 1, 32, 32, dtype=torch.bool)
    for i in range(4):  # a square jittered by a pixel: its core is in every mask
        bank[i, 0, 8 + i % 2 : 24 + i % 2, 8:24] = True
    organ = np.zeros((64, 64), dtype=bool)
    organ[16:48, 16:48] = True
    samples = [
        Sample(f"im{i}", np.random.default_rng(i).random((64, 64, 1), dtype=np.float32),
               {"lung": organ}, np.ones((64, 64), dtype=bool), tmp_path / f"im{i}.png")
        for i in range(2)
    ]  # fmt: skip
    fraction = float(organ.mean())
    rows = _mean_shape_rows(samples, "lung", bank, fraction, ShapeBenchmarkConfig(eval_size=64))
    assert [r["image"] for r in rows] == ["im0", "im1"]
    assert all(r["dice"] > 0.9 for r in rows), rows
    assert rows[0]["dice"] == rows[1]["dice"]  # the image is not looked at
    shifted = torch.roll(bank, 12, dims=-1)
    rows = _mean_shape_rows(samples, "lung", shifted, fraction, ShapeBenchmarkConfig(eval_size=64))
    assert all(r["dice"] < 0.5 for r in rows), rows


def test_kmeans_embeds_at_the_scale_the_model_was_trained_at(tmp_path):
    from types import SimpleNamespace

    class Embedder:  # two features: the image and its negative
        def __init__(self) -> None:
            self.sizes: list[tuple[int, ...]] = []
            self.config = SimpleNamespace(modality="xray")  # the whole image: no ROI box

        def embed(self, image: np.ndarray) -> torch.Tensor:
            self.sizes.append(image.shape[:2])
            return torch.from_numpy(np.stack([image[..., 0], 1 - image[..., 0]]))

    organ = np.zeros((96, 96), dtype=bool)
    organ[:, :40] = True
    image = np.where(organ, 0.8, 0.2)[..., None].astype(np.float32)
    sample = Sample("im", image, {"lung": organ}, np.ones((96, 96), bool), tmp_path / "im.png")
    model = Embedder()
    config = ShapeBenchmarkConfig(eval_size=64, kmeans_clusters=2)
    row = _kmeans_row(model, sample, "lung", config, fraction=0.4, seed=0, size=48)
    assert model.sizes == [(48, 48)]  # the run's pool size, not eval_size or the image's
    assert row["dice"] > 0.95


def test_kmeans_embeds_a_fundus_image_s_roi_box_as_outputs_a_and_b_do(tmp_path):
    # The k-means row saw the whole frame after segment() took the ROI box (reviewer).
    from types import SimpleNamespace

    from localdisc.data.preprocess import resize_image
    from localdisc.data.synthetic import synthetic_fundus
    from localdisc.tasks.shape_guided import seen_box

    seen = []

    class Embedder:
        config = SimpleNamespace(modality="fundus")

        def embed(self, image: np.ndarray) -> torch.Tensor:
            seen.append(image)
            return torch.from_numpy(np.stack([image[..., 1], 1 - image[..., 1]]))

    eye = synthetic_fundus(48, seed=1)
    image = np.zeros((48, 120, 3), np.float32)
    image[:, 64:112] = eye.image
    fov = np.zeros((48, 120), bool)
    fov[:, 64:112] = eye.fov
    vessels = np.zeros((48, 120), bool)
    vessels[:, 64:112] = eye.vessels
    sample = Sample("eye", image, {"vessels": vessels}, fov, tmp_path / "eye.png")
    config = ShapeBenchmarkConfig(eval_size=48, kmeans_clusters=2)
    _kmeans_row(Embedder(), sample, "vessels", config, fraction=0.1, seed=0, size=32)
    y0, y1, x0, x1 = seen_box(image, "fundus")
    assert x0 > 40 and np.allclose(seen[0], resize_image(image[y0:y1, x0:x1], 32))


def test_kmeans_is_evaluated_again_at_another_prior_fraction(tmp_path, monkeypatch):
    """The k-means row picks the cluster nearest the priors' fraction: a rerun whose priors give
    another fraction used to report the cached row of the old one."""
    import localdisc.tasks.benchmark_shape_guided as bench

    seen = []

    def spy(model, samples, target, config, fraction, seed, size):
        seen.append(fraction)
        return [{"image": s.name, "dice": fraction} for s in samples]

    monkeypatch.setattr(bench, "_kmeans_rows", spy)
    config = ShapeBenchmarkConfig(quick=True, refine_steps=0, student_steps=0,
                                  student_painted=0, speck_area=0)  # fmt: skip
    rows = {}
    for fraction in (0.05, 0.3):
        monkeypatch.setattr(bench, "expected_fraction", lambda bank, tubular, spec, f=fraction: f)
        results = bench.run_shape_benchmark(config, tmp_path / "out", log=lambda m: None)
        rows[fraction] = next(r for r in results["runs"] if r["init"] == "k-means (no prior)")
    assert seen == [0.05, 0.3]
    assert rows[0.3]["metrics"]["per_image"][0]["dice"] == 0.3


def test_a_prior_that_no_task_has_is_named_not_left_out(tmp_path):
    """A misspelt --priors, or one no task asked for has, used to give an empty table and exit
    0, with no word of why."""
    from localdisc.errors import LocaldiscError
    from localdisc.tasks.benchmark_shape_guided import run_shape_benchmark

    with pytest.raises(LocaldiscError, match="unknown prior.*simulted.*known: octa"):
        run_shape_benchmark(ShapeBenchmarkConfig(quick=True, priors=["simulted"]), tmp_path)
    config = ShapeBenchmarkConfig(quick=True, priors=["octa"])  # synthetic_fundus: simulated
    results = run_shape_benchmark(config, tmp_path, log=lambda m: None)
    assert not results["runs"]
    assert results["skipped"] == [{
        "task": "synthetic_fundus", "init": "all",
        "reason": "no prior of octa fits it; its priors: simulated",
    }]  # fmt: skip
    assert "no prior of octa fits it" in (tmp_path / "results.md").read_text()


def test_a_runs_own_prior_bank_is_in_the_evaluation_cache_key(tmp_path):
    """Segmentation now votes with the masks a kept-pose run trained against (its prior count
    and seed): evaluations cached when every run voted with 200 masks from seed 0 are computed
    again where that differs, and kept where it does not."""
    from localdisc.tasks.benchmark_shape_guided import _prior_bank_key

    def run(name, **pretrain):
        folder = tmp_path / name
        folder.mkdir()
        settings = {"prior": "simulated:lungs", "prior_pose": "kept", "seed": 0, **pretrain}
        (folder / "config.json").write_text(json.dumps({"pretrain": settings}))
        return folder

    assert _prior_bank_key(run("seed0")) == {}
    assert _prior_bank_key(run("seed1", seed=1)) == {"prior_bank": {"count": 200, "seed": 1}}
    assert _prior_bank_key(run("small", prior_count=8)) == {"prior_bank": {"count": 8, "seed": 0}}
    assert _prior_bank_key(run("free", seed=1, prior_pose="free")) == {}  # no votes
    assert _prior_bank_key(run("folder", seed=1, prior=str(tmp_path))) == {}  # no seed to pick


def test_negative_step_counts_and_no_seed_are_refused(tmp_path):
    """A negative --refine-steps or --student-steps gave rows of networks that never trained."""
    from localdisc.errors import LocaldiscError
    from localdisc.tasks.benchmark_shape_guided import run_shape_benchmark

    for option, overrides in (("--refine-steps", {"refine_steps": -1}),
                              ("--student-steps", {"student_steps": -5}),
                              ("--seeds", {"seeds": 0}),
                              ("--max-test", {"max_test": -1}),  # dropped the last image
                              ("--max-test", {"max_test": 0}),  # stopped after pre-training
                              ("--refine-size", {"refine_size": 0}),
                              ("--stage2-steps", {"stage2_steps": -1})):  # fmt: skip
        config = ShapeBenchmarkConfig(tasks=["synthetic_fundus"], **overrides)
        with pytest.raises(LocaldiscError, match=f"{option} must be at least"):
            run_shape_benchmark(config, tmp_path / "out", log=lambda m: None)
    # Stage 2's budget was refused by its first training, after stage 1.
    for budget in (float("nan"), 0.0, float("inf")):
        config = ShapeBenchmarkConfig(tasks=["synthetic_fundus"], stage2_seconds=budget)
        with pytest.raises(LocaldiscError, match="--stage2-seconds must be > 0 seconds"):
            run_shape_benchmark(config, tmp_path / "out", log=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_no_stage_2_steps_is_refused_before_stage_1_pre_trains(tmp_path, monkeypatch):
    """Every LD row trains a prior in stage 2: --stage2-steps 0 was refused by that training,
    after stage 1 had pre-trained (hours at the defaults), also with a stage-2 time budget."""
    import localdisc.tasks.benchmark_shape_guided as bench
    from localdisc.errors import LocaldiscError

    def pretrain_preset(settings, run_dir, log):
        raise AssertionError(f"pre-trained {run_dir} before --stage2-steps 0 was refused")

    monkeypatch.setattr(bench, "pretrain_preset", pretrain_preset)
    for budget in (None, 60.0):
        config = ShapeBenchmarkConfig(quick=True, stage2_steps=0, stage2_seconds=budget)
        with pytest.raises(LocaldiscError, match="--stage2-steps must be at least 1, not 0"):
            bench.run_shape_benchmark(config, tmp_path / "out", log=lambda m: None)
    assert not (tmp_path / "out").exists()  # no stage1-seed-0 folder


def test_a_stopped_refinement_continues_from_its_checkpoint_in_the_run(tmp_path, monkeypatch):
    """`benchmark shape-guided` refined without a checkpoint: stopped in its refinement, the
    rerun trained it from step 0. It now keeps one in RUN/eval/refine-checkpoint, as
    `shape-guided segment` does, continued by the rerun and removed once the maps are written."""
    import os
    import signal

    import localdisc.tasks.benchmark_shape_guided as bench
    from localdisc.engine import pseudo_label
    from localdisc.tasks.benchmark_shape_guided import run_shape_benchmark

    real, taken, stop_at = pseudo_label.augment, [], [1]

    def augment(*args, **kwargs):
        taken.append(len(taken) + 1)
        if taken[-1] == stop_at[0]:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    # Quick: 2 refinement steps. An organ: no filters' rows, which take a while.
    config = ShapeBenchmarkConfig(quick=True, tasks=["synthetic_heart"])
    from torch.backends import cudnn

    from localdisc.tasks import shape_guided

    real_segment, flags = shape_guided.segment, set()

    def segment(*args, **kwargs):  # the maps, whose pseudo-labels the checkpoint hashes
        flags.add((cudnn.deterministic, cudnn.benchmark))
        return real_segment(*args, **kwargs)

    monkeypatch.setattr(shape_guided, "segment", segment)
    out, logs = tmp_path / "out", []
    monkeypatch.setattr(pseudo_label, "augment", augment)
    with pytest.raises(KeyboardInterrupt, match="after refine step 1/2"):
        run_shape_benchmark(config, out, log=logs.append)
    kept = [p.relative_to(out).as_posix() for p in out.rglob("refine-checkpoint")]
    assert kept == ["runs/synthetic_heart/ld-simulated/seed-0/eval/refine-checkpoint"]
    taken.clear()
    stop_at[0] = 0  # no signal now
    run_shape_benchmark(config, out, log=logs.append)
    assert taken == [1]  # step 2 only
    assert any("continuing the interrupted training" in line for line in logs)
    assert not list(out.rglob("refine-checkpoint"))
    # The same maps as a refinement never stopped (the evaluation computed again).
    eval_dir = out / kept[0].removesuffix("/refine-checkpoint")
    maps = {p.name: p.read_bytes() for p in eval_dir.glob("*_refined_prob.png")}
    (eval_dir / "per_image.json").unlink()
    run_shape_benchmark(config, out, log=logs.append)
    assert maps and maps == {p.name: p.read_bytes() for p in eval_dir.glob("*_refined_prob.png")}
    assert flags == {(True, False)}  # deterministic cuDNN (on a GPU)
    # Evaluated again without a refinement: a stopped one's checkpoint is no use now, and goes.
    (eval_dir / "refine-checkpoint" / "step_00000001").mkdir(parents=True)
    task = TASKS["synthetic_heart"]
    test = bench._test_set(bench._spec(task, None, quick=True))
    no_refinement = bench.replace(bench.preset(config), refine_steps=0)
    rows = bench._ld_rows(eval_dir.parent, [test[0]], "heart", no_refinement, None, logs.append)
    assert "refined" not in rows and not (eval_dir / "refine-checkpoint").exists()


def test_from_is_checked_against_every_task_before_the_first(tmp_path, monkeypatch):
    """--from a fundus run with a fundus and an X-ray task: the X-ray task's refusal came after
    the whole fundus task (stage 2, evaluation, k-means, filters, student networks)."""
    import localdisc.tasks.benchmark_shape_guided as shape
    from localdisc.errors import LocaldiscError
    from localdisc.models import LDConfig, LDModel

    def no_task(*args, **kwargs):
        raise AssertionError("a task ran before --from was checked against every task")

    monkeypatch.setattr(shape, "_run_task", no_task)
    run = tmp_path / "fundus-run"
    LDModel(LDConfig("fundus")).save(run)
    tasks = ["synthetic_fundus", "synthetic_xray"]
    config = ShapeBenchmarkConfig(quick=True, tasks=tasks, init=str(run))
    message = f"--from {run}: task synthetic_xray cannot start from this run: its modality is "
    with pytest.raises(LocaldiscError, match=re.escape(f"{message}'fundus', not 'xray'")):
        shape.run_shape_benchmark(config, tmp_path / "out", log=lambda m: None)
    typo = replace(config, init=str(tmp_path / "no-such-run"))
    with pytest.raises(LocaldiscError, match="no-such-run: no such folder"):
        shape.run_shape_benchmark(typo, tmp_path / "out", log=lambda m: None)


def test_a_seed_whose_pre_training_diverges_is_left_out_and_listed(tmp_path, monkeypatch):
    import localdisc.tasks.benchmark_shape_guided as bench
    from localdisc.errors import DivergedError

    real = bench.pretrain_preset
    diverging: set[str] = set()

    def pretrain_preset(settings, run_dir, log):
        if run_dir.relative_to(out / "runs" / "synthetic_heart").as_posix() in diverging:
            raise DivergedError(f"3 non-finite losses in a row at step 2; stopped ({run_dir})")
        return real(settings, run_dir, log)

    monkeypatch.setattr(bench, "pretrain_preset", pretrain_preset)
    out = tmp_path / "sg"
    args = ["benchmark", "shape-guided", "--quick", "--tasks", "synthetic_heart", "--seeds", "3",
            "--out", str(out), "--data-root", str(tmp_path / "none")]  # fmt: skip
    column = "synthetic_heart (no labels)"

    def run() -> tuple[dict, str]:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output  # it stopped the whole benchmark
        return json.loads((out / "results.json").read_text()), (out / "results.md").read_text()

    # Seed 1's stage 2 diverges: its rows' cells hold 2 of 3 seeds, the ensemble is of those 2.
    diverging.add("ld-simulated/seed-1")
    results, report = run()
    table = results["table"]["dice"]
    cell = table["LD + simulated (A)"][column]
    assert (cell["n_seeds"], cell["n_runs"], cell["seed_ids"]) == (2, 3, [0, 2])
    assert table["k-means (no prior)"][column]["n_seeds"] == 3
    assert table["LD + simulated (A + topology)"][column]["n_runs"] == 3
    assert "LD + simulated (A, 2 seeds together)" in table
    assert not any("3 seeds together" in row for row in table)
    ensemble = json.loads((out / "runs/synthetic_heart/ld-simulated/ensemble/per_image.json")
                          .read_text())["settings"]  # fmt: skip
    assert ensemble["seeds"] == 2 and ensemble["seed_dirs"] == ["seed-0", "seed-2"]
    [skip] = results["skipped"]
    assert (skip["init"], skip["seed"]) == ("LD + simulated", 1)
    assert "LD + simulated (A)" in skip["rows"] and "k-means (no prior)" not in skip["rows"]
    assert "- synthetic_heart (LD + simulated, seed 1): 3 non-finite losses" in report
    assert "(n=2)" in report
    # Seed 2's stage 1 diverges too: no k-means of it, no prior's run, and one seed is no ensemble.
    diverging.add("stage1-seed-2")
    results, report = run()
    table = results["table"]["dice"]
    assert table["k-means (no prior)"][column]["seed_ids"] == [0, 1]
    assert table["k-means (no prior)"][column]["n_runs"] == 3
    cell = table["LD + simulated (A)"][column]
    assert (cell["n_seeds"], cell["n_runs"]) == (1, 3)
    assert not any("seeds together" in row for row in table)
    assert [(s["init"], s["seed"]) for s in results["skipped"]] == [
        ("LD + simulated", 1),
        ("LD stage 1", 2),
    ]
    # A seed back to health is run and tabulated: the whole table again.
    diverging.clear()
    results, _ = run()
    assert not results["skipped"]
    assert results["table"]["dice"]["LD + simulated (A)"][column]["n_seeds"] == 3
    assert "LD + simulated (A, 3 seeds together)" in results["table"]["dice"]


def test_calibration_keeps_scores_near_zero_apart():
    # The outside scores were shifted down by 0.001 and clipped: 0, 0.0005 and 0.001 all became
    # 0, ties that lowered the AUC (reviewer).
    score = np.array([0.0, 0.0005, 0.001, 0.5, 0.6, 0.61, 1.0], np.float32)
    mask = score >= 0.6
    prob = calibrate(score, mask)
    assert np.all(np.diff(prob) > 0)
    assert prob[~mask].max() <= 0.499 and prob[mask].min() >= 0.501


def _fake_ld(monkeypatch, levels: dict[str, float]) -> None:
    """The shape-guided benchmark with its LD runs faked, no training: stage 1 and 2 are empty
    folders, k-means a constant row, and a run's evaluation writes output A's maps, the left half
    of each image at ``levels[seed folder]`` (read when it evaluates), as _ld_rows."""
    import localdisc.tasks.benchmark_shape_guided as bench
    from localdisc.data.io import write_png
    from localdisc.tasks import shape_guided
    from localdisc.tasks.predict import prob_png

    def pretrain_preset(settings, run_dir, log):
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir

    def ld_rows(run_dir, samples, target, config, topology, log):
        rows = []
        for s in samples:
            prob = np.zeros(s.fov.shape, np.float32)
            prob[:, : prob.shape[1] // 2] = levels[run_dir.name]
            write_png(run_dir / "eval" / f"{s.name}_A_prob.png", prob_png(prob))
            rows.append(bench._metrics(prob, s, target, config.eval_size))
        return {"A": rows}

    monkeypatch.setattr(bench, "pretrain_preset", pretrain_preset)
    monkeypatch.setattr(bench.LDModel, "from_pretrained", staticmethod(lambda *a, **k: None))
    monkeypatch.setattr(bench, "weights_sha256", lambda run: "0" * 64)
    monkeypatch.setattr(shape_guided, "run_size", lambda run_dir: 48)
    monkeypatch.setattr(bench, "_prior_bank_key", lambda run_dir: {})
    monkeypatch.setattr(bench, "_kmeans_rows", lambda model, samples, *a: [
        {"image": s.name, "dice": 0.5} for s in samples])  # fmt: skip
    monkeypatch.setattr(bench, "_ld_rows", ld_rows)


#: Two seeds, output A alone and the organ task's few baselines: fast with :func:`_fake_ld`.
FAKE_LD_CONFIG = ShapeBenchmarkConfig(quick=True, tasks=["synthetic_heart"], seeds=2,
                                      refine_steps=0, student_steps=0)  # fmt: skip


def test_seeds_together_are_averaged_again_when_a_seed_is_made_again(tmp_path, monkeypatch):
    """The ensemble's cache key held the settings and the seed count, nothing of the runs: a
    seed's LD run made again (stage 1 made again, its folder deleted as the refusal says) left
    "N seeds together" the mean of the deleted run's maps (reviewer)."""
    import localdisc.tasks.benchmark_shape_guided as bench
    from localdisc.data.io import read_image
    from localdisc.tasks.transfer import image_metrics

    levels = {"seed-0": 0.8, "seed-1": 0.8}
    _fake_ld(monkeypatch, levels)
    out = tmp_path / "sg"
    runs = out / "runs" / "synthetic_heart" / "ld-simulated"

    def ensemble() -> list[float]:
        results = bench.run_shape_benchmark(FAKE_LD_CONFIG, out, log=lambda m: None)
        found = [r for r in results["runs"] if r["init"] == "LD + simulated (A, 2 seeds together)"]
        return [row["dice"] for row in found[0]["metrics"]["per_image"]]

    first = ensemble()
    levels["seed-1"] = 0.0  # made again, other maps: the mean falls below 0.5
    shutil.rmtree(runs / "seed-1")
    again = ensemble()
    samples = bench._test_set("synthetic_xray:4")
    expected = []
    for i in range(2):
        name = samples[i].name
        maps = [read_image(runs / s / "eval" / f"{name}_A_prob.png")[0][..., 0]
                for s in ("seed-0", "seed-1")]  # fmt: skip
        expected.append(image_metrics(np.mean(maps, axis=0), samples[i], "heart", 64)["dice"])
    assert again == pytest.approx(expected) and again != pytest.approx(first)
    # The same maps again: reused, not averaged again.
    monkeypatch.setattr(bench, "_ensemble_rows", lambda *a: pytest.fail("averaged again"))
    assert ensemble() == again


def test_reused_rows_name_the_commit_they_were_made_at(tmp_path, monkeypatch):
    """Every row of a resumed benchmark read from its cache was credited to this call's commit
    alone: no cached evaluation kept where it was made, as the transfer benchmark's runs do
    (reviewer)."""
    import localdisc.tasks.benchmark_shape_guided as bench
    from localdisc.eval import provenance

    levels = {"seed-0": 0.8, "seed-1": 0.8}
    _fake_ld(monkeypatch, levels)
    out = tmp_path / "sg"

    def run(commit: str) -> tuple[dict, str]:
        env = {"localdisc": "0.1.0", "commit": commit * 40, "dirty": False, "torch": "2.5.0"}
        monkeypatch.setattr(provenance, "environment", lambda *a, **k: env)
        results = bench.run_shape_benchmark(FAKE_LD_CONFIG, out, log=lambda m: None)
        return results, (out / "results.md").read_text()

    results, report = run("a")
    assert "made at" not in report  # all this call's
    assert {r["metrics"]["environment"]["commit"][0] for r in results["runs"]} == {"a"}
    # Seed 1's run made again at another commit: it and the ensemble are that commit's rows.
    levels["seed-1"] = 0.0
    shutil.rmtree(out / "runs" / "synthetic_heart" / "ld-simulated" / "seed-1")
    results, report = run("b")
    made = {(r["init"], r["seed"]): r["metrics"]["environment"]["commit"][0]
            for r in results["runs"]}  # fmt: skip
    remade = {k for k, commit in made.items() if commit == "b"}
    assert remade == {("LD + simulated (A)", 1), ("LD + simulated (A, 2 seeds together)", 0),
                      ("LD + simulated (A + topology, 2 seeds together)", 0)}  # fmt: skip
    n = len(made) - len(remade)
    assert (
        f"Runs made at: commit aaaaaaa ({n} runs); commit bbbbbbb (3 runs). Earlier calls' runs "
        "are reused; the environment is this call's."
    ) in report.splitlines()
    # An evaluation cached before rows kept their environment says so.
    path = out / "runs" / "synthetic_heart" / "kmeans" / "seed-0" / "per_image.json"
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in saved.items() if k != "environment"}))
    _, report = run("b")
    assert (
        f"made at: not recorded (1 run); commit aaaaaaa ({n - 1} runs); commit bbbbbbb (3 runs)."
        in report
    )


def test_seeds_together_stay_reused_when_a_seed_s_maps_are_deleted(tmp_path, monkeypatch):
    """The ensemble's key hashed the maps it averages: with a seed's maps deleted (RUN/eval
    cleaned to save space, its cached evaluation kept) the key changed, and the rerun averaged
    again and failed on the first missing file, where the key of settings alone reused the rows
    (reviewer). Now the maps count by the SHA-256 their evaluation recorded; averaging again
    without them names them and what to delete."""
    import localdisc.tasks.benchmark_shape_guided as bench
    from localdisc.errors import LocaldiscError

    _fake_ld(monkeypatch, {"seed-0": 0.8, "seed-1": 0.3})
    out = tmp_path / "sg"
    runs = out / "runs" / "synthetic_heart" / "ld-simulated"
    row = "LD + simulated (A, 2 seeds together)"

    def ensemble() -> list[dict]:
        results = bench.run_shape_benchmark(FAKE_LD_CONFIG, out, log=lambda m: None)
        return next(r for r in results["runs"] if r["init"] == row)["metrics"]["per_image"]

    first = ensemble()
    deleted = sorted((runs / "seed-1" / "eval").glob("*_prob.png"))
    assert len(deleted) == 2
    for path in deleted:
        path.unlink()
    real_average = bench._ensemble_rows
    monkeypatch.setattr(bench, "_ensemble_rows", lambda *a: pytest.fail("averaged again"))
    assert ensemble() == first
    # Averaged again (its own record deleted), the maps are needed: named, with what to do.
    monkeypatch.setattr(bench, "_ensemble_rows", real_average)
    (runs / "ensemble" / "per_image.json").unlink()
    with pytest.raises(LocaldiscError) as error:
        ensemble()
    message = str(error.value)
    assert "2 of them are missing" in message and str(deleted[0]) in message, message
    assert f"delete {runs / 'seed-1' / 'eval' / 'per_image.json'} for" in message, message
    # As it says: seed 1 evaluated again writes its maps, and the mean is as before.
    (runs / "seed-1" / "eval" / "per_image.json").unlink()
    assert ensemble() == first
    assert all(path.is_file() for path in deleted)


def test_an_ld_run_s_evaluation_is_made_again_when_its_weights_change(tmp_path, monkeypatch):
    """A run's cached evaluation (RUN/eval) was keyed by settings alone: weights replaced in the
    run's folder (a checkpoint copied over model.safetensors) kept the old weights' rows
    (reviewer). Now it is keyed by a SHA-256 of the weights too."""
    import localdisc.tasks.benchmark_shape_guided as bench
    from localdisc.tasks.presets import weights_sha256

    _fake_ld(monkeypatch, {"seed-0": 0.8, "seed-1": 0.8})
    monkeypatch.setattr(bench, "weights_sha256", weights_sha256)

    def pretrain_preset(settings, run_dir, log):
        run_dir.mkdir(parents=True, exist_ok=True)
        weights = run_dir / "model.safetensors"
        if not weights.is_file():
            weights.write_bytes(f"weights of {run_dir}".encode())
        return run_dir

    monkeypatch.setattr(bench, "pretrain_preset", pretrain_preset)
    fake, evaluated = bench._ld_rows, []

    def ld_rows(run_dir, *args):
        evaluated.append(run_dir.name)
        return fake(run_dir, *args)

    monkeypatch.setattr(bench, "_ld_rows", ld_rows)
    out = tmp_path / "sg"
    bench.run_shape_benchmark(FAKE_LD_CONFIG, out, log=lambda m: None)
    assert evaluated == ["seed-0", "seed-1"]
    bench.run_shape_benchmark(FAKE_LD_CONFIG, out, log=lambda m: None)
    assert evaluated == ["seed-0", "seed-1"]  # the same weights: reused
    weights = out / "runs" / "synthetic_heart" / "ld-simulated" / "seed-1" / "model.safetensors"
    weights.write_bytes(b"other weights")
    bench.run_shape_benchmark(FAKE_LD_CONFIG, out, log=lambda m: None)
    assert evaluated == ["seed-0", "seed-1", "seed-1"]
