"""vLLM's HTTP API as it is on the wire, for engine.py: the connection settings, the completion
request body, the replies read (usage, streamed events, error bodies, model list, metrics) and
what a failed request says about its server (an EngineError kind). engine.py keeps the client's
behaviour: replicas, session affinity, recorded Calls, Completions, the ways round a missing route."""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from functools import cache
from typing import Any

import httpx

from splitcli.errors import EngineErrorKind

# A vLLM server we did not start closes a connection idle for 5 s (its default keep-alive); httpx
# would reuse one for 5 s too. A request sent on a connection the server is closing at that moment
# dies with a reset (ReadError), likelier the busier either side's event loop. Dropping idle
# connections after 2 s leaves 3 s of slack; a new localhost connection costs a fraction of a ms.
CLIENT_KEEPALIVE_S = 2.0


def http_client(urls: list[str], timeout: float, max_connections: int) -> httpx.AsyncClient:
    """The connection pool one model's client (and its twins) share."""
    # Building an SSL context costs ~45 ms: only https endpoints get one, and they share it.
    verify: ssl.SSLContext | bool = _ssl_context() if any(url.startswith("https") for url in urls) else False
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=5.0), trust_env=False, verify=verify,
                             limits=httpx.Limits(max_connections=max_connections,
                                                 max_keepalive_connections=max_connections,
                                                 keepalive_expiry=CLIENT_KEEPALIVE_S))


@cache
def _ssl_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def completion_body(model_name: str, prompt: object, max_tokens: int, temperature: float, top_p: float,
                    seed: int | None, stop: list[str] | None, stream: bool, skip_special_tokens: bool,
                    logprobs: int | None = None, token_ids: bool = True, min_tokens: int = 0) -> dict[str, Any]:
    """A /v1/completions body: prompts as they are (token ids, no special tokens added), stop
    strings kept in the text, token ids back, usage in the last streamed event; `min_tokens` before
    any stop string may end it (vLLM's own sampling parameter)."""
    body: dict[str, Any] = {
        "model": model_name, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature,
        "top_p": top_p, "return_token_ids": token_ids, "skip_special_tokens": skip_special_tokens,
        "include_stop_str_in_output": True, "add_special_tokens": False,
    }
    if stop:
        body["stop"] = stop
    if seed is not None:
        body["seed"] = seed
    if logprobs is not None:
        body["logprobs"] = logprobs
    if min_tokens:
        body["min_tokens"] = min_tokens
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


@dataclass(frozen=True)
class Usage:
    """A reply's token counts (OpenAI's `usage`, vLLM's cached prompt tokens in its details)."""

    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int

    @classmethod
    def read(cls, usage: dict[str, Any]) -> Usage:
        return cls(usage.get("prompt_tokens", 0), (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0,
                   usage.get("completion_tokens", 0))


def sse_event(line: str) -> Any:
    """The JSON of one line of a streamed reply; None for the lines between events and the [DONE]."""
    if not line.startswith("data: ") or line == "data: [DONE]":
        return None
    return json.loads(line[6:])


def error_message(response: httpx.Response) -> str:
    """What a failed reply says went wrong, in one short line."""
    try:
        data = response.json()
        message = data.get("error", {}).get("message") if isinstance(data.get("error"), dict) else data.get("message")
        return " ".join(str(message or data).split())[:300]  # pydantic's list of errors spans lines
    except ValueError:
        return " ".join(f"HTTP {response.status_code}: {response.text[:200]}".split())


def failure_kind(exc: Exception) -> EngineErrorKind:
    """What a request that got no (readable) reply says about its server."""
    # A reset (ReadError) or a reply cut off (RemoteProtocolError) is a server that went away.
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.ReadError | httpx.RemoteProtocolError):
        return "unreachable"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    return "server_error"


def refusal_kind(status_code: int) -> EngineErrorKind:
    """A reply other than 200: the request was wrong for this server (4xx), or the server failed (5xx)."""
    return "rejected" if status_code < 500 else "server_error"


def route_failure(role: str, url: str, route: str, response: httpx.Response) -> tuple[str, bool]:
    """Why one of our routes did not answer, and whether it is missing for the rest of the command
    (404/405: a server we did not start; 501: our route, on a vLLM that cannot serve it) rather
    than failing on this request."""
    status = response.status_code
    if status in (404, 405):
        return f"the {role} server at {url} has no {route} route (not started by splitreason)", True
    if status == 501:
        return f"the {route} route of the {role} server at {url} cannot serve: {error_message(response)}", True
    return f"the {route} route of the {role} server at {url} failed ({error_message(response)})", False


def served_models(response: httpx.Response) -> dict[str, dict[str, Any]]:
    """GET /v1/models by model id (nothing when the server answered with an error)."""
    entries = response.json().get("data", []) if response.status_code == 200 else []
    return {entry.get("id"): entry for entry in entries}


def vllm_version(response: httpx.Response) -> str | None:
    """GET /version's answer, if the server has that route."""
    try:
        return response.json().get("version") if response.status_code == 200 else None
    except ValueError:
        return None


def metric_totals(text: str) -> dict[str, float]:
    """Prometheus metrics summed over their labels, e.g. `vllm:num_requests_running`."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + float(sample.value)
    return totals


def kv_cache_tokens(text: str) -> int | None:
    """Tokens the server's KV cache holds (vLLM's `vllm:cache_config_info`: blocks x block size),
    summed over its engines; None when it does not say."""
    from prometheus_client.parser import text_string_to_metric_families

    total = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("vllm:cache_config_info"):
                blocks, size = sample.labels.get("num_gpu_blocks", ""), sample.labels.get("block_size", "")
                if blocks.isdigit() and size.isdigit():
                    total = (total or 0) + int(blocks) * int(size)
    return total
