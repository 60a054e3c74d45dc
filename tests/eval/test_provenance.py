import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

import localdisc
from localdisc.eval import provenance
from localdisc.eval.provenance import (
    command_text,
    environment,
    environment_line,
    git_state,
    resumed,
)

FIELDS = {"localdisc", "python", "torch", "monai", "numpy", "os", "cpu", "cpu_cores", "device",
          "processes", "started", "argv", "cwd"}  # fmt: skip
PACKAGE = Path(localdisc.__file__).resolve().parent


def _git(*args):
    try:
        done = subprocess.run(["git", *args], cwd=PACKAGE, capture_output=True, text=True)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def test_the_environment_has_every_field_and_is_json():
    env = environment("cpu", processes=3)
    assert set(env) >= FIELDS, FIELDS - set(env)
    assert env == json.loads(json.dumps(env))  # JSON-ready as it is, no str() fallbacks
    assert env["localdisc"] == localdisc.__version__ and env["device"] == "cpu"
    assert env["processes"] == 3 and env["argv"] == sys.argv and "gpu" not in env
    assert env["cwd"] == os.getcwd()  # argv's relative paths are relative to it
    started = datetime.fromisoformat(env["started"])
    assert started.utcoffset() is not None  # with its offset, not a bare local time
    assert abs((datetime.now().astimezone() - started).total_seconds()) < 60
    assert env["cpu"] and env["cpu_cores"] >= 1
    assert "device" not in environment()  # no device given, none claimed


def test_the_commit_is_the_checkout_s_and_says_whether_it_was_modified():
    head = _git("rev-parse", "HEAD")
    if head is None or _git("ls-files", "--error-unmatch", "__init__.py") is None:
        pytest.skip("localdisc does not run from a git checkout here")
    env = environment()
    assert env["commit"] == head
    changed = _git("status", "--porcelain", "--untracked-files=no")
    assert env["dirty"] == bool(changed or _git("ls-files", "--others", "--exclude-standard"))


def test_only_a_change_of_the_code_makes_a_tree_modified(tmp_path, monkeypatch):
    # Any untracked file (a benchmark's --out inside the checkout) read as "modified", and
    # results.md then said reused runs were made at another state of the same code.
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    try:
        git("init", "-q")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git is not installed")
    package = tmp_path / "src" / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (tmp_path / "README.md").write_text("hi")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    monkeypatch.setattr(localdisc, "__file__", str(package / "__init__.py"))

    def dirty():
        git_state.cache_clear()
        try:
            return git_state()["dirty"]
        finally:
            git_state.cache_clear()

    assert dirty() is False
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "results.json").write_text("{}")
    assert dirty() is False  # outputs beside the code
    (package / "new.py").write_text("")
    assert dirty() is True  # code the commit lacks
    (package / "new.py").unlink()
    (tmp_path / "README.md").write_text("changed")
    assert dirty() is True  # a tracked file changed


def test_the_cores_are_those_the_process_may_run_on(monkeypatch):
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this OS")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})  # as under taskset -c 0
    assert provenance.usable_cores() == 1
    provenance._installed.cache_clear()
    try:
        assert environment()["cpu_cores"] == 1
    finally:
        provenance._installed.cache_clear()


def test_no_git_or_no_checkout_leaves_the_commit_out_quietly(monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    git_state.cache_clear()
    monkeypatch.setattr(provenance.subprocess, "run", no_git)
    try:
        assert git_state() == {}
    finally:
        git_state.cache_clear()
    provenance._installed.cache_clear()
    monkeypatch.setattr(provenance, "git_state", dict)
    try:
        env = environment("cpu")
    finally:
        provenance._installed.cache_clear()
    assert "commit" not in env and "dirty" not in env
    assert "commit" not in environment_line(env)


def test_a_second_call_is_fast():
    environment("cpu")  # versions, git and the CPU are looked up once per process
    t0 = time.perf_counter()
    for _ in range(10):
        environment("cpu")
    assert (time.perf_counter() - t0) / 10 < 0.005


def test_the_line_names_version_commit_torch_machine_and_date():
    env = {
        "localdisc": "0.1.0", "commit": "abc1234def", "dirty": True, "torch": "2.13.0+cpu",
        "cpu": "Intel(R) Xeon(R) Processor", "cpu_cores": 2, "device": "cpu", "processes": 1,
        "started": "2026-12-05T14:20:07+00:00",
        "argv": ["/x/src/localdisc/__main__.py", "benchmark", "transfer", "--out", "a b"],
    }  # fmt: skip
    assert environment_line(env) == (
        "localdisc 0.1.0 (commit abc1234, modified), torch 2.13.0+cpu, Intel(R) Xeon(R) "
        "Processor (2 cores), 2026-12-05 14:20 +00:00, "
        "`python -m localdisc benchmark transfer --out 'a b'`"
    )
    gpu = {**env, "dirty": False, "gpu": "NVIDIA H100 80GB HBM3", "cuda": "12.4",
           "processes": 4, "started": "2026-12-05T15:20:07+01:00"}  # fmt: skip
    assert environment_line(gpu).startswith(
        "localdisc 0.1.0 (commit abc1234), torch 2.13.0+cpu (CUDA 12.4), NVIDIA H100 80GB "
        "HBM3, 4 processes, 2026-12-05 15:20 +01:00, "
    )
    assert "\n" not in environment_line(environment("cpu"))


def test_the_environment_says_whether_the_device_trains_in_bf16(monkeypatch):
    # bf16 autocast where the CPU has bf16 instructions, float32 elsewhere: the numbers differ
    # (the demo's Dice), and neither config.json nor results.md said which.
    from localdisc.engine import precision

    for native in (True, False):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        env = environment("cpu", amp=True)
        assert env["bf16"] is native
        assert (" cores), bf16," if native else " cores), float32,") in environment_line(env)
        assert environment("cpu", amp=False)["bf16"] is False  # --no-amp: float32 (reviewer)
    assert "bf16" not in environment("cpu")  # a command that does not train: no claim
    assert "bf16" not in environment()


def test_the_command_reads_as_typed():
    assert command_text(["/venv/bin/localdisc", "predict", "--out", "x"]) == (
        "localdisc predict --out x"
    )
    assert command_text([]) == ""


def test_a_resume_keeps_the_first_environment_and_lists_the_others():
    record = {"pretrain": {}, "environment": {"started": "1"}}
    once = {**record, **resumed(record, {"started": "2"}, step=4)}
    twice = {**once, **resumed(once, {"started": "3"}, step=6)}
    assert twice["environment"] == {"started": "1"} and "resumed" not in record
    assert twice["resumed"] == [{"step": 4, "started": "2"}, {"step": 6, "started": "3"}]


def test_a_cuda_device_records_its_gpu_model(monkeypatch):
    # No GPU here: the name torch would give is stood in for.
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: f"Test GPU ({device})")
    env = environment(torch.device("cuda", 1), processes=2)
    assert env["device"] == "cuda:1" and env["gpu"] == "Test GPU (cuda:1)"
    assert "Test GPU (cuda:1), 2 processes" in environment_line(env)


def test_the_eval_package_names_every_submodule():
    import pkgutil

    import localdisc.eval

    names = [m.name for m in pkgutil.iter_modules(localdisc.eval.__path__)]
    assert "provenance" in names
    for name in names:
        assert f":mod:`~localdisc.eval.{name}`" in (localdisc.eval.__doc__ or ""), name


def test_a_tree_whose_status_failed_is_not_called_clean(monkeypatch):
    """`git status` timing out (a slow drive) left the commit without `dirty`, and the line read
    exactly as a known-clean tree's."""

    def status_fails(*args, cwd):
        return None if args[0] == "status" else ("abc1234def" if args[0] == "rev-parse" else "")

    git_state.cache_clear()
    monkeypatch.setattr(provenance, "_git", status_fails)
    try:
        assert git_state() == {"commit": "abc1234def"}
    finally:
        git_state.cache_clear()
    env = {"localdisc": "0.1.0", "commit": "abc1234def", "torch": "2.5"}
    assert environment_line(env).startswith("localdisc 0.1.0 (commit abc1234, tree state unknown)")
    assert environment_line({**env, "dirty": False}).startswith("localdisc 0.1.0 (commit abc1234)")


def test_localdisc_version_prints_the_versions_a_bug_report_needs_without_importing_torch():
    """`localdisc --version` was "No such option"; it prints this package's version and
    commit, Python's and the libraries', from their metadata (torch is not imported: seconds)."""
    import torch

    probe = (
        "import sys, runpy\n"
        "sys.argv = ['localdisc', '--version']\n"
        "try:\n"
        "    runpy.run_module('localdisc', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    print('exit', exc.code, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    line, end = done.stdout.splitlines()
    assert line.startswith(f"localdisc {localdisc.__version__}")
    assert f"torch {torch.__version__}" in line and "Python 3." in line and "monai " in line
    commit = git_state().get("commit")
    # Outside a git checkout (an sdist, a wheel's install) there is none to name (reviewer).
    assert ("(commit " in line) == bool(commit)
    assert not commit or f"(commit {commit[:7]}" in line
    assert end in ("exit 0 False", "exit None False"), done.stderr


def test_shell_completion_after_version_offers_the_commands_not_the_version_line():
    # Click runs eager callbacks while it completes too: the version line was a candidate.
    probe = "import sys; sys.argv[0] = 'localdisc'; from localdisc.cli import main; main()"
    env = {**os.environ, "_LOCALDISC_COMPLETE": "complete_bash",
           "COMP_WORDS": "localdisc --version ", "COMP_CWORD": "2"}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    candidates = done.stdout.split()
    assert "pretrain" in candidates and "localdisc" not in candidates, done.stdout
