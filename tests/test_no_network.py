"""The commands that train, evaluate and list data sets work without a network.

Internet sockets and name lookups are refused (and every attempt is recorded, so that code
which catches the error and carries on is caught too); local sockets (``AF_UNIX``, used by
multiprocessing pipes) stay allowed. The demo has its own such test in ``test_demo.py``.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from localdisc.cli import app

pytestmark = pytest.mark.timeout(300)

runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    # Tiny models: one thread is as fast, and far faster on a loaded 2-core machine.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def go_offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Refuse name lookups and outgoing Internet connections; returns the attempts.

    Creating or binding a socket is not network access (urllib3 probes IPv6 support at import
    by binding ``::1``; the viewer listens on localhost): connecting and sending are.
    """
    attempts: list[str] = []

    def refuse(what: str) -> Any:
        def refused(*args: Any, **kwargs: Any) -> Any:
            attempts.append(f"{what}{args}")
            raise OSError(f"network access attempted: {what}{args}")

        return refused

    class GuardedSocket(socket.socket):
        def _guard(self, what: str, address: Any) -> None:
            if self.family in (socket.AF_INET, socket.AF_INET6):
                refuse(what)(address)

        def connect(self, address: Any) -> None:
            self._guard("connect", address)
            super().connect(address)

        def connect_ex(self, address: Any) -> int:
            self._guard("connect_ex", address)
            return super().connect_ex(address)

        def sendto(self, data: Any, *args: Any) -> int:
            self._guard("sendto", args[-1])
            return super().sendto(data, *args)

    monkeypatch.setattr(socket, "socket", GuardedSocket)
    for name in ("create_connection", "getaddrinfo", "gethostbyname", "gethostbyname_ex",
                 "gethostbyaddr"):  # fmt: skip
        monkeypatch.setattr(socket, name, refuse(name))
    return attempts


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    return go_offline(monkeypatch)


def test_the_guard_refuses_lookups_and_connections(offline: list[str]) -> None:
    with pytest.raises(OSError, match="network access attempted"):
        socket.create_connection(("example.org", 80))
    with pytest.raises(OSError, match="network access attempted"):
        socket.getaddrinfo("example.org", 443)
    refused = pytest.raises(OSError, match="network access attempted")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock, refused:
        sock.connect(("93.184.216.34", 80))
    refused = pytest.raises(OSError, match="network access attempted")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, refused:
        sock.sendto(b"x", ("8.8.8.8", 53))
    a, b = socket.socketpair()  # AF_UNIX: multiprocessing pipes keep working
    a.close()
    b.close()
    assert len(offline) == 4
    offline.clear()


def _invoke(args: list[str]) -> Any:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, f"{args}: {result.output}\n{result.exception!r}"
    return result


def test_datasets_list_offline(offline: list[str]) -> None:
    result = _invoke(["datasets", "list"])
    assert "drive" in result.stdout and "synthetic_fundus" in result.stdout
    assert offline == []


def test_finetune_offline(tmp_path: Path, offline: list[str]) -> None:
    out = tmp_path / "ft"
    _invoke(["finetune", "--dataset", "synthetic_fundus:4", "--labels", "2",
             "--frozen-epochs", "1", "--epochs", "1", "--size", "32", "--device", "cpu",
             "--out", str(out)])  # fmt: skip
    assert (out / "metrics.json").is_file() and (out / "model.safetensors").is_file()
    assert offline == []


def test_pretrain_offline(tmp_path: Path, offline: list[str]) -> None:
    from PIL import Image

    from localdisc.data.synthetic import synthetic_fundus

    folder = tmp_path / "pool"
    folder.mkdir()
    for i in range(4):
        image = (synthetic_fundus(64, seed=i).image * 255).astype("uint8")
        Image.fromarray(image).save(folder / f"{i}.png")
    _invoke(["pretrain", "--data", str(folder), "--out", str(tmp_path / "ld"),
             "--stage1-steps", "2", "--stage2-steps", "2", "--size", "32", "--batch", "1",
             "--clusters", "4", "--dim", "8", "--device", "cpu", "--workers", "1"])  # fmt: skip
    assert (tmp_path / "ld" / "encoder.safetensors").is_file()
    assert offline == []


def test_benchmark_transfer_quick_offline(tmp_path: Path, offline: list[str]) -> None:
    out = tmp_path / "bt"
    _invoke(["benchmark", "transfer", "--quick", "--tasks", "synthetic_fundus", "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert results["runs"] and not results["skipped"] and (out / "results.md").is_file()
    assert offline == []


def test_benchmark_localize_quick_offline(tmp_path: Path, offline: list[str]) -> None:
    out = tmp_path / "bl"
    _invoke(["benchmark", "localize", "--quick", "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert results["tasks"] and not results["skipped"] and (out / "results.md").is_file()
    assert offline == []
