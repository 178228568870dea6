"""run and show: one question through a mode, drawn live; saved traces drawn again."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from splitcli import console, demo, render, servers
from splitcli.cli.options import JsonOpt, ModeOpt, ProfileOpt, SetOpt
from splitcli.errors import EngineError, UsageError
from splitcli.modes import get_mode
from splitcli.profiles import Profile, load_profile
from splitcli.session import run_question
from splitcli.trace import Model, Trace, load_jsonl

EMPTY_QUESTION = 'the question is empty (pass its text, e.g. splitreason run "What is 2 + 2?")'


def run(
    question: Annotated[str, typer.Argument(help="The question to solve.")],
    profile: ProfileOpt = "demo",
    mode: ModeOpt = None,
    overrides: SetOpt = None,
    json_output: JsonOpt = False,
    save: Annotated[Path | None, typer.Option("--save", help="Append the trace to this JSONL file.")] = None,
    no_stream: Annotated[bool, typer.Option("--no-stream", help="Draw the trace only when it is done.")] = False,
    keep: Annotated[bool, typer.Option("--keep", help="Leave servers this command started running.")] = False,
) -> None:
    """Solve one question with the profile's model pair, streaming the reasoning."""
    if not question.strip():
        raise UsageError(EMPTY_QUESTION)
    prof = load_profile(profile, overrides)
    mode_name = mode or prof.mode
    roles = get_mode(mode_name).roles
    if any(prof.spec(role).model.startswith(demo.DEMO_PREFIX) for role in roles):
        console.info("demo profile: tiny demonstration models that know only `splitreason demo questions`")
    started = _ensure_servers(prof, roles)
    live = not (json_output or no_stream or console.plain_output())
    plain = None if (json_output or no_stream or live) else render.PlainStream()
    try:
        if live:
            trace = _run_live(render.LiveView(console.out), prof, question, mode_name)
        else:
            watch = (lambda trace: trace.subscribe(plain)) if plain else None
            trace = asyncio.run(run_question(prof, question, mode_name, stream=not no_stream, watch=watch))
        if save is not None:
            trace.append_jsonl(save)
            console.info(f"trace appended to {save}")
        _present(trace, json_output, plain)
    finally:
        if started and not keep:
            for record in started:
                servers.stop(record, quiet=True)
            console.info(f"stopped {', '.join(r.name for r in started)} (use --keep to leave them running)")
    if trace.error:
        kept = f"; the partial trace was saved to {save}" if save else "; --save FILE keeps the partial trace"
        raise EngineError(trace.error + kept)


def _ensure_servers(prof: Profile, roles: tuple[Model, ...]) -> list[servers.ServerRecord]:
    """Start the servers the mode needs unless they already run; returns those started here."""
    missing = []
    for role in roles:
        record = servers.ServerRecord.load(servers.server_name(prof, role))
        if prof.spec(role).launched and (record is None or servers.status(record) != "healthy"):
            missing.append(role)
    if not missing:
        return []
    names = ", ".join(servers.server_name(prof, role) for role in missing)
    console.info(f"starting {names} (not running; stopped again afterwards unless --keep)")
    with console.err.status("starting servers") as spinner:
        result = servers.ensure_servers(prof, tuple(missing), on_tick=lambda text: spinner.update(text))
    return [record for record in result.records if record.name in result.started]


def _run_live(view: render.LiveView, prof: Profile, question: str, mode_name: str) -> Trace:
    with view:
        return asyncio.run(run_question(prof, question, mode_name, stream=True, watch=view.attach))


def _present(trace: Trace, json_output: bool, plain: render.PlainStream | None) -> None:
    if json_output:
        console.print_json(trace.to_dict())
    elif plain is not None:
        plain.flush()
        console.out.file.write("\n" + render.plain_summary(trace) + "\n")
    elif console.plain_output():
        console.out.file.write(render.plain_text(trace) + "\n" + render.plain_summary(trace) + "\n")
    else:
        render.show(trace, console.out)


def show(
    file: Annotated[Path, typer.Argument(help="JSONL file written by `run --save`.")],
    json_output: JsonOpt = False,
) -> None:
    """Draw saved traces again (the same view as at the end of a run)."""
    traces = list(load_jsonl(file))
    if not traces:
        raise UsageError(f"{file}: no traces in the file")
    if json_output:
        console.print_json([trace.to_dict() for trace in traces] if len(traces) > 1 else traces[0].to_dict())
        return
    for trace in traces:
        console.err.print(f"[dim]{trace.mode} · {trace.profile} · {trace.question}[/dim]")
        _present(trace, False, None)


def register(app: typer.Typer) -> None:
    app.command()(run)
    app.command()(show)
