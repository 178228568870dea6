"""The profile sections that one command each reads: `eval`, `gendata` and the `api` of
`serve --api`. They hold no server of the pair, so they stand apart from the models in profiles.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class StrictModel(BaseModel):
    """A profile model: unknown keys are errors, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class EvalSection(StrictModel):
    """Benchmark settings used by `splitreason eval`."""

    task: str | None = Field(None, description="built-in task (default: demo for demo models, else aime24)")
    samples: int = Field(1, ge=1, description="samples per problem (n)")
    limit: int | None = Field(None, ge=1, description="first K problems only")
    concurrency: int | None = Field(None, ge=1, description="samples in flight at once (default: as many as the "
                                                           "servers' KV caches hold at the token budget)")
    seed: int = Field(0, description="run seed: each sample's seed comes from it, the problem id and its index")
    revision: str | None = Field(None, description="dataset commit to load (default: the task's, else the hub's current)")


class GendataSection(StrictModel):
    """What `splitreason gendata` reads and how it annotates."""

    source: str = Field("open-r1/OpenR1-Math-220k", description="HF dataset id, a local file, or `demo` / `demo-qwen3`")
    config: str | None = Field("default", description="the dataset's config")
    split: str = "train"
    revision: str | None = Field(None, description="dataset commit to load")
    id_field: str = "uuid"
    problem_field: str = "problem"
    generation_field: str = Field("generations", description="a trace, or a list of them (the first correct is taken)")
    fraction: float = Field(0.2, gt=0, lt=1, description="share of characters the annotator is asked to mark")
    min_chars: int = Field(1024, ge=0, description="shorter traces are rejected")
    concurrency: int = Field(8, ge=1)
    limit: int | None = Field(None, ge=1)


class ApiSection(StrictModel):
    """The OpenAI-compatible API `splitreason serve --api` puts in front of the pair."""

    host: str = Field("127.0.0.1", description="address to bind (0.0.0.0: every interface)")
    port: int = Field(8100, ge=1, le=65535)
    max_in_flight: int = Field(8, ge=1, description="sessions running at once")
    max_queue: int = Field(64, ge=0, description="requests waiting beyond those; more get 429")
    api_key_env: str | None = Field(None, description="environment variable (or .env entry) with the key clients must send")
    log_prompts: bool = Field(False, description="log each question (off: prompts are not logged)")
