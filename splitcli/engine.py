"""Async client for vLLM's OpenAI-compatible completions API (plus its tokenize endpoints).

Requests are spread round-robin over a model's replicas. Every request is recorded as a Call.
The connection (pool, replicas, session affinity, what the server serves) is engine_connection.py;
what requests and replies look like on the wire, engine_wire.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from splitcli.engine_connection import ModelConnection
from splitcli.engine_route import LIVE_PATH
from splitcli.engine_route import PATH as CONTINUATIONS_PATH
from splitcli.engine_wire import Usage, completion_body, route_failure, sse_event
from splitcli.errors import EngineError
from splitcli.trace import Call


@dataclass(frozen=True)
class Prefixed:
    """A token-id prompt as a shared base plus its own tail: many probes of one context send the
    same base, and it is turned into JSON once per request instead of once per prompt."""

    base: list[int]
    tail: list[int]

    def __len__(self) -> int:
        return len(self.base) + len(self.tail)

    @property
    def ids(self) -> list[int]:
        return self.base + self.tail


Prompt = list[int] | str | Prefixed


@dataclass(frozen=True)
class LiveRequest:
    """A context held alive in one server's engine (see `EngineClient.live_open`)."""

    id: str
    url: str
    prompt: list[int]


@dataclass
class Completion:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    logprobs: list[float] = field(default_factory=list)  # of each generated token, when asked for
    top_logprobs: list[dict[str, float]] = field(default_factory=list)  # per token: the top alternatives
    # Text of each streamed delta with its token count, to cut a completion at a token boundary.
    pieces: list[tuple[str, int]] = field(default_factory=list)

    def add(self, text: str, ids: list[int], on_delta: Callable[[str, list[int]], None] | None) -> None:
        """One streamed piece: appended, and shown to `on_delta` when it holds anything."""
        self.text += text
        self.token_ids += ids
        self.pieces.append((text, len(ids)))
        if on_delta is not None and (text or ids):
            on_delta(text, ids)

    @property
    def ended_with_eos(self) -> bool:
        """The model ended its text. vLLM says finish_reason 'stop' with no stop_reason for the
        tokenizer's EOS, and with the token id as stop_reason for the other EOS ids a model's
        generation_config lists (Qwen2.5, Qwen3 and Llama 3 have several); we never send stop
        token ids of our own, so an integer stop_reason is always an end of text."""
        return self.finish_reason == "stop" and (self.stop_reason is None or isinstance(self.stop_reason, int))

    @property
    def ended_by(self) -> str | None:
        """A segment's finish reason for this completion: 'eos' for an end of text, else vLLM's."""
        return "eos" if self.ended_with_eos else self.finish_reason

    @property
    def stopped_on_string(self) -> bool:
        return self.finish_reason == "stop" and isinstance(self.stop_reason, str)


class EngineClient(ModelConnection):
    """One model (small or big) behind one or several vLLM servers: the requests splitreason makes
    (tokenize, completions, streams, our probe and live routes), each recorded as a Call.

    One client (and its connection pool) serves a whole command; each Session works on a `bound`
    twin that shares the pool but records its calls into that session's trace (see ModelConnection).
    """

    async def _send(self, path: str, body: dict[str, Any], kind: str, url: str | None = None, *,
                    call: Call | None = None) -> tuple[httpx.Response, Call, str]:
        """POST to `url` or the next replica: the response, its (timed, not yet recorded) Call, and the
        URL. A `call` given is one the trace keeps: cancelled before its answer (a probe past the cut),
        it is recorded as such, since closing the connection makes the server abort it."""
        url = url or self._url()
        kept = call is not None
        call = call or Call(self.role, kind, 0.0, 0.0)
        call.start, call.url = self._clock(), url
        try:
            response = await self._http.post(f"{url}{path}", content=_encode(body), headers=self._headers)
        except httpx.HTTPError as exc:
            raise self._failure(url, exc) from None
        except asyncio.CancelledError:
            if kept:
                call.end, call.cancelled = self._clock(), True
                self._record(call)
            raise
        finally:
            call.end = self._clock()
        return response, call, url

    async def _post(self, path: str, body: dict[str, Any], kind: str,
                    call: Call | None = None) -> tuple[dict[str, Any], Call]:
        """POST and read the JSON answer; the call is recorded, answered or cancelled."""
        response, call, url = await self._send(path, body, kind, call=call or Call(self.role, kind, 0.0, 0.0))
        if response.status_code != 200:
            raise self._refused(url, response)
        self._record(call)
        return response.json(), call

    # -- tokenizer endpoints (they apply the model's own chat template)
    async def tokenize_chat(self, messages: list[dict[str, str]], continue_final: bool = False) -> tuple[list[int], int]:
        """Token ids of the model's own chat template applied to `messages`, and its context length.
        `continue_final`: the last message is an assistant turn the model goes on with."""
        body = {"model": self.model_name, "messages": messages, "add_generation_prompt": not continue_final,
                "continue_final_message": continue_final}
        data, _ = await self._post("/tokenize", body, "tokenize")
        return list(data["tokens"]), int(data.get("max_model_len") or 0)

    async def tokenize(self, text: str) -> list[int]:
        body = {"model": self.model_name, "prompt": text, "add_special_tokens": False}
        data, _ = await self._post("/tokenize", body, "tokenize")
        return list(data["tokens"])

    async def detokenize(self, token_ids: list[int]) -> str:
        data, _ = await self._post("/detokenize", {"model": self.model_name, "tokens": token_ids}, "detokenize")
        return str(data["prompt"])

    # -- our route in the vLLM servers we launch (splitcli/engine_route.py)
    async def continuations(self, prompt: Prompt, first: int, max_tokens: int,
                            marker: str) -> tuple[list[str] | None, str]:
        """Greedy continuations after every prefix prompt[:n], first <= n <= len(prompt), with the
        prompt sent once: where a continuation cannot hold `marker` (see engine_route), only a start
        of it. (None, why) when the server has no such route (one we did not start) or it failed on
        this request; a missing route is asked for no more, a failing one again on the next probe
        (one request's failure must not send a whole eval down the slow path)."""
        if self._info.get("continuations") is False:
            return None, str(self._info.get("continuations_why", "the server has no probe route"))
        body = {"prompt": prompt, "first": first, "max_tokens": max_tokens, "marker": marker,
                "skip_special_tokens": self.skip_special_tokens}
        response, call, url = await self._send(CONTINUATIONS_PATH, body, "probe",
                                               call=Call(self.role, "probe", 0.0, 0.0, prompt_tokens=len(prompt), path="route"))
        if response.status_code != 200:  # same answers over the OpenAI API, in more time
            why = self._no_route("continuations", url, response, "probe", "probing over the OpenAI API instead")
            call.why, call.prompts = why, 0
            self._record(call)
            return None, why
        data = response.json()
        call.prompts = 1 + int(data.get("decoded", 0))
        call.cached_tokens = int(data.get("cached_tokens", 0))
        self._record(call)
        return [str(text) for text in data["texts"]], ""

    # -- live requests in our route (splitcli/engine_route.py): a warm context that takes only new tokens
    async def live_open(self, prompt: list[int]) -> LiveRequest | None:
        """Keep `prompt` alive in the engine for a later `live_stream`. None when the server has no
        live route (one we did not start, or a vLLM without streaming input): warm up as before."""
        if self._info.get("live") is False:
            return None
        response, call, url = await self._send(LIVE_PATH, {"op": "open", "prompt": prompt}, "warm",
                                               call=Call(self.role, "warm", 0.0, 0.0, prompt_tokens=len(prompt)))
        if response.status_code != 200:
            self._no_route("live", url, response, "live", "warming up over the OpenAI API instead")
            return None
        data = response.json()
        call.cached_tokens = int(data.get("cached_tokens", 0))
        self._record(call)
        return LiveRequest(str(data["id"]), url, list(prompt))

    async def live_close(self, live: LiveRequest) -> None:
        """End a live request that will not be used (closing one already ended is harmless)."""
        await self._send(LIVE_PATH, {"op": "close", "id": live.id}, "warm", live.url)

    async def live_count(self, url: str) -> int:
        """How many live requests the server at `url` holds."""
        response, _, _ = await self._send(LIVE_PATH, {"op": "count"}, "warm", url)
        return int(response.json()["open"])

    async def live_stream(self, live: LiveRequest, tokens: list[int], *, max_tokens: int, temperature: float = 0.0,
                          top_p: float = 1.0, seed: int | None = None,
                          on_delta: Callable[[str, list[int]], None] | None = None,
                          result: Completion | None = None) -> Completion | None:
        """As `stream`, for the live request's context + `tokens` (only those are sent); the live
        request ends with it. None, with nothing generated, when the server no longer holds it."""
        body = {"op": "append", "id": live.id, "tokens": tokens, "max_tokens": max_tokens, "temperature": temperature,
                "top_p": top_p, "seed": seed, "skip_special_tokens": self.skip_special_tokens}
        call = Call(self.role, "generate", self._clock(), 0.0, url=live.url)
        result = result if result is not None else Completion()
        with self._streamed(live.url, call, result, len(live.prompt) + len(tokens), len(live.prompt)):
            async with self._http.stream("POST", f"{live.url}{LIVE_PATH}", json=body, headers=self._headers) as response:
                if response.status_code != 200:
                    await response.aread()
                    if response.status_code != 404:  # 404: the server ended it (it keeps a few at most)
                        self._no_route("live", live.url, response, "live", "handing off over the OpenAI API instead")
                    return None
                async for line in response.aiter_lines():
                    if not line:
                        continue
                    event = json.loads(line)
                    result.add(event.get("text", ""), list(event.get("token_ids") or []), on_delta)
                    if event.get("finish_reason") is not None:
                        result.finish_reason, result.stop_reason = event["finish_reason"], event.get("stop_reason")
                        result.prompt_tokens, result.cached_tokens = event["prompt_tokens"], event["cached_tokens"]
                if result.finish_reason is None:
                    raise EngineError(f"{self.role} model at {live.url} ended a live request without finishing it",
                                      "server_error")
        return result

    @contextlib.contextmanager
    def _streamed(self, url: str, call: Call, result: Completion, prompt_tokens: int = 0,
                  cached_tokens: int = 0) -> Iterator[None]:
        """Around one streamed generation: transport errors become one EngineError line, a cancelled
        task marks its call cancelled, and the call is recorded once it finished or was cancelled,
        with what arrived (the token counts given here where the server sent none)."""
        try:
            yield
        except httpx.HTTPError as exc:
            raise self._failure(url, exc) from None
        except asyncio.CancelledError:
            call.cancelled = True
            raise
        finally:
            call.end = self._clock()
            call.prompt_tokens = result.prompt_tokens or prompt_tokens
            call.cached_tokens = result.cached_tokens or cached_tokens
            call.completion_tokens = call.completion_tokens or len(result.token_ids)
            if call.cancelled or result.finish_reason is not None:
                self._record(call)

    def _no_route(self, key: str, url: str, response: httpx.Response, route: str, instead: str) -> str:
        """One of our routes is missing (404/405: a server we did not start: vLLM's own API from now on)
        or failing (it runs inside vLLM and leans on its internals: vLLM's API for this request). Said
        once per command either way, since the way round costs more; returns why, for the trace."""
        from splitcli import console

        why, missing = route_failure(self.role, url, route, response)
        if missing:
            self._info[key] = False
            self._info[f"{key}_why"] = why
        if not self._info.get(f"{key}_said"):
            self._info[f"{key}_said"] = True
            console.warn(f"{why}; {instead}" + ("" if missing else " for that request (the trace counts each time)"))
        return why

    # -- completions
    def _body(self, prompt: Prompt | list[Prompt], max_tokens: int, temperature: float, top_p: float,
              seed: int | None, stop: list[str] | None, stream: bool, logprobs: int | None = None,
              token_ids: bool = True, min_tokens: int = 0) -> dict[str, Any]:
        # A method, not just engine_wire's function: tests change what every completion asks for here.
        return completion_body(self.model_name, prompt, max_tokens, temperature, top_p, seed, stop, stream,
                               self.skip_special_tokens, logprobs, token_ids, min_tokens)

    async def complete(self, prompts: list[Prompt], *, max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                       seed: int | None = None, stop: list[str] | None = None, kind: str = "generate",
                       logprobs: int | None = None, n: int = 1, token_ids: bool = True,
                       path: str | None = None, why: str | None = None, min_tokens: int = 0) -> list[Completion]:
        """Several prompts in one request; `n` samples of each (vLLM seeds sample j with seed + j, so
        samples of one prompt differ even under a seed). Completions in order: prompt by prompt, then
        sample by sample. `token_ids=False` when only the text matters: vLLM returns every choice's
        prompt ids next to its output ids, which for 64 probes of a 16k context is a million ids."""
        body = self._body(prompts, max_tokens, temperature, top_p, seed, stop, stream=False, logprobs=logprobs,
                          token_ids=token_ids, min_tokens=min_tokens)
        if n > 1:
            body["n"] = n
        data, call = await self._post("/v1/completions", body, kind,
                                      Call(self.role, kind, 0.0, 0.0, prompts=len(prompts) * n, path=path, why=why))
        usage = Usage.read(data.get("usage") or {})
        call.prompt_tokens, call.cached_tokens = usage.prompt_tokens, usage.cached_tokens
        call.completion_tokens = usage.completion_tokens
        results = [Completion() for _ in range(len(prompts) * n)]
        for choice in data["choices"]:
            result = results[choice["index"]]
            result.text = choice["text"]
            result.token_ids = list(choice.get("token_ids") or [])
            result.finish_reason = choice.get("finish_reason")
            result.stop_reason = choice.get("stop_reason")
            result.pieces = [(result.text, len(result.token_ids))]
            result.logprobs = list((choice.get("logprobs") or {}).get("token_logprobs") or [])
            result.top_logprobs = [dict(top or {}) for top in (choice.get("logprobs") or {}).get("top_logprobs") or []]
        if len(results) == 1:
            results[0].prompt_tokens, results[0].cached_tokens = call.prompt_tokens, call.cached_tokens
        return results

    async def stream(self, prompt: Prompt, *, max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                     seed: int | None = None, stop: list[str] | None = None, min_tokens: int = 0,
                     on_delta: Callable[[str, list[int]], None] | None = None,
                     result: Completion | None = None) -> Completion:
        """One prompt, streamed; `on_delta(text, token_ids)` sees every piece as it arrives, and
        `result` (if given) fills as they do. Cancelling the task closes the HTTP stream, which makes
        vLLM abort the request; the call is recorded as cancelled with what arrived."""
        body = self._body(prompt, max_tokens, temperature, top_p, seed, stop, stream=True, min_tokens=min_tokens)
        url = self._url()
        call = Call(self.role, "generate", self._clock(), 0.0, url=url)
        result = result if result is not None else Completion()
        with self._streamed(url, call, result):
            async with self._http.stream("POST", f"{url}/v1/completions", json=body, headers=self._headers) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise self._refused(url, response)
                async for line in response.aiter_lines():
                    event = sse_event(line)
                    if event is None:
                        continue
                    if "error" in event:
                        raise EngineError(f"{self.role} model at {url} failed mid-request: {event['error']}",
                                          "server_error")
                    for choice in event.get("choices", []):
                        if choice.get("finish_reason") is not None:
                            result.finish_reason = choice["finish_reason"]
                            result.stop_reason = choice.get("stop_reason")
                        result.add(choice.get("text", ""), list(choice.get("token_ids") or []), on_delta)
                    if event.get("usage"):
                        usage = Usage.read(event["usage"])
                        result.prompt_tokens, result.cached_tokens = usage.prompt_tokens, usage.cached_tokens
                        call.completion_tokens = usage.completion_tokens
        return result


def _encode(body: dict[str, Any]) -> bytes:
    """The request as JSON; Prefixed prompts with each base written once and spliced in."""
    prompts = body.get("prompt")
    if not (isinstance(prompts, list) and any(isinstance(p, Prefixed) for p in prompts)):
        return json.dumps(body, default=_plain).encode()
    bases: dict[int, str] = {}
    parts = []
    for prompt in prompts:
        if isinstance(prompt, Prefixed):
            base = bases.setdefault(id(prompt.base), ",".join(map(str, prompt.base)))
            tail = ",".join(map(str, prompt.tail))
            parts.append(f"[{base}{',' if base and tail else ''}{tail}]")
        else:
            parts.append(json.dumps(prompt))
    head = json.dumps({**body, "prompt": None})
    return head.replace('"prompt": null', f'"prompt": [{",".join(parts)}]', 1).encode()


def _plain(value: object) -> object:
    if isinstance(value, Prefixed):
        return value.ids
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
