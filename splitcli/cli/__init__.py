"""The `splitreason` command: assembles the command modules and turns library errors into exit codes."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from splitcli import __version__

app = typer.Typer(
    name="splitreason",
    help="A small and a large reasoning model solving one problem together (SplitReason) on vLLM.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        print(f"splitreason {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
) -> None:
    """Run, inspect and serve small/big reasoning model pairs."""


def _register() -> None:
    from splitcli.cli import profiles, run, serve

    for module in (serve, run, profiles):
        module.register(app)


_register()


def main() -> None:
    """Entry point: load .env, run the app, print library errors as one line with exit code 2."""
    from dotenv import load_dotenv

    from splitcli import console
    from splitcli.errors import SplitError

    load_dotenv(os.path.join(os.getcwd(), ".env"), override=False)
    try:
        app()  # standalone: click itself reports usage errors (exit 2) and Ctrl-C
    except SplitError as exc:
        if os.environ.get("SPLITREASON_DEBUG"):
            raise
        console.error(str(exc))
        sys.exit(exc.exit_code)
