"""Managed vLLM servers: launch in their own process session, wait for readiness, share between
commands (leases), stop cleanly.

What a server runs is in splitcli.server_commands, its record and log in splitcli.server_records, and
how its processes are told from everyone else's in splitcli.processes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil

from splitcli import environment, gpus, leases, paths, processes
from splitcli.errors import ServerError
from splitcli.profiles import ROLES, ModelSpec, Profile, ServerKey
from splitcli.server_commands import api_command, build_command
from splitcli.server_records import ServerRecord, log_tail


def server_name(profile: Profile, key: ServerKey, replica: int = 0) -> str:
    """`demo-small`; a model's later replicas `demo-small-1`, `demo-small-2`, ..."""
    return f"{profile.name}-{key}" + (f"-{replica}" if replica else "")


@dataclass(frozen=True)
class Planned:
    """One server a profile's keys stand for: a key's replica, with what it runs and its name."""

    key: ServerKey
    replica: int
    spec: ModelSpec
    name: str


def planned(profile: Profile, keys: tuple[ServerKey, ...]) -> list[Planned]:
    """The servers splitreason launches for `keys` (servers someone else runs are not among them)."""
    found = []
    for key in keys:
        spec = profile.spec(key)
        if spec.launched:
            found += [Planned(key, index, spec.replica(index) if spec.replicas > 1 else spec,
                              server_name(profile, key, index)) for index in range(spec.replicas)]
    return found


# ---------------------------------------------------------------- health


def health(url: str, served_name: str | None = None, timeout: float = 2.0) -> bool:
    """True when /health answers 200 and the model list (if a name is given) has the model."""
    try:
        with httpx.Client(timeout=timeout, trust_env=False) as client:
            if client.get(f"{url}/health").status_code != 200:
                return False
            if served_name is None:
                return True
            models = client.get(f"{url}/v1/models").json().get("data", [])
            return any(entry.get("id") == served_name for entry in models)
    except (httpx.HTTPError, ValueError):
        return False


def status(record: ServerRecord) -> str:
    """healthy / starting / dead (orphans: N) / dead."""
    if record.leader() is None:
        orphans = len(record.processes())
        return f"dead (orphans: {orphans})" if orphans else "dead"
    return "healthy" if health(record.url, record.served_name, timeout=1.0) else "starting"


# ---------------------------------------------------------------- ports


def port_holder(host: str, port: int) -> str | None:
    """None if the port is free, else a description of who holds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host if host not in ("", "0.0.0.0") else "0.0.0.0", port))
            return None
        except OSError:
            pass
    for conn in psutil.net_connections(kind="inet"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            try:
                command = processes.command_line(psutil.Process(conn.pid), 80)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                command = "?"
            return f"pid {conn.pid} ({command})"
    return "another process"


# ---------------------------------------------------------------- launching


# Seconds a server keeps an idle connection open. Clients built on httpx (ours, the openai client)
# reuse one for up to 5 s, the same as vLLM's and uvicorn's default: a request sent just as the server
# closes it dies with a connection reset. Outliving the clients removes that race.
SERVER_KEEPALIVE_S = 30


def build_env(spec: ModelSpec, marker: str) -> dict[str, str]:
    """A server's environment: ours, the spec's additions, its GPUs and its launch marker."""
    env = dict(os.environ)
    env.setdefault("VLLM_HTTP_TIMEOUT_KEEP_ALIVE", str(SERVER_KEEPALIVE_S))
    # vLLM refuses more than 4 stop strings by default; RelayGen stops the big model on ~30 cues.
    env.setdefault("VLLM_MAX_STOP_STRINGS", "64")
    env.update(spec.env)
    if spec.gpus:
        # PCI order makes CUDA's indices the ones nvidia-smi and NVML show.
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(gpu) for gpu in spec.gpus)
    env.update(processes.marker_env(marker))
    return env


def launch(profile: Profile, key: ServerKey, temporary: bool = False, replica: int = 0) -> ServerRecord:
    """Start one server (replica `replica` of `key`) in its own process session and record it; does
    not wait for readiness."""
    from splitcli import demo

    spec = profile.spec(key)
    spec = spec.replica(replica) if spec.replicas > 1 else spec
    name = server_name(profile, key, replica)
    holder = port_holder(spec.host, spec.port)
    if holder is not None:
        setting = "big.speculative.port" if key == "spec" else f"{key}.port"
        raise ServerError(
            f"port {spec.port} is in use by {holder}: stop it, or pick another port with --set {setting}=N"
        )
    marker = f"{name}:{uuid.uuid4().hex[:12]}"
    log_path = paths.logs_dir() / f"{name}.log"
    command = api_command(profile) if key == "api" else build_command(spec, demo.resolve_model(spec.model))
    with open(log_path, "wb") as log:
        log.write(f"$ {' '.join(command)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=build_env(spec, marker), start_new_session=True,
        )
    record = ServerRecord(
        name=name, role=key, profile=profile.name, model=spec.model, served_name=spec.name,
        host=spec.host, port=spec.port, pid=proc.pid, pgid=proc.pid,
        create_time=psutil.Process(proc.pid).create_time(), gpus=list(spec.gpus),
        log_path=str(log_path), command=command, marker=marker, temporary=temporary,
    )
    record.save()
    _LAUNCHED[proc.pid] = proc
    return record


# The Popen objects of the servers this process launched. Holding them matters: a Popen that is
# garbage-collected while its child runs is reaped by the next Popen anywhere in the process, and
# its exit code is then lost to us.
_LAUNCHED: dict[int, subprocess.Popen[bytes]] = {}


def _exit_code(record: ServerRecord, wait: float = 0.0) -> int | None:
    """Exit code of a server this process launched, once it has ended (reaped: no zombie); `wait`
    seconds for one that is on its way out."""
    proc = _LAUNCHED.get(record.pid)
    if proc is None:
        return None
    try:
        return proc.wait(timeout=wait) if wait else proc.poll()
    except subprocess.TimeoutExpired:
        return None


def wait_ready(records: list[ServerRecord], timeout: float, on_tick: Callable[[str], None] | None = None) -> None:
    """Wait until every server answers; fail at once, with its log, when one dies while starting.
    Stops nothing: the caller knows which servers it launched and stops only those."""
    deadline = time.monotonic() + timeout
    pending = list(records)
    started = time.monotonic()
    while pending:
        for record in list(pending):
            code = _exit_code(record)
            if code is None and record.leader() is None:
                # Dying: /proc can say so a moment before waitpid has its status to give.
                code = _exit_code(record, wait=5.0)
            if code is not None or record.leader() is None:
                shown = f"code {code}" if code is not None else "an unknown code"
                raise ServerError(
                    f"server {record.name} exited with {shown} while starting "
                    f"(log: {record.log_path}); last lines:\n{log_tail(record)}"
                )
            if health(record.url, record.served_name):
                pending.remove(record)
                leader = record.leader()
                if leader is not None:
                    record.descendants = [(child.pid, child.create_time()) for child in processes.children(leader)]
                    record.save()
        if not pending:
            return
        if time.monotonic() > deadline:
            names = ", ".join(record.name for record in pending)
            raise ServerError(
                f"{names} not ready after {timeout:.0f}s (see `splitreason logs NAME`; raise startup_timeout in the profile)"
            )
        if on_tick:
            waiting = ", ".join(record.name for record in pending)
            on_tick(f"waiting for {waiting} ({time.monotonic() - started:.0f}s)")
        time.sleep(0.5)


@dataclass
class ServeResult:
    records: list[ServerRecord]
    reused: list[str]
    started: list[str]


def must_wait_before(spec: ModelSpec, starting: list[ServerRecord]) -> bool:
    """True when `spec` shares a GPU with a server still starting: vLLM sizes its KV cache from the
    memory it sees free while profiling, so two servers profiling one GPU at once starve each other
    (seen on an H100: "No available memory for the cache blocks")."""
    return any(set(spec.gpus) & set(record.gpus) for record in starting)


def _check_reusable(existing: ServerRecord, spec: ModelSpec) -> None:
    """A running server is reused only if it serves what the profile names now."""
    name = existing.name
    if existing.model != spec.model:
        raise ServerError(
            f"server {name} serves {existing.model}, but the profile now names {spec.model} "
            f"(stop it with `splitreason stop {name}`, then run again to start the new model)"
        )
    if (existing.host, existing.port, existing.served_name) != (spec.host, spec.port, spec.name):
        raise ServerError(
            f"server {name} runs at {existing.url} as {existing.served_name!r}, but the profile now says "
            f"http://{spec.host}:{spec.port} as {spec.name!r} (stop it with `splitreason stop {name}`)"
        )


def ensure_servers(profile: Profile, keys: tuple[ServerKey, ...] = ROLES,
                   on_tick: Callable[[str], None] | None = None, temporary: bool = False) -> ServeResult:
    """Start the profile's servers that are not already running; reuse those that are.
    Servers on separate GPUs start together; servers sharing a GPU start one after the other.
    On any failure only the servers launched here are stopped, never reused ones.
    `temporary`: servers launched here stop when the last command using them ends (see use_servers);
    otherwise they stay up, and reused temporary ones are made permanent."""
    records: list[ServerRecord] = []
    reused: list[str] = []
    launched: list[ServerRecord] = []
    starting: list[ServerRecord] = []
    plan = planned(profile, keys)
    if any(ServerRecord.load(server.name) is None for server in plan):
        environment.check_companions()  # before a server dies of it, minutes into its start
    timeout = max((profile.spec(key).startup_timeout for key in keys), default=0.0)
    try:
        for server in plan:
            spec, name = server.spec, server.name
            existing = ServerRecord.load(name)
            if existing is not None:
                if existing.leader() is not None:
                    _check_reusable(existing, spec)
                    if existing.temporary and not temporary:
                        existing.temporary = False
                        existing.save()
                    records.append(existing)
                    reused.append(name)
                    starting.append(existing)  # it may still be starting itself
                    continue
                stop(existing, quiet=True)  # dead leader: clean up its orphans and its record
            if must_wait_before(spec, starting):
                wait_ready(starting, timeout, on_tick)
                starting = []
            record = launch(profile, server.key, temporary=temporary, replica=server.replica)
            launched.append(record)
            records.append(record)
            starting.append(record)
        wait_ready(starting, timeout, on_tick)
    except BaseException:
        stop_together(launched)
        raise
    return ServeResult(records, reused, [record.name for record in launched])


def not_running(profile: Profile, keys: tuple[ServerKey, ...]) -> list[str]:
    """Names of the servers `keys` that splitreason would have to start."""
    missing = []
    for server in planned(profile, keys):
        record = ServerRecord.load(server.name)
        if record is None or record.leader() is None:
            missing.append(server.name)
    return missing


class ServerUse:
    """The servers a command (run, eval, gendata, the API) needs, for as long as it runs.

    Entering takes a lease on each server first, so no other command stops it meanwhile; `start`
    launches missing ones (temporary unless `keep`); leaving drops the leases and stops the temporary
    servers nobody else holds a lease on. `released` then says what was stopped or left running."""

    def __init__(self, profile: Profile, keys: tuple[ServerKey, ...], keep: bool = False) -> None:
        self.profile = profile
        self.keys = keys
        self.keep = keep
        self.names = [server.name for server in planned(profile, keys)]
        self.serve: ServeResult | None = None
        self.released: ReleaseResult | None = None

    def __enter__(self) -> ServerUse:
        for name in self.names:
            with leases.locked(name):
                leases.acquire(name)
        return self

    def start(self, on_tick: Callable[[str], None] | None = None) -> ServeResult:
        self.serve = ensure_servers(self.profile, self.keys, on_tick, temporary=not self.keep)
        return self.serve

    def __exit__(self, *exc: object) -> None:
        self.released = release(self.names)


@dataclass
class ReleaseResult:
    stopped: list[str] = field(default_factory=list)
    still_used: dict[str, list[int]] = field(default_factory=dict)  # name -> pids of other users


def release(names: list[str]) -> ReleaseResult:
    """Drop this process's leases; stop the temporary servers among `names` that nobody else uses."""
    result = ReleaseResult()
    def release_one(name: str) -> None:
        with leases.locked(name):  # held while stopping: no command takes a lease on a server going away
            leases.release(name)
            record = ServerRecord.load(name)
            if record is None or not record.temporary:
                return
            users = leases.holders(name)
            if users:
                result.still_used[name] = users
                return
            stop(record, quiet=True)
            result.stopped.append(name)

    _together([functools.partial(release_one, name) for name in names])
    result.stopped.sort(key=names.index)
    return result


def stop_together(records: list[ServerRecord]) -> None:
    """Stop several servers at once: each may take its grace period (15 s), and a user who pressed
    Ctrl-C should not wait for them one after the other."""
    _together([functools.partial(stop, record, quiet=True) for record in records])


def _together(calls: list[Callable[[], Any]]) -> None:
    """Run `calls` in threads and wait for all; the first error is raised after all have ended."""
    if len(calls) <= 1:
        for call in calls:
            call()
        return
    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
    for future in futures:
        future.result()


# ---------------------------------------------------------------- stopping


@dataclass
class StopResult:
    name: str
    ended: int
    left: list[int]
    gpu_left_mib: dict[int, float]


def stop(record: ServerRecord, grace: float = 15.0, quiet: bool = False) -> StopResult:
    """Stop one server: its process group, its recorded descendants and its marked orphans."""
    procs = record.processes()
    pids = {proc.pid for proc in procs}
    leader = record.leader()
    if leader is not None:
        # The group first: vLLM's engine core and workers share it and shut down together.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(record.pgid, signal.SIGTERM)
    left = processes.terminate(procs, grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if leader is not None and left:
            os.killpg(record.pgid, signal.SIGKILL)
    _exit_code(record)
    left = [proc for proc in left if processes.alive(proc)] + [p for p in record.processes() if p.pid not in pids]
    gpu_left = gpus.wait_released(pids, record.gpus or None) if record.gpus and gpus.available() else {}
    if not left:
        record.forget()
    elif not quiet:
        raise ServerError(f"{record.name}: processes {', '.join(str(p.pid) for p in left)} survived SIGKILL (check `ps -p`)")
    return StopResult(record.name, len(pids), [proc.pid for proc in left], gpu_left)
