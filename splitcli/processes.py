"""Which processes are ours, and ending them.

Every server starts in a process session of its own and carries SPLITREASON_SERVER=<marker> and
SPLITREASON_SERVER_HOME=<state dir> in its environment. vLLM's engine core and workers stay in that
session, but they rename themselves (VLLM::EngineCore) with setproctitle, which overwrites what
/proc shows of their environment: so a server's processes are its recorded ones, those carrying its
marker, and the members of its session (whose id the kernel does not reuse while any member lives).
That is how the orphans of a SIGKILLed API server are found, and how a process is known to belong
to this state dir and not to another user's or another test run's.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable

import psutil

from splitcli import paths

MARKER_ENV = "SPLITREASON_SERVER"
MARKER_HOME_ENV = "SPLITREASON_SERVER_HOME"


def marker_env(marker: str) -> dict[str, str]:
    """The environment entries that mark a process as launched from this state dir, as `marker`."""
    return {MARKER_ENV: marker, MARKER_HOME_ENV: str(paths.home())}


def same_process(pid: int, create_time: float | None) -> psutil.Process | None:
    """The live process with this pid if it started at `create_time` (else the pid was reused)."""
    if create_time is None:
        return None
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) < 0.05 and alive(proc):
            return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
    return None


def alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (a zombie holds its pid until reaped, but is no longer there)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def children(proc: psutil.Process) -> list[psutil.Process]:
    """All descendants of `proc`; none once it has ended."""
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
        if value and env.get(MARKER_HOME_ENV) == ours and (marker is None or value == marker) and alive(proc):
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
        if (not env or MARKER_ENV in env) and alive(proc):
            found.append(proc)
    return found


def by_session(recorded: Iterable[tuple[int, float]]) -> dict[int, list[psutil.Process]]:
    """Every live process launched from this state dir, by session id: the marked ones and the other
    members of their sessions and of the `recorded` ones (session id, start time of its leader)."""
    sessions: dict[int, dict[int, psutil.Process]] = {}
    for proc in marked_processes():
        try:
            sessions.setdefault(os.getsid(proc.pid), {})[proc.pid] = proc
        except (ProcessLookupError, PermissionError):
            continue
    starts = {sid: min(p.create_time() for p in procs.values()) for sid, procs in sessions.items()}
    for sid, created in recorded:
        starts[sid] = min(starts.get(sid, created), created)
    for sid, since in starts.items():
        for member in session_members(sid, since):
            sessions.setdefault(sid, {})[member.pid] = member
    return {sid: list(procs.values()) for sid, procs in sessions.items()}


def command_line(proc: psutil.Process, limit: int) -> str:
    """The process's command line cut to `limit` characters (its name when empty), or ? if unreadable."""
    try:
        return " ".join(proc.cmdline())[:limit] or proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"


def _signal_all(procs: list[psutil.Process], sig: int) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.send_signal(sig)


def terminate(procs: list[psutil.Process], grace: float) -> list[psutil.Process]:
    """SIGTERM, wait `grace` seconds, SIGKILL what is left; returns processes still alive after that."""
    _signal_all(procs, signal.SIGTERM)
    _, left = psutil.wait_procs(procs, timeout=grace)
    _signal_all(left, signal.SIGKILL)
    _, left = psutil.wait_procs(left, timeout=5)
    return [proc for proc in left if alive(proc)]
