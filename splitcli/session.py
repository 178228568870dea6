"""A Session: both models working on one question.

It owns what the modes should not have to think about: the prompt of each model (from its own chat
template), each model's context as token ids, handoffs (token ids when the tokenizers match, text
otherwise), tag removal for the big model, the token budget, and recording into the Trace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from splitcli.engine import Completion, EngineClient, Prompt
from splitcli.errors import EngineError, UsageError
from splitcli.profiles import Profile, PromptConfig
from splitcli.servers import serve_hint
from splitcli.trace import Model, Segment, Trace, strip_tags

TOKENIZER_PROBE = "Tokenizer probe: 12 * 3 = 36, so x^2 + y_1 <bigmodel>\\frac{a}{b}</bigmodel> naïve."


@dataclass
class Context:
    """What one model has seen so far, as its own token ids (and the same as text)."""

    ids: list[int] = field(default_factory=list)
    text: str = ""
    prompt_tokens: int = 0
    max_model_len: int = 0
    # Written by the other model, not yet sent: (token ids when usable as-is, text).
    pending: list[tuple[list[int] | None, str]] = field(default_factory=list)


class Session:
    def __init__(self, profile: Profile, trace: Trace, roles: tuple[Model, ...], stream: bool = True) -> None:
        self.profile = profile
        self.trace = trace
        self.roles = roles
        self.stream = stream
        self.sampling = profile.sampling
        self.tags: PromptConfig = profile.prompt
        self.clients: dict[Model, EngineClient] = {
            role: EngineClient(role, profile.spec(role).name, profile.spec(role).urls, serve_hint(profile, role),
                               clock=trace.now, record=trace.calls.append)
            for role in roles
        }
        self.contexts: dict[Model, Context] = {role: Context() for role in roles}
        self.shared_tokenizer = False
        self.open_ids: list[int] = []
        self.close_ids: list[int] = []
        self._prefix: dict[Model, tuple[list[int], str]] = {}

    async def aclose(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self.clients.values()))

    # ------------------------------------------------------------ set-up
    async def prepare(self, with_hint: bool) -> None:
        """Build each model's prompt and find out whether handoffs can pass token ids."""
        await asyncio.gather(*(self._prepare_prompt(role, with_hint and role == "small") for role in self.roles))
        for role in self.roles:
            context = self.contexts[role]
            if context.max_model_len and context.prompt_tokens >= context.max_model_len:
                raise UsageError(
                    f"the question makes a {context.prompt_tokens}-token prompt, over the {role} model's context of "
                    f"{context.max_model_len} tokens (shorten it, or raise {role}.max_model_len)"
                )
        if len(self.roles) == 2:
            small_ids, big_ids = await asyncio.gather(
                self.clients["small"].tokenize(TOKENIZER_PROBE), self.clients["big"].tokenize(TOKENIZER_PROBE))
            self.shared_tokenizer = small_ids == big_ids
        self.trace.handoff = "token_ids" if self.shared_tokenizer else "text"
        if "small" in self.roles:
            self.open_ids, self.close_ids = await asyncio.gather(
                self.clients["small"].tokenize(self.tags.open_tag), self.clients["small"].tokenize(self.tags.close_tag))
            # Tags added as special tokens would vanish from the text (and never fire the stop
            # string) unless special tokens are kept; plain-text tags (the paper's) need no such thing.
            if len(self.open_ids) == 1:
                for client in self.clients.values():
                    client.skip_special_tokens = False

    async def _prepare_prompt(self, role: Model, with_hint: bool) -> None:
        client = self.clients[role]
        messages = [{"role": "user", "content": self.tags.user_message(self.trace.question, with_hint)}]
        ids, max_len = await client.tokenize_chat(messages)
        text = await client.detokenize(ids)
        prefix = self.tags.assistant_prefix
        if prefix and not text.endswith(prefix):
            ids += await client.tokenize(prefix)
            text += prefix
        self.contexts[role] = Context(ids=ids, text=text, prompt_tokens=len(ids), max_model_len=max_len)

    # ------------------------------------------------------------ budget
    def room(self) -> int:
        """Tokens left in the budget (prompt included, as in the paper's 16384)."""
        primary = self.contexts[self.roles[0]]
        generated = sum(segment.tokens for segment in self.trace.segments)
        return self.sampling.max_tokens - primary.prompt_tokens - generated

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
            text_run = ""
            for ids, text in [*pending, ([], "")]:
                if ids is None:
                    text_run += text
                    continue
                if text_run:  # different tokenizer (or an unremovable tag): re-tokenise this model's way
                    context.ids += await self.clients[role].tokenize(text_run)
                    context.text += text_run
                    text_run = ""
                context.ids += ids
                context.text += text
        return context.ids

    def queue_prefix(self, role: Model, ids: list[int], text: str, lead: str = "") -> None:
        """Text the role's next segment starts with (the closing tag after a big segment).
        `lead` is text to put first (whitespace), re-tokenised with the rest."""
        self._prefix[role] = (ids, text) if not lead else ([], lead + text)

    # ------------------------------------------------------------ generation
    async def open(self, role: Model, extend: bool = False) -> Segment:
        last = self.trace.segments[-1] if self.trace.segments else None
        if extend and last is not None and last.model == role:
            return last
        segment = self.trace.open_segment(role)
        if role in self._prefix:
            ids, text = self._prefix.pop(role)
            if not ids:
                ids = await self.clients[role].tokenize(text)
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
            if segment.first_token is None:
                segment.first_token = self.trace.now()
            segment.text += text
            segment.token_ids += ids
            self.trace.emit("update", segment)

        kwargs = {"max_tokens": max_tokens, "temperature": temp, "top_p": self.sampling.top_p,
                  "seed": self.sampling.seed, "stop": stop}
        if self.stream:
            result = await client.stream(prompt, on_delta=on_delta, **kwargs)
        else:
            (result,) = await client.complete([prompt], **kwargs)
            on_delta(result.text, result.token_ids)
        segment.text, segment.token_ids = base_text, segment.token_ids[:base_ids]
        segment.text += result.text
        segment.token_ids += result.token_ids
        if first_call:
            segment.prompt_tokens, segment.cached_tokens = result.prompt_tokens, result.cached_tokens
        return result

    async def keep(self, role: Model, segment: Segment, result: Completion, n_tokens: int) -> None:
        """Keep the first `n_tokens` of a draft in `segment` and commit them; drop the rest."""
        dropped = len(result.token_ids) - n_tokens
        if dropped:
            kept_text = await self._text_of_first(role, result, n_tokens)
            segment.token_ids = segment.token_ids[: len(segment.token_ids) - dropped]
            segment.text = segment.text[: len(segment.text) - len(result.text)] + kept_text
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
        self.close(segment, _reason(result))
        return segment, result

    async def prefix_texts(self, role: Model, result: Completion) -> list[str]:
        """Text of each token prefix of a completion (for text handoffs)."""
        if all(count == 1 for _, count in result.pieces):
            texts, running = [], ""
            for piece_text, _ in result.pieces:
                running += piece_text
                texts.append(running)
            return texts
        client = self.clients[role]
        ids = result.token_ids
        return list(await asyncio.gather(*(client.detokenize(ids[:i]) for i in range(1, len(ids) + 1))))

    async def probe(self, role: Model, prompts: list[Prompt], max_tokens: int) -> list[Completion]:
        """Greedy continuations of many prompts in ONE batched request."""
        return await self.clients[role].complete(prompts, max_tokens=max_tokens, temperature=0.0,
                                                 kind="probe")


def _reason(result: Completion) -> str | None:
    if result.ended_with_eos:
        return "eos"
    if result.finish_reason == "stop":
        return "stop"
    return result.finish_reason


async def run_question(profile: Profile, question: str, mode_name: str, stream: bool = True,
                       watch: Callable[[Trace], None] | None = None) -> Trace:
    """Run one question through a mode; on failure the partial trace comes back with `error` set."""
    from splitcli.modes import get_mode

    if not question.strip():
        raise UsageError('the question is empty (pass its text, e.g. splitreason run "What is 2 + 2?")')
    mode_class = get_mode(mode_name)
    options = mode_class.Options.model_validate(profile.modes.get(mode_name, {}))
    trace = Trace(
        question=question.strip(), mode=mode_name, profile=profile.name,
        models={role: profile.spec(role).name for role in mode_class.roles},
        options=options.model_dump(), sampling=profile.sampling.model_dump(),
    )
    if watch is not None:
        watch(trace)  # renderers subscribe before anything is generated
    session = Session(profile, trace, mode_class.roles, stream)
    trace.start_clock()
    try:
        await session.prepare(mode_class.uses_hint)
        await mode_class(options).run(session, trace)
        trace.finish()
    except EngineError as exc:
        # A server down or dying mid-run: keep what was generated, with the reason.
        trace.finish(error=str(exc))
    finally:
        await session.aclose()
    return trace
