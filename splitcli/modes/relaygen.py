"""RelayGen (Song et al., "RelayGen", arXiv 2602.06454; authors' code: github.com/jiwonsong-dev/RelayGen,
utils/utils.py `relaygen_chat_completions`): the big model reasons, and where it writes a cue after
which the rest of the sentence is easy ("Therefore", "So,", "Now", ...) it hands the sentence to the
small model, which writes up to the sentence's end and hands back. The small model writes the answer
after the thinking. Training-free: any pair (the cues were calibrated once per model family, offline,
from the small model's top-1/top-2 probability margins after each candidate cue).

As published: the big model's text stops on any cue (case-sensitive, matched inside words too, as
vLLM's stop strings are) or on `</think>`, after at least 5 tokens of its own (vLLM's `min_tokens`,
which keeps it from handing back at once); the cue itself is the big model's, and the small model
goes on right after it, stopping at ".", "!", "?" or "\\n\\n". They alternate until either writes
`</think>` (or the budget ends the thinking: `</think>` is then written for them), and the small model
writes the answer. The default cues are the authors' list for the Qwen3 pair (`cue_set: r1` takes
theirs for R1-Distill). Each relay is kept in `extra["relays"]`. The cues are stop strings: vLLM
takes at most 4 unless `VLLM_MAX_STOP_STRINGS` is raised, which splitreason does (64) for the servers
it launches; for servers someone else runs, set it there.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from splitcli.modes import Mode, ModeOptions, register
from splitcli.session import Session
from splitcli.trace import THINK_END, Trace

CUES = {
    "qwen3": ["Oh,", "another,", "Thus", "Now", "Alternatively", "alternatively,", "Thus,", "Therefore", "similarly",
              "similarly,", "now", "Again", "specifically,", "Again,", "Similarly,", "Now,", "Specifically,", "Hence",
              "Similarly", "Other", "now,", "hence", "Specifically", "So ", "Therefore,", "Wait,", "Also", "So,"],
    "r1": ["Wait", "Thus", "thus", "similarly", "Again,", "Now", "Therefore", "hence", "Hence,", "Now,", "Thus,", "Oh,",
           "Similarly,", "Any", "Therefore,", "Alternatively,", "now,", "So,", "now", "verify", "Specifically,",
           "Alternatively", "Ah,", "wait", "So "],
}


class RelayGenOptions(ModeOptions):
    cue_set: Literal["qwen3", "r1"] = Field("qwen3", description="the authors' calibrated cues for this model family")
    cues: list[str] | None = Field(None, description="your own cues instead of the cue set's (calibrate them for your pair)")
    sentence_ends: list[str] = Field([".", "!", "?", "\n\n"], min_length=1, description="where the small model hands back")
    big_min_tokens: int = Field(5, ge=0, description="tokens the big model writes before a cue may hand off")


@register
class RelayGen(Mode[RelayGenOptions]):
    name = "relaygen"
    summary = "the big model reasons; after its cue words the small one finishes the sentence, and answers (RelayGen)"

    async def run(self, session: Session, trace: Trace) -> None:
        options, relays = self.options, trace.extra.setdefault("relays", [])
        cues = options.cues if options.cues is not None else CUES[options.cue_set]
        while session.room() > 0:
            _, big = await session.write("big", session.room(), stop=[THINK_END, *cues], min_tokens=options.big_min_tokens)
            if big.ended_with_eos or not big.token_ids:
                return
            if big.text.endswith(THINK_END):
                break
            if not big.stopped_on_string or session.room() <= 0:
                continue  # the budget: the thinking is closed below
            _, small = await session.write("small", session.room(), stop=[THINK_END, *options.sentence_ends])
            relays.append({"cue": str(big.stop_reason), "big_tokens": len(big.token_ids), "small_tokens": len(small.token_ids)})
            if small.ended_with_eos:
                return
            if small.text.endswith(THINK_END):
                break
        else:
            return  # the budget ended during the thinking: no room to close it
        if session.room() > 0:
            await session.write("small", session.room())  # the answer: always the small model's, as published
