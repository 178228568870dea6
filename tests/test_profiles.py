"""Profile validation, lookup, extends and --set: each bad case gives one exact line and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import cli

from splitcli.errors import ProfileError
from splitcli.profile_files import available_profiles
from splitcli.profiles import load_profile

GOOD = """
small: {model: s, port: 8001, gpus: [0], gpu_memory: 0.4}
big: {model: b, port: 8000, gpus: [0], gpu_memory: 0.5}
"""

BAD_CASES = {
    "unknown key, close to a known one": (
        "small: {model: s, prot: 1}\nbig: {model: b, port: 9}",
        "small.prot: unknown key (did you mean 'port'?)",
    ),
    "unknown section, close to a known one": (
        "smal: {model: s}\nbig: {model: b}", "smal: unknown key (did you mean 'small'?) [+1 more]"),
    "unknown key, nothing close": (
        "small: {model: s, port: 1}\nbig: {model: b}\nsampling: {zzz: 1}",
        "sampling.zzz: unknown key (remove it or check its spelling; allowed here: temperature, top_p, max_tokens, "
        "max_new_tokens, seed)",
    ),
    "empty file": ("", "the profile is empty (write at least `small:` and `big:`, or `extends: demo`)"),
    "unknown demo model": (
        "small: {model: 'demo:medium', port: 1}\nbig: {model: b}",
        "small.model: unknown demo model 'demo:medium' (use one of: demo:small, demo:big, demo:annotator)",
    ),
    "endpoint with an invalid port": (
        "small: {model: s, port: 1}\nbig: {model: b, endpoints: ['http://localhost:99999']}",
        "big.endpoints: endpoint 'http://localhost:99999' has an invalid port (use 1-65535, e.g. http://host:8000)",
    ),
    "wrong type": (
        "small: {model: s, port: eighty}\nbig: {model: b}",
        "small.port: Input should be a valid integer, unable to parse string as an integer (fix the value)",
    ),
    "missing model": ("small: {model: s}\nbig: {port: 9}", "big.model: missing (add it)"),
    "GPU listed twice": (
        "small: {model: s, port: 1}\nbig: {model: b, gpus: [1, 2, 1]}",
        "big.gpus: GPU 1 is listed twice (list each GPU once)",
    ),
    "shares over 1.0": (
        "small: {model: s, port: 1, gpus: [0], gpu_memory: 0.6}\nbig: {model: b, gpus: [0, 1], gpu_memory: 0.6}",
        "big.gpu_memory: GPU 0 is shared and the memory shares add up to 1.20 "
        "(make small.gpu_memory + big.gpu_memory <= 1.0)",
    ),
    "port used twice": (
        "small: {model: s, port: 8000}\nbig: {model: b, port: 8000}",
        "big.port: port 8000 is also small.port (give each server its own port)",
    ),
    "unknown mode": (
        "small: {model: s, port: 1}\nbig: {model: b}\nmode: fast",
        "mode: unknown mode 'fast' (choose one of: big-only, glimprouter, logprob-subselect, random-switch, "
        "relaygen, small-only, spec-decoding, spec-rewrite, specreason, speculative-thinking, splitreason, "
        "splitreason-stream)",
    ),
    "bad mode knob": (
        "small: {model: s, port: 1}\nbig: {model: b}\nmodes: {splitreason: {chunk: 0}}",
        "modes.splitreason.chunk: Input should be greater than or equal to 1 (fix the value)",
    ),
    "unknown mode knob": (
        "small: {model: s, port: 1}\nbig: {model: b}\nmodes: {splitreason: {chunks: 8}}",
        "modes.splitreason.chunks: unknown key (did you mean 'chunk'?)",
    ),
    "unknown mode knob, nothing close": (
        "small: {model: s, port: 1}\nbig: {model: b}\nmodes: {random-switch: {zzz: 8}}",
        "modes.random-switch.zzz: unknown key (remove it or check its spelling; allowed here: ratio, chunk, seed; "
        "`splitreason modes` lists each mode's knobs)",
    ),
    "tensor parallel over GPUs": (
        "small: {model: s, port: 1}\nbig: {model: b, gpus: [0], tensor_parallel: 2}",
        "big.tensor_parallel: 2 is more than the 1 GPU(s) listed (list more GPUs or lower it)",
    ),
    "not YAML": ("small: [model: s\nbig: {}", "line 2: not valid YAML (expected ',' or ']', but got ':'; fix the syntax)"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_profile_is_one_line_with_exit_2(tmp_path: Path, case: str) -> None:
    text, message = BAD_CASES[case]
    file = tmp_path / "bad.yaml"
    file.write_text(text)
    result = cli("profiles", "validate", str(file))
    assert result.code == 2
    assert result.err.strip() == f"error: {file}: {message}"
    assert result.out == ""


def test_good_profile_validates(tmp_path: Path) -> None:
    file = tmp_path / "good.yaml"
    file.write_text(GOOD)
    result = cli("profiles", "validate", str(file))
    assert result.code == 0, result.err
    assert f"ok {file}" in result.err


def test_every_shipped_profile_is_valid() -> None:
    shipped = available_profiles()
    for name in ("demo", "demo-qwen3", "paper-32b", "paper-14b", "paper-8b", "single-gpu", "aime", "math500", "gpqa"):
        assert name in shipped
        profile = load_profile(name)
        assert profile.name == name
    assert load_profile("paper-8b").big.model == "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
    single = load_profile("single-gpu")
    assert single.small.gpus == single.big.gpus == [0]
    assert single.small.gpu_memory + single.big.gpu_memory <= 1.0
    assert load_profile("aime").eval.task == "aime24"


def test_extends_and_set_overrides(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(GOOD + "sampling: {temperature: 0.3, top_p: 0.9}\n")
    (tmp_path / "child.yaml").write_text("extends: base\nbig: {port: 8100}\nsampling: {temperature: 0.7}\n")
    profile = load_profile(str(tmp_path / "child.yaml"), ["big.gpus=[2,3]", "big.gpu_memory=0.8", "mode=random-switch"])
    assert profile.big.gpus == [2, 3]
    assert profile.big.tp_size == 2  # default: one shard per listed GPU
    assert profile.big.port == 8100 and profile.big.model == "b"
    assert profile.sampling.temperature == 0.7 and profile.sampling.top_p == 0.9
    assert profile.mode == "random-switch"


def test_set_that_breaks_a_rule_names_the_set_argument() -> None:
    with pytest.raises(ProfileError, match=r"^--set big.port=8101: big.port: port 8101 is also small.port"):
        load_profile("demo", ["big.port=8101"])
    with pytest.raises(ProfileError, match=r"--set big: expected KEY=VALUE"):
        load_profile("demo", ["big"])


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "nonexist=1"], "error: --set nonexist=1: nonexist: unknown key (remove it or check its spelling; "
                              "allowed here: name, description, small, big, mode, modes, sampling, prompt, eval, "
                              "annotator, gendata, api, gather, replica_pairs)"),
    (["--set", "smal.port=1"], "error: --set smal.port=1: smal: unknown key (did you mean 'small'?)"),
    (["--set", "modes.splitreason.chunk=0"],
     "error: --set modes.splitreason.chunk=0: modes.splitreason.chunk: Input should be greater than or equal to 1 "
     "(fix the value)"),
    (["--set", "modes.splitreason-stream.live_handoff=true"],
     "error: --set modes.splitreason-stream.live_handoff=true: modes.splitreason-stream.live_handoff: a live handoff "
     "keeps the last warm-up alive, and warm_every is 0 (set warm_every too, e.g. 128)"),
    (["--set", "mode=fast"], "error: --set mode=fast: mode: unknown mode 'fast' (choose one of: big-only, "
                             "glimprouter, logprob-subselect, random-switch, relaygen, small-only, spec-decoding, "
                             "spec-rewrite, specreason, speculative-thinking, splitreason, splitreason-stream)"),
])
def test_a_bad_set_names_the_set_argument_not_the_file(args: list[str], message: str) -> None:
    result = cli("profiles", "show", "demo", *args)
    assert result.code == 2
    assert result.err.strip() == message


def test_env_values_yaml_reads_as_numbers_or_booleans_are_taken_as_text(tmp_path: Path) -> None:
    file = tmp_path / "env.yaml"
    file.write_text("extends: demo\nsmall: {env: {CUDA_LAUNCH_BLOCKING: 1, VLLM_FLAG: true, RATIO: 0.5, NAME: x}}\n")
    assert load_profile(str(file)).small.env == {"CUDA_LAUNCH_BLOCKING": "1", "VLLM_FLAG": "1", "RATIO": "0.5", "NAME": "x"}


@pytest.mark.parametrize(("content", "message"), [
    (b"\x00\x01\x02binary", "not a text file (a profile is a YAML file)"),
    (b"small: {model: \xff\xfe}", "not a text file in UTF-8 (a profile is a YAML file)"),
])
def test_a_binary_or_non_utf8_profile_is_one_line(tmp_path: Path, content: bytes, message: str) -> None:
    file = tmp_path / "bin.yaml"
    file.write_bytes(content)
    result = cli("profiles", "validate", str(file))
    assert result.code == 2
    assert result.err.strip() == f"error: {file}: {message}"


def test_a_user_profile_may_extend_the_shipped_one_it_shadows(tmp_path: Path) -> None:
    user_dir = tmp_path / "user"
    user_dir.mkdir()
    (user_dir / "demo.yml").write_text("extends: demo\ndescription: my demo\nsampling: {seed: 5}\n")
    result = cli("profiles", "show", "demo", "--json", env={"SPLITREASON_PROFILES": str(user_dir)})
    assert result.code == 0, result.err
    shown = result.json()
    assert shown["description"] == "my demo" and shown["sampling"]["seed"] == 5  # type: ignore[index]
    assert shown["small"]["model"] == "demo:small"  # type: ignore[index]  # from the shipped demo


def test_profiles_list_says_in_full_why_a_profile_is_invalid(tmp_path: Path) -> None:
    user_dir = tmp_path / "user"
    user_dir.mkdir()
    (user_dir / "broken.yaml").write_text("extends: demo\nsampling: {temprature: 0.5}\n")
    env = {"SPLITREASON_PROFILES": str(user_dir), "COLUMNS": "200"}
    rows = {row["name"]: row for row in cli("profiles", "list", "--json", env=env).json()}  # type: ignore[union-attr]
    message = f"{user_dir / 'broken.yaml'}: sampling.temprature: unknown key (did you mean 'temperature'?)"
    assert rows["broken"]["error"] == message
    table = cli("profiles", "list", env=env)
    assert table.code == 0
    assert f"broken is invalid: {message}" in table.out.splitlines()
    # Model ids are shown whole (folded onto more lines when narrow), not cut to their last part.
    assert "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B" in table.out


def test_profiles_show_lists_every_modes_knobs_with_defaults() -> None:
    shown = cli("profiles", "show", "demo", "--json", "--set", "modes.splitreason.chunk=16").json()
    modes = shown["modes"]  # type: ignore[index]
    assert modes["splitreason"] == {"chunk": 16, "probe_tokens": 8, "big_segment_cap": 512, "probe_stride": 1,
                                    "probe_route": True}
    assert modes["random-switch"] == {"ratio": 9, "chunk": 32, "seed": None}
    assert set(modes) >= {"big-only", "small-only"}


def test_lookup_prefers_path_then_user_dir_then_shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user_dir = tmp_path / "user"
    user_dir.mkdir()
    monkeypatch.setenv("SPLITREASON_PROFILES", str(user_dir))
    (user_dir / "demo.yaml").write_text("extends: paper-32b\ndescription: mine\n")
    assert load_profile("demo").description == "mine"  # the user's profile shadows the shipped one
    (user_dir / "demo.yaml").unlink()
    assert load_profile("demo").small.model == "demo:small"
    with pytest.raises(ProfileError, match="unknown profile 'nope'"):
        load_profile("nope")


def test_profiles_list_and_show_json() -> None:
    listed = cli("profiles", "list", "--json")
    assert listed.code == 0
    names = [row["name"] for row in listed.json()]  # type: ignore[union-attr]
    assert {"demo", "paper-32b", "gpqa"} <= set(names)
    shown = cli("profiles", "show", "demo", "--set", "sampling.seed=7", "--json")
    assert shown.json()["sampling"]["seed"] == 7  # type: ignore[index]


def test_a_child_profile_choosing_another_annotator_replaces_the_parents_choice(tmp_path: Path) -> None:
    """demo launches its annotator (`server`); a child that points at an endpoint instead must not be
    refused for giving two of use/server/endpoint."""
    child = tmp_path / "hosted.yaml"
    child.write_text("extends: demo\nannotator: {endpoint: 'https://api.example.com/v1', model: deepseek-chat, "
                     "api_key_env: EXAMPLE_KEY}\n")
    profile = load_profile(str(child))
    assert profile.annotator.server is None and profile.annotator.endpoint == "https://api.example.com"  # /v1 is added per call
    assert profile.annotator.model == "deepseek-chat"
    own = tmp_path / "own.yaml"
    own.write_text("extends: demo\nannotator: {use: big}\n")
    assert load_profile(str(own)).annotator.use == "big"


@pytest.mark.parametrize(("overrides", "message"), [
    (["small.replicas=3"], "--set small.replicas=3: small.replicas: 3 replicas do not share the 4 GPU(s) of small.gpus "
                           "evenly (list a multiple of replicas)"),
    (["big.tensor_parallel=4"], "--set big.tensor_parallel=4: big.tensor_parallel: 4 x 4 replica(s) is more than the "
                                "8 GPU(s) listed (list more GPUs or lower it)"),
    (["small.replicas=1", "small.gpus=[0]"], "profiles/node-8gpu.yaml: replica_pairs: small has 1 replica(s) and big 4: "
                                             "pairs need as many of each (or set replica_pairs: false)"),
    (["big.endpoints=[http://h:1]"], "profiles/node-8gpu.yaml: big.replicas: endpoints already list the replicas "
                                     "someone else runs (remove replicas, or endpoints to launch them)"),
])
def test_replicas_that_cannot_be_laid_out_are_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ProfileError) as caught:
        load_profile("node-8gpu", overrides)
    assert str(caught.value).endswith(message)


def test_replicas_get_their_own_ports_and_share_of_the_gpus() -> None:
    profile = load_profile("node-8gpu")
    assert profile.big.urls == ["http://127.0.0.1:8000", "http://127.0.0.1:9000", "http://127.0.0.1:10000",
                                "http://127.0.0.1:11000"]
    third = profile.big.replica(2)
    assert (third.port, third.gpus, third.tp_size, third.replicas) == (10000, [4, 5], 2, 1)
    assert [profile.small.replica(i).gpus for i in range(4)] == [[0], [2], [4], [6]]
