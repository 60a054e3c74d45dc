"""Where a result came from: the environment a run, benchmark or prediction ran in.

:func:`environment` is written into the outputs' JSON records (a pre-training's ``config.json``,
a benchmark's ``results.json``, ``predict.json``, ...) and :func:`environment_line` ends a
benchmark's ``results.md``, so that every number says its localdisc version and commit, library
versions, machine, number of processes, date and command without being copied by hand.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Mapping
from datetime import datetime
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: Seconds each git command may take before the commit is left out (a hung network drive).
GIT_TIMEOUT = 5.0


def _git(*args: str, cwd: Path) -> str | None:
    """``git ARGS`` in ``cwd``: its stdout stripped, or ``None`` when git is missing or fails."""
    # GIT_OPTIONAL_LOCKS=0: `git status` would else refresh the index under its lock, and a
    # user's own git command in the checkout at that moment could fail on the lock.
    quiet = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, env=quiet, capture_output=True, text=True,
            timeout=GIT_TIMEOUT, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@cache
def git_state() -> dict[str, Any]:
    """``{"commit": SHA, "dirty": bool}`` of the source tree localdisc runs from, ``{}`` when it
    runs from no git checkout (an installed wheel) or git is missing.

    Only a checkout that tracks this package's own files counts: a wheel installed in a virtual
    environment inside some other repository must not report that repository's commit. ``dirty``:
    a tracked file differs from the commit, or the package's folder holds an untracked file
    (code the commit lacks; a benchmark's outputs elsewhere in the checkout are no change of the
    code); left out where a git call failed or timed out (the state is unknown,
    :func:`commit_text`). Once per process (four git calls, some milliseconds).
    """
    import localdisc

    package = Path(localdisc.__file__).resolve().parent
    if _git("ls-files", "--error-unmatch", "__init__.py", cwd=package) is None:
        return {}
    commit = _git("rev-parse", "HEAD", cwd=package)
    if not commit:
        return {}
    changed = _git("status", "--porcelain", "--untracked-files=no", cwd=package)
    added = _git("ls-files", "--others", "--exclude-standard", "--", ".", cwd=package)
    if changed is None or added is None:
        return {"commit": commit}
    return {"commit": commit, "dirty": bool(changed or added)}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@cache
def _installed() -> dict[str, Any]:
    """What does not change while a process runs: versions, commit, OS and CPU (once)."""
    import torch

    env: dict[str, Any] = {"localdisc": _version("localdisc"), **git_state()}
    env.update(python=platform.python_version(), torch=torch.__version__)
    if torch.version.cuda:
        env["cuda"] = torch.version.cuda
    if torch.cuda.is_available() and torch.backends.cudnn.is_available():
        env["cudnn"] = torch.backends.cudnn.version()
    env.update(monai=_version("monai"), numpy=_version("numpy"), os=platform.platform())
    env.update(cpu=cpu_model(), cpu_cores=usable_cores())
    return env


def usable_cores() -> int | None:
    """The cores this process may run on (its CPU affinity: ``taskset``, Slurm, a container's
    cpuset), not the machine's: what a CPU timing ran on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def environment(
    device: str | torch.device | None = None, processes: int = 1, amp: bool | None = None
) -> dict[str, Any]:
    """The environment of a run starting now, as JSON-ready values.

    Args:
        device: the device it computes on (``"auto"`` is resolved); for a CUDA device the GPU's
            model is recorded (with several processes, that of this process's GPU).
        processes: how many processes take part (the world size under torchrun).

    Keys: ``localdisc``; ``commit`` and ``dirty`` when it runs from a git checkout
    (:func:`git_state`); ``python``, ``torch``, ``cuda`` and ``cudnn`` where torch has them,
    ``monai``, ``numpy``; ``os``; ``cpu`` and ``cpu_cores``; ``device`` and ``gpu``;
    ``processes``; ``started`` (ISO 8601 with the UTC offset); ``argv`` (the command line) and
    ``cwd`` (where it ran: relative paths in ``argv`` are relative to it); ``bf16``, for a
    command that trains (``amp``: whether it asks for bf16 autocast) on ``device``: whether it
    trains in bf16 autocast (a CPU without bf16 instructions, or ``--no-amp``, trains in
    float32, and the numbers differ).
    """
    import torch

    from localdisc.engine.precision import bf16_autocast_pays

    env = dict(_installed())
    if device is not None:
        if isinstance(device, str):
            from localdisc.engine.distributed import resolve_device

            device = resolve_device(device)
        env["device"] = str(device)
        if device.type == "cuda":
            env["gpu"] = torch.cuda.get_device_name(device)
        if amp is not None:
            env["bf16"] = amp and bf16_autocast_pays(device)
    env["processes"] = int(processes)
    env["started"] = datetime.now().astimezone().isoformat(timespec="seconds")
    env["argv"] = list(sys.argv)
    env["cwd"] = os.getcwd()
    return env


def command_text(argv: list[str]) -> str:
    """``argv`` as it would be typed: ``python -m localdisc`` or the program's name, then the
    arguments, quoted for a shell."""
    if not argv:
        return ""
    program = Path(argv[0])
    # python -m PACKAGE runs PACKAGE/__main__.py
    first = f"python -m {program.parent.name}" if program.name == "__main__.py" else program.name
    return " ".join([first, *(shlex.quote(a) for a in argv[1:])])


def commit_text(env: Mapping[str, Any]) -> str | None:
    """``env``'s commit as a report says it: ``commit abc1234``, with ``, modified`` where files
    were changed and ``, tree state unknown`` where ``git status`` failed or timed out (no
    ``dirty``: the tree was not checked, which must not read as clean); ``None`` without one."""
    if not env.get("commit"):
        return None
    state = {True: ", modified", False: ""}.get(env.get("dirty"), ", tree state unknown")
    return f"commit {env['commit'][:7]}{state}"


def version_line() -> str:
    """``localdisc --version``: this package (with its commit, run from a checkout), Python and
    the libraries whose versions change results, e.g. ``localdisc 0.1.0 (commit abc1234);
    Python 3.11.7, torch 2.13.0+cpu, monai 1.6.1, numpy 2.4.6``: what a bug report needs. From
    the installed packages' metadata: nothing is imported (torch would take seconds)."""
    import localdisc

    commit = commit_text(git_state())
    name = f"localdisc {localdisc.__version__}" + (f" ({commit})" if commit else "")
    versions = [f"Python {platform.python_version()}"]
    versions += [f"{lib} {v}" for lib in ("torch", "monai", "numpy") if (v := _version(lib))]
    return f"{name}; {', '.join(versions)}"


def environment_line(env: Mapping[str, Any]) -> str:
    """One line of :func:`environment` for a Markdown report, e.g. ``localdisc 0.1.0 (commit
    abc1234, modified), torch 2.13.0+cpu, Intel(R) Xeon(R) Processor (2 cores), 2026-12-05
    14:20 +00:00, `localdisc benchmark transfer --quick```: the GPU instead of the CPU on CUDA,
    the number of processes when more than one; the commit as :func:`commit_text` says it."""
    version = f"localdisc {env.get('localdisc') or '?'}"
    if env.get("commit"):
        version += f" ({commit_text(env)})"
    library = f"torch {env.get('torch', '?')}"
    if env.get("gpu"):
        library += f" (CUDA {env['cuda']})" if env.get("cuda") else ""
        machine = env["gpu"]
    else:
        cores = f" ({env['cpu_cores']} cores)" if env.get("cpu_cores") else ""
        machine = f"{env.get('cpu', 'unknown CPU')}{cores}"
        if "bf16" in env:  # the training's precision (a GPU's is said by its amp setting)
            machine += ", bf16" if env["bf16"] else ", float32"
    parts = [version, library, machine]
    if env.get("processes", 1) > 1:
        parts.append(f"{env['processes']} processes")
    if env.get("started"):
        started = datetime.fromisoformat(env["started"])
        offset = started.strftime("%z")  # +0100 -> +01:00, as ISO 8601 writes it
        offset = f" {offset[:3]}:{offset[3:5]}" if offset else ""
        parts.append(started.strftime("%Y-%m-%d %H:%M") + offset)
    if env.get("argv"):
        parts.append(f"`{command_text(env['argv'])}`")
    return ", ".join(parts)


def resumed(saved: Mapping[str, Any], env: Mapping[str, Any], **details: Any) -> dict:
    """The provenance of a record continued now: ``saved``'s ``environment`` (the first
    start's, where it has one) and its ``resumed`` list with ``env`` and ``details`` (e.g. the
    step it resumed from) added."""
    first = {"environment": saved["environment"]} if "environment" in saved else {}
    return {**first, "resumed": [*saved.get("resumed", []), {**details, **env}]}
