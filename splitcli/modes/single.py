"""Baselines with one model: big-only and small-only (the prompt without the SplitReason hint)."""

from __future__ import annotations

from splitcli.modes import Mode, register
from splitcli.session import Session
from splitcli.trace import Trace


class _SingleModel(Mode):
    async def run(self, session: Session, trace: Trace) -> None:
        (role,) = self.roles
        await session.write(role, session.room())


@register
class BigOnly(_SingleModel):
    name = "big-only"
    summary = "the big model alone"
    roles = ("big",)


@register
class SmallOnly(_SingleModel):
    name = "small-only"
    summary = "the small model alone"
    roles = ("small",)
