"""GlimpRouter (Zeng et al., "GlimpRouter", arXiv 2601.05110; authors' code: github.com/Zengwh02/GlimpRouter,
src/glimp_router.py): before each reasoning step the small model glimpses one token; when that
token's entropy is high the step is hard and the big model writes it, otherwise the small one does.
Training-free: any small/big pair.

As published: the entropy is over the small model's top-20 next tokens (renormalised, natural log),
read with temperature 0 after the context; the glimpsed token is not kept (the chosen model writes
the whole step, up to the step delimiter "\\n\\n", at most 512 tokens); the big model writes the
answer after the thinking. The authors' threshold is 0.9 in their run script (1.0 in the code's
default); each step's entropy and writer are kept in the trace (`extra["steps"]`).
"""

from __future__ import annotations

import math

from pydantic import Field

from splitcli.modes import Mode, ModeOptions, register
from splitcli.session import Session
from splitcli.trace import THINK_END, Trace


class GlimpOptions(ModeOptions):
    threshold: float = Field(0.9, ge=0, description="first-token entropy (nats, top-20) at or above which the big "
                                                    "model writes the step")
    delimiter: str = Field("\n\n", min_length=1, description="what ends a reasoning step")
    max_step_tokens: int = Field(512, ge=1, description="longest step")
    top: int = Field(20, ge=2, le=20, description="next tokens the entropy is computed over")


def entropy(logprobs: dict[str, float]) -> float:
    """Entropy (nats) of the distribution of these tokens, renormalised to sum to one."""
    weights = [math.exp(value) for value in logprobs.values()]
    total = sum(weights)
    return -sum(w / total * math.log(w / total) for w in weights if w > 0) if total else 0.0


@register
class GlimpRouter(Mode[GlimpOptions]):
    name = "glimprouter"
    summary = "per step, the small model's first-token entropy picks who writes it (GlimpRouter, training-free)"

    async def run(self, session: Session, trace: Trace) -> None:
        options, steps = self.options, trace.extra.setdefault("steps", [])
        while session.room() > 0:
            glimpse = entropy(await session.next_token_logprobs("small", options.top))
            writer = "big" if glimpse >= options.threshold else "small"
            segment, result = await session.step(writer, min(options.max_step_tokens, session.room()),
                                                 options.delimiter)
            await session.keep_step(writer, segment, result)
            steps.append({"entropy": round(glimpse, 4), "model": writer, "tokens": len(result.token_ids)})
            if result.ended_with_eos or not result.token_ids:
                return
            if result.text.endswith(THINK_END):
                break
        if session.room() > 0:  # the answer: always the big model's, as published
            await session.write("big", session.room())
