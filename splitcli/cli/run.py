"""run and show: one question through a mode, drawn live; saved traces drawn again."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from splitcli import console, render
from splitcli.cli.common import command, load, servers_in_use
from splitcli.cli.options import JsonOpt, ModeOpt, ProfileOpt, SetOpt
from splitcli.errors import EngineError, Interrupted, UsageError
from splitcli.modes import get_mode
from splitcli.profiles import Profile, demo_model
from splitcli.trace import Trace, load_jsonl

INTERRUPTED = "interrupted (Ctrl-C)"


def run(
    question: Annotated[str | None, typer.Argument(help="The question to solve; - reads it from stdin.",
                                                   show_default=False)] = None,
    file: Annotated[Path | None, typer.Option("--file", help="Read the question from this file.")] = None,
    profile: ProfileOpt = "demo",
    mode: ModeOpt = None,
    overrides: SetOpt = None,
    json_output: JsonOpt = False,
    save: Annotated[Path | None, typer.Option("--save", help="Append the trace to this JSONL file.")] = None,
    no_stream: Annotated[bool, typer.Option("--no-stream", help="Draw the trace only when it is done.")] = False,
    keep: Annotated[bool, typer.Option("--keep", help="Leave servers this command started running.")] = False,
) -> None:
    """Solve one question with the profile's model pair, streaming the reasoning.

    Example: splitreason run "What is 12 * 3 + 7?" --mode random-switch --save runs.jsonl
    """
    from splitcli.solve import run_question  # the Session and the engine: not for `--help`

    question = _question(question, file)
    prof = load(profile, overrides)
    mode_name = mode or prof.mode
    mode_class = get_mode(mode_name)
    keys = tuple(mode_class.server_keys().values())
    if any(demo_model(prof.spec(key).model) for key in keys):
        console.info("demo profile: tiny demonstration models that know only `splitreason demo questions`")
    with servers_in_use(prof, keys, keep) as use:
        live = not (json_output or no_stream or console.plain_output())
        plain = None if (json_output or no_stream or live) else render.PlainStream(defer=mode_class.replaces_text,
                                                                                          provisional=mode_class.provisional)
        started: list[Trace] = []  # the trace as it is built: what Ctrl-C keeps
        try:
            if live:
                trace = _run_live(render.LiveView(console.out), prof, question, mode_name, started.append)
            else:
                def watch(trace: Trace) -> None:
                    started.append(trace)
                    if plain is not None:
                        trace.subscribe(plain)

                trace = asyncio.run(run_question(prof, question, mode_name, stream=not no_stream, watch=watch))
        except KeyboardInterrupt:
            ours = (use.serve.started if use.serve else []) if not keep else []
            console.warn("interrupted" + (f": stopping {', '.join(ours)}" if ours else ""))
            if not started:
                raise Interrupted("interrupted before the run began; nothing to keep") from None
            trace = started[0]
            trace.finish(error=INTERRUPTED)
        if save is not None:
            trace.append_jsonl(save)
            console.info(f"trace appended to {save}")
        _present(trace, json_output, plain)
    if trace.error == INTERRUPTED:
        kept = f"; the partial trace was saved to {save}" if save else "; --save FILE keeps the partial trace"
        raise Interrupted(INTERRUPTED + kept)
    if trace.error:
        kept = f"; the partial trace was saved to {save}" if save else "; --save FILE keeps the partial trace"
        raise EngineError(trace.error + kept)


def _question(given: str | None, file: Path | None) -> str:
    """The question from the argument, stdin (`-`) or --file: one of them, not empty."""
    if given is not None and file is not None:
        raise UsageError("give the question or --file, not both")
    if file is not None:
        text = file.read_text(encoding="utf-8")
    elif given == "-":
        text = sys.stdin.read()
    else:
        text = given or ""
    if text.strip():
        return text
    if file is not None:
        raise UsageError(f'{file} is empty (write the question in it, or pass it: splitreason run "What is 2 + 2?")')
    if given == "-":
        raise UsageError('stdin gave no question (pipe one in: echo "What is 2 + 2?" | splitreason run -)')
    from splitcli.solve import EMPTY_QUESTION

    raise UsageError(EMPTY_QUESTION)


def _run_live(view: render.LiveView, prof: Profile, question: str, mode_name: str,
              started: Callable[[Trace], None]) -> Trace:
    from splitcli.solve import run_question

    def watch(trace: Trace) -> None:
        started(trace)
        view.attach(trace)

    with view:
        return asyncio.run(run_question(prof, question, mode_name, stream=True, watch=watch))


def _present(trace: Trace, json_output: bool, plain: render.PlainStream | None) -> None:
    if json_output:
        console.print_json(trace.to_dict())
    elif plain is not None:
        plain.finish(trace)
        console.out.file.write("\n" + render.plain_summary(trace) + "\n")
    elif console.plain_output():
        console.out.file.write(render.plain_text(trace) + "\n" + render.plain_summary(trace) + "\n")
    else:
        render.show(trace, console.out)


def show(
    file: Annotated[Path, typer.Argument(help="JSONL file written by `run --save`.")],
    json_output: JsonOpt = False,
    svg: Annotated[Path | None, typer.Option("--svg", help="Also write the coloured view to this SVG file.")] = None,
) -> None:
    """Draw saved traces again (the same view as at the end of a run).

    --json prints a JSON array with one object per trace, always (also for one trace).

    Example: splitreason show runs.jsonl --svg trace.svg
    """
    traces = list(load_jsonl(file))
    if not traces:
        raise UsageError(f"{file}: no traces in the file")
    if json_output:
        console.print_json([trace.to_dict() for trace in traces])
        return
    if svg is not None:
        render.save_svg(traces, svg)
        console.info(f"coloured view written to {svg}")
    for trace in traces:
        console.say((f"{trace.mode} · {trace.profile} · {trace.question}", "dim"))
        _present(trace, False, None)


def register(app: typer.Typer) -> None:
    command(app, run)
    command(app, show)
