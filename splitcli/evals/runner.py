"""Running an eval: n samples per problem over shared connection pools, each sample appended to
samples.jsonl as it finishes, resumable after any crash, then metrics into results.json."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

from splitcli import __version__
from splitcli.datafiles import RunFolder
from splitcli.engine import EngineClient
from splitcli.evals import grading, metrics
from splitcli.evals.tasks import Problem, ProblemSet, derived_seed
from splitcli.profiles import Profile, ServerKey
from splitcli.solve import close_clients, open_clients, run_question
from splitcli.trace import Model

SAMPLES_FILE = "samples.jsonl"
RESULTS_FILE = "results.json"
TEMPLATE_PROBE = [{"role": "user", "content": "splitreason template probe: what is 1 + 1?"}]


@dataclass
class EvalPlan:
    profile: Profile
    mode: str
    servers: dict[Model, ServerKey]  # which server answers for each model (the mode's server_keys())
    problems: ProblemSet
    n: int
    seed: int
    concurrency: int | None  # None: chosen from the servers once they run (fitting_concurrency)
    stream: bool = True
    inputs: dict[str, Any] = field(default_factory=dict)  # what was asked for, so --resume DIR alone continues it

    def sample_keys(self) -> list[tuple[str, int]]:
        return [(problem.id, index) for problem in self.problems.problems for index in range(self.n)]


def config_fingerprint(plan: EvalPlan) -> dict[str, Any]:
    """What decides the samples, known before any server runs; a resumed run must match it."""
    profile = plan.profile.model_dump(mode="json", exclude={"name", "description", "eval"})
    models = {}
    for role, key in plan.servers.items():
        spec = plan.profile.spec(key).model_dump(mode="json")
        for setting in ("host", "port", "startup_timeout", "endpoints", "env", "gpus", "gpu_memory"):
            spec.pop(setting, None)  # where a server listens or how it starts does not change the samples
        models[role] = spec
    task = plan.problems.task
    return {
        "mode": plan.mode,
        "knobs": plan.profile.modes.get(plan.mode, {}),
        "models": models,
        "sampling": profile["sampling"],
        "prompt": profile["prompt"],
        "seed": plan.seed,
        "n": plan.n,
        "task": task.name,
        "grader": task.grader,
        "dataset": plan.problems.source,
        "revision": plan.problems.revision,
        "problems": len(plan.problems.problems),
        "problems_hash": plan.problems.digest,
        "versions": {"splitreason": __version__, "math-verify": _version("math-verify")},
    }


async def served_fingerprint(clients: dict[Model, EngineClient]) -> dict[str, Any]:
    """What the servers really run: model path or id, vLLM version, and a hash of each chat template."""
    served = {}
    for role, client in clients.items():
        info = await client.describe()
        ids, _ = await client.tokenize_chat(TEMPLATE_PROBE)
        template = hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]
        served[role] = {"root": info.get("root"), "vllm": info.get("vllm"), "template_hash": template}
    return served


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------- the run folder


class RunDir(RunFolder):
    """run.json, samples.jsonl (one line per finished sample) and results.json."""

    progress_file = SAMPLES_FILE
    writer = "an eval"

    def load_samples(self) -> dict[tuple[str, int], dict[str, Any]]:
        return self.load(lambda record: (str(record["problem_id"]), int(record["sample"])))

    def write_results(self, results: dict[str, Any]) -> None:
        (self.path / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")


# ---------------------------------------------------------------- sampling


def sample_seed(plan: EvalPlan, problem_id: str, index: int) -> int:
    return derived_seed(plan.seed, problem_id, index)


async def run_sample(plan: EvalPlan, clients: dict[Model, EngineClient], problem: Problem, index: int) -> dict[str, Any]:
    """One sample: a trace through the mode, graded; an engine failure is recorded as an error, not as wrong."""
    seed = sample_seed(plan, problem.id, index)
    sampling = plan.profile.sampling.model_copy(update={"seed": seed})
    started = time.perf_counter()
    trace = await run_question(plan.profile, problem.problem, plan.mode, stream=plan.stream, clients=clients,
                               sampling=sampling)
    record: dict[str, Any] = {
        "problem_id": problem.id, "sample": index, "seed": seed, "gold": problem.answer,
        "seconds": round(time.perf_counter() - started, 4), "error": trace.error,
    }
    if trace.error is None:
        verdict = grading.grade(plan.problems.task.grader, problem.answer, trace.text, len(problem.choices) or 4)
        record.update(correct=verdict.correct, extracted=verdict.extracted, reason=verdict.reason, vote=verdict.vote)
    else:
        record.update(correct=None, extracted=None, reason="not graded: the engine failed", vote=None)
    stats = trace.stats()
    record["tokens"] = stats["tokens"]
    record["trace"] = trace.to_dict()
    return record


async def run_samples(plan: EvalPlan, run_dir: RunDir, pending: list[tuple[Problem, int]],
                      on_done: Callable[[dict[str, Any]], None]) -> None:
    """The pending samples, `concurrency` at a time, over one connection pool per model."""
    in_flight = plan.concurrency or UNSIZED_CONCURRENCY
    clients = open_clients(plan.profile, plan.servers, max_connections=max(64, in_flight * 4))
    gate = asyncio.Semaphore(in_flight)

    async def one(problem: Problem, index: int) -> None:
        async with gate:
            record = await run_sample(plan, clients, problem, index)
        run_dir.append(record)
        on_done(record)

    try:
        await asyncio.gather(*(one(problem, index) for problem, index in pending))
    finally:
        await close_clients(clients)


async def describe_servers(plan: EvalPlan) -> dict[str, Any]:
    clients = open_clients(plan.profile, plan.servers)
    try:
        return await served_fingerprint(clients)
    finally:
        await close_clients(clients)


MOST_IN_FLIGHT = 256  # an eval's default concurrency never goes past this
UNSIZED_CONCURRENCY = 8  # ... and is this where a server does not report its KV cache size


async def fitting_concurrency(plan: EvalPlan) -> tuple[int, str]:
    """The default concurrency: as many samples as every model's KV cache holds at the full token
    budget (sampling.max_tokens each, summed over its replicas), so that no sample is preempted; and
    how it was chosen, to say. Most traces end earlier, so this errs on the side of no preemption."""
    clients = open_clients(plan.profile, plan.servers)
    try:
        sizes = {role: await client.kv_cache_tokens() for role, client in clients.items()}
    finally:
        await close_clients(clients)
    budget = plan.profile.sampling.max_tokens
    unsized = [role for role, found in sizes.items() if None in found]
    if unsized:
        return UNSIZED_CONCURRENCY, (f"concurrency {UNSIZED_CONCURRENCY} (not set, and the {', '.join(unsized)} server "
                                     "does not report its KV cache size; set eval.concurrency or --concurrency)")
    fits = {role: sum(size // budget for size in found if size is not None) for role, found in sizes.items()}
    chosen = max(1, min(MOST_IN_FLIGHT, *fits.values()))
    held = ", ".join(f"{role} {sum(s for s in found if s is not None)} tokens" for role, found in sizes.items())
    return chosen, (f"concurrency {chosen} (not set: what the KV caches hold at {budget} tokens a sample, {held}; "
                    "set eval.concurrency or --concurrency to choose)")


# ---------------------------------------------------------------- results


def results(plan: EvalPlan, samples: dict[tuple[str, int], dict[str, Any]], wall_seconds: float,
            fingerprint: dict[str, Any]) -> dict[str, Any]:
    """Metrics over the samples of this run's problems (errored samples excluded and counted)."""
    wanted = set(plan.sample_keys())
    records = [record for key, record in samples.items() if key in wanted]
    errored = [record for record in records if record.get("error") is not None]
    problem_ids = [problem.id for problem in plan.problems.problems]
    grouped = metrics.by_problem(records)
    summary: dict[str, Any] = {
        "task": plan.problems.task.name, "mode": plan.mode, "profile": plan.profile.name,
        "problems": len(problem_ids), "n": plan.n, "samples": len(records), "errored": len(errored),
        "wall_seconds": round(wall_seconds, 2), "fingerprint": fingerprint,
    }
    if errored or len(records) < len(wanted):
        summary["accuracy"] = None  # refused: pass@1 over missing samples would silently shrink
    else:
        summary["accuracy"] = metrics.accuracy(grouped, problem_ids, plan.n)
    summary["usage"] = metrics.usage(records)
    return summary


def plan_inputs(plan: EvalPlan) -> dict[str, Any]:
    return {**plan.inputs, "n": plan.n, "seed": plan.seed, "mode": plan.mode, "task": plan.problems.task.name}


def problem_record(problem: Problem) -> dict[str, Any]:
    return asdict(problem)
