"""The `splitreason` command: assembles the command modules and turns library errors into exit codes."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from splitcli import __version__
from splitcli.cli.common import HELP_OPTIONS, Group

app = typer.Typer(
    name="splitreason",
    help="A small and a large reasoning model solving one problem together (SplitReason) on vLLM.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings=HELP_OPTIONS,
    cls=Group,
)


def _version(value: bool) -> None:
    if value:
        print(f"splitreason {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
) -> None:
    """Run, inspect, evaluate and serve small/big reasoning model pairs.

    Example: splitreason run "What is 12 * 3 + 7?"
    """


def _register() -> None:
    from splitcli.cli import eval, gendata, profiles, run, serve, tools

    for module in (serve, run, eval, gendata, profiles, tools):
        module.register(app)


_register()


def debug() -> bool:
    """SPLITREASON_DEBUG=1 (or true/yes) shows tracebacks; unset, empty, 0, false or no do not."""
    return os.environ.get("SPLITREASON_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")


def main() -> None:
    """Entry point: load .env, run the app, print library errors as one line with exit code 2."""
    from dotenv import load_dotenv

    from splitcli import console
    from splitcli.errors import SplitError

    load_dotenv(os.path.join(os.getcwd(), ".env"), override=False)
    try:
        app()  # standalone: click itself reports usage errors (exit 2) and Ctrl-C
    except SplitError as exc:
        if debug():
            raise
        console.error(str(exc))
        sys.exit(exc.exit_code)
    except OSError as exc:
        # A file the user named or the state dir could not be read or written: say which and why.
        if debug() or exc.filename is None:
            raise
        console.error(f"{exc.filename}: {exc.strerror} (check the path and its permissions; "
                      "SPLITREASON_HOME sets the state dir)")
        sys.exit(2)
