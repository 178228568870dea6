"""One question through a mode: the trace, the Session, its clients. The top of the question's route
(CLI, API, eval and gendata call here; the modes and the Session sit below)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from splitcli.engine import EngineClient
from splitcli.errors import EngineError, UsageError
from splitcli.modes import get_mode, mode_options
from splitcli.profiles import Profile, Sampling, ServerKey, serve_hint
from splitcli.session import Session
from splitcli.trace import Model, Trace

EMPTY_QUESTION = 'the question is empty (pass its text, e.g. splitreason run "What is 2 + 2?")'


def open_pool(profile: Profile, keys: list[ServerKey], max_connections: int = 64) -> dict[ServerKey, EngineClient]:
    """One client per server (for a service that serves every mode: small, big, spec)."""
    return {key: _client(profile, "small" if key == "small" else "big", key, max_connections) for key in keys}


def _client(profile: Profile, role: Model, key: ServerKey, max_connections: int) -> EngineClient:
    spec = profile.spec(key)
    # A server someone else runs serves the model under its own name: the HF id will do too.
    others = (spec.model,) if not spec.launched else ()
    return EngineClient(role, spec.name, spec.urls, serve_hint(profile, key), max_connections=max_connections,
                        other_names=others, gather=profile.gather if key == "big" else None)


def open_clients(profile: Profile, servers: dict[Model, ServerKey], max_connections: int = 64) -> dict[Model, EngineClient]:
    """One client (one connection pool) per model, for all the sessions of one command; `servers`
    says which server answers for each model (a mode's `server_keys()`)."""
    return {role: _client(profile, role, key, max_connections) for role, key in servers.items()}


async def close_clients(clients: dict[Model, EngineClient]) -> None:
    await asyncio.gather(*(client.aclose() for client in clients.values()))


async def run_question(profile: Profile, question: str, mode_name: str, *, stream: bool = True,
                       watch: Callable[[Trace], None] | None = None,
                       clients: dict[Model, EngineClient] | None = None, sampling: Sampling | None = None,
                       partial_on_error: bool = True, conversation: list[dict[str, str]] | None = None,
                       prefill: str = "") -> Trace:
    """Run one question through a mode; on failure the partial trace comes back with `error` set
    (or, with `partial_on_error=False`, the error is raised). `clients`: shared connection pools
    (eval, the API); `sampling`: this run's sampling, e.g. a seed; `conversation`: the turns before
    the question; `prefill`: the answer's start, which the models continue."""
    if not question.strip():
        raise UsageError(EMPTY_QUESTION)
    mode_class = get_mode(mode_name)
    options = mode_options(profile, mode_name)
    sampling = sampling or profile.sampling
    trace = Trace(
        question=question.strip(), mode=mode_name, profile=profile.name, conversation=list(conversation or []),
        prefill=prefill,
        models={role: profile.spec(role).name for role in mode_class.roles},
        options=options.model_dump(), sampling=sampling.model_dump(),
    )
    if watch is not None:
        watch(trace)  # renderers subscribe before anything is generated
    own = clients is None
    clients = open_clients(profile, mode_class.server_keys()) if clients is None else clients
    session = Session(profile, trace, mode_class.server_keys(), clients, stream, sampling=sampling)
    trace.start_clock()
    try:
        await session.prepare(mode_class.uses_hint)
        mode = mode_class(options)
        mode.configure(session)
        await mode.run(session, trace)
        trace.finish()
    except EngineError as exc:
        # A server down or dying mid-run: keep what was generated, with the reason.
        trace.finish(error=str(exc))
        if not partial_on_error:
            raise
    finally:
        await session.aclose()
        if own:
            await close_clients(clients)
    return trace
