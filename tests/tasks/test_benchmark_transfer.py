import json
import subprocess
import sys

from typer.testing import CliRunner

from localdisc.cli import app
from localdisc.eval.provenance import environment_line


def test_quick_benchmark_runs_the_whole_pipeline_and_resumes(tmp_path):
    """Pre-train a few steps, fine-tune, evaluate and tabulate; missing data is listed."""
    out = tmp_path / "bench"
    args = ["benchmark", "transfer", "--quick", "--tasks", "synthetic_fundus,drive",
            "--data-root", str(tmp_path / "no-data"), "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert {(r["task"], r["init"]) for r in results["runs"]} == {
        ("synthetic_fundus", "random"),
        ("synthetic_fundus", "ld"),
    }
    assert results["skipped"][0]["task"] == "drive"
    assert "no-data" in results["skipped"][0]["reason"]
    assert (out / "pretrain" / "encoder.safetensors").is_file()
    table = (out / "results.md").read_text()
    assert "| ld (frozen) |" in table and "**" in table and "## Skipped" in table
    assert "| ld (BN recalibrated) |" in table and "| random (BN recalibrated) |" in table
    assert results["environment"]["device"] == "cpu"  # where and when: see test_provenance
    assert table.rstrip().endswith(environment_line(results["environment"]))
    assert (out / "figures" / "dice_bars.png").is_file()
    assert (out / "figures" / "predictions.png").is_file()
    dice = results["table"]["dice"]["ld"]["synthetic_fundus (2)"]
    assert dice["n_seeds"] == 1 and 0 <= dice["mean"] <= 1
    # Run again: finished runs are reused, not recomputed.
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and again.output.count("reusing") == 3
    # Other settings in the same folder would mix protocols: refused.
    changed = CliRunner().invoke(app, [*args, "--steps-per-epoch", "3"])
    assert changed.exit_code != 0 and "other settings" in str(changed.exception)


def test_unknown_task_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "localdisc", "benchmark", "transfer", "--quick", "--tasks",
         "retina", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "unknown task(s) retina" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_runs_with_the_same_folder_name_keep_apart():
    from localdisc.tasks.presets import run_label

    runs = ["random", "/a/pretrain", "/b/pretrain", "/c/ld-xray"]
    assert [run_label(r, runs) for r in runs] == ["random", "a/pretrain", "b/pretrain", "ld-xray"]


def test_cpu_scale_preset_pretrains_at_native_scale_and_keeps_explicit_choices():
    from localdisc.engine.pretrain import PretrainConfig
    from localdisc.tasks.benchmark_transfer import BenchmarkConfig, preset

    config = preset(BenchmarkConfig(cpu_scale=True, data_root="/data"))
    assert (config.size, config.device, config.inits, config.tasks) == (
        256,
        "cpu",
        ["random", "ld"],
        ["drive"],
    )
    p = config.pretrain
    assert p["data"] == ["/data/KaggleDR/images"] and p["max_images"] == 1000
    assert (p["size"], p["pool_size"], p["crop_scale"]) == (128, 256, (0.2, 0.35))
    assert (p["stage1_seconds"], p["stage2_seconds"], p["batch"]) == (240.0, 240.0, 2)
    PretrainConfig(**p)  # a valid pre-training config
    mine = preset(BenchmarkConfig(cpu_scale=True, pretrain={"pool_size": 144}, seeds=1))
    assert mine.pretrain["pool_size"] == 144 and mine.seeds == 1


def test_bad_seeds_sizes_and_schedules_are_refused_before_any_work(tmp_path):
    """--seeds 0 is an error (not the default 3), and a size the network cannot take fails at
    once, as in `finetune`, not after the LD pre-training."""
    import pytest

    from localdisc.errors import LocaldiscError
    from localdisc.tasks.benchmark_transfer import BenchmarkConfig, preset, run_benchmark

    with pytest.raises(LocaldiscError, match="--seeds must be at least 1, not 0"):
        BenchmarkConfig(seeds=0)
    assert preset(BenchmarkConfig(seeds=None)).seeds == 3  # not given: the mode's default
    assert preset(BenchmarkConfig(seeds=2)).seeds == 2
    for size in (16, 40):
        with pytest.raises(LocaldiscError, match=f"multiple of 16, at least 32, not {size}"):
            BenchmarkConfig(size=size)
    with pytest.raises(LocaldiscError, match="epoch counts must be >= 0"):
        BenchmarkConfig(epochs=-1)
    # Through the command: one line, nothing written (no pre-training started).
    args = ["benchmark", "transfer", "--tasks", "synthetic_fundus", "--inits", "random",
            "--seeds", "1", "--size", "40", "--device", "cpu",
            "--out", str(tmp_path / "b")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and "at least 32, not 40" in str(result.exception)
    assert not (tmp_path / "b").exists()
    with pytest.raises(LocaldiscError, match="--seeds must be at least 1"):
        run_benchmark(BenchmarkConfig(quick=True, seeds=0), tmp_path / "c")


def test_runs_are_reused_with_relative_paths_and_an_interrupted_one_is_redone(
    tmp_path, monkeypatch
):
    """config.json saves the init and data absolute (run_transfer): a benchmark given relative
    ones still reuses its finished runs, and one interrupted before metrics.json (which
    run_transfer refuses for other settings) is run again, not refused."""
    from localdisc.models import LDConfig, LDModel
    from localdisc.tasks.benchmark_transfer import BenchmarkConfig, run_benchmark

    monkeypatch.chdir(tmp_path)
    LDModel(LDConfig("fundus", width=4, depth=2)).save("myld")
    config = BenchmarkConfig(quick=True, inits=["myld"], tasks=["synthetic_fundus"])
    logged: list[str] = []
    run_benchmark(config, "bench", log=logged.append)
    run = tmp_path / "bench" / "runs" / "synthetic_fundus" / "myld" / "labels-2" / "seed-0"
    saved = json.loads((run / "config.json").read_text())["transfer"]
    assert saved["init"] == str(tmp_path / "myld")
    run_benchmark(config, "bench", log=logged.append)
    assert sum("reusing" in m for m in logged) == 1
    (run / "metrics.json").unlink()
    results = run_benchmark(config, "bench", log=logged.append)
    assert any("interrupted fine-tuning with the same settings" in m for m in logged)
    assert (run / "metrics.json").is_file() and len(results["runs"]) == 1


def test_a_run_with_other_settings_is_refused_naming_this_commands_flags(tmp_path):
    """The refusal named `finetune`'s flags ("--batch (train.batch)"), some of which
    `benchmark transfer` has not: its own are named, other settings alone."""
    from dataclasses import asdict, replace

    from localdisc.tasks.benchmark_transfer import TASKS, BenchmarkConfig, preset
    from localdisc.tasks.transfer import TransferConfig

    out = tmp_path / "bench"
    args = ["benchmark", "transfer", "--quick", "--inits", "random", "--tasks",
            "synthetic_fundus", "--out", str(out)]  # fmt: skip
    # A finished run of the same cell with a batch of 4 and 3 steps per epoch (the Python API).
    config = preset(BenchmarkConfig(quick=True, batch=4, steps_per_epoch=3))
    train = replace(config.finetune_config(seed=0), progress=True)
    saved = TransferConfig(TASKS["synthetic_fundus"].spec(None, True), "vessels", "random", "2",
                           config.size, max_test=config.max_test, train=train)  # fmt: skip
    run = out / "runs" / "synthetic_fundus" / "random" / "labels-2" / "seed-0"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"transfer": asdict(saved)}))
    (run / "metrics.json").write_text("{}")
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0
    message = str(result.exception)
    assert (
        f"{run}: holds a finished fine-tuning with other settings (train.batch: 4 there, 2 "
        "now; --steps-per-epoch (train.steps_per_epoch): 3 there, None now); choose another "
        "--out, or delete the folder to run here (nothing was deleted)"
    ) == message
