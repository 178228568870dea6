"""The connection to one model's vLLM servers, under EngineClient (engine.py): the shared pool,
the replicas and each Session's affinity to one, what the server serves (asked once per command),
its metrics, and failed requests worded as EngineErrors of a kind. The requests themselves, and
the Calls that record them, are engine.py's."""

from __future__ import annotations

import asyncio
import copy
import itertools
import time
from collections.abc import Callable
from typing import Any, Self

import httpx

from splitcli.engine_wire import (
    error_message,
    failure_kind,
    http_client,
    kv_cache_tokens,
    metric_totals,
    refusal_kind,
    served_models,
    vllm_version,
)
from splitcli.errors import EngineError, ServerError
from splitcli.trace import Call, Model


class ModelConnection:
    """One model's servers as a command reaches them. One connection (and its pool) serves a whole
    command; `bound` twins share the pool, the replica counts and what was learnt of the server."""

    def __init__(self, role: Model, model_name: str, urls: list[str], start_hint: str,
                 clock: Callable[[], float] = time.perf_counter, record: Callable[[Call], None] | None = None,
                 timeout: float = 600.0, max_connections: int = 64, other_names: tuple[str, ...] = ()) -> None:
        self.role = role
        self.model_name = model_name
        # Names the server may serve the model under instead (for servers we did not start: the HF id).
        self.other_names = other_names
        self.urls = urls
        self.start_hint = start_hint
        self._clock = clock
        self._record = record or (lambda call: None)
        self._next_url = itertools.cycle(urls)
        # Session affinity: each Session's twin keeps one replica for all its calls (its prefix cache
        # is there); a new Session takes the replica with the fewest Sessions on it (shared by twins).
        self._sessions: dict[str, int] = dict.fromkeys(urls, 0)
        # Replicas found unreachable: Sessions that start later take the others (one that dies under a
        # Session fails it, as an engine error: switching would silently lose its prefix cache).
        self._down: set[str] = set()
        self._pinned: str | None = None
        self._headers = {"content-type": "application/json"}
        self.skip_special_tokens = True
        self._owner = True
        self._info: dict[str, Any] = {}  # shared with twins: asked once per command
        self._info_lock = asyncio.Lock()
        self._http = http_client(urls, timeout, max_connections)

    def bound(self, clock: Callable[[], float], record: Callable[[Call], None], session: str = "",
              replica: int | None = None) -> Self:
        """A twin on the same connection pool that times and records calls for one trace, all of them
        to one replica (`replica`, or the least used now), with `session` in the X-Session-ID header
        that routers (vllm-router's consistent hashing, llm-d) hash to keep a session on one engine."""
        twin = copy.copy(self)
        twin._clock, twin._record, twin._owner = clock, record, False
        live = [url for url in self.urls if url not in self._down] or self.urls
        twin._pinned = self.urls[replica] if replica is not None else min(live, key=lambda url: self._sessions[url])
        self._sessions[twin._pinned] += 1
        twin._headers = {**self._headers, **({"x-session-id": session} if session else {})}
        return twin

    @property
    def replica(self) -> int | None:
        """Which of the URLs a bound twin is pinned to."""
        return self.urls.index(self._pinned) if self._pinned is not None else None

    def release(self) -> None:
        """A twin's session ended: its replica has one Session fewer."""
        if self._pinned is not None and not self._owner:
            self._sessions[self._pinned] -= 1
            self._pinned = None

    def _url(self) -> str:
        return self._pinned or next(self._next_url)

    async def aclose(self) -> None:
        if self._owner:
            await self._http.aclose()

    async def describe(self) -> dict[str, Any]:
        """What the server really serves: {name, root, max_model_len, vllm} (asked once, then cached).
        The name requests use is checked against the server's model list here."""
        async with self._info_lock:
            if self._info:
                self.model_name = self._info["name"]
                return self._info
            url, models, version = await self._first_answer(["/v1/models", "/version"])
            served = served_models(models)
            self.model_name = next((name for name in (self.model_name, *self.other_names) if name in served),
                                   self.model_name)
            if self.model_name not in served:
                listed = ", ".join(repr(name) for name in served) or "nothing"
                raise ServerError(  # a set-up mistake, not a failure mid-run
                    f"{self.role} server {url} serves {listed}, not {self.model_name!r} "
                    f"(set {self.role}.served_name to the name it serves)"
                )
            entry = served[self.model_name]
            self._info.update(name=self.model_name, root=entry.get("root"), max_model_len=entry.get("max_model_len"),
                              vllm=vllm_version(version))
            return self._info

    async def metrics(self) -> dict[str, float]:
        """The server's Prometheus metrics summed over labels, e.g. `vllm:num_requests_running` (a
        bound twin's: its replica's)."""
        return metric_totals(await self._metrics_text(self._pinned or self.urls[0]))

    async def kv_cache_tokens(self) -> list[int | None]:
        """Each replica's KV cache size in tokens (None where the server does not report it)."""
        texts = await asyncio.gather(*(self._metrics_text(url) for url in self.urls))
        return [kv_cache_tokens(text) for text in texts]

    async def _metrics_text(self, url: str) -> str:
        try:
            response = await self._http.get(f"{url}/metrics")
        except httpx.HTTPError as exc:
            raise self._failure(url, exc) from None
        return response.text

    async def _first_answer(self, paths: list[str]) -> tuple[str, httpx.Response, httpx.Response]:
        """`paths` from the first replica that answers them all (the ones that do not are marked down)."""
        failure: EngineError | None = None
        for url in [url for url in self.urls if url not in self._down] or self.urls:
            try:
                first, second = await asyncio.gather(*(self._http.get(f"{url}{path}") for path in paths))
                served_models(first)  # an unreadable model list is no answer either
                return url, first, second
            except (httpx.HTTPError, ValueError) as exc:
                failure = self._failure(url, exc)
        assert failure is not None
        raise failure

    def _failure(self, url: str, exc: Exception) -> EngineError:
        """A request that got no (readable) reply; an unreachable replica is marked down."""
        if failure_kind(exc) == "unreachable":
            self._down.add(url)
        server = f"{self.role} model {self.model_name} at {url}"
        return EngineError(f"{server} failed ({type(exc).__name__}: {exc or 'no reply'}); is it running? {self.start_hint}",
                           failure_kind(exc), server)

    def _refused(self, url: str, response: httpx.Response) -> EngineError:
        """A reply other than 200 to one of vLLM's own routes."""
        return EngineError(f"{self.role} model at {url} rejected the request: {error_message(response)}",
                           refusal_kind(response.status_code))
