"""The PNGs `eval compare --plot` and `gendata` write: axes a reader can trust (pure plotting, no server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures the plots draw, kept open for the test to read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept: list[Any] = []
    monkeypatch.setattr(plt, "close", kept.append)
    return kept


def test_the_compare_plot_spans_the_whole_accuracy_scale(tmp_path: Path, figures: list[Any]) -> None:
    from splitcli.evals.compare import RunSummary, plot

    perfect = {"mode": "splitreason", "task": "demo", "usage": {"seconds_mean": 1.5},
               "accuracy": {"pass@1": 1.0, "pass@1_ci95": [1.0, 1.0]}}
    plot([RunSummary(tmp_path / "splitreason", perfect)], tmp_path / "plot.png")
    (figure,) = figures
    assert figure.axes[0].get_ylim() == (0.0, 105.0)  # not 95-105 % around a 100 % point


def test_the_offload_histogram_counts_traces_in_whole_numbers(tmp_path: Path, figures: list[Any]) -> None:
    from splitcli.gendata.stats import plot

    records = [{"status": "ok", "offload_chars": 0.1 * i, "chars": 100, "intervals": [(10, 20)]} for i in range(3)]
    plot(records, tmp_path)
    histogram = figures[0].axes[0]
    assert all(float(tick).is_integer() for tick in histogram.get_yticks())
