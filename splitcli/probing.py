"""Where a big segment ends: what the small model would write after each of its prefixes (a
CloseProbe each, asked by the Prober), and the CutFinder that turns those, in prefix order, into
the cut. The Prober asks the engine; CloseProbe, Cut and CutFinder are pure rules that decide."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from splitcli.contexts import Contexts
from splitcli.engine import Completion, Prefixed, Prompt


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


class ProbeBudget:
    """How much probing a streamed big segment may cost: `share` of the time the big model streams.

    Credit accrues at `share` seconds per second of streaming; each probe request spends the seconds
    it took. A probe while the stream goes on is sent only when the credit covers it, the probes still
    out, and the probe that will end the segment (all costed at the last request's seconds); that last
    probe always goes, since the cut needs it, even into debt, which later segments pay back. So the
    probes' summed time stays near `share` of the big model's, whatever a request costs here (context
    length, load), and it only decides when probes go: the cut is a property of the text. Share 0:
    no budget, every bucket is probed."""

    def __init__(self, share: float, most_in_flight: int = 2) -> None:
        self.share = share
        self.most_in_flight = most_in_flight
        self.credit = 0.0
        self.cost: float | None = None  # seconds of the last probe request, once one has answered

    def accrue(self, streamed_seconds: float) -> None:
        self.credit += self.share * streamed_seconds
        if self.cost is not None:  # no hoard from cheap stretches that a burst would spend later, but
            # room for the most `allows` may ask: the requests out, this one and the segment's last
            self.credit = min(self.credit, self.cost * (self.most_in_flight + 1))

    def spend(self, request_seconds: float) -> None:
        self.credit -= request_seconds
        self.cost = request_seconds

    def allows(self, in_flight: int) -> bool:
        """May one more probe go out mid-stream, with `in_flight` requests out already?"""
        if self.share <= 0 or self.cost is None:
            return True  # no budget, or nothing known yet of what a request costs: probe each bucket
        return self.credit >= self.cost * (in_flight + 2)


class Prober:
    """Asks the small model whether it would close the tag after each prefix of big-model text not
    yet in its context: through the small server's continuations route when it has one (`use_route`:
    exact, the context sent once), otherwise in one batched OpenAI request of greedy probes."""

    def __init__(self, contexts: Contexts, close_tag: str, use_route: bool = True) -> None:
        self.contexts = contexts
        self.small = contexts.clients["small"]
        self.marker = close_tag[:5]  # "</big": the small model starts closing
        self.use_route = use_route

    async def probe_close(self, draft: Completion, start: int, stop: int, probe_tokens: int,
                          stride: int = 1) -> list[CloseProbe]:
        """A CloseProbe for each prefix draft[:i], start < i <= stop. Over the OpenAI API, `stride` > 1
        probes every stride-th prefix first, an approximation: a close that a later probed prefix
        does not repeat is missed (the route is exact and ignores it)."""
        if stop <= start:
            return []
        # A copy: the context grows in place once a cut is committed, while a probe of the stream still runs.
        base = list(await self.contexts.context("small"))
        if self.contexts.shared_tokenizer:
            tails = [draft.token_ids[:i] for i in range(start + 1, stop + 1)]
        else:
            # Another tokenizer: each prefix's text in the small model's tokens, after its own context
            # ids, exactly as the context would take it in; re-tokenising the whole text would not be neutral.
            texts = await self.contexts.spelling["big"].prefix_texts(draft, start, stop)
            tails = list(await asyncio.gather(*(self.small.tokenize(text) for text in texts)))
        prompts: list[Prompt] = [Prefixed(base, tail) for tail in tails]
        # A prefix that fills the small model's context leaves it no room to write anything: vLLM
        # would reject the whole batch for it, so such prefixes are not probed (they cannot close).
        limit = self.contexts["small"].max_model_len
        fitting = sum(1 for prompt in prompts if not limit or len(prompt) < limit)
        found = [CloseProbe(False)] * len(prompts)
        why = "probe_route is off"
        if self.use_route and fitting:
            routed, why = await self._by_route(base, tails[:fitting], probe_tokens)
            if routed is not None:
                return await self._own_text(draft, start, routed + found[fitting:])
        # Every `stride`-th prefix first (1: all of them, exact); then, before the first that closes,
        # the ones skipped (and the next one, which decides a close that needs whitespace first).
        first_pass = [i for i in range(fitting) if (i + 1) % stride == 0 or i == fitting - 1]
        await self._by_openai(prompts, first_pass, found, probe_tokens, why)
        hit = next((i for i in first_pass if found[i].closes), None)
        if stride > 1 and hit is not None:
            previous = max((i for i in first_pass if i < hit), default=-1)
            second_pass = [i for i in [*range(previous + 1, hit), hit + 1] if i < fitting and i not in first_pass]
            await self._by_openai(prompts, second_pass, found, probe_tokens, why)
        return await self._own_text(draft, start, found)

    async def _by_openai(self, prompts: list[Prompt], chosen: list[int], found: list[CloseProbe],
                         probe_tokens: int, why: str) -> None:
        """Greedy continuations of the chosen prompts in ONE batched request (vLLM shortens
        `max_tokens` per prompt to the room its context leaves). Text only: asking for token ids
        would send every prompt's ids back too. `why`: why not through the route (in the trace)."""
        if not chosen:
            return
        answers = await self.small.complete([prompts[i] for i in chosen], max_tokens=probe_tokens, temperature=0.0,
                                            kind="probe", token_ids=False, path="openai", why=why or None)
        for index, answer in zip(chosen, answers, strict=True):
            found[index] = self.read(answer.text)

    async def _by_route(self, base: list[int], tails: list[list[int]],
                        probe_tokens: int) -> tuple[list[CloseProbe] | None, str]:
        """Exact probes through the small server's continuations route (the context sent once, only
        prefixes whose next token could begin the tag decoded in full). None, and why, where the
        server has no route or it failed, or the tails are not prefixes of one sequence (another
        tokenizer may respell them)."""
        longest = tails[-1]
        if any(tail != longest[: len(tail)] for tail in tails):
            return None, "the prefixes, respelled by the small model's tokenizer, are not one sequence"
        first = len(base) + min(len(tail) for tail in tails)
        if first == 0:
            return None, "nothing to probe after"
        texts, why = await self.small.continuations(Prefixed(base, longest), first, probe_tokens, self.marker)
        if texts is None:
            return None, why
        return [self.read(texts[len(base) + len(tail) - first]) for tail in tails], ""

    async def _own_text(self, draft: Completion, start: int, probes: list[CloseProbe]) -> list[CloseProbe]:
        """Where the small model writes other text than whitespace before the tag, only the big
        model's own next text may stand there (the tag merged with it, `.</`): keep such a close, with
        where its prefix ends in the draft's text, while the draft's text so far agrees with it."""
        settled = []
        for number, probe in enumerate(probes, start=start + 1):
            if probe.closes and probe.lead.strip():
                end = len(await self.contexts.spelling["big"].text_of_first(draft, number))
                following = draft.text[end:]
                agrees = following.startswith(probe.lead) or probe.lead.startswith(following)
                probe = CloseProbe(True, probe.lead, end) if agrees else CloseProbe(False)
            settled.append(probe)
        return settled

    def read(self, text: str) -> CloseProbe:
        """What one continuation says: the tag, and the text before it, or no close."""
        at = text.find(self.marker)
        return CloseProbe(True, text[:at]) if at >= 0 else CloseProbe(False)
