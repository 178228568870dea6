"""The GRPO rewards on hand-written completions, in both of TRL's formats."""

from __future__ import annotations

import pytest

from splitcli.rewards import accuracy_reward, coverage_term, format_reward, tag_reward

THINK = "Let me see. " * 4  # 48 characters of thinking outside any tag


def _completion(thinking: str, answer: str = "The answer is \\boxed{43}.") -> str:
    return f"<think>\n{thinking}\n</think>\n{answer}"


def _covering(share: float) -> str:
    """A completion whose thinking has `share` of its characters inside one tagged span."""
    inside = round(100 * share)
    return _completion("x" * (100 - inside) + "<bigmodel>" + "y" * inside + "</bigmodel>")


def test_accuracy_by_math_verify_in_both_formats() -> None:
    completions = [_completion(THINK), _completion(THINK, "\\boxed{42}"), [{"role": "assistant", "content": _completion(THINK)}]]
    assert accuracy_reward(completions, answer=["43", "43", "43.0"]) == [1.0, 0.0, 1.0]
    assert accuracy_reward([_completion(THINK)], solution=["\\frac{86}{2}"]) == [1.0]
    assert accuracy_reward(["no box </think> 43"], answer=["43"]) == [0.0]
    with pytest.raises(ValueError, match="needs the gold answers"):
        accuracy_reward(["x"])


@pytest.mark.parametrize(("completion", "reward"), [
    (_completion(THINK), 2.0),  # layout right, no tags: nothing wrong with them either
    (_completion("a <bigmodel>b</bigmodel> c"), 2.0),
    ("no thinking block at all", 0.0),
    (_completion("a <bigmodel>b c"), 1.0),  # unbalanced
    (_completion("a <bigmodel>b <bigmodel>c</bigmodel></bigmodel>"), 1.0),  # nested
    (_completion("a </bigmodel>b<bigmodel> c"), 1.0),  # close before open
    (_completion(THINK, "answer <bigmodel>x</bigmodel>"), 1.0),  # a tag outside the thinking
    (_completion(THINK) + "</think>", 1.0),  # two ends of thinking
    ("<think>\nonly thinking\n</think>\n", 1.0),  # nothing after the thinking
])
def test_format_reward(completion: str, reward: float) -> None:
    assert format_reward([completion]) == [reward]
    assert format_reward([[{"role": "assistant", "content": completion}]]) == [reward]


@pytest.mark.parametrize(("share", "coverage"), [(0.0, 0.0), (0.2, 0.5), (0.4, 1.0), (0.8, 0.0), (1.0, -0.5)])
def test_coverage_peaks_at_40_percent(share: float, coverage: float) -> None:
    assert coverage_term(share) == pytest.approx(coverage)


def test_tag_reward_on_hand_written_completions() -> None:
    no_tags, forty, all_in = _completion("x" * 100), _covering(0.4), _covering(1.0)
    assert tag_reward([no_tags]) == [pytest.approx(0.25 + 0 + 0.0)]  # markers only, coverage 0%
    assert tag_reward([forty]) == [pytest.approx(0.25 + 0.25 + 1.0)]  # the peak
    assert tag_reward([all_in]) == [pytest.approx(0.25 + 0.25 - 0.5)]  # everything offloaded
    assert tag_reward([_completion("a <bigmodel>b")]) == [-1.0]  # unbalanced
    assert tag_reward([_completion("a </bigmodel>b")]) == [-1.0]
    many = _completion(" ".join("<bigmodel>y</bigmodel>x" for _ in range(9)))
    assert tag_reward([many])[0] < tag_reward([_completion(" ".join("<bigmodel>y</bigmodel>x" for _ in range(3)))])[0]
