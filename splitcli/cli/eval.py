"""eval, eval grade, eval compare."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from splitcli import console, render, runs
from splitcli.cli.common import HELP_OPTIONS, Group, command, load, servers_in_use
from splitcli.cli.options import JsonOpt, ModeOpt, SetOpt
from splitcli.errors import DataError, Interrupted, SampleErrors
from splitcli.evals.tasks import TASKS, get_task, load_problems
from splitcli.modes import get_mode

if TYPE_CHECKING:
    from splitcli.evals import runner

eval_app = typer.Typer(context_settings=HELP_OPTIONS, cls=Group, invoke_without_command=True)  # help: run_eval's

TaskOpt = Annotated[str | None, typer.Option("--task", "-t", metavar="TASK",
                                             help=f"Task: {', '.join(TASKS)} (default: the profile's eval.task).")]


@eval_app.callback()
def run_eval(
    ctx: typer.Context,
    profile: Annotated[str | None, typer.Option("--profile", "-p", metavar="NAME|FILE",
                                                help="Profile name or path (default: demo).")] = None,
    task: TaskOpt = None,
    mode: ModeOpt = None,
    n: Annotated[int | None, typer.Option("--n", min=1, metavar="N", help="Samples per problem (default: eval.samples).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, metavar="K", help="Only the first K problems.")] = None,
    concurrency: Annotated[int | None, typer.Option(
        "--concurrency", "-c", min=1, metavar="C",
        help="Samples in flight (default: eval.concurrency, else what the KV caches hold).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (default: runs/TASK-MODE-TIME).")] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="Continue the run in this folder.")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="A local set: JSONL/parquet/CSV (id, problem, answer, "
                                                             "optional choices) or a dataset folder.")] = None,
    overrides: SetOpt = None,
    keep: Annotated[bool, typer.Option("--keep", help="Leave servers this command started running.")] = False,
    no_stream: Annotated[bool, typer.Option("--no-stream", help="Do not stream (no handoff latency).")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Benchmark a mode on a task: n samples per problem, graded by Math-Verify, resumable.

    Writes samples.jsonl (each sample as it finishes), run.json (what ran) and results.json (pass@1
    with a 95% interval, pass@k, maj@k, cov@k, offload, latency).

    Example: splitreason eval --profile demo --n 2
    """
    if ctx.invoked_subcommand is not None:
        return
    from splitcli.evals import runner  # the engine and the Session: not for `--help`

    given = {"profile": profile, "overrides": overrides, "task": task, "mode": mode, "n": n, "limit": limit,
             "data": str(data) if data else None}
    inputs, run_dir = runs.resumed(runner.RunDir, given, resume)
    prof = load(inputs["profile"] or "demo", inputs["overrides"])
    task_name = inputs["task"] or prof.eval.task
    if task_name is None:
        raise DataError(f"profile {prof.name} names no task: pass --task (one of: {', '.join(TASKS)}) "
                        "or set eval.task in the profile")
    mode_name = inputs["mode"] or prof.mode
    server_keys = get_mode(mode_name).server_keys()
    problems = load_problems(get_task(task_name), prof.eval.seed, Path(inputs["data"]) if inputs["data"] else None,
                             prof.eval.revision, inputs["limit"] or prof.eval.limit)
    plan = runner.EvalPlan(prof, mode_name, server_keys, problems, inputs["n"] or prof.eval.samples, prof.eval.seed,
                           concurrency or prof.eval.concurrency, stream=not no_stream,
                           inputs={**inputs, "profile": inputs["profile"] or "demo"})
    config = runner.config_fingerprint(plan)
    if run_dir is not None:
        runs.check_same(run_dir, "run", run_dir.read_run()["fingerprint"]["config"], config)
    else:
        run_dir = runs.new_folder(runner.RunDir, out, f"{task_name}-{mode_name}")
    with servers_in_use(prof, tuple(server_keys.values()), keep):
        served = asyncio.run(runner.describe_servers(plan))
        if resume is not None:
            runs.check_same(run_dir, "servers", run_dir.read_run()["fingerprint"]["served"], served)
        else:
            run_dir.write_run({"inputs": runner.plan_inputs(plan), "fingerprint": {"config": config, "served": served},
                               "started_at": time.time()})
        if plan.concurrency is None:
            plan.concurrency, chosen = asyncio.run(runner.fitting_concurrency(plan))
            console.info(chosen)
        summary = _sample(plan, run_dir)
    _finish(summary, run_dir, json_output)


def _sample(plan: runner.EvalPlan, run_dir: runner.RunDir) -> dict[str, Any]:
    from splitcli.evals import runner

    done = run_dir.load_samples()
    by_id = {problem.id: problem for problem in plan.problems.problems}
    pending = [(by_id[pid], index) for pid, index in plan.sample_keys()
               if (pid, index) not in done or done[(pid, index)].get("error") is not None]
    total = len(plan.sample_keys())
    skipped = total - len(pending)
    if skipped:
        console.info(f"resuming {run_dir.path}: {skipped} of {total} samples already done, {len(pending)} to go")
    started = time.perf_counter()
    progress = render.EvalProgress(total, skipped, [r for r in done.values() if r.get("error") is None])
    try:
        with progress:
            asyncio.run(runner.run_samples(plan, run_dir, pending, progress.record))
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; the samples written so far are kept: continue with --resume {run_dir.path}") from None
    summary = runner.results(plan, run_dir.load_samples(), time.perf_counter() - started,
                             run_dir.read_run()["fingerprint"])
    return {**summary, "concurrency": plan.concurrency, "throughput": progress.throughput()}


def _finish(summary: dict[str, Any], run_dir: runner.RunDir, json_output: bool) -> None:
    run_dir.write_results(summary)
    if json_output:
        console.print_json(summary)
    else:
        render.eval_summary(summary, console.out)
        console.info(f"results in {run_dir.path}")
    probes = (summary.get("usage") or {}).get("probe_calls") or {}
    if probes.get("openai"):  # the slower way round: said at the end too, not only once at the start
        console.warn(f"{probes['openai']} of {sum(probes.values())} probe calls went over the OpenAI API (every "
                     f"prefix resending the context); each sample's trace says why in its calls")
    if summary["errored"]:
        raise SampleErrors(f"{summary['errored']} of {summary['samples']} samples errored (engine failures, not wrong "
                           f"answers; no pass@1 without them): retry them with --resume {run_dir.path}")


def grade_response(
    gold: Annotated[str, typer.Argument(help="The gold answer (a letter for multiple choice).")],
    response: Annotated[str, typer.Argument(help="A model's response, thinking included.")],
    task: TaskOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Show how one response is graded: the extracted answer, the verdict and its reason.

    Example: splitreason eval grade 23 '<think>...</think> The answer is \\boxed{023}.'
    """
    from splitcli.evals import grading

    grader = get_task(task).grader if task else "math"
    verdict = grading.grade(grader, gold, response)
    if json_output:
        console.print_json({"correct": verdict.correct, "extracted": verdict.extracted, "reason": verdict.reason})
        return
    style = "bold green" if verdict.correct else "bold red"
    console.say(("correct" if verdict.correct else "wrong", style), f" · extracted: {verdict.extracted!r} · "
                f"{verdict.reason}", stream=console.out)


def compare_runs(
    folders: Annotated[list[Path], typer.Argument(help="Folders of finished runs (same task and problems).")],
    plot: Annotated[Path | None, typer.Option("--plot", help="Write an accuracy-vs-latency PNG here.")] = None,
    json_output: JsonOpt = False,
) -> None:
    """Runs side by side (accuracy with interval, offload, latency), optionally as a plot.

    Example: splitreason eval compare runs/aime24-splitreason-* runs/aime24-big-only-* --plot teaser.png
    """
    from splitcli.evals import compare

    runs = compare.load_runs(folders)
    table = compare.rows(runs)
    if plot is not None:
        compare.plot(runs, plot)
    if json_output:
        console.print_json(table)
    else:
        render.compare_table(table, console.out)
    if plot is not None:
        console.info(f"plot written to {plot}")


def register(app: typer.Typer) -> None:
    command(eval_app, grade_response, "grade", takes_negative_numbers=True)
    command(eval_app, compare_runs, "compare")
    app.add_typer(eval_app, name="eval")
