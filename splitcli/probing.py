"""Where a big segment ends: what the small model would write after each of its prefixes (a
CloseProbe each), and the CutFinder that turns those, in prefix order, into the cut. Pure rules:
the Session asks the engine, these decide."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class CloseProbe:
    """What the small model writes after one prefix of a big segment: the closing tag or not, and
    what it writes before the tag: whitespace of its own (`lead`, `end` None), or the big model's own
    next text merged with the tag (`lead` = `.` in `.</bigmodel>` after `...is 5`; real BPE vocabularies
    join punctuation to `</`), which then starts at character `end` of the draft's text."""

    closes: bool
    lead: str = ""
    end: int | None = None


@dataclass(frozen=True)
class Cut:
    """Where a big segment ends: after `index` of its tokens, with `lead` written by the small model;
    or, when the small model's tag follows part of the big model's own next text, at character `end`
    of the segment's text (it may fall inside one of the big model's tokens)."""

    index: int
    lead: str = ""
    end: int | None = None


class CutFinder:
    """The end of one big segment, as a property of the text and not of how it was batched.

    Prefixes 1, 2, ... of the segment are fed in order, with the segment's text as far as it is known.
    Prefix i ends the segment when the small model's greedy continuation is the closing tag, or the
    big model's own next text followed by the tag (the cut then lands after that text). When it is
    whitespace and then the tag, the next prefix decides: if the big model's next token lets the small
    model close right away, the cut is after it (the big model's own whitespace is kept); otherwise the
    cut is at i, with the small model's whitespace. A prefix waits while the text it depends on is not
    written yet. So the cut never depends on where chunks or buckets end."""

    def __init__(self) -> None:
        self.seen = 0
        self.text = ""
        self._undecided: deque[tuple[int, CloseProbe, int]] = deque()  # (prefix, probe, its text offset)

    @property
    def decided(self) -> int:
        """Prefixes known not to end the segment: its first `decided` tokens are final."""
        return self.seen - len(self._undecided)

    @property
    def waiting(self) -> bool:
        """A prefix waits for more of the big model's text (one more token may decide it)."""
        return bool(self._undecided)

    def feed(self, probes: list[CloseProbe], text: str, offset: int = 0) -> Cut | None:
        """Probes for the next prefixes (self.seen + 1, ...); `text`: the segment's text as known now,
        in which the probes' `end` count from `offset`. The cut once it is decided."""
        self.text = text
        for probe in probes:
            self.seen += 1
            self._undecided.append((self.seen, probe, offset))
        return self._decide(final=False)

    def finish(self) -> Cut | None:
        """The segment ended (EOS, cap, budget) with no further prefix or text: what waits is decided."""
        return self._decide(final=True)

    def _decide(self, final: bool) -> Cut | None:
        while self._undecided:
            index, probe, offset = self._undecided[0]
            verdict = self._verdict(index, probe, offset, final)
            if verdict is _WAIT:
                return None
            self._undecided.popleft()
            if verdict is not None:
                self._undecided.clear()
                return verdict  # type: ignore[return-value]
        return None

    def _verdict(self, index: int, probe: CloseProbe, offset: int, final: bool) -> Cut | object | None:
        if not probe.closes:
            return None
        if not probe.lead:
            return Cut(index)
        if probe.end is None:  # whitespace of the small model's own: the next prefix decides
            if len(self._undecided) < 2:
                return Cut(index, probe.lead) if final else _WAIT
            after = self._undecided[1][1]
            return Cut(index + 1) if after.closes and not after.lead else Cut(index, probe.lead)
        start = offset + probe.end
        following = self.text[start:]
        if following.startswith(probe.lead):
            return Cut(index, end=start + len(probe.lead))
        if probe.lead.startswith(following) and not final:
            return _WAIT
        return None


_WAIT = object()
