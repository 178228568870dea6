"""What a server leaves in the state dir: its record (a JSON file) and its log.

Records are how `ps`, `stop`, `logs` and `kill-gpus` find servers from any later shell; they name
the processes to end, so they sit beside the process identity they rely on (splitcli.processes).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import psutil

from splitcli import paths
from splitcli.errors import ServerError
from splitcli.processes import alive, by_session, children, marked_processes, same_process, session_members

LOG_TAIL_LINES = 15


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
            for child in children(leader):
                found[child.pid] = child
        for pid, created in self.descendants:
            proc = same_process(pid, created)
            if proc is not None:
                found[pid] = proc
        for proc in marked_processes(self.marker):
            found[proc.pid] = proc
        for proc in session_members(self.pgid, self.create_time):
            found[proc.pid] = proc
        return [proc for proc in found.values() if alive(proc)]


def all_records() -> list[ServerRecord]:
    records = [ServerRecord.load(file.stem) for file in sorted(paths.servers_dir().glob("*.json"))]
    return [record for record in records if record is not None]


def find_record(name: str) -> ServerRecord:
    record = ServerRecord.load(name)
    if record is None:
        known = ", ".join(r.name for r in all_records()) or "none"
        raise ServerError(f"no server named {name!r} (running: {known}; see `splitreason ps`)")
    return record


def our_processes() -> dict[int, list[psutil.Process]]:
    """Every live process launched from this state dir, by session id: the marked ones and the other
    members of their sessions and of the recorded servers' sessions."""
    return by_session((record.pgid, record.create_time) for record in all_records())


def log_tail(record: ServerRecord, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = Path(record.log_path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text.strip().splitlines()[-lines:])


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
