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


def test_a_copy_of_a_run_without_a_recorded_seed_is_refused(tmp_path):
    """compare_methods.sh with its default PRETRAIN='{}' records no pre-training seed: such a run
    was no draw at all, so its copy was pooled, every pair counted twice ("ld ahead 4 of 6" where
    the run alone says "2 of 3") (reviewer). No seed is PretrainConfig's default."""
    import subprocess
    import sys

    from localdisc.engine.pretrain import PretrainConfig

    script = _script()
    assert PretrainConfig().seed == script.DEFAULT_PRETRAIN_SEED

    def config(**pretrain: object) -> dict:
        return {"budget_seconds": 240.0, "methods": ["ld", "pixpro"], "size": 128,
                "pretrain": {"max_images": 1000, "workers": 2, **pretrain}}  # fmt: skip

    # Seed 0 recorded is the same draw; another seed is another draw; a run that records no
    # settings at all is not known to be any draw (nothing compared, as before).
    assert script._draw(config()) == script._draw(config(seed=0, workers=8))
    assert script._draw(config()) != script._draw(config(seed=1))
    assert script._draw({}) == {}
    table = {"dice": {"ld": {"drive (2)": {"seeds": [0.6], "seed_ids": [0]}},
                      "pixpro": {"drive (2)": {"seeds": [0.5], "seed_ids": [0]}}}}  # fmt: skip
    for name in ("run1", "copy"):
        (tmp_path / name).mkdir()
        record = {"config": config(), "transfer": table}
        (tmp_path / name / "results.json").write_text(json.dumps(record))
    twice = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "run1"), str(tmp_path / "copy")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert twice.returncode == 2, twice.stdout
    assert (
        f"{tmp_path / 'copy' / 'results.json'} and {tmp_path / 'run1' / 'results.json'} are runs "
        "of one pre-training seed (0)" in twice.stderr
    )


def test_compare_methods_records_a_command_that_reruns_it(tmp_path):
    """compare_methods.sh ran its benchmark as `python - OUT/methods PRETRAIN`: results.md ended
    with the command `- /tmp/cm/methods '{"seed": 1}'`, neither the script nor its settings
    (budget, methods, tasks, sizes: environment variables) (reviewer). It records `env
    SETTING=... bash benchmarks/compare_methods.sh`, which run again records the same."""
    import os
    import subprocess
    import sys

    from localdisc.eval.provenance import command_text

    shell = SCRIPT.parent / "compare_methods.sh"
    # A stand-in for the benchmark (the script puts ./src first on the path): it records the
    # command line provenance.environment would record, and the settings it was given.
    stub = tmp_path / "src" / "localdisc" / "tasks"
    stub.mkdir(parents=True)
    (tmp_path / "src" / "localdisc" / "__init__.py").write_text("")
    (stub / "__init__.py").write_text("")
    (stub / "benchmark_methods.py").write_text(
        "import json, sys\n"
        "from pathlib import Path\n"
        "def MethodsBenchmarkConfig(**kwargs):\n    return kwargs\n"
        "def run_methods_benchmark(config, out_dir):\n"
        "    record = Path(out_dir) / 'record.json'\n"
        "    done = json.loads(record.read_text()) if record.is_file() else []\n"
        "    record.write_text(json.dumps([*done, {'argv': sys.argv, 'config': config}]))\n"
    )
    names = ("OUT", "METHODS", "BUDGET_S", "DEVICE", "SIZE", "TASKS", "POOLS", "LABELS",
             "SEEDS", "EPOCHS", "BATCH", "TRANSFER_SIZE", "WORKERS", "STEPS_PER_EPOCH",
             "PRETRAIN")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in names and k != "PYTHONPATH"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    settings = {"OUT": str(tmp_path / "cm"), "DEVICE": "cpu", "BUDGET_S": "4",
                "METHODS": "ld,simclr",
                "PRETRAIN": '{"seed": 1, "crop_scale": [0.2, 0.35]}'}  # fmt: skip
    first = subprocess.run(["bash", str(shell)], cwd=tmp_path, env={**env, **settings},
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert first.returncode == 0, first.stdout + first.stderr
    (recorded,) = json.loads((tmp_path / "cm" / "methods" / "record.json").read_text())
    line = command_text(recorded["argv"])
    assert line.startswith("env OUT=") and line.endswith(f" bash {shell}"), line
    assert " BUDGET_S=4 " in line and " METHODS=ld,simclr " in line and " SIZE=448 " in line
    assert recorded["config"]["pretrain"]["seed"] == 1
    assert recorded["config"]["budget_seconds"] == 4 and recorded["config"]["size"] == 448
    # The recorded line, typed into a shell where none of the settings is set, does the same.
    again = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    _, rerun = json.loads((tmp_path / "cm" / "methods" / "record.json").read_text())
    assert rerun == recorded


def test_a_cli_run_and_a_script_run_differ_in_no_setting_by_skip_bad(tmp_path):
    """`benchmark pretrain-methods` records skip_bad (false) in "pretrain" and "transfer",
    compare_methods.sh neither: two draws of one setting were refused as other settings, and a
    copy of one draw made by each was not seen as the same draw. A finished run without
    skip_bad read every image, so no number depends on it."""
    import subprocess
    import sys

    def write(name: str, seed: int, **given: object) -> Path:
        config = {"budget_seconds": 240.0, "pretrain": {"seed": seed, **given},
                  "transfer": {"epochs": 2, **given}}  # fmt: skip
        table = {"dice": {"ld": {"drive (2)": {"seeds": [0.5], "seed_ids": [0]}}}}
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(
            json.dumps({"config": config, "transfer": table})
        )
        return tmp_path / name

    def run(*args: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)],
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    cli, script = write("cli", 0, skip_bad=False), write("script", 1)
    pooled = run(cli, script)
    assert pooled.returncode == 0, pooled.stderr
    assert "settings that differ" not in pooled.stdout
    again = run(cli, write("again", 0))
    assert again.returncode == 2 and "the same draw counted twice" in again.stderr
