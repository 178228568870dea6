"""Live handoffs (splitcli/engine_route.py, `live`): a warm-up kept alive in the big model's engine,
so that the handoff sends only the tokens written since. The same tokens as a new request, nothing
left alive on the server afterwards, and the same traces as warm-ups by new requests."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from conftest import DEMO_QUESTION, cli, solve_together

from splitcli import demo
from splitcli.engine import EngineClient
from splitcli.engine_route_live import MAX_LIVE
from splitcli.handoffs import LIVE_KEPT
from splitcli.modes import register
from splitcli.modes.splitreason_stream import SplitReasonStream
from splitcli.profiles import load_profile
from splitcli.session import Session
from splitcli.solve import run_question
from splitcli.trace import Trace

pytestmark = pytest.mark.usefixtures("demo_servers")
BIG = "http://127.0.0.1:8102"  # the demo big server


def _client() -> EngineClient:
    return EngineClient("big", "demo-big", [BIG], "start the demo servers")


async def _context(client: EngineClient, question: str) -> list[int]:
    ids, _ = await client.tokenize_chat([{"role": "user", "content": question}])
    return ids


@pytest.mark.parametrize("item", demo.QUESTIONS, ids=lambda item: item.answer)
def test_a_live_request_writes_what_a_new_request_with_the_whole_context_writes(item: demo.DemoQuestion) -> None:
    async def scenario() -> tuple[Any, Any, int]:
        client = _client()
        try:
            context = await _context(client, item.question)
            live = await client.live_open(context[:-5])
            assert live is not None and live.prompt == context[:-5]
            pieces: list[tuple[str, list[int]]] = []
            result = await client.live_stream(live, context[-5:], max_tokens=40,
                                              on_delta=lambda text, ids: pieces.append((text, ids)))
            (fresh,) = await client.complete([context], max_tokens=40, temperature=0.0)
            assert result is not None and "".join(text for text, _ in pieces) == result.text
            return result, fresh, await client.live_count(BIG)
        finally:
            await client.aclose()

    live, fresh, left = asyncio.run(scenario())
    assert live.token_ids == fresh.token_ids and live.text == fresh.text
    assert (live.finish_reason, live.stop_reason) == (fresh.finish_reason, fresh.stop_reason)
    assert live.prompt_tokens == fresh.prompt_tokens and live.cached_tokens == live.prompt_tokens - 5
    assert left == 0  # an append is a live request's last use


def test_a_cancelled_live_stream_leaves_nothing_running_or_held_on_the_server() -> None:
    async def scenario() -> dict[str, Any]:
        client = _client()
        try:
            context = await _context(client, DEMO_QUESTION)
            live = await client.live_open(context[:-3])
            assert live is not None
            seen: list[int] = []
            plain = client._http.stream

            def without_eos(method: str, url: str, json: dict[str, Any], **kwargs: Any) -> Any:
                return plain(method, url, json={**json, "ignore_eos": True}, **kwargs)  # 900 tokens, not ~50

            client._http.stream = without_eos  # type: ignore[method-assign,assignment]
            task = asyncio.ensure_future(client.live_stream(live, context[-3:], max_tokens=900,
                                                            on_delta=lambda text, ids: seen.extend(ids)))
            while len(seen) < 5 and not task.done():
                await asyncio.sleep(0.005)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            deadline = time.monotonic() + 10
            while ((running := (await client.metrics())["vllm:num_requests_running"]) or await client.live_count(BIG)) \
                    and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            return {"received": len(seen), "running": running, "left": await client.live_count(BIG)}
        finally:
            await client.aclose()

    seen = asyncio.run(scenario())
    # How soon the server stops is not asserted: on 2 busy cores vLLM's API server can be starved
    # while the engine writes all 900 tokens, which then reach the route (and the client) as one piece.
    assert seen["received"] >= 5
    assert seen["running"] == 0 and seen["left"] == 0


def test_a_server_holds_a_few_live_requests_at_most_and_says_so_for_an_ended_one() -> None:
    async def scenario() -> tuple[int, Any, int]:
        client = _client()
        try:
            context = await _context(client, DEMO_QUESTION)
            opened = [await client.live_open(context[: 10 + i]) for i in range(MAX_LIVE + 2)]
            held = await client.live_count(BIG)
            oldest = opened[0]
            assert oldest is not None
            gone = await client.live_stream(oldest, context[10:12], max_tokens=4)  # ended to make room
            for live in opened[1:]:
                assert live is not None
                await client.live_close(live)
            return held, gone, await client.live_count(BIG)
        finally:
            await client.aclose()

    held, gone, left = asyncio.run(scenario())
    assert held == MAX_LIVE and gone is None and left == 0


def _run(question: str, *args: str) -> dict[str, Any]:
    result = cli("run", question, "--json", "--mode", "splitreason-stream",
                 "--set", "modes.splitreason-stream.warm_every=4", *args)
    assert result.code == 0, result.err
    return result.json()  # type: ignore[return-value]


@pytest.mark.parametrize("sampling", [[], ["sampling.temperature=0.9", "sampling.seed=11"]], ids=["greedy", "seeded"])
def test_live_handoffs_give_the_same_traces(sampling: list[str]) -> None:
    questions = [item.question for item in demo.QUESTIONS]  # side by side, as eval runs samples
    knobs = ["modes.splitreason-stream.warm_every=4", *sampling]
    plain = solve_together(load_profile("demo", knobs), "splitreason-stream", questions)
    live = solve_together(load_profile("demo", [*knobs, "modes.splitreason-stream.live_handoff=true"]),
                          "splitreason-stream", questions)
    for question, with_live, without in zip(questions, live, plain, strict=True):
        assert with_live.error is None and without.error is None
        assert [(s.model, s.text, s.token_ids) for s in with_live.segments] == \
            [(s.model, s.text, s.token_ids) for s in without.segments], question
        assert any(c.model == "big" and c.kind == "warm" for c in with_live.calls)
    asyncio.run(_no_live_left())


def test_a_live_handoff_sends_the_big_model_only_the_tokens_since_its_warm_up() -> None:
    seen: dict[str, Any] = {}

    @register
    class WarmThenHand(SplitReasonStream):
        name = "test-live-handoff"

        async def run(self, session: Session, trace: Trace) -> None:  # its own loop, the mode's knobs
            await session.write("small", session.room(), stop=[session.tags.open_tag])
            await asyncio.gather(*session._background)  # the warm-ups are in: the last ones are alive
            context = await session.context("big")
            seen["context"] = len(context)
            kept = session._warmer.live._kept if session._warmer.live is not None else []
            seen["live"] = max((live for live in kept if context[:len(live.prompt)] == live.prompt),
                               key=lambda live: len(live.prompt), default=None)
            seen["held"] = await session.clients["big"].live_count(BIG)
            await self._big_segment(session)
            await asyncio.gather(*session._background)  # the unused warm-up is ended alongside
            seen["left"] = await session.clients["big"].live_count(BIG)

    knobs = ["modes.test-live-handoff.warm_every=4", "modes.test-live-handoff.live_handoff=true"]
    trace = asyncio.run(run_question(load_profile("demo", knobs), DEMO_QUESTION, "test-live-handoff"))
    assert trace.error is None, trace.error
    live = seen["live"]
    assert live is not None and seen["held"] == LIVE_KEPT and seen["left"] == 0
    (handoff,) = [c for c in trace.calls if c.model == "big" and c.kind == "generate"]
    big = trace.segments[1]
    assert big.model == "big" and big.token_ids and handoff.cached_tokens == len(live.prompt)
    assert handoff.prompt_tokens == seen["context"] > handoff.cached_tokens  # the few since, and only those
    # what a new request with the whole context writes
    expected = _run(DEMO_QUESTION, "--set", "modes.splitreason-stream.warm_every=0")["segments"][1]
    assert big.token_ids == expected["token_ids"] and big.text == expected["text"]


async def _no_live_left() -> None:
    """A warm-up cancelled at the run's end is ended by the server once its prefill is done."""
    client = _client()
    try:
        deadline = time.monotonic() + 30
        while await client.live_count(BIG) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert await client.live_count(BIG) == 0
    finally:
        await client.aclose()
