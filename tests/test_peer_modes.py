"""The training-free peer methods as modes (GlimpRouter, SpecReason, Speculative Thinking, RelayGen),
through the real engine on both demo pairs. The demo models were never trained for these methods,
so the tests pin the rules, not the answers: who writes each step for knobs that force one side,
what is thrown away and counted, and a server that dies midway."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from conftest import Severable, cli

from splitcli.modes.glimprouter import entropy
from splitcli.modes.specreason import step_score
from splitcli.modes.speculative_thinking import sentiment
from splitcli.profiles import load_profile
from splitcli.solve import run_question
from splitcli.trace import THINK_END, Segment, Trace

STEPS = ". "  # the demo traces have no blank lines: sentences are the steps


STEP_KNOBS = {"glimprouter": ["delimiter", "max_step_tokens"], "specreason": ["delimiter", "max_step_tokens"],
              "speculative-thinking": ["trigger", "max_segment_tokens"], "relaygen": []}


def _profile(pair: str, mode: str, *knobs: str) -> object:
    step, size = (STEP_KNOBS[mode] + [None, None])[:2]
    steps = [f"modes.{mode}.{step}={STEPS}", f"modes.{mode}.{size}=24"] if step else []
    return load_profile(pair, [*steps, "sampling.max_tokens=220", "sampling.temperature=0", *knobs])


def _runs(pair: str, mode: str, *variants: list[str]) -> list[Trace]:
    """The question once per variant (its knobs), the runs side by side (the servers batch them)."""
    async def together() -> list[Trace]:
        return list(await asyncio.gather(*(run_question(_profile(pair, mode, *knobs), "What is 12 * 3 + 7?", mode)  # type: ignore[arg-type]
                                           for knobs in variants)))

    traces = asyncio.run(together())
    assert [trace.error for trace in traces] == [None] * len(variants)
    return traces


def test_the_pure_rules() -> None:
    assert entropy({"a": 0.0}) == 0.0
    assert abs(entropy({"a": -0.6931, "b": -0.6931}) - 0.6931) < 1e-3  # two equal tokens: ln 2
    assert step_score({" 8": -0.1, "3": -2.5}, "greedy") == 8.0
    assert step_score({"x": -0.1, "3": -2.5}, "greedy") == 0.0  # a non-digit is 0, as published
    assert abs(step_score({"8": -0.6931, "2": -0.6931, "x": -0.1}, "average") - 5.0) < 1e-6
    positive, negative = ["yes", "final answer"], ["wait", "check"]
    assert sentiment("Yes, so", positive, negative) == 1
    assert sentiment("Wait, let me checking", positive, negative) == -1  # substrings count, as published
    assert sentiment("yes... wait", positive, negative) == -1  # a tie with an affirmation is a reflection
    assert sentiment("12 * 3 = 36", positive, negative) == 0


def test_glimprouter_routes_each_step_by_the_small_models_first_token_entropy(pair: str) -> None:
    every_step_big, never_big = _runs(pair, "glimprouter", ["modes.glimprouter.threshold=0"],
                                      ["modes.glimprouter.threshold=1000"])
    steps = every_step_big.extra["steps"]
    assert steps and {step["model"] for step in steps} == {"big"}
    assert every_step_big.stats()["tokens"]["small"] == 0
    assert all(step["entropy"] >= 0 for step in steps)
    score_calls = [call for call in every_step_big.calls if call.kind == "score"]
    assert len(score_calls) == len(steps) and {call.model for call in score_calls} == {"small"}  # one glimpse a step

    steps = never_big.extra["steps"]
    assert steps and {step["model"] for step in steps} == {"small"}
    thinking = [segment for segment in never_big.kept_segments if segment.model == "small"]
    assert sum(step["tokens"] for step in steps) == sum(segment.tokens for segment in thinking)


def test_specreason_keeps_the_drafts_the_judge_passes_and_rewrites_the_others(pair: str) -> None:
    accepted, strict = _runs(pair, "specreason", ["modes.specreason.threshold=0"],  # every score is >= 0
                             ["modes.specreason.threshold=9"])
    steps = accepted.extra["steps"]
    assert steps and {step["model"] for step in steps} == {"small"}
    assert all(segment.kept for segment in accepted.segments)
    judged = [call for call in accepted.calls if call.kind == "score"]
    assert len(judged) == len(steps) and {call.model for call in judged} == {"big"}  # one judgement a step

    steps = strict.extra["steps"]
    rewritten = [step for step in steps if step["score"] < 9]
    assert all(step["model"] == "big" for step in rewritten)
    dropped = [segment for segment in strict.segments if not segment.kept]
    assert len(dropped) == len(rewritten) and {segment.model for segment in dropped} <= {"small"}
    stats = strict.stats()
    assert stats["spent_tokens"]["small"] == stats["tokens"]["small"] + sum(segment.tokens for segment in dropped)


def _dropped(trace: Trace) -> list[Segment]:
    return [segment for segment in trace.segments if not segment.kept]


def test_speculative_thinking_hands_over_only_at_a_cue_after_a_paragraph(pair: str) -> None:
    mode = "speculative-thinking"
    no_cue, every_break, checking, recapping = _runs(
        pair, mode,
        [f"modes.{mode}.probe_tokens=8"],  # the demo text has none of the default cues
        [f"modes.{mode}.probe_tokens=8", f"modes.{mode}.positive=[' ']"],
        # Every word a paragraph (trigger " "), so that the demo text has breaks enough for these two.
        [f"modes.{mode}.trigger=' '", f"modes.{mode}.probe_tokens=4", f"modes.{mode}.verify=[' ']",
         f"modes.{mode}.verify_tokens=6"],
        [f"modes.{mode}.trigger=' '", f"modes.{mode}.probe_tokens=4", f"modes.{mode}.negative=[' ']",
         f"modes.{mode}.recap_after=1", f"modes.{mode}.recap_tokens=5"])
    assert no_cue.extra["takeovers"] == [] and no_cue.stats()["tokens"]["big"] == 0
    probes = _dropped(no_cue)
    assert probes and {s.model for s in probes} == {"small"} and all(s.tokens <= 8 for s in probes)
    stats = no_cue.stats()
    assert stats["spent_tokens"]["small"] == stats["tokens"]["small"] + sum(s.tokens for s in probes)

    takeovers = every_break.extra["takeovers"]
    assert takeovers and all(t["model"] == "big" and t["why"] == "cue" and 0 < t["tokens"] <= 8 for t in takeovers)
    assert every_break.stats()["tokens"]["big"] == sum(t["tokens"] for t in takeovers)
    # Each probe with a cue (a space here) was replaced by a takeover; one without (e.g. "43.\n") was only dropped.
    assert len([s for s in _dropped(every_break) if " " in s.text]) == len(takeovers)

    verified = [t for t in checking.extra["takeovers"] if t["verified"]]
    assert verified and all(t["tokens"] <= 4 + 6 * t["verified"] for t in checking.extra["takeovers"])

    recaps = [t for t in recapping.extra["takeovers"] if t["why"] == "recap"]
    assert recaps and recaps[0]["tokens"] <= 5
    assert "Let me check whether there are some wrong steps:" in recapping.text


def test_relaygen_hands_the_rest_of_a_sentence_to_the_small_model_after_a_cue(pair: str) -> None:
    no_cue, every_space = _runs(pair, "relaygen", ["modes.relaygen.cues=[]"], ["modes.relaygen.cues=[' ']"])
    assert no_cue.extra["relays"] == []
    kept = no_cue.kept_segments
    assert [s.model for s in kept] == ["big", "small"] and kept[0].text.endswith(THINK_END)  # small: the answer

    relays = every_space.extra["relays"]
    assert relays and all(relay["cue"] == " " and relay["big_tokens"] >= 5 for relay in relays)  # vLLM's min_tokens
    smalls = [s for s in every_space.kept_segments if s.model == "small"]
    ends = (".", "!", "?", "\n\n", THINK_END)
    assert all(s.text.endswith(ends) for s in smalls[:-1])  # a sentence, then back to the big model
    assert [s.model for s in every_space.kept_segments][:2] == ["big", "small"]


KILLING = {"glimprouter": ["modes.glimprouter.threshold=0"], "specreason": ["modes.specreason.threshold=9"],
           "speculative-thinking": ["modes.speculative-thinking.positive=[' ']"], "relaygen": []}


@pytest.mark.parametrize("mode", list(KILLING))
def test_the_big_server_dying_mid_mode_gives_one_line_and_the_partial_trace(pair: str, mode: str) -> None:
    async def go() -> tuple[Trace, str]:
        real = load_profile(pair).spec("big")
        async with Severable(real.port) as relay:
            profile = _profile(pair, mode, *KILLING[mode], f"big.endpoints=[{relay.url}]", "big.speculative=null")

            def watch(trace: Trace) -> None:
                trace.subscribe(lambda event, segment: relay.sever() if segment.model == "big" and segment.tokens else None)

            return await run_question(profile, "What is 12 * 3 + 7?", mode, watch=watch), relay.url  # type: ignore[arg-type]

    trace, url = asyncio.run(go())
    assert trace.error is not None and "\n" not in trace.error
    assert trace.error.startswith(f"big model {load_profile(pair).spec('big').name} at {url}")
    assert trace.segments and any(s.model == "big" and s.tokens for s in trace.segments)  # what came before is kept


@pytest.mark.parametrize("mode", list(KILLING))
def test_each_peer_mode_runs_through_eval_and_show(tmp_path: Path, mode: str) -> None:
    out = tmp_path / "run"
    result = cli("eval", "--mode", mode, "--limit", "1", "--out", str(out), "--json")
    assert result.code == 0, result.err
    summary = result.json()
    assert summary["mode"] == mode and summary["samples"] == 1 and summary["errored"] == 0  # type: ignore[index]
    sample = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    trace = tmp_path / "trace.jsonl"
    trace.write_text(json.dumps(sample["trace"]) + "\n")
    shown, plain = cli("show", str(trace), "--json"), cli("show", str(trace), env={"NO_COLOR": "1"})
    assert shown.code == 0 and plain.code == 0, shown.err + plain.err
    assert shown.json()[0]["mode"] == mode  # type: ignore[index]
    assert sample["trace"]["segments"][0]["text"][:20] in plain.out


def test_the_peer_modes_are_listed() -> None:
    listed = cli("modes").out
    assert all(name in listed for name in ("glimprouter", "specreason", "speculative-thinking", "relaygen"))
