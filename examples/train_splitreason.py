"""Teach a small model when to offload: SFT on `splitreason gendata` output, then GRPO with the
paper's rewards (splitcli.rewards), both with TRL. The defaults are the paper's settings for
R1-Distill-Qwen-1.5B on GPUs (SPEC: SFT lr 5e-5, 3 epochs, packing, 16k tokens); `--steps` and
`--cpu` make a few-step run anywhere (the test suite runs it so on the demo model).

    # 1. data: splitreason gendata --profile my-profile --out data/   (writes data/data.jsonl)
    # 2. SFT:
    python examples/train_splitreason.py sft --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B \\
        --data data/data.jsonl --out checkpoints/sft
    # 3. GRPO on problems with gold answers (a JSONL with `prompt` and `answer`), from the SFT model:
    python examples/train_splitreason.py grpo --model checkpoints/sft --data problems.jsonl --out checkpoints/grpo

On several GPUs start it with `accelerate launch`; for GRPO add `--vllm` to generate with vLLM.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from datasets import load_dataset

from splitcli.rewards import accuracy_reward, format_reward, tag_reward


def sft(args: argparse.Namespace) -> dict[str, object]:
    from trl import SFTConfig, SFTTrainer

    data = load_dataset("json", data_files=str(args.data), split="train")  # `messages`, as gendata writes them
    config = SFTConfig(
        output_dir=str(args.out), learning_rate=args.lr or 5e-5, num_train_epochs=3, max_steps=args.steps or -1,
        max_length=args.max_length or 16384, packing=not args.cpu, per_device_train_batch_size=args.batch or 1,
        gradient_accumulation_steps=1 if args.cpu else 8, bf16=not args.cpu, use_cpu=args.cpu, logging_steps=1,
        save_strategy="no" if args.steps else "epoch", report_to=[], seed=0,
    )
    trainer = SFTTrainer(model=args.model, args=config, train_dataset=data)
    trainer.train()
    if not args.steps:
        trainer.save_model(str(args.out))
    return _losses(trainer)


def grpo(args: argparse.Namespace) -> dict[str, object]:
    from trl import GRPOConfig, GRPOTrainer

    data = load_dataset("json", data_files=str(args.data), split="train")  # `prompt` and `answer`
    config = GRPOConfig(
        output_dir=str(args.out), learning_rate=args.lr or 1e-6, max_steps=args.steps or -1, num_train_epochs=1,
        per_device_train_batch_size=args.batch or 8, num_generations=args.generations or 8,
        max_completion_length=args.max_length or 8192, temperature=0.6, bf16=not args.cpu, use_cpu=args.cpu,
        use_vllm=args.vllm, logging_steps=1, save_strategy="no" if args.steps else "steps", report_to=[], seed=0,
    )
    trainer = GRPOTrainer(model=args.model, args=config, train_dataset=data,
                          reward_funcs=[accuracy_reward, format_reward, tag_reward])
    trainer.train()
    if not args.steps:
        trainer.save_model(str(args.out))
    return _losses(trainer)


def _losses(trainer: object) -> dict[str, object]:
    history = [entry for entry in trainer.state.log_history if "loss" in entry]  # type: ignore[attr-defined]
    rewards = sorted({key.split("/")[1] for entry in history for key in entry if key.startswith("rewards/")})
    return {"steps": len(history), "last_loss": history[-1]["loss"] if history else math.nan, "rewards": rewards}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["sft", "grpo"])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, help="stop after N steps (a smoke run)")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--generations", type=int, help="GRPO completions per prompt")
    parser.add_argument("--max-length", type=int)
    parser.add_argument("--cpu", action="store_true", help="train on the CPU, in fp32, without packing")
    parser.add_argument("--vllm", action="store_true", help="GRPO: generate with vLLM")
    args = parser.parse_args()
    print(json.dumps(sft(args) if args.stage == "sft" else grpo(args)))


if __name__ == "__main__":
    main()
