"""GPU evidence on a lent H100/H200: serve a pair of real-shape random-weight models on one GPU,
time the modes, then check that SIGKILL + kill-gpus and stop give the GPU memory back (NVML).

Random weights (timing does not depend on their values) with the demo tokenizer, so the models
write nonsense and the small one never opens <bigmodel>: random-switch measures handoffs.

    python benchmarks/gpu_lifecycle.py OUT_DIR [--eager]
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {  # hidden, layers, heads, kv heads, intermediate: R1-Distill-Qwen 1.5B and 7B
    "small": (1536, 28, 12, 2, 8960),
    "big": (3584, 28, 28, 4, 18944),
}
QUESTION = "What is 12 * 3 + 7?"


def cli(*args: str, timeout: float = 1200) -> dict[str, object]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "splitcli", *args], capture_output=True, text=True, timeout=timeout)
    return {"args": list(args), "code": done.returncode, "seconds": round(time.monotonic() - started, 2),
            "out": done.stdout, "err": done.stderr[-3000:]}


def make_models(root: Path) -> None:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from splitcli import demo

    tokenizer = AutoTokenizer.from_pretrained(demo.resolve_model("demo:small"))
    for role, (hidden, layers, heads, kv, inter) in SHAPES.items():
        config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                             num_attention_heads=heads, num_key_value_heads=kv, intermediate_size=inter,
                             max_position_embeddings=32768, torch_dtype="bfloat16",
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        with torch.device("cuda"):
            model = Qwen2ForCausalLM(config).to(torch.bfloat16)
        model.save_pretrained(root / role)
        tokenizer.save_pretrained(root / role)
        del model
        torch.cuda.empty_cache()


def nvml_used() -> dict[str, float]:
    from splitcli import gpus

    return {"used_mib": round(gpus.memory_used_mib(0)),
            "processes": [{"pid": p.pid, "mib": round(p.used_mib), "command": p.command[:60]} for p in gpus.processes([0])]}


def main() -> None:
    out = Path(sys.argv[1])
    eager = "--eager" in sys.argv
    out.mkdir(parents=True, exist_ok=True)
    root = Path(os.environ["SPLITREASON_HOME"]) / "gpu-models"
    report: dict[str, object] = {"eager": eager}
    started = time.monotonic()
    if not (root / "big" / "config.json").is_file():
        make_models(root)
    report["make_models_s"] = round(time.monotonic() - started, 1)
    extra = "[--enforce-eager]" if eager else "[]"
    profile = out / "h100-pair.yaml"
    profile.write_text(f"""description: random-weight 1.5B + 7B shapes on one GPU
small: {{model: {root / 'small'}, served_name: small, port: 8301, gpus: [0], gpu_memory: 0.2,
        max_model_len: 8192, dtype: bfloat16, extra_args: {extra}}}
big: {{model: {root / 'big'}, served_name: big, port: 8302, gpus: [0], gpu_memory: 0.55,
      max_model_len: 8192, dtype: bfloat16, extra_args: {extra}}}
sampling: {{temperature: 0.0, max_tokens: 1024, seed: 0}}
modes: {{random-switch: {{ratio: 1, chunk: 32, seed: 0}}}}
""")
    steps: list[dict[str, object]] = []
    report["steps"] = steps
    report["nvml_before"] = nvml_used()
    steps.append(cli("serve", "--profile", str(profile), "--detach"))
    steps.append(cli("ps", "--json"))
    report["nvml_serving"] = nvml_used()
    runs = {}
    for mode in ("big-only", "small-only", "random-switch", "splitreason"):
        for _ in range(2):  # the first run of each warms up; the second is reported
            result = cli("run", QUESTION, "--profile", str(profile), "--mode", mode, "--json")
        if result["code"] == 0:
            trace = json.loads(str(result["out"]))
            runs[mode] = trace["stats"] | {"calls": len(trace["calls"])}
        else:
            runs[mode] = {"error": result["err"]}
    report["runs"] = runs
    # The original's failure: SIGKILL of an API server leaves its engine core holding GPU memory.
    records = json.loads(str(cli("ps", "--json")["out"]))
    big = next(row for row in records if row["name"].endswith("-big"))
    os.kill(big["pid"], signal.SIGKILL)
    time.sleep(5)
    report["nvml_after_sigkill_of_big_api_server"] = nvml_used()
    steps.append(cli("kill-gpus", "--dry-run", "--json"))
    steps.append(cli("kill-gpus", "--json"))
    report["nvml_after_kill_gpus"] = nvml_used()
    report["left_processes"] = subprocess.run(["pgrep", "-af", "vllm|VLLM"], capture_output=True, text=True).stdout
    (out / "gpu.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "steps"}, indent=2))


if __name__ == "__main__":
    main()
