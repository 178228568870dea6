"""A beam over small-model drafts, scored by the big model (not in the paper; the original's mode).

Each step the small model extends every candidate by `stok` tokens (one batched request, sampled),
the big model writes a greedy `ltok`-token continuation of each (one batched request with logprobs):
its mean token log-prob is the candidate's score, and the continuation is appended. The best
max(1, n // sdecay) are kept (the original sorted ascending and kept the worst). When at most
`lbound` remain: if more than 2/3 have closed the thinking block, they are scored once more and the
single best is kept; otherwise each is duplicated and the beam goes on. Then the small model
finishes the thinking and the big model writes the answer. Candidates that lose stay in the trace,
not kept: shown dimmed, their tokens counted as spent.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from statistics import fmean

from pydantic import Field

from splitcli.engine import Completion
from splitcli.modes import Mode, ModeOptions, register
from splitcli.session import Session
from splitcli.trace import THINK_END, Model, Segment, Trace


class SubselectOptions(ModeOptions):
    sgen: int = Field(8, ge=1, description="beam width: candidates drafted at the start")
    stok: int = Field(64, ge=1, description="small-model tokens per candidate per step")
    ltok: int = Field(8, ge=1, description="big-model tokens that score (and extend) each candidate")
    sdecay: int = Field(2, ge=1, description="keep 1/sdecay of the candidates per step")
    lbound: int = Field(2, ge=1, description="at or below this many candidates, finish or duplicate")
    max_steps: int = Field(32, ge=1, description="most beam steps before the best candidate is taken")


@dataclass
class Candidate:
    pieces: list[tuple[Model, list[int], str]] = field(default_factory=list)  # beyond the prompt
    segments: list[Segment] = field(default_factory=list)  # its lineage in the trace
    score: float = float("-inf")
    ended: bool = False  # a model ended the text (EOS): nothing more is drafted for it

    @property
    def text(self) -> str:
        return "".join(text for _, _, text in self.pieces)

    @property
    def tokens(self) -> int:
        return sum(len(ids) for _, ids, _ in self.pieces)

    def copy(self) -> Candidate:
        return Candidate(list(self.pieces), list(self.segments), self.score, self.ended)


@register
class LogprobSubselect(Mode[SubselectOptions]):
    name = "logprob-subselect"
    summary = "beam over small-model drafts, scored by the big model's log-probs; the best survives"
    replaces_text = True

    async def run(self, session: Session, trace: Trace) -> None:
        options = self.options
        base = {role: list(await session.context(role)) for role in session.roles}
        beam = [Candidate() for _ in range(options.sgen)]
        self._drafted: list[Segment] = []  # every candidate's segments, survivors or not
        for step in range(options.max_steps):
            room = min(session.room(candidate=c.tokens) for c in beam)
            if room <= 0 or all(c.ended for c in beam):
                break
            await self._extend(session, base, beam, step, min(options.stok, room))
            await self._score(session, base, beam)
            beam = sorted(beam, key=lambda c: c.score, reverse=True)[: max(1, len(beam) // options.sdecay)]
            self._mark(session, beam)
            if len(beam) <= options.lbound:
                closed = sum(THINK_END in c.text for c in beam)
                if closed > 2 * len(beam) / 3:
                    await self._score(session, base, beam)
                    beam = sorted(beam, key=lambda c: c.score, reverse=True)[:1]
                    break
                beam = [copy for c in beam for copy in (c, c.copy())]
        winner = max(beam, key=lambda c: c.score)
        self._mark(session, [winner])
        for role, ids, text in winner.pieces:
            session.commit(role, ids, text)
        await self._finish(session, winner)

    async def _extend(self, session: Session, base: dict[Model, list[int]], beam: list[Candidate], step: int,
                      tokens: int) -> None:
        """Every candidate `tokens` further with the small model, sampled: identical candidates are
        one prompt with n samples (vLLM seeds sample j with seed + j, so they differ under a seed)."""
        groups: dict[str, list[int]] = {}
        for position, candidate in enumerate(beam):
            if not candidate.ended:
                groups.setdefault(repr(session.with_pieces("small", base["small"], candidate.pieces)), []).append(position)
        by_size: dict[int, list[list[int]]] = {}
        for members in groups.values():
            by_size.setdefault(len(members), []).append(members)
        seed = None if session.sampling.seed is None else session.sampling.seed + 1000 * step
        sampled = session.sampling.temperature > 0  # greedy: one answer per prompt, shared by its copies
        requests = [
            session.sample("small", [session.with_pieces("small", base["small"], beam[members[0]].pieces)
                                     for members in group], tokens, n=size, seed=seed)
            for size, group in by_size.items()
        ]
        answers = await asyncio.gather(*requests)
        for (size, group), completions in zip(by_size.items(), answers, strict=True):
            per_prompt = size if sampled else 1
            for index, members in enumerate(group):
                for j, position in enumerate(members):
                    completion = completions[index * per_prompt + (j if sampled else 0)]
                    self._append(session, beam[position], "small", completion, position)

    async def _score(self, session: Session, base: dict[Model, list[int]], beam: list[Candidate]) -> None:
        """The big model's greedy continuation of each open candidate: its mean log-prob is the score,
        and it is appended to the candidate (one batched request)."""
        positions = [position for position, candidate in enumerate(beam) if not candidate.ended]
        if not positions:
            return
        room = min(session.room(candidate=beam[position].tokens) for position in positions)
        if room <= 0:
            return
        prompts = [session.with_pieces("big", base["big"], beam[position].pieces) for position in positions]
        completions = await session.score("big", prompts, min(self.options.ltok, room))
        for position, completion in zip(positions, completions, strict=True):
            candidate = beam[position]
            candidate.score = fmean(completion.logprobs) if completion.logprobs else float("-inf")
            self._append(session, candidate, "big", completion, position)

    def _append(self, session: Session, candidate: Candidate, role: Model, completion: Completion, branch: int) -> None:
        candidate.pieces.append((role, list(completion.token_ids), completion.text))
        segment = session.record(role, completion, branch)
        candidate.segments.append(segment)
        self._drafted.append(segment)
        candidate.ended = candidate.ended or completion.ended_with_eos

    def _mark(self, session: Session, beam: list[Candidate]) -> None:
        """Only segments in a surviving candidate's lineage stay kept (shown dimmed otherwise)."""
        session.keep_only(self._drafted, [segment for candidate in beam for segment in candidate.segments])

    async def _finish(self, session: Session, winner: Candidate) -> None:
        """The small model closes the thinking (unless the winner did); the big model writes the answer
        (unless the winner's text has ended)."""
        if winner.ended:
            return
        if THINK_END not in winner.text and session.room() > 0:
            _, result = await session.write("small", session.room(), stop=[THINK_END])
            if result.ended_with_eos:
                return
        if session.room() > 0:
            await session.write("big", session.room())
