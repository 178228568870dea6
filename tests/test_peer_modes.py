"""The training-free peer methods as modes (GlimpRouter, SpecReason), through the real engine on both
demo pairs. The demo models were never trained for these methods, so the tests pin the rules, not
the answers: who writes each step for thresholds that force one side, what is thrown away and counted."""

from __future__ import annotations

import asyncio

from splitcli.modes.glimprouter import entropy
from splitcli.modes.specreason import step_score
from splitcli.profiles import load_profile
from splitcli.solve import run_question
from splitcli.trace import Trace

STEPS = ". "  # the demo traces have no blank lines: sentences are the steps


def _run(pair: str, mode: str, *knobs: str) -> Trace:
    profile = load_profile(pair, [f"modes.{mode}.delimiter={STEPS}", f"modes.{mode}.max_step_tokens=24",
                                  "sampling.max_tokens=220", "sampling.temperature=0", *knobs])
    question = "What is 12 * 3 + 7?"
    trace = asyncio.run(run_question(profile, question, mode))
    assert trace.error is None, trace.error
    return trace


def test_the_pure_rules() -> None:
    assert entropy({"a": 0.0}) == 0.0
    assert abs(entropy({"a": -0.6931, "b": -0.6931}) - 0.6931) < 1e-3  # two equal tokens: ln 2
    assert step_score({" 8": -0.1, "3": -2.5}, "greedy") == 8.0
    assert step_score({"x": -0.1, "3": -2.5}, "greedy") == 0.0  # a non-digit is 0, as published
    assert abs(step_score({"8": -0.6931, "2": -0.6931, "x": -0.1}, "average") - 5.0) < 1e-6


def test_glimprouter_routes_each_step_by_the_small_models_first_token_entropy(pair: str) -> None:
    every_step_big = _run(pair, "glimprouter", "modes.glimprouter.threshold=0")
    steps = every_step_big.extra["steps"]
    assert steps and {step["model"] for step in steps} == {"big"}
    assert every_step_big.stats()["tokens"]["small"] == 0
    assert all(step["entropy"] >= 0 for step in steps)
    score_calls = [call for call in every_step_big.calls if call.kind == "score"]
    assert len(score_calls) == len(steps) and {call.model for call in score_calls} == {"small"}  # one glimpse a step

    never_big = _run(pair, "glimprouter", "modes.glimprouter.threshold=1000")
    steps = never_big.extra["steps"]
    assert steps and {step["model"] for step in steps} == {"small"}
    thinking = [segment for segment in never_big.kept_segments if segment.model == "small"]
    assert sum(step["tokens"] for step in steps) == sum(segment.tokens for segment in thinking)


def test_specreason_keeps_the_drafts_the_judge_passes_and_rewrites_the_others(pair: str) -> None:
    accepted = _run(pair, "specreason", "modes.specreason.threshold=0")  # every score is >= 0
    steps = accepted.extra["steps"]
    assert steps and {step["model"] for step in steps} == {"small"}
    assert all(segment.kept for segment in accepted.segments)
    judged = [call for call in accepted.calls if call.kind == "score"]
    assert len(judged) == len(steps) and {call.model for call in judged} == {"big"}  # one judgement a step

    strict = _run(pair, "specreason", "modes.specreason.threshold=9")
    steps = strict.extra["steps"]
    rewritten = [step for step in steps if step["score"] < 9]
    assert all(step["model"] == "big" for step in rewritten)
    dropped = [segment for segment in strict.segments if not segment.kept]
    assert len(dropped) == len(rewritten) and {segment.model for segment in dropped} <= {"small"}
    stats = strict.stats()
    assert stats["spent_tokens"]["small"] == stats["tokens"]["small"] + sum(segment.tokens for segment in dropped)


def test_the_peer_modes_are_listed() -> None:
    from conftest import cli

    listed = cli("modes").out
    assert "glimprouter" in listed and "specreason" in listed
