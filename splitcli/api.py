"""An OpenAI-compatible API in front of the composed system: any OpenAI client, chat UI or harness
(lm-evaluation-harness, lighteval, simple-evals) talks to the small+big pair as to one model.

Every request is its own Session over shared connection pools, run by the same `run_question` as
`splitreason run`. The model id picks the mode (`splitreason` is the profile's mode,
`splitreason/MODE` any other); the thinking goes in `reasoning` and, for clients that read vLLM's
older name, `reasoning_content`; the answer in `content`; streamed deltas say which model wrote them
(`delta.splitreason_model`). A conversation is the prompt: earlier turns through each model's chat
template (their thinking dropped), the hint in the last user turn, a final assistant message
continued. Stop strings end the answer, never the thinking. At most `api.max_in_flight`
sessions run at once; up to `api.max_queue` more wait; beyond that, 429 with Retry-After. A client
that disconnects cancels its Session, which aborts its requests on the vLLM servers.

    python -m splitcli.api --profile demo --port 8100      (what `splitreason serve --api` runs)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from splitcli import __version__, servers
from splitcli.engine import EngineClient
from splitcli.errors import EngineError, ServerError, SplitError, UsageError
from splitcli.modes import check_profile, get_mode, mode_names
from splitcli.profiles import Profile, ServerKey, load_profile
from splitcli.solve import close_clients, open_pool, run_question
from splitcli.trace import THINK_END, Model, Trace

BASE_ID = "splitreason"
log = logging.getLogger("splitreason.api")


# ---------------------------------------------------------------- requests


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")  # fields OpenAI clients send that we do not use are ignored

    model: str = BASE_ID
    n: int = Field(1, ge=1, le=16)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop or [] if s]

    def refuse_unsupported(self) -> None:
        """A parameter we cannot honour is an error, not a 200 that ignores it."""
        extra = self.model_extra or {}
        given = [name for name in UNSUPPORTED if name in extra and not _harmless(name, extra[name])]
        if given:
            raise ApiError(400, f"{given[0]}: not supported by splitreason (unsupported here: {', '.join(given)})",
                           "invalid_request_error", given[0])


def _harmless(name: str, value: Any) -> bool:
    """An unsupported parameter sent with its 'off' value, as many clients do."""
    return value in (None, False, [], {}) or (name == "tool_choice" and value == "none") \
        or (name == "response_format" and value == {"type": "text"}) or (name == "best_of" and value == 1)


# OpenAI parameters that change what comes back, which a composed reasoning pair does not do.
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "response_format", "logprobs",
               "top_logprobs", "logit_bias", "echo", "best_of", "suffix", "audio", "modalities", "prediction")


class ChatRequest(_Request):
    messages: list[dict[str, Any]] = Field(min_length=1)


class CompletionRequest(_Request):
    prompt: str | list[str]


def _content(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # content parts: the text ones
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content or "")


@dataclass
class Conversation:
    question: str  # the last user turn's text
    before: list[dict[str, str]]  # the turns before it
    prefill: str  # a final assistant message: the answer's start


def conversation(messages: list[dict[str, Any]]) -> Conversation:
    """The prompt a chat request makes. Earlier assistant turns keep their answer only (R1's and
    Qwen3's templates drop the thinking of earlier turns too); a last assistant turn is continued."""
    roles = [message.get("role") for message in messages]
    for index, role in enumerate(roles):
        if role not in ("system", "developer", "user", "assistant"):
            raise ApiError(400, f"messages[{index}].role: {role!r} is not supported (use system, user or assistant)",
                           "invalid_request_error", f"messages.{index}.role")
    if "user" not in roles:
        raise ApiError(400, "messages: no user message (the last user message is the question)",
                       "invalid_request_error", "messages")
    last = len(roles) - 1 - roles[::-1].index("user")
    after = messages[last + 1:]
    if len(after) > 1:
        raise ApiError(400, "messages: after the last user message only one assistant message (the answer's start) "
                            "may follow", "invalid_request_error", "messages")
    before = []
    for message in messages[:last]:
        role, text = str(message["role"]), _content(message)
        if role == "assistant":
            text = text.split(THINK_END, 1)[-1].lstrip("\n")
        before.append({"role": "system" if role == "developer" else role, "content": text})
    return Conversation(_content(messages[last]), before, _content(after[0]) if after else "")


# ---------------------------------------------------------------- errors in OpenAI's shape


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.headers = status, message, kind, param, headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}


def _engine_error(exc: SplitError, model: str) -> ApiError:
    message = str(exc)
    down = isinstance(exc, EngineError) and " failed (" in message and ("Connect" in message or "RemoteProtocol" in message)
    if down:
        return ApiError(503, f"{message.split(' failed (')[0]} is down; model {model!r} cannot answer now",
                        "service_unavailable")
    if isinstance(exc, UsageError):
        return ApiError(400, message, "invalid_request_error", "messages")
    if isinstance(exc, ServerError):
        return ApiError(503, message, "service_unavailable")
    return ApiError(502, message, "upstream_error")


# ---------------------------------------------------------------- the text as OpenAI wants it


class ThinkSplit:
    """Turns the answer's text, piece by piece, into (reasoning, content) deltas: before the first
    </think> is reasoning (the tag itself is dropped), after it the answer. A piece of a possible
    tag or stop string is held back until it is certain; a stop string in the answer ends the text
    (in the thinking it is text: a real model's thinking is full of lm-eval's "\n\n")."""

    def __init__(self, stops: list[str], thinking: bool = True, keep_tag: bool = False) -> None:
        self.stops = stops
        self.keep_tag = keep_tag  # completions: one text, the tag in it
        self.in_answer = not thinking  # the text starts in the answer (a prefill that closed the thinking)
        self.answered = False  # some answer text went out (the newlines after </think> do not count)
        self.after_think = False
        self.held = ""
        self.stopped = False

    def feed(self, text: str, final: bool = False) -> list[tuple[str, str]]:
        """[(kind, text)] with kind 'reasoning' or 'content'."""
        if self.stopped:
            return []
        self.held += text
        out: list[tuple[str, str]] = []
        while True:
            end = -1 if self.in_answer else self.held.find(THINK_END)
            if end >= 0:
                self._emit(out, self.held[:end + (len(THINK_END) if self.keep_tag else 0)])
                self.held, self.in_answer, self.after_think = self.held[end + len(THINK_END):], True, True
                continue
            # The thinking is never cut, nor the newlines that follow </think> (lm-eval stops at "\n\n").
            lead = len(self.held) - len(self.held.lstrip("\n")) if self.after_think and not self.answered else 0
            cut, _ = _first(self.held[lead:], self.stops) if self.in_answer else (-1, "")
            if cut >= 0:
                cut += lead
                self._emit(out, self.held[:cut])
                self.held, self.stopped = "", True
                return out
            keep = 0 if final else _partial_suffix(self.held, self.stops if self.in_answer else [THINK_END])
            self._emit(out, self.held[: len(self.held) - keep])
            self.held = self.held[len(self.held) - keep:]
            return out

    def _emit(self, out: list[tuple[str, str]], text: str) -> None:
        if self.in_answer and not self.answered and self.after_think:
            text = text if self.keep_tag else text.lstrip("\n")
            self.answered = bool(text.strip("\n"))
        if text:
            out.append(("content" if self.in_answer else "reasoning", text))


def _first(text: str, needles: list[str]) -> tuple[int, str]:
    found = [(text.find(n), n) for n in needles if text.find(n) >= 0]
    return min(found) if found else (-1, "")


def _partial_suffix(text: str, needles: list[str]) -> int:
    """Length of the longest end of `text` that begins one of `needles` (it may complete later)."""
    longest = 0
    for needle in needles:
        for size in range(min(len(needle) - 1, len(text)), longest, -1):
            if needle.startswith(text[-size:]):
                longest = size
                break
    return longest


def split_answer(text: str, stops: list[str], thinking: bool = True) -> tuple[str | None, str, bool]:
    """(reasoning, content, stopped) of a whole text."""
    splitter = ThinkSplit(stops, thinking)
    parts = splitter.feed(text, final=True)
    reasoning = "".join(t for kind, t in parts if kind == "reasoning")
    content = "".join(t for kind, t in parts if kind == "content")
    return (reasoning or None), content, splitter.stopped


def usage(traces: list[Trace]) -> dict[str, Any]:
    """OpenAI's usage fields, plus what splitreason measures (tokens per model, offload, handoffs)."""
    stats = [trace.stats() for trace in traces]
    prompt = traces[0].prompt_tokens if traces else 0
    completion = sum(s["generated_tokens"] for s in stats)
    latencies = [s["mean_handoff_latency_s"] for s in stats if s["mean_handoff_latency_s"] is not None]
    return {
        "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
        "splitreason": {
            "tokens": {m: sum(s["tokens"][m] for s in stats) for m in ("small", "big")},
            "spent_tokens": {m: sum(s["spent_tokens"][m] for s in stats) for m in ("small", "big")},
            "offload_share": round(sum(s["tokens"]["big"] for s in stats) / completion, 4) if completion else 0.0,
            "handoffs": sum(s["handoffs"] for s in stats),
            "mean_handoff_latency_s": round(sum(latencies) / len(latencies), 4) if latencies else None,
        },
    }


# ---------------------------------------------------------------- the service


@dataclass
class Counters:
    requests: int = 0
    running: int = 0
    waiting: int = 0
    rejected_busy: int = 0
    cancelled: int = 0
    finished: int = 0
    by_status: dict[str, int] = field(default_factory=dict)


class Service:
    """The profile, the connection pools and the admission gate shared by all requests."""

    def __init__(self, profile: Profile, max_in_flight: int, max_queue: int, log_prompts: bool) -> None:
        self.profile = profile
        self.modes = {BASE_ID: profile.mode, **{f"{BASE_ID}/{name}": name for name in mode_names()
                                                  if not name.startswith("test-")}}
        keys: set[ServerKey] = {key for name in self.modes.values() for key in get_mode(name).server_keys().values()}
        if profile.big.speculative is None:
            keys.discard("spec")
            self.modes = {mid: name for mid, name in self.modes.items() if "spec" not in get_mode(name).server_keys().values()}
        self.pool: dict[ServerKey, EngineClient] = open_pool(profile, sorted(keys), max_connections=4 * max_in_flight + 16)
        self.gate = asyncio.Semaphore(max_in_flight)
        self.max_queue = max_queue
        self.log_prompts = log_prompts
        self.counters = Counters()

    def mode(self, model_id: str) -> str:
        if model_id not in self.modes:
            raise ApiError(400, f"unknown model {model_id!r} (choose one of: {', '.join(self.modes)})",
                           "invalid_request_error", "model")
        return self.modes[model_id]

    def clients(self, mode_name: str) -> dict[Model, EngineClient]:
        return {role: self.pool[key] for role, key in get_mode(mode_name).server_keys().items()}

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """A place among the sessions in flight; 429 when all are taken and too many already wait."""
        if self.gate.locked() and self.counters.waiting >= self.max_queue:
            self.counters.rejected_busy += 1
            raise ApiError(429, f"busy: {self.counters.running} requests running and {self.counters.waiting} waiting "
                                "(api.max_queue); retry shortly", "rate_limit_exceeded", headers={"Retry-After": "1"})
        self.counters.waiting += 1
        try:
            await self.gate.acquire()
        finally:
            self.counters.waiting -= 1
        self.counters.running += 1
        try:
            yield
        finally:
            self.counters.running -= 1
            self.gate.release()

    def sampling(self, request: _Request, index: int) -> Any:
        limit = request.max_completion_tokens or request.max_tokens
        update: dict[str, Any] = {"max_new_tokens": limit}
        if request.temperature is not None:
            update["temperature"] = request.temperature
        if request.top_p is not None:
            update["top_p"] = request.top_p
        if request.seed is not None:
            update["seed"] = request.seed + index
        return self.profile.sampling.model_copy(update={k: v for k, v in update.items() if v is not None})

    async def run(self, asked: Conversation, mode_name: str, request: _Request, index: int,
                  watch: Callable[[Trace], None] | None = None) -> Trace:
        if self.log_prompts:
            log.info("question (%s, %d turns before): %r", mode_name, len(asked.before), asked.question[:2000])
        if not asked.question.strip():
            raise ApiError(400, "the prompt is empty", "invalid_request_error", "messages")
        try:
            trace = await run_question(self.profile, asked.question, mode_name, clients=self.clients(mode_name),
                                       sampling=self.sampling(request, index), watch=watch, partial_on_error=False,
                                       conversation=asked.before, prefill=asked.prefill)
        except SplitError as exc:
            raise _engine_error(exc, request.model) from None
        self.counters.finished += 1
        return trace


def create_app(profile: Profile, max_in_flight: int = 8, max_queue: int = 64, api_key: str | None = None,
               log_prompts: bool = False) -> Any:
    """The FastAPI application over one profile (its vLLM servers must be running)."""
    state: dict[str, Service] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        service = Service(profile, max_in_flight, max_queue, log_prompts)
        state["service"] = service
        # Leases on the servers it uses: no command that started one stops it while the API serves.
        with servers.ServerUse(profile, tuple(k for k in service.pool if profile.spec(k).launched)):
            try:
                yield
            finally:
                await close_clients(service.pool)  # type: ignore[arg-type]

    app = FastAPI(title="splitreason", version=__version__, lifespan=lifespan)

    @app.middleware("http")
    async def authorise(request: Request, call_next: Any) -> Any:
        if api_key and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if given != f"Bearer {api_key}":
                reason = "missing" if not given else "wrong"
                return JSONResponse(ApiError(401, f"the API key is {reason} (send Authorization: Bearer KEY)",
                                             "invalid_api_key").body(), status_code=401)
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Any:
        service = state["service"]
        service.counters.by_status[str(exc.status)] = service.counters.by_status.get(str(exc.status), 0) + 1
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Any:  # unknown paths, wrong methods
        message = (f"no such route: {request.method} {request.url.path} (see /v1/models, /v1/chat/completions, "
                   "/v1/completions)" if exc.status_code in (404, 405) else str(exc.detail))
        return await api_error(request, ApiError(exc.status_code, message, "invalid_request_error"))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Any:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"] if part != "body")
        return await api_error(request, ApiError(400, f"{where}: {first['msg']}", "invalid_request_error", where or None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Any:  # the server keeps serving
        log.exception("unexpected error")
        return await api_error(request, ApiError(500, f"internal error ({type(exc).__name__}); see the server's log",
                                                 "internal_error"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @app.get("/splitreason/stats")
    async def stats() -> dict[str, Any]:
        return vars(state["service"].counters)

    def model_card(model_id: str, mode_name: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": 0, "owned_by": "splitreason",
                "description": get_mode(mode_name).summary}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(model_id, name) for model_id, name in state["service"].modes.items()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        service = state["service"]
        if model_id not in service.modes:
            raise ApiError(404, f"The model {model_id!r} does not exist (GET /v1/models lists them)",
                           "invalid_request_error", "model")
        return model_card(model_id, service.modes[model_id])

    @app.post("/v1/chat/completions")
    async def chat(raw: Request) -> Any:
        request = _parse(ChatRequest, await _json(raw))
        return await _answer(state["service"], request, conversation(request.messages), chat=True)

    @app.post("/v1/completions")
    async def complete(raw: Request) -> Any:
        request = _parse(CompletionRequest, await _json(raw))
        prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
        if len(prompts) != 1:
            raise ApiError(400, "prompt: send one prompt per request (use n for several samples)",
                           "invalid_request_error", "prompt")
        return await _answer(state["service"], request, Conversation(prompts[0], [], ""), chat=False)

    async def _answer(service: Service, request: _Request, asked: Conversation, chat: bool) -> Any:
        service.counters.requests += 1
        request.refuse_unsupported()
        mode_name = service.mode(request.model)
        if request.stream:
            if request.n != 1:
                raise ApiError(400, "n: streaming takes n=1", "invalid_request_error", "n")
            if service.gate.locked() and service.counters.waiting >= service.max_queue:
                async with service.slot():  # raises the 429 now, before the stream starts
                    pass
            return StreamingResponse(_stream(service, request, asked, mode_name, chat),
                                     media_type="text/event-stream")

        async def one(index: int) -> Trace:
            async with service.slot():
                return await service.run(asked, mode_name, request, index)

        traces = await asyncio.gather(*(one(i) for i in range(request.n)))
        return _response(request, traces, chat, thinking=THINK_END not in asked.prefill)

    return app


async def _json(raw: Any) -> Any:
    try:
        return await raw.json()
    except ValueError:
        raise ApiError(400, "the body is not JSON", "invalid_request_error") from None


def _parse(kind: type[_Request], body: Any) -> Any:
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", "invalid_request_error")
    try:
        return kind.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ApiError(400, f"{where}: {first['msg']}", "invalid_request_error", where or None) from None


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


def _finish_reason(trace: Trace, stopped: bool) -> str:
    if stopped:
        return "stop"
    last = trace.kept_segments[-1].finish_reason if trace.kept_segments else None
    return "stop" if last in ("eos", "stop", "handback") else "length"


def _response(request: _Request, traces: list[Trace], chat: bool, thinking: bool = True) -> dict[str, Any]:
    created, rid = int(time.time()), f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    choices = []
    for index, trace in enumerate(traces):
        if chat:
            reasoning, content, stopped = split_answer(trace.text, request.stops, thinking)
            # vLLM renamed reasoning_content to reasoning, then dropped the old name: clients read either.
            message = {"role": "assistant", "content": content, "reasoning": reasoning, "reasoning_content": reasoning}
            choices.append({"index": index, "message": message, "finish_reason": _finish_reason(trace, stopped)})
        else:
            splitter = ThinkSplit(request.stops, keep_tag=True)
            text = "".join(piece for _, piece in splitter.feed(trace.text, final=True))
            choices.append({"index": index, "text": text, "finish_reason": _finish_reason(trace, splitter.stopped),
                            "logprobs": None})
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
            "model": request.model, "choices": choices, "usage": usage(traces)}


async def _stream(service: Service, request: _Request, asked: Conversation, mode_name: str,
                  chat: bool) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with [DONE]. Leaving early (the client
    went away) cancels the session: its requests are aborted on the vLLM servers."""
    created, rid = int(time.time()), f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    kind = "chat.completion.chunk" if chat else "text_completion"
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    feed = get_mode(mode_name).feed(lambda model, text: queue.put_nowait((model, text)))
    splitter = ThinkSplit(request.stops, thinking=THINK_END not in asked.prefill, keep_tag=not chat)
    result: dict[str, Any] = {}

    def chunk(delta: dict[str, Any], model: str | None = None, finish: str | None = None) -> str:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if chat:
            # Beside OpenAI's fields of the delta, where a client finds extra ones (`delta.model_extra`).
            choice["delta"] = {**delta, **({"splitreason_model": model} if model is not None else {})}
        else:
            choice["text"], choice["logprobs"] = delta.get("content", ""), None
            if model is not None:
                choice["splitreason_model"] = model
        return _event({"id": rid, "object": kind, "created": created, "model": request.model, "choices": [choice]})

    def delta(part: str, piece: str) -> dict[str, Any]:
        if chat and part == "reasoning":
            return {"reasoning": piece, "reasoning_content": piece}
        return {"content": piece}

    async def work() -> None:
        async with service.slot():
            trace = await service.run(asked, mode_name, request, 0, watch=lambda t: t.subscribe(feed))
        feed.finish(trace)
        result["trace"] = trace

    task = asyncio.ensure_future(work())
    getter: asyncio.Future[tuple[str, str]] | None = None
    try:
        if chat:
            yield chunk({"role": "assistant", "content": ""})
        while True:
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait([getter, task], return_when=asyncio.FIRST_COMPLETED)
            pieces = [getter.result()] if getter.done() else []
            if not getter.done():
                getter.cancel()
            while not queue.empty():
                pieces.append(queue.get_nowait())
            for model, text in pieces:
                for part, piece in splitter.feed(text):
                    yield chunk(delta(part, piece), model)
            if splitter.stopped and not task.done():
                task.cancel()  # a stop string ended the text: stop generating
            if task.done() and queue.empty():
                break
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            body = error.body() if isinstance(error, ApiError) else ApiError(500, str(error), "internal_error").body()
            yield f"data: {json.dumps(body)}\n\n"
            yield "data: [DONE]\n\n"
            return
        for part, piece in splitter.feed("", final=True):
            yield chunk(delta(part, piece))
        trace = result.get("trace")
        yield chunk({}, finish=_finish_reason(trace, splitter.stopped) if trace else "stop")
        if (request.stream_options or {}).get("include_usage") and trace is not None:
            yield _event({"id": rid, "object": kind, "created": created, "model": request.model, "choices": [],
                          "usage": usage([trace])})
        yield "data: [DONE]\n\n"
    finally:
        if getter is not None and not getter.done():
            getter.cancel()  # a client gone mid-wait: no pending Queue.get() is left to be destroyed
        if not task.done():
            task.cancel()
            service.counters.cancelled += 1
        with contextlib.suppress(BaseException):
            await task


def main() -> None:
    """Serve the API (the managed process `splitreason serve --api` starts)."""
    parser = argparse.ArgumentParser(description="splitreason's OpenAI-compatible API")
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--max-in-flight", type=int, default=8)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--api-key-env", default=None)
    parser.add_argument("--log-prompts", action="store_true")
    args = parser.parse_args()
    import uvicorn
    from dotenv import load_dotenv

    load_dotenv(os.path.join(os.getcwd(), ".env"), override=False)
    try:
        profile = check_profile(load_profile(args.profile, args.overrides))
    except SplitError as exc:
        raise SystemExit(f"error: {exc}") from None
    key = os.environ.get(args.api_key_env) if args.api_key_env else None
    if args.api_key_env and not key:
        raise SystemExit(f"error: {args.api_key_env} is not set (put it in the environment or .env)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per engine call would drown the log
    app = create_app(profile, args.max_in_flight, args.max_queue, key, args.log_prompts)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=args.log_prompts,
                timeout_keep_alive=servers.SERVER_KEEPALIVE_S)


if __name__ == "__main__":
    main()
