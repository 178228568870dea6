"""The OpenAI-compatible endpoint on the real demo pair, through real clients: the official `openai`
client, lm-evaluation-harness, 32 concurrent streams, a client that goes away mid-stream, bad
requests, an API key, a server that is down, and a full queue."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import API_PORTS, DEMO_QUESTION, PairServers, cli
from openai import AsyncOpenAI, OpenAI

from splitcli import demo
from splitcli.engine import EngineClient
from splitcli.profiles import PromptConfig

pytestmark = pytest.mark.usefixtures("demo_servers")
API = "http://127.0.0.1:8100"


@pytest.fixture(scope="module")
def api(pair_servers: PairServers) -> Iterator[str]:
    """The API as `splitreason serve --api` starts it: a managed server beside the running pair."""
    pair_servers.ensure("demo")
    started = cli("serve", "--profile", "demo", "--only", "small,big,spec", "--api", "--detach", timeout=300)
    assert started.code == 0, started.err
    yield API
    cli("stop", "demo-api")


@pytest.fixture(scope="module")
def apis() -> Iterator[dict[str, str]]:
    started: dict[str, str] = {}
    yield started
    for name in started:
        cli("stop", f"{name}-api")


@pytest.fixture
def pair_api(pair: str, apis: dict[str, str]) -> str:
    """The API in front of a demo pair (tests that take it run on both pairs)."""
    if pair not in apis:
        only = "small,big,spec" if pair == "demo" else "small,big"
        started = cli("serve", "--profile", pair, "--only", only, "--api", "--detach", timeout=300)
        assert started.code == 0, started.err
        apis[pair] = f"http://127.0.0.1:{API_PORTS[pair]}"
    return apis[pair]


def _client(base: str = API, key: str = "unused") -> OpenAI:
    return OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)


def _metric(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_models_list_one_id_per_mode(api: str) -> None:
    ids = [model.id for model in _client().models.list().data]
    assert ids[0] == "splitreason"
    assert {"splitreason/splitreason", "splitreason/big-only", "splitreason/splitreason-stream",
            "splitreason/spec-decoding"} <= set(ids)


def test_the_api_and_the_model_servers_keep_a_connection_a_client_may_still_reuse(api: str) -> None:
    """httpx clients (the openai client among them) reuse an idle connection for up to 5 s; a server
    closing it at 5 s too resets requests sent in that instant (seen in CI as a ReadError)."""
    import psutil

    def ports() -> dict[int, int]:
        return {c.raddr.port: c.laddr.port for c in psutil.Process().net_connections("tcp")
                if c.raddr and c.raddr.port in (8100, 8101) and c.status == psutil.CONN_ESTABLISHED}

    urls = (f"{API}/v1/models", "http://127.0.0.1:8101/v1/models")
    with httpx.Client(trust_env=False, limits=httpx.Limits(keepalive_expiry=60)) as client:
        assert [client.get(url).status_code for url in urls] == [200, 200]
        seen = ports()
        time.sleep(6)
        assert [client.get(url).status_code for url in urls] == [200, 200]
        assert ports() == seen and len(seen) == 2  # the same two connections: neither server closed its end


def test_chat_with_the_official_client_streamed_and_not(pair_api: str, pair: str) -> None:
    client = _client(pair_api)
    item = demo.questions_of(pair)[0]
    reply = client.chat.completions.create(model="splitreason", messages=[{"role": "user", "content": DEMO_QUESTION}])
    message = reply.choices[0].message
    assert message.content == "The answer is \\boxed{43}."
    thinking = item.tagged(PromptConfig()).split("</think>")[0]  # demo: "First, 12 * 3 = 36. <bigmodel>Then ..."
    assert message.model_extra["reasoning"] == message.model_extra["reasoning_content"] == thinking  # type: ignore[index]
    assert reply.choices[0].finish_reason == "stop"
    usage = reply.usage.model_extra["splitreason"]  # type: ignore[union-attr,index]
    assert reply.usage.completion_tokens == usage["tokens"]["small"] + usage["tokens"]["big"]  # type: ignore[union-attr]
    assert usage["tokens"]["big"] > 0 and usage["handoffs"] == 2 and 0 < usage["offload_share"] < 1
    assert reply.usage.prompt_tokens > 0  # type: ignore[union-attr]

    stream = client.chat.completions.create(model="splitreason", messages=[{"role": "user", "content": DEMO_QUESTION}],
                                            stream=True, stream_options={"include_usage": True})
    reasoning, content, writers, finish, streamed_usage = "", "", [], None, None
    for chunk in stream:
        if not chunk.choices:
            streamed_usage = chunk.usage
            continue
        delta = chunk.choices[0].delta
        extra = delta.model_extra or {}
        reasoning += extra.get("reasoning") or ""
        assert extra.get("reasoning") == extra.get("reasoning_content")  # both names, for either kind of client
        content += delta.content or ""
        if delta.content or extra.get("reasoning"):
            writers.append(extra["splitreason_model"])  # beside the delta's OpenAI fields, where clients read extras
        finish = chunk.choices[0].finish_reason or finish
    assert content == message.content and reasoning == message.model_extra["reasoning_content"]  # type: ignore[index]
    assert set(writers) == {"small", "big"} and finish == "stop"
    assert streamed_usage is not None and streamed_usage.completion_tokens == reply.usage.completion_tokens  # type: ignore[union-attr]


def test_completions_streamed_and_not_with_a_mode_by_model_id(api: str) -> None:
    client = _client()
    reply = client.completions.create(model="splitreason/big-only", prompt="What is 2 to the power 10?")
    assert reply.choices[0].text.endswith("\\boxed{1024}.")
    assert reply.usage.model_extra["splitreason"]["tokens"]["small"] == 0  # type: ignore[union-attr,index]
    text = "".join(chunk.choices[0].text for chunk in client.completions.create(
        model="splitreason/big-only", prompt="What is 2 to the power 10?", stream=True) if chunk.choices)
    assert text == reply.choices[0].text
    two = client.completions.create(model="splitreason", prompt=DEMO_QUESTION, n=2, max_tokens=10)
    assert len(two.choices) == 2 and two.usage.completion_tokens == 20  # type: ignore[union-attr]
    # Stop strings end the answer, never the thinking: "36 +" is in the thinking, "boxed" in the answer.
    stopped = client.completions.create(model="splitreason", prompt=DEMO_QUESTION, stop=["36 +", "boxed"])
    assert stopped.choices[0].text.endswith("43.\n</think>\nThe answer is \\") and "Then 36 + 7" in stopped.choices[0].text
    assert stopped.choices[0].finish_reason == "stop"


def test_a_stop_string_applies_to_the_answer_not_to_the_thinking(api: str) -> None:
    client = _client()
    for stream in (False, True):
        reply = client.chat.completions.create(model="splitreason", messages=[{"role": "user", "content": DEMO_QUESTION}],
                                               stop=["\n"], stream=stream)
        if stream:
            chunks = [chunk.choices[0].delta for chunk in reply if chunk.choices]  # type: ignore[union-attr]
            content = "".join(delta.content or "" for delta in chunks)
            reasoning = "".join((delta.model_extra or {}).get("reasoning") or "" for delta in chunks)
        else:
            content, reasoning = reply.choices[0].message.content, reply.choices[0].message.model_extra["reasoning"]  # type: ignore[union-attr,index]
        assert content == "The answer is \\boxed{43}."  # the thinking's newline did not end the text
        assert reasoning.endswith("So the total is 43.\n")


def test_a_conversation_is_the_prompt_and_a_final_assistant_message_is_continued(api: str) -> None:
    client = _client()
    question = {"role": "user", "content": DEMO_QUESTION}
    alone = client.chat.completions.create(model="splitreason/small-only", messages=[question], max_tokens=4)
    system = client.chat.completions.create(model="splitreason/small-only", max_tokens=4,
                                            messages=[{"role": "system", "content": "Be brief."}, question])
    turns = client.chat.completions.create(model="splitreason/small-only", max_tokens=4, messages=[
        {"role": "system", "content": "Be brief."}, question,
        {"role": "assistant", "content": "<think>\nlong thinking\n</think>\nThe answer is \\boxed{43}."},
        {"role": "user", "content": "Now add 1 to that."}])
    sizes = [reply.usage.prompt_tokens for reply in (alone, system, turns)]  # type: ignore[union-attr]
    assert sizes[0] < sizes[1] < sizes[2]
    # An assistant message last: the answer's start, continued (the demo models know how it goes on).
    prefilled = client.chat.completions.create(model="splitreason/small-only", messages=[
        question, {"role": "assistant", "content": "<think>\nFirst, 12 * 3 = 36."}])
    assert prefilled.choices[0].message.content == "The answer is \\boxed{43}."
    assert not prefilled.choices[0].message.model_extra["reasoning"].startswith("First")  # type: ignore[index]
    assert prefilled.usage.prompt_tokens > sizes[0]  # type: ignore[union-attr]


def test_models_retrieve_and_unknown_paths_answer_as_openai_does(api: str) -> None:
    import openai

    client = _client()
    card = client.models.retrieve("splitreason/big-only")
    assert (card.id, card.object, card.owned_by) == ("splitreason/big-only", "model", "splitreason")
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-5")
    assert missing.value.body["message"] == "The model 'gpt-5' does not exist (GET /v1/models lists them)"  # type: ignore[index]
    response = httpx.get(f"{API}/v1/nothing-here")
    assert response.status_code == 404 and response.json() == {"error": {
        "message": "no such route: GET /v1/nothing-here (see /v1/models, /v1/chat/completions, /v1/completions)",
        "type": "invalid_request_error", "param": None, "code": 404}}


@pytest.mark.parametrize("mode", ["logprob-subselect", "spec-rewrite", "splitreason", "specreason", "glimprouter",
                                  "speculative-thinking", "relaygen"])
def test_a_requests_max_tokens_bounds_every_mode_beam_steps_included(pair_api: str, mode: str) -> None:
    # The beam drafts candidates side by side: each one's room is the request's max_tokens too.
    reply = _client(pair_api).completions.create(model=f"splitreason/{mode}", prompt=DEMO_QUESTION, max_tokens=12)
    assert reply.usage.completion_tokens == 12  # type: ignore[union-attr]
    assert reply.choices[0].finish_reason == "length"


def test_32_concurrent_streams_all_answer_right(pair_api: str, pair: str) -> None:
    client = AsyncOpenAI(base_url=f"{pair_api}/v1", api_key="unused", max_retries=0, timeout=300)
    questions = demo.questions_of(pair)
    items = [questions[i % len(questions)] for i in range(32)]

    async def one(question: str) -> str:
        stream = await client.chat.completions.create(model="splitreason", stream=True,
                                                      messages=[{"role": "user", "content": question}])
        return "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])

    async def all_of_them() -> list[str]:
        try:
            return await asyncio.gather(*(one(item.question) for item in items))
        finally:
            await client.close()

    answers = asyncio.run(all_of_them())
    assert answers == [f"The answer is \\boxed{{{item.answer}}}." for item in items]


def test_a_client_that_goes_away_mid_stream_stops_the_generation(api: str) -> None:
    before = httpx.get(f"{API}/splitreason/stats").json()["cancelled"]
    generated = _metric(8102, "vllm:generation_tokens_total")
    body = {"model": "splitreason/big-only", "prompt": DEMO_QUESTION, "stream": True, "max_tokens": 900,
            "temperature": 1.8}  # random text: no early end
    with httpx.Client(timeout=60) as client, client.stream("POST", f"{API}/v1/completions", json=body) as response:
        chunks = 0
        for line in response.iter_lines():
            chunks += line.startswith("data: {")
            if chunks >= 3:
                break  # leave: the connection closes here
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        running = _metric(8101, "vllm:num_requests_running") + _metric(8102, "vllm:num_requests_running")
        cancelled = httpx.get(f"{API}/splitreason/stats").json()["cancelled"]
        if running == 0 and cancelled > before:
            break
        time.sleep(0.2)
    assert cancelled == before + 1 and running == 0
    assert _metric(8102, "vllm:generation_tokens_total") - generated < 900  # nothing kept generating for nobody
    assert "Task was destroyed but it is pending" not in cli("logs", "demo-api", "-n", "2000").out  # no task left behind


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}, 400,
     "unknown model 'gpt-5' (choose one of: splitreason, splitreason/big-only, "),
    ({"model": "splitreason", "messages": [{"role": "user", "content": "hi"}], "temperature": -1}, 400,
     "temperature: Input should be greater than or equal to 0"),
    ({"model": "splitreason", "messages": [{"role": "user", "content": "hi"}], "n": 0}, 400,
     "n: Input should be greater than or equal to 1"),
    ({"model": "splitreason", "messages": []}, 400, "messages: List should have at least 1 item"),
    ({"model": "splitreason", "messages": [{"role": "system", "content": "be nice"}]}, 400,
     "messages: no user message (the last user message is the question)"),
    ({"model": "splitreason", "messages": [{"role": "user", "content": "x " * 1200}]}, 400,
     "the question makes a "),
    ({"model": "splitreason", "messages": [{"role": "user", "content": "hi"}],
      "tools": [{"type": "function", "function": {"name": "f"}}], "logprobs": True}, 400,
     "tools: not supported by splitreason (unsupported here: tools, logprobs)"),
    ({"model": "splitreason", "messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "1"}]}, 400,
     "messages[1].role: 'tool' is not supported (use system, user or assistant)"),
])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(api: str, body: dict[str, object], status: int,
                                                                       message: str) -> None:
    response = httpx.post(f"{API}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["message"].startswith(message) and error["type"] == "invalid_request_error"
    if message == "the question makes a ":
        assert "-token prompt, over the small model's context of 1024 tokens" in error["message"]
    assert "Traceback" not in response.text
    assert _client().completions.create(model="splitreason", prompt=DEMO_QUESTION, max_tokens=4).choices


def test_the_detached_api_is_a_managed_server(api: str) -> None:
    rows = {row["name"]: row for row in cli("ps", "--json").json()}  # type: ignore[union-attr]
    assert rows["demo-api"]["status"] == "healthy" and rows["demo-api"]["port"] == 8100
    assert "Application startup complete" in cli("logs", "demo-api", "-n", "1000").out
    assert DEMO_QUESTION not in cli("logs", "demo-api", "-n", "500").out  # prompts are not logged


def _api_process(port: int, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "splitcli.api", "--profile", "demo", "--port", str(port), *args],
                            env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("the API did not come up")


def test_an_api_key_is_enforced_and_a_full_queue_answers_429() -> None:
    proc = _api_process(8120, "--api-key-env", "TEST_API_KEY", "--max-in-flight", "1", "--max-queue", "0",
                        env={"TEST_API_KEY": "secret-123"})
    try:
        base = "http://127.0.0.1:8120"
        missing = httpx.get(f"{base}/v1/models")
        assert missing.status_code == 401 and missing.json()["error"]["message"].startswith("the API key is missing")
        wrong = httpx.get(f"{base}/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["message"].startswith("the API key is wrong")
        assert _client(base, "secret-123").models.list().data

        async def two_at_once() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=60, headers={"Authorization": "Bearer secret-123"}) as client:
                body = {"model": "splitreason", "prompt": DEMO_QUESTION}  # about a second on the demo pair
                first = asyncio.ensure_future(client.post(f"{base}/v1/completions", json=body))
                while (await client.get(f"{base}/splitreason/stats")).json()["running"] < 1:
                    await asyncio.sleep(0.01)  # until the first holds the only place in flight
                second = await client.post(f"{base}/v1/completions", json=body)
                return [await first, second]

        first, second = asyncio.run(two_at_once())
        assert first.status_code == 200
        assert second.status_code == 429 and second.headers["Retry-After"] == "1"
        assert second.json()["error"]["type"] == "rate_limit_exceeded"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_server_that_is_down_gives_503_naming_it() -> None:
    proc = _api_process(8121, "--set", "big.endpoints=[http://127.0.0.1:8199]", "--set", "big.speculative=null")
    try:
        response = httpx.post("http://127.0.0.1:8121/v1/chat/completions", timeout=60,
                              json={"model": "splitreason/big-only", "messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 503
        assert response.json()["error"]["message"].startswith("big model demo-big at http://127.0.0.1:8199 is down")
        small = httpx.post("http://127.0.0.1:8121/v1/completions", timeout=60,
                           json={"model": "splitreason/small-only", "prompt": DEMO_QUESTION})
        assert small.status_code == 200  # the rest still serves
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_lm_evaluation_harness_scores_the_endpoint_like_splitreason_eval(api: str, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The example task shipped in examples/lm-eval, as its comment runs it (lm-eval's default
    until, "\n\n", which must not cut the thinking)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    example = Path(__file__).resolve().parent.parent / "examples" / "lm-eval"
    monkeypatch.chdir(example)  # the task names its data file relative to here
    results = simple_evaluate(model="local-chat-completions",
                              model_args=f"base_url={API}/v1/chat/completions,model=splitreason,num_concurrent=4",
                              tasks=["splitreason_demo"], task_manager=TaskManager(include_path=str(example)),
                              apply_chat_template=True)
    harness = results["results"]["splitreason_demo"]["exact_match,boxed"]  # type: ignore[index]
    ours = cli("eval", "--profile", "demo", "--out", str(tmp_path / "ours"), "--json").json()
    assert harness == ours["accuracy"]["pass@1"] == 1.0  # type: ignore[index]


def test_a_server_without_our_continuations_route_says_so_once(api: str, capsys: pytest.CaptureFixture[str]) -> None:
    # The API is ours but not a vLLM server we launched: the probe route answers 404, and the client
    # remembers it (Sessions then probe every prefix over the OpenAI API: tests/test_probe_route.py),
    # and says so once: the way round resends the context for every prefix.
    async def go() -> tuple[tuple[list[str] | None, str], tuple[list[str] | None, str], dict[str, Any]]:
        client = EngineClient("small", "demo-small", [api], "start it")
        try:
            first = await client.continuations([5, 6, 7], 1, 2, "</big")
            return first, await client.continuations([5, 6, 7], 1, 2, "</big"), client._info
        finally:
            await client.aclose()

    (answer, why), again, info = asyncio.run(go())
    reason = f"the small server at {api} has no probe route (not started by splitreason)"
    assert answer is None and info["continuations"] is False and why == reason and again == (None, reason)
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("warning:") == 1 and f"warning: {reason}; probing over the OpenAI API instead" in err
