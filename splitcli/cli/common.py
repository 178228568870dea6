"""What several commands do the same way: load a checked profile, hold servers while working."""

from __future__ import annotations

import contextlib
import inspect
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from splitcli import console, demo, servers
from splitcli.errors import Interrupted
from splitcli.modes import check_profile
from splitcli.profiles import Profile, ServerKey, demo_model, load_profile

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}


def load(name: str, overrides: list[str] | None = None) -> Profile:
    """A profile with its structure, mode and mode knobs checked."""
    return check_profile(load_profile(name, overrides))


@contextlib.contextmanager
def servers_in_use(profile: Profile, keys: tuple[ServerKey, ...], keep: bool = False) -> Iterator[servers.ServerUse]:
    """The servers `keys`, started if missing, kept from being stopped by other commands while this
    one runs; afterwards the ones started here stop unless `keep` or another command uses them."""
    with servers.ServerUse(profile, keys, keep) as use:
        missing = servers.not_running(profile, keys)
        if missing:
            after = "they keep running (--keep)" if keep else "stopped again afterwards unless --keep"
            build_demo_models(profile, keys)
            console.info(f"starting {', '.join(missing)} (not running; {after})")
            try:
                with starting_status() as tick:
                    use.start(on_tick=tick)
            except KeyboardInterrupt:
                console.warn(f"interrupted: stopped {', '.join(missing)} (they were starting)")
                raise Interrupted("interrupted while the servers started; nothing ran") from None
        else:
            use.start()
        yield use
    released = use.released
    if released is not None and released.stopped:
        console.info(f"stopped {', '.join(released.stopped)} (use --keep to leave them running)")
    if released is not None:
        for name, pids in released.still_used.items():
            console.info(f"left {name} running: still used by pid {', '.join(map(str, pids))} (it stops after them)")


def build_demo_models(profile: Profile, keys: tuple[ServerKey, ...]) -> None:
    """Build the demo models the servers will load before saying that servers start (the build is
    the first minute of a fresh machine's first run)."""
    for key in keys:
        model = str(getattr(profile.spec(key), "model", "") or "")
        if demo_model(model) is not None:
            demo.resolve_model(model)  # says "building ..." when it builds


@contextlib.contextmanager
def starting_status(every: float = 15.0) -> Iterator[Callable[[str], None]]:
    """Progress while servers start: a spinner on a terminal; on a pipe or a file, a line every
    `every` seconds (a spinner shows nothing there, and a minute of silence looks like a hang)."""
    if console.err.is_terminal:
        with console.err.status("starting servers") as spinner:
            yield spinner.update
        return
    said = [time.monotonic()]

    def tick(text: str) -> None:
        if time.monotonic() - said[0] >= every:
            said[0] = time.monotonic()
            console.info(text)

    yield tick


# ---------------------------------------------------------------- help that reads well

# Typer shows parameter types as <str>, <bool>, <list[str]>: words users know read better.
TYPE_WORDS = {"<str>": "TEXT", "<int>": "INTEGER", "<float>": "NUMBER", "<path>": "PATH", "<list[str]>": "TEXT",
              "<int range>": "INTEGER", "<float range>": "NUMBER"}


def _readable_types(params: list[Any], ctx: Any) -> None:
    for param in params:
        if param.param_type_name == "argument" and hasattr(param, "_usage_display_name"):
            # The usage line as POSIX writes it: FILE, [QUESTION], FOLDERS... (Typer 0.29 writes {file}).
            shown = (param.name.upper() if param.required else f"[{param.name.upper()}]") + ("..." if param.nargs != 1 else "")
            param._usage_display_name = lambda shown=shown: shown
        if getattr(param, "is_flag", False) or getattr(param, "is_bool_flag", False):
            word = ""
        elif param.metavar and param.param_type_name == "option":
            word = param.metavar
        else:
            shown = param.display_type_rich(ctx)
            word = TYPE_WORDS.get(shown or "", (shown or "").strip("<>"))
        param.display_type_rich = lambda ctx, word=word: word


def unwrapped(text: str | None) -> str | None:
    """A docstring as help: each paragraph one line, for the terminal to wrap at its own width
    (the source's line breaks are not the reader's)."""
    if not text:
        return text
    paragraphs = re.split(r"\n\s*\n", inspect.cleandoc(text))
    return "\n\n".join(" ".join(line.strip() for line in paragraph.splitlines()) for paragraph in paragraphs)


class Command(TyperCommand):
    """A Typer command whose help shows value types as words, nothing for on/off flags, and its
    paragraphs wrapped at the terminal's width."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _readable_types(self.get_params(ctx), ctx)
        self.help = unwrapped(self.help)
        super().format_help(ctx, formatter)


class Group(TyperGroup):
    """The same for a group of commands (the root app, `profiles`, `demo`)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _readable_types(self.get_params(ctx), ctx)
        super().format_help(ctx, formatter)


def command(app: typer.Typer, function: Callable[..., None], name: str | None = None, *,
            takes_negative_numbers: bool = False) -> None:
    """Register a command function on `app` with the readable help. `takes_negative_numbers`: an
    argument such as `-5` is a value, not an unknown option (`eval grade -5 ...`)."""
    settings = {**HELP_OPTIONS, "ignore_unknown_options": True} if takes_negative_numbers else None
    app.command(name, cls=Command, **({"context_settings": settings} if settings else {}))(function)


def sub_app(help_text: str) -> typer.Typer:
    """A group of subcommands (`profiles`, `demo`, `eval`, ...) with the same help conventions."""
    return typer.Typer(help=help_text, no_args_is_help=True, context_settings=HELP_OPTIONS, cls=Group)
