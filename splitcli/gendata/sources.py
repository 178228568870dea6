"""Reasoning traces to annotate: a Hugging Face dataset (OpenR1-Math-220k by default), a local
JSONL/parquet file or dataset folder, or the built-in demo traces. Loaded with `datasets`."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from splitcli import paths
from splitcli.datafiles import load_local
from splitcli.errors import DataError
from splitcli.profiles import DEMO_PAIRS, GendataSection


@dataclass(frozen=True)
class Source:
    id: str
    problem: str
    generation: str  # the reasoning trace (and the answer after </think>, if any)


@dataclass
class SourceSet:
    rows: list[Source]
    source: str
    revision: str | None

    @property
    def digest(self) -> str:
        text = json.dumps([asdict(row) for row in self.rows], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _pick_generation(row: dict[str, Any], field: str) -> str | None:
    """A trace: the field itself, or from a list the first one marked correct (else the first)."""
    value = row.get(field)
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        correct = row.get("correctness_math_verify")
        if isinstance(correct, list):
            for text, ok in zip(value, correct, strict=False):
                if ok and isinstance(text, str):
                    return text
        return value[0] if isinstance(value[0], str) else None
    return None


def _demo_rows(pair: str) -> list[dict[str, Any]]:
    from splitcli import demo

    return [{"uuid": f"demo-{i + 1}", "problem": q.question, "generations": q.untagged()}
            for i, q in enumerate(demo.questions_of(pair))]


def load_sources(section: GendataSection, source: str | None = None, limit: int | None = None) -> SourceSet:
    """The traces of the profile's gendata source (or `source`), as (id, problem, generation)."""
    name = source or section.source
    revision = section.revision
    fields = (section.id_field, section.problem_field, section.generation_field)
    if name in DEMO_PAIRS:
        raw, fields = _demo_rows(name), ("uuid", "problem", "generations")
    elif Path(name).exists():
        raw = load_local(Path(name))
        if raw and section.id_field not in raw[0] and "id" in raw[0]:
            fields = ("id", "problem", "generation")  # a local file with the plain column names
    else:
        raw, revision = _load_hub(name, section, limit)
    id_field, problem_field, generation_field = fields
    rows = []
    for number, row in enumerate(raw):
        generation = _pick_generation(row, generation_field)
        if generation is None or problem_field not in row:
            have = ", ".join(sorted(row)) or "no columns"
            raise DataError(f"{name}: row {number + 1} has no {problem_field!r} or {generation_field!r} column (it has: "
                            f"{have}; set gendata.problem_field / gendata.generation_field / gendata.id_field)")
        rows.append(Source(str(row.get(id_field, number + 1)), str(row[problem_field]), generation))
        if limit is not None and len(rows) >= limit:
            break
    ids = [row.id for row in rows]
    if len(set(ids)) != len(ids):
        raise DataError(f"{name}: ids are not unique (set gendata.id_field to a column that is)")
    return SourceSet(rows, name, revision)


def _load_hub(name: str, section: GendataSection, limit: int | None) -> tuple[list[dict[str, Any]], str | None]:
    import datasets

    datasets.disable_progress_bars()
    token = os.environ.get("HF_TOKEN") or None
    try:
        if limit is not None:  # the first rows only: stream them rather than download the whole split
            stream = datasets.load_dataset(name, section.config, split=section.split, revision=section.revision,
                                           token=token, streaming=True)
            return [dict(row) for row in stream.take(limit)], section.revision
        split = datasets.load_dataset(name, section.config, split=section.split, revision=section.revision,
                                      token=token, cache_dir=str(paths.data_dir()))
    except Exception as exc:  # broad on purpose: offline, unknown id, gated all end the same way
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise DataError(f"cannot load {name} from the Hugging Face hub ({reason}); check the network and HF_TOKEN, "
                        "or give a local file with --source FILE (JSONL/parquet with id, problem, generation)") from None
    return [dict(row) for row in split], section.revision
