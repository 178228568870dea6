"""Drafts: a model generating into a segment of the trace (shown live), not committed to any
context until the caller keeps all or part of it; the ids and text of what is kept agree."""

from __future__ import annotations

import asyncio

from splitcli.contexts import Contexts
from splitcli.engine import Completion
from splitcli.handoffs import LiveDraft, OnDelta, Warmer
from splitcli.profiles import Sampling
from splitcli.trace import Model, Segment, Trace


class Drafter:
    def __init__(self, contexts: Contexts, trace: Trace, sampling: Sampling, stream: bool, warmer: Warmer) -> None:
        self.contexts = contexts
        self.trace = trace
        self.sampling = sampling
        self.stream = stream
        self.warmer = warmer

    def _showing(self, segment: Segment, arrived: asyncio.Event | None = None) -> OnDelta:
        """What a draft does with each piece: into the segment, shown live. The first token's time is
        measured only when streamed (a background draft always is)."""
        timed = self.stream or arrived is not None

        def on_delta(text: str, ids: list[int]) -> None:
            if segment.first_token is None and timed:
                segment.first_token = self.trace.now()
            segment.text += text
            segment.token_ids += ids
            if arrived is not None:
                arrived.set()
            self.trace.emit("update", segment)

        return on_delta

    async def draft(self, role: Model, segment: Segment, max_tokens: int, stop: list[str] | None = None,
                    temperature: float | None = None, min_tokens: int = 0) -> Completion:
        """Generate into `segment` (shown live) without committing it to any context yet."""
        prompt = await self.contexts.context(role)
        max_tokens = self.contexts.max_new(role, max_tokens)
        if max_tokens <= 0:
            return Completion(finish_reason="length")
        client = self.contexts.clients[role]
        temp = self.sampling.temperature if temperature is None else temperature
        first_call = not segment.prompt_tokens
        base_text, base_ids = segment.text, len(segment.token_ids)
        on_delta = self._showing(segment)
        kwargs = {"max_tokens": max_tokens, "temperature": temp, "top_p": self.sampling.top_p,
                  "seed": self.sampling.seed, "stop": stop, "min_tokens": min(min_tokens, max_tokens)}
        if self.stream:
            result = await client.stream(prompt, on_delta=self.warmer.watching(role, segment, on_delta), **kwargs)
        else:
            (result,) = await client.complete([prompt], **kwargs)
            on_delta(result.text, result.token_ids)
        if result.stopped_on_string:
            await self.contexts.spelling[role].match_ids_to_text(result)
        segment.text, segment.token_ids = base_text, segment.token_ids[:base_ids]
        segment.text += result.text
        segment.token_ids += result.token_ids
        if first_call:
            segment.prompt_tokens, segment.cached_tokens = result.prompt_tokens, result.cached_tokens
        return result

    async def start_draft(self, role: Model, segment: Segment, max_tokens: int,
                          stop: list[str] | None = None) -> LiveDraft:
        """Start streaming into `segment` in the background; the caller reads the live completion,
        cancels it, then keeps part of it (`keep`). Nothing is committed meanwhile."""
        prompt = await self.contexts.context(role)
        max_tokens = self.contexts.max_new(role, max_tokens)
        completion = Completion()
        arrived = asyncio.Event()
        watched = self.warmer.watching(role, segment, self._showing(segment, arrived))
        lives = self.warmer.live
        live = lives.take(prompt) if lives is not None and role == "big" and stop is None else None

        async def generate() -> Completion:
            if max_tokens <= 0:
                completion.finish_reason = "length"
                if live is not None and lives is not None:
                    lives.end([live])
                return completion
            sampling = {"max_tokens": max_tokens, "temperature": self.sampling.temperature,
                        "top_p": self.sampling.top_p, "seed": self.sampling.seed}
            client, result = self.contexts.clients[role], None
            if live is not None:  # only the tokens since the warm-up cross to the engine
                result = await client.live_stream(live, prompt[len(live.prompt):], on_delta=watched,
                                                  result=completion, **sampling)
            if result is None:
                result = await client.stream(prompt, stop=stop, on_delta=watched, result=completion, **sampling)
            if not segment.prompt_tokens:
                segment.prompt_tokens, segment.cached_tokens = result.prompt_tokens, result.cached_tokens
            arrived.set()
            return result

        return LiveDraft(completion, asyncio.ensure_future(generate()), arrived)

    def settle(self, segment: Segment, draft: Completion, tokens: int) -> None:
        """The draft's first `tokens` are final (no cut can fall inside them): listeners that cannot take
        text back (a terminal, an API stream) may show them now, not only once the segment closes."""
        chars, count = len(segment.text) - len(draft.text), 0  # what the segment held before the draft
        for text, size in draft.pieces:
            if count + size > tokens:
                break
            chars, count = chars + len(text), count + size
        if chars > getattr(segment, "final_chars", 0):
            segment.final_chars = chars  # type: ignore[attr-defined]  # runtime only, not saved
            self.trace.emit("final", segment)

    async def drop_stop_string(self, role: Model, result: Completion, segment: Segment | None = None) -> None:
        """Take the stop string a draft ended on off its end (text and ids, and the segment showing it),
        e.g. a `</think>` that budget forcing replaces with "Wait"."""
        stop = str(result.stop_reason)
        if not result.stopped_on_string or not result.text.endswith(stop):
            return
        text, ids = await self.contexts.spelling[role].without_stop(result)
        if segment is not None:
            segment.text = segment.text[: len(segment.text) - len(stop)]
            self._replace_tail(segment, result, ids)
        result.text, result.token_ids, result.pieces = text, ids, [(text, len(ids))]

    def _replace_tail(self, segment: Segment, result: Completion, ids: list[int]) -> None:
        """The draft's ids at the segment's end become `ids`; the ones given up count as dropped."""
        segment.token_ids = segment.token_ids[: len(segment.token_ids) - len(result.token_ids)] + ids
        segment.dropped_tokens += max(0, len(result.token_ids) - len(ids))
        self.trace.emit("update", segment)

    async def keep(self, role: Model, segment: Segment, result: Completion, n_tokens: int,
                   chars: int | None = None) -> None:
        """Keep the first `n_tokens` of a draft in `segment` and commit them; drop the rest (counted
        in the segment's dropped tokens). With `chars`: keep the draft's text up to that character
        instead, which may end inside a token: its tail is re-tokenised, so ids and text agree."""
        spelling = self.contexts.spelling[role]
        if chars is not None and chars < len(result.text):
            kept_text = result.text[:chars]
            ids = await spelling.ids_spelling(result.token_ids, kept_text)
        else:
            n_tokens = len(result.token_ids) if chars is not None else n_tokens
            ids = result.token_ids[:n_tokens]
            kept_text = await spelling.text_of_first(result, n_tokens) if n_tokens < len(result.token_ids) else result.text
        if kept_text != result.text or ids != result.token_ids:
            segment.text = segment.text[: len(segment.text) - len(result.text)] + kept_text
            self._replace_tail(segment, result, ids)
        self.contexts.commit(role, ids, kept_text)

