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
    assert figure.axes[0].get_ylim() == (-5.0, 105.0)  # not 95-105 % around a 100 % point, and 0 % in sight


def test_every_mode_of_a_compare_plot_has_a_look_of_its_own(tmp_path: Path, figures: list[Any]) -> None:
    from splitcli.evals.compare import RunSummary, plot
    from splitcli.modes import mode_names

    runs = [RunSummary(tmp_path / mode, {"mode": mode, "task": "demo", "usage": {"seconds_mean": 1.0 + index},
                                         "accuracy": {"pass@1": 0.5, "pass@1_ci95": [0.25, 0.75]}})
            for index, mode in enumerate(mode_names())]
    plot(runs, tmp_path / "plot.png")
    (figure,) = figures
    handles, labels = figure.axes[0].get_legend_handles_labels()
    looks = {(handle[0].get_marker(), handle[0].get_color()) for handle, label in zip(handles, labels, strict=True)
             if label in mode_names()}
    assert len(looks) == len(mode_names())  # no two modes drawn alike (the default cycle has 10 colours)


def test_the_offload_histogram_counts_traces_in_whole_numbers(tmp_path: Path, figures: list[Any]) -> None:
    from splitcli.gendata.stats import plot

    records = [{"status": "ok", "offload_chars": 0.1 * i, "chars": 100, "intervals": [(10, 20)]} for i in range(3)]
    plot(records, tmp_path)
    histogram = figures[0].axes[0]
    assert all(float(tick).is_integer() for tick in histogram.get_yticks())
