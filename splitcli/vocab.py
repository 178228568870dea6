"""A draft model padded to its target's vocabulary size, for vLLM's draft-model speculative decoding.

R1-Distill-Qwen 1.5B and 7B share a tokenizer but their embedding matrices differ in size (151936 vs
152064 rows); vLLM's draft_model method refuses a draft whose vocabulary size differs from the
target's. The rows past the tokenizer are never produced by it, so padding the draft's embedding
and output matrices with zero rows changes nothing it computes for real tokens; should the draft
ever propose a padded id, the target rejects it (it only costs that step's speed).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from splitcli.errors import UsageError


def vocab_size(model: Path) -> int:
    try:
        config = json.loads((model / "config.json").read_text())
    except (OSError, ValueError):
        raise UsageError(f"{model}: no readable config.json (give a local model folder)") from None
    size = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    if not isinstance(size, int):
        raise UsageError(f"{model}/config.json has no vocab_size")
    return size


def pad_vocab(source: Path, target: Path, size: int) -> tuple[int, int]:
    """Write a copy of the model at `source` with `size` embedding and output rows to `target`;
    returns (old size, new size)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    old = vocab_size(source)
    if size < old:
        raise UsageError(f"--to {size} is smaller than the draft's vocabulary ({old}); padding only adds rows")
    if target.exists() and any(target.iterdir()):
        raise UsageError(f"{target} exists and is not empty (give a new folder)")
    model = AutoModelForCausalLM.from_pretrained(source, torch_dtype="auto")
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    model.resize_token_embeddings(size, mean_resizing=False)
    with torch.no_grad():  # zero rows: never produced by the tokenizer, and neutral in the output layer
        model.get_input_embeddings().weight[old:] = 0
        if not tied:
            model.get_output_embeddings().weight[old:] = 0
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    try:
        AutoTokenizer.from_pretrained(source).save_pretrained(target)
    except (OSError, ValueError):  # a model folder without a tokenizer: copy what is there
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"):
            if (source / name).exists():
                shutil.copy(source / name, target / name)
    for name in ("generation_config.json",):
        if (source / name).exists():
            shutil.copy(source / name, target / name)
    return old, size
