"""What losing session affinity costs, on the CPU demo pair with two replicas of each model: the
handoffs' prompt tokens served from the prefix cache, with each Session kept on one replica per
model (splitreason's way) against requests spread round robin over both (what a router without
affinity, or the original's per-request cycle, does). Same questions, same run, interleaved.

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

from splitcli import demo
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


async def sessions(affinity: bool) -> list[Trace]:
    EngineClient.bound = PINNED if affinity else _round_robin  # type: ignore[method-assign]
    profile = load_profile("demo", TWO)
    clients = open_clients(profile, {"small": "small", "big": "big"})
    try:
        return [await run_question(profile, item.question, "splitreason", clients=clients) for item in demo.QUESTIONS]
    finally:
        await close_clients(clients)
        EngineClient.bound = PINNED  # type: ignore[method-assign]


def handoff_cache(traces: list[Trace]) -> dict[str, Any]:
    """Prompt and cached tokens of every generation after a Session's first (each starts after a handoff)."""
    prompt = cached = 0
    for trace in traces:
        generations = [call for call in trace.calls if call.kind == "generate"]
        for call in generations[2:]:  # a Session's first small and first big request start cold anyway
            prompt, cached = prompt + call.prompt_tokens, cached + call.cached_tokens
    return {"prompt_tokens": prompt, "cached_tokens": cached, "hit_rate": round(cached / prompt, 4) if prompt else None,
            "answers_right": sum(trace.answer == item.answer for trace, item in zip(traces, demo.QUESTIONS, strict=True))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/affinity.json"))
    args = parser.parse_args()
    sets = [arg for item in TWO for arg in ("--set", item)]
    subprocess.run([sys.executable, "-m", "splitcli", "serve", "--only", "small,big", *sets, "--detach"], check=True)
    try:
        runs: dict[str, list[dict[str, Any]]] = {"affinity": [], "round_robin": []}
        for _ in range(args.repeats):
            for name in runs:
                runs[name].append(handoff_cache(asyncio.run(sessions(name == "affinity"))))
    finally:
        subprocess.run([sys.executable, "-m", "splitcli", "stop", "demo-small-1"], check=False)
        subprocess.run([sys.executable, "-m", "splitcli", "stop", "demo-big-1"], check=False)
    summary = {name: {"hit_rate": [run["hit_rate"] for run in found], "prompt_tokens": found[0]["prompt_tokens"],
                      "answers_right": [run["answers_right"] for run in found]} for name, found in runs.items()}
    args.out.write_text(json.dumps({"questions": len(demo.QUESTIONS), "runs": runs, "summary": summary}, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
