import csv
import json
import re
import shutil
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
import torch

from helpers import tiny_pretrain_config
from localdisc.engine.checkpoint import load_safetensors
from localdisc.engine.monitor import TrainingLog
from localdisc.engine.pretrain import PretrainConfig, _split_pool, pretrain
from localdisc.errors import CheckpointError, DivergedError, LocaldiscError


@pytest.fixture(scope="module")
def pool():
    from localdisc.data.pool import synthetic_pool

    return synthetic_pool(6, "fundus", 48)


def test_end_to_end_writes_every_output_and_loss_goes_down(tmp_path, pool):
    config = tiny_pretrain_config(stage1_steps=25, stage2_steps=5, checkpoint_every=10,
                                  val_every=10, figure_every=30, batch=2)  # fmt: skip
    result = pretrain(config, tmp_path, pool=pool)
    assert result.steps == 30 and result.skipped_steps == 0
    for name in ("config.json", "model.safetensors", "encoder.safetensors", "stage1.safetensors",
                 "model_best.safetensors", "log.csv"):  # fmt: skip
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "figures" / "clusters_00000030.png").is_file()
    assert (tmp_path / "figures" / "similarity_00000030.png").is_file()
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["pretrain"]["stage1_steps"] == 25 and meta["model"]["clusters"] == 4
    rows = list(csv.DictReader((tmp_path / "log.csv").read_text().splitlines()))
    train = [float(r["loss"]) for r in rows if r["loss"] and r["stage"] == "1"]
    assert sum(train[-5:]) / 5 < sum(train[:5]) / 5  # stage-1 loss decreases
    assert any(r["val_loss"] for r in rows)
    assert {r["stage"] for r in rows} == {"1", "2"}
    assert all(r["rd"] for r in rows if r["stage"] == "2" and r["loss"])


@pytest.mark.parametrize(
    "stop_at,stage1_steps,sampler",
    # interrupted in stage 1, in stage 2, right after stage 1's end; drawn as older runs drew
    [(3, 3, "epoch"), (5, 3, "epoch"), (4, 4, "epoch"), (5, 3, "replacement")],
)
def test_resume_ends_with_the_same_weights(tmp_path, pool, stop_at, stage1_steps, sampler):
    config = tiny_pretrain_config(stage1_steps=stage1_steps, sampler=sampler, val_every=1)
    straight = pretrain(config, tmp_path / "straight", pool=pool)
    pretrain(config, tmp_path / "resumed", pool=pool, stop_at_step=stop_at)
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    resumed = pretrain(config, tmp_path / "resumed", pool=pool, resume=True)
    assert (tmp_path / "resumed" / "stage1.safetensors").is_file()
    # The best model too: a resume that forgot the best validation before it replaced it with
    # a worse one (reviewer's mutation).
    assert resumed.best_val == straight.best_val
    for name in ("model.safetensors", "model_best.safetensors"):
        a = load_safetensors(tmp_path / "straight" / name)
        b = load_safetensors(tmp_path / "resumed" / name)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{name}: {k}")
    # The same rows (but for the columns of times: images/s and the time of the row).
    assert untimed_rows(tmp_path / "straight") == untimed_rows(tmp_path / "resumed")


def log_rows(run_dir):
    """The rows of ``run_dir``'s log.csv."""
    return list(csv.DictReader((run_dir / "log.csv").read_text().splitlines()))


def untimed_rows(run_dir):
    """The rows of ``run_dir``'s log.csv without its columns of times."""
    timed = ("img_per_s", "time", "elapsed")
    return [{k: v for k, v in r.items() if k not in timed} for r in log_rows(run_dir)]


def test_resume_without_a_run_is_a_clear_error(tmp_path, pool):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        pretrain(tiny_pretrain_config(), tmp_path, pool=pool, resume=True)


@pytest.mark.parametrize("text", ['{"pretrain": {"stage1_st', "[]", "\xff"])
def test_resume_with_a_damaged_config_json_names_it(tmp_path, pool, text):
    # It raised json's bare JSONDecodeError (or KeyError), naming no file.
    (tmp_path / "config.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(CheckpointError, match=r"config\.json: cannot read this run's settings"):
        pretrain(tiny_pretrain_config(), tmp_path, pool=pool, resume=True)


@pytest.mark.parametrize(
    "record,what", [({"transfer": {}, "segmenter": {}}, "a fine-tuning's"), ({}, "another")]
)
def test_resume_into_another_command_s_folder_does_not_call_its_record_damaged(
    tmp_path, pool, record, what
):
    # A fine-tuning's sound config.json was "damaged: restore it" (user reviewer).
    (tmp_path / "config.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=f"not a pre-training's record but {what}") as err:
        pretrain(tiny_pretrain_config(), tmp_path, pool=pool, resume=True)
    assert "damaged" not in str(err.value)


@pytest.mark.parametrize("field,value", [("stage1_steps", "3"), ("batch", None), ("data", 5)])
def test_resume_with_settings_of_the_wrong_type_names_config_json(tmp_path, pool, field, value):
    # A bare TypeError traceback (reviewer).
    pretrain(tiny_pretrain_config(), tmp_path, pool=pool, stop_at_step=1, log=lambda m: None)
    record = json.loads((tmp_path / "config.json").read_text())
    record["pretrain"][field] = value
    (tmp_path / "config.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"config\.json: cannot read this run's settings"):
        pretrain(tiny_pretrain_config(), tmp_path, pool=pool, resume=True, log=lambda m: None)


@pytest.mark.parametrize("damage", [b"Step,stage\n1,1\n", b"step,stage\n\xff,1\n", b"x"])
def test_resume_with_a_damaged_log_csv_names_it(tmp_path, pool, damage):
    # KeyError, UnicodeDecodeError or csv's ValueError, naming no file (reviewer).
    pretrain(tiny_pretrain_config(), tmp_path, pool=pool, stop_at_step=2, log=lambda m: None)
    if damage == b"x":  # a row of more fields than the header
        damage = (tmp_path / "log.csv").read_bytes() + b"1,1" + b",9" * 30 + b"\n"
    (tmp_path / "log.csv").write_bytes(damage)
    if damage.startswith(b"step,stage,lr"):  # the extra row is left out, the others kept
        pretrain(tiny_pretrain_config(), tmp_path, pool=pool, resume=True, log=lambda m: None)
        return
    with pytest.raises(CheckpointError, match=r"log\.csv: damaged"):
        pretrain(tiny_pretrain_config(), tmp_path, pool=pool, resume=True, log=lambda m: None)


def test_resume_of_a_finished_run_without_its_checkpoints_is_refused(tmp_path, pool):
    # It trained again from step 0 over the finished run's log and weights (reviewer).
    import shutil

    pretrain(tiny_pretrain_config(), tmp_path, pool=pool, log=lambda m: None)
    shutil.rmtree(tmp_path / "checkpoints")
    before = (tmp_path / "log.csv").read_text()
    with pytest.raises(CheckpointError, match="but no checkpoint .*nothing to resume"):
        pretrain(tiny_pretrain_config(), tmp_path, pool=pool, resume=True, log=lambda m: None)
    assert (tmp_path / "log.csv").read_text() == before


@pytest.mark.parametrize(
    "limit,hint",
    [
        (3, r"The newest checkpoint is \S+step_0*2\b.*--resume"),  # written at step 2
        (1, r"No checkpoint was written before it .*lower than 0\.001 \(--lr\)"),
    ],
)
def test_non_finite_losses_stop_the_run_after_the_limit(tmp_path, pool, monkeypatch, limit, hint):
    import localdisc.engine.pretrain as engine

    real = engine.ld_losses

    def poisoned(*args, **kwargs):
        terms = real(*args, **kwargs)
        terms.total = terms.total * float("nan")
        return terms

    monkeypatch.setattr(engine, "ld_losses", poisoned)
    # DivergedError: benchmark pretrain-methods leaves such a method out and goes on.
    # Its hint names a checkpoint only where one was written (it named an empty folder).
    with pytest.raises(DivergedError, match=f"{limit} non-finite losses in a row") as raised:
        pretrain(tiny_pretrain_config(max_nonfinite=limit), tmp_path, pool=pool)
    assert re.search(hint, str(raised.value)), str(raised.value)


def test_a_stop_asked_for_as_the_run_diverges_is_a_stop_not_a_divergence(
    tmp_path, pool, monkeypatch
):
    """Ctrl-C or SIGTERM in the step of the last non-finite loss allowed ended as a
    DivergedError, which the benchmarks skip, going on to their next run: the stop was lost."""
    import os
    import signal

    import localdisc.engine.pretrain as engine

    real, calls = engine.ld_losses, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        terms = real(*args, **kwargs)
        terms.total = terms.total * float("nan")
        return terms

    monkeypatch.setattr(engine, "ld_losses", poisoned)
    logged: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_pretrain_config(max_nonfinite=2), tmp_path, pool=pool, log=logged.append)
    assert logged[-1].startswith("2 non-finite losses in a row at step 1; stopped.")
    assert logged[-1].endswith("[stopped by SIGINT]")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("stage1_steps", -1, ">= 0"),
        ("size", 40, "multiple of 16"),
        ("clusters", 1, ">= 2"),
        ("modality", "ct", "fundus or xray"),
    ],  # fmt: skip
)
def test_config_rejects_bad_values(field, value, message):
    with pytest.raises(LocaldiscError, match=message):
        tiny_pretrain_config(**{field: value})


def test_lr_is_halved_every_interval_within_each_stage():
    config = PretrainConfig(stage1_steps=20_000, stage2_steps=80_000)
    assert config.lr_at(0) == 1e-3 and config.lr_at(9_999) == 1e-3
    assert config.lr_at(10_000) == 5e-4
    assert config.lr_at(20_000) == 1e-3  # stage 2 starts its own schedule
    assert config.lr_at(20_000 + 35_000) == 1e-3 / 8
    assert config.resolved_pool_size == 512


def test_tensorboard_logs_when_installed(tmp_path, pool):
    pytest.importorskip("torch.utils.tensorboard", reason="tensorboard is an optional extra")
    pretrain(tiny_pretrain_config(stage1_steps=2, stage2_steps=0), tmp_path, pool=pool)
    assert any((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_time_budgets_end_each_stage_and_keep_every_output(tmp_path, pool):
    messages = []
    config = tiny_pretrain_config(stage1_steps=10_000, stage2_steps=10_000, stage1_seconds=0.5,
                         stage2_seconds=0.5, checkpoint_every=10_000, val_every=10_000)  # fmt: skip
    result = pretrain(config, tmp_path, pool=pool, log=messages.append)
    assert 10_000 < result.steps < 20_000  # stage 1 cut short, stage 2 reached and cut short
    assert 2 <= result.trained_steps < 1_000  # the steps actually taken, not the step number
    assert result.images == result.trained_steps * 5 * config.batch
    budgets = [m for m in messages if "time budget" in m]
    assert len(budgets) == 2
    # steps of the stage, not the global number that starts stage 2 at stage1_steps
    assert f"after {result.steps - 10_000} steps of the stage" in budgets[1]
    for name in ("model.safetensors", "encoder.safetensors", "stage1.safetensors"):
        assert (tmp_path / name).is_file(), name
    assert list((tmp_path / "figures").glob("clusters_*.png"))
    assert list((tmp_path / "checkpoints").glob("step_*"))
    # Each stage ended by its budget is validated, as one ended by its steps: model_best was
    # stage 1's model (its clustering head untrained) when stage 2 ran out before validating.
    validated = [(r["step"], r["stage"]) for r in log_rows(tmp_path) if r.get("val_loss")]
    assert [stage for _, stage in validated] == ["1", "2"]
    assert validated[1][0] == str(result.steps)
    best = load_safetensors(tmp_path / "model_best.safetensors")
    stage1 = load_safetensors(tmp_path / "stage1.safetensors")
    last = load_safetensors(tmp_path / "model.safetensors")
    assert any(not torch.equal(best[k], stage1[k]) for k in best)
    assert all(torch.equal(best[k], last[k]) for k in best)  # stage 2's only validation
    with pytest.raises(LocaldiscError, match="time budgets must be > 0"):
        tiny_pretrain_config(stage1_seconds=0)


def test_a_compiled_network_trains_like_the_plain_one(tmp_path, pool, monkeypatch):
    """``compile=True`` trains through torch.compile (TorchDynamo traces the model; a backend
    that runs the traced graphs as they are here, so CI builds no C++) and ends with the weights
    of the uncompiled run."""
    compile_fn = torch.compile
    compiled, graphs = [], []

    def graph_as_is(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def compile_as_is(module, **kwargs):
        compiled.append(type(module).__name__)
        return compile_fn(module, backend=graph_as_is, **kwargs)

    monkeypatch.setattr(torch, "compile", compile_as_is)
    config = tiny_pretrain_config()
    pretrain(config, tmp_path / "plain", pool=pool)
    pretrain(replace(config, compile=True), tmp_path / "compiled", pool=pool)
    assert compiled == ["LDModel", "LDModel"]  # once per stage
    assert graphs  # the steps ran the traced model
    a = load_safetensors(tmp_path / "plain" / "model.safetensors")
    b = load_safetensors(tmp_path / "compiled" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_the_time_left_of_a_budget_is_the_budget_less_the_time_spent():
    from localdisc.engine.pretrain import budget_time_left

    def left(step, stage, seconds, steps, **budgets):
        config = tiny_pretrain_config(stage1_steps=20_000, stage2_steps=80_000, **budgets)
        return budget_time_left(config, step, stage, seconds, steps)

    assert left(100, 1, 10.0, 100) is None  # no budget: the bar counts steps
    # 10 steps a second would take 10 000 s; the budgets end the stages sooner.
    # Stage 2 without a budget ends at its last step, at the pace so far.
    assert left(100, 1, 10.0, 100, stage1_seconds=60.0) == pytest.approx(50 + 8000)
    assert left(0, 1, 0.5, 0, stage1_seconds=60.0) is None  # no pace yet: unknown
    both = {"stage1_seconds": 60.0, "stage2_seconds": 240.0}
    assert left(100, 1, 10.0, 100, **both) == pytest.approx(50 + 240)
    assert left(20_100, 2, 10.0, 100, **both) == pytest.approx(230)
    assert left(20_100, 2, 300.0, 100, **both) == 0.0  # spent: the loop ends at the next step
    # Steps that end before the budget: the pace says when.
    assert left(19_900, 1, 10.0, 100, **both) == pytest.approx(10 + 240)
    assert left(99_950, 2, 10.0, 100, stage2_seconds=600.0) == pytest.approx(5.0)
    # No step yet: the budgets bound the time left.
    assert left(0, 1, 0.5, 0, **both) == pytest.approx(59.5 + 240)


def test_a_budgeted_run_gives_the_progress_bar_its_time_left(tmp_path, pool, monitor_bar):
    # A million steps at a few a second, but 3 s of budget: the bar must not say days.
    config = tiny_pretrain_config(stage1_steps=10**6, stage2_steps=0, stage1_seconds=3.0,
                                  checkpoint_every=10**6, val_every=10**6)  # fmt: skip
    pretrain(config, tmp_path, pool=pool)
    shown = [kwargs.get("time_left") for kwargs in monitor_bar]
    assert shown and all(t is not None and 0.0 <= t <= 3.0 for t in shown)


@pytest.fixture
def monitor_bar(monkeypatch):
    """The keyword arguments of every progress-bar update of a pre-training."""
    import localdisc.engine.pretrain as engine

    updates: list[dict] = []

    class Recorder:
        def __init__(self, *args, **kwargs):
            pass

        def update(self, completed, phase=None, info=None, **kwargs):
            updates.append(kwargs)

        def close(self):
            pass

    monkeypatch.setattr(engine, "ProgressBar", Recorder)
    return updates


def test_skipped_pool_files_are_said_not_only_written(tmp_path):
    from PIL import Image

    from localdisc.data.synthetic import synthetic_fundus

    folder = tmp_path / "pool"
    folder.mkdir()
    for i in range(4):
        image = (synthetic_fundus(48, seed=i).image * 255).astype("uint8")
        Image.fromarray(image).save(folder / f"{i}.png")
    (folder / "bad.png").write_bytes(b"not a png")
    lines: list[str] = []
    config = tiny_pretrain_config(data=[str(folder)], skip_bad=True, stage1_steps=1,
                                  stage2_steps=1, val_images=0)  # fmt: skip
    pretrain(config, tmp_path / "run", log=lines.append)
    said = [line for line in lines if line.startswith("skipped 1 unreadable pool image file(s)")]
    assert len(said) == 1 and f"{folder / 'bad.png'} (content is not a PNG" in said[0]
    assert f"listed under skipped_files in {tmp_path / 'run' / 'config.json'}" in said[0]
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["skipped_files"][0][0] == str(folder / "bad.png")


def test_paths_in_the_config_are_kept_as_text(tmp_path):
    # Path objects failed in the spec parser ("no attribute 'partition'") and in config.json,
    # and one folder given as a str was read letter by letter.
    config = PretrainConfig(data=tmp_path, init_from=tmp_path / "run", prior=tmp_path / "masks")
    assert config.data == [str(tmp_path)]
    assert (config.init_from, config.prior) == (str(tmp_path / "run"), str(tmp_path / "masks"))
    assert PretrainConfig(data="synthetic_fundus:2").data == ["synthetic_fundus:2"]
    assert PretrainConfig(data=[tmp_path, "synthetic_fundus:2"]).data == [
        str(tmp_path), "synthetic_fundus:2"
    ]  # fmt: skip
    json.dumps(config.__dict__)


def _image_folder(folder, n=6):
    """A folder of ``n`` small synthetic fundus photographs."""
    from PIL import Image

    from localdisc.data.synthetic import synthetic_fundus

    folder.mkdir(parents=True)
    for i in range(n):
        image = (synthetic_fundus(48, seed=i).image * 255).astype("uint8")
        Image.fromarray(image).save(folder / f"{i}.png")
    return folder


def test_a_run_resumes_from_another_directory(tmp_path, monkeypatch):
    # config.json saved --data as typed ("mydata"), and the saved settings win on --resume: a
    # job started in another directory failed ("mydata: no such folder"), even given the
    # folder's absolute path, which was called "other settings".
    data = _image_folder(tmp_path / "start" / "mydata")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "start")
    config = tiny_pretrain_config(data=["mydata"], stage1_steps=2, stage2_steps=1)
    pretrain(config, tmp_path / "run", stop_at_step=2)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["pretrain"]
    assert saved["data"] == [str(data.resolve())]
    monkeypatch.chdir(tmp_path / "elsewhere")
    lines: list[str] = []
    result = pretrain(replace(config, data=[str(data)]), tmp_path / "run", resume=True,
                      log=lines.append)  # fmt: skip
    assert result.steps == 3
    assert not [line for line in lines if "not the given ones" in line]  # the same folder


def test_a_run_inside_its_data_folder_is_not_pooled_by_the_next(tmp_path):
    # `pretrain --data D --out D/run`: the next run on D pooled the first one's figures (and a
    # finetune --out inside its images recalibrated batch norm on its predictions).
    from localdisc.data.datasets import folder_image_files

    data = _image_folder(tmp_path / "mydata")
    pretrain(tiny_pretrain_config(data=[str(data)]), data / "run")
    assert list((data / "run" / "figures").glob("*.png"))  # what was pooled
    pretrain(tiny_pretrain_config(data=[str(data)]), tmp_path / "second")
    pool = json.loads((tmp_path / "second" / "config.json").read_text())["pool"]
    assert pool["images"] == 6  # the photographs, none of the run's figures
    assert folder_image_files(data) == sorted(data.glob("*.png"))
    # A folder of one's own with a config.json of another program is data as before.
    (data / "other").mkdir()
    (data / "other" / "config.json").write_text('{"environment": {}}')
    shutil.copy(data / "0.png", data / "other" / "x.png")
    assert data / "other" / "x.png" in folder_image_files(data)


def test_the_same_folder_given_relatively_or_absolutely_is_the_same_setting(
    tmp_path, pool, monkeypatch
):
    from localdisc.engine.pretrain import holds_run_of, settings_differences

    _image_folder(tmp_path / "mydata", n=1)
    monkeypatch.chdir(tmp_path)
    config = tiny_pretrain_config(data=[str(tmp_path / "mydata")], stage1_steps=1,
                                  stage2_steps=1)  # fmt: skip
    pretrain(config, tmp_path / "run", pool=pool)
    assert settings_differences(tmp_path / "run", replace(config, data=["mydata"])) == []
    assert settings_differences(tmp_path / "run", replace(config, data=["./mydata/"])) == []
    assert holds_run_of(tmp_path / "run", replace(config, data=["mydata"]))
    other = settings_differences(tmp_path / "run", replace(config, data=["elsewhere"]))
    assert other and other[0].startswith("data [")


def test_config_json_saves_paths_absolute_and_generated_specs_as_given(tmp_path, pool, monkeypatch):
    from localdisc.engine.pretrain import _with_absolute_paths

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for folder in ("DRIVE", "mydata", "x", "home/pool", "masks", "JSRT", "runs/a"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "runs/a/stage1.safetensors").touch()
    here = tmp_path.resolve()
    data = ["mydata", "synthetic_fundus:24", "skimage:retina", "drive:DRIVE", "folder:x",
            "synthetic_fundus", "~/pool"]  # fmt: skip
    config = tiny_pretrain_config(data=data, stage1_steps=1, stage2_steps=1)
    pretrain(config, tmp_path / "run", pool=pool)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["pretrain"]
    assert saved["data"] == [
        f"{here}/mydata", "synthetic_fundus:24", "skimage:retina", f"drive:{here}/DRIVE",
        f"folder:{here}/x", "synthetic_fundus", str(Path("~/pool").expanduser().resolve()),
    ]  # fmt: skip
    # A prior's ROOT and its :TARGET (kept), the run to start from; simulators, generated sets.
    for prior, absolute in [
        ("masks", f"{here}/masks"),
        ("jsrt_scr:JSRT:heart", f"jsrt_scr:{here}/JSRT:heart"),
        ("simulated:vessels", "simulated:vessels"),
        ("synthetic_xray:heart", "synthetic_xray:heart"),
        ("synthetic_xray:40", "synthetic_xray:40"),
    ]:
        assert _with_absolute_paths(replace(config, prior=prior))["prior"] == absolute
    paths = _with_absolute_paths(replace(config, init_from="runs/a/stage1.safetensors"))
    assert paths["init_from"] == f"{here}/runs/a/stage1.safetensors"
    assert _with_absolute_paths(config)["prior"] is None


def _as_an_older_version_saved_it(run_dir, **fields):
    """Rewrite ``run_dir/config.json`` with ``fields`` as typed (older versions saved paths
    relative to the directory a run was started in)."""
    meta = json.loads((run_dir / "config.json").read_text())
    meta["pretrain"].update(fields)
    (run_dir / "config.json").write_text(json.dumps(meta))


def test_an_older_run_with_relative_paths_still_resumes(tmp_path, monkeypatch):
    data = _image_folder(tmp_path / "start" / "mydata")
    monkeypatch.chdir(tmp_path / "start")
    config = tiny_pretrain_config(data=["mydata"], stage1_steps=3, stage2_steps=1)
    pretrain(config, tmp_path / "run", stop_at_step=1)
    _as_an_older_version_saved_it(tmp_path / "run", data=["mydata"])
    # From the directory it was started in, as it always did.
    assert pretrain(config, tmp_path / "run", resume=True, stop_at_step=2).steps == 2
    assert data.is_dir()


@pytest.mark.parametrize(
    "n,val_images,reason",
    [(6, None, "pool of 6 < 20"), (6, 0, "val_images 0"), (1, None, "a pool of 1 image")],
)
def test_a_run_without_validation_images_says_model_best_is_the_last(
    tmp_path, pool, n, val_images, reason
):
    # best_val stayed Infinity and model_best was the last model, and nothing said so.
    lines: list[str] = []
    config = tiny_pretrain_config(val_images=val_images, stage1_steps=1, stage2_steps=1)
    pretrain(config, tmp_path, pool=pool[:n], log=lines.append)
    said = [line for line in lines if line.startswith("no validation images")]
    assert len(said) == 1 and reason in said[0]
    assert "model_best.safetensors is the last model" in said[0]


def test_a_run_with_validation_images_says_nothing_of_them(tmp_path, pool):
    lines: list[str] = []
    config = tiny_pretrain_config(stage1_steps=1, stage2_steps=1)  # val_images=2
    pretrain(config, tmp_path, pool=pool, log=lines.append)
    assert not [line for line in lines if "validation" in line]


def test_the_log_says_where_and_in_what_precision_it_trains(tmp_path, pool):
    # A cluster job's log file did not say which device, precision or number of processes ran.
    from localdisc.engine.precision import bf16_autocast_pays

    lines: list[str] = []
    config = tiny_pretrain_config(stage1_steps=1, stage2_steps=1, amp=False)
    pretrain(config, tmp_path / "f32", pool=pool, log=lines.append)
    assert "training on cpu in float32, 1 process(es)" in "\n".join(lines)
    lines.clear()
    config = tiny_pretrain_config(stage1_steps=1, stage2_steps=1, amp=True)
    pretrain(config, tmp_path / "amp", pool=pool, log=lines.append)
    precision = "bf16 autocast" if bf16_autocast_pays("cpu") else "float32"
    assert f"training on cpu in {precision}, 1 process(es)" in "\n".join(lines)


def test_the_logged_images_per_s_leave_out_validation_figures_and_checkpoints(
    tmp_path, pool, monkeypatch
):
    # A window of steps with a validation, figures or a checkpoint in it logged a dip in img/s.
    # Each of those takes 1 000 s here, on the loop's clock (the steps take a few ms).
    import types

    import localdisc.engine.pretrain as engine

    lost = [0.0]
    real_clock = time.perf_counter
    monkeypatch.setattr(
        engine, "time", types.SimpleNamespace(perf_counter=lambda: real_clock() + lost[0])
    )

    def slow(function):
        def wrapped(*args, **kwargs):
            lost[0] += 1000.0
            return function(*args, **kwargs)

        return wrapped

    for name in ("validation_loss", "write_figures", "save_checkpoint"):
        monkeypatch.setattr(engine, name, slow(getattr(engine, name)))
    # log every step; checkpoints and figures at 2, 4, 6, validations at 3, 6
    config = tiny_pretrain_config(figure_every=2)
    result = pretrain(config, tmp_path, pool=pool, log=lambda m: None)
    assert lost[0] >= 7000.0
    speeds = [float(r["img_per_s"]) for r in log_rows(tmp_path) if r["loss"]]
    assert len(speeds) == 6 and min(speeds) > 0.05  # 5 images in under 100 s, not 1 000
    assert result.images_per_s < 0.1  # the run's own: wall-clock, everything included


def test_each_log_row_says_when_it_was_written_and_an_older_log_still_resumes(tmp_path, pool):
    start = datetime.now().astimezone().replace(microsecond=0)
    config = tiny_pretrain_config()  # checkpoints at 2, 4, 6
    pretrain(config, tmp_path, pool=pool, stop_at_step=4, log=lambda m: None)
    rows = log_rows(tmp_path)
    end = datetime.now().astimezone()
    for row in rows:
        written = datetime.fromisoformat(row["time"])
        assert written.utcoffset() is not None  # comparable with another time zone's
        assert start <= written <= end and row["time"] == written.isoformat(timespec="seconds")
    # A log.csv written before the column: resumed, its rows are kept (without a time).
    older = [c for c in TrainingLog.COLUMNS if c != "time"]
    with open(tmp_path / "log.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, older, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    pretrain(config, tmp_path, pool=pool, resume=True, log=lambda m: None)
    resumed = log_rows(tmp_path)
    kept = [{**r, "time": ""} for r in rows]
    assert resumed[: len(rows)] == kept
    assert resumed[len(rows) :] and all(r["time"] for r in resumed[len(rows) :])


@pytest.mark.parametrize("val_images", [2, 0])
def test_the_figures_name_the_images_they_show(tmp_path, pool, monkeypatch, val_images):
    # They said "validation image 1 of 2": which image of the pool was that?
    import localdisc.engine.pretrain as engine

    shown = []
    monkeypatch.setattr(engine, "write_figures", lambda *a, **k: shown.append((a[1], k["names"])))
    config = tiny_pretrain_config(figure_every=6, val_images=val_images)
    names = [f"eye_{i}.png" for i in range(6)]
    pretrain(config, tmp_path, pool=pool, pool_names=names, log=lambda m: None)
    train, val = engine._split_pool(6, config)
    which = (val or train)[:4]  # the validation images, else the first training images
    images, titles = shown[-1]
    assert titles == [names[i] for i in which] and torch.equal(images, pool[which])
    # config.json says which images validate and which the figures show
    saved = json.loads((tmp_path / "config.json").read_text())["pool"]
    assert saved["val_names"] == [names[i] for i in val] and len(val) == val_images
    assert saved["figure_names"] == titles


def test_the_figures_name_the_files_of_a_folder_and_a_given_pool_by_index(tmp_path, pool):
    from PIL import Image

    folder = tmp_path / "eyes"
    (folder / "left").mkdir(parents=True)
    files = [f"{i}.png" for i in range(3)] + [f"left/{i}.png" for i in range(3)]
    for name, image in zip(files, pool, strict=True):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / name)
    config = tiny_pretrain_config(data=[str(folder)], figure_every=6, workers=1)
    pretrain(config, tmp_path / "run", log=lambda m: None)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["pool"]
    _, val = _split_pool(6, config)
    assert saved["val_names"] == [files[i] for i in val] == saved["figure_names"]
    pretrain(config, tmp_path / "given", pool=pool, log=lambda m: None)
    saved = json.loads((tmp_path / "given" / "config.json").read_text())["pool"]
    assert saved["val_names"] == [f"pool image {i}" for i in val]
    with pytest.raises(LocaldiscError, match="2 pool_names for a pool of 6 images"):
        pretrain(config, tmp_path / "short", pool=pool, pool_names=["a", "b"], log=print)


def test_config_json_records_the_environment_and_each_resume_adds_its_own(tmp_path, pool):
    from localdisc.eval.provenance import environment

    config = tiny_pretrain_config()
    pretrain(config, tmp_path, pool=pool, stop_at_step=2, log=lambda m: None)
    first = json.loads((tmp_path / "config.json").read_text())
    env = first["environment"]
    assert env["device"] == "cpu" and env["processes"] == 1
    assert set(env) == set(environment("cpu", amp=True)) and "resumed" not in first
    result = pretrain(config, tmp_path, pool=pool, resume=True, log=lambda m: None)
    assert result.steps == 6  # the environment takes no part in the resume's comparison
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["environment"] == env and meta["pretrain"] == first["pretrain"]
    assert [r["step"] for r in meta["resumed"]] == [2]
    assert meta["resumed"][0]["started"] >= env["started"]
    pretrain(config, tmp_path, pool=pool, resume=True, log=lambda m: None)  # finished already
    assert json.loads((tmp_path / "config.json").read_text()) == meta


def test_a_resumed_run_logs_the_rows_of_an_uninterrupted_one(tmp_path, pool):
    # Logged every 4 steps, stopped at the checkpoint of step 3: resumed, the row of step 4
    # averaged step 4 alone, where the uninterrupted run's averaged steps 1 to 4.
    config = tiny_pretrain_config(stage1_steps=4, stage2_steps=4, log_every=4, checkpoint_every=3)
    pretrain(config, tmp_path / "straight", pool=pool, log=lambda m: None)
    pretrain(config, tmp_path / "resumed", pool=pool, stop_at_step=3, log=lambda m: None)
    pretrain(config, tmp_path / "resumed", pool=pool, resume=True, log=lambda m: None)
    rows = untimed_rows(tmp_path / "straight")
    assert [r["step"] for r in rows if r["loss"]] == ["4", "8"]
    assert untimed_rows(tmp_path / "resumed") == rows


def _as_an_older_run(run_dir):
    """Strip what runs wrote before the log window, elapsed time and pool names were saved."""
    from localdisc.engine.checkpoint import list_checkpoints

    for folder in list_checkpoints(run_dir / "checkpoints"):
        state = json.loads((folder / "state.json").read_text())
        del state["log_window"], state["elapsed"], state["checksums"]["log_window.safetensors"]
        (folder / "log_window.safetensors").unlink()
        (folder / "state.json").write_text(json.dumps(state))
    meta = json.loads((run_dir / "config.json").read_text())
    del meta["pool"]["val_names"], meta["pool"]["figure_names"]
    (run_dir / "config.json").write_text(json.dumps(meta))


def test_an_older_checkpoint_without_the_log_window_still_resumes(tmp_path, pool, monkeypatch):
    import localdisc.engine.pretrain as engine

    shown = []
    monkeypatch.setattr(engine, "write_figures", lambda *a, **k: shown.append(k["names"]))
    config = tiny_pretrain_config(stage1_steps=4, stage2_steps=4, log_every=4, checkpoint_every=3,
                                  figure_every=8)  # fmt: skip
    pretrain(config, tmp_path, pool=pool, stop_at_step=3, log=lambda m: None)
    _as_an_older_run(tmp_path)
    result = pretrain(config, tmp_path, pool=pool, resume=True, log=lambda m: None)
    _, val = _split_pool(6, config)
    assert result.steps == 8 and shown == [[f"pool image {i}" for i in val]]
    # as before: the first row averages the steps since the resume, its elapsed time restarts
    rows = [r for r in log_rows(tmp_path) if r["loss"]]
    assert [r["step"] for r in rows] == ["4", "8"] and float(rows[0]["elapsed"]) < 60


def test_the_elapsed_time_counts_both_stages_and_the_starts_before_a_resume(
    tmp_path, pool, monkeypatch
):
    # The progress lines said "step 70/120, 0:00:03 elapsed" in stage 2: the steps counted
    # both stages, the time stage 2 alone (and a resume restarted it too). log.csv had no
    # elapsed time at all.
    import localdisc.engine.pretrain as engine
    from localdisc.engine.checkpoint import list_checkpoints

    config = tiny_pretrain_config()  # stage 2 from step 3; checkpoints at 2, 4, 6
    pretrain(config, tmp_path, pool=pool, stop_at_step=4, log=lambda m: None)
    first = log_rows(tmp_path)
    state = json.loads((list_checkpoints(tmp_path / "checkpoints")[-1] / "state.json").read_text())
    # (log.csv rounds to 0.1 s)
    assert state["step"] == 4 and state["elapsed"] >= float(first[-1]["elapsed"]) - 0.05 > 0
    before = []  # the time before it that each progress bar was given
    real = engine.ProgressBar

    def spy(*args, **kwargs):
        before.append(kwargs.get("before", 0.0))
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "ProgressBar", spy)
    pretrain(config, tmp_path, pool=pool, resume=True, log=lambda m: None)
    assert before == [state["elapsed"]]
    rows = log_rows(tmp_path)
    elapsed = [float(r["elapsed"]) for r in rows]
    assert elapsed == sorted(elapsed) and {r["stage"] for r in rows} == {"1", "2"}
    assert elapsed[len(first)] >= state["elapsed"] - 0.05  # the first row after the resume


def test_a_step_draws_distinct_images_and_each_once_per_epoch(tmp_path, monkeypatch):
    # Drawn with replacement, one image could be both instances of a step (a false negative
    # pair for SimCLR and DenseCL) and some were left unseen for long. Each pool image here is
    # a constant of its own value, so that the views' inputs name the images drawn.
    from localdisc.data.views import LDViews

    pool = (torch.arange(8, dtype=torch.uint8) * 30).view(8, 1, 1, 1).expand(8, 3, 48, 48)
    drawn: list[list[int]] = []
    real = LDViews.__call__

    def spy(self, x1, x2, *args, **kwargs):
        drawn.append([int(x[0, 0, 0]) // 30 for x in torch.cat([x1, x2])])
        return real(self, x1, x2, *args, **kwargs)

    monkeypatch.setattr(LDViews, "__call__", spy)
    config = tiny_pretrain_config(stage1_steps=6, stage2_steps=0, batch=1, val_every=100)
    pretrain(config, tmp_path / "epoch", pool=pool.clone(), log=lambda m: None)
    train = set(_split_pool(8, config)[0])  # 2 held out, drawn by the validation at the end
    steps = [pair for pair in drawn if set(pair) <= train]
    assert len(steps) == 6 and all(len(set(pair)) == 2 for pair in steps)
    for epoch in (steps[:3], steps[3:]):  # 6 training images, 2 a step: 3 steps an epoch
        assert sorted(i for pair in epoch for i in pair) == sorted(train)
    drawn.clear()
    pretrain(replace(config, sampler="replacement"), tmp_path / "replacement",
             pool=pool.clone(), log=lambda m: None)  # fmt: skip
    replaced = [pair for pair in drawn if set(pair) <= train]
    assert len(replaced) == 6 and replaced != steps  # as older runs drew, not as "epoch"
    with pytest.raises(LocaldiscError, match="sampler must be epoch or replacement, not 'once'"):
        tiny_pretrain_config(sampler="once")


def test_a_run_saved_before_the_sampler_setting_resumes_drawing_with_replacement(tmp_path, pool):
    from localdisc.engine.pretrain import settings_differences

    config = tiny_pretrain_config(sampler="replacement")
    pretrain(config, tmp_path, pool=pool, stop_at_step=2, log=lambda m: None)
    record = json.loads((tmp_path / "config.json").read_text())
    del record["pretrain"]["sampler"]  # as runs before it wrote config.json
    (tmp_path / "config.json").write_text(json.dumps(record))
    assert settings_differences(tmp_path, config) == []
    said: list[str] = []
    given = replace(config, sampler="epoch")
    assert settings_differences(tmp_path, given) == ["sampler 'replacement' (given 'epoch')"]
    assert pretrain(given, tmp_path, pool=pool, resume=True, log=said.append).steps == 6
    assert any("saved settings" in m and "sampler 'replacement'" in m for m in said)


@pytest.mark.parametrize("val_images", [1, 3])
def test_validation_pairs_each_held_out_image_with_a_training_image(
    tmp_path, monkeypatch, val_images
):
    # Paired with the next held-out image, each came twice among a batch's 2B (a lone one with
    # itself): the validation mix blended two views of one image and PD scored its own patches
    # as negatives, which training never does (reviewers).
    from localdisc.data.views import LDViews

    pool = (torch.arange(8, dtype=torch.uint8) * 30).view(8, 1, 1, 1).expand(8, 3, 48, 48)
    drawn: list[tuple[list[int], list[int]]] = []
    real = LDViews.__call__

    def spy(self, x1, x2, *args, **kwargs):
        drawn.append(([int(a[0, 0, 0]) // 30 for a in x1], [int(b[0, 0, 0]) // 30 for b in x2]))
        return real(self, x1, x2, *args, **kwargs)

    monkeypatch.setattr(LDViews, "__call__", spy)
    config = tiny_pretrain_config(stage1_steps=1, stage2_steps=1, batch=2, val_images=val_images)
    pretrain(config, tmp_path, pool=pool.clone(), log=lambda m: None)
    train, held_out = _split_pool(8, config)
    validation = [(x1, x2) for x1, x2 in drawn if set(x1) <= set(held_out)]
    assert sorted(i for x1, _ in validation for i in x1) == sorted(held_out * 2)  # once a stage
    assert all(set(x2) <= set(train) and len(set(x1 + x2)) == len(x1 + x2) for x1, x2 in validation)


def test_a_run_into_a_folder_another_process_runs_in_is_refused(tmp_path, pool):
    # Two runs in one --out mixed one's config.json with the other's weights, and each deleted
    # the other's checkpoint mid-write (reviewer). The folder is locked for the call.
    from localdisc.engine.checkpoint import RunFolderLock

    run = tmp_path / "run"
    run.mkdir()
    busy = "another process is running in this folder"
    # as another process would hold it (flock: per open file)
    with RunFolderLock(run), pytest.raises(LocaldiscError, match=busy):
        pretrain(tiny_pretrain_config(), run, pool=pool, log=lambda m: None)
    assert list(run.iterdir()) == []
    pretrain(tiny_pretrain_config(), run, pool=pool, log=lambda m: None)  # free: it runs
    pretrain(tiny_pretrain_config(), run, pool=pool, resume=True, log=lambda m: None)  # released


def test_a_fresh_run_folder_is_locked_once_it_is_made(tmp_path, pool):
    # The folder does not exist at the start: the lock is taken where the run makes it.
    from localdisc.engine.checkpoint import RunFolderLock

    run, tried = tmp_path / "fresh", []

    def log(line: str) -> None:
        if line.startswith("training on") and not tried:  # after config.json is written
            try:
                RunFolderLock(run).hold()  # another open of the folder: refused while held
            except LocaldiscError as exc:
                tried.append(str(exc))

    pretrain(tiny_pretrain_config(), run, pool=pool, log=log)
    assert tried and "another process is running in this folder" in tried[0]


def test_a_resume_keeps_the_best_validation_of_before_the_stop(tmp_path, pool):
    # Set to inf on resume, the first validation after it replaced model_best.safetensors even
    # when worse (reviewer's mutation; the straight-and-resumed runs did not show it, as their
    # losses only fell). A checkpoint whose best cannot be beaten keeps model_best as it was.
    config = tiny_pretrain_config(val_every=1)
    run = tmp_path / "run"
    pretrain(config, run, pool=pool, stop_at_step=5, log=lambda m: None)
    state = run / "checkpoints" / "step_00000004" / "state.json"
    saved = json.loads(state.read_text())
    state.write_text(json.dumps({**saved, "best_val": -1e9}))
    best = (run / "model_best.safetensors").read_bytes()
    result = pretrain(config, run, pool=pool, resume=True, log=lambda m: None)
    assert result.best_val == -1e9 and (run / "model_best.safetensors").read_bytes() == best


def test_a_resume_refused_for_a_pool_that_held_a_runs_figures_names_that_run(tmp_path):
    # A run started before 3866259 pooled the figures of a run inside its data; its resume
    # was refused with "restore the data", which had not changed (reviewer).
    data = _image_folder(tmp_path / "mydata")
    config = tiny_pretrain_config(data=[str(data)])
    pretrain(config, data / "run1", log=lambda m: None)  # a finished run inside the data
    pretrain(config, tmp_path / "run2", stop_at_step=2, log=lambda m: None)
    record = json.loads((tmp_path / "run2" / "config.json").read_text())
    record["pool"]["images"] += 2  # as the code before pooled run1's two figures
    (tmp_path / "run2" / "config.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError) as refused:
        pretrain(config, tmp_path / "run2", resume=True, log=lambda m: None)
    message = str(refused.value)
    assert (
        f"The data hold training runs or outputs of localdisc ({data / 'run1'}), which a run"
        in message
    )
    assert "Restore the data" in message  # the data may have changed too
    # And the outputs of a predict there, pooled before 7a0ee12 and left out since
    (data / "pred").mkdir()
    (data / "pred" / "predict.json").write_text(json.dumps({"images": [{"name": "x"}]}))
    (data / "pred" / "x_prob.png").write_bytes(
        (data / sorted(p.name for p in data.glob("*.png"))[0]).read_bytes()
    )
    with pytest.raises(
        CheckpointError,
        match=rf"\({re.escape(str(data / 'run1'))}, {re.escape(str(data / 'pred'))}\)",
    ):
        pretrain(config, tmp_path / "run2", resume=True, log=lambda m: None)
