"""Speculative Thinking (Yang et al., "Speculative Thinking: Enhancing Small-Model Reasoning with
Large Model Guidance at Inference Time", arXiv 2504.12329; authors' code:
github.com/uservan/speculative_thinking, speculative/speculative_vllm.py and config/*.yml): the small
model reasons; at each paragraph break the big model takes over for a few tokens where the next
words would reflect ("wait", "alternatively", "verify", ...) or affirm ("yes", "final answer"), and
for longer when the reasoning turns to checking or keeps going wrong. Training-free: any pair.

As published (the defaults are the authors' YAML): the small model writes up to "\\n\\n" (at most
1024 tokens). There it drafts a 20-token probe of what comes next and counts cue words in it
(lowercase substrings: positive against negative and verify words). No cue: the probe is thrown away
and the small model goes on. A cue: the big model writes the 20 tokens instead (`choose_large`);
if they contain a verify word it writes 125 more. Every 15th net-negative chunk (then every 20th,
25th, 30th) "Let me check whether there are some wrong steps:" is written and the big model recaps
for 125 tokens (then 150, 175, 200). Thinking and answer go through the same loop, as in the
authors' code. Thrown-away probes stay in the trace, dimmed, and count as spent; each takeover is
kept in `extra["takeovers"]`.
"""

from __future__ import annotations

from pydantic import Field

from splitcli.modes import Mode, ModeOptions, register
from splitcli.session import Session
from splitcli.trace import Trace


class SpeculativeThinkingOptions(ModeOptions):
    trigger: str = Field("\n\n", min_length=1, description="where the small model's paragraph ends and a takeover may start")
    max_segment_tokens: int = Field(1024, ge=1, description="longest small-model paragraph")
    probe_tokens: int = Field(20, ge=1, description="tokens of the probe, and of the big model's takeover "
                                                    "(the authors' max_target_tokens)")
    verify: list[str] = Field(["verify", "think again", "recap", "check"],
                              description="cues of checking: the big model writes verify_tokens more")
    negative: list[str] = Field(["wait", "alternatively", "hold on", "another"], description="cues of reflection")
    positive: list[str] = Field(["yeah", "yes", "final answer", "confident"], description="cues of affirmation")
    choose_large: bool = Field(True, description="at a cue the big model's tokens are always kept (else only "
                                                 "where its sentiment turns the small model's)")
    verify_tokens: int = Field(125, ge=0, description="big-model tokens after a chunk with a verify cue")
    recap_tokens: int = Field(125, ge=1, description="the first recap's length")
    recap_growth: int = Field(25, ge=0, description="each recap is this much longer than the one before")
    max_recap_tokens: int = Field(200, ge=1, description="longest recap")
    recap_words: str = Field("Let me check whether there are some wrong steps:",
                             description="written before the big model's recap")
    recap_after: int = Field(15, ge=1, description="net-negative chunks before the first recap")
    recap_after_growth: int = Field(5, ge=0, description="each later recap needs this many more")
    max_recap_after: int = Field(30, ge=1, description="most net-negative chunks a recap waits for")


def sentiment(text: str, positive: list[str], negative: list[str]) -> int:
    """+1 affirming, -1 reflecting, 0 no cue: the authors' substring counts on the lowercased text (a
    tie with any positive cue counts as reflecting)."""
    lower = text.lower()
    good = sum(lower.count(word) for word in positive)
    bad = sum(lower.count(word) for word in negative)
    if good > bad:
        return 1
    if bad > good or good:
        return -1
    return 0


@register
class SpeculativeThinking(Mode[SpeculativeThinkingOptions]):
    name = "speculative-thinking"
    summary = "the small model reasons; at reflection cues after a paragraph the big one takes over (Speculative Thinking)"
    provisional = ("small",)  # a probe is shown once it is kept

    async def run(self, session: Session, trace: Trace) -> None:
        options, takeovers = self.options, trace.extra.setdefault("takeovers", [])
        negatives, recap, recap_after = 0, options.recap_tokens, options.recap_after
        while session.room() > 0:
            _, paragraph = await session.write("small", min(options.max_segment_tokens, session.room()),
                                               stop=[options.trigger])
            if paragraph.ended_with_eos or not paragraph.token_ids or session.room() <= 0:
                return
            if not paragraph.stopped_on_string:  # the longest paragraph, no break: the small model goes on
                continue
            if negatives >= recap_after:
                await session.queue_text("big", options.recap_words)
                _, written = await session.write("big", min(recap, session.room()))
                takeovers.append({"why": "recap", "tokens": len(written.token_ids)})
                negatives, recap = 0, min(recap + options.recap_growth, options.max_recap_tokens)
                recap_after = min(recap_after + options.recap_after_growth, options.max_recap_after)
                if written.ended_with_eos:
                    return
                continue
            kept, ended = await self._at_paragraph_break(session, takeovers)
            if kept is None:
                continue
            negatives += sentiment(kept, options.positive, options.negative + options.verify) < 0
            if ended:
                return
            if any(word in kept.lower() for word in options.verify) and options.verify_tokens and session.room() > 0:
                _, more = await session.write("big", min(options.verify_tokens, session.room()), extend=True)
                takeovers[-1]["tokens"] += len(more.token_ids)
                takeovers[-1]["verified"] = True
                if more.ended_with_eos:
                    return

    async def _at_paragraph_break(self, session: Session, takeovers: list[dict[str, object]]) -> tuple[str | None, bool]:
        """The small model's probe of what comes next; at a cue, the big model's tokens from the same
        place. The text kept (None: the probe had no cue and is thrown away), and whether it ended the text."""
        options = self.options
        size = min(options.probe_tokens, session.room())
        probe_segment, probe = await session.draft_segment("small", size)
        small_mood = sentiment(probe.text, options.positive, options.negative + options.verify)
        if small_mood == 0:
            session.discard(probe_segment, probe)
            return None, False
        big_segment, big = await session.draft_segment("big", size)
        big_mood = sentiment(big.text, options.positive, options.negative + options.verify)
        take_big = options.choose_large or (small_mood < 0 <= big_mood) or (small_mood > 0 > big_mood)
        kept_segment, kept, dropped_segment, dropped = (big_segment, big, probe_segment, probe) if take_big else (
            probe_segment, probe, big_segment, big)
        session.discard(dropped_segment, dropped)
        await session.keep_step("big" if take_big else "small", kept_segment, kept)
        takeovers.append({"why": "cue", "model": "big" if take_big else "small", "small_sentiment": small_mood,
                          "big_sentiment": big_mood, "tokens": len(kept.token_ids), "verified": False})
        return kept.text, kept.ended_with_eos
