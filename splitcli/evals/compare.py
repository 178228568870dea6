"""Comparing finished eval runs: accuracy with its interval, offload and latency side by side, and an
accuracy-vs-latency plot with the Pareto front marked (the paper's teaser figure)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitcli.errors import DataError
from splitcli.evals.runner import RESULTS_FILE


@dataclass
class RunSummary:
    path: Path
    results: dict[str, Any]

    @property
    def label(self) -> str:
        mode = self.results["mode"]
        return mode if self.path.name == mode else f"{mode} ({self.path.name})"

    @property
    def pass1(self) -> float | None:
        accuracy = self.results.get("accuracy")
        return accuracy["pass@1"] if accuracy else None

    @property
    def seconds(self) -> float | None:
        return (self.results.get("usage") or {}).get("seconds_mean")


def load_runs(folders: list[Path]) -> list[RunSummary]:
    """Finished runs of the same task and problems; anything else is refused in one line."""
    runs = []
    for folder in folders:
        try:
            runs.append(RunSummary(folder, json.loads((folder / RESULTS_FILE).read_text())))
        except (FileNotFoundError, NotADirectoryError):
            raise DataError(f"{folder}: no {RESULTS_FILE} (give folders of finished `splitreason eval` runs)") from None
        except (OSError, ValueError) as exc:
            raise DataError(f"{folder}/{RESULTS_FILE} cannot be read ({exc})") from None
    if len(runs) < 2:
        raise DataError("compare needs at least two run folders")
    first = runs[0].results["fingerprint"]["config"]
    for run in runs[1:]:
        other = run.results["fingerprint"]["config"]
        for key in ("task", "dataset", "problems_hash"):
            if other.get(key) != first.get(key):
                raise DataError(f"{run.path} and {runs[0].path} ran different problems ({key}: {other.get(key)} vs "
                                f"{first.get(key)}): compare runs of the same task and problem set")
    return runs


def pareto(runs: list[RunSummary]) -> list[RunSummary]:
    """Runs no other run beats on both accuracy (higher) and latency (lower), fastest first."""
    scored = [run for run in runs if run.pass1 is not None and run.seconds is not None]
    front = [run for run in scored if not any(
        (o.pass1 >= run.pass1 and o.seconds <= run.seconds) and (o.pass1 > run.pass1 or o.seconds < run.seconds)  # type: ignore[operator]
        for o in scored)]
    return sorted(front, key=lambda run: run.seconds)  # type: ignore[arg-type,return-value]


def rows(runs: list[RunSummary]) -> list[dict[str, Any]]:
    front = {id(run) for run in pareto(runs)}
    table = []
    for run in runs:
        accuracy = run.results.get("accuracy") or {}
        usage = run.results.get("usage") or {}
        table.append({
            "run": str(run.path), "name": run.path.name, "mode": run.results["mode"], "task": run.results["task"],
            "n": run.results["n"],
            "pass@1": accuracy.get("pass@1"), "pass@1_ci95": accuracy.get("pass@1_ci95"),
            "offload_share": usage.get("offload_share_mean"), "seconds_mean": usage.get("seconds_mean"),
            "seconds_p90": usage.get("seconds_p90"), "tokens_per_second": usage.get("tokens_per_second"),
            "pareto": id(run) in front,
        })
    return table


def plot(runs: list[RunSummary], target: Path) -> Path:
    """Accuracy (pass@1, 95% interval) against mean seconds per sample; the Pareto front as a line."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    scored = [run for run in runs if run.pass1 is not None and run.seconds is not None]
    if not scored:
        raise DataError("no run has both pass@1 and latency to plot (finish the runs first)")
    fig, ax = plt.subplots(figsize=(8.5, 4.5), dpi=120)
    colours, markers = plt.get_cmap("tab20"), "osD^vP<>X*hp"  # a dozen runs (every mode) stay apart
    for index, run in enumerate(scored):
        low, high = run.results["accuracy"]["pass@1_ci95"]
        ax.errorbar(run.seconds, 100 * run.pass1, yerr=[[100 * (run.pass1 - low)], [100 * (high - run.pass1)]],  # type: ignore[operator]
                    fmt=markers[index % len(markers)], color=colours(index % 20), capsize=4, label=run.label)
    front = pareto(scored)
    ax.plot([r.seconds for r in front], [100 * r.pass1 for r in front], "o--", color="black",  # type: ignore[operator]
            markerfacecolor="none", markersize=14, linewidth=1, label="Pareto front (no run is both faster and better)")
    ax.set_xlabel("mean seconds per sample")
    ax.set_ylabel("pass@1 (%) with 95% interval")
    # The whole scale, a run at 0 % in sight: matplotlib alone spans 95-105 % when every run scores 100 %.
    ax.set_ylim(-5, 105)
    ax.set_title(f"{scored[0].results['task']}: accuracy vs latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the plot: it hides no run
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target)
    plt.close(fig)
    return target
