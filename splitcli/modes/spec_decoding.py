"""vLLM's own speculative decoding of the big model, as the speed baseline: the big model served with
a draft (the small model by default; EAGLE or n-gram by `big.speculative.method`) on a server of
its own, launched when this mode needs it. The trace records vLLM's acceptance statistics, read
from that server's metrics before and after the request (other requests to the same server at the
same time are counted in them too)."""

from __future__ import annotations

from typing import ClassVar

from splitcli.modes import Mode, register
from splitcli.profiles import ServerKey
from splitcli.session import Session
from splitcli.trace import Model, Trace

COUNTERS = {
    "drafts": "vllm:spec_decode_num_drafts_total",
    "draft_tokens": "vllm:spec_decode_num_draft_tokens_total",
    "accepted_tokens": "vllm:spec_decode_num_accepted_tokens_total",
}


@register
class SpecDecoding(Mode):
    name = "spec-decoding"
    summary = "the big model alone, sped up by vLLM's speculative decoding (draft model, EAGLE or n-gram)"
    roles = ("big",)
    servers: ClassVar[dict[Model, ServerKey]] = {"big": "spec"}

    async def run(self, session: Session, trace: Trace) -> None:
        before = await session.metrics("big")
        await session.write("big", session.room())
        after = await session.metrics("big")
        counts = {name: int(after.get(metric, 0) - before.get(metric, 0)) for name, metric in COUNTERS.items()}
        drafts, drafted, accepted = counts["drafts"], counts["draft_tokens"], counts["accepted_tokens"]
        speculative = session.profile.spec("spec").speculative
        trace.extra["speculative"] = {
            **counts,
            "acceptance_rate": round(accepted / drafted, 4) if drafted else None,
            # tokens per target-model step: the accepted drafts plus the one the target adds itself
            "mean_accepted_length": round(1 + accepted / drafts, 3) if drafts else None,
            "config": speculative.model_dump() if speculative else None,
        }
