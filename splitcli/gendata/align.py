"""Where the annotator's snippets are in the trace, and the trace with <bigmodel> tags around them.

Each snippet is located with rapidfuzz (an exact find first; else the best-matching stretch of the
trace by partial ratio, case aside): below 0.5 similarity it is not found; otherwise its ends are
moved to where its first and last characters really occur nearby (the original refined only below
0.95, which left a tag cutting a word when the best window was off by a letter). Intervals closer than 10 characters are
merged, and the tags are inserted with the text otherwise unchanged: removing them gives the trace back.
"""

from __future__ import annotations

from dataclasses import dataclass

from rapidfuzz import fuzz

MIN_SIMILARITY = 0.5  # the original's threshold
EDGE = 5  # characters matched at each end when refining
REACH = 50  # how far an end may move when refining
MERGE_GAP = 10  # intervals this close become one


@dataclass(frozen=True)
class Match:
    snippet: str
    start: int
    end: int
    similarity: float  # 0..1

    @property
    def found(self) -> bool:
        return self.similarity >= MIN_SIMILARITY and self.end > self.start


def _nearest(text: str, needle: str, around: int, reach: int) -> int | None:
    """Index of the occurrence of `needle` nearest to `around` within `reach`, else None."""
    low, high = max(0, around - reach), min(len(text), around + reach + len(needle))
    best, index = None, text.find(needle, low, high)
    while index != -1:
        if best is None or abs(index - around) < abs(best - around):
            best = index
        index = text.find(needle, index + 1, high)
    return best


def locate(snippet: str, trace: str) -> Match:
    """The stretch of `trace` that `snippet` copies, with its similarity."""
    snippet = snippet.strip()
    if not snippet:
        return Match(snippet, 0, 0, 0.0)
    exact = trace.find(snippet)
    if exact >= 0:
        return Match(snippet, exact, exact + len(snippet), 1.0)
    # Case does not decide where a copy is (when lower-casing keeps every index where it was).
    haystack, needle = trace.lower(), snippet.lower()
    if len(haystack) != len(trace) or len(needle) != len(snippet):
        haystack, needle = trace, snippet
    alignment = fuzz.partial_ratio_alignment(needle, haystack)
    start, end, similarity = alignment.dest_start, alignment.dest_end, alignment.score / 100
    if similarity < MIN_SIMILARITY:
        return Match(snippet, start, end, similarity)
    if len(snippet) > 2 * EDGE:
        head = _nearest(haystack, needle[:EDGE], start, REACH)
        tail = _nearest(haystack, needle[-EDGE:], end - EDGE, REACH)
        if head is not None:
            start = head
        if tail is not None and tail + EDGE > start:
            end = tail + EDGE
    return Match(snippet, start, end, similarity)


def merge(intervals: list[tuple[int, int]], gap: int = MERGE_GAP) -> list[tuple[int, int]]:
    """Sorted, with overlapping or nearly touching intervals joined."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(intervals):
        if merged and start - merged[-1][1] <= gap:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def insert_tags(trace: str, intervals: list[tuple[int, int]], open_tag: str, close_tag: str) -> str:
    """The trace with open/close tags around each interval (merged first); nothing else changes."""
    pieces, cursor = [], 0
    for start, end in merge(intervals):
        pieces += [trace[cursor:start], open_tag, trace[start:end], close_tag]
        cursor = end
    return "".join([*pieces, trace[cursor:]])


def tagged_share(trace: str, intervals: list[tuple[int, int]]) -> float:
    """Share of the trace's characters inside the (merged) intervals."""
    inside = sum(end - start for start, end in merge(intervals))
    return inside / len(trace) if trace else 0.0
