"""GRPO reward functions of the SplitReason paper, with the signature TRL's GRPOTrainer expects:
`reward(completions, **kwargs) -> list[float | None]`, where each completion is a string (standard
format) or a list of chat messages (conversational format: the last message's content is used), and
the dataset's other columns arrive as keyword arguments (`answer` or `solution` for accuracy).

    from trl import GRPOTrainer
    from splitcli.rewards import accuracy_reward, format_reward, tag_reward
    GRPOTrainer(..., reward_funcs=[accuracy_reward, format_reward, tag_reward])

The three rewards, as defined here:
- accuracy_reward: 1.0 when the boxed answer after </think> equals the gold by Math-Verify, else 0.0;
  None (the sample is left out) when the gold itself cannot be parsed.
- format_reward: +1 for the think/answer layout (at most one <think>, exactly one </think> after it,
  and something after </think>), +1 for properly used tags (every <bigmodel> closed by a </bigmodel>
  before the next one opens, none left open, all inside the thinking). 0 to 2.
- tag_reward: +0.25 for exactly one </think> (and at most one <think>); +0.25 for a moderate number of
  tagged spans (1 to 8); plus a coverage term over the thinking, 1 - |c - 0.4| / 0.4 for a share c
  of its characters inside tags (1 at 40%, 0 at 0% and 80%, -0.5 at 100%); -1 in all when the tags are
  unbalanced (more opened than closed, or a close before its open).
"""

from __future__ import annotations

from typing import Any

from splitcli.profiles import PromptConfig

OPEN, CLOSE = PromptConfig().open_tag, PromptConfig().close_tag
THINK_OPEN, THINK_END = "<think>", "</think>"
COVERAGE_PEAK = 0.4
MODERATE_TAGS = (1, 8)


def _text(completion: Any) -> str:
    """A completion as text: a string, or the content of the last chat message."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion:
        last = completion[-1]
        return str(last.get("content", "")) if isinstance(last, dict) else str(last)
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    return str(completion)


def _thinking(text: str) -> str:
    """The thinking part: before the last </think> (after <think> if it is there), without the
    whitespace around it."""
    end = text.rfind(THINK_END)
    head = text if end < 0 else text[:end]
    start = head.find(THINK_OPEN)
    return (head[start + len(THINK_OPEN):] if start >= 0 else head).strip()


def tag_spans(text: str) -> tuple[list[tuple[int, int]], bool]:
    """The tagged spans [start, end) of `text` and whether the tags are balanced and not nested."""
    spans, balanced, position, opened = [], True, 0, None
    while True:
        next_open, next_close = text.find(OPEN, position), text.find(CLOSE, position)
        if next_open < 0 and next_close < 0:
            break
        if next_close < 0 or (0 <= next_open < next_close):
            if opened is not None:
                balanced = False  # opened again before closing
            opened, position = next_open + len(OPEN), next_open + len(OPEN)
        else:
            if opened is None:
                balanced = False  # a close with nothing open
            else:
                spans.append((opened, next_close))
            opened, position = None, next_close + len(CLOSE)
    if opened is not None:
        balanced = False
    return spans, balanced


def accuracy_reward(completions: list[Any], answer: list[str] | None = None, solution: list[str] | None = None,
                    **kwargs: Any) -> list[float | None]:
    """1.0 when the boxed answer equals the gold (`answer`, else `solution`) by Math-Verify."""
    from splitcli.evals.grading import grade_math

    golds = answer if answer is not None else solution
    if golds is None:
        raise ValueError("accuracy_reward needs the gold answers: a dataset column named answer or solution")
    rewards: list[float | None] = []
    for completion, gold in zip(completions, golds, strict=True):
        verdict = grade_math(str(gold), _text(completion))
        rewards.append(None if verdict.reason.startswith("the gold answer") else float(verdict.correct))
    return rewards


def format_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """+1 for the think/answer layout, +1 for properly used tags inside the thinking."""
    rewards = []
    for completion in completions:
        text = _text(completion)
        ends, opens = text.count(THINK_END), text.count(THINK_OPEN)
        end = text.rfind(THINK_END)
        layout = ends == 1 and opens <= 1 and (opens == 0 or text.find(THINK_OPEN) < end) and text[end + len(THINK_END):].strip()
        spans, balanced = tag_spans(text)
        inside = all(span_end <= end for _, span_end in spans) if end >= 0 else False
        rewards.append(float(bool(layout)) + float(balanced and inside))
    return rewards


def coverage_term(share: float) -> float:
    """1 at 40% of the thinking inside tags, falling linearly either side (0 at 0% and 80%)."""
    return 1.0 - abs(share - COVERAGE_PEAK) / COVERAGE_PEAK


def tag_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """Markers, a moderate number of tagged spans, and coverage peaking at 40%; -1 when unbalanced."""
    rewards = []
    for completion in completions:
        text = _text(completion)
        spans, balanced = tag_spans(text)
        if not balanced:
            rewards.append(-1.0)
            continue
        markers = 0.25 if text.count(THINK_END) == 1 and text.count(THINK_OPEN) <= 1 else 0.0
        count = 0.25 if MODERATE_TAGS[0] <= len(spans) <= MODERATE_TAGS[1] else 0.0
        thinking = _thinking(text)
        plain = thinking.replace(OPEN, "").replace(CLOSE, "")
        inside = sum(len(text[start:end]) for start, end in spans)
        share = inside / len(plain) if plain else 0.0
        rewards.append(markers + count + coverage_term(min(share, 1.0)))
    return rewards
