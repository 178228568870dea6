"""s1-style budget forcing with small-model rewrites (the original's "spec-rewrite" mode).

Round 1 is written by the small model (`small_first`) or the big one, later rounds by the big model;
each round continues the reasoning and is cut where it would close the thinking block. With
`drafts` > 0 the small model rewrites the round's reasoning that many times ("refine this partial
reasoning, keeping the key steps"; with `full_rewrite`, all the reasoning so far) and the longest
rewrite replaces it, as in the original. "Wait" goes where a round closed its thinking, so the next
round keeps thinking; after the last round the big model writes the answer after the closed block.
Replaced text stays in the trace, not kept: shown dimmed, its tokens counted as spent.
"""

from __future__ import annotations

from pydantic import Field

from splitcli.engine import Completion
from splitcli.modes import Mode, ModeOptions, register
from splitcli.session import Session
from splitcli.trace import THINK_END, Model, Segment, Trace


class RewriteOptions(ModeOptions):
    rounds: int = Field(2, ge=1, description="thinking rounds (the original's thinking_n_ignore)")
    drafts: int = Field(0, ge=0, description="small-model rewrites of each round; the longest replaces it (0: none)")
    full_rewrite: bool = Field(False, description="rewrite all the reasoning so far, not only the round")
    small_first: bool = Field(True, description="the small model writes round 1 (else the big one)")
    wait: str = Field("Wait", description="written where a round closed its thinking, to go on thinking")
    rewrite_prompt: str = Field("Refine this partial reasoning, keeping the key steps:\n\n{reasoning}",
                                description="what the small model is asked for a rewrite")


@register
class SpecRewrite(Mode[RewriteOptions]):
    name = "spec-rewrite"
    summary = "thinking rounds with 'Wait' (budget forcing); the small model rewrites each round"
    replaces_text = True

    async def run(self, session: Session, trace: Trace) -> None:
        reasoning: list[Segment] = []  # the kept reasoning so far, round by round
        options = self.options
        for number in range(options.rounds):
            writer: Model = "small" if number == 0 and options.small_first else "big"
            segment = await session.open(writer)
            result = await session.draft(writer, segment, session.room(), stop=[THINK_END])
            closed = result.stopped_on_string
            if closed:
                await session.drop_stop_string(writer, result, segment)
            session.close(segment, "stop" if closed else result.ended_by)
            if options.drafts and closed and result.token_ids:  # an ended text is not rewritten
                segment = await self._rewrite(session, segment, result, reasoning)
            else:
                session.commit(writer, result.token_ids, result.text)
            reasoning.append(segment)
            if result.ended_with_eos or not closed or session.room() <= 0:
                return  # the text ended, or the budget did
            # Later rounds and the answer are the big model's: it goes on after "Wait", or answers.
            await session.queue_text("big", THINK_END if number == options.rounds - 1 else options.wait)
        if session.room() > 0:
            await session.write("big", session.room())  # the answer after the closed thinking block

    async def _rewrite(self, session: Session, segment: Segment, result: Completion,
                       reasoning: list[Segment]) -> Segment:
        """`drafts` small-model rewrites of the round (or of everything, with full_rewrite); the longest
        is kept in place of what it rewrites."""
        options = self.options
        replaced = [*reasoning, segment] if options.full_rewrite else [segment]
        original = "".join(s.text for s in replaced)
        message = options.rewrite_prompt.format(reasoning=original)
        prompt = await session.chat_prompt("small", [{"role": "user", "content": message}])
        budget = max(1, min(session.room(), 2 * sum(s.tokens for s in replaced)))
        drafts = await session.sample("small", [prompt], budget, n=options.drafts, seed=session.sampling.seed,
                                      stop=[THINK_END])
        rewrites = []
        for index, draft in enumerate(drafts):
            await session.drop_stop_string("small", draft)
            rewrites.append(session.record("small", draft, index, "rewrite"))
        best = max(rewrites, key=lambda r: len(r.text))
        session.keep_only([*replaced, *rewrites], [best])
        if options.full_rewrite:
            for role in session.roles:
                session.rewind(role)
        session.commit("small", best.token_ids, best.text)
        return best
