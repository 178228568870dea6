"""The live route (engine_route.LIVE_PATH): requests kept alive in the engine for warm handoffs.

A warm handoff that resends a 16k-token context pays vLLM's per-request costs for all of it
(~20 ms on an H200, cached or not); a request kept alive in the engine (vLLM's streaming input)
takes only the new tokens (~10 ms). `open` starts one with a context (it computes one token,
which vLLM drops when more input comes); `append` gives it the tokens since, streams what the
model writes after them and ends it; `close` ends one unused. Append is a live request's last use:
a segment the probe cuts short cannot be taken back out of it.

Imports nothing of splitcli but the other engine_route modules (see engine_route).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from splitcli.engine_route_shared import CONTEXT_TOKENS, disconnected, model_config, model_defaults, send_json, text_after

MAX_LIVE = 8  # per server: the oldest is ended when a client leaves more open
LIVE_IDLE_S = 120.0  # ... and any left unused this long (a client that died holds KV blocks for nothing)
_live: dict[str, Live] = {}


class Live:
    def __init__(self, engine: Any, prompt: list[int]) -> None:
        self.engine = engine
        self.id = f"splitreason-live-{uuid.uuid4().hex}"
        self.prompt = prompt
        self.opened = time.monotonic()
        self.inputs: asyncio.Queue[Any] = asyncio.Queue()
        self.outputs: Any = None

    async def chunk(self, tokens: list[int], params: Any) -> Any:
        """Give the live request `tokens`; yields its outputs until this input's last one."""
        from vllm.engine.protocol import StreamingInput

        # A copy: vLLM extends a live request's prompt list in place with each new input.
        await self.inputs.put(StreamingInput(prompt={"prompt_token_ids": list(tokens)}, sampling_params=params))
        if self.outputs is None:
            self.outputs = self.engine.generate(_until_none(self.inputs), params, self.id).__aiter__()
        while True:
            output = await self.outputs.__anext__()
            yield output
            if output.finished or output.outputs[0].finish_reason is not None:
                return

    async def end(self) -> None:
        """Closing vLLM's generator aborts the request and its input task; one being read elsewhere
        (an append under way) is aborted by id."""
        _live.pop(self.id, None)
        outputs, self.outputs = self.outputs, None
        if outputs is None:
            return
        try:
            await outputs.aclose()
        except RuntimeError:
            await self.engine.abort(self.id)


def live_unsupported() -> str | None:
    """Why this vLLM cannot serve live requests, or None (asked once per server process)."""
    try:
        from vllm.v1.core.sched.scheduler import Scheduler
    except ImportError:
        return "this vLLM has no streaming input"
    return _live_unsupported(getattr(Scheduler, "_update_request_as_session", None))


@functools.cache
def _live_unsupported(update: Callable[..., Any] | None) -> str | None:
    """vLLM 0.24's scheduler takes a new input's sampling parameters but keeps the request's first
    max_tokens (the open's 1), so every handoff would write one token and hand back; later versions
    set it from the new input too (`Scheduler._update_request_as_session`)."""
    if update is None:
        return "this vLLM has no streaming input"
    try:
        source = inspect.getsource(update)
    except (OSError, TypeError):
        return None  # cannot tell: the append's own check below still catches a short answer
    if "max_tokens" not in source:
        from vllm import __version__

        return (f"vLLM {__version__} keeps a live request's first max_tokens when more input comes "
                "(each handoff would write one token); live handoffs need a later vLLM")
    return None


async def _until_none(queue: asyncio.Queue[Any]) -> Any:
    while (item := await queue.get()) is not None:
        yield item


async def live(engine: Any, request: dict[str, Any]) -> dict[str, Any]:
    """{op: open, prompt} -> {id, cached_tokens}; {op: close, id} -> {closed}; {op: count} -> {open}."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    op = request["op"]
    for stale in [each for each in _live.values() if time.monotonic() - each.opened > LIVE_IDLE_S]:
        await stale.end()
    if op == "count":
        return {"open": len(_live)}
    if op == "close":
        handle = _live.get(str(request["id"]))
        if handle is not None:
            await handle.end()
        return {"closed": handle is not None}
    if op != "open":
        raise ValueError(f"unknown op {op!r}")
    prompt = [int(token) for token in request["prompt"]]
    if not prompt:
        raise ValueError("an empty prompt")
    while len(_live) >= MAX_LIVE:
        await next(iter(_live.values())).end()
    handle = Live(engine, prompt)
    _live[handle.id] = handle
    # Not FINAL_ONLY: vLLM refuses that kind for streaming input.
    params = SamplingParams(temperature=0.0, max_tokens=1, detokenize=False, output_kind=RequestOutputKind.DELTA)
    cached = 0
    try:
        async for output in handle.chunk(prompt, params):
            cached = int(output.num_cached_tokens or 0)
    except BaseException:
        await handle.end()
        raise
    return {"id": handle.id, "cached_tokens": cached}


async def open_while_connected(engine: Any, request: dict[str, Any], receive: Any, send: Any) -> None:
    """`open`, ended again when the client went away meanwhile (a cancelled warm-up): nobody
    would ever append to it or close it."""
    watcher = asyncio.ensure_future(disconnected(receive))
    try:
        answer = await live(engine, request)
        if watcher.done():
            handle = _live.get(answer["id"])
            if handle is not None:
                await handle.end()
            return
        await send_json(send, 200, answer)
    finally:
        watcher.cancel()


async def stream_append(engine: Any, request: dict[str, Any], receive: Any, send: Any) -> None:
    """{op: append, id, tokens, max_tokens, temperature, top_p, seed, skip_special_tokens, ignore_eos}: one JSON
    line per piece ({text, token_ids}), then {finish_reason, prompt_tokens, cached_tokens}. The live
    request ends with the answer, or when the client goes away (a cancelled draft)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    handle = _live.pop(str(request["id"]), None)  # in use: neither closed nor evicted meanwhile
    tokens = [int(token) for token in request["tokens"]]
    if handle is None:
        await send_json(send, 404, {"error": {"message": "no such live request (ended, or never opened)", "code": 404}})
        return
    if not tokens:
        await handle.end()
        raise ValueError("append needs at least one new token")
    skip_special = bool(request.get("skip_special_tokens", True))
    seed = request.get("seed")
    # What the OpenAI server would take from generation_config for what the client leaves unset.
    defaults = {name: value for name, value in model_defaults(model_config(engine)).items()
                if name in ("top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty")
                and value is not None}
    params = SamplingParams(max_tokens=int(request["max_tokens"]), temperature=float(request.get("temperature", 0.0)),
                            top_p=float(request.get("top_p", 1.0)), seed=None if seed is None else int(seed),
                            ignore_eos=bool(request.get("ignore_eos", False)), detokenize=False,
                            output_kind=RequestOutputKind.DELTA, **defaults)
    tokenizer = engine.get_tokenizer()
    if inspect.isawaitable(tokenizer):
        tokenizer = await tokenizer
    before = (handle.prompt + tokens)[-CONTEXT_TOKENS:]  # the last tokens whose text is out
    pending: list[int] = []  # written, text not out yet (a character may still be incomplete)

    watcher = asyncio.ensure_future(disconnected(receive))  # a cancelled draft: end the live request
    try:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/x-ndjson")]})
        async for output in handle.chunk(tokens, params):
            if watcher.done():
                break
            piece = output.outputs[0]
            pending += piece.token_ids
            # Text as an incremental decoder shows it (not vLLM's: its detokenizer does not see
            # the new input of a live request), held back while a character is incomplete.
            done = piece.finish_reason is not None
            text = text_after(tokenizer, before, pending, skip_special) if pending else ""
            if text.endswith("\ufffd") and not done:
                text = ""
            else:
                before, pending = (before + pending)[-CONTEXT_TOKENS:], []
            line = {"text": text, "token_ids": list(piece.token_ids)}
            if done:
                line |= {"finish_reason": piece.finish_reason, "stop_reason": piece.stop_reason,
                         "prompt_tokens": len(handle.prompt) + len(tokens), "cached_tokens": len(handle.prompt)}
            await send({"type": "http.response.body", "body": json.dumps(line).encode() + b"\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        watcher.cancel()
        await handle.end()

