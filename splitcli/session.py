"""A Session: both models working on one question.

It owns what the modes should not have to think about: the prompt of each model (from its own chat
template), each model's context as token ids, handoffs (token ids when the tokenizers match, text
otherwise), tag removal for the big model, the token budget, probing the small model for the end of
a big segment, and recording into the Trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from splitcli.engine import Completion, EngineClient, Prefixed, Prompt
from splitcli.errors import EngineError, UsageError
from splitcli.handoffs import LiveRequests
from splitcli.probing import CloseProbe
from splitcli.profiles import Profile, PromptConfig, Sampling, ServerKey
from splitcli.trace import THINK_END, Model, Segment, Trace, strip_tags

TOKENIZER_PROBE = "Tokenizer probe: 12 * 3 = 36, so x^2 + y_1 <bigmodel>\\frac{a}{b}</bigmodel> naïve."


@dataclass
class Context:
    """What one model has seen so far, as its own token ids (and the same as text)."""

    ids: list[int] = field(default_factory=list)
    text: str = ""
    prompt_tokens: int = 0
    prompt_text: str = ""
    max_model_len: int = 0
    # Written by the other model, not yet sent: (token ids when usable as-is, text).
    pending: list[tuple[list[int] | None, str]] = field(default_factory=list)


@dataclass
class LiveDraft:
    """A generation running in the background (streamed): its completion grows as pieces arrive."""

    completion: Completion
    task: asyncio.Task[Completion]
    arrived: asyncio.Event

    @property
    def tokens(self) -> int:
        return len(self.completion.token_ids)

    @property
    def finished(self) -> bool:
        return self.task.done()

    def raise_failure(self) -> None:
        """Re-raise what ended the generation, if it failed (a server that died mid-stream)."""
        if self.task.done() and not self.task.cancelled() and self.task.exception() is not None:
            raise self.task.exception()  # type: ignore[misc]

    async def cancel(self) -> None:
        """Stop generating: the HTTP stream is closed and vLLM aborts the request."""
        if not self.task.done():
            self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task




class Session:
    def __init__(self, profile: Profile, trace: Trace, servers: dict[Model, ServerKey],
                 clients: dict[Model, EngineClient], stream: bool = True, sampling: Sampling | None = None) -> None:
        roles = tuple(servers)
        self.profile = profile
        self.trace = trace
        self.roles = roles
        self.stream = stream
        self.sampling = sampling or profile.sampling
        self.tags: PromptConfig = profile.prompt
        self.servers = servers
        trace.session_id = trace.session_id or uuid.uuid4().hex[:16]
        self.clients: dict[Model, EngineClient] = {  # the caller's pools, recording into this trace, one replica each
            role: clients[role].bound(clock=trace.now, record=trace.calls.append, session=trace.session_id)
            for role in roles
        }
        self.contexts: dict[Model, Context] = {role: Context() for role in roles}
        self.shared_tokenizer = False
        self.open_ids: list[int] = []
        self.close_ids: list[int] = []
        self._prefix: dict[Model, tuple[list[int], str]] = {}
        self._stop_ids: dict[str, list[int]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._warm_every = 0
        self._live: LiveRequests | None = None
        self._probe_route = True

    def use(self, *, warm_every: int = 0, live_handoff: bool = False, probe_route: bool = True) -> None:
        """How this session hands off and probes (a mode's knobs, set in its `configure`): warm-ups of
        the idle model every `warm_every` tokens of the other's segment; the big model's last warm-up
        kept alive in its engine (`live_handoff`); probes through our route in the small server when
        it has one (exact, the context sent once) or over the OpenAI API."""
        self._warm_every = warm_every
        self._live = LiveRequests(self.clients["big"]) if live_handoff and "big" in self.clients else None
        self._probe_route = probe_route

    @property
    def knobs(self) -> dict[str, Any]:
        """What `use` set."""
        return {"warm_every": self._warm_every, "live_handoff": self._live is not None, "probe_route": self._probe_route}

    async def aclose(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._live is not None:
            await self._live.aclose()
        for client in self.clients.values():
            client.release()

    def in_background(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `work` alongside; cancelled when the session ends; its failure is not the run's."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # ------------------------------------------------------------ set-up
    async def prepare(self, with_hint: bool) -> None:
        """Build each model's prompt and find out whether handoffs can pass token ids."""
        served = await asyncio.gather(*(self.clients[role].describe() for role in self.roles))
        self.trace.served = {role: {**info, "revision": self.profile.spec(self.servers[role]).revision}
                             for role, info in zip(self.roles, served, strict=True)}
        await asyncio.gather(*(self._prepare_prompt(role, with_hint and role == "small") for role in self.roles))
        for role in self.roles:
            context = self.contexts[role]
            if context.max_model_len and context.prompt_tokens >= context.max_model_len:
                raise UsageError(
                    f"the question makes a {context.prompt_tokens}-token prompt, over the {role} model's context of "
                    f"{context.max_model_len} tokens (shorten it, or raise {role}.max_model_len)"
                )
        budget, prompt = self.sampling.max_tokens, self.contexts[self.roles[0]].prompt_tokens
        self.trace.prompt_tokens = prompt
        if prompt >= budget:
            raise UsageError(
                f"the question makes a {prompt}-token prompt, which leaves nothing of the {budget}-token budget "
                f"(shorten it, or raise it with --set sampling.max_tokens=N)"
            )
        if len(self.roles) == 2:
            small_ids, big_ids = await asyncio.gather(
                self.clients["small"].tokenize(TOKENIZER_PROBE), self.clients["big"].tokenize(TOKENIZER_PROBE))
            self.shared_tokenizer = small_ids == big_ids
        self.trace.handoff = "token_ids" if self.shared_tokenizer else "text"
        if "small" in self.roles:
            self.open_ids, self.close_ids = await asyncio.gather(
                self.clients["small"].tokenize(self.tags.open_tag), self.clients["small"].tokenize(self.tags.close_tag))
            self._stop_ids.update({f"small\x00{self.tags.open_tag}": self.open_ids,
                                   f"small\x00{self.tags.close_tag}": self.close_ids})
            # Tags added as special tokens would vanish from the text (and never fire the stop
            # string) unless special tokens are kept; plain-text tags (the paper's) need no such thing.
            if len(self.open_ids) == 1:
                for client in self.clients.values():
                    client.skip_special_tokens = False

    async def _prepare_prompt(self, role: Model, with_hint: bool) -> None:
        client = self.clients[role]
        messages = [*self.trace.conversation,
                    {"role": "user", "content": self.tags.user_message(self.trace.question, with_hint)}]
        ids, max_len = await client.tokenize_chat(messages)
        text = await client.detokenize(ids)
        prefix = self.tags.assistant_prefix
        if prefix and not text.endswith(prefix):
            ids += await client.tokenize(prefix)
            text += prefix
        prefill = self.trace.prefill.removeprefix(prefix) if prefix else self.trace.prefill
        if prefill:  # the answer's start, given by the caller: the model goes on from it
            ids += await client.tokenize(prefill)
            text += prefill
        self.contexts[role] = Context(ids=ids, text=text, prompt_tokens=len(ids), prompt_text=text, max_model_len=max_len)

    # ------------------------------------------------------------ budget
    def room(self) -> int:
        """Tokens left in the budget (prompt included, as in the paper's 16384, and at most
        `max_new_tokens` generated); text already queued to start a model's next segment (a closing
        tag) is counted as spent."""
        primary = self.contexts[self.roles[0]]
        generated = sum(segment.tokens for segment in self.trace.kept_segments)
        queued = sum(len(ids) for ids, _ in self._prefix.values())
        room = self.sampling.max_tokens - primary.prompt_tokens - generated - queued
        if self.sampling.max_new_tokens is not None:
            room = min(room, self.sampling.max_new_tokens - generated - queued)
        return room

    def _max_new(self, role: Model, wanted: int) -> int:
        context = self.contexts[role]
        pending = sum(len(ids) if ids is not None else len(text) for ids, text in context.pending)
        limit = context.max_model_len - len(context.ids) - pending if context.max_model_len else wanted
        return max(0, min(wanted, limit))

    # ------------------------------------------------------------ contexts and handoff
    def _for_big(self, ids: list[int], text: str) -> tuple[list[int] | None, str]:
        """A small-model piece as the big model sees it: tags removed (ids only if exactly removable)."""
        open_tag, close_tag = self.tags.open_tag, self.tags.close_tag
        clean_text = strip_tags(text, open_tag, close_tag)
        if not self.shared_tokenizer:
            return None, clean_text
        # Tags sit at a piece's ends (the small model stops on the opening tag; we put the closing
        # one first): their ids come off exactly unless BPE merged them with a neighbour.
        clean_ids, rest = list(ids), text
        if rest.startswith(close_tag):
            if clean_ids[: len(self.close_ids)] != self.close_ids:
                return None, clean_text
            clean_ids, rest = clean_ids[len(self.close_ids):], rest[len(close_tag):]
        if rest.endswith(open_tag):
            if clean_ids[-len(self.open_ids):] != self.open_ids:
                return None, clean_text
            clean_ids, rest = clean_ids[: -len(self.open_ids)], rest[: -len(open_tag)]
        if open_tag in rest or close_tag in rest:
            return None, clean_text
        return clean_ids, clean_text

    def commit(self, role: Model, ids: list[int], text: str) -> None:
        """Add text a model wrote to its own context and queue it for the other model's."""
        # Through the pending queue, so that order is kept with what the other model wrote before.
        self.contexts[role].pending.append((list(ids), text))
        for other in self.roles:
            if other == role:
                continue
            piece = self._for_big(ids, text) if other == "big" else (ids if self.shared_tokenizer else None, text)
            self.contexts[other].pending.append(piece)

    async def context(self, role: Model) -> list[int]:
        """The role's full context as its token ids, after taking in what the other model wrote."""
        context = self.contexts[role]
        if context.pending:
            pending, context.pending = context.pending, []
            ids, text = await self._take_in(role, pending)
            context.ids += ids
            context.text += text
        return context.ids

    async def _take_in(self, role: Model, pieces: list[tuple[list[int] | None, str]]) -> tuple[list[int], str]:
        """Pieces as the role's ids and text: ids used as they are; a run of text pieces (another
        tokenizer, or an unremovable tag) tokenised the role's way, as one."""
        ids, text, text_run = [], "", ""
        for piece_ids, piece_text in [*pieces, ([], "")]:
            if piece_ids is None:
                text_run += piece_text
                continue
            if text_run:
                ids += await self.clients[role].tokenize(text_run)
                text += text_run
                text_run = ""
            ids += piece_ids
            text += piece_text
        return ids, text

    async def hand_back(self, segment: Segment, reason: str, lead: str = "") -> bool:
        """End a big segment and queue the closing tag (after `lead`, whitespace the small model
        writes first) to start the small model's next segment. Returns True when the budget has no
        room for the tag: then the trace ends here."""
        ids = list(self.close_ids) if not lead else await self.clients["small"].tokenize(lead + self.tags.close_tag)
        if len(ids) > self.room():
            self.close(segment, "length")
            return True
        self.close(segment, reason)
        self._prefix["small"] = (ids, lead + self.tags.close_tag)
        return False

    # ------------------------------------------------------------ generation
    async def open(self, role: Model, extend: bool = False) -> Segment:
        last = self.trace.segments[-1] if self.trace.segments else None
        if extend and last is not None and last.model == role:
            return last
        segment = self.trace.open_segment(role)
        if role in self._prefix:
            ids, text = self._prefix.pop(role)
            segment.token_ids += ids
            segment.text += text
            self.commit(role, ids, text)
        return segment

    def close(self, segment: Segment, finish_reason: str | None) -> None:
        self.trace.close_segment(segment, finish_reason)

    async def draft(self, role: Model, segment: Segment, max_tokens: int, stop: list[str] | None = None,
                    temperature: float | None = None) -> Completion:
        """Generate into `segment` (shown live) without committing it to any context yet."""
        prompt = await self.context(role)
        max_tokens = self._max_new(role, max_tokens)
        if max_tokens <= 0:
            return Completion(finish_reason="length")
        client = self.clients[role]
        temp = self.sampling.temperature if temperature is None else temperature
        first_call = not segment.prompt_tokens
        base_text, base_ids = segment.text, len(segment.token_ids)

        def on_delta(text: str, ids: list[int]) -> None:
            if segment.first_token is None and self.stream:
                segment.first_token = self.trace.now()  # measured only when streamed
            segment.text += text
            segment.token_ids += ids
            self.trace.emit("update", segment)

        kwargs = {"max_tokens": max_tokens, "temperature": temp, "top_p": self.sampling.top_p,
                  "seed": self.sampling.seed, "stop": stop}
        if self.stream:
            result = await client.stream(prompt, on_delta=self._warming(role, segment, on_delta), **kwargs)
        else:
            (result,) = await client.complete([prompt], **kwargs)
            on_delta(result.text, result.token_ids)
        if result.stopped_on_string:
            await self._match_ids_to_text(role, result)
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
        prompt = await self.context(role)
        max_tokens = self._max_new(role, max_tokens)
        completion = Completion()
        arrived = asyncio.Event()

        def on_delta(text: str, ids: list[int]) -> None:
            if segment.first_token is None:
                segment.first_token = self.trace.now()
            segment.text += text
            segment.token_ids += ids
            arrived.set()
            self.trace.emit("update", segment)

        live = self._live.take(prompt) if self._live is not None and role == "big" and stop is None else None

        async def generate() -> Completion:
            if max_tokens <= 0:
                completion.finish_reason = "length"
                if live is not None and self._live is not None:
                    self._live.end([live])
                return completion
            sampling = {"max_tokens": max_tokens, "temperature": self.sampling.temperature,
                        "top_p": self.sampling.top_p, "seed": self.sampling.seed}
            watched = self._warming(role, segment, on_delta)
            result = None
            if live is not None:  # only the tokens since the warm-up cross to the engine
                result = await self.clients[role].live_stream(live, prompt[len(live.prompt):], on_delta=watched,
                                                              result=completion, **sampling)
            if result is None:
                result = await self.clients[role].stream(prompt, stop=stop, on_delta=watched, result=completion,
                                                         **sampling)
            if not segment.prompt_tokens:
                segment.prompt_tokens, segment.cached_tokens = result.prompt_tokens, result.cached_tokens
            arrived.set()
            return result

        return LiveDraft(completion, asyncio.ensure_future(generate()), arrived)

    def _warming(self, role: Model, segment: Segment,
                 on_delta: Callable[[str, list[int]], None]) -> Callable[[str, list[int]], None]:
        """`on_delta`, plus a warm-up of the idle model every `warm_every` tokens of this segment."""
        others = [other for other in self.roles if other != role]
        if not self._warm_every or not others:
            return on_delta
        start, start_text, sent = len(segment.token_ids), len(segment.text), [len(segment.token_ids)]

        def warming(text: str, ids: list[int]) -> None:
            on_delta(text, ids)
            if len(segment.token_ids) - sent[0] >= self._warm_every:
                sent[0] = len(segment.token_ids)
                piece_ids, piece_text = segment.token_ids[start:], segment.text[start_text:]
                for other in others:
                    self.in_background(self._warm(other, role, piece_ids, piece_text))

        return warming

    async def _warm(self, role: Model, writer: Model, ids: list[int], text: str) -> None:
        """A 1-token request with `role`'s context and what `writer` has written so far, so that at the
        handoff only the last few tokens are new to its prefix cache. Reads contexts without changing them."""
        context = self.contexts[role]
        piece = self._for_big(ids, text) if role == "big" else (ids if self.shared_tokenizer else None, text)
        with contextlib.suppress(EngineError):  # a warm-up that fails only costs the cache it would have filled
            new_ids, _ = await self._take_in(role, [*context.pending, piece])  # as `context()` will take them in
            prompt = context.ids + new_ids
            if context.max_model_len and len(prompt) >= context.max_model_len - 1:
                return
            if self._live is not None and role == "big" and await self._live.open(prompt):
                return
            await self.clients[role].complete([prompt], max_tokens=1, temperature=0.0, kind="warm", token_ids=False)

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

    # ------------------------------------------------------------ steps (the training-free modes)
    async def step(self, role: Model, max_tokens: int, delimiter: str) -> tuple[Segment, Completion]:
        """One reasoning step by `role`: up to `delimiter` (kept, as it joins steps) or the end of the
        thinking, at most `max_tokens`. Drafted, not committed: `keep_step` or `discard`."""
        segment = await self.open(role)
        stops = [delimiter] if delimiter == THINK_END else [delimiter, THINK_END]
        result = await self.draft(role, segment, max_tokens, stop=stops)
        return segment, result

    async def keep_step(self, role: Model, segment: Segment, result: Completion) -> None:
        await self.keep(role, segment, result, len(result.token_ids))
        self.close(segment, result.ended_by)

    def discard(self, segment: Segment, result: Completion) -> None:
        """Throw a drafted step away: it stays in the trace, not kept (shown dimmed), its tokens spent."""
        segment.kept = False
        self.close(segment, result.ended_by)
        self.trace.emit("update", segment)

    async def next_token_logprobs(self, role: Model, top: int = 20) -> dict[str, float]:
        """The `top` most likely next tokens of `role` after its context, with their log-probs."""
        prompt = await self.context(role)
        (result,) = await self.clients[role].complete([prompt], max_tokens=1, temperature=0.0, logprobs=top,
                                                      kind="score", token_ids=False)
        return result.top_logprobs[0] if result.top_logprobs else {}

    async def judge(self, role: Model, instruction: str, answer_start: str, draft: str = "",
                    top: int = 10) -> dict[str, float]:
        """`role` reads the question and the thinking so far (and `draft`, a step not yet kept), then
        `instruction` as the next user turn, and begins its reply with `answer_start`: its `top` most
        likely next tokens, with log-probs (SpecReason's judge reads a score from them)."""
        context = self.contexts[role]
        await self.context(role)
        seen = strip_tags(draft, self.tags.open_tag, self.tags.close_tag) if role == "big" else draft
        thinking = context.text[len(context.prompt_text):] + seen
        messages = [*self.trace.conversation, {"role": "user", "content": self.tags.user_message(self.trace.question, False)},
                    {"role": "assistant", "content": self.tags.assistant_prefix + thinking},
                    {"role": "user", "content": instruction}, {"role": "assistant", "content": answer_start}]
        client = self.clients[role]
        ids, _ = await client.tokenize_chat(messages, continue_final=True)
        if context.max_model_len and len(ids) >= context.max_model_len:
            return {}
        (result,) = await client.complete([ids], max_tokens=1, temperature=0.0, logprobs=top, kind="score",
                                          token_ids=False)
        return result.top_logprobs[0] if result.top_logprobs else {}

    async def _ids_of(self, role: Model, text: str) -> list[int]:
        """The role's tokens of a short fixed string (tags, stop strings), asked once."""
        key = f"{role}\x00{text}"
        if key not in self._stop_ids:
            self._stop_ids[key] = await self.clients[role].tokenize(text)
        return self._stop_ids[key]

    async def _ids_spelling(self, role: Model, ids: list[int], text: str) -> list[int]:
        """Ids that spell `text`, a prefix of what `ids` spell: the longest run of `ids` whose text is
        a prefix of `text` (found by bisection), then the rest re-tokenised."""
        client = self.clients[role]
        low, high = 0, len(ids)  # ids[:low] spells a prefix of text; ids[:high + 1] may not
        if await client.detokenize(ids) == text:
            return list(ids)
        while low < high:
            middle = (low + high + 1) // 2
            if text.startswith(await client.detokenize(ids[:middle])):
                low = middle
            else:
                high = middle - 1
        head = await client.detokenize(ids[:low]) if low else ""
        return ids[:low] + (await client.tokenize(text[len(head):]) if text[len(head):] else [])

    async def _match_ids_to_text(self, role: Model, result: Completion) -> None:
        """When a stop string ends inside a token, vLLM cuts the text but keeps the whole token: make
        the ids spell the text again (the tail of that token re-tokenised), so context ids and text agree."""
        stop_ids = await self._ids_of(role, str(result.stop_reason))
        if stop_ids and result.token_ids[-len(stop_ids):] == stop_ids:
            return  # the usual case: the stop string came as its own tokens
        result.token_ids = await self._ids_spelling(role, result.token_ids, result.text)
        result.pieces = [(result.text, len(result.token_ids))]

    async def drop_stop_string(self, role: Model, result: Completion, segment: Segment | None = None) -> None:
        """Take the stop string a draft ended on off its end (text and ids, and the segment showing it),
        e.g. a `</think>` that budget forcing replaces with "Wait"."""
        stop = str(result.stop_reason)
        if not result.stopped_on_string or not result.text.endswith(stop):
            return
        stop_ids = await self._ids_of(role, stop)
        text = result.text[: len(result.text) - len(stop)]
        if stop_ids and result.token_ids[-len(stop_ids):] == stop_ids:
            ids = result.token_ids[: len(result.token_ids) - len(stop_ids)]
        else:
            ids = await self._ids_spelling(role, result.token_ids, text)
        if segment is not None:
            segment.text = segment.text[: len(segment.text) - len(stop)]
            segment.token_ids = segment.token_ids[: len(segment.token_ids) - len(result.token_ids)] + ids
            segment.dropped_tokens += max(0, len(result.token_ids) - len(ids))
            self.trace.emit("update", segment)
        result.text, result.token_ids, result.pieces = text, ids, [(text, len(ids))]

    async def queue_text(self, role: Model, text: str) -> None:
        """Text the role's next segment starts with (e.g. "Wait" between thinking rounds)."""
        ids, queued = self._prefix.get(role, ([], ""))
        self._prefix[role] = (ids + await self.clients[role].tokenize(text), queued + text)

    def rewind(self, role: Model) -> None:
        """Back to the role's prompt: what was written is forgotten (a full rewrite replaces it)."""
        context = self.contexts[role]
        context.ids, context.text, context.pending = context.ids[: context.prompt_tokens], context.prompt_text, []

    async def keep(self, role: Model, segment: Segment, result: Completion, n_tokens: int,
                   chars: int | None = None) -> None:
        """Keep the first `n_tokens` of a draft in `segment` and commit them; drop the rest (counted
        in the segment's dropped tokens). With `chars`: keep the draft's text up to that character
        instead, which may end inside a token: its tail is re-tokenised, so ids and text agree."""
        if chars is not None and chars < len(result.text):
            kept_text = result.text[:chars]
            ids = await self._ids_spelling(role, result.token_ids, kept_text)
            segment.token_ids = segment.token_ids[: len(segment.token_ids) - len(result.token_ids)] + ids
            segment.text = segment.text[: len(segment.text) - len(result.text)] + kept_text
            segment.dropped_tokens += max(0, len(result.token_ids) - len(ids))
            self.trace.emit("update", segment)
            self.commit(role, ids, kept_text)
            return
        if chars is not None:
            n_tokens = len(result.token_ids)
        dropped = len(result.token_ids) - n_tokens
        if dropped:
            kept_text = await self._text_of_first(role, result, n_tokens)
            segment.token_ids = segment.token_ids[: len(segment.token_ids) - dropped]
            segment.text = segment.text[: len(segment.text) - len(result.text)] + kept_text
            segment.dropped_tokens += dropped
            self.trace.emit("update", segment)
        else:
            kept_text = result.text
        self.commit(role, result.token_ids[:n_tokens], kept_text)

    async def _text_of_first(self, role: Model, result: Completion, n_tokens: int) -> str:
        text, count = "", 0
        for piece_text, piece_tokens in result.pieces:
            if count == n_tokens:
                return text
            if count + piece_tokens > n_tokens:
                break
            text += piece_text
            count += piece_tokens
        if count == n_tokens:
            return text
        return await self.clients[role].detokenize(result.token_ids[:n_tokens])

    async def write(self, role: Model, max_tokens: int, stop: list[str] | None = None,
                    extend: bool = False) -> tuple[Segment, Completion]:
        """Generate, keep everything, and close the segment: the common case."""
        segment = await self.open(role, extend=extend)
        result = await self.draft(role, segment, max_tokens, stop)
        self.commit(role, result.token_ids, result.text)
        self.close(segment, result.ended_by)
        return segment, result

    async def prefix_texts(self, role: Model, result: Completion, start: int, stop: int) -> list[str]:
        """Text of the token prefixes result[:i], start < i <= stop (for text handoffs)."""
        pieces = result.pieces[:stop]
        if len(pieces) == stop and all(count == 1 for _, count in pieces):  # streamed one token at a time
            texts, running = [], ""
            for piece_text, _ in pieces:
                running += piece_text
                texts.append(running)
            return texts[start:]
        client = self.clients[role]
        ids = result.token_ids
        return list(await asyncio.gather(*(client.detokenize(ids[:i]) for i in range(start + 1, stop + 1))))

    async def probe(self, role: Model, prompts: list[Prompt], max_tokens: int, why: str = "") -> list[Completion]:
        """Greedy continuations of many prompts in ONE batched request (vLLM shortens `max_tokens`
        per prompt to the room its context leaves; every prompt must leave some). Text only: asking
        for token ids would send every prompt's ids back too. `why`: why not through the route (in
        the trace's call)."""
        if not prompts:
            return []
        return await self.clients[role].complete(prompts, max_tokens=max_tokens, temperature=0.0, kind="probe",
                                                 token_ids=False, path="openai", why=why or None)

    async def probe_close(self, draft: Completion, start: int, stop: int, probe_tokens: int,
                          stride: int = 1) -> list[CloseProbe]:
        """Whether the small model would close the tag after each prefix draft[:i], start < i <= stop,
        of big-model text not yet committed to its context. Through the small server's continuations
        route when it has one (`probe_route`): exact, the context sent once, `stride` unused. Otherwise
        one batched OpenAI request of greedy probes, every prefix resending the context; there
        `stride` > 1 probes every stride-th prefix first, an approximation: a close that a later probed
        prefix does not repeat is missed. Kept behind this one method so that the modes never change."""
        if stop <= start:
            return []
        # A copy: the context grows in place once a cut is committed, while a probe of the stream still runs.
        base = list(await self.context("small"))
        if self.shared_tokenizer:
            tails = [draft.token_ids[:i] for i in range(start + 1, stop + 1)]
        else:
            # Another tokenizer: each prefix's text in the small model's tokens, after its own context
            # ids, exactly as `context()` would add it; re-tokenising the whole text would not be neutral.
            texts = await self.prefix_texts("big", draft, start, stop)
            tails = list(await asyncio.gather(*(self.clients["small"].tokenize(text) for text in texts)))
        prompts: list[Prompt] = [Prefixed(base, tail) for tail in tails]
        # A prefix that fills the small model's context leaves it no room to write anything: vLLM
        # would reject the whole batch for it, so such prefixes are not probed (they cannot close).
        fitting = await self._fitting("small", prompts)
        found = [CloseProbe(False)] * len(prompts)
        why = "probe_route is off"
        if self._probe_route and fitting:
            routed, why = await self._probe_by_route(base, tails[:fitting], probe_tokens)
            if routed is not None:
                return await self._own_text(draft, start, routed + found[fitting:])
        # Every `stride`-th prefix first (1: all of them, exact); then, before the first that closes,
        # the ones skipped (and the next one, which decides a close that needs whitespace first).
        first_pass = [i for i in range(fitting) if (i + 1) % stride == 0 or i == fitting - 1]
        answers = await self.probe("small", [prompts[i] for i in first_pass], probe_tokens, why=why)
        for index, probe in zip(first_pass, answers, strict=True):
            found[index] = self._close_probe(probe)
        hit = next((i for i in first_pass if found[i].closes), None)
        if stride > 1 and hit is not None:
            previous = max((i for i in first_pass if i < hit), default=-1)
            second_pass = [i for i in [*range(previous + 1, hit), hit + 1] if i < fitting and i not in first_pass]
            answers = await self.probe("small", [prompts[i] for i in second_pass], probe_tokens, why=why)
            for index, probe in zip(second_pass, answers, strict=True):
                found[index] = self._close_probe(probe)
        return await self._own_text(draft, start, found)

    async def _own_text(self, draft: Completion, start: int, probes: list[CloseProbe]) -> list[CloseProbe]:
        """Where the small model writes other text than whitespace before the tag, only the big
        model's own next text may stand there (the tag merged with it, `.</`): keep such a close, with
        where its prefix ends in the draft's text, while the draft's text so far agrees with it."""
        settled = []
        for number, probe in enumerate(probes, start=start + 1):
            if probe.closes and probe.lead.strip():
                end = len(await self._text_of_first("big", draft, number))
                following = draft.text[end:]
                agrees = following.startswith(probe.lead) or probe.lead.startswith(following)
                probe = CloseProbe(True, probe.lead, end) if agrees else CloseProbe(False)
            settled.append(probe)
        return settled

    async def _probe_by_route(self, base: list[int], tails: list[list[int]],
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
        texts, why = await self.clients["small"].continuations(Prefixed(base, longest), first, probe_tokens,
                                                               self._close_marker)
        if texts is None:
            return None, why
        return [self._close_probe(texts[len(base) + len(tail) - first]) for tail in tails], ""

    @property
    def _close_marker(self) -> str:
        return self.tags.close_tag[:5]  # "</big": the small model starts closing

    def _close_probe(self, probe: Completion | str) -> CloseProbe:
        text = probe if isinstance(probe, str) else probe.text
        at = text.find(self._close_marker)
        return CloseProbe(True, text[:at]) if at >= 0 else CloseProbe(False)

    async def _fitting(self, role: Model, prompts: list[Prompt]) -> int:
        """How many of `prompts` (token ids, each longer than the one before) leave the model room."""
        limit = self.contexts[role].max_model_len
        return sum(1 for prompt in prompts if not limit or len(prompt) < limit)
