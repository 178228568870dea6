"""profiles list|show|validate, modes, and demo build|questions."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.table import Table
from rich.text import Text

from splitcli import console, demo
from splitcli.cli.common import command, load, sub_app
from splitcli.cli.options import JsonOpt, SetOpt
from splitcli.errors import ProfileError, SplitError, UsageError
from splitcli.modes import check_profile, get_mode, knob_defaults
from splitcli.profile_files import available_profiles, find_profile, load_raw
from splitcli.profiles import DEMO_PAIRS, validate

profiles_app = sub_app("List, show and validate profiles.")
demo_app = sub_app("The tiny built-in demonstration models.")

SECRET = re.compile("TOKEN|KEY|SECRET|PASSWORD", re.IGNORECASE)
TINY_NOTE = "These are tiny demonstration models: they only know the built-in questions."


def list_profiles(json_output: JsonOpt = False) -> None:
    """Profiles the lookup finds (user profiles shadow shipped ones); invalid ones say why.

    Example: splitreason profiles list
    """
    rows = []
    for name, file in available_profiles().items():
        try:
            prof = load(str(file))
            rows.append({"name": name, "path": str(file), "mode": prof.mode, "small": prof.small.model,
                         "big": prof.big.model, "description": prof.description})
        except SplitError as exc:  # a broken user profile must not hide the others
            rows.append({"name": name, "path": str(file), "error": str(exc)})
    if json_output:
        console.print_json(rows)
        return
    table = Table()
    table.add_column("name", no_wrap=True)
    table.add_column("mode", no_wrap=True)
    for column in ("small", "big", "description"):
        table.add_column(column, overflow="fold")
    for row in rows:
        if "error" in row:
            table.add_row(Text(row["name"]), Text("invalid", "red"), Text("(see below)", "red"), "", "")
        else:
            table.add_row(Text(row["name"]), row["mode"], Text(row["small"]), Text(row["big"]), Text(row["description"]))
    console.out.print(table)
    for row in rows:  # whole lines, so the reason is never cut or wrapped into a cell
        if "error" in row:
            console.say((f"{row['name']} is invalid:", "red"), f" {row['error']}", stream=console.out)


def show_profile(
    name: Annotated[str, typer.Argument(help="Profile name or path to a YAML file.")],
    overrides: SetOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """The fully resolved profile: extends and --set applied, defaults filled in, every mode's knobs.

    Example: splitreason profiles show demo --set sampling.seed=7
    """
    prof = load(name, overrides)
    data = prof.model_dump(mode="json")
    for role in ("small", "big"):  # secrets in a server's environment are never printed
        data[role]["env"] = {key: ("***" if SECRET.search(key) else value) for key, value in data[role]["env"].items()}
    # Every mode with its knobs, the profile's values over the defaults: what `modes.NAME.KNOB` can set.
    data["modes"] = {mode: {**defaults, **prof.modes.get(mode, {})} for mode, defaults in knob_defaults().items()}
    if json_output:
        console.print_json(data)
    else:
        console.say((f"# {find_profile(name)}", "dim"))
        console.out.print(yaml.safe_dump(data, sort_keys=False), end="", highlight=False, markup=False)


def validate_profile(path: Annotated[Path, typer.Argument(help="A YAML profile to check.")]) -> None:
    """Check a profile file; one line naming the key and the fix when it is wrong.

    Example: splitreason profiles validate my-pair.yaml
    """
    if not path.is_file():
        raise ProfileError(f"{path}: no such file (give the path to a YAML profile)")
    check_profile(validate(load_raw(path), path, path.stem))
    console.say(("ok", "green"), f" {path}")


def list_modes(json_output: JsonOpt = False) -> None:
    """Every mode with what it does and its knobs (set them with --set modes.MODE.KNOB=VALUE).

    Example: splitreason modes
    """
    rows = []
    for name, knobs in knob_defaults().items():
        mode = get_mode(name)
        descriptions = {key: field.description or "" for key, field in mode.Options.model_fields.items()}
        rows.append({"name": name, "summary": mode.summary, "models": list(mode.roles),
                     "knobs": [{"name": key, "default": value, "description": descriptions[key]}
                               for key, value in knobs.items()]})
    if json_output:
        console.print_json(rows)
        return
    table = Table("mode", "what it does", "knobs (default)")
    for row in rows:
        knobs = "\n".join(f"{k['name']}={k['default']}  {k['description']}".rstrip() for k in row["knobs"]) or "-"
        table.add_row(row["name"], Text(row["summary"]), Text(knobs))
    console.out.print(table)


def build_demo(force: Annotated[bool, typer.Option("--force", help="Rebuild even if built.")] = False,
               pair: Annotated[str | None, typer.Option("--pair", help="demo or demo-qwen3 (default: both).")] = None,
               ) -> None:
    """Train the tiny demo pairs (small, big, annotator each) on CPU: demo in seconds, demo-qwen3
    (the real Qwen3 tokenizer) in about a minute.

    Example: splitreason demo build --pair demo-qwen3 --force
    """
    if pair is not None and pair not in DEMO_PAIRS:
        raise UsageError(f"--pair {pair}: no such demo pair (use one of: {', '.join(DEMO_PAIRS)})")
    console.info(TINY_NOTE)
    for name in [pair] if pair else DEMO_PAIRS:
        if demo.is_built(name) and not force:
            console.info(f"{name}: already built in {demo.demo_root(name)} (use --force to rebuild)")
            continue
        started = time.monotonic()
        with console.err.status(f"training the tiny {name} models"):
            target = demo.build_pair(name)
        console.say(("built", "green"), f" {name} in {target}, {time.monotonic() - started:.1f}s")


def demo_questions(json_output: JsonOpt = False) -> None:
    """The built-in questions the demo models know, with their expected answers.

    Example: splitreason demo questions --json
    """
    items = demo.questions()
    if json_output:
        console.print_json(items)
        return
    console.info(TINY_NOTE)
    table = Table("question", "answer")
    for item in items:
        table.add_row(Text(item["question"]), Text(item["answer"]))
    console.out.print(table)


def register(app: typer.Typer) -> None:
    command(profiles_app, list_profiles, "list")
    command(profiles_app, show_profile, "show")
    command(profiles_app, validate_profile, "validate")
    command(demo_app, build_demo, "build")
    command(demo_app, demo_questions, "questions")
    command(app, list_modes, "modes")
    app.add_typer(profiles_app, name="profiles")
    app.add_typer(demo_app, name="demo")
