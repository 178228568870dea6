"""gendata, gendata stats."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from splitcli import console, render, runs
from splitcli.cli.common import HELP_OPTIONS, Group, command, load, servers_in_use
from splitcli.cli.options import JsonOpt, SetOpt
from splitcli.errors import DataError, Interrupted
from splitcli.gendata import run
from splitcli.gendata.annotate import Annotator
from splitcli.gendata.sources import load_sources

gendata_app = typer.Typer(context_settings=HELP_OPTIONS, cls=Group, invoke_without_command=True)  # help: make_data's


@gendata_app.callback()
def make_data(
    ctx: typer.Context,
    profile: Annotated[str | None, typer.Option("--profile", "-p", metavar="NAME|FILE",
                                                help="Profile name or path (default: demo).")] = None,
    source: Annotated[str | None, typer.Option("--source", metavar="DATASET|FILE",
                                               help="HF dataset id, local JSONL/parquet (id, problem, generation), "
                                                    "or demo (default: gendata.source).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, metavar="N", help="Only the first N traces.")] = None,
    fraction: Annotated[float | None, typer.Option("--fraction", min=0.01, max=0.99, metavar="F",
                                                   help="Share of characters to mark (default: 0.2).")] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-c", min=1, metavar="C",
                                                    help="Traces in flight.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default: runs/gendata-TIME).")] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="Continue the run in this folder.")] = None,
    overrides: SetOpt = None,
    keep: Annotated[bool, typer.Option("--keep", help="Leave servers this command started running.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Make SplitReason training data: an annotator marks the hard snippets of reasoning traces, and
    <bigmodel> ... </bigmodel> go around them.

    Writes data.jsonl (chat messages for TRL's SFT trainer), rejected.jsonl (id and reason),
    stats.json and two plots; progress.jsonl lets --resume continue after any crash.

    Example: splitreason gendata --profile demo
    """
    if ctx.invoked_subcommand is not None:
        return
    given = {"profile": profile, "overrides": overrides, "source": source, "limit": limit, "fraction": fraction}
    given, run_dir = runs.resumed(run.RunDir, given, resume)
    prof = load(given["profile"] or "demo", given["overrides"])
    section = prof.gendata
    sources = load_sources(section, given["source"], given["limit"] or section.limit)
    key = prof.annotator_server()
    name = prof.spec(key).name if key is not None else (prof.annotator.model or "")
    plan = run.GendataPlan(prof, sources, given["fraction"] or section.fraction, section.min_chars,
                           concurrency or section.concurrency, name, {**given, "profile": given["profile"] or "demo"})
    stamp = run.fingerprint(plan)
    if run_dir is not None:
        runs.check_same(run_dir, "run", run_dir.read_run()["fingerprint"], stamp)
    else:
        run_dir = runs.new_folder(run.RunDir, out, "gendata")
        run_dir.write_run({"inputs": plan.inputs, "fingerprint": stamp, "started_at": time.time()})
    servers = servers_in_use(prof, (key,), keep) if key is not None else contextlib.nullcontext()
    with servers:
        summary = _annotate(plan, run_dir, prof.spec(key or "annotator"))
    if json_output:
        console.print_json(summary)
    else:
        render.gendata_summary(summary, console.out)
        console.info(f"data in {run_dir.path} ({run.DATA_FILE}, {run.REJECTED_FILE}, {run.STATS_FILE}, plots)")


def _annotate(plan: run.GendataPlan, run_dir: run.RunDir, server: Any) -> dict[str, Any]:
    done = run_dir.load_progress()
    pending = [row for row in plan.sources.rows if row.id not in done]
    if done:
        console.info(f"resuming {run_dir.path}: {len(done)} of {len(plan.sources.rows)} traces done, {len(pending)} to go")
    count_tokens, why_not = run.token_counter(plan.profile)
    if why_not:
        console.warn(f"offload share in tokens skipped: {why_not}")
    accepted = [sum(1 for r in done.values() if r["status"] == "ok")]

    def status() -> str:
        return f"{accepted[0]} accepted · traces"

    def on_done(record: dict[str, Any]) -> None:
        accepted[0] += record["status"] == "ok"
        progress.advance()

    async def go() -> None:
        annotator = Annotator(plan.profile.annotator, server, plan.annotator_name)
        try:
            await run.run_all(plan, annotator, run_dir, pending, count_tokens, on_done)
        finally:
            await annotator.aclose()

    progress = render.WorkProgress("gendata", len(plan.sources.rows), len(done), status)
    try:
        with progress:
            asyncio.run(go())
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; the traces done so far are kept: continue with --resume {run_dir.path}") from None
    return run_dir.write_outputs(plan, run_dir.load_progress())


def show_stats(
    folder: Annotated[Path, typer.Argument(help="A folder gendata wrote.")],
    json_output: JsonOpt = False,
) -> None:
    """Print a gendata run's statistics again.

    Example: splitreason gendata stats runs/gendata-20261128-120000
    """
    try:
        summary = json.loads((folder / run.STATS_FILE).read_text())
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(f"{folder}: no {run.STATS_FILE} (give a folder a finished gendata run wrote)") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{folder}/{run.STATS_FILE} cannot be read ({exc})") from None
    if json_output:
        console.print_json(summary)
    else:
        render.gendata_summary(summary, console.out)


def register(app: typer.Typer) -> None:
    command(gendata_app, show_stats, "stats")
    app.add_typer(gendata_app, name="gendata")
