"""The one place terminal output goes through: messages on stderr, data on stdout."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console

# rich honours NO_COLOR itself; both consoles share that behaviour.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

SMALL_STYLE = "bold cyan"
BIG_STYLE = "bold magenta"
TAG_STYLE = "dim"


def plain_output() -> bool:
    """True when stdout should get plain text: not a terminal, or NO_COLOR is set."""
    return bool(os.environ.get("NO_COLOR")) or not out.is_terminal


def info(message: str) -> None:
    err.print(f"[dim]·[/dim] {message}", highlight=False)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {message}", highlight=False)


def error(message: str) -> None:
    err.print(f"[bold red]error:[/bold red] {message}", highlight=False, markup=True)


def print_json(data: Any) -> None:
    """Machine output: one JSON document on stdout, never styled."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()
