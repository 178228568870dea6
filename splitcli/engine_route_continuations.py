"""The continuations route (engine_route.PATH): the greedy continuations of every prefix of one
token sequence, with the sequence sent once.

Why: probing where a big segment ends asks the small model for a short greedy continuation after
each of up to 64 prefixes of [context + segment]. Over the OpenAI API every prefix resends the whole
context, and at 16k tokens that costs more than the big model's own decoding of the segment (~1.2 us
per prompt token, however little is computed). Here one request reads the cached context once and
gets the small model's greedy next token after EVERY prefix (prompt logprobs, top 1, for the new
positions only). A continuation whose first token can neither begin `marker` (after whitespace) nor
be the sequence's own next text followed by `marker` (`.</` after `...is 5`, when the sequence goes
on `. So`: real BPE vocabularies merge punctuation with the tag) cannot close the segment; where the
greedy tokens follow the sequence itself, the probe's continuation is read off the sequence; only
the few prefixes still undecided are decoded in full. The caller gets, per prefix, the full greedy
probe's text wherever it could hold `marker`, and otherwise a start of it that shows it cannot.

Imports nothing of splitcli but the other engine_route modules (see engine_route).
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import inspect
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from splitcli.engine_route_shared import CONTEXT_TOKENS, model_config, model_defaults, text_after

VERSION = 1


def may_begin(text: str, marker: str) -> bool:
    """Whether a continuation whose first token alone reads `text` could start with `marker` after
    leading whitespace. True when unsure (only whitespace, or part of a character)."""
    stripped = text.lstrip()
    return not stripped or "\ufffd" in text or marker.startswith(stripped) or stripped.startswith(marker)


def may_close_after(text: str, following: str, marker: str) -> bool:
    """Whether a continuation starting with `text` could be the sequence's own next text (`following`,
    as far as it is known) and then `marker`, or begin `marker` after whitespace. True when unsure."""
    if may_begin(text, marker):
        return True
    for k in range(1, len(text) + 1):
        if k > len(following):
            return True  # the sequence ends here: what it would say next is not known
        if text[k - 1] != following[k - 1]:
            return False
        rest = text[k:]
        if marker.startswith(rest) or rest.startswith(marker):
            return True
    return False


def bytes_may_begin(raw: bytes, marker: str) -> bool:
    """The same question for a continuation whose UTF-8 starts with `raw`, which may end inside a
    character: that character must then be whitespace (a non-breaking or ideographic space, say)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = decoder.decode(raw, final=False)
    pending = decoder.getstate()[0]
    stripped = text.lstrip()
    if stripped:
        return marker.startswith(stripped) or stripped.startswith(marker)
    return not pending or any(encoded.startswith(pending) for encoded in _whitespace_utf8())


@functools.cache
def _whitespace_utf8() -> tuple[bytes, ...]:
    return tuple(chr(code).encode() for code in range(sys.maxunicode + 1) if chr(code).isspace())


def _pending_bytes(raw: bytes) -> bytes:
    """The bytes at the end of `raw` that begin a character not finished yet."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    decoder.decode(raw, final=False)
    return decoder.getstate()[0]


def byte_reader(tokenizer: Any) -> Callable[[list[int]], bytes | None] | None:
    """The raw bytes of token ids for byte-level BPE tokenizers (GPT-2, Qwen, Llama 3): a token that
    alone decodes to part of a character is judged by its bytes. None for other tokenizers."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    try:
        from transformers.convert_slow_tokenizer import bytes_to_unicode
    except ImportError:
        return None
    if backend is None or "ByteLevel" not in repr(getattr(backend, "decoder", None)):
        return None
    table = {char: byte for byte, char in bytes_to_unicode().items()}

    def read(ids: list[int]) -> bytes | None:
        pieces = [backend.id_to_token(token) for token in ids]
        if any(piece is None or any(char not in table for char in piece) for piece in pieces):
            return None
        return bytes(table[char] for piece in pieces for char in piece)

    return read


async def continuations(engine: Any, request: dict[str, Any]) -> dict[str, Any]:
    """request: {prompt: [ids], first: shortest prefix length, max_tokens, marker, skip_special_tokens}.
    Answer: {version, texts (one per prefix length first..len(prompt)), decoded (how many prefixes
    were decoded in full), settled (how many whose first token could begin the marker were settled by
    the sequence's own tokens instead), cached_tokens (of the first-token pass), unscored (prefixes
    pass 1 had no score for, so decoded in full), seconds (first_tokens: pass 1,
    total: both passes, measured in the server)}."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    ids = [int(token) for token in request["prompt"]]
    first, max_tokens, marker = int(request["first"]), int(request["max_tokens"]), str(request["marker"])
    skip_special = bool(request.get("skip_special_tokens", True))
    if not 1 <= first <= len(ids) or max_tokens < 1 or not marker:
        raise ValueError("need 1 <= first <= len(prompt), max_tokens >= 1 and a marker")
    config = model_config(engine)
    limit = int(getattr(config, "max_model_len", 0) or 0)
    penalties = _default_penalties(config)
    # Pass 1: the greedy next token after every prefix. Prompt logprobs normally skip the prefix
    # cache (they want every position); here only positions after the cached context matter, so the
    # cache is read, and positions it covered are known from num_cached_tokens and not trusted.
    # Rows of the prompt scores before `first - 1` are never read: vLLM need not make Python objects of them.
    skipped = first - 1 if _tail_scores_installed() else 0
    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1, skip_reading_prefix_cache=False,
                            detokenize=False, flat_logprobs=True, output_kind=RequestOutputKind.FINAL_ONLY,
                            extra_args={TAIL_KEY: [skipped, len(ids) - 1]} if skipped else None)
    started = time.perf_counter()
    output = await _final(engine, ids, params)
    first_pass = time.perf_counter() - started
    cached = int(output.num_cached_tokens or 0)
    scores = list(output.prompt_logprobs or [])
    # The scores are the prompt's LAST len(scores) positions: all of them (a None first) from vLLM's
    # classic runner, the rows from `skipped` on with our tail patch, and only the positions it
    # computed (after the cached ones) from vLLM's newer runner (Qwen3 on vLLM 0.24, GPU). Never
    # assume a count: a position without a trustworthy row is decoded in full instead.
    offset = len(ids) - len(scores)
    nexts: dict[int, int | None] = {len(ids): output.outputs[0].token_ids[0]}
    unscored = 0
    for length in range(first, len(ids)):
        # Entry `length` scores prompt[length] from the hidden state at length - 1: computed here
        # only if that position was not read from the cache.
        entry = scores[length - offset] if length - 1 >= cached and offset <= length < len(ids) and offset >= 0 else None
        best = [token for token, logprob in (entry or {}).items() if logprob.rank == 1]
        nexts[length] = best[0] if len(best) == 1 else None  # missing or tied: decode in full
        unscored += entry is None
    tokenizer = engine.get_tokenizer()
    if inspect.isawaitable(tokenizer):
        tokenizer = await tokenizer
    read = byte_reader(tokenizer)

    def could_close(length: int, tokens: list[int], text: str) -> bool:
        if "\ufffd" in text and read is not None:
            before, own = read(ids[max(0, length - 3):length]), read(tokens)
            if before is not None and own is not None and bytes_may_begin(_pending_bytes(before) + own, marker):
                return True
        if may_begin(text, marker):
            return True
        # What the sequence says next, far enough to compare `text` with it.
        following = text_after(tokenizer, ids[max(0, length - CONTEXT_TOKENS):length],
                                ids[length:length + len(tokens) + 1 + len(text)], skip_special).rstrip("\ufffd")
        return may_close_after(text, following, marker)

    special = set(getattr(tokenizer, "all_special_ids", None) or ())

    def known_greedy(length: int, budget: int) -> list[int]:
        """The greedy continuation after ids[:length] as far as pass 1 knows it: it follows the
        sequence itself while each greedy token is the sequence's next, and ends with the first
        that is not (or a special token, where the probe may stop)."""
        tokens: list[int] = []
        position = length
        while len(tokens) < budget and (token := nexts.get(position)) is not None:
            tokens.append(token)
            if position == len(ids) or token != ids[position] or token in special:
                break
            position += 1
        return tokens

    def budget(length: int) -> int:  # the probe's max_tokens, within the model's context
        return min(max_tokens, limit - length) if limit else max_tokens

    texts: dict[int, str] = {}
    full: list[int] = []
    settled = 0  # prefixes whose first token could begin the marker, settled by the sequence itself
    for length in range(first, len(ids) + 1):
        token = nexts[length]
        if token is None or penalties:  # penalties change the greedy tokens: pass 1 cannot tell
            full.append(length)
            continue
        text = tokenizer.decode([token], skip_special_tokens=skip_special)
        if could_close(length, [token], text):
            tokens = known_greedy(length, budget(length))
            complete = len(tokens) == budget(length)  # the whole probe is known
            if len(tokens) > 1 or complete:
                text = text_after(tokenizer, ids[max(0, length - CONTEXT_TOKENS):length], tokens, skip_special)
            if not complete and could_close(length, tokens, text):
                full.append(length)
                continue
            settled += 1
        texts[length] = text
    # Pass 2: the few prefixes whose first token could begin the marker, decoded as the probe would.
    # vLLM's detokenizer would first read the whole prompt (~10 ms at 16k tokens, per probe): the
    # text is decoded here instead, after a few prompt tokens as context, as an incremental decoder does.
    if full:
        def probe(length: int) -> Any:
            return SamplingParams(temperature=0.0, max_tokens=budget(length), detokenize=False,
                                  output_kind=RequestOutputKind.FINAL_ONLY, **penalties)

        outputs = await asyncio.gather(*(_final(engine, ids[:length], probe(length)) for length in full))
        for length, result in zip(full, outputs, strict=True):
            texts[length] = text_after(tokenizer, ids[max(0, length - CONTEXT_TOKENS):length],
                                        list(result.outputs[0].token_ids), skip_special)
    return {"version": VERSION, "texts": [texts[length] for length in range(first, len(ids) + 1)],
            "decoded": len(full), "settled": settled, "cached_tokens": cached, "unscored": unscored,
            "seconds": {"first_tokens": round(first_pass, 6), "total": round(time.perf_counter() - started, 6)}}


async def _final(engine: Any, ids: list[int], params: Any) -> Any:
    final = None
    async for output in engine.generate({"prompt_token_ids": ids}, params, f"splitreason-{uuid.uuid4().hex}"):
        final = output
    if final is None:
        raise RuntimeError("the engine returned nothing")
    return final


TAIL_KEY = "splitreason_prompt_scores_from"


@functools.cache
def _tail_scores_installed() -> bool:
    """Let a request skip the Python objects of prompt scores it will not read.

    vLLM scores every prompt position, cached ones included (as uninitialised rows), and turns each
    row into Python objects in the API server: ~2 us per position, 30-40 ms at 16k tokens, while
    the probe reads 64 rows. A request whose `extra_args[TAIL_KEY]` is [skip, rows] gets only the
    rows from `skip` on, when the scores arrive whole (rows == all of them); any other request,
    and any vLLM whose LogprobsProcessor is not shaped as expected, keeps vLLM's own behaviour
    (the caller sees the full count and reads it as such)."""
    try:
        from vllm.v1.engine.logprobs import LogprobsProcessor
    except ImportError:
        return False
    create = LogprobsProcessor.__dict__.get("from_new_request")
    update = LogprobsProcessor.__dict__.get("_update_prompt_logprobs")
    if not isinstance(create, classmethod) or not callable(update) or getattr(update, "splitreason", False):
        return bool(getattr(update, "splitreason", False))
    def from_new_request(cls: Any, tokenizer: Any, request: Any) -> Any:
        processor = create.__func__(cls, tokenizer, request)
        extra = getattr(request.sampling_params, "extra_args", None) or {}
        if TAIL_KEY in extra:
            skip, rows = extra[TAIL_KEY]
            processor.splitreason_tail = (int(skip), int(rows))
        return processor

    def update_prompt_logprobs(self: Any, tensors: Any) -> Any:
        skip, rows = getattr(self, "splitreason_tail", (0, -1))
        if skip and tensors.logprobs.shape[0] == rows:
            tensors = tensors._replace(logprob_token_ids=tensors.logprob_token_ids[skip:],
                                       logprobs=tensors.logprobs[skip:],
                                       selected_token_ranks=tensors.selected_token_ranks[skip:])
        return update(self, tensors)

    update_prompt_logprobs.splitreason = True  # type: ignore[attr-defined]
    LogprobsProcessor.from_new_request = classmethod(from_new_request)  # type: ignore[method-assign,assignment]
    LogprobsProcessor._update_prompt_logprobs = update_prompt_logprobs  # type: ignore[method-assign]
    return True


def _default_penalties(config: Any) -> dict[str, float]:
    """The penalties among the model's sampling defaults (the probes over the OpenAI API get them
    too): the same here, for the same text."""
    neutral = {"repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0}
    defaults = model_defaults(config)
    return {name: float(defaults[name]) for name, value in neutral.items()
            if defaults.get(name) is not None and float(defaults[name]) != value}
