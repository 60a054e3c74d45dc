import json
import math
from pathlib import Path

import numpy as np
import pytest

from localdisc.errors import LocaldiscError
from localdisc.eval.report import collect, jsonable, markdown_table


def run(task, init, seed, dice_per_image, frozen=None, **other):
    def metrics(values):
        mean = sum(values) / len(values)
        return {
            "summary": {"dice": {"mean": mean, "std": 0.0, "n": len(values)}},
            "per_image": [{"image": f"i{k}", "dice": v} for k, v in enumerate(values)],
        }

    m = metrics(dice_per_image)
    if frozen is not None:
        m["frozen"] = metrics(frozen)
    for key, values in other.items():  # recalibrated= or as_trained=
        m[key] = metrics(values)
    return {"task": task, "init": init, "labels": "2", "seed": seed, "metrics": m}


def test_cells_are_means_over_seeds_and_images_pooled():
    results = {
        "runs": [
            run("drive", "random", 0, [0.5, 0.7]),  # seed mean 0.6
            run("drive", "random", 1, [0.8, 0.8]),  # seed mean 0.8
            run("drive", "ld", 0, [0.9, 0.9], frozen=[0.1, 0.3]),
        ]
    }
    table = collect(results)["dice"]
    cell = table["random"]["drive (2)"]
    assert math.isclose(cell["mean"], 0.7) and math.isclose(cell["std"], 0.1)
    assert math.isclose(cell["image_mean"], 0.7) and cell["n_images"] == 4
    assert math.isclose(table["ld (frozen)"]["drive (2)"]["mean"], 0.2)
    text = markdown_table(table)
    # One seed has no spread ("+- 0.000" read as seeds that agreed); two, numpy's (ddof 0).
    assert "| ld | **0.900** |" in text
    assert "| random | 0.700 +- 0.100 |" in text
    assert "| ld | **0.900 +- 0.000** |" in markdown_table(table, pooled=True)  # two images
    assert list(table) == ["random", "ld (frozen)", "ld"]


def test_recalibrated_batch_norm_has_its_row_whichever_model_was_saved():
    paper_saved = run("drive", "ld", 0, [0.6], frozen=[0.5], recalibrated=[0.7])
    recal_saved = run("drive", "ld", 1, [0.7], frozen=[0.5], as_trained=[0.6])
    for one in (paper_saved, recal_saved):
        table = collect({"runs": [one]})["dice"]
        assert list(table) == ["ld (frozen)", "ld", "ld (BN recalibrated)"]
        assert math.isclose(table["ld"]["drive (2)"]["mean"], 0.6)
        assert math.isclose(table["ld (BN recalibrated)"]["drive (2)"]["mean"], 0.7)


def test_missing_cells_and_nan_values_show_as_dashes():
    results = {"runs": [run("drive", "random", 0, [float("nan")]), run("stare", "ld", 0, [0.5])]}
    text = markdown_table(collect(results)["dice"])
    assert "| random | - | - |" in text
    assert "| ld | - | **0.500** |" in text


def test_cells_that_print_the_same_are_both_bold():
    results = {"runs": [run("drive", "a", 0, [0.9004]), run("drive", "b", 0, [0.9001])]}
    text = markdown_table(collect(results)["dice"])
    assert "| a | **0.900** |" in text and "| b | **0.900** |" in text


def test_bar_chart_draws_names_with_dollar_signs(tmp_path):
    # Matplotlib reads text between two $ as mathtext: a run folder named so must not break it.
    from localdisc.eval.report import dice_bars

    results = {"runs": [run("drive", "ld_$a_b_c$", 0, [0.5]), run("drive", "random", 0, [0.6])]}
    path = dice_bars(collect(results)["dice"], tmp_path / "bars.png")
    assert path.stat().st_size > 0


def test_the_report_ends_with_the_environment_it_ran_in(tmp_path):
    import json

    from localdisc.eval.provenance import environment, environment_line
    from localdisc.eval.report import write_report

    env = environment("cpu")
    write_report({"runs": [], "skipped": [], "environment": env}, tmp_path)
    assert (tmp_path / "results.md").read_text().rstrip().splitlines()[-1] == (
        f"Environment: {environment_line(env)}"
    )
    assert json.loads((tmp_path / "results.json").read_text())["environment"] == env


def test_a_cell_over_fewer_seeds_says_so_and_is_not_bold_beside_whole_ones():
    """A seed with NaN, or a reused older metrics.json without the metric, was left out of the
    cell's mean silently (the header still saying every seed) and could be bold."""
    older = run("drive", "ld", 2, [0.99])
    del older["metrics"]["summary"]["dice"]  # written before the metric existed
    for lost in (run("drive", "ld", 2, [float("nan")]), older):
        results = {
            "runs": [run("drive", "random", s, [d]) for s, d in enumerate([0.70, 0.71, 0.72])]
            + [run("drive", "ld", 0, [0.80]), run("drive", "ld", 1, [0.79]), lost]
        }
        cell = collect(results)["dice"]["ld"]["drive (2)"]
        assert (cell["n_seeds"], cell["n_runs"]) == (2, 3)
        for pooled in (False, True):
            text = markdown_table(collect(results)["dice"], pooled=pooled)
            assert "| ld | 0.795 +- 0.005 (n=2) |" in text, text
            assert "| random | **0.710 +- 0.008** |" in text
    # Alone in its column, a partial cell is the best there is (and still says n).
    only = collect({"runs": [run("drive", "ld", 0, [0.5]), run("drive", "ld", 1, [float("nan")])]})
    assert "| ld | **0.500** (n=1) |" in markdown_table(only["dice"])
    # A cell of an older results.json (no n_runs) prints as it did.
    old_cell = {k: v for k, v in cell.items() if k != "n_runs"}
    assert markdown_table({"ld": {"drive (2)": old_cell}}).endswith("| **0.795 +- 0.005** |")


def _env(commit, dirty):
    return {"localdisc": "0.1.0", "commit": commit, "dirty": dirty, "torch": "2.5.0"}


def test_reused_runs_made_at_other_commits_are_named(tmp_path):
    """results.md named only this call's commit, clean, beside numbers reused from runs made at
    another commit on a modified tree."""
    from localdisc.eval.report import write_report

    def made(seed, env=None, **more):
        one = {**run("drive", "ld", seed, [0.8]), "run_dir": str(tmp_path / "none")}
        one["metrics"].update({"environment": env} if env else {}, **more)
        return one

    old, now = _env("a" * 40, True), _env("b" * 40, False)
    resumed = made(2, old, resumed=[{**now, "continued_from": "epoch 3"}])
    runs = [made(0, old), made(1, now), resumed, made(3, now)]
    write_report({"runs": runs, "environment": now}, tmp_path)
    lines = (tmp_path / "results.md").read_text().splitlines()
    assert (
        "Runs made at: commit aaaaaaa, modified (1 run); commit bbbbbbb (2 runs); commit "
        "aaaaaaa, modified then commit bbbbbbb (1 run). Earlier calls' runs are reused; the "
        "environment is this call's."
    ) in lines
    assert lines[-1].startswith("Environment: localdisc 0.1.0 (commit bbbbbbb), torch")
    # All made as this call, or none recording where (shape-guided rows of old caches): none.
    for runs in ([made(0, now), made(1, now)], [made(0)]):
        write_report({"runs": runs, "environment": now}, tmp_path)
        assert "made at" not in (tmp_path / "results.md").read_text()


def test_the_prediction_figure_has_a_row_per_label_budget(tmp_path, monkeypatch):
    """Masks were keyed by task only: with labels 2 and all, the labels-2 masks were drawn
    alone, titled by the init, the budget named nowhere."""
    import json

    from PIL import Image

    from localdisc.data.datasets import load_data_spec
    from localdisc.eval import figures
    from localdisc.eval.report import prediction_grid

    spec = "synthetic_fundus:6"
    test = load_data_spec(spec, "test")
    name, (h, w) = test.items[0].name, test[0].image.shape[:2]
    runs = []
    for labels, value in (("2", 0), ("all", 255)):  # each budget's masks by their grey
        for init in ("random", "ld"):
            run_dir = tmp_path / init / f"labels-{labels}"
            (run_dir / "predictions").mkdir(parents=True)
            mask = np.full((h, w), value, np.uint8)
            Image.fromarray(mask).save(run_dir / "predictions" / f"{name}_mask.png")
            (run_dir / "config.json").write_text(json.dumps({"transfer": {"dataset": spec}}))
            metrics = {"target": "vessels", "per_image": [{"image": name, "dice": 0.5}]}
            runs.append({"task": "synthetic_fundus", "init": init, "labels": labels, "seed": 0,
                         "run_dir": str(run_dir), "metrics": metrics})  # fmt: skip
    drawn, real_save = {}, figures._save

    def save(fig, path):
        drawn["titles"] = [ax.get_title() for ax in fig.axes]
        drawn["labels"] = [ax.get_ylabel() for ax in fig.axes[::4]]
        drawn["greys"] = [float(im.get_array().mean()) for ax in fig.axes for im in ax.images]
        drawn["norms"] = [(im.norm.vmin, im.norm.vmax) for ax in fig.axes for im in ax.images]
        # The row labels lie inside the figure (a title as wide as them was cut at its edge).
        figures._layout(fig)
        renderer = fig.canvas.get_renderer()
        drawn["inside"] = all(ax.yaxis.label.get_window_extent(renderer).x0 >= 0
                              for ax in fig.axes[::4])  # fmt: skip
        return real_save(fig, path)

    monkeypatch.setattr(figures, "_save", save)
    prediction_grid(runs, tmp_path / "predictions.png")
    assert drawn["titles"] == ["image", "reference", "random", "ld"] * 2
    assert drawn["labels"] == [f"synthetic_fundus, labels {n}\n{name}" for n in ("2", "all")]
    assert drawn["inside"]
    assert drawn["greys"][2:4] == [0.0, 0.0] and drawn["greys"][6:8] == [255.0, 255.0]
    # Fixed grey levels: an all-foreground mask drew black, as an empty one.
    assert drawn["norms"][2:4] == [(0, 255)] * 2 and drawn["norms"][1] == (0, 1)
    for run in runs[:2]:  # labels 2's: the data changed since they ran
        run["metrics"]["per_image"][0]["image"] = "gone"
        predictions = Path(run["run_dir"]) / "predictions"
        (predictions / f"{name}_mask.png").rename(predictions / "gone_mask.png")
    with pytest.raises(LocaldiscError, match="holds no image 'gone', which the runs of "
                       "synthetic_fundus \\(labels 2\\) scored first"):  # fmt: skip
        prediction_grid(runs, tmp_path / "predictions.png")


def test_the_report_says_how_many_test_images_each_task_scored(tmp_path):
    # A --quick run scores the first 2 test images of each task: results.md did not say so
    from localdisc.eval.report import write_report

    results = {
        "config": {"max_test": 2},
        "runs": [
            run("drive", "random", 1, [0.5, 0.7]),  # seeds 1: no figure of predictions
            run("jsrt lung", "random", 1, [0.8]),
            run("jsrt lung", "ld", 1, [0.9, 0.9], frozen=[0.1, 0.3]),
        ],
    }
    write_report(results, tmp_path)
    text = (tmp_path / "results.md").read_text()
    assert (
        "Test images per run: drive 2, jsrt lung 1 to 2 (at most the first 2 of each test "
        "split)." in text
    )
    write_report({**results, "config": {"max_test": None}}, tmp_path)
    assert (
        "Test images per run: drive 2, jsrt lung 1 to 2.\n" in (tmp_path / "results.md").read_text()
    )


def test_a_partial_cell_that_ties_the_best_whole_one_is_not_bold():
    # Both print 0.800, but the partial cell's mean lacks two of its seeds (maybe its worst):
    # bold, it would read as a best that its missing seeds could have undone.
    def cell(mean, n_seeds):
        return {"mean": mean, "std": 0.01, "n_seeds": n_seeds, "n_runs": 3}

    text = markdown_table({"ld": {"d": cell(0.8001, 3)}, "random": {"d": cell(0.8002, 1)}})
    assert "| ld | **0.800 +- 0.010** |" in text, text
    assert "| random | 0.800 (n=1) |" in text, text


def test_results_json_is_strict_json_with_nan_and_infinities_as_null():
    # A diverged seed's NaN written as NaN is not JSON: JavaScript's JSON.parse and other strict
    # parsers would refuse the whole results.json.
    value = {"dice": [float("nan"), 0.5], "auc": (float("inf"), -math.inf), "n": 3, "x": "nan"}
    text = json.dumps(jsonable(value), allow_nan=False)
    assert json.loads(text) == {"dice": [None, 0.5], "auc": [None, None], "n": 3, "x": "nan"}


def test_a_cell_is_the_mean_of_its_seeds_not_their_median():
    # Three uneven seeds: mean 0.667, median 0.600.
    table = collect({"runs": [run("drive", "ld", s, [v]) for s, v in enumerate([0.5, 0.6, 0.9])]})
    cell = table["dice"]["ld"]["drive (2)"]
    assert math.isclose(cell["mean"], (0.5 + 0.6 + 0.9) / 3)
    assert markdown_table(table["dice"]).endswith("| ld | **0.667 +- 0.170** |")


def test_images_pooled_weigh_each_image_not_each_seed():
    # Seed 0 scored 1 image, seed 1 three (a --max-test changed between reuses): the pooled mean
    # is over the 4 images (0.65), not the seeds' mean (0.5).
    table = collect({"runs": [run("drive", "ld", 0, [0.2]), run("drive", "ld", 1, [0.8] * 3)]})
    cell = table["dice"]["ld"]["drive (2)"]
    assert math.isclose(cell["image_mean"], 0.65) and cell["n_images"] == 4
    assert math.isclose(cell["mean"], 0.5)
    assert markdown_table(table["dice"], pooled=True).endswith("| ld | **0.650 +- 0.260** |")


def test_a_diverged_seed_is_missing_from_the_frozen_row_too():
    # ld seed 1 diverged (skipped without rows): its frozen model has one seed of two, as the
    # fine-tuned one, and is not bold beside the whole random row it would beat.
    results = {
        "runs": [run("drive", "random", s, [0.5]) for s in (0, 1)]
        + [run("drive", "ld", 0, [0.8], frozen=[0.6])],
        "skipped": [
            {"task": "drive", "init": "ld", "labels": "2", "seed": 1, "reason": "diverged"}
        ],
    }
    table = collect(results)["dice"]
    for row in ("ld (frozen)", "ld"):
        cell = table[row]["drive (2)"]
        assert (cell["n_seeds"], cell["n_runs"]) == (1, 2), row
    text = markdown_table(table)
    assert "| ld (frozen) | 0.600 (n=1) |" in text, text
    assert "| ld | 0.800 (n=1) |" in text and "| random | **0.500 +- 0.000** |" in text, text


def test_the_bar_chart_s_error_bars_are_the_seed_std(tmp_path, monkeypatch):
    # Seeds 0.7 and 0.8 (std 0.05); the four images pooled have std 0.166.
    from localdisc.eval import figures
    from localdisc.eval.report import dice_bars

    drawn = {}
    real_save = figures._save

    def save(fig, path):
        from matplotlib.container import BarContainer

        (bars,) = [c for c in fig.axes[0].containers if isinstance(c, BarContainer)]
        (ends,) = bars.errorbar.lines[2]  # the vertical error line of each bar
        drawn["halves"] = [float(s[1][1] - s[0][1]) / 2 for s in ends.get_segments()]
        drawn["heights"] = [float(b.get_height()) for b in bars]
        return real_save(fig, path)

    monkeypatch.setattr(figures, "_save", save)
    table = collect(
        {"runs": [run("drive", "ld", 0, [0.5, 0.9]), run("drive", "ld", 1, [0.7, 0.9])]}
    )
    dice_bars(table["dice"], tmp_path / "bars.png")
    assert np.allclose(drawn["heights"], [0.75]) and np.allclose(drawn["halves"], [0.05])
