"""The paper's method: the small model writes, opens <bigmodel> at hard steps, and closes them.

The big model writes in chunks; after each chunk the small model is probed, in one batched request,
on every prefix of the chunk, and the first prefix after which it would write the closing tag ends
the big segment there (the rule is the Session's CutFinder: a property of the text, the same for any
chunk size). Fixes the original's bugs: its probes were scanned reversed but indexed forward (so the
cut landed in the wrong place) and its EOS branch appended the last segment twice.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TypeVar

from pydantic import Field

from splitcli.modes import Mode, ProbeOptions, register
from splitcli.probing import CutFinder
from splitcli.session import Session
from splitcli.trace import Trace

TaggedOptionsT = TypeVar("TaggedOptionsT", bound=ProbeOptions)


class SplitReasonOptions(ProbeOptions):
    chunk: int = Field(64, ge=1, description="big-model tokens per chunk between probes")
    probe_tokens: int = Field(8, ge=1, description="tokens the small model writes per probe")
    big_segment_cap: int = Field(512, ge=1, description="longest big segment before </bigmodel> is forced")


class TaggedMode(Mode[TaggedOptionsT]):
    """The small model writes until it opens a tag; the big model's segment (how it ends is the
    subclass's) follows; the small model goes on after the closing tag."""

    uses_hint = True
    provisional = ("big",)  # a probe may still cut the big model's draft

    async def run(self, session: Session, trace: Trace) -> None:
        while True:  # the small model always writes after a big segment, if only the closing tag
            _, result = await session.write("small", session.room(), stop=[session.tags.open_tag])
            if not (result.stopped_on_string and result.stop_reason == session.tags.open_tag):
                return  # EOS or budget: the answer is complete
            if await self._big_segment(session):
                return

    @abstractmethod
    async def _big_segment(self, session: Session) -> bool:
        """Let the big model write until the small model would close the tag; True when the text ended."""


@register
class SplitReason(TaggedMode[SplitReasonOptions]):
    name = "splitreason"
    summary = "small model writes, big model takes the parts it marks with <bigmodel> (the paper)"

    def configure(self, session: Session) -> None:
        session.use(probe_route=self.options.probe_route)

    async def _big_segment(self, session: Session) -> bool:
        """Let the big model write until the small model would close the tag; True when the text ended."""
        segment = await session.open("big")
        finder = CutFinder()
        written = 0
        reserve = len(session.close_ids)  # room for the closing tag stays in the budget
        while True:
            size = min(self.options.chunk, self.options.big_segment_cap - written, session.room() - reserve)
            if size <= 0:
                break
            if finder.waiting:
                size = 1  # one more token decides a pending cut
            draft = await session.draft("big", segment, size)
            probes = await session.probe_close(draft, 0, len(draft.token_ids), self.options.probe_tokens,
                                               self.options.probe_stride)
            offset = len(segment.text) - len(draft.text)  # where this chunk starts in the segment's text
            cut = finder.feed(probes, segment.text, offset)
            if cut is not None:
                chars = None if cut.end is None else cut.end - offset
                await session.keep("big", segment, draft, cut.index - written, chars)
                return await session.hand_back(segment, "handback", cut.lead)
            await session.keep("big", segment, draft, len(draft.token_ids))
            written += len(draft.token_ids)
            if draft.ended_with_eos:
                session.close(segment, "eos")
                return True
            if not draft.token_ids:
                break
        pending = finder.finish()
        if pending is not None:  # the small model would close right after the last token
            return await session.hand_back(segment, "handback", pending.lead)
        if written >= self.options.big_segment_cap:
            return await session.hand_back(segment, "cap")  # </bigmodel> is forced
        if session.room() - reserve <= 0:
            session.close(segment, "length")
            return True
        return await session.hand_back(segment, "context")  # the big model's context is full
