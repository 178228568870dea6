"""The paper's "perf" variant, pipelined for real: the big model's segment is streamed, and every
`bucket` tokens the small model is probed on the new prefixes while the stream goes on; the first
prefix after which it would close the tag cancels the big request (vLLM aborts it) and cuts the
segment there. Probes are read in order of prefix, so the cut is the same as `splitreason`'s
(the Session's CutFinder) whichever request answers first. Warm handoffs (off unless
`warm_every` is set): while the small model writes, the big one gets its context every `warm_every`
tokens, so at the handoff its prefix is already cached (with `live_handoff`, the last warm-up stays
alive in the engine and the handoff sends only the tokens since); while the big model writes, the
probes keep the small one warm.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Coroutine
from typing import Any, TypeVar

from pydantic import Field, ValidationInfo, field_validator

from splitcli.handoffs import LiveDraft
from splitcli.modes import ProbeOptions, register
from splitcli.modes.splitreason import TaggedMode
from splitcli.probing import CloseProbe, Cut, CutFinder, ProbeBudget
from splitcli.session import Session
from splitcli.trace import Segment

T = TypeVar("T")


class StreamOptions(ProbeOptions):
    bucket: int = Field(8, ge=1, description="big-model tokens per batch of probes, sent while it streams on")
    probe_tokens: int = Field(6, ge=1, description="tokens the small model writes per probe")
    big_segment_cap: int = Field(128, ge=1, description="longest big segment before </bigmodel> is forced")
    probes_in_flight: int = Field(2, ge=1, description="most probe requests out at once; tokens that arrive "
                                                       "meanwhile join the next one (at long context a request "
                                                       "costs about the same for 8 prefixes or 64)")
    probe_share: float = Field(0.25, ge=0, le=1, description="probes may take this share of the big model's streaming "
                                                            "time: buckets grow where a probe request costs more "
                                                            "(long context, load); 0: probe every bucket")
    # Off by default: measured, warm-ups alone do not pay. On GPU a warm handoff is as slow as a cold
    # one (the resent context costs, not the prefill); on CPU, every 8 tokens, they made the demo pair
    # 1.7x slower (benchmarks/results/modes.json).
    warm_every: int = Field(0, ge=0, description="tokens between warm-ups of the idle model (0: none)")
    live_handoff: bool = Field(False, description="keep the big model's warm-up alive in its engine, so that the "
                                                  "handoff sends only the tokens since (our servers, on a vLLM "
                                                  "after 0.24, which kept the first max_tokens; needs warm_every)")

    @field_validator("live_handoff")
    @classmethod
    def _live_needs_warm_ups(cls, live: bool, info: ValidationInfo) -> bool:
        if live and not info.data.get("warm_every"):
            raise ValueError("a live handoff keeps the last warm-up alive, and warm_every is 0 "
                             "(set warm_every too, e.g. 128)")
        return live


@register
class SplitReasonStream(TaggedMode[StreamOptions]):
    name = "splitreason-stream"
    summary = "splitreason with the big model streamed, probes pipelined and warm handoffs (measured, not simulated)"

    def configure(self, session: Session) -> None:
        session.use(warm_every=self.options.warm_every, live_handoff=self.options.live_handoff,
                    probe_route=self.options.probe_route)
        # Over the whole question: debt carries over from segment to segment.
        self._budget = ProbeBudget(self.options.probe_share, self.options.probes_in_flight)

    async def _big_segment(self, session: Session) -> bool:
        segment = await session.open("big")
        await session.context("small")  # take in what is pending now: probes then only read the context
        reserve = len(session.close_ids)
        limit = min(self.options.big_segment_cap, session.room() - reserve)
        if limit <= 0:
            session.close(segment, "length")
            return True
        live = await session.start_draft("big", segment, limit)
        try:
            cut = await self._watch(session, live, segment)
        finally:
            await live.cancel()  # the cut is known (or the run failed): stop generating
        draft = live.completion
        if cut is not None:
            await session.keep("big", segment, draft, cut.index, cut.end)
            return await session.hand_back(segment, "handback", cut.lead)
        await session.keep("big", segment, draft, len(draft.token_ids))
        if draft.ended_with_eos:
            session.close(segment, "eos")
            return True
        if len(draft.token_ids) >= self.options.big_segment_cap:
            return await session.hand_back(segment, "cap")
        if session.room() - reserve <= 0:
            session.close(segment, "length")
            return True
        return await session.hand_back(segment, "context")

    async def _watch(self, session: Session, live: LiveDraft, segment: Segment) -> Cut | None:
        """Probe each bucket as it arrives (at most `probes_in_flight` requests out; what arrives
        meanwhile joins the next), without pausing the stream; read answers in prefix order, and stop
        watching as soon as the earliest closing prefix is known."""
        in_flight: deque[asyncio.Task[list[CloseProbe]]] = deque()
        try:
            return await self._probe_while_streaming(session, live, segment, in_flight)
        finally:
            for probe in in_flight:  # past the cut (or the run failed): nobody reads them
                probe.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def _probe_while_streaming(self, session: Session, live: LiveDraft, segment: Segment,
                                     in_flight: deque[asyncio.Task[list[CloseProbe]]]) -> Cut | None:
        finder = CutFinder()
        probed = 0
        clock = asyncio.get_running_loop().time
        ticked = clock()
        while True:
            if not live.finished:
                self._budget.accrue(clock() - ticked)
            ticked = clock()
            while in_flight and in_flight[0].done():
                cut = finder.feed(in_flight.popleft().result(), live.completion.text)
                if cut is not None:
                    return cut
                session.settle(segment, live.completion, finder.decided)
            arrived = live.tokens
            room = len(in_flight) < self.options.probes_in_flight
            due = (arrived - probed >= self.options.bucket and self._budget.allows(len(in_flight))) \
                or (live.finished and arrived > probed)  # the last probe always goes: the cut needs it
            if room and due:
                in_flight.append(session.in_background(self._timed(
                    session.probe_close(live.completion, probed, arrived, self.options.probe_tokens,
                                        self.options.probe_stride))))
                probed = arrived
                room = len(in_flight) < self.options.probes_in_flight
            if live.finished:
                live.raise_failure()
                if probed >= live.tokens or not room:
                    if not in_flight:
                        return finder.finish()
                    await asyncio.wait([in_flight[0]])
                    continue
            # Wake for whichever comes first: another token, the end of the stream, the oldest probe.
            live.arrived.clear()
            token = asyncio.ensure_future(live.arrived.wait())
            await asyncio.wait([token, live.task, *([in_flight[0]] if in_flight else [])], return_when=asyncio.FIRST_COMPLETED)
            token.cancel()

    async def _timed(self, probe: Coroutine[Any, Any, T]) -> T:
        """Run a probe request and charge its seconds to the budget (a cancelled one too: it ran)."""
        clock = asyncio.get_running_loop().time
        started = clock()
        try:
            return await probe
        finally:
            self._budget.spend(clock() - started)
