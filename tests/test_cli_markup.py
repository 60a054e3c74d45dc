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


def test_library_messages_are_printed_as_they_are():
    # Library code logs plain text through cli._log: a run folder named "runs[/x]" used to
    # crash Rich, and "[v2]" vanished.
    for message in ("runs[/x]: no checkpoint yet, starting from step 0", "skipped sim[v2]: x"):
        with cli.console.capture() as captured:
            cli._log(message)
        assert captured.get().strip() == message


def test_library_messages_carry_no_markup():
    # The library's default logger is print, so markup would reach API users as raw tags.
    import pathlib
    import re

    import localdisc

    package = pathlib.Path(localdisc.__file__).parent
    tagged = [
        f"{path.name}: {line.strip()}"
        for path in package.rglob("*.py")
        if path.name != "cli.py"
        for line in path.read_text().splitlines()
        if re.search(r"\blog\(f?\"\[(bold|yellow|red|green|dim)", line)
    ]
    assert not tagged


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        (["benchmark", "pretrain-methods"], "[fundus=|xray=]SPEC"),
        (["benchmark", "pretrain-methods"], "[drive,scr_clavicle; --quick: synthetic]"),
        (["localize"], '{"name": [x, y], ...}'),
    ],
)
def test_help_texts_keep_their_brackets(command, shown):
    # As Rich markup, "[fundus=|xray=]" and "[default: ...]" vanished from --help.
    from typer.testing import CliRunner

    result = CliRunner().invoke(cli.app, [*command, "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    assert shown in " ".join(result.output.split())


def test_an_out_that_is_a_file_is_one_line(tmp_path, monkeypatch, capsys):
    # `pretrain --out FILE` (and every command that makes its --out) ended in a traceback.
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    monkeypatch.setattr(
        "sys.argv", ["localdisc", "pretrain", "--data", "synthetic_fundus:2", "--out", str(afile)]
    )
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"error: {afile}: a file, not a folder; choose another --out" in err


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (FileExistsError, "File exists (a file where a folder is needed)"),
        (NotADirectoryError, "Not a directory (a file where a folder is needed)"),
    ],
)
def test_a_file_where_a_folder_is_needed_is_named_so(tmp_path, monkeypatch, capsys, error, shown):
    # `benchmark transfer --out FILE` wrote FILE/pretrain: "Not a directory" alone.
    import errno
    import os

    code = errno.EEXIST if error is FileExistsError else errno.ENOTDIR
    where = tmp_path / "notes.txt" / "pretrain"

    def fail(*args, **kwargs):
        raise error(code, os.strerror(code), str(where))

    monkeypatch.setattr("localdisc.tasks.benchmark_transfer.run_benchmark", fail)
    monkeypatch.setattr("sys.argv", ["localdisc", "benchmark", "transfer", "--out", str(where)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"error: {where}: {shown}" in err
