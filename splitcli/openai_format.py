"""OpenAI's wire format as the API speaks it: the request shapes, the prompt a chat makes, the
thinking split from the answer, usage and finish reasons, and errors in OpenAI's shape (library
failures turned into status codes). Pure rules: no app, no sessions (those are in api.py)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from splitcli.errors import EngineError, EngineErrorKind, ServerError, SplitError, UsageError
from splitcli.trace import THINK_END, Trace

BASE_ID = "splitreason"


# ---------------------------------------------------------------- errors in OpenAI's shape


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.headers = status, message, kind, param, headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}


# A server we cannot reach makes this service unavailable for now (clients retry a 503); anything
# else a server did wrong is a bad gateway.
ENGINE_ERROR_STATUS: dict[EngineErrorKind, tuple[int, str]] = {
    "unreachable": (503, "service_unavailable"),
    "timeout": (502, "upstream_error"),
    "rejected": (502, "upstream_error"),
    "server_error": (502, "upstream_error"),
}


def error_reply(exc: SplitError, model: str) -> ApiError:
    """The API's answer to a library failure while `model` was answering."""
    if isinstance(exc, EngineError):
        status, kind = ENGINE_ERROR_STATUS[exc.kind]
        if exc.kind == "unreachable":
            return ApiError(status, f"{exc.server or 'a model server'} is down; model {model!r} cannot answer now", kind)
        return ApiError(status, str(exc), kind)
    if isinstance(exc, UsageError):
        return ApiError(400, str(exc), "invalid_request_error", "messages")
    if isinstance(exc, ServerError):
        return ApiError(503, str(exc), "service_unavailable")
    return ApiError(502, str(exc), "upstream_error")


def invalid_field(loc: tuple[Any, ...] | list[Any], message: str) -> ApiError:
    """A 400 naming the field pydantic or FastAPI found wrong, e.g. `messages.0.role: ...`."""
    where = ".".join(str(part) for part in loc if part != "body")
    return ApiError(400, f"{where}: {message}", "invalid_request_error", where or None)


# ---------------------------------------------------------------- requests


class ApiRequest(BaseModel):
    """What chat and text completion requests share: the model id and the sampling."""

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


class ChatRequest(ApiRequest):
    messages: list[dict[str, Any]] = Field(min_length=1)


class CompletionRequest(ApiRequest):
    prompt: str | list[str]


def parse_request(kind: type[ApiRequest], body: Any) -> Any:
    """A request body validated as `kind`, or the 400 that names what is wrong with it."""
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", "invalid_request_error")
    try:
        return kind.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise invalid_field(first["loc"], first["msg"]) from None


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


# ---------------------------------------------------------------- responses


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


def finish_reason(trace: Trace, stopped: bool) -> str:
    """OpenAI's finish reason: 'stop' for a stop string or an ended text, else 'length'."""
    if stopped:
        return "stop"
    last = trace.kept_segments[-1].finish_reason if trace.kept_segments else None
    return "stop" if last in ("eos", "stop", "handback") else "length"


def _reply_id(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"


def response_body(request: ApiRequest, traces: list[Trace], chat: bool, thinking: bool = True) -> dict[str, Any]:
    """A whole (not streamed) chat or text completion, one choice per trace."""
    created, rid = int(time.time()), _reply_id(chat)
    choices = []
    for index, trace in enumerate(traces):
        if chat:
            reasoning, content, stopped = split_answer(trace.text, request.stops, thinking)
            # vLLM renamed reasoning_content to reasoning, then dropped the old name: clients read either.
            message = {"role": "assistant", "content": content, "reasoning": reasoning, "reasoning_content": reasoning}
            choices.append({"index": index, "message": message, "finish_reason": finish_reason(trace, stopped)})
        else:
            splitter = ThinkSplit(request.stops, keep_tag=True)
            text = "".join(piece for _, piece in splitter.feed(trace.text, final=True))
            choices.append({"index": index, "text": text, "finish_reason": finish_reason(trace, splitter.stopped),
                            "logprobs": None})
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
            "model": request.model, "choices": choices, "usage": usage(traces)}


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


class ChunkStream:
    """The server-sent events of one streamed answer, in OpenAI's chunk format."""

    DONE = "data: [DONE]\n\n"

    def __init__(self, model: str, chat: bool) -> None:
        self.model, self.chat = model, chat
        self.created, self.id = int(time.time()), _reply_id(chat)
        self.object = "chat.completion.chunk" if chat else "text_completion"

    def chunk(self, delta: dict[str, Any], model: str | None = None, finish: str | None = None) -> str:
        """One choice's delta; `model` (small or big) wrote it."""
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if self.chat:
            # Beside OpenAI's fields of the delta, where a client finds extra ones (`delta.model_extra`).
            choice["delta"] = {**delta, **({"splitreason_model": model} if model is not None else {})}
        else:
            choice["text"], choice["logprobs"] = delta.get("content", ""), None
            if model is not None:
                choice["splitreason_model"] = model
        return _event({"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                       "choices": [choice]})

    def piece(self, part: str, text: str, model: str | None = None) -> str:
        """A ThinkSplit piece ('reasoning' or 'content') as a chunk."""
        if self.chat and part == "reasoning":
            return self.chunk({"reasoning": text, "reasoning_content": text}, model)
        return self.chunk({"content": text}, model)

    def usage(self, trace: Trace) -> str:
        """The last chunk a client asks for with stream_options.include_usage."""
        return _event({"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                       "choices": [], "usage": usage([trace])})

    @staticmethod
    def error(error: BaseException) -> str:
        """A failure after the stream began (its status line went out already): an error event."""
        body = error.body() if isinstance(error, ApiError) else ApiError(500, str(error), "internal_error").body()
        return _event(body)
