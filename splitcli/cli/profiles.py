"""profiles list|show|validate and demo build|questions."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.table import Table

from splitcli import console, demo
from splitcli.cli.options import JsonOpt, SetOpt
from splitcli.profiles import _load_raw, available_profiles, find_profile, load_profile, validate

profiles_app = typer.Typer(help="List, show and validate profiles.", no_args_is_help=True)
demo_app = typer.Typer(help="The tiny built-in demonstration models.", no_args_is_help=True)

SECRET = re.compile("TOKEN|KEY|SECRET|PASSWORD", re.IGNORECASE)
TINY_NOTE = "These are tiny demonstration models: they only know the built-in questions."


@profiles_app.command("list")
def list_profiles(json_output: JsonOpt = False) -> None:
    """Profiles the lookup finds (user profiles shadow shipped ones)."""
    rows = []
    for name, file in available_profiles().items():
        try:
            prof = load_profile(str(file))
            rows.append({"name": name, "path": str(file), "mode": prof.mode, "small": prof.small.model,
                         "big": prof.big.model, "description": prof.description})
        except Exception as exc:  # a broken user profile must not hide the others
            rows.append({"name": name, "path": str(file), "error": str(exc)})
    if json_output:
        console.print_json(rows)
        return
    table = Table()
    table.add_column("name", no_wrap=True, min_width=10)
    table.add_column("mode", no_wrap=True, min_width=11)
    for column in ("small", "big"):
        table.add_column(column, no_wrap=True, overflow="ellipsis", max_width=24)
    table.add_column("description", no_wrap=True, overflow="ellipsis", max_width=36)
    for row in rows:
        if "error" in row:
            table.add_row(row["name"], "[red]invalid[/red]", "", "", row["error"])
        else:  # model ids shortened to their last part; --json has them whole
            short = [row[role].rsplit("/", 1)[-1] for role in ("small", "big")]
            table.add_row(row["name"], row["mode"], *short, row["description"])
    console.out.print(table)


@profiles_app.command("show")
def show_profile(name: str, overrides: SetOpt = None, json_output: JsonOpt = False) -> None:
    """The fully resolved profile (extends and --set applied, defaults filled in)."""
    prof = load_profile(name, overrides)
    data = prof.model_dump(mode="json")
    for role in ("small", "big"):  # secrets in a server's environment are never printed
        data[role]["env"] = {key: ("***" if SECRET.search(key) else value) for key, value in data[role]["env"].items()}
    if json_output:
        console.print_json(data)
    else:
        console.err.print(f"[dim]# {find_profile(name)}[/dim]")
        console.out.print(yaml.safe_dump(data, sort_keys=False), end="", highlight=False, markup=False)


@profiles_app.command("validate")
def validate_profile(path: Path) -> None:
    """Check a profile file; one line naming the key and the fix when it is wrong."""
    if not path.is_file():
        from splitcli.errors import ProfileError

        raise ProfileError(f"{path}: no such file (give the path to a YAML profile)")
    validate(_load_raw(path), path, path.stem)
    console.err.print(f"[green]ok[/green] {path}")


@demo_app.command("build")
def build_demo(force: Annotated[bool, typer.Option(help="Rebuild even if built.")] = False) -> None:
    """Train the tiny demo small/big models on CPU (seconds)."""
    console.info(TINY_NOTE)
    if demo.is_built() and not force:
        console.info(f"already built in {demo.demo_root()} (use --force to rebuild)")
        return
    started = time.monotonic()
    with console.err.status("training the tiny demo models"):
        target = demo.build()
    console.err.print(f"[green]built[/green] {target} in {time.monotonic() - started:.1f}s")


@demo_app.command("questions")
def demo_questions(json_output: JsonOpt = False) -> None:
    """The built-in questions the demo models know, with their expected answers."""
    items = demo.questions()
    if json_output:
        console.print_json(items)
        return
    console.info(TINY_NOTE)
    table = Table("question", "answer")
    for item in items:
        table.add_row(item["question"], item["answer"])
    console.out.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(profiles_app, name="profiles")
    app.add_typer(demo_app, name="demo")
