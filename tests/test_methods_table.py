"""``benchmarks/methods_table.py``: pooling runs of ``benchmark pretrain-methods``."""

import importlib.util
import json
from pathlib import Path

from localdisc.eval.report import collect

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "methods_table.py"


def _script():
    spec = importlib.util.spec_from_file_location("methods_table_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(init: str, seed: int, dice: float) -> dict:
    metrics = {"summary": {"dice": {"mean": dice}}, "per_image": [{"dice": dice}]}
    return {"task": "drive", "init": init, "labels": "2", "seed": seed, "metrics": metrics}


def test_pairs_are_of_the_same_seed_where_a_seed_diverged(tmp_path):
    """Seeds were paired by their place in a cell: with seed 1 of a peer diverged (skipped), its
    seed 2 was paired with LD's seed 1, or zip refused the pair of lists."""
    results = {
        "runs": [
            _run("ld", 0, 0.5), _run("ld", 1, 0.2), _run("ld", 2, 0.9),
            _run("pixpro", 0, 0.4), _run("pixpro", 2, 0.8),
        ],
        "skipped": [{"task": "drive", "init": "pixpro", "labels": "2", "seed": 1,
                     "reason": "the fine-tuning diverged"}],
    }  # fmt: skip
    table = collect(results)
    cell = table["dice"]["pixpro"]["drive (2)"]
    assert cell["seed_ids"] == [0, 2] and (cell["n_seeds"], cell["n_runs"]) == (2, 3)
    (tmp_path / "results.json").write_text(json.dumps({"transfer": table}))
    script = _script()
    runs = [script.load(tmp_path, "dice")]
    assert runs[0]["pixpro"]["drive (2)"] == {0: 0.4, 2: 0.8}
    pixpro = next(
        line for line in script.pooled_table(runs, "drive (2)", "ld").splitlines()
        if line.startswith("| pixpro |")
    )  # fmt: skip
    # LD ahead with seed 0 (0.5 > 0.4) and seed 2 (0.9 > 0.8); its seed 1 has no pair.
    assert pixpro == "| pixpro | 0.400, 0.800 | 0.600 +- 0.200 | 2 of 2 |"
    # A results.json of before: its seeds in order from 0.
    del table["dice"]["pixpro"]["drive (2)"]["seed_ids"]
    (tmp_path / "results.json").write_text(json.dumps({"transfer": table}))
    assert script.load(tmp_path, "dice")["pixpro"]["drive (2)"] == {0: 0.4, 1: 0.8}
    # A NaN mean (null in results.json) is no value: left out, not formatted or compared.
    table["dice"]["ld"]["drive (2)"]["seeds"][1] = None
    (tmp_path / "results.json").write_text(json.dumps({"transfer": table}))
    runs = [script.load(tmp_path, "dice")]
    assert runs[0]["ld"]["drive (2)"] == {0: 0.5, 2: 0.9}
    assert "| ld | 0.500, 0.900 |" in script.pooled_table(runs, "drive (2)", "ld")


def test_rows_named_by_pool_meet_their_own_reference_and_a_run_counts_once(tmp_path):
    """Runs of two modalities name their rows "fundus/ld": the default reference "ld" matched
    none, so no row had a count; a run given twice counted its pairs twice; one value printed
    "+- 0.000" (reviewer)."""
    import subprocess
    import sys

    script = _script()
    runs = [{
        "fundus/ld": {"drive (2)": {0: 0.5, 1: 0.6}},
        "fundus/pixpro": {"drive (2)": {0: 0.4, 1: 0.7}},
        "fundus/pixpro (frozen)": {"drive (2)": {0: 0.3}},
        "fundus/ld (frozen)": {"drive (2)": {0: 0.35}},
    }]  # fmt: skip
    table = script.pooled_table(runs, "drive (2)", "ld").splitlines()
    assert "| fundus/pixpro | 0.400, 0.700 | 0.550 +- 0.150 | 1 of 2 |" in table
    assert "| fundus/pixpro (frozen) | 0.300 | 0.300 | 1 of 1 |" in table
    assert "| fundus/ld | 0.500, 0.600 | 0.550 +- 0.050 |  |" in table
    # The built-in random keeps its name beside pool-named rows: it has its count, and is a
    # reference of its own.
    runs[0]["random"] = {"drive (2)": {0: 0.45, 1: 0.65}}
    table = script.pooled_table(runs, "drive (2)", "ld").splitlines()
    assert "| random | 0.450, 0.650 | 0.550 +- 0.100 | 1 of 2 |" in table
    by_random = script.pooled_table(runs, "drive (2)", "random").splitlines()
    assert "| fundus/pixpro | 0.400, 0.700 | 0.550 +- 0.150 | 1 of 2 |" in by_random
    (tmp_path / "results.json").write_text(json.dumps({"transfer": {"dice": {}}}))
    twice = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), str(tmp_path / "results.json")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert twice.returncode == 2 and f"{tmp_path / 'results.json'} is given twice" in twice.stderr


def test_runs_of_other_settings_than_the_seed_are_refused_unless_allowed(tmp_path):
    """Runs were pooled whatever their settings: a draw at another budget, labels or size counted
    in the same mean (reviewer). The pre-training seed (the draw) and the workers may differ."""
    import subprocess
    import sys

    def write(name: str, seed: int, workers: int, budget: float) -> Path:
        config = {"budget_seconds": budget, "labels": ["2"],
                  "pretrain": {"seed": seed, "workers": workers}}  # fmt: skip
        table = {"dice": {"ld": {"drive (2)": {"seeds": [0.5], "seed_ids": [0]}}}}
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(
            json.dumps({"config": config, "transfer": table})
        )
        return tmp_path / name

    def run(*args: Path | str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)],
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    a, b, c = write("a", 4, 2, 240.0), write("b", 5, 8, 240.0), write("c", 6, 2, 120.0)
    same = run(a, b)
    assert same.returncode == 0 and "settings that differ" not in same.stdout
    refused = run(a, b, c)
    assert refused.returncode == 2
    assert "the runs' settings differ (budget_seconds: 240.0 / 240.0 / 120.0)" in refused.stderr
    allowed = run(a, b, c, "--allow-other-settings")
    assert allowed.returncode == 0
    assert "settings that differ (run by run): budget_seconds: 240.0 / 240.0 / 120.0" in (
        allowed.stdout
    )
    assert "| ld | 0.500 / 0.500 / 0.500 | 0.500 +- 0.000 |" in allowed.stdout
    # A copy of a run is the same draw: its seeds counted as pairs twice (reviewer).
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "results.json").write_text((a / "results.json").read_text())
    twice = run(a, b, copy)
    assert twice.returncode == 2
    assert (
        f"{copy / 'results.json'} and {a / 'results.json'} are runs of one pre-training seed (4)"
        in (twice.stderr)
    )
    # One seed at other pre-training settings is another draw, pooled with
    # --allow-other-settings; at other fine-tuning settings (more seeds) the same draw.
    other = write("other", 4, 2, 960.0)
    assert run(a, other, "--allow-other-settings").returncode == 0
    more = tmp_path / "more"
    more.mkdir()
    record = json.loads((a / "results.json").read_text())
    record["config"]["seeds"] = 5
    (more / "results.json").write_text(json.dumps(record))
    same = run(a, more, "--allow-other-settings")
    assert same.returncode == 2 and "the same draw counted twice" in same.stderr
