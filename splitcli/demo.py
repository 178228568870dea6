"""Tiny demonstration models, trained on CPU in seconds: two pairs (each with gendata's annotator).

They memorise SplitReason-style traces for a few built-in questions, so greedy decoding reproduces
them exactly: the small model opens <bigmodel> at the hard step, the big model continues it, the
small model closes </bigmodel> and finishes with a boxed answer. They know nothing else.

- `demo`: Qwen2, a 512-token BPE tokenizer trained on the traces themselves (tags never merge).
- `demo-qwen3`: Qwen3 (`Qwen3ForCausalLM`) with the real Qwen3 tokenizer and chat template (shipped
  in assets/qwen3) and Qwen3's two end-of-text ids. Its traces open the tag mid-formula and close it
  right after punctuation and formulas (`43.</bigmodel>`, `f(42)</bigmodel>`, `2^{10}</bigmodel>`),
  where the real vocabulary merges the tag with its neighbour (`.</`, `)</`, `}</`, `>\\`): the small
  model writes what a model fine-tuned on tagged text writes.

This module is the demo as the rest of splitcli uses it: where each pair lives, `demo:small` and
the like resolved to a model folder (built on first use), and the questions (demo_traces). The
training itself is demo_training.
"""

from __future__ import annotations

from pathlib import Path

from splitcli import environment, paths
from splitcli.demo_traces import QUESTIONS, DemoQuestion, questions, questions_of
from splitcli.demo_training import (
    DEMO_VERSION,
    QWEN3_ENDS,
    QWEN3_VERSION,
    SHAPES,
    build,
    build_qwen3,
    qwen3_tokenizer_files,
)
from splitcli.profiles import DEMO_PAIRS, demo_model

# What callers read as demo.X, defined in the modules the demo is split into.
__all__ = ["QUESTIONS", "QWEN3_ENDS", "DemoQuestion", "build_pair", "demo_root", "is_built", "questions", "questions_of",
           "qwen3_tokenizer_files", "resolve_model"]


def demo_root(pair: str = "demo") -> Path:
    """Where a pair is built: one folder per version of its training, so an old build is never reused."""
    if pair == "demo-qwen3":
        return paths.models_dir() / f"demo-qwen3-v{QWEN3_VERSION}"
    return paths.models_dir() / f"demo-v{DEMO_VERSION}"


def is_built(pair: str = "demo") -> bool:
    """Whether every role of the pair has been built."""
    return all((demo_root(pair) / role / "config.json").is_file() for role in SHAPES)


def resolve_model(model: str) -> str:
    """`demo:small`, `demo-qwen3:big`, ... -> local path (building on first use); anything else unchanged."""
    named = demo_model(model)
    if named is None:
        return model
    pair, role = named
    if role not in SHAPES:  # profiles refuse unknown demo names; a name may be known but not built by this version
        from splitcli.errors import ProfileError

        raise ProfileError(f"unknown demo model {model!r} (use one of: {', '.join(f'{pair}:{r}' for r in SHAPES)})")
    if not is_built(pair):
        from splitcli import console

        console.info(f"building the tiny {pair} models (first use, seconds on CPU)")
        build_pair(pair)
    return str(demo_root(pair) / role)


def build_pair(pair: str, target: Path | None = None) -> Path:
    """Train a pair into `target` (default: its demo_root) and return that folder."""
    if pair not in DEMO_PAIRS:
        raise ValueError(f"unknown demo pair {pair!r}")
    environment.check_companions()
    return build_qwen3(target or demo_root(pair)) if pair == "demo-qwen3" else build(target or demo_root(pair))
