import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from localdisc.cli import app

TINY = ["--stage1-steps", "2", "--stage2-steps", "2", "--size", "32", "--batch", "1",
        "--clusters", "4", "--dim", "8", "--device", "cpu"]  # fmt: skip


def test_pretrain_on_a_folder_of_images(tmp_path):
    from PIL import Image

    from localdisc.data.synthetic import synthetic_fundus

    folder = tmp_path / "pool"
    folder.mkdir()
    for i in range(4):
        image = (synthetic_fundus(64, seed=i).image * 255).astype("uint8")
        Image.fromarray(image).save(folder / f"img {i}.png")  # a space in the name, too
    out = tmp_path / "run"
    args = ["pretrain", "--data", str(folder), "--out", str(out), "--depth", "2", "--width", "8",
            "--pool-size", "48", "--crop-scale", "0.5", "1.0"]  # fmt: skip
    result = CliRunner().invoke(app, [*args, *TINY])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["pool"]["images"] == 4 and config["pretrain"]["stage2_steps"] == 2
    assert config["model"]["depth"] == 2 and config["model"]["width"] == 8
    assert config["pretrain"]["pool_size"] == 48 and config["pretrain"]["crop_scale"] == [0.5, 1.0]
    assert config["pretrain"]["amp"] is True  # bf16 where it pays (engine.precision)
    assert (out / "encoder.safetensors").is_file()
    assert "done: 4 steps," in result.output

    # A budget (1 ns) that ends stage 1 before its first step: the steps that ran are reported,
    # not the last step's number.
    budget = ["--stage1-seconds", "1e-9", "--out", str(out / "b"), "--no-amp"]
    again = CliRunner().invoke(app, [*args, *TINY, *budget])
    assert again.exit_code == 0, again.output
    assert "done: 2 steps (last step 4)," in again.output
    assert json.loads((out / "b" / "config.json").read_text())["pretrain"]["amp"] is False


@pytest.mark.parametrize(
    "args,message",
    [
        (["--stage1-steps", "-1"], "step counts must be >= 0"),
        (["--size", "40"], "multiple of 16"),
        (["--clusters", "1"], "clusters must be >= 2"),
        (["--depth", "6"], "depth must be 2 to 5"),
        (["--crop-scale", "0.5", "1.5"], "crop_scale must be 0 < min <= max <= 1"),
    ],
)
def test_bad_arguments_give_one_line_errors(tmp_path, args, message):
    cmd = [sys.executable, "-m", "localdisc", "pretrain", "--data", "synthetic_fundus:2",
           "--out", str(tmp_path / "run"), *TINY, *args]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_data_folder_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    cmd = [sys.executable, "-m", "localdisc", "pretrain", "--data", str(missing),
           "--out", str(tmp_path / "run"), *TINY]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "nowhere" in proc.stderr
    # Under torchrun every process says its own, named (rank 1 alone may meet one).
    env = {**os.environ, "RANK": "1"}
    other = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert other.returncode == 2 and other.stderr.startswith("[rank 1] error: ")


def test_resume_of_a_missing_run_is_one_line(tmp_path):
    cmd = [sys.executable, "-m", "localdisc", "pretrain", "--data", "synthetic_fundus:2",
           "--out", str(tmp_path / "absent"), "--resume", *TINY]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "nothing to resume" in proc.stderr


def test_pretrain_on_jsrt_images_without_scr_masks(tmp_path):
    # Pre-training reads images only: the SCR masks of jsrt_scr are not needed for it.
    import numpy as np
    from PIL import Image

    from localdisc.data.datasets import paper_splits

    table = paper_splits()["SCR"]
    (tmp_path / "JSRT" / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for stem in table["train"] + table["test"]:
        image = rng.integers(0, 256, (40, 40), np.uint8)
        Image.fromarray(image).save(tmp_path / "JSRT" / "images" / f"{stem}.png")
    out = tmp_path / "run"
    args = ["pretrain", "--data", f"jsrt_scr:{tmp_path}", "--out", str(out), "--modality", "xray",
            "--depth", "2", "--width", "8", "--pool-size", "32", *TINY]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["pool"]["images"] == 247


def test_max_images_help_says_what_skip_bad_does_to_it():
    """resolve_pool fills the places of skipped files with the files after the first N."""
    result = CliRunner().invoke(app, ["pretrain", "--help"], env={"COLUMNS": "400"})
    text = " ".join(result.stdout.replace("│", " ").split())  # as wrapped at any width
    assert "With --skip-bad, the files after the first N take the places of skipped ones." in text


def test_pretrain_takes_the_modality_of_its_data_when_not_given(tmp_path):
    # --modality was fundus whatever --data held: a folder of radiographs was pre-trained as
    # colour photographs, and finetune refused the run only later (reviewer).
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "cxr").mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 40), np.uint8)).save(
            tmp_path / "cxr" / f"{i}.png"
        )
    out = tmp_path / "run"
    args = ["pretrain", "--data", str(tmp_path / "cxr"), "--out", str(out), "--depth", "2",
            "--width", "8", "--pool-size", "32", *TINY]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "modality xray: that of --data (--modality chooses)" in result.output
    assert json.loads((out / "config.json").read_text())["pretrain"]["modality"] == "xray"
    again = CliRunner().invoke(app, [*args, "--resume"])  # the run's own, not guessed again
    assert again.exit_code == 0 and "that of --data" not in again.output
    # shape-guided train takes it so too (it was fundus; reviewer)
    sg = ["shape-guided", "train", "--data", str(tmp_path / "cxr"), "--prior", "simulated:lungs",
          "--out", str(tmp_path / "sg"), "--stage1-steps", "1", "--stage2-steps", "1", "--size",
          "32", "--pool-size", "32", "--depth", "2", "--width", "8", "--batch", "1", "--device",
          "cpu", "--prior-count", "4"]  # fmt: skip
    trained = CliRunner().invoke(app, sg)
    assert trained.exit_code == 0, trained.output
    assert json.loads((tmp_path / "sg" / "config.json").read_text())["pretrain"]["modality"] == (
        "xray"
    )
    # Data of two modalities are refused, each named.
    from localdisc.errors import DatasetError

    mixed = ["pretrain", "--data", str(tmp_path / "cxr"), "--data", "synthetic_fundus:4",
             "--out", str(tmp_path / "mixed"), *TINY]  # fmt: skip
    refused = CliRunner().invoke(app, mixed)
    assert isinstance(refused.exception, DatasetError)  # the entry point prints it in one line
    assert str(refused.exception) == (
        f"--data holds images of two modalities ({tmp_path / 'cxr'}: xray; synthetic_fundus:4: "
        "fundus); give --modality"
    )


def test_a_run_to_go_on_keeps_its_own_modality(tmp_path):
    # A demo made when --modality defaulted to fundus, run again on X-ray --data, was refused
    # as a run of other settings (reviewer): the modality of a run in --out is kept.
    import numpy as np
    from PIL import Image

    from localdisc.cli import _data_modality

    (tmp_path / "cxr").mkdir()
    Image.fromarray(np.full((16, 16), 90, np.uint8)).save(tmp_path / "cxr" / "a.png")
    assert _data_modality([str(tmp_path / "cxr")]) == "xray"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text(json.dumps({"pretrain": {"modality": "fundus"}}))
    # config.json alone: a run stopped before its first checkpoint starts again on the data
    # given, in their modality (a reviewer's demo took the dead run's)
    assert _data_modality([str(tmp_path / "cxr")], tmp_path / "out") == "xray"
    (tmp_path / "out" / "checkpoints" / "step_00000100").mkdir(parents=True)
    assert _data_modality([str(tmp_path / "cxr")], tmp_path / "out") == "fundus"


def test_an_out_under_a_file_is_refused_before_the_pool_is_decoded(tmp_path):
    # --out A_FILE/sub was found after the whole pool was decoded (a minute of KaggleDR).
    (tmp_path / "afile.txt").write_text("x")
    for command in (["pretrain", "--data", "synthetic_fundus:2"], ["demo", "--quick"]):
        result = CliRunner().invoke(app, [*command, "--out", str(tmp_path / "afile.txt" / "sub")])
        assert f"{tmp_path / 'afile.txt'} is a file, not a folder" in str(result.exception)
    # demo --out A_FILE says so, not "holds a run with other settings" (reviewer)
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path / "afile.txt")])
    assert "a file, not a folder" in str(result.exception), result.output


def test_out_of_memory_is_one_line(monkeypatch, capsys):
    # --size 100000 asked numpy for 292 GiB: a traceback (reviewer).
    from localdisc import cli
    from localdisc.data import datasets

    class Huge(dict):
        def values(self):
            raise MemoryError("Unable to allocate 292. GiB")

    monkeypatch.setattr(datasets, "DATASETS", Huge())
    monkeypatch.setattr(sys, "argv", ["localdisc", "datasets", "list"])
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip() == "error: out of memory"
    monkeypatch.setenv("RANK", "1")  # under torchrun, named as the other errors are
    with pytest.raises(SystemExit):
        cli.main()
    assert capsys.readouterr().err.strip() == "[rank 1] error: out of memory"
    # It named --size and --max-size whatever the command was given (pretrain has no
    # --max-size; a reviewer's --pool-size 300000): the sizes given are named.
    argv = ["pretrain", "--pool-size", "300000", "--size=64", "--batch", "2", "--out", "x"]
    assert cli._out_of_memory(argv) == (
        "out of memory: smaller values of --pool-size 300000, --size 64, --batch 2 need less"
    )
