"""The one place terminal output goes through: messages on stderr, data on stdout.

Messages are plain text, never rich markup: paths, names, questions and model text can hold
brackets, so styled lines are assembled from (text, style) parts with `say`.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console
from rich.text import Text

# rich honours NO_COLOR itself; both consoles share that behaviour.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

SMALL_STYLE = "bold cyan"
BIG_STYLE = "bold magenta"
TAG_STYLE = "dim"

Part = str | tuple[str, str]


def colour_on() -> bool:
    """True when stdout shows colour: a terminal that is not dumb, and no NO_COLOR."""
    return out.is_terminal and out.color_system is not None and not os.environ.get("NO_COLOR")


def plain_output() -> bool:
    """True when stdout gets plain text (with [big]...[/big] markers): whenever colour is off."""
    return not colour_on()


def say(*parts: Part, stream: Console | None = None) -> None:
    """One line on stderr (or `stream`) from plain text parts and (text, style) pairs."""
    (stream or err).print(Text.assemble(*parts), highlight=False)


def info(message: str) -> None:
    say(("·", "dim"), " ", message)


def warn(message: str) -> None:
    say(("warning:", "yellow"), " ", message)


def error(message: str) -> None:
    say(("error:", "bold red"), " ", message)


def print_json(data: Any) -> None:
    """Machine output: one JSON document on stdout, never styled."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()
