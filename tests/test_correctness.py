"""Correctness at the edges, on the real demo pair: context limits, several EOS ids, the budget,
time to first token, stop strings inside a token, and a profile that no longer matches its server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import DEMO_QUESTION, cli

from splitcli import demo
from splitcli.engine import Completion
from splitcli.modes import Mode, register
from splitcli.profiles import load_profile
from splitcli.session import Session
from splitcli.solve import run_question
from splitcli.trace import Trace

pytestmark = pytest.mark.usefixtures("demo_servers")


def _run_mode(body: Any, question: str = DEMO_QUESTION, roles: tuple[str, ...] = ("small", "big"),
              overrides: list[str] | None = None) -> Trace:
    """Run `body(session)` as a throwaway mode on the real servers."""

    @register
    class Probe(Mode):
        name = "test-probe"
        summary = "a test body"

        async def run(self, session: Session, trace: Trace) -> None:
            await body(session)

    Probe.roles = roles  # type: ignore[assignment]
    trace = asyncio.run(run_question(load_profile("demo", overrides), question, "test-probe"))
    assert trace.error is None, trace.error
    return trace


@pytest.mark.parametrize("route", [False, True])
def test_probes_at_the_end_of_the_small_models_context_are_not_sent(route: bool) -> None:
    found: list[Any] = []

    async def body(session: Session) -> None:
        session.use(probe_route=route)
        context = session.contexts["small"]
        await session.context("small")
        limit = context.max_model_len
        # Fill the small model's context to 4 tokens short of its limit, then probe 5 big-model tokens:
        # the last two prefixes leave no room; vLLM would reject the whole batch for them.
        context.ids += context.ids[-1:] * (limit - 4 - len(context.ids))
        draft = Completion(token_ids=context.ids[-5:])
        found.extend(await session.probe_close(draft, 0, 5, probe_tokens=8))

    trace = _run_mode(body)
    assert len(found) == 5
    assert not found[3].closes and not found[4].closes
    probes = [call for call in trace.calls if call.kind == "probe"]
    assert len(probes) == 1
    limit = trace.served["small"]["max_model_len"]
    if route:  # the sequence is sent once, up to the last prefix that leaves room
        assert probes[0].prompt_tokens == limit - 1
    else:
        assert probes[0].prompts == 3


@pytest.mark.parametrize("mode", ["big-only", "random-switch"])
def test_an_extra_eos_id_from_generation_config_ends_the_text(mode: str) -> None:
    # The big demo model ends with the second EOS id of its generation_config (vLLM: stop_reason = id).
    for seed in range(12):
        trace = cli("run", DEMO_QUESTION, "--mode", mode, "--json", "--set", "modes.random-switch.chunk=4",
                    "--set", f"modes.random-switch.seed={seed}").json()
        last = trace["segments"][-1]  # type: ignore[index]
        if last["model"] == "big":
            break
    else:
        pytest.fail("no seed let the big model write the end")
    assert last["finish_reason"] == "eos"
    assert trace["stats"]["answer"] == "43"  # type: ignore[index]
    generates = [call for call in trace["calls"] if call["kind"] == "generate"]  # type: ignore[index]
    assert generates[-1]["model"] == "big"  # nothing was asked for after the end of the text


def _sizes(item: demo.DemoQuestion) -> tuple[int, int, int]:
    trace = cli("run", item.question, "--json").json()
    segments = trace["segments"]  # type: ignore[index]
    return segments[0]["prompt_tokens"], len(segments[0]["token_ids"]), len(segments[1]["token_ids"])


def test_the_budget_is_never_exceeded_not_even_by_the_closing_tag() -> None:
    item = demo.QUESTIONS[0]
    prompt, small_part, big_part = _sizes(item)
    around_the_handback = range(prompt + small_part + big_part - 2, prompt + small_part + big_part + 6)
    for budget in [prompt + 1, prompt + small_part + 3, *around_the_handback]:
        trace = cli("run", item.question, "--json", "--set", f"sampling.max_tokens={budget}").json()
        used = prompt + sum(len(s["token_ids"]) for s in trace["segments"])  # type: ignore[index]
        assert used <= budget, (budget, [(s["model"], s["text"]) for s in trace["segments"]])  # type: ignore[index]
        assert trace["error"] is None  # type: ignore[index]
        assert trace["segments"][-1]["finish_reason"] == "length"  # type: ignore[index]


def test_a_budget_ending_inside_a_big_segment_ends_the_trace_there() -> None:
    item = demo.QUESTIONS[0]
    prompt, small_part, _ = _sizes(item)
    trace = cli("run", item.question, "--json", "--set", f"sampling.max_tokens={prompt + small_part + 5}").json()
    segments = trace["segments"]  # type: ignore[index]
    assert [s["model"] for s in segments] == ["small", "big"]
    assert segments[1]["finish_reason"] == "length"
    assert len(segments[1]["token_ids"]) + len(segments[0]["token_ids"]) + prompt <= prompt + small_part + 5


def test_without_streaming_no_time_to_first_token_is_claimed() -> None:
    trace = cli("run", DEMO_QUESTION, "--json", "--no-stream").json()
    stats = trace["stats"]  # type: ignore[index]
    assert all(segment["first_token"] is None for segment in trace["segments"])  # type: ignore[index]
    assert [cost["latency_s"] for cost in stats["handoff_costs"]] == [None, None]
    assert stats["mean_handoff_latency_s"] is None
    streamed = cli("run", DEMO_QUESTION, "--json").json()["stats"]  # type: ignore[index]
    assert all(cost["latency_s"] is not None and cost["latency_s"] > 0 for cost in streamed["handoff_costs"])


def test_dropped_draft_tokens_are_spent_but_not_kept() -> None:
    trace = cli("run", DEMO_QUESTION, "--json").json()  # chunk 64: the big draft runs past the cut
    big = trace["segments"][1]  # type: ignore[index]
    stats = trace["stats"]  # type: ignore[index]
    assert big["dropped_tokens"] > 0
    assert stats["tokens"]["big"] == len(big["token_ids"])
    assert stats["spent_tokens"]["big"] == len(big["token_ids"]) + big["dropped_tokens"]
    assert stats["dropped_tokens"]["big"] == big["dropped_tokens"]
    big_calls = [c for c in trace["calls"] if c["model"] == "big" and c["kind"] == "generate"]  # type: ignore[index]
    assert sum(c["completion_tokens"] for c in big_calls) == stats["spent_tokens"]["big"]


def test_a_stop_string_ending_inside_a_token_keeps_ids_and_text_together() -> None:
    seen: dict[str, Any] = {}

    async def body(session: Session) -> None:
        # " <" is one token of the demo tokenizer: the stop string "36. " ends inside it.
        segment, _ = await session.write("small", 40, stop=["36. "])
        ids = await session.context("small")
        seen["text"] = segment.text
        seen["context"] = session.contexts["small"].text
        seen["decoded"] = await session.clients["small"].detokenize(ids)

    _run_mode(body)
    assert seen["text"] == "First, 12 * 3 = 36. "
    assert seen["decoded"] == seen["context"]


def test_the_trace_records_what_the_servers_really_serve() -> None:
    trace = cli("run", DEMO_QUESTION, "--json").json()
    served = trace["served"]  # type: ignore[index]
    assert served["small"]["name"] == "demo-small" and served["big"]["name"] == "demo-big"
    assert served["small"]["root"].endswith("/small") and served["big"]["root"].endswith("/big")
    assert served["small"]["vllm"] and served["small"]["max_model_len"] == 1024


def test_a_running_server_of_another_model_is_refused_not_used() -> None:
    before = {row["name"]: row["pid"] for row in cli("ps", "--json").json()}  # type: ignore[union-attr]
    result = cli("run", DEMO_QUESTION, "--set", "small.model=demo:big")
    assert result.code == 2
    assert result.err.strip().splitlines()[-1] == (
        "error: server demo-small serves demo:small, but the profile now names demo:big "
        "(stop it with `splitreason stop demo-small`, then run again to start the new model)"
    )
    assert {row["name"]: row["pid"] for row in cli("ps", "--json").json()} == before  # type: ignore[union-attr]


def test_a_prompt_that_fills_the_budget_is_one_line() -> None:
    result = cli("run", DEMO_QUESTION, "--set", "sampling.max_tokens=20")
    assert result.code == 2
    assert result.out == ""
    assert result.err.strip().splitlines()[-1].startswith("error: the question makes a ")
    assert result.err.strip().endswith("-token prompt, which leaves nothing of the 20-token budget "
                                       "(shorten it, or raise it with --set sampling.max_tokens=N)")
