"""The connection to one model's vLLM servers, under EngineClient (engine.py): the shared pool,
the replicas and each Session's affinity to one, what the server serves (asked once per command),
its metrics, and failed requests worded as EngineErrors of a kind. The requests themselves, and
the Calls that record them, are engine.py's."""

from __future__ import annotations

import asyncio
import copy
import itertools
import math
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
from splitcli.gathering import GatherConfig, Gathering
from splitcli.trace import Call, Model

DOWN_RECHECK_S = 30.0  # a replica found down is tried again by the first new Session after this long
HEALTH_TIMEOUT_S = 5.0  # a replica that takes longer to say it is healthy is taken as answering (badly)


class ModelConnection:
    """One model's servers as a command reaches them. One connection (and its pool) serves a whole
    command; `bound` twins share the pool, the replica counts and what was learnt of the server."""

    def __init__(self, role: Model, model_name: str, urls: list[str], start_hint: str,
                 clock: Callable[[], float] = time.perf_counter, record: Callable[[Call], None] | None = None,
                 timeout: float = 600.0, max_connections: int = 64, other_names: tuple[str, ...] = (),
                 gather: GatherConfig | None = None) -> None:
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
        # Replicas found unreachable, with when: Sessions that start later take the others (one that dies
        # under a Session fails it, as an engine error: switching would silently lose its prefix cache).
        # After DOWN_RECHECK_S a new Session tries the replica again, so a restarted one serves a
        # long-running `serve --api` again.
        self._down: dict[str, float] = {}
        self._reached: set[str] = set()  # replicas that answered this command: not checked again
        self._pinned: str | None = None
        # Waves of big segments, per replica (gathering.py); only sessions that hand off take part.
        self._gatherings = {url: Gathering(gather) for url in urls} if gather is not None else {}
        self._gathers = False
        self._headers = {"content-type": "application/json"}
        self.skip_special_tokens = True
        self._owner = True
        self._info: dict[str, Any] = {}  # shared with twins: asked once per command
        self._info_lock = asyncio.Lock()
        self._http = http_client(urls, timeout, max_connections)

    def bound(self, clock: Callable[[], float], record: Callable[[Call], None], session: str = "",
              replica: int | None = None, gathers: bool = False) -> Self:
        """A twin on the same connection pool that times and records calls for one trace, all of them
        to one replica (`replica`, or the least used now), with `session` in the X-Session-ID header
        that routers (vllm-router's consistent hashing, llm-d) hash to keep a session on one engine.
        `gathers`: the session's segments on this model start in waves with other sessions' (`gather`)."""
        twin = copy.copy(self)
        twin._clock, twin._record, twin._owner = clock, record, False
        live = self._live()
        twin._pinned = self.urls[replica] if replica is not None else min(live, key=lambda url: self._sessions[url])
        self._sessions[twin._pinned] += 1
        twin._gathers = gathers and twin._pinned in self._gatherings
        if twin._gathers:
            self._gatherings[twin._pinned].join()
        twin._headers = {**self._headers, **({"x-session-id": session} if session else {})}
        return twin

    async def _answers(self, url: str) -> bool:
        """Whether a replica is reachable: asked once per command (again after it was down). One that
        is not is marked down and said once; one that was down and answers again is said too."""
        if url in self._reached:
            return True
        from splitcli import console

        asked = time.monotonic()
        try:
            await self._http.get(f"{url}/health", timeout=HEALTH_TIMEOUT_S)
        except httpx.HTTPError as exc:
            if failure_kind(exc) != "unreachable":
                return True  # it answers, badly: the Session's own calls say how
            was_down = url in self._down
            self._mark_down(url)
            others = [other for other in self.urls if other != url and self._up(other)]
            if not was_down and others:
                console.warn(f"{self.role} replica {url} does not answer ({type(exc).__name__}): Sessions from "
                             f"now on use the other {len(others)} of {len(self.urls)} (it is tried again after "
                             f"{DOWN_RECHECK_S:g} s)")
            return False
        if self._down.get(url, math.inf) < asked:  # not marked down again while we asked
            del self._down[url]
            console.info(f"{self.role} replica {url} answers again: new Sessions use it too")
        if url not in self._down:
            self._reached.add(url)
        return True

    def _up(self, url: str) -> bool:
        """Not found down, or down long enough to be tried again."""
        return time.monotonic() - self._down.get(url, -math.inf) >= DOWN_RECHECK_S

    def _live(self) -> list[str]:
        """Replicas a new Session may take (all of them, when every one is down: the Session's first
        call then says what failed)."""
        return [url for url in self.urls if self._up(url)] or self.urls

    def _mark_down(self, url: str) -> None:
        self._down[url] = time.monotonic()
        self._reached.discard(url)  # when it is tried again, it is checked again

    def _move(self, url: str) -> None:
        """Pin this twin's Session to another replica (before it has sent anything)."""
        assert self._pinned is not None
        self._sessions[self._pinned] -= 1
        self._sessions[url] += 1
        if self._gathers:
            self._gatherings[self._pinned].leave()
            self._gatherings[url].join()
        self._pinned = url

    @property
    def replica(self) -> int | None:
        """Which of the URLs a bound twin is pinned to."""
        return self.urls.index(self._pinned) if self._pinned is not None else None

    def release(self) -> None:
        """A twin's session ended: its replica has one Session fewer."""
        if self._pinned is not None and not self._owner:
            self._sessions[self._pinned] -= 1
            if self._gathers:
                self._gatherings[self._pinned].leave()
                self._gathers = False
            self._pinned = None

    async def gather(self) -> float:
        """Wait until a segment of this session may start on this model, with its wave (gathering.py);
        the seconds waited (0 where the session does not gather)."""
        if not self._gathers or self._pinned is None:
            return 0.0
        return await self._gatherings[self._pinned].enter()

    @property
    def gathering(self) -> Gathering | None:
        """The waves on this twin's replica (None where it does not gather)."""
        return self._gatherings.get(self._pinned) if self._gathers and self._pinned else None

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
        """Each reachable replica's KV cache size in tokens (None where the server does not report it);
        an unreachable replica is left out (and marked down), unless none answers."""
        texts = await asyncio.gather(*(self._metrics_text(url) for url in self.urls), return_exceptions=True)
        failures = [text for text in texts if isinstance(text, BaseException)]
        if len(failures) == len(texts) or any(getattr(f, "kind", None) != "unreachable" for f in failures):
            raise failures[0]
        return [kv_cache_tokens(text) for text in texts if isinstance(text, str)]

    async def _metrics_text(self, url: str) -> str:
        try:
            response = await self._http.get(f"{url}/metrics")
        except httpx.HTTPError as exc:
            raise self._failure(url, exc) from None
        return response.text

    async def _first_answer(self, paths: list[str]) -> tuple[str, httpx.Response, httpx.Response]:
        """`paths` from the first replica that answers them all (the ones that do not are marked down)."""
        failure: EngineError | None = None
        for url in self._live():
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
            self._mark_down(url)
        server = f"{self.role} model {self.model_name} at {url}"
        return EngineError(f"{server} failed ({type(exc).__name__}: {exc or 'no reply'}); is it running? {self.start_hint}",
                           failure_kind(exc), server)

    def _refused(self, url: str, response: httpx.Response) -> EngineError:
        """A reply other than 200 to one of vLLM's own routes."""
        return EngineError(f"{self.role} model at {url} rejected the request: {error_message(response)}",
                           refusal_kind(response.status_code))


async def check_replicas(group: list[ModelConnection]) -> None:
    """Before a Session's first call: the replica its bound twins in `group` are pinned to (one twin,
    or a small and a big that keep one index: `replica_pairs`) must be reachable. Where one is not (a
    replica that died before this command, or while it was up), the group moves to the least used
    index whose replicas are all up: nothing of the Session is there yet, so no prefix cache is lost.
    With none left, the Session's first call fails as usual. A model on one server has nowhere to
    move: no health request is spent on it (its first call says what failed)."""
    lead = group[0]
    if all(len(member.urls) == 1 for member in group):
        return
    tried: set[int] = set()
    while (index := lead.replica) is not None and index not in tried:
        tried.add(index)
        answers = await asyncio.gather(*(member._answers(member.urls[index]) for member in group))
        if all(answers):
            return
        left = [other for other in range(len(lead.urls))
                if other not in tried and all(member._up(member.urls[other]) for member in group)]
        if not left:
            return
        chosen = min(left, key=lambda other: lead._sessions[lead.urls[other]])
        for member in group:
            member._move(member.urls[chosen])
