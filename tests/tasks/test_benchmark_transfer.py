import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

from typer.testing import CliRunner

from helpers import own_folder
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
    assert "Test images per run: synthetic_fundus 2 (at most the first 2 of each" in table
    assert results["environment"]["device"] == "cpu"  # where and when: see test_provenance
    assert table.rstrip().endswith(environment_line(results["environment"]))
    assert (out / "figures" / "dice_bars.png").is_file()
    assert (out / "figures" / "predictions.png").is_file()
    dice = results["table"]["dice"]["ld"]["synthetic_fundus (2)"]
    assert dice["n_seeds"] == 1 and 0 <= dice["mean"] <= 1
    # Run again: finished runs are reused, not recomputed. The LD pre-training, made at another
    # commit (an earlier call's), is named as such: only this call's was.
    record = out / "pretrain" / "config.json"
    made = json.loads(record.read_text())
    made["environment"] |= {"commit": "1" * 40, "dirty": False}
    record.write_text(json.dumps(made))
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and again.output.count("reusing") == 3
    report = (out / "results.md").read_text()
    assert "The LD pre-training (init ld) made at: commit 1111111 (1 run)." in report
    assert report.rstrip().splitlines()[-1].startswith("Environment: ")  # still the last line
    assert (
        json.loads((out / "results.json").read_text())["ld_pretrain"]["environment"]["commit"]
        == "1" * 40
    )
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
    # One parent did not tell these apart: benchmark localize made them one row (reviewer).
    runs = ["/x1/exp/pretrain", "/x2/exp/pretrain", "ld"]
    assert [run_label(r, runs) for r in runs] == ["x1/exp/pretrain", "x2/exp/pretrain", "ld"]
    runs = ["/p/run", "/p/./run"]  # one folder in two spellings: as given
    assert [run_label(r, runs) for r in runs] == runs


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


def test_presets_keep_an_explicit_size_and_schedule(monkeypatch):
    """--cpu-scale --size 384 ran at 256 and --quick --epochs 5 ran 2 epochs: the presets
    replaced what was typed. Settings given stay, those left out are the mode's (the full
    protocol's as before), and each is checked when the config is made, given or not."""
    import pytest

    import localdisc.tasks.benchmark_transfer as bench
    from localdisc.errors import LocaldiscError
    from localdisc.tasks.benchmark_transfer import BenchmarkConfig, preset

    def settings(config: BenchmarkConfig) -> tuple:
        return config.size, config.frozen_epochs, config.epochs, config.max_test

    assert settings(preset(BenchmarkConfig())) == (512, 100, 100, None)
    assert settings(preset(BenchmarkConfig(quick=True))) == (64, 2, 2, 2)
    assert settings(preset(BenchmarkConfig(cpu_scale=True))) == (256, 100, 100, None)
    assert preset(BenchmarkConfig(cpu_scale=True, size=384)).size == 384
    mine = preset(BenchmarkConfig(quick=True, size=96, frozen_epochs=0, epochs=5, max_test=3))
    assert settings(mine) == (96, 0, 5, 3) and mine.device == "cpu"
    assert preset(mine) == mine  # applied again (benchmark pretrain-methods): the same
    assert settings(preset(BenchmarkConfig(epochs=7))) == (512, 100, 7, None)
    # The schedule of a config not yet preset is the mode's too.
    assert BenchmarkConfig(quick=True, frozen_epochs=3).finetune_config(0).epochs == 2
    with pytest.raises(LocaldiscError, match="at least 32, not 40"):
        BenchmarkConfig(quick=True, size=40)
    with pytest.raises(LocaldiscError, match="epoch counts must be >= 0"):
        BenchmarkConfig(cpu_scale=True, frozen_epochs=-1)
    # Both presets run on the CPU: another device is refused, not replaced unseen.
    for mode, flag in (("quick", "--quick"), ("cpu_scale", "--cpu-scale")):
        with pytest.raises(LocaldiscError, match=f"{flag} runs on the CPU: --device cuda is not"):
            preset(BenchmarkConfig(device="cuda", **{mode: True}))
        assert preset(BenchmarkConfig(device="cpu", **{mode: True})).device == "cpu"
    assert preset(BenchmarkConfig(device="cuda")).device == "cuda"
    # Through the command.
    seen: list[BenchmarkConfig] = []

    def spy(config, out_dir, log):
        seen.append(preset(config))
        raise LocaldiscError("spied")

    monkeypatch.setattr(bench, "run_benchmark", spy)
    for args in (["--cpu-scale", "--size", "384"], ["--quick", "--epochs", "5"], []):
        result = CliRunner().invoke(app, ["benchmark", "transfer", *args, "--out", "unused"])
        assert str(result.exception) == "spied"
    assert [settings(config) for config in seen] == [
        (384, 100, 100, None), (64, 2, 5, 2), (512, 100, 100, None),
    ]  # fmt: skip


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
    # No epoch to train was refused by the first fine-tuning: after the LD pre-training.
    with pytest.raises(LocaldiscError, match=r"nothing to train.*--frozen-epochs 0, --epochs 0"):
        BenchmarkConfig(inits=["ld"], frozen_epochs=0, epochs=0)
    with pytest.raises(LocaldiscError, match=r"nothing to train.*from scratch: --epochs 0"):
        BenchmarkConfig(epochs=0)  # the default grid has random
    BenchmarkConfig(inits=["ld"], epochs=0)  # the frozen phase alone is a schedule
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


def test_folders_of_your_own_are_tasks_labelled_by_name_and_reused(tmp_path):
    """`--tasks` took only the paper's names ("unknown task(s) /data/mine"): a folder of one's
    own is a task too, for random init and a tiny LD run, labelled by its name (two of one name
    by their parents'), tested on the same held-out images by every run, skipped for an init of
    another modality, listed in results.md and reused when run again."""
    fundus = own_folder(tmp_path / "a" / "mine")
    xray = own_folder(tmp_path / "b" / "mine", modality="xray")
    out = tmp_path / "bench"
    args = ["benchmark", "transfer", "--quick", "--tasks", f"{fundus},{xray}",
            "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert [(r["task"], r["init"]) for r in results["runs"]] == [
        ("a/mine", "random"), ("a/mine", "ld"), ("b/mine", "random"),
    ]  # fmt: skip
    # The quick LD run is of fundus images: not one for the grey (X-ray) folder.
    assert results["skipped"] == [
        {"task": "b/mine", "init": "ld",
         "reason": f"{out / 'pretrain'} was pre-trained on fundus images, b/mine is xray "
         "(guessed from its images; fundus=FOLDER in --tasks names it: red-free fundus "
         "photographs are grey)"},
    ]  # fmt: skip
    assert (out / "runs" / "a" / "mine" / "ld" / "labels-2" / "seed-0" / "metrics.json").is_file()
    # 1 of 6 images held out (--test-fraction 0.2), chosen by name: the same for every init.
    tested = {r["init"]: [p["image"] for p in r["metrics"]["per_image"]]
              for r in results["runs"] if r["task"] == "a/mine"}  # fmt: skip
    assert tested["random"] == tested["ld"] and len(tested["ld"]) == 1
    table = (out / "results.md").read_text()
    assert "| init | a/mine (2) | b/mine (2) |" in table
    assert (
        f"- a/mine: {fundus}, target mask, fundus (guessed from its images); no test split: 1 of "
        "its 6 images held out for testing" in table
    )
    assert f"- b/mine: {xray}, target mask, xray (guessed from its images)" in table
    assert (out / "figures" / "predictions.png").is_file()
    # Again: the three fine-tunings and the pre-training are reused, nothing recomputed.
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and again.output.count("reusing") == 4, again.output
    # Another test split would mix protocols in one folder: refused, naming the flag.
    other = CliRunner().invoke(app, [*args, "--test-fraction", "0.4"])
    assert "--test-fraction (test_fraction): 0.2 there, 0.4 now" in str(other.exception)


def test_a_task_s_modality_given_in_tasks_is_the_one_every_run_takes(tmp_path):
    """Red-free fundus photographs are grey, guessed X-rays: the LD fundus run was skipped for
    them and nothing could say otherwise (finetune --modality could). fundus=FOLDER names the
    modality: the LD run fine-tunes it, every run records it, and the label is the folder's."""
    redfree = own_folder(tmp_path / "redfree", modality="xray")
    out = tmp_path / "bench"
    args = ["benchmark", "transfer", "--quick", "--tasks", f"fundus={redfree}",
            "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert [(r["task"], r["init"]) for r in results["runs"]] == [
        ("redfree", "random"), ("redfree", "ld"),
    ] and not results["skipped"]  # fmt: skip
    for init in ("random", "ld"):
        run = out / "runs" / "redfree" / init / "labels-2" / "seed-0"
        assert json.loads((run / "config.json").read_text())["transfer"]["modality"] == "fundus"
    table = (out / "results.md").read_text()
    assert f"- redfree: {redfree}, target mask, fundus; no test split" in table
    # The same folder guessed is other runs: refused, naming the setting's flag.
    other = CliRunner().invoke(app, [*args[:4], str(redfree), *args[5:]])
    assert "--tasks MODALITY= (modality): 'fundus' there, None now" in str(other.exception)


def test_a_folder_of_your_own_that_cannot_run_is_refused_before_any_work(tmp_path):
    """Named explicitly, a folder without data is an error naming it (a paper task without
    data under --data-root is skipped): said before the LD pre-training, nothing written."""
    mine = own_folder(tmp_path / "mine")
    unlabelled = tmp_path / "photos"
    own_folder(unlabelled)
    shutil.rmtree(unlabelled / "masks")
    out = tmp_path / "bench"
    cases = {
        str(tmp_path / "nothere"): f"--tasks: {tmp_path / 'nothere'}: no such folder",
        str(unlabelled): f"--tasks: {unlabelled}: no masks; put them in a folder beside the "
        "images named masks, mask, labels",
        f"drive,{mine},{mine}/../mine": f"--tasks: {mine} and {mine}/../mine would be "
        f"labelled '{str(mine).lstrip('/')}' (one folder named twice?)",
        f"jsrt_scr:{tmp_path}:hart": f"--tasks jsrt_scr:{tmp_path}:hart: jsrt_scr has no "
        "target 'hart'",
    }
    for tasks, message in cases.items():
        args = ["benchmark", "transfer", "--quick", "--tasks", tasks, "--data-root",
                str(tmp_path), "--out", str(out)]  # fmt: skip
        result = CliRunner().invoke(app, args)
        assert result.exit_code != 0 and message in str(result.exception), result.output
        assert not out.exists()
    # 6 images, 1 held out: 10 labels cannot be had, said before the 2-label runs.
    labels = ["benchmark", "transfer", "--quick", "--tasks", str(mine), "--labels", "2,10",
              "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, labels)
    assert str(result.exception) == (
        f"--tasks {mine}: --labels 10: only 5 labelled training images exist (1 of its 6 images "
        "held out for testing; --test-fraction sets how many)"
    )
    zero = CliRunner().invoke(app, [*labels[:-4], "--test-fraction", "0", "--out", str(out)])
    assert "--test-fraction 0 holds out no test image" in str(zero.exception)
    assert not out.exists()


def test_a_folder_of_your_own_with_masks_for_some_images_runs_on_those(tmp_path):
    """A folder with masks for some of its images is a task (it was refused at the first image
    without one): tested on labelled images only, its label budgets checked against them."""
    from localdisc.tasks.transfer import held_out_test

    mine = own_folder(tmp_path / "mine", 8)
    for i in (1, 4, 6):
        (mine / "masks" / f"case{i}.png").unlink()
    out = tmp_path / "bench"
    args = ["benchmark", "transfer", "--quick", "--inits", "random", "--tasks", str(mine),
            "--out", str(out)]  # fmt: skip
    # 5 labelled images, 1 held out: 5 labels cannot be had, said before any run.
    result = CliRunner().invoke(app, [*args, "--labels", "2,5"])
    assert str(result.exception) == (
        f"--tasks {mine}: --labels 5: only 4 labelled training images exist (1 of its 5 labelled "
        "images held out for testing; 3 of its 8 have no mask; --test-fraction sets how many)"
    )
    assert not out.exists()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (run,) = json.loads((out / "results.json").read_text())["runs"]
    assert run["metrics"]["unlabelled"] == ["case1", "case4", "case6"]
    labelled = ["case0", "case2", "case3", "case5", "case7"]  # tested as finetune tests them
    assert [row["image"] for row in run["metrics"]["per_image"]] == [
        labelled[i] for i in held_out_test(labelled)
    ]
    table = (out / "results.md").read_text()
    assert "no test split: 1 of its 5 labelled images held out for testing" in table
    assert "3 of its 8 images have no mask: unlabelled, never tested or trained on" in table


def test_own_sets_take_a_target_and_keep_clear_of_task_names():
    """NAME:ROOT[:TARGET] as prior specs write it; labels never a task's name (in any case), with
    parent folders added until unique, as run_label does for inits."""
    from localdisc.tasks.benchmark_transfer import own_set, task_labels

    assert own_set("jsrt_scr:/data/JSRT:heart") == ("jsrt_scr:/data/JSRT", "heart")
    assert own_set("synthetic_xray:4:heart") == ("synthetic_xray:4", "heart")
    assert own_set("synthetic_xray:heart") == ("synthetic_xray", "heart")
    assert own_set("drive:/data/run:2") == ("drive:/data/run:2", None)  # a colon in ROOT
    assert own_set("/data/mine") == ("/data/mine", None)
    # A generated set's ROOT is a count: its tail after one is a mistyped target, as in priors.
    import pytest

    from localdisc.errors import DatasetError

    with pytest.raises(DatasetError, match="--tasks synthetic_xray:4:hart: synthetic_xray has no"):
        own_set("synthetic_xray:4:hart")
    entries = ["drive", "drive:/d/DRIVE", "/a/x/mine", "/b/x/mine", "/c/other",
               "jsrt_scr:/d/JSRT:heart", "synthetic_xray:4:heart"]  # fmt: skip
    labels = task_labels(entries, {e: own_set(e) for e in entries if e != "drive"})
    assert list(labels.values()) == [
        "drive", "d/DRIVE", "a/x/mine", "b/x/mine", "other", "JSRT-heart",
        "synthetic_xray-4-heart",
    ]  # fmt: skip


def test_a_label_budget_beyond_a_paper_tasks_images_is_refused_before_any_work(tmp_path):
    """Own sets were checked up front, paper tasks not: --labels 2,7 on synthetic_fundus (6
    training images with --quick) ran the 2-label runs, then failed."""
    import pytest

    from localdisc.errors import LocaldiscError
    from localdisc.tasks.benchmark_transfer import TASKS, BenchmarkConfig, run_benchmark

    assert TASKS["synthetic_fundus"].spec(None, quick=True) == "synthetic_fundus:6"
    config = BenchmarkConfig(quick=True, inits=["random"], tasks=["synthetic_fundus"])
    for labels, message in {
        "7": "task synthetic_fundus: --labels 7: only 6 labelled training images exist",
        "two": "task synthetic_fundus: --labels must be a count, a fraction in (0, 1) or 'all'",
    }.items():
        with pytest.raises(LocaldiscError, match=re.escape(message)):
            run_benchmark(replace(config, labels=["2", labels]), tmp_path / "b", log=print)
    assert not (tmp_path / "b").exists()


def _count_loads(monkeypatch) -> list[tuple[str, str | None]]:
    """Every (spec, split) loaded by the benchmark's planning, as it loads them."""
    import localdisc.tasks.benchmark_transfer as bench
    import localdisc.tasks.transfer as transfer
    from localdisc.data.datasets import load_data_spec

    loads: list[tuple[str, str | None]] = []

    def counted(spec, split=None, **kwargs):
        loads.append((spec, split))
        return load_data_spec(spec, split, **kwargs)

    for module in (bench, transfer):
        monkeypatch.setattr(module, "load_data_spec", counted, raising=False)
    return loads


def test_planning_loads_each_split_of_a_task_once(tmp_path, monkeypatch):
    """A paper task's train split was loaded twice (checked, then counted for --labels), an own
    set's train and test splits twice each (checked, then counted for its line)."""
    from localdisc.tasks.benchmark_transfer import BenchmarkConfig, plan_tasks, preset

    loads = _count_loads(monkeypatch)
    mine = str(own_folder(tmp_path / "mine"))
    tasks = ["synthetic_fundus", "synthetic_xray:6", mine]
    config = preset(BenchmarkConfig(quick=True, tasks=tasks, labels=["2"]))
    planned, skipped, about = plan_tasks(config, lambda m: None)
    assert [t.label for t in planned] == ["synthetic_fundus", "synthetic_xray-6", "mine"]
    assert sorted(loads) == sorted(
        [("synthetic_fundus:6", "train"), ("synthetic_fundus:6", "test"),
         ("synthetic_xray:6", "train"), ("synthetic_xray:6", "test"), (mine, None)]
    )  # fmt: skip
    assert about["synthetic_xray-6"].endswith("its own test split (3 images)")


def test_an_own_sets_label_stays_when_another_of_its_name_is_added_later(tmp_path):
    """Labels were made for each call alone: run on /a/lungs ("lungs"), then add /b/lungs, and
    both became a/lungs and b/lungs, the first set's finished runs redone under its new label.
    A set whose runs the --out holds keeps their label; only a new one takes a longer label,
    also where the set of that label is not named this time."""
    a = own_folder(tmp_path / "a" / "lungs")
    b = own_folder(tmp_path / "b" / "lungs")
    c = own_folder(tmp_path / "c" / "lungs")
    out = tmp_path / "bench"

    def bench(*tasks):
        args = ["benchmark", "transfer", "--quick", "--inits", "random", "--tasks",
                ",".join(map(str, tasks)), "--out", str(out)]  # fmt: skip
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        results = json.loads((out / "results.json").read_text())
        return [r["task"] for r in results["runs"]], result.output.count("reusing")

    assert bench(a) == (["lungs"], 0)
    assert bench(a, b) == (["lungs", "b/lungs"], 1)  # a's run reused, under its label
    assert bench(b) == (["b/lungs"], 1)
    assert bench(c) == (["c/lungs"], 0)  # runs/lungs holds a's runs: not c's label
    assert bench(c, a) == (["c/lungs", "lungs"], 2)
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["b", "c", "lungs"]


def test_own_labels_fall_back_to_a_new_outs_where_earlier_runs_do_not_say_one(tmp_path):
    """The label a set's runs have is kept; where their records cannot be read, or two sets'
    runs share a label, labels are made as for a new --out (longer ones, as before)."""
    from localdisc.tasks.benchmark_transfer import own_set, task_labels

    a, b = (str(tmp_path / d / "lungs") for d in ("a", "b"))
    for folder in (a, b):
        Path(folder).mkdir(parents=True)
    runs = tmp_path / "runs"

    def labels(*entries: str) -> list[str]:
        return list(task_labels(list(entries), {e: own_set(e) for e in entries}, runs).values())

    def record(init: str, text: str) -> None:
        path = runs / "lungs" / init / "labels-2" / "seed-0" / "config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    assert labels(a, b) == ["a/lungs", "b/lungs"]  # no runs
    record("random", "{")
    assert labels(a, b) == ["a/lungs", "b/lungs"]
    record("random", json.dumps({"transfer": {"dataset": a}}))
    assert labels(a, b) == ["lungs", "b/lungs"]
    assert labels(b) == ["b/lungs"]  # lungs is a's
    record("ld", json.dumps({"transfer": {"dataset": b}}))
    assert labels(a, b) == ["a/lungs", "b/lungs"]


def test_an_inits_label_stays_when_another_of_its_name_is_added_later(tmp_path):
    """Init labels were made for each call alone: run with x/myld ("myld"), then add y/myld, and
    both became x/myld and y/myld, the first init's finished runs redone under its new label.
    An init whose runs the --out holds keeps their label; a new one takes a label without runs."""
    from localdisc.models import LDConfig, LDModel

    for folder in ("x", "y", "z"):
        LDModel(LDConfig("fundus", width=4, depth=2)).save(tmp_path / folder / "myld")
    out = tmp_path / "bench"

    def bench(*inits: str) -> tuple[list[str], int]:
        args = ["benchmark", "transfer", "--quick", "--tasks", "synthetic_fundus", "--inits",
                ",".join(i if i == "random" else str(tmp_path / i) for i in inits),
                "--out", str(out)]  # fmt: skip
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        results = json.loads((out / "results.json").read_text())
        return [r["init"] for r in results["runs"]], result.output.count("reusing")

    assert bench("random", "x/myld") == (["random", "myld"], 0)
    assert bench("random", "x/myld", "y/myld") == (["random", "myld", "y/myld"], 2)
    assert bench("y/myld") == (["y/myld"], 1)
    assert bench("z/myld", "x/myld") == (["z/myld", "myld"], 1)  # myld has x's runs
    runs = out / "runs" / "synthetic_fundus"
    assert sorted(p.name for p in runs.iterdir()) == ["myld", "random", "y", "z"]


def test_init_labels_keep_those_of_earlier_runs(tmp_path):
    """As run_label on a new --out; after runs, an init keeps the label they are under (read
    longest first: runs of x/myld are under "myld" too, as of a task ending in x), a new one
    takes none with runs, and the built-in names stay theirs."""
    from localdisc.tasks.benchmark_transfer import init_labels

    root = tmp_path.resolve()
    x, y, z, w = (str(root / d / "myld") for d in ("x", "y", "z", "w"))
    fundus, xray = (str(root / "out" / "pretrain" / m / "ld") for m in ("fundus", "xray"))
    for folder in (x, y, z, w, fundus, xray):
        Path(folder).mkdir(parents=True)
    runs = root / "runs"

    def labels(*inits: str) -> list[str]:
        return list(init_labels(list(inits), runs))

    def record(where: str, init: str | None, seed: int = 0) -> None:
        path = runs / "synthetic_fundus" / where / "labels-2" / f"seed-{seed}" / "config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{" if init is None else json.dumps({"transfer": {"init": init}}))

    assert labels("random", x, y, "ld", f"{x}/") == ["random", "x/myld", "y/myld", "ld"]
    named = ["random", "/a/pretrain", "/b/pretrain", "/c/ld-xray"]  # run_label's test
    assert labels(*named) == ["random", "a/pretrain", "b/pretrain", "ld-xray"]
    record("x/myld", x)
    assert labels(x) == ["x/myld"]  # not "myld" of a task synthetic_fundus/x
    record("myld", y)
    assert labels(y, x) == ["myld", "x/myld"]
    assert labels(z) == ["z/myld"]
    record("myld", None, seed=1)  # unreadable: no init's
    assert labels(y) == ["myld"]
    # Two inits' runs under one label (as labelled before): neither keeps it.
    record("myld", w, seed=2)
    assert labels(y, w) == ["y/myld", "w/myld"]
    # benchmark pretrain-methods: a second pool no longer renames the first pool's methods.
    record("ld", fundus)
    assert labels("random", fundus, xray) == ["random", "ld", "xray/ld"]
    assert labels("ld", fundus) == ["ld", "fundus/ld"]  # the built-in keeps its name
    import pytest

    from localdisc.errors import LocaldiscError

    with pytest.raises(LocaldiscError, match="--inits: ld and /ld would share the label 'ld'"):
        init_labels(["ld", "/ld"])  # nothing tells them apart


def test_skip_bad_lets_an_own_folder_with_a_truncated_image_through(tmp_path):
    """finetune's error said "--skip-bad skips unreadable images", which benchmark transfer,
    running the same fine-tunings, did not take: it now passes it to each of them."""
    mine = own_folder(tmp_path / "mine", 8)
    bad = mine / "images" / "case2.png"
    bad.write_bytes(bad.read_bytes()[:200])
    args = ["benchmark", "transfer", "--quick", "--inits", "random", "--tasks", str(mine),
            "--out", str(tmp_path / "bench")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and "--skip-bad skips unreadable images" in str(result.exception)
    result = CliRunner().invoke(app, [*args, "--skip-bad"])
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "bench" / "results.json").read_text())["runs"][0]
    metrics = next((tmp_path / "bench" / "runs").rglob("metrics.json"))
    assert run["task"] == "mine"
    assert [s["name"] for s in json.loads(metrics.read_text())["skipped"]] == ["case2"]


def test_skip_bad_reads_a_tasks_images_once_for_all_its_runs(tmp_path, monkeypatch):
    """With --skip-bad, each fine-tuning read every image of the task first to find the
    unreadable ones: the same ones, found again by each (init, label budget, seed) run. They are
    now found once per data set in a benchmark call, said once, and each run leaves them out."""
    import localdisc.data.datasets as datasets

    # Items read (image and masks), not decodes: a folder's modality guess decodes up to 9 of
    # its first images, case2 among them, once for each data set made.
    real, reads = datasets.SegmentationDataset.load, Counter()

    def counted(self, item):
        reads[item.image.name] += 1
        return real(self, item)

    monkeypatch.setattr(datasets.SegmentationDataset, "load", counted)
    mine = own_folder(tmp_path / "mine", 8)
    bad = mine / "images" / "case2.png"
    bad.write_bytes(bad.read_bytes()[:200])
    out = tmp_path / "bench"
    args = ["benchmark", "transfer", "--quick", "--inits", "random", "--tasks", str(mine),
            "--seeds", "2", "--skip-bad", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert reads["case2.png"] == 1, reads  # was once per run
    assert result.output.count(f"skipped {bad.resolve()}: ") == 1
    for metrics in sorted((out / "runs").rglob("metrics.json")):  # both seeds' runs
        skipped = json.loads(metrics.read_text())["skipped"]
        assert [(s["name"], s["path"]) for s in skipped] == [("case2", str(bad.resolve()))]


def _no_pretraining(*args, **kwargs):
    raise AssertionError("pre-trained before the grid was checked")


def test_a_run_folder_of_other_settings_is_refused_before_the_ld_pre_training(
    tmp_path, monkeypatch
):
    """A run folder of other settings was refused only when the grid reached it: after the LD
    pre-training and every new fine-tuning before it, which the advice (another --out) lost."""
    import pytest

    import localdisc.tasks.benchmark_transfer as bench
    from localdisc.errors import LocaldiscError

    out = tmp_path / "bench"
    run = out / "runs" / "synthetic_fundus" / "random" / "labels-2" / "seed-0"
    run.mkdir(parents=True)  # a finished run of 3 steps per epoch (the reviewer's second call)
    config = bench.preset(bench.BenchmarkConfig(quick=True, steps_per_epoch=3))
    saved = bench.TransferConfig(bench.TASKS["synthetic_fundus"].spec(None, True), "vessels",
                                 "random", "2", config.size, max_test=config.max_test,
                                 train=config.finetune_config(0))  # fmt: skip
    (run / "config.json").write_text(json.dumps({"transfer": asdict(saved)}))
    (run / "metrics.json").write_text("{}")
    monkeypatch.setattr(bench, "pretrain_preset", _no_pretraining)
    monkeypatch.setattr(bench, "run_transfer", _no_pretraining)  # nor any fine-tuning
    given = bench.BenchmarkConfig(quick=True, inits=["ld", "random"], tasks=["synthetic_fundus"])
    with pytest.raises(
        LocaldiscError, match=re.escape(f"{run}: holds a finished fine-tuning with other")
    ):
        bench.run_benchmark(given, out, log=lambda m: None)


def test_a_mistyped_init_is_refused_before_the_ld_pre_training(tmp_path, monkeypatch):
    """A mistyped --inits path was found when the task loop reached it: after the LD
    pre-training and the fine-tunings of the inits before it."""
    import pytest

    import localdisc.tasks.benchmark_transfer as bench
    from localdisc.errors import LocaldiscError

    monkeypatch.setattr(bench, "pretrain_preset", _no_pretraining)
    typo = tmp_path / "no-such-run"
    config = bench.BenchmarkConfig(quick=True, inits=["ld", str(typo)], tasks=["synthetic_fundus"])
    with pytest.raises(LocaldiscError, match=re.escape(f"{typo}: no such folder")):
        bench.run_benchmark(config, tmp_path / "bench", log=lambda m: None)


def test_ld_is_not_pre_trained_where_no_task_to_run_can_use_it(tmp_path, monkeypatch):
    """Every task skipped for want of data, or of another modality than the LD pre-training's
    (fundus): it ran anyway (8 minutes at --cpu-scale), for an empty table."""
    import localdisc.tasks.benchmark_transfer as bench

    monkeypatch.setattr(bench, "pretrain_preset", _no_pretraining)
    for tasks in (["drive"], ["synthetic_xray"]):
        logged: list[str] = []
        config = bench.BenchmarkConfig(
            quick=True, inits=["ld"], tasks=tasks, data_root=str(tmp_path / "no-data")
        )
        results = bench.run_benchmark(config, tmp_path / tasks[0], log=logged.append)
        assert results["runs"] == [] and "no task to run is fundus; not pre-training" in (
            "\n".join(logged)
        )
        assert not (tmp_path / tasks[0] / "pretrain").exists()
    assert results["skipped"][0]["init"] == "ld"  # synthetic_xray: of another modality


def test_a_label_budget_given_twice_is_run_once():
    """--labels 2,2 listed each run twice and counted it as two seeds (n_seeds 4 for --seeds 2);
    "all" and "ALL" are one budget to labelled_count."""
    from localdisc.tasks.benchmark_transfer import BenchmarkConfig, preset

    given = BenchmarkConfig(labels=["2", "all", "2", "ALL", "0.5"])
    assert preset(given).labels == ["2", "all", "0.5"]
    # "02" trained the 2-label runs again, in labels-02 (reviewer).
    assert preset(BenchmarkConfig(labels=["02", "2", " 8"])).labels == ["2", "8"]
    assert preset(BenchmarkConfig(labels=["²"])).labels == ["²"]  # a word: refused later, named
    # ".5" and "0.50" trained the half-labelled runs twice more, as columns of their own.
    assert preset(BenchmarkConfig(labels=["0.5", ".5", "0.50 ", "0.25"])).labels == ["0.5", "0.25"]


def test_an_ld_run_folder_named_ld_is_an_init_not_the_built_in_ld(tmp_path, monkeypatch):
    """A run folder called ``ld`` (each ``benchmark pretrain-methods`` LD run is) has the table
    label ``ld``: it was taken for the built-in init, so the benchmark pre-trained one of its own
    (--quick: a wasted run in OUT/pretrain) or, without a preset (--cpu-scale's transfer), was
    refused after every method had pre-trained."""
    import localdisc.tasks.benchmark_transfer as bench
    from localdisc.models.ld import LDConfig

    run = tmp_path / "pretrain" / "fundus" / "ld"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": asdict(LDConfig(modality="fundus"))}))
    used: list[str] = []
    monkeypatch.setattr(bench, "pretrain_preset", _no_pretraining)
    monkeypatch.setattr(bench, "_run_one", lambda config, task, init, *a: used.append(init) or {})
    monkeypatch.setattr("localdisc.eval.report.write_report", lambda results, out_dir: None)
    for quick in (True, False):
        used.clear()
        config = bench.BenchmarkConfig(
            quick=quick, inits=["random", str(run)], tasks=["synthetic_fundus"], labels=["2"],
            seeds=1,
        )  # fmt: skip
        out = tmp_path / f"bench-{quick}"
        results = bench.run_benchmark(config, out, log=lambda m: None)
        assert used == ["random", str(run)]
        assert [r["init"] for r in results["runs"]] == ["random", "ld"]
        assert "ld_pretrain" not in results and not (out / "pretrain").exists()


def test_runs_of_an_init_whose_weights_changed_are_not_reused(tmp_path, monkeypatch):
    """An init is recorded by its path: pre-trained again under the same folder (another draw,
    other settings), its old fine-tunings were reused silently and tabulated as the new
    weights'. Each run records the SHA-256 of the weights it loaded; a run of other weights is
    refused as a run of other settings is, before any training, and a run recorded before the
    fingerprint existed is still reused."""
    import pytest
    import torch

    import localdisc.tasks.benchmark_transfer as bench
    from localdisc.errors import LocaldiscError
    from localdisc.models import LDConfig, LDModel

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    LDModel(LDConfig("fundus", width=4, depth=2)).save("myld")
    config = bench.BenchmarkConfig(quick=True, inits=["myld"], tasks=["synthetic_fundus"], seeds=2)
    logged: list[str] = []
    results = bench.run_benchmark(config, "bench", log=logged.append)
    runs = tmp_path / "bench" / "runs" / "synthetic_fundus" / "myld" / "labels-2"
    record = json.loads((runs / "seed-0" / "config.json").read_text())
    weights = tmp_path / "myld" / "encoder.safetensors"
    assert record["init_weights"]["file"] == str(weights)
    # In the results too: which weights the numbers are of.
    assert results["runs"][0]["metrics"]["init_weights"] == record["init_weights"]
    bench.run_benchmark(config, "bench", log=logged.append)
    assert sum("reusing" in m for m in logged) == 2  # the same weights: reused
    torch.manual_seed(1)  # pre-trained again: other weights under the same path
    LDModel(LDConfig("fundus", width=4, depth=2)).save("myld")
    with monkeypatch.context() as patch, pytest.raises(LocaldiscError) as refused:
        patch.setattr(bench, "run_transfer", _no_pretraining)  # refused before any training
        bench.run_benchmark(config, "bench", log=logged.append)
    # Every run of the old weights at once, not one per call.
    first, *others = str(refused.value).split("\n- ")
    assert first == "2 run folders cannot be used:" and len(others) == 2
    for seed, message in enumerate(others):
        assert message.startswith(
            f"{runs.relative_to(tmp_path) / f'seed-{seed}'}: holds a finished fine-tuning of "
            f"other init weights: those of --inits {tmp_path / 'myld'} ({weights}) have changed "
            "since that fine-tuning"
        )
        assert "choose another --out, or delete the folder" in message
    # Recorded before runs recorded their init's weights: reused as it is, as before.
    for seed in (0, 1):
        record = json.loads((runs / f"seed-{seed}" / "config.json").read_text())
        del record["init_weights"]
        (runs / f"seed-{seed}" / "config.json").write_text(json.dumps(record))
    logged.clear()
    bench.run_benchmark(config, "bench", log=logged.append)
    assert sum("reusing" in m for m in logged) == 2


def test_runs_of_a_built_in_ld_pre_trained_again_are_refused_before_any_fine_tuning(
    tmp_path, monkeypatch
):
    """OUT/pretrain deleted and made again: its weights do not exist when the grid is checked,
    so its old runs were refused only when the loop reached them, after the runs before."""
    import pytest
    import torch

    import localdisc.tasks.benchmark_transfer as bench
    from localdisc.errors import LocaldiscError
    from localdisc.models import LDConfig, LDModel

    config = bench.BenchmarkConfig(quick=True, inits=["random", "ld"], tasks=["synthetic_fundus"])
    out = tmp_path / "bench"
    bench.run_benchmark(config, out, log=lambda m: None)
    shutil.rmtree(out / "pretrain")
    made = bench.pretrain_preset

    def made_again(settings, run_dir, log):  # another draw: other weights
        made(settings, run_dir, log)
        torch.manual_seed(7)
        LDModel(LDConfig.from_run(run_dir)).save(run_dir)
        return run_dir

    monkeypatch.setattr(bench, "pretrain_preset", made_again)
    monkeypatch.setattr(bench, "run_transfer", _no_pretraining)  # nor the reused random run
    with pytest.raises(LocaldiscError, match="holds a finished fine-tuning of other init weights"):
        bench.run_benchmark(config, out, log=lambda m: None)


def test_a_run_that_diverges_is_skipped_and_the_grid_goes_on(tmp_path, monkeypatch):
    """A fine-tuning that diverged stopped the whole benchmark, every run after it lost (and no
    table written). It is listed as skipped, with its seed and why; its cell is over the seeds
    that finished, and says so."""
    import localdisc.tasks.benchmark_transfer as bench

    made = bench.BenchmarkConfig.finetune_config

    def seed_1_diverges(self, seed):  # a learning rate no training survives, for seed 1 only
        config = made(self, seed)
        return replace(config, lr=1e30) if seed == 1 else config

    monkeypatch.setattr(bench.BenchmarkConfig, "finetune_config", seed_1_diverges)
    config = bench.BenchmarkConfig(
        quick=True, inits=["random"], tasks=["synthetic_fundus"], seeds=3
    )
    logged: list[str] = []
    results = bench.run_benchmark(config, tmp_path, log=logged.append)
    assert [r["seed"] for r in results["runs"]] == [0, 2]  # the seed after it ran too
    (skip,) = results["skipped"]
    assert {k: skip[k] for k in ("task", "init", "labels", "seed")} == {
        "task": "synthetic_fundus", "init": "random", "labels": "2", "seed": 1
    }  # fmt: skip
    assert skip["reason"].startswith("the fine-tuning diverged (from scratch, epoch ")
    assert any(m.startswith("skipped synthetic_fundus random labels-2 seed-1: the") for m in logged)
    table = json.loads((tmp_path / "results.json").read_text())["table"]
    cell = table["dice"]["random"]["synthetic_fundus (2)"]
    assert (cell["n_seeds"], cell["n_runs"]) == (2, 3)
    report = (tmp_path / "results.md").read_text()
    assert " (n=2) |" in report and "diverged: see Skipped" in report
    assert "- synthetic_fundus (random, labels 2, seed 1): the fine-tuning diverged" in report
    # Run again: the finished seeds are reused, the diverged one skipped again from its record,
    # not trained again (it took a whole fine-tuning to diverge once more).
    marker = Path(skip["run_dir"]) / "diverged.json"
    assert json.loads(marker.read_text())["reason"] == skip["reason"]
    trained: list[int] = []
    made_run = bench.run_transfer

    def counted(transfer, run_dir, **kwargs):
        trained.append(transfer.train.seed)
        return made_run(transfer, run_dir, **kwargs)

    monkeypatch.setattr(bench, "run_transfer", counted)
    logged.clear()
    again = bench.run_benchmark(config, tmp_path, log=logged.append)
    assert sum("reusing" in m for m in logged) == 2 and again["skipped"][0]["seed"] == 1
    assert trained == [0, 2]  # the finished ones, read back; seed 1 not at all
    assert again["skipped"][0]["reason"].startswith(skip["reason"] + " [recorded by an earlier")
    assert "delete that file to train this run again" in again["skipped"][0]["reason"]
    # The file deleted: trained again (and, at the same learning rate, diverged again).
    marker.unlink()
    trained.clear()
    bench.run_benchmark(config, tmp_path, log=logged.append)
    assert trained == [0, 1, 2] and marker.is_file()


def test_a_diverged_run_finished_by_hand_since_is_reused_not_skipped(tmp_path, monkeypatch):
    """A run that diverged once (on a GPU, say) and was then finished by its own command: its
    record was read first and the finished run stayed out of the table on every rerun."""
    import localdisc.tasks.benchmark_transfer as bench
    from localdisc.errors import DivergedError

    real = bench.run_transfer

    def seed_1_diverges(transfer, run_dir, **kwargs):
        if transfer.train.seed == 1:
            raise DivergedError("the fine-tuning diverged (forced)")
        return real(transfer, run_dir, **kwargs)

    monkeypatch.setattr(bench, "run_transfer", seed_1_diverges)
    config = bench.BenchmarkConfig(
        quick=True, inits=["random"], tasks=["synthetic_fundus"], seeds=2
    )
    first = bench.run_benchmark(config, tmp_path, log=lambda m: None)
    run_dir = Path(first["skipped"][0]["run_dir"])
    assert (run_dir / "diverged.json").is_file()
    monkeypatch.setattr(bench, "run_transfer", real)
    preset = bench.preset(config)
    (task,), _, _ = bench.plan_tasks(preset, lambda m: None, tmp_path)
    transfer = bench._transfer_config(preset, task, "random", "2", 1)
    real(transfer, run_dir, log=lambda m: None, flags=bench.FLAGS)  # `finetune`, by hand
    again = bench.run_benchmark(config, tmp_path, log=lambda m: None)
    assert [r["seed"] for r in again["runs"]] == [0, 1] and not again["skipped"]
    assert not (run_dir / "diverged.json").exists()


def test_an_ld_pre_training_that_diverges_leaves_the_init_ld_out_and_the_others_go_on(
    tmp_path, monkeypatch
):
    """The built-in init ld's pre-training diverging stopped the whole benchmark before any
    fine-tuning, and no table was written: its runs are skipped, listed, the others go on."""
    import localdisc.tasks.benchmark_transfer as bench

    config = bench.BenchmarkConfig(
        quick=True, inits=["random", "ld"], tasks=["synthetic_fundus"], seeds=1,
        pretrain={"lr": 1e30, "max_nonfinite": 1},  # a learning rate no training survives
    )  # fmt: skip
    logged: list[str] = []
    results = bench.run_benchmark(config, tmp_path, log=logged.append)
    assert [(r["init"], r["seed"]) for r in results["runs"]] == [("random", 0)]
    (skip,) = results["skipped"]
    assert (skip["task"], skip["init"]) == ("synthetic_fundus", "ld")
    assert skip["reason"].startswith("its pre-training diverged: 1 non-finite losses in a row")
    assert any(m.startswith("leaving the init ld out: its pre-training diverged: ") for m in logged)
    report = (tmp_path / "results.md").read_text()
    assert "- synthetic_fundus (ld): its pre-training diverged: 1 non-finite" in report
    assert not (tmp_path / "runs" / "synthetic_fundus" / "ld").exists()
    # A rerun reads the record, trains nothing and lists it again.
    again = bench.run_benchmark(config, tmp_path, log=logged.append)
    assert "[recorded by an earlier call in " in again["skipped"][0]["reason"]


def test_a_folder_named_like_a_modality_prefix_is_refused_with_how_to_name_it(
    tmp_path, monkeypatch
):
    # --tasks fundus=2020 with a folder of that name: "no folder of that name", unsaid why.
    own_folder(tmp_path / "fundus=2020")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["benchmark", "transfer", "--quick", "--tasks", "fundus=2020",
                                      "--out", str(tmp_path / "b")])  # fmt: skip
    assert str(result.exception).endswith(
        "; fundus=2020 is read as MODALITY=FOLDER: write a folder so named as ./fundus=2020"
    )
