"""The stream mode's probe budget (`probe_share`) on both CPU demo pairs: probe requests' summed
seconds against the big model's streaming seconds, probe requests, big tokens thrown away after the
cut and wall time, with every bucket probed (`probe_share` 0) and with the default share, and that
the segments are the same (the cut is a property of the text, not of when probes go).

Each configuration runs on every demo question `--repeats` times, interleaved; sums over the runs.
Serves each pair in turn (`splitreason serve --profile PAIR --only small,big`, reusing what runs)
and stops every server of the state dir afterwards.

    python benchmarks/probe_budget.py [--repeats 3] [--out benchmarks/results/probe_budget.json]
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
from splitcli.profiles import load_profile
from splitcli.solve import run_question

SHARES = ("0", "0.25")
BUCKETS = ("1", "8")


async def one(pair: str, question: str, bucket: str, share: str) -> dict[str, Any]:
    profile = load_profile(pair, [f"modes.splitreason-stream.bucket={bucket}", f"modes.splitreason-stream.probe_share={share}"])
    trace = await run_question(profile, question, "splitreason-stream")
    assert trace.error is None, trace.error
    stats = trace.stats()
    probes = [call for call in trace.calls if call.kind == "probe"]
    big_streaming = sum(call.seconds for call in trace.calls if call.model == "big" and call.kind == "generate")
    return {"segments": [(s.model, s.text) for s in trace.segments], "probe_s": sum(call.seconds for call in probes),
            "probe_requests": len(probes), "big_stream_s": big_streaming, "wall_s": stats["wall_seconds"],
            "big_dropped": stats["dropped_tokens"]["big"], "big_tokens": stats["tokens"]["big"]}


def measure(pair: str, repeats: int) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    same = True
    for _ in range(repeats):
        for item in demo.questions_of(pair):
            found = {(bucket, share): asyncio.run(one(pair, item.question, bucket, share))
                     for bucket in BUCKETS for share in SHARES}
            same &= len({json.dumps(run["segments"]) for run in found.values()}) == 1
            for (bucket, share), run in found.items():
                row = rows.setdefault(f"bucket {bucket}, probe_share {share}", dict.fromkeys(
                    ("probe_s", "probe_requests", "big_stream_s", "wall_s", "big_dropped", "big_tokens"), 0.0))
                for key in row:
                    row[key] += run[key]
    for row in rows.values():
        row["probes_vs_big"] = round(row["probe_s"] / row["big_stream_s"], 3) if row["big_stream_s"] else None
        for key in ("probe_s", "big_stream_s", "wall_s"):
            row[key] = round(row[key], 3)
    return {"rows": rows, "same_segments_everywhere": same}


def splitreason(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "splitcli", *args], capture_output=True, text=True, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/probe_budget.json"))
    args = parser.parse_args()
    results = {}
    for pair in ("demo", "demo-qwen3"):
        started = splitreason("serve", "--profile", pair, "--only", "small,big", "--detach")
        if started.returncode:
            raise SystemExit(started.stderr)
        try:
            results[pair] = measure(pair, args.repeats)
        finally:
            splitreason("stop", "--all")
    args.out.write_text(json.dumps({"repeats": args.repeats, "questions": "every demo question", **results}, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
