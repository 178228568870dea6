"""Live requests kept for handoffs to the big model: a warm-up left alive in its engine (vLLM's
streaming input, our live route), so that the handoff sends only the tokens written since. Their
whole lifecycle is here: kept, taken by the handoff whose context extends one, ended otherwise, and
awaited at the session's end (a cancelled close would leave a request holding KV blocks)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from splitcli.engine import EngineClient, LiveRequest
from splitcli.errors import EngineError

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
