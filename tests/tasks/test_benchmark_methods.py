import json
import math
import re
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import own_folder
from localdisc.cli import app
from localdisc.eval.provenance import environment_line
from localdisc.tasks.benchmark_methods import parse_pool


def test_quick_comparison_pretrains_every_method_and_tabulates(tmp_path):
    out = tmp_path / "m"
    args = ["benchmark", "pretrain-methods", "--quick", "--out", str(out),
            "--data-root", str(tmp_path / "none")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "results.json").read_text())
    assert set(summary["pretraining"]) == {
        f"{m} (fundus)" for m in ("ld", "simclr", "densecl", "pixpro", "genesis")
    }
    assert all(r["steps"] == 4 for r in summary["pretraining"].values())
    rows = set(summary["transfer"]["dice"])
    assert {"random", "ld", "simclr", "densecl", "pixpro", "genesis"} <= rows
    assert {"ld (frozen)", "genesis (frozen)"} <= rows
    report = (out / "results.md").read_text()
    assert "| simclr (fundus) | 4 |" in report and "# Transfer benchmark" in report
    assert "`random` is the floor: no pre-training" in report
    environment = environment_line(summary["environment"])
    assert report.rstrip().endswith(environment)
    # LD ran the --quick steps, not a budget's split (the clock's 11:46 in the environment
    # lines held "1:4" too: the test failed from 11:40 to 11:49 and 21:40 to 21:49).
    said = [line for line in report.splitlines() if "Environment:" not in line]
    assert not [line for line in said if "1:4" in line]
    pretrained = json.loads((out / "pretrain" / "fundus" / "ld" / "config.json").read_text())
    assert pretrained["environment"]["processes"] == 1
    assert not (out / "transfer" / "pretrain").exists()  # its LD run is the method's, not another
    again = CliRunner().invoke(app, args)  # everything is reused
    assert again.exit_code == 0 and again.output.count("reusing") >= 5 + 6


def test_pools_name_their_modality():
    assert parse_pool("xray=/data/cxr") == ("xray", "/data/cxr")
    assert parse_pool("jsrt_scr:/data") == ("xray", "jsrt_scr:/data")
    # every X-ray set by its own modality (synthetic_xray_hard was taken as fundus)
    for name in ("montgomery", "synthetic_xray", "synthetic_xray_hard"):
        assert parse_pool(f"{name}:8") == ("xray", f"{name}:8")
    assert parse_pool("drive:/data") == ("fundus", "drive:/data")
    assert parse_pool("KaggleDR/images") == ("fundus", "KaggleDR/images")


def test_unknown_methods_are_refused(tmp_path):
    result = CliRunner().invoke(app, ["benchmark", "pretrain-methods", "--quick", "--methods",
                                      "ld,moco", "--out", str(tmp_path / "o")])  # fmt: skip
    assert result.exit_code != 0 and "moco" in str(result.exception)


def test_a_pool_is_required_outside_quick(tmp_path):
    result = CliRunner().invoke(app, ["benchmark", "pretrain-methods", "--out", str(tmp_path)])
    assert result.exit_code != 0
    with pytest.raises(Exception, match="pool"):
        raise result.exception


def test_a_task_without_a_pool_of_its_modality_is_refused_before_any_pretraining(tmp_path):
    # Its table held the random init alone, every method left out unsaid (reviewer).
    from localdisc.errors import LocaldiscError
    from localdisc.tasks.benchmark_methods import MethodsBenchmarkConfig, run_methods_benchmark

    config = MethodsBenchmarkConfig(
        methods=["ld", "simclr"], quick=True, tasks=["synthetic_fundus"],
        pools=["xray=synthetic_xray:8"],
    )  # fmt: skip
    with pytest.raises(
        LocaldiscError,
        match=r"no --pool of modality fundus for task\(s\) synthetic_fundus: the methods would "
        r"be pre-trained on nothing for them; add --pool fundus=",
    ):
        run_methods_benchmark(config, tmp_path, log=lambda m: None)
    assert not (tmp_path / "pretrain").exists()


def test_bad_transfer_settings_are_refused_before_any_pretraining(tmp_path):
    from localdisc.errors import LocaldiscError
    from localdisc.tasks.benchmark_methods import MethodsBenchmarkConfig, run_methods_benchmark

    config = MethodsBenchmarkConfig(methods=["ld"], quick=True, transfer={"size": 40})
    with pytest.raises(LocaldiscError, match="multiple of 16"):
        run_methods_benchmark(config, tmp_path, log=lambda m: None)
    # --seeds 0 with --quick used to become 1 without a word.
    with pytest.raises(LocaldiscError, match="at least 1, not 0"):
        run_methods_benchmark(replace(config, transfer={}, seeds=0), tmp_path, log=lambda m: None)
    assert not (tmp_path / "pretrain").exists()


def test_cpu_scale_is_the_recorded_cpu_comparison():
    from localdisc.tasks.benchmark_methods import (
        MethodsBenchmarkConfig,
        _settings,
        cpu_scale_pools,
        plan_transfer,
        preset,
    )
    from localdisc.tasks.benchmark_transfer import BenchmarkConfig

    config = preset(MethodsBenchmarkConfig(cpu_scale=True, data_root="/d", tasks=["drive"]))
    # Only the pool of the tasks' modality, under --data-root (compare_methods.sh's pools);
    # chosen once the tasks are checked (a paper task without data needs none: it is skipped).
    assert config.pools == []

    def modalities(config: BenchmarkConfig) -> set[str]:
        return {task.modality for task in plan_transfer(config, lambda m: None)[0]}

    assert modalities(BenchmarkConfig(tasks=["drive"])) == set()
    assert modalities(BenchmarkConfig(tasks=["synthetic_fundus", "synthetic_xray"])) == {
        "fundus", "xray",
    }  # fmt: skip
    assert cpu_scale_pools("/d", {"fundus"}) == ["fundus=/d/KaggleDR/images"]
    assert (config.budget_seconds, config.size, config.batch, config.labels) == (240, 128, 2, ["2"])
    assert config.transfer["size"] == 256 and config.device == "cpu"
    fundus = _settings(config, "ld", "fundus", "/d/KaggleDR/images")
    assert fundus["stage1_seconds"] == 48 and fundus["stage2_seconds"] == 192
    assert fundus["max_images"] == 1000 and fundus["crop_scale"] == (0.2, 0.35)
    both = preset(MethodsBenchmarkConfig(cpu_scale=True, data_root="/d"))
    pools = cpu_scale_pools("/d", {"fundus", "xray"})
    assert pools == ["fundus=/d/KaggleDR/images", "xray=/d/CXR_Kermany/train/NORMAL"]
    assert "crop_scale" not in _settings(both, "ld", "xray", pools[1])
    # Explicit choices stay.
    mine = preset(MethodsBenchmarkConfig(cpu_scale=True, budget_seconds=60, size=96, labels=["4"]))
    assert (mine.budget_seconds, mine.size, mine.labels) == (60, 96, ["4"])


def test_quick_keeps_an_explicit_size_and_batch_and_refuses_what_it_cannot_honour():
    # --quick replaced --size and --batch and dropped --budget-seconds (even -1), unseen.
    from localdisc.errors import LocaldiscError
    from localdisc.tasks.benchmark_methods import MethodsBenchmarkConfig, preset

    mine = preset(MethodsBenchmarkConfig(quick=True, size=64, batch=2))
    assert (mine.size, mine.batch, mine.budget_seconds, mine.device) == (64, 2, None, "cpu")
    assert (preset(MethodsBenchmarkConfig(quick=True)).size, mine.seeds) == (48, 1)
    refused = {
        "fixed steps": {"quick": True, "budget_seconds": 30},
        "positive": {"cpu_scale": True, "budget_seconds": -1},
        "runs on the CPU: --device cuda": {"cpu_scale": True, "device": "cuda"},
    }
    for message, fields in refused.items():
        with pytest.raises(LocaldiscError, match=message):
            preset(MethodsBenchmarkConfig(**fields))


def test_quick_and_cpu_scale_are_exclusive(tmp_path):
    args = ["benchmark", "pretrain-methods", "--quick", "--cpu-scale", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and "exclusive" in str(result.exception)


def test_a_pretraining_with_other_settings_is_refused_not_reused(tmp_path, monkeypatch):
    import localdisc.tasks.benchmark_methods as methods
    from localdisc.errors import LocaldiscError
    from localdisc.tasks.benchmark_methods import MethodsBenchmarkConfig, run_methods_benchmark

    def config(seed: int, names: tuple[str, ...] = ("simclr",)) -> MethodsBenchmarkConfig:
        return MethodsBenchmarkConfig(methods=list(names), quick=True, pretrain={"seed": seed})

    run_methods_benchmark(config(0), tmp_path, log=lambda m: None)
    before = (tmp_path / "results.json").read_text()
    # Another draw into the same --out used to reuse the first draw's encoder without a word.
    with pytest.raises(LocaldiscError, match=r"other settings \(seed 0 \(given 1\)\)"):
        run_methods_benchmark(config(1), tmp_path, log=lambda m: None)
    assert (tmp_path / "results.json").read_text() == before
    # ... and before any method pre-trains: ld, listed first, trained before simclr's refusal.
    monkeypatch.setattr(methods, "_pretrain", _no_pretraining)
    with pytest.raises(LocaldiscError, match=r"simclr: holds a pre-training with other"):
        run_methods_benchmark(config(1, ("ld", "simclr")), tmp_path, log=lambda m: None)


def test_an_interrupted_run_gets_no_more_than_its_time_budget(tmp_path, monkeypatch):
    """Each method pre-trains for the same wall-clock budget: a run stopped and resumed used to
    get its stage's whole budget again at the resume (fake clock: 0.1 s per reading)."""
    from types import SimpleNamespace

    import localdisc.engine.pretrain as engine
    from helpers import tiny_pretrain_config, torch_threads
    from localdisc.data.pool import synthetic_pool

    clock = iter(range(10**9))
    monkeypatch.setattr(engine, "time", SimpleNamespace(perf_counter=lambda: next(clock) / 10))
    pool, quiet = synthetic_pool(4, "fundus", 48), {"log": lambda m: None}
    config = tiny_pretrain_config(method="simclr", stage1_steps=10_000, stage2_steps=0,
                                  stage1_seconds=13.0, val_images=0, checkpoint_every=25,
                                  log_every=25)  # fmt: skip
    with torch_threads(1):
        straight = engine.pretrain(config, tmp_path / "straight", pool=pool, **quiet).steps
        assert 25 < straight < 50  # ended by its budget, between the log rows of 25 and 50
        # stopped at its checkpoint of step 25, as a signal stops it
        engine.pretrain(config, tmp_path / "resumed", pool=pool, stop_at_step=25, **quiet)
        resumed = engine.pretrain(config, tmp_path / "resumed", pool=pool, resume=True, **quiet)
    assert resumed.steps <= straight + 3  # a checkpoint's readings of the clock; not + 25
    # no log row since the resume: the final loss is that of step 25's row, not NaN
    assert math.isfinite(resumed.final_loss)


def _interrupted_simclr_run(run_dir):
    """The settings of a tiny simclr run, and the state.json of its checkpoint at its stop."""
    from localdisc.engine.checkpoint import list_checkpoints
    from localdisc.engine.pretrain import PretrainConfig, pretrain

    settings = dict(data=["synthetic_fundus:4"], method="simclr", stage1_steps=6, stage2_steps=0,
                    size=32, pool_size=48, batch=1, val_images=0, checkpoint_every=3,
                    device="cpu", progress=False, workers=1)  # fmt: skip
    pretrain(PretrainConfig(**settings), run_dir, stop_at_step=3, log=lambda m: None)
    return settings, list_checkpoints(run_dir / "checkpoints")[-1] / "state.json"


def test_a_resumed_run_reports_the_seconds_of_all_its_starts(tmp_path):
    # Its steps and images were the run's, its seconds and images/s those of the resumed part.
    from localdisc.tasks.benchmark_methods import _pretrain, reached_row

    settings, state_file = _interrupted_simclr_run(tmp_path)
    state = json.loads(state_file.read_text())
    state["elapsed"] = 1000.0  # a long first start
    state_file.write_text(json.dumps(state))
    reached = _pretrain(settings, tmp_path, lambda m: None)
    assert reached["steps"] == 6 and reached["images"] == 6 * 4
    assert 1000 < reached["seconds"] < 1100
    assert reached["images_per_s"] == round(24 / reached["seconds"], 2)
    assert reached_row("simclr", reached).startswith(f"| simclr | 6 | 24 | {reached['seconds']} |")


def test_a_run_resumed_from_an_older_checkpoint_says_its_time_is_unknown(tmp_path):
    from localdisc.tasks.benchmark_methods import UNKNOWN_TIME, _pretrain, reached_row

    settings, state_file = _interrupted_simclr_run(tmp_path)
    state = json.loads(state_file.read_text())
    del state["elapsed"]  # as versions before it wrote
    state_file.write_text(json.dumps(state))
    reached = _pretrain(settings, tmp_path, lambda m: None)
    assert reached["steps"] == 6 and reached["seconds"] is None is reached["images_per_s"]
    assert f"| 24 | {UNKNOWN_TIME} | {UNKNOWN_TIME} |" in reached_row("simclr", reached)


def test_an_older_record_of_a_resumed_run_says_its_time_is_unknown(tmp_path):
    # reached.json written before its seconds covered all starts: the last start's seconds.
    from localdisc.tasks.benchmark_methods import _pretrain

    settings, _ = _interrupted_simclr_run(tmp_path / "resumed")
    _pretrain(settings, tmp_path / "resumed", lambda m: None)  # resumed, then finished
    _pretrain(settings, tmp_path / "straight", lambda m: None)
    for name in ("resumed", "straight"):
        record = tmp_path / name / "reached.json"
        older = json.loads(record.read_text())
        del older["seconds_of"]
        record.write_text(json.dumps(older))
    messages = []
    reused = _pretrain(settings, tmp_path / "resumed", messages.append)
    assert reused["seconds"] is None is reused["images_per_s"] and reused["steps"] == 6
    assert any("older version" in m for m in messages)
    assert _pretrain(settings, tmp_path / "straight", lambda m: None)["seconds"] is not None


def _no_pretraining(*args, **kwargs):
    raise AssertionError("pre-trained before the tasks were checked")


def test_tasks_that_cannot_run_are_refused_before_any_pretraining(tmp_path, monkeypatch):
    """A bad own set in --tasks, or a --labels budget beyond a task's images, was refused by the
    transfer benchmark only after every method's (long) pre-training."""
    import localdisc.tasks.benchmark_methods as methods
    from localdisc.errors import LocaldiscError

    monkeypatch.setattr(methods, "_pretrain", _no_pretraining)
    mine = own_folder(tmp_path / "mine", modality="xray")
    base = methods.MethodsBenchmarkConfig(methods=["simclr"], quick=True)
    cases = {
        ("synthetic_fundus", str(tmp_path / "nothere")): (["2"], "no such folder"),
        ("synthetic_fundus", str(mine)): (["2", "10"], f"--tasks {mine}: --labels 10: only 5"),
        ("synthetic_fundus",): (["2", "7"], "task synthetic_fundus: --labels 7: only 6"),
    }
    for tasks, (labels, message) in cases.items():
        config = replace(base, tasks=list(tasks), labels=labels)
        with pytest.raises(LocaldiscError, match=message):
            methods.run_methods_benchmark(config, tmp_path / "out", log=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_an_own_xray_set_has_the_xray_pool_pretrained(tmp_path, monkeypatch):
    """The pools were chosen by the paper tasks' modalities alone: an own X-ray folder had no
    pool pre-trained for it ("no task needs the xray pool"), only random init."""
    import localdisc.tasks.benchmark_methods as methods

    pretrained: list[tuple[str, list[str], Path]] = []
    inits: list[list[str]] = []

    def pretrain(settings, run_dir, log):
        pretrained.append((settings["modality"], settings["data"], run_dir))
        return {}

    def transfer(config, out_dir, log, plan, left_out):
        inits.append(config.inits)
        raise KeyboardInterrupt  # stop here: what runs is chosen

    monkeypatch.setattr(methods, "_pretrain", pretrain)
    monkeypatch.setattr(methods, "run_benchmark", transfer)
    mine = own_folder(tmp_path / "mine", modality="xray")
    config = methods.MethodsBenchmarkConfig(
        methods=["simclr"], pools=["synthetic_fundus:8", "xray=synthetic_xray:8"],
        tasks=[str(mine)], quick=True,
    )  # fmt: skip
    said: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        methods.run_methods_benchmark(config, tmp_path / "out", log=said.append)
    run_dir = tmp_path / "out" / "pretrain" / "xray" / "simclr"
    assert pretrained == [("xray", ["synthetic_xray:8"], run_dir)]
    assert inits == [["random", str(run_dir)]]
    assert any("no task needs the fundus pool" in m for m in said)


def test_cpu_scale_pretrains_the_pool_of_an_own_sets_modality(tmp_path, monkeypatch):
    """--cpu-scale's pools are those of the tasks' modalities, an own set's included."""
    import localdisc.tasks.benchmark_methods as methods

    started: list[dict] = []

    def first_pretraining(settings, run_dir, log):
        started.append(settings)
        raise KeyboardInterrupt  # stop here: the pool is chosen

    monkeypatch.setattr(methods, "_pretrain", first_pretraining)
    monkeypatch.setattr(methods, "run_benchmark", _no_pretraining)
    monkeypatch.setattr(methods, "_check_pool", lambda settings: None)  # chosen, not there
    mine = own_folder(tmp_path / "mine", modality="xray")
    config = methods.MethodsBenchmarkConfig(
        methods=["ld"], tasks=[str(mine)], cpu_scale=True, data_root=str(tmp_path)
    )
    with pytest.raises(KeyboardInterrupt):
        methods.run_methods_benchmark(config, tmp_path / "out", log=lambda m: None)
    assert [(s["modality"], s["data"]) for s in started] == [
        ("xray", [str(tmp_path / "CXR_Kermany" / "train" / "NORMAL")])
    ]


def test_the_tasks_are_planned_once(tmp_path, monkeypatch):
    """The tasks were planned to choose the pools, then again by the transfer benchmark: each
    split read twice more, and an own folder's images guessed at twice."""
    import localdisc.tasks.benchmark_methods as methods
    import localdisc.tasks.benchmark_transfer as bench

    plans: list[tuple[list[str], Path | None]] = []
    plan_tasks = bench.plan_tasks

    def counted(config, log, out_dir=None):
        plans.append((config.tasks, out_dir))
        return plan_tasks(config, log, out_dir)

    def first_run(*args, **kwargs):
        raise KeyboardInterrupt  # the tasks are planned by now

    for module in (bench, methods):
        monkeypatch.setattr(module, "plan_tasks", counted, raising=False)
    monkeypatch.setattr(bench, "_run_one", first_run)
    config = methods.MethodsBenchmarkConfig(
        methods=[], tasks=["synthetic_fundus", "drive"], quick=True, data_root=str(tmp_path)
    )
    said: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        methods.run_methods_benchmark(config, tmp_path / "out", log=said.append)
    # In the transfer benchmark's folder: its earlier runs keep their own sets' labels.
    assert plans == [(["synthetic_fundus", "drive"], tmp_path / "out" / "transfer")]
    assert len([m for m in said if m.startswith("skipped drive: ")]) == 1


def test_quick_pretrains_a_generated_xray_pool_for_an_xray_task(tmp_path, monkeypatch):
    """--quick had a fundus pool only: an X-ray task (or an own X-ray folder) got no method
    pre-trained for it ("no task needs the fundus pool"), only random init."""
    import localdisc.tasks.benchmark_methods as methods

    pretrained: list[tuple[str, list[str]]] = []

    def pretrain(settings, run_dir, log):
        pretrained.append((settings["modality"], settings["data"]))
        return {}

    def transfer(config, out_dir, log, plan, left_out):
        raise KeyboardInterrupt  # stop here: the pools are chosen

    monkeypatch.setattr(methods, "_pretrain", pretrain)
    monkeypatch.setattr(methods, "run_benchmark", transfer)
    mine = str(own_folder(tmp_path / "mine", modality="xray"))
    for tasks, pools in {
        ("synthetic_xray",): [("xray", ["synthetic_xray:8"])],
        (mine,): [("xray", ["synthetic_xray:8"])],
        ("synthetic_fundus", "synthetic_xray"): [
            ("fundus", ["synthetic_fundus:8"]), ("xray", ["synthetic_xray:8"]),
        ],
    }.items():  # fmt: skip
        pretrained.clear()
        config = methods.MethodsBenchmarkConfig(methods=["simclr"], tasks=list(tasks), quick=True)
        with pytest.raises(KeyboardInterrupt):
            methods.run_methods_benchmark(config, tmp_path / "out", log=lambda m: None)
        assert pretrained == pools, tasks


def test_skip_bad_reaches_each_pre_training_and_fine_tuning(tmp_path, monkeypatch):
    """A task image finetune cannot read said "--skip-bad skips unreadable images", which
    pretrain-methods did not take: it now passes it on to the transfer benchmark, and to the
    pre-trainings (a pool image they cannot read stopped them)."""
    from typer.testing import CliRunner

    import localdisc.tasks.benchmark_methods as methods
    from localdisc.cli import app

    given: list[bool] = []
    pretrained: list[bool] = []

    def transfer(config, out_dir, log, plan, left_out):
        given.append(config.skip_bad)
        raise KeyboardInterrupt  # stop here: the setting is passed

    def pretrain(settings, run_dir, log):
        pretrained.append(settings["skip_bad"])
        return {}

    monkeypatch.setattr(methods, "_pretrain", pretrain)
    monkeypatch.setattr(methods, "run_benchmark", transfer)
    for flag in ([], ["--skip-bad"]):
        args = ["benchmark", "pretrain-methods", "--quick", "--methods", "simclr", "--out",
                str(tmp_path / "out"), *flag]  # fmt: skip
        CliRunner().invoke(app, args)
    assert given == [False, True] and pretrained == [False, True]


def test_a_null_final_loss_of_a_reused_run_prints_as_nan():
    """reached.json stores a NaN final loss (a budget that ended a resumed run before its first
    log row) as null: the next call, reusing the run, crashed on it after its whole benchmark."""
    from localdisc.eval.report import jsonable
    from localdisc.tasks.benchmark_methods import reached_row

    reached = {"steps": 7, "images": 70, "seconds": 240.0, "images_per_s": 0.29,
               "final_loss": math.nan}  # fmt: skip
    read_back = json.loads(json.dumps(jsonable(reached)))
    assert read_back["final_loss"] is None
    assert (
        reached_row("ld", read_back)
        == reached_row("ld", reached)
        == ("| ld | 7 | 70 | 240.0 | 0.29 | nan |")
    )


def test_two_pools_of_one_modality_are_refused(tmp_path, monkeypatch):
    """The last --pool of a modality silently replaced the others: only it was pre-trained on."""
    import localdisc.tasks.benchmark_methods as methods
    from localdisc.errors import LocaldiscError

    monkeypatch.setattr(methods, "_pretrain", _no_pretraining)
    pools = ["fundus=synthetic_fundus:8", "synthetic_fundus:16"]
    config = methods.MethodsBenchmarkConfig(methods=["ld"], pools=pools, quick=True)
    message = "--pool fundus=synthetic_fundus:8 and --pool synthetic_fundus:16 are both fundus"
    with pytest.raises(LocaldiscError, match=message):
        methods.run_methods_benchmark(config, tmp_path / "out", log=lambda m: None)


def test_reused_pretraining_runs_of_other_commits_are_named(tmp_path, monkeypatch):
    """results.md named only this call's commit beside pre-training runs reused from others."""
    import localdisc.tasks.benchmark_methods as methods

    def pretrain(settings, run_dir, log):  # an earlier call's run, at another commit, modified
        run_dir.mkdir(parents=True)
        old = {"localdisc": "0.1.0", "commit": "a" * 40, "dirty": True}
        (run_dir / "config.json").write_text(json.dumps({"environment": old}))
        return {"steps": 4, "images": 8, "seconds": 1.0, "images_per_s": 8.0, "final_loss": 1.0}

    def transfer(config, out_dir, log, plan, left_out):
        out_dir.mkdir(parents=True)
        (out_dir / "results.md").write_text("# Transfer benchmark\n")
        return {"runs": []}

    monkeypatch.setattr(methods, "_pretrain", pretrain)
    monkeypatch.setattr(methods, "run_benchmark", transfer)
    config = methods.MethodsBenchmarkConfig(methods=["ld", "simclr"], quick=True)
    methods.run_methods_benchmark(config, tmp_path / "out", log=lambda m: None)
    report = (tmp_path / "out" / "results.md").read_text()
    assert "Pre-training runs made at: commit aaaaaaa, modified (2 runs)." in report


def test_two_pools_of_one_modality_are_refused_before_the_tasks_are_read(tmp_path, monkeypatch):
    """The refusal came after the tasks were planned (own folders read, paper tasks loaded)."""
    import localdisc.tasks.benchmark_methods as methods
    from localdisc.errors import LocaldiscError

    monkeypatch.setattr(methods, "plan_transfer", _no_pretraining)
    pools = ["fundus=synthetic_fundus:8", "synthetic_fundus:16"]
    config = methods.MethodsBenchmarkConfig(methods=["ld"], pools=pools, quick=True)
    with pytest.raises(LocaldiscError, match="are both fundus pools"):
        methods.run_methods_benchmark(config, tmp_path / "out", log=lambda m: None)


def test_a_pool_that_cannot_be_read_is_refused_before_any_pretraining(tmp_path, monkeypatch):
    """A mistyped second pool was found after every method had pre-trained on the first (at
    --cpu-scale, 240 s each); a pool whose runs are all finished is not read, as before."""
    import localdisc.tasks.benchmark_methods as methods
    from localdisc.errors import DatasetError

    monkeypatch.setattr(methods, "_pretrain", _no_pretraining)
    typo = tmp_path / "no-such-pool"
    config = methods.MethodsBenchmarkConfig(
        methods=["ld", "simclr"], tasks=["synthetic_fundus", "synthetic_xray"], quick=True,
        pools=["fundus=synthetic_fundus:8", f"xray={typo}"],
    )  # fmt: skip
    with pytest.raises(DatasetError, match=re.escape(f"{typo}: no such folder")):
        methods.run_methods_benchmark(config, tmp_path / "out", log=lambda m: None)
    wrong = replace(config, pools=["fundus=synthetic_fundus:8", "xray=synthetic_fundus:8"])
    with pytest.raises(DatasetError, match="expected synthetic_xray"):
        methods.run_methods_benchmark(wrong, tmp_path / "out", log=lambda m: None)
    checked: list[dict] = []
    monkeypatch.setattr(methods, "_check_pool", checked.append)
    for method in ("ld", "simclr"):  # the X-ray runs finished (their pool since moved)
        (tmp_path / "out" / "pretrain" / "xray" / method).mkdir(parents=True)
        for name in ("reached.json", "encoder.safetensors"):
            (tmp_path / "out" / "pretrain" / "xray" / method / name).write_text("{}")
    with pytest.raises(AssertionError, match="pre-trained"):
        methods.run_methods_benchmark(config, tmp_path / "out", log=lambda m: None)
    assert [c["modality"] for c in checked] == ["fundus"]


def _pretrained_too_soon(*args, **kwargs):
    raise AssertionError("pre-trained before the grid was checked")


def _finished_transfer_run(run_dir: Path, init: Path, **settings) -> None:
    """A finished fine-tuning of --quick's synthetic_fundus, 2 labels, seed 0 from ``init``
    (as TransferConfig saves it: the folder absolute, once made), with ``settings`` changed."""
    from dataclasses import asdict

    import localdisc.tasks.benchmark_transfer as bench

    config = bench.preset(bench.BenchmarkConfig(quick=True, **settings))
    saved = bench.TransferConfig(bench.TASKS["synthetic_fundus"].spec(None, True), "vessels",
                                 "random", "2", config.size, max_test=config.max_test,
                                 train=config.finetune_config(0))  # fmt: skip
    run_dir.mkdir(parents=True)
    saved = {**asdict(saved), "init": str(init.resolve())}
    (run_dir / "config.json").write_text(json.dumps({"transfer": saved}))
    (run_dir / "metrics.json").write_text("{}")


def test_a_transfer_run_folder_of_other_settings_is_refused_before_any_pretraining(
    tmp_path, monkeypatch
):
    """The transfer benchmark checks its run folders before it trains, but pretrain-methods calls
    it after every method has pre-trained (minutes each): a run of an earlier call's other
    settings (here 3 steps per epoch) was refused then, and its advice (another --out) lost them.
    A method's run folder does not exist before its pre-training: its fine-tunings are labelled
    and compared as they will be once it is made (with --out relative too), so that one of this
    call's settings is not refused."""
    import localdisc.tasks.benchmark_methods as methods
    from localdisc.errors import LocaldiscError

    monkeypatch.setattr(methods, "_pretrain", _pretrained_too_soon)
    monkeypatch.chdir(tmp_path)
    config = methods.MethodsBenchmarkConfig(methods=["ld", "simclr"], quick=True)
    for out, steps in ((Path("same"), None), (Path("other"), 3)):
        run = out / "transfer" / "runs" / "synthetic_fundus" / "simclr" / "labels-2" / "seed-0"
        _finished_transfer_run(run, out / "pretrain" / "fundus" / "simclr", steps_per_epoch=steps)
        if steps is None:  # this call's settings: its runs go on to the pre-trainings
            with pytest.raises(AssertionError, match="pre-trained before the grid was checked"):
                methods.run_methods_benchmark(config, out, log=lambda m: None)
            continue
        message = f"{run}: holds a finished fine-tuning with other settings (--steps-per-epoch"
        with pytest.raises(LocaldiscError, match=re.escape(message)):
            methods.run_methods_benchmark(config, out, log=lambda m: None)
        assert not (out / "pretrain").exists()


def test_a_method_whose_pre_training_diverges_is_left_out_and_the_others_go_on(
    tmp_path, monkeypatch
):
    """A peer's pre-training that diverged stopped the whole comparison after the methods
    before it had trained, and no table was written: it is left out of the tables, listed with
    why, and the other methods are fine-tuned and tabulated, under the labels (and run folders)
    checked before the pre-trainings: with two pools, xray/simclr stays xray/simclr."""
    import localdisc.tasks.benchmark_methods as methods
    from localdisc.tasks.benchmark_methods import MethodsBenchmarkConfig, run_methods_benchmark

    made = methods._settings

    def simclr_diverges(config, method, modality, spec):  # a learning rate no training survives
        settings = made(config, method, modality, spec)
        if (method, modality) == ("simclr", "fundus"):
            settings = {**settings, "lr": 1e30, "max_nonfinite": 1}
        return settings

    monkeypatch.setattr(methods, "_settings", simclr_diverges)
    config = MethodsBenchmarkConfig(  # simclr named twice: run, and left out, once
        methods=["simclr", "ld", "simclr"], quick=True,
        tasks=["synthetic_fundus", "synthetic_xray"],
    )  # fmt: skip
    logged: list[str] = []
    summary = run_methods_benchmark(config, tmp_path, log=logged.append)
    assert set(summary["pretraining"]) == {"ld (fundus)", "simclr (xray)", "ld (xray)"}
    assert list(summary["diverged"]) == ["simclr (fundus)"]
    assert "non-finite losses in a row" in summary["diverged"]["simclr (fundus)"]
    rows = {row for row in summary["transfer"]["dice"] if "(" not in row}
    assert rows == {"random", "fundus/ld", "xray/ld", "xray/simclr"}
    assert (tmp_path / "transfer" / "runs" / "synthetic_xray" / "xray" / "simclr").is_dir()
    assert any(m.startswith("leaving simclr (fundus) out of the tables: ") for m in logged)
    report = (tmp_path / "results.md").read_text()
    assert "Diverged, not in the tables" in report
    assert "- simclr (fundus): 1 non-finite losses in a row at step" in report
    # A rerun reuses the others and leaves simclr (fundus) out from its record, untrained: no
    # pool is read either (a pool removed since refused the rerun).
    trained: list[str] = []
    monkeypatch.setattr(
        "localdisc.engine.pretrain.pretrain", lambda config, run_dir, **kw: trained.append(run_dir)
    )
    checked: list[dict] = []
    monkeypatch.setattr(methods, "_check_pool", checked.append)
    summary = run_methods_benchmark(config, tmp_path, log=logged.append)
    assert trained == [] and checked == [] and list(summary["diverged"]) == ["simclr (fundus)"]
    assert "[recorded by an earlier call in " in summary["diverged"]["simclr (fundus)"]


def test_a_pre_training_finished_by_hand_after_it_diverged_is_reused(tmp_path, monkeypatch):
    """Its record of the divergence was read before the finished run (resumed by
    `pretrain --resume`, as the divergence message advises), which never reached the tables."""
    import localdisc.engine.pretrain as engine
    import localdisc.tasks.benchmark_methods as methods
    from localdisc.errors import DivergedError

    config = methods.preset(methods.MethodsBenchmarkConfig(methods=["simclr"], quick=True))
    settings = methods._settings(config, "simclr", "fundus", "synthetic_fundus:8")
    run_dir = tmp_path / "pretrain" / "fundus" / "simclr"
    real = engine.pretrain

    def diverges(config, run_dir, **kwargs):  # after its config.json and first steps
        real(config, run_dir, stop_at_step=2, **kwargs)
        raise DivergedError("5 non-finite losses in a row at step 3; stopped")

    monkeypatch.setattr(engine, "pretrain", diverges)
    with pytest.raises(DivergedError):
        methods._pretrain(settings, run_dir, lambda m: None)
    monkeypatch.setattr(engine, "pretrain", real)
    real(engine.PretrainConfig(**settings), run_dir, resume=True, log=lambda m: None)
    reached = methods._pretrain(settings, run_dir, lambda m: None)
    assert reached["steps"] == settings["stage1_steps"] + settings["stage2_steps"]
    assert not (run_dir / "diverged.json").exists()


def test_fine_tunings_of_a_deleted_budgeted_pre_training_are_refused_before_it_trains(
    tmp_path, monkeypatch
):
    """A pre-training deleted after its fine-tunings: under a time budget it trains again to other
    weights, and its fine-tunings (which recorded the old weights' SHA-256) were refused only
    then, minutes later (reviewer)."""
    from dataclasses import asdict

    import localdisc.tasks.benchmark_methods as methods
    import localdisc.tasks.benchmark_transfer as bench
    from localdisc.errors import LocaldiscError

    monkeypatch.setattr(methods, "_pretrain", _pretrained_too_soon)
    config = methods.MethodsBenchmarkConfig(
        methods=["simclr"], tasks=["synthetic_fundus"], budget_seconds=5.0,
        pools=["fundus=synthetic_fundus:8"],
    )  # fmt: skip
    planned = []  # the fine-tunings' folders and settings, as the grid plans them
    monkeypatch.setattr(bench, "_check_out_dir", lambda d, c, f: planned.append((d, c)))
    with pytest.raises(AssertionError, match="pre-trained before the grid was checked"):
        methods.run_methods_benchmark(config, tmp_path, log=lambda m: None)
    monkeypatch.undo()
    monkeypatch.setattr(methods, "_pretrain", _pretrained_too_soon)
    run_dir, settings = next((d, c) for d, c in planned if "simclr" in d.parts)
    run_dir.mkdir(parents=True)
    weights = {"file": str(tmp_path / "pretrain" / "fundus" / "simclr" / "encoder.safetensors"),
               "sha256": "ab" * 32}  # fmt: skip
    (run_dir / "config.json").write_text(
        json.dumps({"transfer": asdict(settings), "init_weights": weights})
    )
    (run_dir / "metrics.json").write_text("{}")
    message = f"{run_dir}: holds a fine-tuning of the pre-training "
    with pytest.raises(LocaldiscError, match=re.escape(message)) as refused:
        methods.run_methods_benchmark(config, tmp_path, log=lambda m: None)
    assert "abababababab... of its weights" in str(refused.value)
    assert "each task's simclr folder under" in str(refused.value)
