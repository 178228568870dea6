"""Options shared by several commands, declared once."""

from __future__ import annotations

from typing import Annotated

import typer

from splitcli.modes import mode_names

ProfileOpt = Annotated[str, typer.Option("--profile", "-p", metavar="NAME|FILE",
                                         help="Profile name or path to a YAML file.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", metavar="KEY=VALUE",
                 help="Override a profile value, e.g. --set sampling.temperature=0 or --set 'big.gpus=[2,3]' "
                      "(quote brackets in zsh; repeatable)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
ModeOpt = Annotated[str | None, typer.Option("--mode", "-m", metavar="MODE",
                                             help=f"Mode to run: {', '.join(mode_names())} (default: the profile's).")]
