import math

from localdisc.eval.report import collect, markdown_table


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
    assert "| ld | **0.900 +- 0.000** |" in text
    assert "| random | 0.700 +- 0.100 |" in text
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
    assert "| ld | - | **0.500 +- 0.000** |" in text


def test_cells_that_print_the_same_are_both_bold():
    results = {"runs": [run("drive", "a", 0, [0.9004]), run("drive", "b", 0, [0.9001])]}
    text = markdown_table(collect(results)["dice"])
    assert "| a | **0.900 +- 0.000** |" in text and "| b | **0.900 +- 0.000** |" in text


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
