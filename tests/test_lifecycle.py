"""Server deaths, stop, kill-gpus: these end servers, so they run after every other test."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import DEMO_QUESTION, cli

from splitcli import leases, server_records, servers
from splitcli.profiles import load_profile
from splitcli.solve import run_question
from splitcli.trace import Segment

pytestmark = [pytest.mark.lifecycle, pytest.mark.usefixtures("demo_servers")]


def _ours() -> list[int]:
    return sorted(proc.pid for members in server_records.our_processes().values() for proc in members)


def _wait_healthy(name: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = cli("ps", "--json").json()
        if any(row["name"] == name and row["status"] == "healthy" for row in rows):  # type: ignore[union-attr]
            return
        time.sleep(2)
    raise AssertionError(f"{name} not healthy after {timeout}s")


def test_stop_one_server_by_name_ends_its_engine_core_and_workers_too() -> None:
    record = server_records.find_record("demo-spec")
    members = [proc.pid for proc in record.processes()]
    assert len(members) >= 3  # API server, engine core, worker: found although renamed by setproctitle
    result = cli("stop", "demo-spec")
    assert result.code == 0, result.err
    assert result.err.strip() == f"stopped demo-spec ({len(members)} processes)"
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in members)
    assert cli("stop", "demo-annotator").code == 0  # the lifecycle tests need only the pair
    assert {row["name"] for row in cli("ps", "--json").json()} == {"demo-small", "demo-big"}  # type: ignore[union-attr]


def test_big_server_dying_mid_run_gives_one_line_and_keeps_the_partial_trace(tmp_path: Path) -> None:
    profile = load_profile("demo")
    big = server_records.find_record("demo-big")

    def kill_big_after_first_small_segment(trace) -> None:  # type: ignore[no-untyped-def]
        def on_event(event: str, segment: Segment) -> None:
            if event == "close" and segment.model == "small" and len(trace.segments) == 1:
                servers.stop(big)  # the real server goes away between the handoff and the big model's turn

        trace.subscribe(on_event)

    trace = asyncio.run(run_question(profile, DEMO_QUESTION, "splitreason", watch=kill_big_after_first_small_segment))
    assert trace.error == (
        "big model demo-big at http://127.0.0.1:8102 failed (ConnectError: All connection attempts failed); "
        "is it running? start it with `splitreason serve --profile demo --only big`"
    )
    assert [s.model for s in trace.segments] == ["small", "big"]
    assert trace.segments[0].text == "First, 12 * 3 = 36. <bigmodel>"
    assert trace.segments[1].text == ""
    saved = tmp_path / "partial.jsonl"
    trace.append_jsonl(saved)
    (shown,) = cli("show", str(saved), "--json").json()  # type: ignore[misc]
    assert shown["error"] == trace.error
    assert shown["segments"][0]["text"] == "First, 12 * 3 = 36. <bigmodel>"


def test_run_starts_a_missing_server_and_leaves_it_up_while_another_command_uses_it() -> None:
    # This test process plays an eval that uses demo-big: it holds a lease before the run starts it.
    with leases.locked("demo-big"):
        leases.acquire("demo-big")
    try:
        result = cli("run", DEMO_QUESTION, "--json", timeout=900)
        assert result.code == 0, result.err
        assert result.json()["stats"]["answer"] == "43"  # type: ignore[index]
        assert "starting demo-big (not running; stopped again afterwards unless --keep)" in result.err
        assert f"left demo-big running: still used by pid {os.getpid()} (it stops after them)" in result.err
        rows = {row["name"]: row for row in cli("ps", "--json").json()}  # type: ignore[union-attr]
        assert rows["demo-big"]["status"] == "healthy" and rows["demo-big"]["temporary"] is True
    finally:
        released = servers.release(["demo-big"])  # the last user leaves: the temporary server stops
    assert released.stopped == ["demo-big"]
    assert {row["name"] for row in cli("ps", "--json").json()} == {"demo-small"}  # type: ignore[union-attr]


def test_an_engine_killed_mid_eval_gives_errored_samples_that_resume_completes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "splitcli", "eval", "--n", "3", "--concurrency", "1", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples = out / "samples.jsonl"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and (not samples.exists() or len(samples.read_text().splitlines()) < 2):
        time.sleep(0.1)
    servers.stop(server_records.find_record("demo-big"))  # the engine goes away mid-run
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    lines = [json.loads(line) for line in samples.read_text().splitlines()]
    errored = [line for line in lines if line["error"]]
    assert len(lines) == 12 and errored and all(line["correct"] is None for line in errored)
    assert err.strip().splitlines()[-1] == (
        f"error: {len(errored)} of 12 samples errored (engine failures, not wrong answers; no pass@1 without "
        f"them): retry them with --resume {out}")
    assert json.loads((out / "results.json").read_text())["accuracy"] is None

    resumed = cli("eval", "--resume", str(out), "--json", timeout=900)  # starts demo-big again
    assert resumed.code == 0, resumed.err
    summary = resumed.json()
    assert summary["errored"] == 0 and summary["samples"] == 12  # type: ignore[index]
    assert summary["accuracy"]["pass@1"] == 1.0  # type: ignore[index]


def test_a_failed_start_stops_only_what_it_launched(tmp_path: Path) -> None:
    small_pid = server_records.find_record("demo-small").pid
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    result = cli("serve", "--set", f"big.model={not_a_model}", "--detach", timeout=600)
    assert result.code == 2
    assert result.error_line().startswith("error: server demo-big exited with code 1 while starting")
    rows = {row["name"]: row for row in cli("ps", "--json").json()}  # type: ignore[union-attr]
    assert set(rows) == {"demo-small"}  # reused, not launched here: untouched
    assert rows["demo-small"]["pid"] == small_pid and rows["demo-small"]["status"] == "healthy"


def test_stop_leaves_no_process() -> None:
    assert _ours()  # demo-small and its engine core are running
    result = cli("stop", "--all")
    assert result.code == 0
    assert "stopped demo-small" in result.err
    assert _ours() == []
    assert cli("ps", "--json").json() == []


def test_bad_model_path_fails_fast_with_the_servers_own_error(tmp_path: Path) -> None:
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    result = cli("serve", "--only", "small", "--set", f"small.model={empty}", "--detach", timeout=600)
    assert result.code == 2
    first = result.error_line()
    assert first.startswith("error: server demo-small exited with code 1 while starting (log: ")
    assert str(empty) in result.err  # vLLM's own complaint about the path, from its log
    assert _ours() == []
    assert cli("ps", "--json").json() == []


def test_kill_gpus_after_sigkilled_foreground_serve_leaves_nothing_and_spares_others() -> None:
    serve = subprocess.Popen([sys.executable, "-m", "splitcli", "serve", "--only", "small"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stranger = subprocess.Popen(["sleep", "600"])
    try:
        _wait_healthy("demo-small")
        serve.send_signal(signal.SIGKILL)
        serve.wait()
        orphans = _ours()
        assert len(orphans) >= 3  # the API server, its engine core and worker outlive the SIGKILLed `serve`
        names = {psutil.Process(pid).name() for pid in orphans} | {" ".join(psutil.Process(pid).cmdline()) for pid in orphans}
        assert any("VLLM::EngineCore" in name for name in names)  # found although setproctitle hid its environment

        dry = cli("kill-gpus", "--dry-run", "--json")
        assert dry.code == 0
        assert [row["name"] for row in dry.json()["plan"]["servers"]] == ["demo-small"]  # type: ignore[index]
        assert _ours() == orphans  # a dry run ends nothing

        killed = cli("kill-gpus")
        assert killed.code == 0, killed.err
        assert "GPU check skipped: no NVIDIA driver (NVML unavailable)" in killed.err
        assert _ours() == []
        assert stranger.poll() is None  # not ours: left alone
    finally:
        stranger.kill()
        stranger.wait()
        if serve.poll() is None:
            serve.kill()


def test_ctrl_c_on_a_foreground_serve_stops_what_it_started(tmp_path: Path) -> None:
    err_path = tmp_path / "serve.err"
    with err_path.open("w") as err_file:
        # Started as a shell without job control starts a background job: SIGINT ignored, inherited.
        serve = subprocess.Popen([sys.executable, "-m", "splitcli", "serve", "--only", "small"],
                                 stdout=subprocess.DEVNULL, stderr=err_file, text=True,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        # Ctrl-C once the foreground loop runs (a health check alone can see the server a moment earlier)
        deadline = time.monotonic() + 600
        while "serving in the foreground" not in err_path.read_text() and time.monotonic() < deadline:
            assert serve.poll() is None, err_path.read_text()
            time.sleep(1)
        assert _ours()
        serve.send_signal(signal.SIGINT)
        serve.wait(timeout=120)
        err = err_path.read_text()
        assert serve.returncode == 0, err
        assert "stopping" in err
        assert _ours() == []
        assert cli("ps", "--json").json() == []
    finally:
        if serve.poll() is None:
            serve.kill()
