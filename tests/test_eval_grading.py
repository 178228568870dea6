"""Grading and metrics as pure functions: answer pairs from a data file, metrics on crafted samples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import cli

from splitcli.errors import DataError
from splitcli.evals import grading, metrics

CASES = json.loads((Path(__file__).parent / "data" / "grading.json").read_text())


@pytest.mark.parametrize("case", CASES["math"], ids=lambda c: c["note"])
def test_math_grading(case: dict[str, Any]) -> None:
    verdict = grading.grade("math", case["gold"], case["response"])
    assert (verdict.correct, verdict.extracted) == (case["correct"], case["extracted"])
    assert verdict.reason


@pytest.mark.parametrize("case", CASES["choice"], ids=lambda c: c["note"])
def test_multiple_choice_grading(case: dict[str, Any]) -> None:
    verdict = grading.grade("choice", case["gold"], case["response"])
    assert (verdict.correct, verdict.extracted) == (case["correct"], case["extracted"])


def test_there_are_enough_cases() -> None:
    assert len(CASES["math"]) + len(CASES["choice"]) >= 40


def test_reasons_say_why() -> None:
    assert grading.grade("math", "3", "<think>x</think> 3").reason == "no \\boxed{} answer after </think>"
    assert grading.grade("math", "3", "</think> \\boxed{4}").reason == "not equal to the gold answer 3 (Math-Verify)"
    assert grading.grade("math", "3", "\\boxed{3}").reason == "equal to the gold answer (Math-Verify)"
    assert grading.grade("choice", "A", "</think> hm").reason.endswith("never a default letter")


@pytest.mark.parametrize(("args", "expected"), [
    (["23", "<think>a</think> so \\boxed{023}"], {"correct": True, "extracted": "023",
                                                   "reason": "equal to the gold answer (Math-Verify)"}),
    (["C", "</think> Answer: B", "--task", "gpqa-diamond"], {"correct": False, "extracted": "B",
                                                             "reason": "not the gold letter C"}),
])
def test_eval_grade_command(args: list[str], expected: dict[str, Any]) -> None:
    result = cli("eval", "grade", *args, "--json")
    assert result.code == 0, result.err
    assert result.json() == expected


def _sample(problem: str, index: int, correct: bool, extracted: str | None) -> dict[str, Any]:
    return {"problem_id": problem, "sample": index, "correct": correct, "extracted": extracted, "error": None}


CRAFTED = [
    *(_sample("p1", i, c, e) for i, (c, e) in enumerate([(True, "5"), (False, "6"), (True, "5"), (True, "5")])),
    *(_sample("p2", i, c, e) for i, (c, e) in enumerate([(False, "1"), (False, "1"), (False, None), (False, "2")])),
    *(_sample("p3", i, c, e) for i, (c, e) in enumerate([(False, "9"), (True, "7"), (False, "9"), (False, "8")])),
]


def test_metrics_equal_hand_computed_values() -> None:
    result = metrics.accuracy(metrics.by_problem(CRAFTED), ["p1", "p2", "p3"], n=4)
    assert result["pass@1"] == pytest.approx((0.75 + 0 + 0.25) / 3)
    # unbiased pass@k: p1 (3 of 4 right) 0.75, 1, 1; p2 (0 of 4) 0, 0, 0; p3 (1 of 4) 0.25, 1 - C(3,2)/C(4,2), 1
    assert result["pass@k"] == pytest.approx({"1": 1 / 3, "2": (1 + 0 + 0.5) / 3, "4": 2 / 3})
    # majority of the first k answers (ties: the earlier one): p1 "5" right; p2 "1" wrong; p3 "9" wrong
    assert result["maj@k"] == pytest.approx({"1": 1 / 3, "2": 1 / 3, "4": 1 / 3})
    # any right among the first k: p1 from k=1, p3 from k=2
    assert result["cov@k"] == pytest.approx({"1": 1 / 3, "2": 2 / 3, "4": 2 / 3})
    low, high = result["pass@1_ci95"]
    assert 0 <= low < result["pass@1"] < high <= 0.75
    assert metrics.accuracy(metrics.by_problem(CRAFTED), ["p1", "p2", "p3"], n=4)["pass@1_ci95"] == [low, high]


def test_pass_at_1_is_refused_when_a_problem_has_fewer_samples() -> None:
    short = [s for s in CRAFTED if not (s["problem_id"] == "p2" and s["sample"] == 3)]
    with pytest.raises(DataError, match=r"^pass@1 needs 4 graded samples of every problem; 1 have fewer \(p2\)"):
        metrics.accuracy(metrics.by_problem(short), ["p1", "p2", "p3"], n=4)
    errored = [{**s, "error": "boom"} if s["problem_id"] == "p1" and s["sample"] == 0 else s for s in CRAFTED]
    with pytest.raises(DataError, match=r"1 have fewer \(p1\)"):
        metrics.accuracy(metrics.by_problem(errored), ["p1", "p2", "p3"], n=4)


def test_unbiased_pass_at_k_edge_cases() -> None:
    assert metrics.pass_at_k(4, 0, 2) == 0.0
    assert metrics.pass_at_k(4, 4, 1) == 1.0
    assert metrics.pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)
    assert metrics.ks(1) == [1] and metrics.ks(8) == [1, 2, 4, 8] and metrics.ks(6) == [1, 2, 4, 6]
