"""How the continuations route reads vLLM's prompt scores, on the two shapes vLLM returns them in
(a pure rule, so a scripted engine stands in for vLLM here; tests/test_probe_route.py runs the route
in the real servers, and benchmarks/gpu_bench.py `route-cases` on the GPU build):

- vLLM's classic model runner: one entry per prompt position, a None first, rows for the cached
  positions present but never computed (garbage);
- its newer runner (vLLM 0.24 picks it for Qwen3ForCausalLM on GPU): a None, then rows only for the
  positions it computed, after the cached ones. With 1071 tokens and 1008 cached that is 63 entries,
  which the route refused before (`vLLM returned 63 prompt scores for a prompt of 1071 tokens`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from splitcli import demo
from splitcli.engine_route_continuations import continuations

MARKER = "</big"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo.qwen3_tokenizer_files(Path(tmp_path_factory.mktemp("qwen3"))))


class ScriptedEngine:
    """A greedy 'model' whose next token is a fixed function of the last one, except that after
    `closing_after` it writes the closing tag; prompt scores as one of vLLM's runners returns them."""

    def __init__(self, tokenizer: Any, runner: str, cached: int, closing_after: set[int]) -> None:
        self.tokenizer = tokenizer
        self.runner = runner
        self.cached = cached
        self.closing_after = closing_after
        self.close_ids = tokenizer.encode("</bigmodel>", add_special_tokens=False)
        self.model_config = SimpleNamespace(max_model_len=100_000, get_diff_sampling_param=dict)
        self.calls = 0

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def greedy(self, ids: list[int], count: int) -> list[int]:
        out: list[int] = []
        while len(out) < count:
            if len(ids) in self.closing_after and not out:
                out += self.close_ids
                continue
            out.append(1000 + (ids[-1] if not out else out[-1]) * 7 % 5000)
        return out[:count]

    async def generate(self, prompt: dict[str, list[int]], params: Any, request_id: str) -> Any:
        ids = prompt["prompt_token_ids"]
        self.calls += 1
        scores = None
        cached = 0
        if params.prompt_logprobs:
            cached = min(self.cached, len(ids) - 1)
            rows = [{self.greedy(ids[:position], 1)[0]: SimpleNamespace(rank=1, logprob=-0.1)}
                    for position in range(1, len(ids))]  # row p-1 scores prompt[p]
            garbage = {42: SimpleNamespace(rank=1, logprob=0.0)}
            if self.runner == "classic":
                scores = [None, *[garbage if position <= cached else rows[position - 1] for position in range(1, len(ids))]]
            else:  # the newer runner: only the computed positions
                scores = [None, *rows[cached:]]
        yield SimpleNamespace(num_cached_tokens=cached, prompt_logprobs=scores,
                              outputs=[SimpleNamespace(token_ids=self.greedy(ids, params.max_tokens))])


# (context, chunk, cached up to) as the GPU showed them: cached anywhere before `first - 1`, or into the chunk.
CASES = [(1040, 31, 1040), (1040, 31, 1024), (1040, 31, 1008), (1040, 31, 1056),
         (1071 - 31, 31, 1008), (200, 31, 0), (200, 31, 192), (200, 31, 215)]


@pytest.mark.parametrize("runner", ["classic", "newer"])
@pytest.mark.parametrize(("context", "chunk", "cached"), CASES)
def test_the_route_reads_scores_of_partly_cached_prompts_from_either_runner(tokenizer: Any, runner: str, context: int,
                                                                            chunk: int, cached: int) -> None:
    ids = [1000 + (index * 37) % 3000 for index in range(context + chunk)]
    closing = {context + 5, context + 20}
    engine = ScriptedEngine(tokenizer, runner, cached, closing)
    answer = asyncio.run(continuations(engine, {"prompt": ids, "first": context + 1, "max_tokens": 6,
                                                "marker": MARKER}))
    assert len(answer["texts"]) == chunk
    for length, text in zip(range(context + 1, len(ids) + 1), answer["texts"], strict=True):
        full = tokenizer.decode(engine.greedy(ids[:length], 6))
        if length in closing:
            assert text == full and text.startswith(MARKER)  # decoded in full: the tag is there
        else:
            assert full.startswith(text) and MARKER not in full
    # Positions whose score came from the cache (or is absent) are never trusted.
    assert answer["unscored"] == max(0, min(cached, len(ids) - 1) - context)


def test_a_continuation_that_is_the_sequences_own_text_then_the_tag_is_decoded(tokenizer: Any) -> None:
    # After "... = 43" the small model writes ".</bigmodel>" (one token `.</`) where the sequence goes on
    # "." then " So": the route must decode that prefix in full, not stop at a first token `.</` that
    # cannot begin "</big".
    text = "First, 12 * 3 = 36, and then 36 + 7 = 43. So the total is 43."
    ids = tokenizer.encode(text, add_special_tokens=False)
    after_43 = len(tokenizer.encode("First, 12 * 3 = 36, and then 36 + 7 = 43", add_special_tokens=False))
    merged = tokenizer.encode(".</bigmodel>", add_special_tokens=False)

    class Merging(ScriptedEngine):
        def greedy(self, prefix: list[int], count: int) -> list[int]:
            if len(prefix) == after_43:
                return merged[:count]
            return ids[len(prefix):len(prefix) + count] if len(prefix) < len(ids) else [1000] * count

    engine = Merging(tokenizer, "newer", 0, set())
    answer = asyncio.run(continuations(engine, {"prompt": ids, "first": 4, "max_tokens": 6, "marker": MARKER}))
    assert answer["texts"][after_43 - 4] == ".</bigmodel>"


def test_the_cut_after_the_big_models_own_text_is_the_same_for_any_chunking() -> None:
    # The big model writes "= 4" "3" "." " So"; the small model, after "= 43", writes ".</bigmodel>"
    # (the real Qwen3 vocabulary merges "." with "</"). Fed one token at a time (a prefix that must
    # wait for the next one) or all at once, the cut lands after "." (character 5).
    from splitcli.probing import CloseProbe, Cut, CutFinder

    pieces = ["= 4", "3", ".", " So"]
    probes = [CloseProbe(False), CloseProbe(True, ".", 4), CloseProbe(True, ""), CloseProbe(False)]
    whole = CutFinder()
    assert whole.feed(probes, "".join(pieces)) == Cut(2, end=5)
    one_by_one, text, cut = CutFinder(), "", None
    for piece, probe in zip(pieces, probes, strict=True):
        text += piece
        cut = one_by_one.feed([probe], text)
        if cut is not None:
            break
    assert cut == Cut(2, end=5)
    # A lead that is not what the big model writes next is no close; at the end of the text, what
    # still waits for more is none either.
    assert CutFinder().feed([CloseProbe(True, "!", 4)], "= 43. So") is None
    waiting = CutFinder()
    assert waiting.feed([CloseProbe(True, ".)", 4)], "= 43.") is None and waiting.waiting
    assert waiting.finish() is None
    # Whitespace of the small model's own: the next prefix decides, as before.
    assert CutFinder().feed([CloseProbe(True, " "), CloseProbe(False)], "ab") == Cut(1, " ")
    assert CutFinder().feed([CloseProbe(True, " "), CloseProbe(True, "")], "ab") == Cut(2)


def test_live_requests_are_refused_on_a_vllm_that_keeps_the_first_max_tokens() -> None:
    """vLLM 0.24 takes an appended input's sampling parameters but not its max_tokens: each live
    handoff would write one token. The route says so (501) instead of serving such handoffs."""
    from vllm.v1.core.sched.scheduler import Scheduler

    from splitcli.engine_route_live import _live_unsupported

    def update_as_in_vllm_0_24(session: Any, update: Any) -> None:
        session.sampling_params = update.sampling_params

    why = _live_unsupported(update_as_in_vllm_0_24)
    assert why is not None and why.endswith("keeps a live request's first max_tokens when more input comes "
                                            "(each handoff would write one token); live handoffs need a later vLLM")
    assert _live_unsupported(None) == "this vLLM has no streaming input"
    assert _live_unsupported(Scheduler._update_request_as_session) is None  # the vLLM the tests run: it does


def test_a_probe_whose_client_goes_away_is_cancelled_in_the_server_and_gets_no_answer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The stream mode cancels probes still out once the cut is known; the route must then stop
    # computing (a cancelled vLLM generate aborts its request). A scripted engine call stands in
    # for the continuations, so that what is checked is the route's own handling of the disconnect.
    from splitcli import engine_route

    ended: list[str] = []

    async def never_done(engine: Any, request: dict[str, Any]) -> dict[str, Any]:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise
        return {}

    monkeypatch.setattr(engine_route, "continuations", never_done)
    messages = [{"type": "http.request", "body": b'{"prompt": [1, 2]}', "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(0.05)  # the client closes the connection a moment later
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def no_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise AssertionError("the route's own path must not reach vLLM's app")

    scope = {"type": "http", "path": engine_route.PATH, "method": "POST",
             "app": SimpleNamespace(state=SimpleNamespace(engine_client=None))}
    asyncio.run(asyncio.wait_for(engine_route.ContinuationsRoute(no_app)(scope, receive, send), 10))
    assert ended == ["cancelled"] and sent == []
