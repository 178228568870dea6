"""A gendata run: annotate traces concurrently, keyed by id; every result appended to progress.jsonl as
it finishes (resumable after any crash); at the end data.jsonl, rejected.jsonl and stats.json are
written in source order, so a resumed run and an uninterrupted one give the same files."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from splitcli import __version__
from splitcli.datafiles import RunFolder
from splitcli.evals.tasks import derived_seed
from splitcli.gendata import stats
from splitcli.gendata.align import insert_tags, merge, tagged_share
from splitcli.gendata.annotate import Annotator
from splitcli.gendata.sources import Source, SourceSet
from splitcli.profiles import Profile

PROGRESS_FILE = "progress.jsonl"
DATA_FILE = "data.jsonl"
REJECTED_FILE = "rejected.jsonl"
STATS_FILE = "stats.json"


@dataclass
class GendataPlan:
    profile: Profile
    sources: SourceSet
    fraction: float
    min_chars: int
    concurrency: int
    annotator_name: str  # the model name requests use
    inputs: dict[str, Any]


def fingerprint(plan: GendataPlan) -> dict[str, Any]:
    """What decides the output; a resumed run must match it."""
    annotator = plan.profile.annotator
    return {
        "source": plan.sources.source, "revision": plan.sources.revision, "rows": len(plan.sources.rows),
        "rows_hash": plan.sources.digest, "fraction": plan.fraction, "min_chars": plan.min_chars,
        "annotator": {"model": plan.annotator_name, "endpoint": annotator.endpoint, "use": annotator.use,
                      "temperatures": annotator.temperatures, "max_tokens": annotator.max_tokens,
                      "instruction_hash": hashlib.sha256(annotator.instruction.encode()).hexdigest()[:16]},
        "tags": [plan.profile.prompt.open_tag, plan.profile.prompt.close_tag],
        "splitreason": __version__,
    }


class RunDir(RunFolder):
    """run.json, progress.jsonl (one line per finished trace) and the outputs."""

    progress_file = PROGRESS_FILE
    writer = "gendata"

    def load_progress(self) -> dict[str, dict[str, Any]]:
        return self.load(lambda record: str(record["id"]))

    def write_outputs(self, plan: GendataPlan, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """data.jsonl (SFT chat messages), rejected.jsonl and stats.json, in source order; plots."""
        ordered = [results[row.id] for row in plan.sources.rows if row.id in results]
        with open(self.path / DATA_FILE, "w") as data, open(self.path / REJECTED_FILE, "w") as rejected:
            for record in ordered:
                if record["status"] == "ok":
                    data.write(json.dumps({"id": record["id"], "messages": record["messages"]}) + "\n")
                else:
                    rejected.write(json.dumps({"id": record["id"], "reason": record["reason"]}) + "\n")
        summary = stats.summarise(ordered)
        (self.path / STATS_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        stats.plot(ordered, self.path)
        return summary


def _messages(row: Source, tagged: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": row.problem}, {"role": "assistant", "content": tagged}]


Counter = Callable[[str], int | None]


async def process(plan: GendataPlan, annotator: Annotator, row: Source, count_tokens: Counter) -> dict[str, Any]:
    """One trace: annotated, aligned and tagged, or rejected with its reason."""
    base: dict[str, Any] = {"id": row.id}
    if len(row.generation) <= plan.min_chars:
        return {**base, "status": "rejected", "reason": f"shorter than {plan.min_chars} characters ({len(row.generation)})"}
    annotation = await annotator.annotate(row.generation, plan.fraction, derived_seed(row.id, "annotate"))
    if not annotation.ok:
        return {**base, "status": "rejected", "reason": annotation.reason, "attempts": annotation.attempts}
    tags = plan.profile.prompt
    intervals = [(m.start, m.end) for m in annotation.matches]
    tagged = insert_tags(row.generation, intervals, tags.open_tag, tags.close_tag)
    inside = "".join(row.generation[start:end] for start, end in merge(intervals))
    all_tokens, inside_tokens = count_tokens(row.generation), count_tokens(inside)
    return {
        **base, "status": "ok", "messages": _messages(row, tagged), "attempts": annotation.attempts,
        "snippets": [{"start": m.start, "end": m.end, "similarity": round(m.similarity, 4)} for m in annotation.matches],
        "intervals": merge(intervals), "chars": len(row.generation),
        "offload_chars": round(tagged_share(row.generation, intervals), 4),
        "offload_tokens": round(inside_tokens / all_tokens, 4) if all_tokens and inside_tokens is not None else None,
    }


async def run_all(plan: GendataPlan, annotator: Annotator, run_dir: RunDir, pending: list[Source],
                  count_tokens: Callable[[str], int | None], on_done: Callable[[dict[str, Any]], None]) -> None:
    gate = asyncio.Semaphore(plan.concurrency)

    async def one(row: Source) -> None:
        async with gate:
            record = await process(plan, annotator, row, count_tokens)
        run_dir.append(record)
        on_done(record)

    await asyncio.gather(*(one(row) for row in pending))


def token_counter(profile: Profile) -> tuple[Callable[[str], int | None], str | None]:
    """Token counts with the small model's tokenizer (what the offload share means at run time);
    (a counter returning None, the reason) when the tokenizer cannot be loaded here."""
    from splitcli import demo

    try:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        tokenizer = AutoTokenizer.from_pretrained(demo.resolve_model(profile.small.model),
                                                  revision=profile.small.revision)
    except Exception as exc:  # broad on purpose: no network, gated, not a tokenizer: token shares are skipped
        return (lambda text: None), f"the small model's tokenizer could not be loaded ({type(exc).__name__})"
    return (lambda text: len(tokenizer.encode(text, add_special_tokens=False))), None
