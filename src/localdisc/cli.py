"""The ``localdisc`` command line: ``localdisc --help`` lists the commands."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from localdisc.errors import LocaldiscError

app = typer.Typer(
    help="Unsupervised local discrimination for medical images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
datasets_app = typer.Typer(help="List and check the supported data sets.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")

console = Console()
err_console = Console(stderr=True)


def main() -> None:
    """Entry point: known errors become one red line and exit code 2, not a traceback."""
    try:
        app()
    except LocaldiscError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
