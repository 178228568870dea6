"""Big-model segments of concurrent sessions, started together in waves.

Why: two models on one GPU take turns on it. A decode step of the big model costs about the same
for one sequence as for thirty (its weights are read either way), and while it runs the small model
waits. Under an eval's load some session nearly always wants the big model, so it decodes one or two
sequences at a time nearly all the time, and the small model's 60 sequences wait behind it. Letting
the segments that want the big model wait a moment for each other makes its batches larger and its
busy time shorter. Measured in benchmarks/gpu_bench.py (`throughput`); see docs/measurements.md.

A wave starts when `share` of the sessions in flight wait for the big model, when every session in
flight waits, or when the first of them has waited `wait_s`. With few sessions (share x sessions < 2)
nothing waits.
"""

from __future__ import annotations

import asyncio
import math
import time

from pydantic import BaseModel, ConfigDict, Field


class GatherConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    share: float = Field(0.25, ge=0, le=1, description="a wave of big segments starts once this share of the "
                                                       "sessions in flight wait for the big model (0: never wait)")
    wait_s: float = Field(1.0, ge=0, description="... or once the first of them has waited this long")


class Gathering:
    """The waves of one big-model server, shared by the sessions on it (`join`/`leave` count them)."""

    def __init__(self, config: GatherConfig) -> None:
        self.config = config
        self.members = 0
        self.waves = 0
        self._waiting: list[asyncio.Future[None]] = []

    @property
    def wave_size(self) -> int:
        """How many waiting segments start a wave now (at least 1)."""
        return max(1, math.floor(self.config.share * self.members))

    def join(self) -> None:
        self.members += 1

    def leave(self) -> None:
        self.members = max(0, self.members - 1)
        self._check()  # those still waiting may now be all there is

    async def enter(self) -> float:
        """Wait for this segment's wave; the seconds waited."""
        if self.wave_size <= 1 or self.config.wait_s <= 0:
            return 0.0
        started = time.perf_counter()
        arrived: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(arrived)
        self._check()
        try:
            await asyncio.wait_for(asyncio.shield(arrived), self.config.wait_s)
        except TimeoutError:
            self._release()  # the first of this wave has waited long enough: it goes now
        finally:
            if arrived in self._waiting:  # cancelled while waiting
                self._waiting.remove(arrived)
        return time.perf_counter() - started

    def _check(self) -> None:
        if self._waiting and (len(self._waiting) >= self.wave_size or len(self._waiting) >= self.members):
            self._release()

    def _release(self) -> None:
        waiting, self._waiting = self._waiting, []
        if waiting:
            self.waves += 1
        for future in waiting:
            if not future.done():
                future.set_result(None)
