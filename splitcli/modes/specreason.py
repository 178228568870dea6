"""SpecReason (Pan et al., "SpecReason: Fast and Accurate Inference-Time Compute via Speculative
Reasoning", arXiv 2504.07891; authors' code: github.com/ruipeterpan/specreason, spec_reason.py): the
small model drafts each reasoning step; the big model judges it with one token (a score from 0 to 9
read from its log-probs); a step under the threshold is thrown away and the big model writes that
step instead. Training-free: any small/big pair.

As published: steps end at "\\n\\n" (at most 512 tokens); the judge is the big model reading the
question and the thinking so far, then a user turn asking for a 0-9 score of the last step, its
reply begun with "<think>I think the quality score is: "; `greedy` takes the most likely token as
the score (a non-digit is 0), `average` the expected digit over the top-10; the authors' default
threshold is 7 (their cluster script uses 9). Thrown-away drafts stay in the trace, dimmed, and
count as spent; the judge's calls are in the trace's calls. Each step's score and writer are kept
in `extra["steps"]`. The run ends at the end of text, the budget, or a step that gives the answer.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from splitcli.modes import Mode, ModeOptions, register
from splitcli.session import Session
from splitcli.trace import Trace

JUDGE = ("Evaluate the last reasoning step solely based on factual correctness and logical validity. Ignore style, "
         "phrasing, or overall usefulness—only judge whether the step is objectively correct and logically follows "
         "from prior steps. Assign a score from 0 to 9.")


class SpecReasonOptions(ModeOptions):
    threshold: float = Field(7.0, ge=0, le=9, description="a draft step scoring under this is rewritten by the big model")
    score: Literal["greedy", "average"] = Field("greedy", description="the judge's most likely digit, or the "
                                                                    "expected digit over its top-10 tokens")
    delimiter: str = Field("\n\n", min_length=1, description="what ends a reasoning step")
    max_step_tokens: int = Field(512, ge=1, description="longest step")
    judge_prompt: str = Field(JUDGE, min_length=1, description="the user turn that asks the big model for a score")
    judge_start: str = Field("<think>I think the quality score is: ", description="how the judge's reply begins")


def step_score(logprobs: dict[str, float], method: str) -> float:
    """A 0-9 score from the judge's next-token log-probs."""
    if not logprobs:
        return 0.0
    if method == "greedy":
        best = max(logprobs, key=logprobs.__getitem__).strip()
        return float(best) if best.isdigit() and len(best) == 1 else 0.0
    digits = {token.strip(): math.exp(value) for token, value in logprobs.items()
              if token.strip().isdigit() and len(token.strip()) == 1}
    total = sum(digits.values())
    return sum(int(digit) * weight for digit, weight in digits.items()) / total if total else 0.0


@register
class SpecReason(Mode[SpecReasonOptions]):
    name = "specreason"
    summary = "the small model drafts each step, the big one scores it and rewrites the weak ones (SpecReason)"
    provisional = ("small",)  # a draft is shown once the judge has kept it

    async def run(self, session: Session, trace: Trace) -> None:
        options, steps = self.options, trace.extra.setdefault("steps", [])
        while session.room() > 0:
            room = min(options.max_step_tokens, session.room())
            segment, draft = await session.step("small", room, options.delimiter)
            if not draft.token_ids:
                session.discard(segment, draft)
                return
            score = step_score(await session.judge("big", options.judge_prompt, options.judge_start, draft.text),
                               options.score)
            writer, result = "small", draft
            if score >= options.threshold:
                await session.keep_step("small", segment, draft)
            else:
                session.discard(segment, draft)
                writer = "big"
                segment, result = await session.step("big", room, options.delimiter)
                await session.keep_step("big", segment, result)
            steps.append({"score": round(score, 3), "model": writer, "tokens": len(result.token_ids)})
            if result.ended_with_eos or not result.token_ids or "boxed" in result.text or "Answer:" in result.text:
                return
