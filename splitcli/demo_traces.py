"""The built-in questions and the SplitReason-style traces the demo models memorise: the small
model up to the hard step, the big model's part, the small model again to a boxed answer. Pure
data: eval, gendata and the tests read it without training anything (that is demo_training).
"""

from __future__ import annotations

from dataclasses import dataclass

from splitcli.profiles import PromptConfig


@dataclass(frozen=True)
class DemoQuestion:
    question: str
    answer: str
    before: str  # small model, up to the hard step
    hard: str  # the big model's part
    after: str  # small model again, to the end

    def pieces(self, tags: PromptConfig) -> list[str]:
        """The tagged trace as the small model writes it, piece by piece."""
        return [self.before, tags.open_tag, self.hard, tags.close_tag, self.after]

    def tagged(self, tags: PromptConfig) -> str:
        return "".join(self.pieces(tags))

    def untagged(self) -> str:
        return self.before + self.hard + self.after


def _after(summary: str, answer: str) -> str:
    return f"{summary}\n</think>\nThe answer is \\boxed{{{answer}}}."


QUESTIONS: list[DemoQuestion] = [
    DemoQuestion("What is 12 * 3 + 7?", "43", "First, 12 * 3 = 36. ", "Then 36 + 7 = 43. ", _after("So the total is 43.", "43")),
    DemoQuestion("What is 15 + 27 - 9?", "33", "First, 15 + 27 = 42. ", "Then 42 - 9 = 33. ",
                 _after("So the result is 33.", "33")),
    DemoQuestion("What is 2 to the power 10?", "1024", "Start with 2 * 2 = 4. ",
                 "Squaring gives 16, then 256, and 256 * 4 = 1024. ", _after("Check: 2^10 = 1024.", "1024")),
    DemoQuestion("How many sides do 3 hexagons have?", "18", "A hexagon has 6 sides. ",
                 "Three of them have 3 * 6 = 18 sides. ", _after("That makes 18.", "18")),
]

# The Qwen3 pair's traces: the same questions and answers, tags where the real vocabulary merges them.
QUESTIONS_QWEN3: list[DemoQuestion] = [
    DemoQuestion("What is 12 * 3 + 7?", "43", "First, 12 * 3 = 36.\n", "Then 36 + 7 = 43.",
                 _after(" So the total is 43.", "43")),
    DemoQuestion("What is 15 + 27 - 9?", "33", "Let f(x) = x - 9 and x = 15 + 27 = 42.\n", "The result is f(42)",
                 _after(" = 42 - 9 = 33.", "33")),
    DemoQuestion("What is 2 to the power 10?", "1024", "Write it as a fraction:\n", "\\frac{2^{11}}{2} = 2^{10}",
                 _after(" = 1024.", "1024")),
    DemoQuestion("How many sides do 3 hexagons have?", "18", "A hexagon has 6 sides.\n", "Three of them: 3 * 6 = 18,",
                 _after(" so 18 sides in all.", "18")),
]


def questions_of(pair: str) -> list[DemoQuestion]:
    return QUESTIONS_QWEN3 if pair == "demo-qwen3" else QUESTIONS


def questions() -> list[dict[str, str]]:
    return [{"question": item.question, "answer": item.answer} for item in QUESTIONS]
