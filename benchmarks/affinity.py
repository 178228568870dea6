"""What losing session affinity costs, on the CPU demo pair with two replicas of each model: the
prompt tokens of every request after a Session's first to each model that are served from the
prefix cache, with each Session kept on one replica per model (splitreason's way) against requests
spread round robin over both (what a router without affinity, or the original's per-request cycle,
does). Each run asks questions no server has seen (so no cache is warm from an earlier run), four
Sessions at once in `random-switch` (the models take turns every 8 tokens), affinity and round robin
interleaved.

Starts a second replica of each demo model (ports 9101/9102) with `serve` and stops it afterwards;
the first replicas are the demo servers (started if they are not running).

    python benchmarks/affinity.py [--repeats 3] [--out benchmarks/results/affinity.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from splitcli.engine import EngineClient
from splitcli.profiles import load_profile
from splitcli.solve import close_clients, open_clients, run_question
from splitcli.trace import Trace

TWO = ["small.replicas=2", "big.replicas=2", "big.speculative=null"]


def _round_robin(self: EngineClient, *args: Any, **kwargs: Any) -> EngineClient:
    twin = PINNED(self, *args, **kwargs)
    twin.release()  # unpinned: every request takes the next replica of the shared cycle
    return twin


PINNED = EngineClient.bound


KNOBS = ["modes.random-switch.ratio=1", "modes.random-switch.chunk=8", "sampling.max_new_tokens=160"]


async def sessions(affinity: bool, run: str) -> list[Trace]:
    EngineClient.bound = PINNED if affinity else _round_robin  # type: ignore[method-assign]
    profile = load_profile("demo", [*TWO, *KNOBS])
    clients = open_clients(profile, {"small": "small", "big": "big"})
    try:
        return list(await asyncio.gather(*(run_question(profile, f"Question {run}-{index}: what is 12 * 3 + 7?",
                                                        "random-switch", clients=clients) for index in range(4))))
    finally:
        await close_clients(clients)
        EngineClient.bound = PINNED  # type: ignore[method-assign]


def handoff_cache(traces: list[Trace]) -> dict[str, Any]:
    """Prompt and cached tokens of every generation after a Session's first to its model (each
    starts after a handoff; the first to each model starts cold either way)."""
    prompt = cached = requests = 0
    for trace in traces:
        assert trace.error is None, trace.error
        for model in ("small", "big"):
            for call in [call for call in trace.calls if call.kind == "generate" and call.model == model][1:]:
                prompt, cached, requests = prompt + call.prompt_tokens, cached + call.cached_tokens, requests + 1
    # Sessions of unseen questions differ in length from run to run: per request is what compares.
    return {"requests": requests, "prompt_tokens": prompt, "cached_tokens": cached,
            "hit_rate": round(cached / prompt, 4) if prompt else None,
            "uncached_per_request": round((prompt - cached) / requests, 1) if requests else None}


def handoff_totals(found: list[dict[str, Any]]) -> dict[str, Any]:
    prompt, cached, requests = (sum(run[key] for run in found) for key in ("prompt_tokens", "cached_tokens", "requests"))
    return {"requests": requests, "hit_rate": round(cached / prompt, 4),
            "uncached_per_request": round((prompt - cached) / requests, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/affinity.json"))
    args = parser.parse_args()
    sets = [arg for item in TWO for arg in ("--set", item)]
    subprocess.run([sys.executable, "-m", "splitcli", "serve", "--only", "small,big", *sets, "--detach"], check=True)
    try:
        runs: dict[str, list[dict[str, Any]]] = {"affinity": [], "round_robin": []}
        for repeat in range(args.repeats):
            for name in runs:
                runs[name].append(handoff_cache(asyncio.run(sessions(name == "affinity", f"{name}-{repeat}"))))
    finally:
        subprocess.run([sys.executable, "-m", "splitcli", "stop", "demo-small-1"], check=False)
        subprocess.run([sys.executable, "-m", "splitcli", "stop", "demo-big-1"], check=False)
    summary = {name: {"hit_rate": [run["hit_rate"] for run in found],
                      "uncached_per_request": [run["uncached_per_request"] for run in found],
                      "all_runs": handoff_totals(found)} for name, found in runs.items()}
    args.out.write_text(json.dumps({"sessions_per_run": 4, "knobs": KNOBS, "runs": runs, "summary": summary}, indent=2)
                        + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
