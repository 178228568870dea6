"""Benchmark tasks as data: where the problems come from, which fields hold what, how answers are graded.

Adding a benchmark is adding a row to TASKS. Hub datasets are loaded with the `datasets` library and
cached in the state dir; `--data PATH` runs any local set through the same code path.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from splitcli import paths
from splitcli.datafiles import load_local, quiet_datasets
from splitcli.errors import DataError

Grader = Literal["math", "choice"]
LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    dataset: str | None  # Hugging Face dataset id; None: built in (the demo questions)
    config: str | None = None
    split: str = "test"
    # A commit to pin. None takes the hub's current version; the commit actually loaded is recorded in
    # each run's fingerprint (with a hash of the problems), and a profile can pin it (eval.revision).
    revision: str | None = None
    id_field: str = "id"  # missing from the data: the row number is the id
    problem_field: str = "problem"
    answer_field: str = "answer"
    # Multiple choice: the correct option first, then the wrong ones; shown shuffled per problem.
    choice_fields: tuple[str, ...] = ()
    grader: Grader = "math"
    gated: bool = False  # needs HF_TOKEN and accepted terms on the hub


TASKS: dict[str, Task] = {task.name: task for task in [
    Task("demo", "the demo questions (no download; the tiny demo models know them)", None),
    Task("aime24", "AIME 2024, 30 problems, integer answers", "HuggingFaceH4/aime_2024", split="train"),
    Task("aime25", "AIME 2025, 30 problems, integer answers", "yentinglin/aime_2025", split="train"),
    Task("math500", "MATH-500, 500 problems", "HuggingFaceH4/MATH-500", split="test", id_field="unique_id"),
    Task("gpqa-diamond", "GPQA diamond, 198 four-option questions, answer a letter", "Idavidrein/gpqa",
         config="gpqa_diamond", split="train", id_field="Record ID", problem_field="Question",
         answer_field="Correct Answer", grader="choice", gated=True,
         choice_fields=("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")),
]}


@dataclass
class Problem:
    id: str
    problem: str  # the question as the model sees it (options included for multiple choice)
    answer: str  # gold: the answer text, or the letter of the correct option
    choices: list[str] = field(default_factory=list)  # options in the order shown
    shuffle_seed: int | None = None


@dataclass
class ProblemSet:
    task: Task
    problems: list[Problem]
    source: str  # dataset id or local path
    revision: str | None

    @property
    def digest(self) -> str:
        """A hash of the problems exactly as asked and graded: two runs compare only if it matches."""
        text = json.dumps([asdict(p) for p in self.problems], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise DataError(f"unknown task {name!r} (choose one of: {', '.join(TASKS)}; or run any set with --data FILE)")
    return TASKS[name]


def derived_seed(*parts: object) -> int:
    """A stable 31-bit seed from several parts (run seed, problem id, sample index)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _multiple_choice(question: str, options: list[str], run_seed: int, problem_id: str) -> tuple[str, list[str], str, int]:
    """The question with its options shuffled (seeded per problem); returns text, order, gold letter, seed."""
    seed = derived_seed(run_seed, problem_id, "choices")
    order = list(range(len(options)))
    random.Random(seed).shuffle(order)
    shown = [options[i].strip() for i in order]
    lines = "\n".join(f"{LETTERS[i]}) {text}" for i, text in enumerate(shown))
    text = f"{question.strip()}\n\n{lines}\n\nAnswer with the letter of the correct option."
    return text, shown, LETTERS[order.index(0)], seed


def _problems(rows: list[dict[str, Any]], fields: Task, run_seed: int, source: str) -> list[Problem]:
    problems = []
    for number, row in enumerate(rows):
        for key in (fields.problem_field, fields.answer_field, *fields.choice_fields):
            if key not in row:
                have = ", ".join(sorted(row)) or "no columns"
                raise DataError(f"{source}: row {number + 1} has no {key!r} column (it has: {have}; a local set needs "
                                "id, problem, answer and, for multiple choice, choices)")
        problem_id = str(row.get(fields.id_field, number + 1))
        question, gold = str(row[fields.problem_field]).strip(), str(row[fields.answer_field]).strip()
        if fields.choice_fields:
            options = [str(row[key]) for key in fields.choice_fields]
        elif row.get("choices"):
            # A local set lists its options in `choices` and names the correct one in `answer` (text or letter).
            listed = [str(option) for option in row["choices"]]
            index = LETTERS.index(gold) if len(gold) == 1 and gold in LETTERS[: len(listed)] else None
            if index is None and gold not in listed:
                raise DataError(f"{source}: row {number + 1}: answer {gold!r} is neither one of its choices nor "
                                "their letter")
            index = listed.index(gold) if index is None else index
            options = [listed[index], *listed[:index], *listed[index + 1:]]
        else:
            problems.append(Problem(problem_id, question, gold))
            continue
        text, shown, letter, seed = _multiple_choice(question, options, run_seed, problem_id)
        problems.append(Problem(problem_id, text, letter, shown, seed))
    ids = [problem.id for problem in problems]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{source}: problem id {duplicate!r} appears more than once (ids must be unique)")
    return problems


LOCAL_FIELDS = Task("local", "a local set", None)  # id, problem, answer, optional choices


def load_problems(task: Task, run_seed: int, data: Path | None = None, revision: str | None = None,
                  limit: int | None = None) -> ProblemSet:
    """The task's problems: built in, from a local file or folder (`data`), or from the hub."""
    fields = task
    if data is not None:
        rows, source, resolved, fields = load_local(data), str(data), None, LOCAL_FIELDS
    elif task.dataset is None:
        from splitcli import demo

        rows = [{"id": f"demo-{i + 1}", "problem": q.question, "answer": q.answer} for i, q in enumerate(demo.QUESTIONS)]
        source, resolved = "splitcli.demo", None
    else:
        rows, resolved = _load_hub(task, revision or task.revision)
        source = task.dataset
    problems = _problems(rows, fields, run_seed, source)
    if not problems:
        raise DataError(f"{source}: no problems in it")
    grader: Grader = "choice" if any(problem.choices for problem in problems) else task.grader
    if grader != task.grader:
        task = Task(**{**asdict(task), "grader": grader})
    return ProblemSet(task, problems[:limit] if limit else problems, source, resolved)


def _load_hub(task: Task, revision: str | None) -> tuple[list[dict[str, Any]], str | None]:
    import datasets

    assert task.dataset is not None
    token = os.environ.get("HF_TOKEN") or None
    way_out = "or run a local copy with --data FILE (JSONL/parquet/CSV with id, problem, answer)"
    if task.gated and token is None:
        raise DataError(f"task {task.name}: {task.dataset} is gated: accept its terms on huggingface.co and set HF_TOKEN "
                        f"(in the environment or .env), {way_out}")
    quiet_datasets()
    try:
        split = datasets.load_dataset(task.dataset, task.config, split=task.split, revision=revision, token=token,
                                      cache_dir=str(paths.data_dir()))
    except Exception as exc:  # broad on purpose: offline, unknown id, gated, HTTP errors all end the same way
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise DataError(f"task {task.name}: cannot load {task.dataset} from the Hugging Face hub ({reason}); check the "
                        f"network and HF_TOKEN, {way_out}") from None
    return [dict(row) for row in split], revision or _hub_commit(task.dataset, token)


def _hub_commit(dataset: str, token: str | None) -> str | None:
    """The commit the hub serves now (recorded so that a run says which version it used)."""
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(dataset, token=token).sha
    except Exception:  # broad on purpose: the data is loaded; the commit is a nice-to-have
        return None


