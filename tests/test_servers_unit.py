"""Server launch arguments, state records and pid-reuse safety (no vLLM needed)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
from conftest import cli

from splitcli import processes, server_commands, server_records, servers
from splitcli.profiles import load_profile


def test_command_and_environment_follow_the_profile() -> None:
    profile = load_profile("paper-32b", ["big.extra_args=[--enforce-eager]", "big.env={VLLM_LOGGING_LEVEL: DEBUG}"])
    command = server_commands.build_command(profile.big, "/models/32b")
    assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    flags = dict(zip(command[3::2], command[4::2], strict=False))
    assert flags["--model"] == "/models/32b"
    assert flags["--served-model-name"] == "big"
    assert flags["--port"] == "8000" and flags["--host"] == "127.0.0.1"
    assert flags["--tensor-parallel-size"] == "2"
    assert flags["--max-model-len"] == "32768"
    assert "--enable-prompt-tokens-details" in command and "--enable-prefix-caching" in command
    assert command[-1] == "--enforce-eager"
    env = servers.build_env(profile.big, "marker-1")
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["VLLM_LOGGING_LEVEL"] == "DEBUG"
    assert env[processes.MARKER_ENV] == "marker-1"


def _record_for(proc: subprocess.Popen[bytes], create_time: float, name: str = "unit-test") -> server_records.ServerRecord:
    return server_records.ServerRecord(
        name=name, role="small", profile="unit", model="m", served_name="m", host="127.0.0.1", port=1,
        pid=proc.pid, pgid=proc.pid, create_time=create_time, gpus=[], log_path="/dev/null",
        command=["sleep"], marker=f"{name}-marker",
    )


def test_record_round_trip_and_stop_of_our_process() -> None:
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    record = _record_for(proc, psutil.Process(proc.pid).create_time())
    record.save()
    loaded = server_records.ServerRecord.load("unit-test")
    assert loaded == record
    assert loaded is not None and loaded.leader() is not None
    result = servers.stop(loaded, grace=5)
    assert result.ended == 1 and result.left == []
    assert proc.wait(timeout=5) is not None
    assert server_records.ServerRecord.load("unit-test") is None


def test_reused_pid_is_never_killed() -> None:
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        # A record whose pid now belongs to another process (different start time): not ours.
        record = _record_for(stranger, psutil.Process(stranger.pid).create_time() - 100, name="reused")
        assert record.leader() is None
        servers.stop(record, grace=1, quiet=True)
        time.sleep(0.2)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_port_holder_names_the_process() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        holder = servers.port_holder("127.0.0.1", port)
    assert holder is not None and holder.startswith(f"pid {psutil.Process().pid} (")
    assert sys.executable.split("/")[-1] in holder or "python" in holder


def test_port_in_use_is_refused_before_launch_naming_its_holder(tmp_path: Path) -> None:
    profile = tmp_path / "portcheck.yaml"
    profile.write_text("extends: demo\n")
    holder = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "0"],
                              stdout=subprocess.PIPE, text=True)
    try:
        line = holder.stdout.readline() if holder.stdout else ""
        port = int(line.split("port ")[1].split(" ")[0])
        result = cli("serve", "--profile", str(profile), "--only", "small", "--set", f"small.port={port}")
        assert result.code == 2
        assert result.err.strip() == (
            f"error: port {port} is in use by pid {holder.pid} ({sys.executable} -m http.server --bind 127.0.0.1 0): "
            f"stop it, or pick another port with --set small.port=N"
        )
        assert server_records.ServerRecord.load("portcheck-small") is None  # nothing was launched
    finally:
        holder.terminate()
        holder.wait()


def test_stop_needs_a_name_or_all() -> None:
    result = cli("stop")
    assert result.code == 2
    assert result.err.strip() == "error: name one server or pass --all (see `splitreason ps`)"
    unknown = cli("stop", "nope")
    assert unknown.code == 2 and "no server named 'nope'" in unknown.err


def test_only_takes_server_keys() -> None:
    result = cli("serve", "--only", "small,medium")
    assert result.code == 2
    assert result.err.strip() == "error: --only small,medium: choose from small, big, spec, annotator, api (comma-separated)"


def test_servers_sharing_a_gpu_start_one_after_the_other() -> None:
    profile = load_profile("single-gpu")
    done = subprocess.Popen(["true"])
    done.wait()
    small = _record_for(done, 0.0, name="single-gpu-small")
    small.gpus = [0]
    assert servers.must_wait_before(profile.spec("big"), [small])
    split = load_profile("paper-32b")  # big on GPUs 0,1 and small on GPU 2: no need to wait
    small.gpus = [2]
    assert not servers.must_wait_before(split.spec("big"), [small])
    assert not servers.must_wait_before(profile.spec("big"), [])


def test_cuda_builds_of_torchvision_next_to_a_cpu_torch_are_named_with_the_fix() -> None:
    from splitcli.environment import companion_clash

    pypi = {"torch": "2.13.0+cpu", "torchvision": "0.28.0", "torchaudio": "2.13.0", "torchcodec": None}
    assert companion_clash(pypi.get) == (
        "torchvision 0.28.0, torchaudio 2.13.0 from PyPI (built for CUDA torch) sit next to torch 2.13.0+cpu and break "
        "model imports (fix: pip uninstall -y torchvision torchaudio torchcodec)")
    assert companion_clash({"torch": "2.13.0+cpu", "torchvision": "0.28.0+cpu"}.get) is None  # matching CPU builds
    assert companion_clash({"torch": "2.11.0+cu130", "torchvision": "0.26.0"}.get) is None  # a GPU install
    assert companion_clash() is None  # this environment (the README's install uninstalls them)


REPLICAS = ["http://127.0.0.1:8101", "http://localhost:8101"]


def test_a_session_sends_its_id_for_routers_to_hash() -> None:
    import asyncio

    from splitcli.engine import EngineClient

    shared = EngineClient("small", "demo-small", REPLICAS, "start it")
    first, second = (shared.bound(lambda: 0.0, lambda call: None, session=key) for key in ("a1", "b2"))
    assert first._headers["x-session-id"] == "a1" and second._headers["x-session-id"] == "b2"
    assert {first._url(), second._url()} == set(REPLICAS)  # the second took the free replica
    freed = first._url()
    first.release()
    third = shared.bound(lambda: 0.0, lambda call: None, session="c3")
    assert third._url() == freed  # the least used replica again
    asyncio.run(shared.aclose())
