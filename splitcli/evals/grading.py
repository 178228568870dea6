"""Grading without a judge: the boxed answer after the thinking, compared with Math-Verify; for
multiple choice, the boxed or "Answer:" letter. What cannot be read is wrong, never a default.
Every verdict says what was extracted and why it was judged so."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from splitcli.errors import UsageError
from splitcli.trace import answer_region, last_boxed

LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class Verdict:
    correct: bool
    extracted: str | None
    reason: str
    vote: str | None = None  # the answer in a canonical form, for majority voting

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _where(response: str) -> str:
    return "after </think>" if "</think>" in response else "in the response (it has no </think>)"


@lru_cache(maxsize=4096)
def _parse(latex: str) -> tuple[Any, ...]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    return tuple(parse(f"${latex}$", extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()]))


def grade_math(gold: str, response: str) -> Verdict:
    """The last non-empty \\boxed{} after the last </think>, equal to the gold by Math-Verify
    (`verify(gold, answer)`, gold first: the comparison is not symmetric)."""
    from math_verify import verify

    boxed = last_boxed(answer_region(response))
    if boxed is None:
        return Verdict(False, None, f"no \\boxed{{}} answer {_where(response)}")
    gold_parsed = _parse(gold.strip())
    if not gold_parsed:
        return Verdict(False, boxed, f"the gold answer {gold!r} could not be parsed (check the data)")
    answer = _parse(boxed)
    if not answer:
        return Verdict(False, boxed, "the boxed answer could not be read as math")
    vote = str(answer[0])
    if verify(list(gold_parsed), list(answer)):
        return Verdict(True, boxed, "equal to the gold answer (Math-Verify)", vote)
    return Verdict(False, boxed, f"not equal to the gold answer {gold} (Math-Verify)", vote)


_BOXED_LETTER = re.compile(r"^\s*(?:\\(?:text|mathrm|textbf|mathbf)\s*\{\s*)?\(?\s*([A-J])\s*\)?\s*\}?\s*(?:[.):]|$)")
_ANSWER_LETTER = re.compile(r"answer\s*(?:is)?\s*[:：]?\s*\**\s*(?:\\boxed\{)?\s*\(?\s*([A-J])\s*\)?(?![A-Za-z])",
                            re.IGNORECASE)


def extract_letter(response: str) -> str | None:
    """The chosen option's letter: from the last boxed answer, else the last 'Answer: X' (X a capital letter)."""
    region = answer_region(response)
    boxed = last_boxed(region)
    if boxed is not None:
        match = _BOXED_LETTER.match(boxed)
        if match:
            return match.group(1)
    letters = [m.group(1) for m in _ANSWER_LETTER.finditer(region) if m.group(1).isupper()]
    return letters[-1] if letters else None


def grade_choice(gold: str, response: str, options: int = 4) -> Verdict:
    """The letter chosen equals the gold letter; no letter, or one outside the options, is wrong."""
    letter = extract_letter(response)
    if letter is None:
        return Verdict(False, None, f"no answer letter {_where(response)} (neither \\boxed{{X}} nor 'Answer: X'); "
                                    "an unreadable answer is wrong, never a default letter")
    if letter not in LETTERS[:options]:
        return Verdict(False, letter, f"{letter} is not one of the {options} options", letter)
    if letter == gold.strip().upper():
        return Verdict(True, letter, "the gold letter", letter)
    return Verdict(False, letter, f"not the gold letter {gold.strip().upper()}", letter)


GRADERS = ("math", "choice")


def grade(grader: str, gold: str, response: str, options: int = 4) -> Verdict:
    if grader == "math":
        return grade_math(gold, response)
    if grader == "choice":
        return grade_choice(gold, response, options)
    raise UsageError(f"unknown grader {grader!r} (choose one of: {', '.join(GRADERS)})")
