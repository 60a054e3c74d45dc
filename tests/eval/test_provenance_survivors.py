"""Which commit a record names: only a checkout that tracks localdisc's own source counts (a
wheel installed in a virtual environment inside another repository must not report that
repository's commit), git's failures and hangs leave the commit out quietly, and git reads
without taking the index lock of the user's checkout."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import localdisc
from localdisc.eval import provenance
from localdisc.eval.provenance import git_state


@pytest.fixture
def fresh_git_state():
    """``git_state`` computed anew in the test (it is cached per process), and after it."""
    git_state.cache_clear()
    yield git_state
    git_state.cache_clear()


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def _repository(path: Path) -> Path:
    """A git repository with one commit (of a README), or skip where git is missing."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        _git(path, "init", "-q")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git is not installed")
    (path / "README.md").write_text("another project")
    _git(path, "add", "README.md")
    _git(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    return path


def _installed_at(monkeypatch, package: Path) -> None:
    """localdisc as if imported from ``package`` (its ``__init__.py`` made there)."""
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    monkeypatch.setattr(localdisc, "__file__", str(package / "__init__.py"))


@pytest.mark.parametrize("ignored", [False, True], ids=["untracked-venv", "ignored-venv"])
def test_a_wheel_installed_inside_another_repository_records_no_commit(
    tmp_path, monkeypatch, fresh_git_state, ignored
):
    """A project that keeps its virtual environment in its own checkout: every record of a
    localdisc installed there named that project's commit (and "modified"), a commit that says
    nothing of localdisc's code."""
    repo = _repository(tmp_path / "project")
    if ignored:
        (repo / ".gitignore").write_text(".venv/\n")
        _git(repo, "add", ".gitignore")
        _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "ignore")
    site = repo / ".venv" / "lib" / "python3.11" / "site-packages"
    _installed_at(monkeypatch, site / "localdisc")
    assert fresh_git_state() == {}
    assert provenance.commit_text(fresh_git_state()) is None


def test_a_checkout_without_a_commit_records_none(tmp_path, monkeypatch, fresh_git_state):
    """Tracked (added) but never committed: ``git rev-parse HEAD`` fails (printing "HEAD" on
    stdout), and a failed git call must not be taken for its output."""
    repo = tmp_path / "new"
    repo.mkdir()
    try:
        _git(repo, "init", "-q")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git is not installed")
    _installed_at(monkeypatch, repo / "src" / "localdisc")
    _git(repo, "add", ".")
    assert fresh_git_state() == {}


def test_a_checkout_that_tracks_the_package_records_its_commit(
    tmp_path, monkeypatch, fresh_git_state
):
    repo = _repository(tmp_path / "checkout")
    _installed_at(monkeypatch, repo / "src" / "localdisc")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "code")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    assert fresh_git_state() == {"commit": head, "dirty": False}


class FakeGit:
    """A stand-in for ``subprocess.run`` of git: each call's arguments recorded, answers by
    git's subcommand (``returncode``, stdout), or an exception to raise; ``ls-files --others``
    (the untracked files) is answered apart from ``ls-files`` (is the package tracked)."""

    def __init__(self, answers: dict[str, tuple[int, str] | BaseException]) -> None:
        self.answers, self.calls = answers, []

    def __call__(self, args, **kwargs):
        self.calls.append((list(args), kwargs))
        answer = self.answers["others" if "--others" in args else args[1]]
        if isinstance(answer, BaseException):
            raise answer
        code, out = answer
        return subprocess.CompletedProcess(args, code, stdout=out, stderr="")


CLEAN = {
    "ls-files": (0, "__init__.py\n"),
    "rev-parse": (0, "abc1234def\n"),
    "status": (0, ""),
    "others": (0, ""),
}


def test_git_reads_without_the_index_lock_and_with_a_time_limit(monkeypatch, fresh_git_state):
    """``git status`` refreshes the index under index.lock unless GIT_OPTIONAL_LOCKS=0: a
    user's own `git commit` in the checkout at that moment failed on the lock. And each call
    has a time limit (a checkout on a hung network drive must not hang every command)."""
    fake = FakeGit(CLEAN)
    monkeypatch.setattr(provenance.subprocess, "run", fake)
    monkeypatch.setenv("LOCALDISC_PROBE", "kept")
    assert fresh_git_state() == {"commit": "abc1234def", "dirty": False}  # stdout stripped
    package = Path(localdisc.__file__).resolve().parent
    assert [args[1] for args, _ in fake.calls] == ["ls-files", "rev-parse", "status", "ls-files"]
    for args, kwargs in fake.calls:
        assert args[0] == "git" and Path(kwargs["cwd"]) == package
        assert kwargs["env"]["GIT_OPTIONAL_LOCKS"] == "0", args
        assert kwargs["env"]["LOCALDISC_PROBE"] == "kept"  # the rest of the environment
        assert kwargs["env"]["PATH"] == os.environ["PATH"]
        assert 0 < kwargs["timeout"] <= 10 and kwargs["timeout"] == provenance.GIT_TIMEOUT
        assert kwargs["capture_output"] and kwargs["text"]


def test_the_process_environment_is_not_changed_by_asking_git(monkeypatch, fresh_git_state):
    monkeypatch.delenv("GIT_OPTIONAL_LOCKS", raising=False)
    monkeypatch.setattr(provenance.subprocess, "run", FakeGit(CLEAN))
    fresh_git_state()
    assert "GIT_OPTIONAL_LOCKS" not in os.environ


@pytest.mark.parametrize("hung", ["ls-files", "rev-parse"])
def test_a_git_that_hangs_leaves_the_commit_out_without_failing(monkeypatch, fresh_git_state, hung):
    fake = FakeGit({**CLEAN, hung: subprocess.TimeoutExpired(["git", hung], 5.0)})
    monkeypatch.setattr(provenance.subprocess, "run", fake)
    assert fresh_git_state() == {}
    assert len(fake.calls) == (1 if hung == "ls-files" else 2)  # nothing asked after it


def test_a_status_that_hangs_keeps_the_commit_with_the_tree_state_unknown(
    monkeypatch, fresh_git_state
):
    fake = FakeGit({**CLEAN, "status": subprocess.TimeoutExpired(["git", "status"], 5.0)})
    monkeypatch.setattr(provenance.subprocess, "run", fake)
    state = fresh_git_state()
    assert state == {"commit": "abc1234def"}
    assert provenance.commit_text(state) == "commit abc1234, tree state unknown"


@pytest.mark.parametrize("failing", ["ls-files", "rev-parse"])
def test_a_failing_git_call_is_not_taken_for_its_output(monkeypatch, fresh_git_state, failing):
    """``git ls-files --error-unmatch`` of an untracked file, ``rev-parse HEAD`` before the
    first commit: they exit non-zero, and their stdout (empty, or "HEAD") is no answer."""
    fake = FakeGit({**CLEAN, failing: (1 if failing == "ls-files" else 128, "HEAD\n")})
    monkeypatch.setattr(provenance.subprocess, "run", fake)
    assert fresh_git_state() == {}


def test_a_dirty_tree_is_said_by_status_or_by_new_files(monkeypatch, fresh_git_state):
    for status, others, dirty in [("", "", False), (" M x.py", "", True), ("", "new.py", True)]:
        answers = {**CLEAN, "status": (0, status), "others": (0, others)}
        monkeypatch.setattr(provenance.subprocess, "run", FakeGit(answers))
        git_state.cache_clear()
        assert fresh_git_state() == {"commit": "abc1234def", "dirty": dirty}
    monkeypatch.setattr(provenance.subprocess, "run", FakeGit({**CLEAN, "others": (128, "")}))
    git_state.cache_clear()
    assert fresh_git_state() == {"commit": "abc1234def"}  # unknown: not called clean
