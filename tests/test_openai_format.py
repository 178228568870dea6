"""The API's wire rules without a server: finish reasons, usage, the thinking split, and how an
engine failure's kind becomes a status code (the kind set where engine.py raises)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from splitcli.engine import EngineClient
from splitcli.engine_wire import failure_kind, refusal_kind
from splitcli.errors import EngineError, EngineErrorKind, ServerError, SplitError, UsageError
from splitcli.openai_format import ENGINE_ERROR_STATUS, ChunkStream, error_reply, finish_reason, split_answer, usage
from splitcli.trace import Segment, Trace


def _trace(*segments: Segment, prompt_tokens: int = 0) -> Trace:
    trace = Trace(question="q", mode="splitreason", models={"small": "s", "big": "b"})
    trace.segments = list(segments)
    trace.prompt_tokens = prompt_tokens
    return trace


@pytest.mark.parametrize(("last", "stopped", "expected"), [
    ("eos", False, "stop"), ("stop", False, "stop"), ("handback", False, "stop"),
    ("length", False, "length"), (None, False, "length"), ("length", True, "stop"),
])
def test_finish_reason_is_stop_only_for_an_ended_text_or_a_stop_string(last: str | None, stopped: bool,
                                                                        expected: str) -> None:
    trace = _trace(Segment("small", "a", [1], finish_reason="eos"), Segment("big", "b", [2], finish_reason=last))
    assert finish_reason(trace, stopped) == expected


def test_finish_reason_reads_the_last_kept_segment() -> None:
    lost = Segment("big", "x", [3], finish_reason="eos", kept=False)
    assert finish_reason(_trace(Segment("small", "a", [1], finish_reason="length"), lost), False) == "length"
    assert finish_reason(_trace(), False) == "length"


def test_usage_counts_the_prompt_once_and_every_sample_s_tokens_per_model() -> None:
    first = _trace(Segment("small", "ab", [1, 2, 3]), Segment("big", "c", [4]), prompt_tokens=10)
    second = _trace(Segment("small", "d", [5], dropped_tokens=2), prompt_tokens=10)
    got = usage([first, second])
    assert (got["prompt_tokens"], got["completion_tokens"], got["total_tokens"]) == (10, 5, 15)
    assert got["splitreason"]["tokens"] == {"small": 4, "big": 1}
    assert got["splitreason"]["spent_tokens"] == {"small": 6, "big": 1}
    assert got["splitreason"]["offload_share"] == 0.2
    assert got["splitreason"]["handoffs"] == 1
    assert usage([])["total_tokens"] == 0 and usage([])["splitreason"]["offload_share"] == 0.0


def test_a_stop_string_ends_the_answer_but_never_the_thinking() -> None:
    reasoning, content, stopped = split_answer("think\n\nmore</think>\n\nanswer\n\nrest", ["\n\n"])
    assert (reasoning, content, stopped) == ("think\n\nmore", "answer", True)
    assert split_answer("still thinking", ["\n\n"]) == ("still thinking", "", False)


def test_a_streamed_reasoning_piece_carries_both_names_and_its_model() -> None:
    chunk = ChunkStream("splitreason", chat=True).piece("reasoning", "hm", "big")
    assert '"reasoning": "hm", "reasoning_content": "hm", "splitreason_model": "big"' in chunk


def test_an_unreachable_server_is_a_503_that_names_it() -> None:
    error = EngineError("big model m at http://h:1 failed (ConnectError: refused); is it running? hint",
                        "unreachable", "big model m at http://h:1")
    reply = error_reply(error, "splitreason")
    assert (reply.status, reply.kind) == (503, "service_unavailable")
    assert reply.message == "big model m at http://h:1 is down; model 'splitreason' cannot answer now"


@pytest.mark.parametrize("kind", ["timeout", "rejected", "server_error"])
def test_other_engine_failures_are_a_502_with_the_engine_s_message(kind: EngineErrorKind) -> None:
    message = "small model at http://h:1 rejected the request: no"
    reply = error_reply(EngineError(message, kind), "splitreason")
    assert (reply.status, reply.kind, reply.message) == (502, "upstream_error", message)


def test_every_engine_error_kind_has_a_status() -> None:
    assert set(ENGINE_ERROR_STATUS) == set(EngineErrorKind.__args__)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("error", "status"), [(UsageError("too long"), 400), (ServerError("wrong name"), 503),
                                               (SplitError("other"), 502)])
def test_other_library_errors_keep_their_status(error: SplitError, status: int) -> None:
    assert error_reply(error, "splitreason").status == status


@pytest.mark.parametrize(("exc", "kind"), [
    (httpx.ConnectError("All connection attempts failed"), "unreachable"),
    (httpx.ConnectTimeout("slow"), "unreachable"),
    (httpx.RemoteProtocolError("Server disconnected without sending a response."), "unreachable"),
    (httpx.ReadError("[Errno 104] Connection reset by peer"), "unreachable"),
    (httpx.ReadTimeout("slow"), "timeout"),
    (ValueError("Expecting value"), "server_error"),
])
def test_a_request_without_a_reply_says_how_it_failed(exc: Exception, kind: str) -> None:
    assert failure_kind(exc) == kind


def test_a_refusal_is_rejected_for_4xx_and_a_server_error_for_5xx() -> None:
    assert (refusal_kind(400), refusal_kind(404), refusal_kind(500), refusal_kind(503)) == \
        ("rejected", "rejected", "server_error", "server_error")


def _failing(reply: httpx.Response | Exception) -> EngineError:
    """The EngineError a tokenize request raises when the server answers `reply` (no server runs)."""
    def answer(request: httpx.Request) -> httpx.Response:
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def go() -> EngineError:
        client = EngineClient("small", "m", ["http://h:1"], "(start it)")
        client._http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
        try:
            await client.tokenize("x")
        except EngineError as exc:
            return exc
        finally:
            await client.aclose()
        raise AssertionError("no EngineError")

    return asyncio.run(go())


def test_engine_raise_sites_set_the_kind_and_keep_their_message() -> None:
    down = _failing(httpx.ConnectError("All connection attempts failed"))
    assert (down.kind, down.server) == ("unreachable", "small model m at http://h:1")
    assert str(down) == ("small model m at http://h:1 failed (ConnectError: All connection attempts failed); "
                         "is it running? (start it)")
    refused = _failing(httpx.Response(400, json={"error": {"message": "bad prompt"}}))
    assert (refused.kind, str(refused)) == ("rejected", "small model at http://h:1 rejected the request: bad prompt")
    assert _failing(httpx.Response(500, text="boom")).kind == "server_error"


def test_the_kv_cache_size_is_read_from_vllms_cache_config_info() -> None:
    from splitcli.engine_wire import kv_cache_tokens

    text = ('# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n'
            '# TYPE vllm:cache_config_info gauge\n'
            'vllm:cache_config_info{block_size="32",engine="0",num_gpu_blocks="1500"} 1.0\n'
            'vllm:cache_config_info{block_size="32",engine="1",num_gpu_blocks="500"} 1.0\n')
    assert kv_cache_tokens(text) == 2000 * 32  # both engines of a data-parallel server
    assert kv_cache_tokens("vllm:num_requests_running 0.0\n") is None
    assert kv_cache_tokens('vllm:cache_config_info{block_size="32",num_gpu_blocks="None"} 1.0\n') is None


@pytest.mark.parametrize("path", ["route", "openai"])
def test_a_probe_cancelled_before_its_answer_is_in_the_trace_as_cancelled(path: str) -> None:
    # The stream mode cancels probes still out once the cut is known, by either path; what they
    # cost is part of the run, so the trace keeps each, marked cancelled (the server aborts it).
    from splitcli.trace import Call

    async def go() -> list[Call]:
        asked = asyncio.Event()

        async def never_answers(request: httpx.Request) -> httpx.Response:
            asked.set()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        recorded: list[Call] = []
        client = EngineClient("small", "m", ["http://h:1"], "(start it)", record=recorded.append)
        client._http = httpx.AsyncClient(transport=httpx.MockTransport(never_answers))
        if path == "route":
            probe = client.continuations([5, 6, 7, 8], 2, 8, "</big")
        else:
            probe = client.complete([[5, 6], [5, 6, 7]], max_tokens=8, kind="probe", token_ids=False,
                                    path="openai", why="probe_route is off")
        task = asyncio.ensure_future(probe)
        await asyncio.wait_for(asked.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await client.aclose()
        return recorded

    (call,) = asyncio.run(go())
    assert (call.kind, call.cancelled, call.path, call.url) == ("probe", True, path, "http://h:1")
    assert call.end >= call.start > 0
    if path == "route":
        assert call.prompt_tokens == 4
    else:
        assert (call.prompts, call.why) == (2, "probe_route is off")
