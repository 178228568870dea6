"""Options shared by several commands, declared once."""

from __future__ import annotations

from typing import Annotated

import typer

ProfileOpt = Annotated[str, typer.Option("--profile", "-p", help="Profile name or path to a YAML file.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a profile value, e.g. --set big.gpus=[2,3] (repeatable)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
ModeOpt = Annotated[str | None, typer.Option("--mode", "-m", help="Mode to run (default: the profile's).")]
