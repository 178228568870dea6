"""What makes a handoff cheap, and drafts that run in the background.

Warm-ups: while one model writes, the idle one is sent a 1-token request with its context and the
text so far, so that at the handoff only the last few tokens are new to its prefix cache.

Live requests kept for handoffs to the big model: a warm-up left alive in its engine (vLLM's
streaming input, our live route), so that the handoff sends only the tokens written since. Their
whole lifecycle is here: kept, taken by the handoff whose context extends one, ended otherwise, and
awaited at the session's end (a cancelled close would leave a request holding KV blocks).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from splitcli.contexts import Contexts
from splitcli.engine import Completion, EngineClient, LiveRequest
from splitcli.errors import EngineError
from splitcli.trace import Model, Segment

OnDelta = Callable[[str, list[int]], None]

LIVE_KEPT = 2  # live warm-ups kept


class LiveRequests:
    def __init__(self, client: EngineClient) -> None:
        self.client = client
        self._kept: list[LiveRequest] = []  # the last LIVE_KEPT, shortest context first
        self._ending: set[asyncio.Task[Any]] = set()

    async def open(self, prompt: list[int]) -> bool:
        """Open one with `prompt` and keep it; False when the server cannot (warm up otherwise)."""
        opening = asyncio.ensure_future(self.client.live_open(prompt))
        try:
            live = await asyncio.shield(opening)
        except asyncio.CancelledError:  # the session ends: end what the open brings, once it does
            self._end_opening(opening)
            raise
        if live is None:
            return False
        # More than the last: a warm-up can end inside a tag the big model will not see (then it is
        # no prefix of the handoff's context), and they may finish out of order.
        kept = sorted([*self._kept, live], key=lambda each: len(each.prompt))
        self._kept = kept[-LIVE_KEPT:]
        self.end(kept[:-LIVE_KEPT])
        return True

    def take(self, prompt: list[int]) -> LiveRequest | None:
        """The kept one with the longest context that `prompt` extends; the others are ended."""
        lives, self._kept = self._kept, []
        fits = [live for live in lives if len(live.prompt) < len(prompt) and prompt[:len(live.prompt)] == live.prompt]
        chosen = fits[-1] if fits else None
        self.end([live for live in lives if live is not chosen])
        return chosen

    def end(self, lives: list[LiveRequest]) -> None:
        for live in lives:
            self._before_the_end(self.client.live_close(live))

    async def aclose(self) -> None:
        """End all kept and wait for every close under way."""
        lives, self._kept = self._kept, []
        self.end(lives)
        await asyncio.gather(*self._ending, return_exceptions=True)

    def _end_opening(self, opening: asyncio.Future[LiveRequest | None]) -> None:
        async def end() -> None:
            live = await opening
            if live is not None:
                await self.client.live_close(live)

        self._before_the_end(end())

    def _before_the_end(self, closing: Coroutine[Any, Any, Any]) -> None:
        """Ending runs alongside, and `aclose` waits for it."""
        async def quietly() -> None:
            with contextlib.suppress(EngineError):
                await closing

        task = asyncio.ensure_future(quietly())
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)


class Warmer:
    """Warm-ups of the idle model every `every` tokens of the other's segment (0: none)."""

    def __init__(self, contexts: Contexts, every: int, live: LiveRequests | None,
                 in_background: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        self.contexts = contexts
        self.every = every
        self.live = live
        self.in_background = in_background

    def watching(self, role: Model, segment: Segment, on_delta: OnDelta) -> OnDelta:
        """`on_delta`, plus a warm-up of the idle model every `every` tokens of this segment."""
        others = [other for other in self.contexts.roles if other != role]
        if not self.every or not others:
            return on_delta
        start, start_text, sent = len(segment.token_ids), len(segment.text), [len(segment.token_ids)]

        def warming(text: str, ids: list[int]) -> None:
            on_delta(text, ids)
            if len(segment.token_ids) - sent[0] >= self.every:
                sent[0] = len(segment.token_ids)
                piece_ids, piece_text = segment.token_ids[start:], segment.text[start_text:]
                for other in others:
                    self.in_background(self.warm(other, piece_ids, piece_text))

        return warming

    async def warm(self, role: Model, ids: list[int], text: str) -> None:
        """A 1-token request with `role`'s context and what the other model has written so far.
        Reads the contexts without changing them."""
        context = self.contexts[role]
        piece = self.contexts.piece_for(role, ids, text)
        with contextlib.suppress(EngineError):  # a warm-up that fails only costs the cache it would have filled
            new_ids, _ = await self.contexts.take_in(role, [*context.pending, piece])  # as `context()` will
            prompt = context.ids + new_ids
            if context.max_model_len and len(prompt) >= context.max_model_len - 1:
                return
            if self.live is not None and role == "big" and await self.live.open(prompt):
                return
            await self.contexts.clients[role].complete([prompt], max_tokens=1, temperature=0.0, kind="warm",
                                                       token_ids=False)


@dataclass
class LiveDraft:
    """A generation running in the background (streamed): its completion grows as pieces arrive."""

    completion: Completion
    task: asyncio.Task[Completion]
    arrived: asyncio.Event

    @property
    def tokens(self) -> int:
        return len(self.completion.token_ids)

    @property
    def finished(self) -> bool:
        return self.task.done()

    def raise_failure(self) -> None:
        """Re-raise what ended the generation, if it failed (a server that died mid-stream)."""
        if self.task.done() and not self.task.cancelled() and self.task.exception() is not None:
            raise self.task.exception()  # type: ignore[misc]

    async def cancel(self) -> None:
        """Stop generating: the HTTP stream is closed and vLLM aborts the request."""
        if not self.task.done():
            self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
