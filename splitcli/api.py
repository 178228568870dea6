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
that disconnects cancels its Session, which aborts its requests on the vLLM servers. The wire
format (request and response shapes, usage, finish reasons, error bodies) is in openai_format.py.

    python -m splitcli.api --profile demo --port 8100      (what `splitreason serve --api` runs)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from splitcli import __version__, servers
from splitcli.engine import EngineClient
from splitcli.errors import SplitError
from splitcli.modes import check_profile, get_mode, mode_names
from splitcli.openai_format import (
    BASE_ID,
    ApiError,
    ApiRequest,
    ChatRequest,
    ChunkStream,
    CompletionRequest,
    Conversation,
    ThinkSplit,
    conversation,
    error_reply,
    finish_reason,
    invalid_field,
    parse_request,
    response_body,
)
from splitcli.profiles import Profile, ServerKey, load_profile
from splitcli.solve import close_clients, open_pool, run_question
from splitcli.trace import THINK_END, Model, Trace

log = logging.getLogger("splitreason.api")


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

    def sampling(self, request: ApiRequest, index: int) -> Any:
        limit = request.max_completion_tokens or request.max_tokens
        update: dict[str, Any] = {"max_new_tokens": limit}
        if request.temperature is not None:
            update["temperature"] = request.temperature
        if request.top_p is not None:
            update["top_p"] = request.top_p
        if request.seed is not None:
            update["seed"] = request.seed + index
        return self.profile.sampling.model_copy(update={k: v for k, v in update.items() if v is not None})

    async def run(self, asked: Conversation, mode_name: str, request: ApiRequest, index: int,
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
            raise error_reply(exc, request.model) from None
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
        return await api_error(request, invalid_field(first["loc"], first["msg"]))

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
        request = parse_request(ChatRequest, await _json(raw))
        return await _answer(state["service"], request, conversation(request.messages), chat=True)

    @app.post("/v1/completions")
    async def complete(raw: Request) -> Any:
        request = parse_request(CompletionRequest, await _json(raw))
        prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
        if len(prompts) != 1:
            raise ApiError(400, "prompt: send one prompt per request (use n for several samples)",
                           "invalid_request_error", "prompt")
        return await _answer(state["service"], request, Conversation(prompts[0], [], ""), chat=False)

    async def _answer(service: Service, request: ApiRequest, asked: Conversation, chat: bool) -> Any:
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
        return response_body(request, traces, chat, thinking=THINK_END not in asked.prefill)

    return app


async def _json(raw: Any) -> Any:
    try:
        return await raw.json()
    except ValueError:
        raise ApiError(400, "the body is not JSON", "invalid_request_error") from None


async def _stream(service: Service, request: ApiRequest, asked: Conversation, mode_name: str,
                  chat: bool) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with [DONE]. Leaving early (the client
    went away) cancels the session: its requests are aborted on the vLLM servers."""
    chunks = ChunkStream(request.model, chat)
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    feed = get_mode(mode_name).feed(lambda model, text: queue.put_nowait((model, text)))
    splitter = ThinkSplit(request.stops, thinking=THINK_END not in asked.prefill, keep_tag=not chat)
    result: dict[str, Any] = {}

    async def work() -> None:
        async with service.slot():
            trace = await service.run(asked, mode_name, request, 0, watch=lambda t: t.subscribe(feed))
        feed.finish(trace)
        result["trace"] = trace

    task = asyncio.ensure_future(work())
    getter: asyncio.Future[tuple[str, str]] | None = None
    try:
        if chat:
            yield chunks.chunk({"role": "assistant", "content": ""})
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
                    yield chunks.piece(part, piece, model)
            if splitter.stopped and not task.done():
                task.cancel()  # a stop string ended the text: stop generating
            if task.done() and queue.empty():
                break
        if not task.cancelled() and task.exception() is not None:
            yield chunks.error(task.exception())  # type: ignore[arg-type]
            yield chunks.DONE
            return
        for part, piece in splitter.feed("", final=True):
            yield chunks.piece(part, piece)
        trace = result.get("trace")
        yield chunks.chunk({}, finish=finish_reason(trace, splitter.stopped) if trace else "stop")
        if (request.stream_options or {}).get("include_usage") and trace is not None:
            yield chunks.usage(trace)
        yield chunks.DONE
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
    # Plain argparse: server_commands.api_command builds this command line for the API's own
    # managed process (started and stopped like a vLLM server); users run `splitreason serve --api`.
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
