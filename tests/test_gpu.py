"""What needs an NVIDIA GPU (skipped without one; run on a lent H100/H200, see benchmarks/gpu_bench.py):
kill-gpus against GPU processes splitreason did not start, a GPU index the machine does not have, and
the spec-decoding mode on real-shape models (SPLITREASON_GPU_PROFILE: a profile; SPLITREASON_GPU_HOME:
the state dir where its servers already run, else the run starts them)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import cli

from splitcli import gpus

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not gpus.available(), reason="needs an NVIDIA GPU (NVML)")]


@pytest.fixture
def foreign() -> Iterator[subprocess.Popen[str]]:
    """A process that holds GPU memory and that splitreason did not start."""
    proc = subprocess.Popen([sys.executable, "-c", "import torch, time; x = torch.ones(2**28, device='cuda'); "
                             "print('ready', flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_a_gpu_the_machine_does_not_have_is_refused_before_anything_ends(tmp_path: Path,
                                                                         foreign: subprocess.Popen[str]) -> None:
    result = cli("kill-gpus", "--gpus", "99", "--all", "--yes", env={"SPLITREASON_HOME": str(tmp_path)})
    assert result.code == 2
    assert result.err.strip().startswith("error: --gpus 99: this machine has GPU")
    assert result.err.strip().endswith("(no GPU 99; see nvidia-smi)")
    assert foreign.poll() is None


@pytest.mark.skipif(os.environ.get("SPLITREASON_TEST_KILL_ALL") != "1",
                    reason="ends EVERY process on the machine's GPUs; set SPLITREASON_TEST_KILL_ALL=1 on a machine of your own")
def test_foreign_gpu_processes_survive_kill_gpus_and_end_with_all(tmp_path: Path, foreign: subprocess.Popen[str]) -> None:
    env = {"SPLITREASON_HOME": str(tmp_path)}  # a state dir of its own: other tests' servers are not touched
    listed = cli("kill-gpus", "--all", "--dry-run", "--json", env=env).json()
    assert foreign.pid in [row["pid"] for row in listed["plan"]["foreign"]]  # type: ignore[index]
    default = cli("kill-gpus", "--json", env=env)
    assert default.code == 0 and foreign.poll() is None  # not ours: left alone
    ended = cli("kill-gpus", "--all", "--yes", "--json", env=env)
    assert ended.code == 0, ended.err
    assert foreign.wait(timeout=30) is not None
    report = ended.json()
    assert foreign.pid in report["ended"]  # type: ignore[index]
    assert all(foreign.pid not in state["processes"] for state in report["gpus"].values())  # type: ignore[union-attr]


@pytest.mark.skipif(not os.environ.get("SPLITREASON_GPU_PROFILE"), reason="SPLITREASON_GPU_PROFILE names no profile")
def test_spec_decoding_on_the_gpu() -> None:
    profile = os.environ["SPLITREASON_GPU_PROFILE"]
    home = os.environ.get("SPLITREASON_GPU_HOME")
    result = cli("run", "Say something.", "--profile", profile, "--mode", "spec-decoding", "--json",
                 "--set", "sampling.max_tokens=600", timeout=900, env={"SPLITREASON_HOME": home} if home else None)
    assert result.code == 0, result.err
    trace = result.json()
    speculative = trace["extra"]["speculative"]  # type: ignore[index]
    assert speculative["drafts"] > 0 and speculative["draft_tokens"] == 5 * speculative["drafts"]
    assert speculative["acceptance_rate"] is not None
    assert [s["model"] for s in trace["segments"]] == ["big"]  # type: ignore[index]


@pytest.mark.skipif(not os.environ.get("SPLITREASON_GPU_SMALL_URL"), reason="SPLITREASON_GPU_SMALL_URL names no server")
def test_the_route_answers_partly_cached_prompts_as_the_full_probes_do() -> None:
    """The eight (context, chunk, cached-up-to) cases that failed on vLLM 0.24 with a Qwen3-shape
    small model (its newer model runner returns scores only for the positions it computed), against
    a small server splitreason started (SPLITREASON_GPU_SMALL_URL, its served name in
    SPLITREASON_GPU_SMALL_NAME, default `small`, as benchmarks/gpu_bench.py serves it)."""
    import asyncio

    sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
    import gpu_bench

    rows = asyncio.run(gpu_bench.route_cases(os.environ["SPLITREASON_GPU_SMALL_URL"],
                                             os.environ.get("SPLITREASON_GPU_SMALL_NAME", "small")))
    assert [row["status"] for row in rows] == [200] * len(gpu_bench.ROUTE_CASES)
    assert all(row["wrong"] == [] for row in rows)
    assert all(row["texts"] == row["chunk"] for row in rows)
