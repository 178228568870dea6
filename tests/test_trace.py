"""The Trace: derived stats, boxed-answer extraction and the versioned JSONL round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitcli.errors import UsageError
from splitcli.trace import Call, Segment, Trace, final_answer, load_jsonl, strip_tags


def _trace() -> Trace:
    trace = Trace(question="q", mode="splitreason", models={"small": "s", "big": "b"})
    trace.segments = [
        Segment("small", "a <bigmodel>", [1, 2, 3], start=0.0, end=1.0, prompt_tokens=10),
        Segment("big", "hard", [4, 5], start=1.0, end=2.0, first_token=1.25, prompt_tokens=8, cached_tokens=6),
        Segment("small", "</bigmodel> so \\boxed{\\frac{1}{2}}", [6, 7, 8, 9, 10], start=2.0, end=3.0,
                first_token=2.5, prompt_tokens=15, cached_tokens=12),
    ]
    trace.calls = [Call("small", "tokenize", 0.0, 0.5), Call("small", "generate", 0.0, 1.0), Call("big", "generate", 1.0, 2.0),
                   Call("small", "probe", 2.0, 2.2), Call("small", "generate", 2.2, 3.0)]
    trace.wall_seconds = 3.1
    return trace


def test_stats_count_tokens_offload_handoffs_and_costs() -> None:
    stats = _trace().stats()
    assert stats["tokens"] == {"small": 8, "big": 2}
    assert stats["offload_share"] == 0.2
    assert stats["handoffs"] == 2
    assert stats["seconds"] == {"small": 2.5, "big": 1.0}
    assert stats["handoff_costs"] == [
        {"to": "big", "latency_s": 0.25, "prompt_tokens": 8, "uncached_prompt_tokens": 2},
        {"to": "small", "latency_s": 0.5, "prompt_tokens": 15, "uncached_prompt_tokens": 3},
    ]
    assert stats["answer"] == "\\frac{1}{2}"
    assert stats["http_seconds"] == 3.5 and stats["wall_seconds"] == 3.1
    assert stats["http_busy_seconds"] == 3.0


@pytest.mark.parametrize(("text", "answer"), [
    ("<think>x \\boxed{1}</think> so \\boxed{2}", "2"),
    ("</think> \\boxed{a{b}c} and then \\boxed{\\sqrt{2}}", "\\sqrt{2}"),
    ("\\boxed{7}</think> no box after", None),
    ("no think, \\boxed{3}", "3"),
    ("</think> \\boxed{unclosed", None),
])
def test_final_answer_is_last_box_after_think(text: str, answer: str | None) -> None:
    assert final_answer(text) == answer


def test_strip_tags_leaves_the_big_models_view() -> None:
    assert strip_tags("a <bigmodel>b</bigmodel>c", "<bigmodel>", "</bigmodel>") == "a bc"


def test_jsonl_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    original = _trace()
    original.append_jsonl(path)
    original.append_jsonl(path)
    loaded = list(load_jsonl(path))
    assert len(loaded) == 2
    assert loaded[0].segments == original.segments
    assert loaded[0].calls == original.calls
    assert loaded[0].stats() == original.stats()


def test_unknown_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.jsonl"
    path.write_text('{"version": 99, "question": "q", "mode": "m"}\n')
    with pytest.raises(UsageError, match="trace version 99 is not supported"):
        list(load_jsonl(path))
