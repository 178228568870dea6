"""The Trace: ordered segments, each written by one model, plus the HTTP calls that produced them.

It is the one data structure between a mode, the terminal renderer, the saved JSONL, eval metrics
and the API. Times are seconds since the trace started.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, TypeAdapter, ValidationError

from splitcli.errors import UsageError

TRACE_VERSION = 4
# Version 1 had no served/kept/dropped fields, version 2 no probe paths, version 3 no conversation
# or prefill: their defaults apply.
READS_VERSIONS = (1, 2, 3, 4)
THINK_END = "</think>"  # where a reasoning model's thinking ends and its answer begins
Model = Literal["small", "big"]
MODELS: tuple[Model, Model] = ("small", "big")


STRICT = ConfigDict(extra="forbid")  # reading a saved trace: unknown fields are errors


@dataclass
class Call:
    """One HTTP request to a model server."""

    __pydantic_config__ = STRICT

    model: Model
    kind: str  # generate | probe | score | warm | tokenize | detokenize
    start: float
    end: float
    prompts: int = 1
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    cancelled: bool = False  # a stream closed before its end (vLLM aborts the request)
    path: str | None = None  # probes: "route" (our continuations route) or "openai" (every prefix resent)
    why: str | None = None  # ... and why not the route (or why the route failed)
    url: str | None = None  # the replica that answered (a session keeps one per model)

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class Segment:
    """A stretch of text one model wrote (tags included as the small model wrote or closed them)."""

    __pydantic_config__ = STRICT

    model: Model
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    start: float = 0.0
    end: float | None = None
    first_token: float | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    finish_reason: str | None = None
    # Tokens generated for this segment and then cut away (a draft past the cut): spent, not kept.
    dropped_tokens: int = 0
    # False for text that is not part of the answer (a beam candidate that lost): shown dimmed.
    kept: bool = True
    # Which candidate of a beam wrote it (logprob-subselect), else None.
    branch: int | None = None
    # Seconds it waited to start with other sessions' big segments (gathering.py), before any request.
    waited: float = 0.0

    @property
    def tokens(self) -> int:
        return len(self.token_ids)

    @property
    def spent_tokens(self) -> int:
        """Tokens the model generated for this segment, kept or not."""
        return len(self.token_ids) + self.dropped_tokens


@dataclass
class Trace:
    __pydantic_config__ = STRICT

    question: str
    mode: str
    profile: str = ""
    # The turns before the question (system, user, assistant: the API's multi-turn requests), and
    # the start of the answer the model continues (a final assistant message).
    conversation: list[dict[str, str]] = field(default_factory=list)
    prefill: str = ""
    session_id: str = ""  # sent as X-Session-ID with every request, for routers that keep a session on one engine
    models: dict[str, str] = field(default_factory=dict)
    # What each server really serves: name, root (path or HF id), revision, vLLM version.
    served: dict[str, dict[str, Any]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    sampling: dict[str, Any] = field(default_factory=dict)
    handoff: str = "text"  # token_ids when both models share a tokenizer
    prompt_tokens: int = 0  # of the prompt the budget counts (the first model's)
    # What a mode measures beyond segments and calls (e.g. speculative decoding's acceptance).
    extra: dict[str, Any] = field(default_factory=dict)
    segments: list[Segment] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    wall_seconds: float | None = None
    error: str | None = None
    version: int = TRACE_VERSION

    def __post_init__(self) -> None:
        self._t0 = time.perf_counter()
        self._listeners: list[Callable[[str, Segment], None]] = []

    # -- building
    def start_clock(self) -> None:
        """Times count from here: the first request, not the setting up of HTTP clients."""
        self._t0 = time.perf_counter()
        self.started_at = time.time()

    def now(self) -> float:
        return time.perf_counter() - self._t0

    def subscribe(self, listener: Callable[[str, Segment], None]) -> None:
        """Called with (event, segment) on `open`, `update` and `close`."""
        self._listeners.append(listener)

    def emit(self, event: str, segment: Segment) -> None:
        for listener in self._listeners:
            listener(event, segment)

    def open_segment(self, model: Model) -> Segment:
        segment = Segment(model=model, start=self.now())
        self.segments.append(segment)
        self.emit("open", segment)
        return segment

    def close_segment(self, segment: Segment, finish_reason: str | None) -> None:
        segment.end = self.now()
        segment.finish_reason = finish_reason
        self.emit("close", segment)

    def finish(self, error: str | None = None) -> None:
        self.wall_seconds = self.now()
        self.error = error
        for segment in self.segments:
            if segment.end is None:
                segment.end = self.wall_seconds

    # -- reading
    @property
    def kept_segments(self) -> list[Segment]:
        return [segment for segment in self.segments if segment.kept]

    @property
    def text(self) -> str:
        return "".join(segment.text for segment in self.kept_segments)

    @property
    def answer(self) -> str | None:
        return final_answer(self.text)

    def stats(self) -> dict[str, Any]:
        """Derived numbers: tokens and time per model, offload share, handoffs and their cost.
        `tokens` counts what the answer keeps; `spent_tokens` also what was generated and thrown away
        (drafts cut by a probe, candidates that lost), which is what decode speed is measured on."""
        kept = self.kept_segments
        tokens = {m: sum(s.tokens for s in kept if s.model == m) for m in MODELS}
        spent = {m: sum(s.spent_tokens for s in self.segments if s.model == m) for m in MODELS}
        generated = sum(tokens.values())
        seconds = {m: sum(c.seconds for c in self.calls if c.model == m) for m in MODELS}
        gen_seconds = {m: sum(c.seconds for c in self.calls if c.model == m and c.kind == "generate") for m in MODELS}
        handoffs = [(prev, seg) for prev, seg in itertools.pairwise(kept) if prev.model != seg.model]
        costs = [
            {
                "to": seg.model,
                # Only measured when streamed: a whole completion's time is not a time to first token.
                # A wait for the big model's wave (gathering) is not the handoff's: it is `waited_seconds`.
                "latency_s": round(seg.first_token - (prev.end or seg.start) - seg.waited, 4)
                if seg.first_token is not None else None,
                "prompt_tokens": seg.prompt_tokens,
                "uncached_prompt_tokens": seg.prompt_tokens - seg.cached_tokens,
            }
            for prev, seg in handoffs
        ]
        http = sum(c.seconds for c in self.calls)
        busy = _union_seconds([(c.start, c.end) for c in self.calls])
        wall = self.wall_seconds if self.wall_seconds is not None else self.now()
        latencies = [c["latency_s"] for c in costs if c["latency_s"] is not None]
        return {
            "tokens": tokens,
            "generated_tokens": generated,
            "spent_tokens": spent,
            "dropped_tokens": {m: spent[m] - tokens[m] for m in MODELS},
            "offload_share": round(tokens["big"] / generated, 4) if generated else 0.0,
            "handoffs": len(handoffs),
            "waited_seconds": round(sum(s.waited for s in self.segments), 4),  # for waves of big segments
            "seconds": {m: round(v, 4) for m, v in seconds.items()},
            "generate_seconds": {m: round(v, 4) for m, v in gen_seconds.items()},
            "tokens_per_second": {m: round(spent[m] / gen_seconds[m], 1) if gen_seconds[m] else None for m in MODELS},
            "wall_seconds": round(wall, 4),
            "http_seconds": round(http, 4),
            "http_busy_seconds": round(busy, 4),  # overlapping requests counted once
            "requests": len(self.calls),
            "probe_calls": probe_paths(self.calls),
            "handoff_costs": costs,
            "mean_handoff_latency_s": round(sum(latencies) / len(latencies), 4) if latencies else None,
            "answer": self.answer,
            "ended_by": self.ended_by(),
        }

    def ended_by(self) -> str:
        """What ended the run: 'error', 'budget' (the token budget ran out first) or 'model' (it
        finished: end of text, or a stop)."""
        if self.error is not None:
            return "error"
        last = self.kept_segments[-1].finish_reason if self.kept_segments else None
        return "budget" if last == "length" else "model"

    # -- storage
    def to_dict(self) -> dict[str, Any]:
        data = {key: value for key, value in asdict(self).items() if not key.startswith("_")}
        data["stats"] = self.stats()
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Trace:
        """A trace from its saved form; raises ValueError saying which field does not fit."""
        if not isinstance(data, dict):
            raise ValueError(f"a trace is a JSON object, this line holds a {type(data).__name__}")
        version = data.get("version")
        if version not in READS_VERSIONS:
            raise ValueError(f"trace version {version!r} is not supported: splitreason {_package_version()} reads "
                             f"versions {', '.join(map(str, READS_VERSIONS))} (use the splitreason that wrote it)")
        try:
            trace = _trace_adapter().validate_python({k: v for k, v in data.items() if k != "stats"})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            if first["type"] == "unexpected_keyword_argument":
                raise ValueError(f"unknown field {where!r} (written by a newer splitreason? this is splitreason "
                                 f"{_package_version()}, trace version {TRACE_VERSION})") from None
            raise ValueError(f"{where}: {first['msg']}") from None
        trace.version = TRACE_VERSION
        return trace

    def append_jsonl(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:
            handle.write(json.dumps(self.to_dict()) + "\n")


def probe_paths(calls: list[Call]) -> dict[str, int]:
    """Probe calls by the way they went: through the route, over the OpenAI API, or a route that failed
    (then the OpenAI API answered that probe too)."""
    counts = {"route": 0, "openai": 0, "route_failed": 0}
    for call in calls:
        if call.kind == "probe":
            key = "route_failed" if call.path == "route" and call.why else call.path or "openai"
            counts[key] = counts.get(key, 0) + 1
    return counts


class SegmentFeed:
    """The answer's text as it is generated, in (model, text) pieces for a listener that cannot take
    anything back (a terminal, an HTTP stream): text at once, except a `provisional` model's, which
    comes as it becomes final (splitreason's big drafts: up to where the probes say no cut can fall,
    then the rest once the segment is closed). For a mode
    that may replace text it has shown (beams, rewrites: `defer`), nothing until the end, then the
    kept text. Subscribe it to a Trace; call `finish` last."""

    def __init__(self, sink: Callable[[Model, str], None], defer: bool = False,
                 provisional: tuple[Model, ...] = ("big",)) -> None:
        self.sink = sink
        self.defer = defer
        self.provisional = provisional
        self.current: Segment | None = None
        self.sent = 0

    def __call__(self, event: str, segment: Segment) -> None:
        if self.defer:
            return
        if event == "open" and segment is not self.current:
            self._flush()
            self.current, self.sent = segment, 0
        elif event == "update" and segment.model not in self.provisional and segment is self.current:
            self._send(segment, segment.text[self.sent:])
        elif event == "final" and segment is self.current:  # a provisional segment's start can no longer change
            upto = min(getattr(segment, "final_chars", 0), len(segment.text))
            if upto > self.sent:
                self.sink(segment.model, segment.text[self.sent:upto])
                self.sent = upto

    def _send(self, segment: Segment, text: str) -> None:
        if text:
            self.sink(segment.model, text)
        self.sent = len(segment.text)

    def _flush(self) -> None:
        if self.current is not None and self.current.kept:  # a draft thrown away is never shown
            self._send(self.current, self.current.text[self.sent:])

    def finish(self, trace: Trace) -> None:
        if self.defer:
            for segment in trace.kept_segments:
                if segment.text:
                    self.sink(segment.model, segment.text)
        else:
            self._flush()


def load_jsonl(path: Path) -> Iterator[Trace]:
    """Traces saved with `--save`, one JSON document per line."""
    if path.is_dir():
        raise UsageError(f"{path}: a folder, not a file (give a JSONL file written by `splitreason run --save`)")
    if not path.is_file():
        raise UsageError(f"{path}: no such file (give a JSONL file written by `splitreason run --save`)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a text file (give a JSONL file written by `splitreason run --save`)") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield Trace.from_dict(json.loads(line))
        except json.JSONDecodeError:
            raise UsageError(f"{path}: line {number}: not JSON (give a JSONL file written by `splitreason run --save`)") from None
        except ValueError as exc:
            raise UsageError(f"{path}: line {number}: not a splitreason trace: {exc}") from None


@cache
def _trace_adapter() -> TypeAdapter[Trace]:
    return TypeAdapter(Trace)


def _package_version() -> str:
    from splitcli import __version__

    return __version__


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def answer_region(text: str) -> str:
    """Where the answer is: the text after the last </think>, or all of it when there is none."""
    return text.rsplit(THINK_END, 1)[-1]


def last_boxed(text: str) -> str | None:
    """Content of the last non-empty \\boxed{...} (or \\fbox{...}) in `text`; an empty box (an echoed
    instruction) is not an answer."""
    for match in reversed(list(re.finditer(r"\\(?:boxed|fbox)\s*\{", text))):
        depth, begin = 0, match.end()
        for index in range(begin, len(text)):
            char = text[index]
            if char == "{":
                depth += 1
            elif char == "}":
                if depth == 0:
                    content = text[begin:index].strip()
                    if content:
                        return content
                    break
                depth -= 1
    return None


def final_answer(text: str) -> str | None:
    """The boxed answer of a response: the last non-empty box after the last </think>."""
    return last_boxed(answer_region(text))


def strip_tags(text: str, open_tag: str, close_tag: str) -> str:
    """The text as the big model sees it: no tags."""
    return re.sub(f"{re.escape(open_tag)}|{re.escape(close_tag)}", "", text)
