"""Profile validation, lookup, extends and --set: each bad case gives one exact line and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import cli

from splitcli.errors import ProfileError
from splitcli.profiles import available_profiles, load_profile

GOOD = """
small: {model: s, port: 8001, gpus: [0], gpu_memory: 0.4}
big: {model: b, port: 8000, gpus: [0], gpu_memory: 0.5}
"""

BAD_CASES = {
    "unknown key": (
        "small: {model: s, prot: 1}\nbig: {model: b, port: 9}",
        "small.prot: unknown key (remove it or check its spelling; `splitreason profiles show demo` lists the keys)",
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
        "mode: unknown mode 'fast' (choose one of: big-only, random-switch, small-only, splitreason)",
    ),
    "bad mode knob": (
        "small: {model: s, port: 1}\nbig: {model: b}\nmodes: {splitreason: {chunk: 0}}",
        "modes.splitreason.chunk: Input should be greater than or equal to 1 (fix the value)",
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
    for name in ("demo", "paper-32b", "paper-14b", "paper-8b", "single-gpu", "aime", "math500", "gpqa"):
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


def test_set_that_breaks_a_rule_names_the_key() -> None:
    with pytest.raises(ProfileError, match=r"demo.yaml: big.port: port 8101 is also small.port"):
        load_profile("demo", ["big.port=8101"])
    with pytest.raises(ProfileError, match=r"--set big: expected KEY=VALUE"):
        load_profile("demo", ["big"])


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
