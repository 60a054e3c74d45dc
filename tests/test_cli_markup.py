"""The CLI prints names and messages as text: ``[...]`` in them is no Rich markup."""

from __future__ import annotations

import errno

import pytest

from localdisc import cli
from localdisc.errors import LocaldiscError


@pytest.mark.parametrize(
    "message",
    [
        "runs[/[bold]x: not a localdisc run directory (no config.json)",  # used to crash
        "sim[v2].png: cannot write a figure",  # [v2] used to vanish
    ],
)
def test_an_error_message_is_printed_as_it_is(monkeypatch, capsys, message):
    def fail() -> None:
        raise LocaldiscError(message)

    monkeypatch.setattr(cli, "app", fail)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    assert f"error: {message}" in capsys.readouterr().err


def test_a_full_disk_names_the_file_as_it_is(monkeypatch, capsys):
    def fail() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "runs[/[bold]log.csv")

    monkeypatch.setattr(cli, "app", fail)
    with pytest.raises(SystemExit):
        cli.main()
    assert "error: runs[/[bold]log.csv: disk full" in capsys.readouterr().err


def test_paths_in_result_lines_are_printed_as_they_are():
    assert cli._path("out[bold]/[v2]") != "out[bold]/[v2]"  # escaped for markup
    with cli.console.capture() as captured:
        cli.console.print(f"see [bold]{cli._path('out[bold]/[v2]')}[/]")
    assert captured.get().strip() == "see out[bold]/[v2]"
