"""Helpers around the models: pad-vocab."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from splitcli import console
from splitcli.cli.common import command
from splitcli.errors import UsageError


def pad_vocab(
    draft: Annotated[Path, typer.Argument(help="The draft model's folder (e.g. R1-Distill-Qwen-1.5B).")],
    out: Annotated[Path, typer.Argument(help="A new folder for the padded copy.")],
    to: Annotated[int | None, typer.Option("--to", min=1, metavar="N", help="Vocabulary size to pad to.")] = None,
    like: Annotated[Path | None, typer.Option("--like", help="Pad to this target model's vocabulary size.")] = None,
) -> None:
    """Write a copy of a draft model padded to its target's vocabulary size, for spec-decoding.

    vLLM's draft_model speculative decoding needs draft and target of one vocabulary size;
    R1-Distill-Qwen 1.5B (151936) and 7B/14B/32B (152064) share the tokenizer but not the size.
    Then set big.speculative.model to the padded copy.

    Example: splitreason pad-vocab ./R1-Distill-Qwen-1.5B ./draft-152064 --like ./R1-Distill-Qwen-7B
    """
    from splitcli import vocab

    if (to is None) == (like is None):
        raise UsageError("give the size with --to N or a target model with --like PATH (one of them)")
    size = to if to is not None else vocab.vocab_size(like)  # type: ignore[arg-type]
    with console.err.status(f"padding {draft} to {size} rows"):
        old, new = vocab.pad_vocab(draft, out, size)
    console.say(("padded", "green"), f" {draft} ({old} rows) to {out} ({new} rows); set big.speculative.model: {out}")


def register(app: typer.Typer) -> None:
    command(app, pad_vocab, "pad-vocab")
