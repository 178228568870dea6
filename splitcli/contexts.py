"""What each model has seen of one question, as its own token ids and as the same text.

A model's prompt comes from its own chat template; what one model writes reaches the other as token
ids when the tokenizers match and as text otherwise, with the tags taken out for the big model.
`Spelling` keeps one model's ids and text in agreement where a cut or a stop string falls inside
a token.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from splitcli.engine import Completion, EngineClient
from splitcli.errors import UsageError
from splitcli.profiles import PromptConfig
from splitcli.trace import Model, Trace, strip_tags

TOKENIZER_PROBE = "Tokenizer probe: 12 * 3 = 36, so x^2 + y_1 <bigmodel>\\frac{a}{b}</bigmodel> naïve."

Piece = tuple[list[int] | None, str]  # written by one model for another: (ids when usable as-is, text)


@dataclass
class Context:
    """What one model has seen so far, as its own token ids (and the same as text)."""

    ids: list[int] = field(default_factory=list)
    text: str = ""
    prompt_tokens: int = 0
    prompt_text: str = ""
    max_model_len: int = 0
    pending: list[Piece] = field(default_factory=list)  # written by the other model, not yet sent


class Spelling:
    """One model's token ids and text kept in agreement, through its server's tokenizer."""

    def __init__(self, client: EngineClient) -> None:
        self.client = client
        self._fixed: dict[str, list[int]] = {}

    async def ids_of(self, text: str) -> list[int]:
        """The tokens of a short fixed string (tags, stop strings), asked once."""
        if text not in self._fixed:
            self._fixed[text] = await self.client.tokenize(text)
        return self._fixed[text]

    async def ids_spelling(self, ids: list[int], text: str) -> list[int]:
        """Ids that spell `text`, a prefix of what `ids` spell: the longest run of `ids` whose text is
        a prefix of `text` (found by bisection), then the rest re-tokenised."""
        low, high = 0, len(ids)  # ids[:low] spells a prefix of text; ids[:high + 1] may not
        if await self.client.detokenize(ids) == text:
            return list(ids)
        while low < high:
            middle = (low + high + 1) // 2
            if text.startswith(await self.client.detokenize(ids[:middle])):
                low = middle
            else:
                high = middle - 1
        head = await self.client.detokenize(ids[:low]) if low else ""
        return ids[:low] + (await self.client.tokenize(text[len(head):]) if text[len(head):] else [])

    async def match_ids_to_text(self, result: Completion) -> None:
        """When a stop string ends inside a token, vLLM cuts the text but keeps the whole token: make
        the ids spell the text again (the tail of that token re-tokenised), so context ids and text agree."""
        stop_ids = await self.ids_of(str(result.stop_reason))
        if stop_ids and result.token_ids[-len(stop_ids):] == stop_ids:
            return  # the usual case: the stop string came as its own tokens
        result.token_ids = await self.ids_spelling(result.token_ids, result.text)
        result.pieces = [(result.text, len(result.token_ids))]

    async def without_stop(self, result: Completion) -> tuple[str, list[int]]:
        """A draft's text and ids without the stop string it ended on."""
        stop = str(result.stop_reason)
        text = result.text[: len(result.text) - len(stop)]
        stop_ids = await self.ids_of(stop)
        if stop_ids and result.token_ids[-len(stop_ids):] == stop_ids:
            return text, result.token_ids[: len(result.token_ids) - len(stop_ids)]
        return text, await self.ids_spelling(result.token_ids, text)

    async def text_of_first(self, result: Completion, n_tokens: int) -> str:
        """The text of a completion's first `n_tokens`: from its streamed pieces where they line up."""
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
        return await self.client.detokenize(result.token_ids[:n_tokens])

    async def prefix_texts(self, result: Completion, start: int, stop: int) -> list[str]:
        """Text of the token prefixes result[:i], start < i <= stop (for text handoffs)."""
        pieces = result.pieces[:stop]
        if len(pieces) == stop and all(count == 1 for _, count in pieces):  # streamed one token at a time
            texts, running = [], ""
            for piece_text, _ in pieces:
                running += piece_text
                texts.append(running)
            return texts[start:]
        ids = result.token_ids
        return list(await asyncio.gather(*(self.client.detokenize(ids[:i]) for i in range(start + 1, stop + 1))))


class Contexts:
    """Both models' contexts on one question (a one-model mode has one)."""

    def __init__(self, roles: tuple[Model, ...], clients: dict[Model, EngineClient], tags: PromptConfig) -> None:
        self.roles = roles
        self.tags = tags
        self.clients = clients
        self.spelling = {role: Spelling(clients[role]) for role in roles}
        self.of = {role: Context() for role in roles}
        self.shared_tokenizer = False
        self.open_ids: list[int] = []
        self.close_ids: list[int] = []

    def __getitem__(self, role: Model) -> Context:
        return self.of[role]

    async def build_prompt(self, role: Model, trace: Trace, with_hint: bool) -> None:
        """The role's prompt: the conversation and the question in its chat template, then the
        assistant prefix and the caller's prefill, which the model goes on from."""
        client = self.clients[role]
        messages = [*trace.conversation, {"role": "user", "content": self.tags.user_message(trace.question, with_hint)}]
        ids, max_len = await client.tokenize_chat(messages)
        text = await client.detokenize(ids)
        prefix = self.tags.assistant_prefix
        if prefix and not text.endswith(prefix):
            ids += await client.tokenize(prefix)
            text += prefix
        prefill = trace.prefill.removeprefix(prefix) if prefix else trace.prefill
        if prefill:
            ids += await client.tokenize(prefill)
            text += prefill
        self.of[role] = Context(ids=ids, text=text, prompt_tokens=len(ids), prompt_text=text, max_model_len=max_len)

    def check_fit(self, budget: int) -> int:
        """The prompt's tokens, once it fits each model's context and leaves some of the budget."""
        for role in self.roles:
            context = self.of[role]
            if context.max_model_len and context.prompt_tokens >= context.max_model_len:
                raise UsageError(
                    f"the question makes a {context.prompt_tokens}-token prompt, over the {role} model's context of "
                    f"{context.max_model_len} tokens (shorten it, or raise {role}.max_model_len)"
                )
        prompt = self.of[self.roles[0]].prompt_tokens
        if prompt >= budget:
            raise UsageError(
                f"the question makes a {prompt}-token prompt, which leaves nothing of the {budget}-token budget "
                f"(shorten it, or raise it with --set sampling.max_tokens=N)"
            )
        return prompt

    async def learn_tokenizers(self) -> None:
        """Whether handoffs can pass token ids (both tokenizers spell a probe alike), and the tags' ids."""
        if len(self.roles) == 2:
            small_ids, big_ids = await asyncio.gather(
                self.clients["small"].tokenize(TOKENIZER_PROBE), self.clients["big"].tokenize(TOKENIZER_PROBE))
            self.shared_tokenizer = small_ids == big_ids
        if "small" not in self.roles:
            return
        spelling = self.spelling["small"]
        self.open_ids, self.close_ids = await asyncio.gather(
            spelling.ids_of(self.tags.open_tag), spelling.ids_of(self.tags.close_tag))
        # Tags added as special tokens would vanish from the text (and never fire the stop
        # string) unless special tokens are kept; plain-text tags (the paper's) need no such thing.
        if len(self.open_ids) == 1:
            for client in self.clients.values():
                client.skip_special_tokens = False

    def max_new(self, role: Model, wanted: int) -> int:
        """At most `wanted` new tokens, as many as the role's context still has room for."""
        context = self.of[role]
        pending = sum(len(ids) if ids is not None else len(text) for ids, text in context.pending)
        limit = context.max_model_len - len(context.ids) - pending if context.max_model_len else wanted
        return max(0, min(wanted, limit))

    def for_big(self, ids: list[int], text: str) -> Piece:
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

    def piece_for(self, reader: Model, ids: list[int], text: str) -> Piece:
        """What another model wrote, as `reader` takes it in."""
        return self.for_big(ids, text) if reader == "big" else (ids if self.shared_tokenizer else None, text)

    def commit(self, role: Model, ids: list[int], text: str) -> None:
        """Add text a model wrote to its own context and queue it for the other model's."""
        # Through the pending queue, so that order is kept with what the other model wrote before.
        self.of[role].pending.append((list(ids), text))
        for other in self.roles:
            if other != role:
                self.of[other].pending.append(self.piece_for(other, ids, text))

    async def context(self, role: Model) -> list[int]:
        """The role's full context as its token ids, after taking in what the other model wrote."""
        context = self.of[role]
        if context.pending:
            pending, context.pending = context.pending, []
            ids, text = await self.take_in(role, pending)
            context.ids += ids
            context.text += text
        return context.ids

    async def take_in(self, role: Model, pieces: list[Piece]) -> tuple[list[int], str]:
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

    def rewind(self, role: Model) -> None:
        """Back to the role's prompt: what was written is forgotten (a full rewrite replaces it)."""
        context = self.of[role]
        context.ids, context.text, context.pending = context.ids[: context.prompt_tokens], context.prompt_text, []

    def thinking(self, role: Model) -> str:
        """What the role has seen written after its prompt (context taken in first)."""
        context = self.of[role]
        return context.text[len(context.prompt_text):]
