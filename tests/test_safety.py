"""Process safety without vLLM: only what this state dir started is ever ended, records are written
atomically, a pid that now belongs to another process is left alone, and a server another command
is using is not stopped under it. Throwaway processes stand in for servers."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import cli

from splitcli import cleanup, gpus, leases, paths, processes, server_records, servers


def _sleeper(marker: str | None = None, home: str | None = None) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if marker is not None:
        env[processes.MARKER_ENV] = marker
    if home is not None:
        env[processes.MARKER_HOME_ENV] = home
    return subprocess.Popen(["sleep", "120"], env=env, start_new_session=True)


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _record(proc: subprocess.Popen[bytes], name: str, temporary: bool = False) -> server_records.ServerRecord:
    record = server_records.ServerRecord(
        name=name, role="small", profile="unit", model="m", served_name="m", host="127.0.0.1", port=1,
        pid=proc.pid, pgid=proc.pid, create_time=psutil.Process(proc.pid).create_time(), gpus=[],
        log_path="/dev/null", command=["sleep"], marker=f"{name}-marker", temporary=temporary,
    )
    record.save()
    return record


def test_kill_gpus_spares_processes_launched_from_another_state_dir(sleepers: list[subprocess.Popen[bytes]],
                                                                    tmp_path: Path) -> None:
    # kill-gpus runs with a state dir of its own: the test session's servers (another state dir, like
    # a developer's real servers while the tests run) and its marked processes must be spared.
    home = tmp_path / "home"
    other_home = _sleeper("demo-small:abc", str(paths.home()))
    unmarked = _sleeper()
    our_orphan = _sleeper("demo-small:def", str(home))
    sleepers += [other_home, unmarked, our_orphan]
    env = {"SPLITREASON_HOME": str(home)}

    dry = cli("kill-gpus", "--dry-run", "--json", env=env)
    assert dry.code == 0, dry.err
    report = dry.json()
    assert report["dry_run"] is True and report["ended"] == []  # type: ignore[index]
    assert [row["pid"] for row in report["plan"]["orphans"]] == [our_orphan.pid]  # type: ignore[index]
    assert report["plan"]["servers"] == []  # type: ignore[index]

    killed = cli("kill-gpus", "--json", env=env)
    assert killed.code == 0, killed.err
    assert killed.json()["ended"] == [our_orphan.pid]  # type: ignore[index]
    assert our_orphan.wait(timeout=10) is not None
    assert other_home.poll() is None and unmarked.poll() is None


def test_a_listed_foreign_pid_that_was_reused_is_not_signalled(sleepers: list[subprocess.Popen[bytes]]) -> None:
    stranger = _sleeper()
    sleepers.append(stranger)
    # As listed before the confirmation prompt, but the process now under that pid started later.
    listed = gpus.GpuProcess(0, stranger.pid, 100.0, "someone", "sleep 120", create_time=1.0)
    cleanup.execute(cleanup.KillPlan(gpu_filter=None, foreign=[listed]))
    assert stranger.poll() is None
    same = gpus.GpuProcess(0, stranger.pid, 100.0, "someone", "sleep 120", psutil.Process(stranger.pid).create_time())
    report = cleanup.execute(cleanup.KillPlan(gpu_filter=None, foreign=[same]))
    assert report["ended"] == [stranger.pid]
    assert stranger.wait(timeout=10) is not None


def _save_many(name: str, count: int) -> None:
    record = server_records.ServerRecord.load(name)
    assert record is not None
    for index in range(count):
        record.port = index + 1
        record.save()


def test_records_saved_from_two_processes_at_once_stay_whole(sleepers: list[subprocess.Popen[bytes]]) -> None:
    proc = _sleeper()
    sleepers.append(proc)
    _record(proc, "unit-race")
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_save_many, args=("unit-race", 300)) for _ in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=60)
    assert [writer.exitcode for writer in writers] == [0, 0]  # a shared temp name made one of them fail
    loaded = server_records.ServerRecord.load("unit-race")
    assert loaded is not None and loaded.pid == proc.pid
    assert not list(paths.servers_dir().glob(".unit-race*"))  # no temp files left behind
    loaded.forget()


def test_a_temporary_server_outlives_its_starter_while_another_command_uses_it(
        sleepers: list[subprocess.Popen[bytes]]) -> None:
    server = _sleeper()
    other_command = _sleeper()
    sleepers += [server, other_command]
    _record(server, "unit-lease", temporary=True)
    with leases.locked("unit-lease"):
        leases.acquire("unit-lease")  # this test process: the command that started it
        leases.acquire("unit-lease", other_command.pid)  # another run or eval using it

    released = servers.release(["unit-lease"])
    assert released.stopped == [] and released.still_used == {"unit-lease": [other_command.pid]}
    assert server.poll() is None

    other_command.kill()
    other_command.wait()
    released = servers.release(["unit-lease"])  # the next command to leave finds no live lease
    assert released.stopped == ["unit-lease"]
    assert server.wait(timeout=20) is not None
    assert server_records.ServerRecord.load("unit-lease") is None


def test_a_permanent_server_is_never_stopped_by_a_command_leaving(sleepers: list[subprocess.Popen[bytes]]) -> None:
    server = _sleeper()
    sleepers.append(server)
    record = _record(server, "unit-kept", temporary=False)
    with leases.locked("unit-kept"):
        leases.acquire("unit-kept")
    assert servers.release(["unit-kept"]).stopped == []
    assert server.poll() is None
    servers.stop(record)


@pytest.mark.parametrize(("setup", "message"), [
    ("file", "error: state dir {home} is a file, not a folder (remove it, or set SPLITREASON_HOME to a folder)"),
    ("through-file", "error: state dir {home} cannot be created (Not a directory; set SPLITREASON_HOME to a "
                     "writable folder)"),
])
@pytest.mark.parametrize("args", [["ps"], ["stop", "--all"], ["logs", "x"], ["kill-gpus", "--dry-run"],
                                  ["demo", "build"]])
def test_an_unusable_state_dir_is_one_line(tmp_path: Path, setup: str, message: str, args: list[str]) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    home = blocker if setup == "file" else blocker / "home"
    result = cli(*args, env={"SPLITREASON_HOME": str(home)})
    assert result.code == 2
    assert result.err.strip().splitlines()[-1] == message.format(home=home)
    assert "Traceback" not in result.err


def test_records_from_an_older_splitreason_still_load(sleepers: list[subprocess.Popen[bytes]]) -> None:
    proc = _sleeper()
    sleepers.append(proc)
    record = _record(proc, "unit-old")
    text = record.path.read_text().replace('"temporary": false', '"future_field": 1')
    record.path.write_text(text)
    loaded = server_records.ServerRecord.load("unit-old")
    assert loaded is not None and loaded.pid == proc.pid and loaded.temporary is False
    servers.stop(loaded)
    assert proc.wait(timeout=10) is not None


if sys.platform != "linux":  # process environments are read from /proc
    pytestmark = pytest.mark.skip("Linux only")
