"""The continuations route in our vLLM servers (splitcli/engine_route.py): the same cut as probing
every prefix over the OpenAI API, the context sent once, and exact also where the prefix cache
already holds part of the big segment (positions the first pass cannot score)."""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from conftest import pair_cases

from splitcli import demo
from splitcli.engine import EngineClient
from splitcli.engine_route import PATH
from splitcli.engine_route_continuations import (
    TAIL_KEY,
    _default_penalties,
    _tail_scores_installed,
    byte_reader,
    bytes_may_begin,
    may_begin,
)
from splitcli.modes import Mode, register
from splitcli.probing import CloseProbe
from splitcli.profiles import load_profile
from splitcli.session import Session
from splitcli.solve import run_question
from splitcli.trace import Trace

pytestmark = pytest.mark.usefixtures("demo_servers")
SMALL, BIG = "http://127.0.0.1:8101", "http://127.0.0.1:8102"  # the demo servers


WAYS = (("route", True), ("every prefix", False), ("route, cached", True))


def _probe_draft(question: str, ways: tuple[tuple[str, bool], ...] = WAYS, no_route: bool = False,
                 profile: str = "demo") -> tuple[dict[str, list[CloseProbe]], Trace]:
    """Write until the small model opens the tag, let the big model draft, and probe every prefix
    of the draft each way in turn (by default: route with nothing cached, OpenAI API, route again
    with the segment now cached). `no_route`: as a server answering 404 leaves the client."""
    found: dict[str, list[CloseProbe]] = {}

    @register
    class ProbeDraft(Mode):
        name = "test-probe-draft"
        summary = "probe one draft several ways"
        uses_hint = True

        async def run(self, session: Session, trace: Trace) -> None:
            await session.write("small", session.room(), stop=[session.tags.open_tag])
            segment = await session.open("big")
            draft = await session.draft("big", segment, 60)
            await session.context("small")
            if no_route:
                session.clients["small"]._info["continuations"] = False
            count = len(draft.token_ids)
            for name, route in ways:
                session.use(probe_route=route)
                found[name] = await session.probe_close(draft, 0, count, probe_tokens=6)
            await session.keep("big", segment, draft, count)
            session.close(segment, None)

    trace = asyncio.run(run_question(load_profile(profile), question, "test-probe-draft"))
    assert trace.error is None, trace.error
    return found, trace


@pytest.mark.parametrize(("pair", "item"), pair_cases(demo.questions_of), indirect=["pair"])
def test_the_route_finds_what_probing_every_prefix_finds(pair: str, item: demo.DemoQuestion) -> None:
    found, trace = _probe_draft(item.question, profile=pair)
    every = found["every prefix"]
    assert any(probe.closes for probe in every)  # the demo small model closes after the hard part
    assert found["route"] == every
    assert found["route, cached"] == every
    route, http, cached = [call for call in trace.calls if call.kind == "probe"]
    assert (route.path, http.path, cached.path) == ("route", "openai", "route")
    assert http.prompts == len(every)
    # One pass over the sequence plus the prefixes it cannot settle: those whose next token could begin
    # "</big" or be the sequence's own text before it, and those an earlier run left in the prefix
    # cache (no score there): all of them, where earlier tests of this question cached the segment.
    assert route.prompts <= http.prompts + 1
    assert route.prompt_tokens < http.prompt_tokens / 4
    assert cached.cached_tokens > 0


def test_without_the_route_the_session_probes_every_prefix_over_the_openai_api() -> None:
    # tests/test_api.py: a server without the route answers 404 and the client remembers it.
    found, trace = _probe_draft(demo.QUESTIONS[0].question, (("no route", True),), no_route=True)
    probes = [call for call in trace.calls if call.kind == "probe"]
    assert len(probes) == 1 and probes[0].prompts == len(found["no route"]) > 0
    assert (probes[0].path, probes[0].why) == ("openai", "the server has no probe route")
    assert trace.stats()["probe_calls"] == {"route": 0, "openai": 1, "route_failed": 0}
    assert any(probe.closes for probe in found["no route"])


def test_a_route_that_fails_is_said_once_and_tried_again_on_the_next_probe(capsys: pytest.CaptureFixture[str]) -> None:
    # A request the route refuses stands in for a vLLM whose internals it does not fit. One failing
    # request must not send the rest of the command (a whole eval) down the slower way round.
    calls: list[Any] = []

    async def go() -> tuple[tuple[list[str] | None, str], tuple[list[str] | None, str], dict[str, Any]]:
        client = EngineClient("small", "demo-small", [SMALL], "start it", record=calls.append)
        try:
            first = await client.continuations([5, 6, 7], 9, 2, "</big")
            return first, await client.continuations([5, 6, 7], 1, 2, "</big"), client._info
        finally:
            await client.aclose()

    (failed, why), (texts, _), info = asyncio.run(go())
    assert failed is None and texts is not None and len(texts) == 3 and info.get("continuations") is not False
    reason = (f"the probe route of the small server at {SMALL} failed (bad continuations request: need 1 <= "
              "first <= len(prompt), max_tokens >= 1 and a marker)")
    assert why == reason
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("warning:") == 1
    assert f"warning: {reason}; probing over the OpenAI API instead for that request (the trace counts each time)" in err
    assert [(call.path, call.why) for call in calls] == [("route", reason), ("route", None)]


@pytest.mark.parametrize(("text", "could"), [
    ("</big", True), ("</", True), ("<", True), (" ", True), ("\n\n", True), ("", True), (" </bigmodel>", True),
    ("\ufffd", True), ("x", False), (" the", False), ("</bx", False), ("<b", False), ("36", False),
])
def test_a_first_token_that_cannot_begin_the_tag_is_not_decoded_further(text: str, could: bool) -> None:
    assert may_begin(text, "</big") is could


@pytest.mark.parametrize(("raw", "could"), [
    (b"\xc2", True),  # may become U+00A0, a no-break space
    (b"\xe3\x80", True),  # may become U+3000, the ideographic space
    (b"\xe2\x80\x83</b", True), (b"\xe4", False), (b"\xf0", False), (b"\x80", False), (b"\xe2\x80\x83x", False),
])
def test_a_first_token_that_is_part_of_a_character_is_judged_by_its_bytes(raw: bytes, could: bool) -> None:
    assert bytes_may_begin(raw, "</big") is could


def test_the_bytes_of_byte_level_tokens_are_read_back() -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo.resolve_model("demo:small"))
    read = byte_reader(tokenizer)
    assert read is not None
    ids = tokenizer.encode("naïve <x>", add_special_tokens=False)
    assert read(ids) == "naïve <x>".encode()
    assert any("\ufffd" in tokenizer.decode([token]) and len(read([token]) or b"") == 1 for token in range(len(tokenizer)))


def test_penalties_from_generation_config_are_applied_as_the_openai_server_applies_them() -> None:
    # With a penalty the greedy token is not the top prompt log-prob: every prefix is then decoded.
    class Config:
        reads = 0

        def get_diff_sampling_param(self) -> dict[str, float]:
            self.reads += 1
            return {"temperature": 0.6, "top_p": 0.95, "repetition_penalty": 1.05, "presence_penalty": 0.0}

    config = Config()
    assert _default_penalties(config) == {"repetition_penalty": 1.05}
    assert _default_penalties(config) == {"repetition_penalty": 1.05}
    assert config.reads == 1  # vLLM reads generation_config.json on each call: once per server is enough
    assert _default_penalties(None) == {}


def test_probes_settled_off_the_sequence_say_what_decoding_them_says() -> None:
    # Pass 1 gives the greedy token after every prefix; while it is the sequence's own next token, the
    # probe's continuation is read off the sequence: a whitespace first token followed (as the small
    # model would) by a word needs no decode. How many are settled depends on the trained weights
    # (1-3 per question with one training, none with another), so what is checked is exactness.
    async def go(question: str) -> tuple[dict[str, Any], list[str]]:
        client = EngineClient("small", "demo-small", [SMALL], "start it")
        big = EngineClient("big", "demo-big", [BIG], "start it")
        try:
            # A question no earlier test asked, and a draft by the big model: nothing of it is in the
            # small server's prefix cache (pass 1 does not score cached positions).
            prompt, _ = await client.tokenize_chat([{"role": "user", "content": f"{question} ({uuid.uuid4().hex[:6]})"}])
            (draft,) = await big.complete([prompt], max_tokens=48)
            ids = prompt + draft.token_ids
            async with httpx.AsyncClient(timeout=60) as http:
                answer = (await http.post(f"{SMALL}{PATH}", json={"prompt": ids, "first": len(prompt) + 1,
                                                                   "max_tokens": 6, "marker": "</big"})).json()
            probes = await client.complete([ids[:n] for n in range(len(prompt) + 1, len(ids) + 1)], max_tokens=6,
                                           token_ids=False)
            return answer, [probe.text for probe in probes]
        finally:
            await client.aclose()
            await big.aclose()

    for item in demo.QUESTIONS:
        answer, probes = asyncio.run(go(item.question))
        texts = answer["texts"]
        assert len(texts) == len(probes)
        closes = [text.lstrip().startswith("</big") for text in probes]
        assert [text.lstrip().startswith("</big") for text in texts] == closes
        assert [text for text, close in zip(texts, closes, strict=True) if close] == [
            text for text, close in zip(probes, closes, strict=True) if close]
        assert answer["decoded"] + answer["settled"] <= len(texts)


def test_a_probe_request_skips_the_prompt_scores_it_will_not_read() -> None:
    # vLLM turns every prompt position's scores into Python objects; the route asks for its tail only.
    import torch
    from vllm import SamplingParams
    from vllm.v1.engine.logprobs import LogprobsProcessor
    from vllm.v1.outputs import LogprobsTensors

    assert _tail_scores_installed()

    def scores(extra: dict[str, Any] | None) -> Any:
        params = SamplingParams(prompt_logprobs=1, flat_logprobs=True, extra_args=extra)
        processor = LogprobsProcessor.from_new_request(None, SimpleNamespace(sampling_params=params))
        tensors = LogprobsTensors.empty_cpu(99, 2)  # a 100-token prompt: rows score tokens 1..99
        tensors.logprob_token_ids.copy_(torch.arange(99, dtype=torch.int32)[:, None] * 2 + torch.tensor([0, 1]))
        tensors.logprobs.fill_(-1.0)
        tensors.selected_token_ranks.fill_(2)
        processor._update_prompt_logprobs(tensors)
        return processor.prompt_logprobs

    everything = scores(None)
    assert len(everything) == 100 and not everything[0] and set(everything[91]) == {180, 181}
    tail = scores({TAIL_KEY: [90, 99]})
    assert len(tail) == 10 and not tail[0]
    assert set(tail[1]) == {180, 181} and tail[1][181].rank == 1  # row 90: what follows prompt[:91]
    assert len(scores({TAIL_KEY: [90, 50]})) == 100  # not the whole prompt's rows: left as vLLM makes them



def test_a_probe_request_cancelled_by_the_client_stops_in_the_server() -> None:
    # A probe past the cut is cancelled by the stream mode: the server must stop computing it. Asked
    # a second time, the sequence is in the prefix cache, where the first pass cannot score it, so
    # each of its 600 prefixes is decoded in full to the end of the context: half a minute of work
    # for the demo server, with 128 requests running, if nothing stops it.
    prompt = [10 + (index * 37) % 480 for index in range(600)]

    async def go() -> tuple[float, float]:
        async with httpx.AsyncClient(timeout=120) as http:
            async def running() -> float:
                text = (await http.get(f"{SMALL}/metrics")).text
                return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                           if line.startswith("vllm:num_requests_running"))

            request = {"prompt": prompt, "first": 1, "max_tokens": 1, "marker": "<bigmodel>"}
            assert (await http.post(f"{SMALL}{PATH}", json=request)).status_code == 200  # now cached
            probe = asyncio.ensure_future(http.post(f"{SMALL}{PATH}", json={**request, "max_tokens": 1024}))
            clock = asyncio.get_running_loop().time
            deadline = clock() + 60
            # Many requests at once: the second pass (one request per prefix) is under way, so the
            # count cannot fall to 0 between the passes below.
            while (busy := await running()) < 16 and not probe.done() and clock() < deadline:
                await asyncio.sleep(0.05)
            assert not probe.done(), probe.result().text[:300]
            probe.cancel()
            await asyncio.gather(probe, return_exceptions=True)
            deadline = clock() + 3
            while (left := await running()) and clock() < deadline:
                await asyncio.sleep(0.1)
            return busy, left

    busy, left = asyncio.run(go())
    assert busy >= 16 and left == 0  # the requests it was making were aborted, not run to their end
