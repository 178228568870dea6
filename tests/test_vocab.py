"""pad-vocab: a draft padded to its target's vocabulary size computes the same for real tokens."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from conftest import cli
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM


def _tiny(path: Path, vocab: int, tied: bool) -> None:
    config = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1, head_dim=64, tie_word_embeddings=tied)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(path)


def test_a_padded_draft_has_the_targets_size_and_the_same_logits_for_real_tokens(tmp_path: Path) -> None:
    for tied in (False, True):
        draft, target, out = tmp_path / f"draft{tied}", tmp_path / f"target{tied}", tmp_path / f"padded{tied}"
        _tiny(draft, 100, tied)
        _tiny(target, 128, tied)
        result = cli("pad-vocab", str(draft), str(out), "--like", str(target))
        assert result.code == 0, result.err
        assert json.loads((out / "config.json").read_text())["vocab_size"] == 128
        before = AutoModelForCausalLM.from_pretrained(draft)
        after = AutoModelForCausalLM.from_pretrained(out)
        ids = torch.tensor([[1, 5, 42, 99]])
        with torch.no_grad():
            old, new = before(input_ids=ids).logits, after(input_ids=ids).logits
        assert new.shape[-1] == 128
        assert torch.allclose(old, new[..., :100], atol=1e-5)
        assert torch.count_nonzero(new[..., 100:]) == 0  # padded rows: zero logits


def test_pad_vocab_needs_exactly_one_size(tmp_path: Path) -> None:
    result = cli("pad-vocab", str(tmp_path), str(tmp_path / "out"))
    assert result.code == 2
    assert result.err.strip() == "error: give the size with --to N or a target model with --like PATH (one of them)"
