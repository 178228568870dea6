"""Every mode on the demo task through `splitreason eval`, then `eval compare` over all of them:
the table (results in benchmarks/results/mode_compare.json) and the accuracy-vs-latency plot with
the Pareto front (docs/modes-demo.png), as the README shows.

The demo task is four arithmetic questions the demo models were trained to answer one way; it tells
whether a mode runs end to end and what it costs in time, tokens and handoffs on CPU, not which
mode reasons better (the peer modes' rules were never what the demo models learnt).

    python benchmarks/mode_compare.py [--profile demo] [--runs runs/mode-compare]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from splitcli.modes import mode_names


def splitreason(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "splitcli", *args], capture_output=True, text=True, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--runs", type=Path, default=Path("runs/mode-compare"))
    parser.add_argument("--plot", type=Path, default=Path("docs/modes-demo.png"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/mode_compare.json"))
    args = parser.parse_args()
    folders = []
    for mode in mode_names():
        folder = args.runs / mode
        splitreason("eval", "--profile", args.profile, "--mode", mode, "--out", str(folder), "--keep", "--json")
        folders.append(str(folder))
    table = splitreason("eval", "compare", *folders, "--plot", str(args.plot), "--json")
    args.out.write_text(json.dumps(json.loads(table.stdout), indent=2) + "\n")
    print(splitreason("eval", "compare", *folders).stdout)


if __name__ == "__main__":
    main()
