"""NVIDIA GPUs through NVML: who holds memory on which GPU, and waiting for memory to be released."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache

import psutil


@dataclass(frozen=True)
class GpuProcess:
    gpu: int
    pid: int
    used_mib: float
    user: str
    command: str
    create_time: float | None = None  # to tell this process from a later one with the same pid


@cache
def _nvml():  # -> module | None
    """pynvml, initialised, or None where no NVIDIA driver is present."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # broad on purpose: no library, no driver, or a driver/library mismatch
        return None


def available() -> bool:
    return _nvml() is not None


def gpu_count() -> int:
    nvml = _nvml()
    return nvml.nvmlDeviceGetCount() if nvml else 0


def memory_used_mib(gpu: int) -> float:
    nvml = _nvml()
    if nvml is None:
        return 0.0
    handle = nvml.nvmlDeviceGetHandleByIndex(gpu)
    return nvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20


def _describe(pid: int) -> tuple[str, str, float | None]:
    try:
        proc = psutil.Process(pid)
        return proc.username(), " ".join(proc.cmdline()) or proc.name(), proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?", "?", None


def processes(gpus: list[int] | None = None) -> list[GpuProcess]:
    """Compute and graphics processes NVML reports on the given GPUs (all when None)."""
    nvml = _nvml()
    if nvml is None:
        return []
    found: dict[tuple[int, int], GpuProcess] = {}
    for index in gpus if gpus is not None else range(gpu_count()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        listed = list(nvml.nvmlDeviceGetComputeRunningProcesses(handle))
        listed += list(nvml.nvmlDeviceGetGraphicsRunningProcesses(handle))
        for entry in listed:
            used = (entry.usedGpuMemory or 0) / 2**20
            user, command, created = _describe(entry.pid)
            found[(index, entry.pid)] = GpuProcess(index, entry.pid, used, user, command, created)
    return list(found.values())


def memory_by_pid(pids: set[int], gpus: list[int] | None = None) -> dict[int, float]:
    """GPU -> MiB still held by any of `pids` (only GPUs where some is held)."""
    held: dict[int, float] = {}
    for proc in processes(gpus):
        if proc.pid in pids:
            held[proc.gpu] = held.get(proc.gpu, 0.0) + proc.used_mib
    return held


def wait_released(pids: set[int], gpus: list[int] | None = None, timeout: float = 30.0) -> dict[int, float]:
    """Wait until none of `pids` holds GPU memory; returns what is still held at the end."""
    deadline = time.monotonic() + timeout
    held = memory_by_pid(pids, gpus)
    while held and time.monotonic() < deadline:
        time.sleep(0.5)
        held = memory_by_pid(pids, gpus)
    return held
