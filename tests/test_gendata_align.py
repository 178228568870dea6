"""Alignment of annotator snippets to traces, and the tagged text (pure functions, hand-made traces)."""

from __future__ import annotations

import pytest

from splitcli.gendata.align import insert_tags, locate, merge, tagged_share
from splitcli.gendata.annotate import parse_snippets
from splitcli.trace import strip_tags

TRACE = ("Let me think. First we compute 12 * 3 = 36, which is easy. Then we add 7 to get 43, and check it: "
         "43 - 7 = 36. So the total is 43.\n</think>\nThe answer is \\boxed{43}.")


def _tagged(intervals: list[tuple[int, int]]) -> str:
    return insert_tags(TRACE, intervals, "<bigmodel>", "</bigmodel>")


def test_an_exact_snippet_is_found_where_it_is() -> None:
    match = locate("Then we add 7 to get 43", TRACE)
    assert match.found and match.similarity == 1.0
    assert TRACE[match.start:match.end] == "Then we add 7 to get 43"


@pytest.mark.parametrize(("snippet", "expected"), [
    ("then we ad 7 to get 43", "Then we add 7 to get 43"),  # case and a dropped letter
    ("compute 12*3 = 36", "compute 12 * 3 = 36"),  # spacing
    ("So the totl is 43.", "So the total is 43."),
    ("  Then we add 7 to get 43  \n", "Then we add 7 to get 43"),  # whitespace around the copy
])
def test_a_near_verbatim_snippet_is_found_with_its_true_ends(snippet: str, expected: str) -> None:
    match = locate(snippet, TRACE)
    assert match.found and 0.5 <= match.similarity <= 1.0
    assert TRACE[match.start:match.end] == expected


def test_a_snippet_that_is_not_in_the_trace_is_not_found() -> None:
    match = locate("the derivative of a quadratic polynomial vanishes", TRACE)
    assert not match.found and match.similarity < 0.5
    assert not locate("", TRACE).found


def test_overlapping_and_adjacent_snippets_merge_into_one_span() -> None:
    first, second = locate("First we compute 12 * 3", TRACE), locate("12 * 3 = 36, which", TRACE)
    third = locate("is easy.", TRACE)  # 1 character after the second: within 10, merged
    spans = merge([(first.start, first.end), (second.start, second.end), (third.start, third.end)])
    assert len(spans) == 1 and TRACE[spans[0][0]:spans[0][1]] == "First we compute 12 * 3 = 36, which is easy."
    far = locate("So the total is 43.", TRACE)
    assert len(merge([(first.start, first.end), (far.start, far.end)])) == 2


def test_tags_go_around_the_spans_and_removing_them_gives_the_trace_back() -> None:
    spans = [(locate(s, TRACE).start, locate(s, TRACE).end) for s in ("Then we add 7 to get 43", "43 - 7 = 36")]
    tagged = _tagged(spans)
    assert "<bigmodel>Then we add 7 to get 43</bigmodel>" in tagged
    assert "<bigmodel>43 - 7 = 36</bigmodel>" in tagged
    assert "<\\bigmodel>" not in tagged  # the original wrote a wrong close tag
    assert strip_tags(tagged, "<bigmodel>", "</bigmodel>") == TRACE
    assert tagged_share(TRACE, spans) == pytest.approx((23 + 11) / len(TRACE))


def test_snippets_are_read_between_the_delimiter_lines_only() -> None:
    reply = ("Sure! Here they are:\n-----SNIPPET START-----\nThen we add 7\n-----SNIPPET END-----\nand\n"
             "-----SNIPPET START-----\n43 - 7 = 36\n-----SNIPPET END-----\n-----SNIPPET START-----\n\n"
             "-----SNIPPET END-----\n-----SNIPPET START-----\nunterminated")
    assert parse_snippets(reply) == ["Then we add 7", "43 - 7 = 36"]
    assert parse_snippets("no delimiters at all") == []
