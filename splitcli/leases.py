"""Leases: which live commands are using a server, so that one command never stops a server
another command is still using.

A lease is a file named after its holder's pid and start time, in a folder per server name; a lease
whose process has ended (or whose pid was reused) is stale and ignored. Taking and dropping leases,
and deciding to stop a server, happen under one lock file per server name.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import psutil

from splitcli import paths


def _folder(name: str) -> Path:
    return paths.servers_dir() / f"{name}.leases"


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """Hold the lock of one server name (across processes) for the duration of the block."""
    with open(paths.servers_dir() / f"{name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _identity(pid: int) -> str:
    return f"{pid}-{psutil.Process(pid).create_time():.3f}"


def _live(entry: str) -> int | None:
    """The holder's pid if the process that took the lease is still the one running under that pid."""
    pid_text, _, created = entry.partition("-")
    try:
        proc = psutil.Process(int(pid_text))
        if abs(proc.create_time() - float(created)) < 0.05 and proc.status() != psutil.STATUS_ZOMBIE:
            return proc.pid
    except (ValueError, psutil.NoSuchProcess, psutil.AccessDenied):
        pass
    return None


def acquire(name: str, pid: int | None = None) -> None:
    """Record that process `pid` (default: this one) uses server `name`. Call under `locked(name)`."""
    folder = _folder(name)
    folder.mkdir(exist_ok=True)
    (folder / _identity(pid or os.getpid())).touch()


def release(name: str, pid: int | None = None) -> None:
    """Drop this process's lease (and any stale ones). Call under `locked(name)`."""
    (_folder(name) / _identity(pid or os.getpid())).unlink(missing_ok=True)
    holders(name)


def holders(name: str) -> list[int]:
    """Pids of live processes holding a lease on `name`; stale lease files are removed."""
    folder = _folder(name)
    if not folder.is_dir():
        return []
    live = []
    for entry in folder.iterdir():
        pid = _live(entry.name)
        if pid is None:
            entry.unlink(missing_ok=True)
        else:
            live.append(pid)
    return sorted(live)
