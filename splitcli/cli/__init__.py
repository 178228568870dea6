"""The `splitreason` command: assembles the command modules and turns library errors into exit codes."""

from __future__ import annotations

import os
import signal
import sys
from typing import Annotated, Any

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


def _click() -> Any:
    """The exceptions of the click that Typer runs on (its own copy since Typer 0.17, click before)."""
    vendored = getattr(typer, "_click", None)
    if vendored is not None:
        from typer._click import exceptions

        return exceptions
    import click.exceptions

    return click.exceptions


def main() -> None:
    """Entry point: load .env, run the app, print library errors as one line with exit code 2."""
    from dotenv import load_dotenv

    from splitcli import console
    from splitcli.errors import SplitError

    load_dotenv(os.path.join(os.getcwd(), ".env"), override=False)
    # Started in the background by a non-interactive shell (or under nohup in a script), a process
    # inherits SIGINT ignored, and Ctrl-C would then never stop it: restore Python's handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    click = _click()
    try:
        code = app(standalone_mode=False)  # click's errors come here, to be said in one line
        sys.exit(code if isinstance(code, int) else 0)
    except click.NoArgsIsHelpError as exc:  # the help itself, as click shows it
        exc.show()
        sys.exit(exc.exit_code)
    except click.UsageError as exc:  # a bad option or value: one line, like our own errors
        where = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
        console.error(exc.format_message().rstrip(".") + where)
        sys.exit(2)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except typer.Abort:
        console.error("aborted")
        sys.exit(1)
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
