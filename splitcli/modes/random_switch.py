"""The paper's baseline: each step picks the big model with probability 1/(ratio+1) for `chunk` tokens."""

from __future__ import annotations

import random

from pydantic import Field

from splitcli.modes import Mode, ModeOptions, register
from splitcli.session import Session
from splitcli.trace import Trace


class RandomSwitchOptions(ModeOptions):
    ratio: int = Field(9, ge=0, description="small:big steps are ratio:1 on average")
    chunk: int = Field(32, ge=1, description="tokens per step")
    seed: int | None = Field(None, description="choice seed (default: sampling.seed, else 0)")


@register
class RandomSwitch(Mode[RandomSwitchOptions]):
    name = "random-switch"
    summary = "random model per chunk, big with probability 1/(ratio+1) (the paper's baseline)"

    async def run(self, session: Session, trace: Trace) -> None:
        options = self.options
        seed = options.seed if options.seed is not None else (session.sampling.seed or 0)
        choices = random.Random(seed)
        while session.room() > 0:
            role = "big" if choices.random() < 1 / (options.ratio + 1) else "small"
            _, result = await session.write(role, min(options.chunk, session.room()), extend=True)
            if result.ended_with_eos or not result.token_ids:
                return
