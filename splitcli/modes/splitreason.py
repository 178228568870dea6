"""The paper's method: the small model writes, opens <bigmodel> at hard steps, and closes them.

The big model writes in chunks; after each chunk the small model is probed, in one batched request,
on every prefix of the chunk, and the first prefix after which it would write the closing tag ends
the big segment there. Fixes the original's bugs: its probes were scanned reversed but indexed
forward (so the cut landed in the wrong place) and its EOS branch appended the last segment twice.
"""

from __future__ import annotations

from pydantic import Field

from splitcli.engine import Completion
from splitcli.modes import Mode, ModeOptions, register
from splitcli.session import Session
from splitcli.trace import Segment, Trace


class SplitReasonOptions(ModeOptions):
    chunk: int = Field(64, ge=1, description="big-model tokens per chunk between probes")
    probe_tokens: int = Field(8, ge=1, description="tokens the small model writes per probe")
    big_segment_cap: int = Field(512, ge=1, description="longest big segment before </bigmodel> is forced")


@register
class SplitReason(Mode):
    name = "splitreason"
    summary = "small model writes, big model takes the parts it marks with <bigmodel> (the paper)"
    Options = SplitReasonOptions
    uses_hint = True
    options: SplitReasonOptions

    async def run(self, session: Session, trace: Trace) -> None:
        while session.room() > 0:
            _, result = await session.write("small", session.room(), stop=[session.tags.open_tag])
            if result.finish_reason != "stop" or result.stop_reason != session.tags.open_tag:
                return  # EOS or budget: the answer is complete
            if await self._big_segment(session):
                return

    async def _big_segment(self, session: Session) -> bool:
        """Let the big model write until the small model would close the tag; True when the text ended."""
        segment = await session.open("big")
        written = 0
        while True:
            size = min(self.options.chunk, self.options.big_segment_cap - written, session.room())
            if size <= 0:
                break
            draft = await session.draft("big", segment, size)
            cut = await self._first_close(session, draft)
            kept = len(draft.token_ids) if cut is None else cut[0]
            await session.keep("big", segment, draft, kept)
            written += kept
            if cut is not None:
                return self._hand_back(session, segment, "handback", cut[1])
            if draft.ended_with_eos:
                session.close(segment, "eos")
                return True
            if not draft.token_ids:
                break
        if session.room() <= 0:
            session.close(segment, "length")
            return True
        return self._hand_back(session, segment, "cap")  # cap reached: </bigmodel> is forced

    def _hand_back(self, session: Session, segment: Segment, reason: str, lead: str = "") -> bool:
        session.close(segment, reason)
        session.queue_prefix("small", session.close_ids, session.tags.close_tag, lead)
        return False

    async def _first_close(self, session: Session, draft: Completion) -> tuple[int, str] | None:
        """Smallest i such that after chunk[:i] the small model writes the closing tag, with any
        whitespace it writes first; a probe that starts with the tag itself wins over one that
        needs whitespace the big model did not write."""
        chunk_ids = draft.token_ids
        if not chunk_ids:
            return None
        base = await session.context("small")
        if session.shared_tokenizer:
            prompts: list[list[int] | str] = [base + chunk_ids[:i] for i in range(1, len(chunk_ids) + 1)]
        else:
            texts = await session.prefix_texts("big", draft)
            base_text = session.contexts["small"].text
            prompts = [base_text + text for text in texts]
        probes = await session.probe("small", prompts, self.options.probe_tokens)
        marker = session.tags.close_tag[:5]  # "</big": the small model starts closing
        lenient = None
        for index, probe in enumerate(probes, start=1):
            if probe.text.startswith(marker):
                return index, ""
            stripped = probe.text.lstrip()
            if lenient is None and stripped.startswith(marker):
                lenient = index, probe.text[: len(probe.text) - len(stripped)]
        return lenient
