"""kill-gpus: end what splitreason started (and its orphans), and on request other GPU processes.

Unlike `fuser -k -9 /dev/nvidia*`, nothing is ended that was not asked for: by default only the
servers recorded in this state dir and processes whose launch marker names this state dir (orphans of
our servers); with --all also what NVML shows on the chosen GPUs, listed first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import psutil
from rich.table import Table
from rich.text import Text

from splitcli import console, gpus, processes, server_records, servers
from splitcli.errors import UsageError


@dataclass
class KillPlan:
    gpu_filter: list[int] | None
    ours: list[server_records.ServerRecord] = field(default_factory=list)
    orphans: list[psutil.Process] = field(default_factory=list)
    foreign: list[gpus.GpuProcess] = field(default_factory=list)
    nvml: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "gpus": self.gpu_filter, "nvml": self.nvml,
            "servers": [{"name": r.name, "pid": r.pid, "gpus": r.gpus} for r in self.ours],
            "orphans": [{"pid": p.pid, "command": processes.command_line(p, 100)} for p in self.orphans],
            "foreign": [vars(p) for p in self.foreign],
        }


def _visible_gpus(proc: psutil.Process) -> set[int]:
    try:
        value = proc.environ().get("CUDA_VISIBLE_DEVICES", "")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return set()
    return {int(part) for part in value.split(",") if part.strip().isdigit()}


def _check_gpus(gpu_filter: list[int]) -> None:
    """Refuse GPU indices this machine does not have, before anything is ended."""
    count = gpus.gpu_count()
    missing = [index for index in gpu_filter if index >= count]
    if missing:
        have = f"GPUs 0-{count - 1}" if count > 1 else ("GPU 0" if count == 1 else "no GPUs")
        raise UsageError(f"--gpus {','.join(map(str, gpu_filter))}: this machine has {have} "
                         f"(no GPU {', '.join(map(str, missing))}; see nvidia-smi)")


def plan(gpu_filter: list[int] | None, include_foreign: bool) -> KillPlan:
    """Work out what kill-gpus would end."""
    result = KillPlan(gpu_filter, nvml=gpus.available())
    if gpu_filter is not None and result.nvml:
        _check_gpus(gpu_filter)
    wanted = set(gpu_filter) if gpu_filter is not None else None
    records = server_records.all_records()
    result.ours = [r for r in records if wanted is None or wanted & set(r.gpus)]
    recorded = {proc.pid for record in records for proc in record.processes()}
    for members in server_records.our_processes().values():  # launched from this state dir only
        # Engine cores and workers rename themselves, which hides their environment: a session's
        # GPUs are those its marked members show.
        visible = set().union(*(_visible_gpus(proc) for proc in members))
        for proc in members:
            if proc.pid not in recorded and (wanted is None or wanted & visible):
                result.orphans.append(proc)
    if include_foreign and result.nvml:
        ours_pids = {os.getpid()} | {p.pid for p in result.orphans}
        for record in result.ours:
            ours_pids |= {p.pid for p in record.processes()}
        result.foreign = [p for p in gpus.processes(gpu_filter) if p.pid not in ours_pids]
    return result


def render_plan(kill_plan: KillPlan, include_foreign: bool = False) -> None:
    if include_foreign and not kill_plan.nvml:
        console.warn("--all: no NVIDIA driver (NVML unavailable), so no other GPU processes can be seen")
    if not (kill_plan.ours or kill_plan.orphans or kill_plan.foreign):
        console.info("nothing to end: no splitreason servers or orphans")
    for record in kill_plan.ours:
        console.say(f"splitreason server {record.name} (pid {record.pid}, GPUs {record.gpus or 'cpu'})")
    for proc in kill_plan.orphans:
        console.say(f"orphan of a splitreason server: pid {proc.pid} ({processes.command_line(proc, 100)})")
    if kill_plan.foreign:
        table = Table("GPU", "pid", "user", "command", "GPU memory", title="processes splitreason did not start")
        for p in kill_plan.foreign:
            table.add_row(str(p.gpu), str(p.pid), Text(p.user), Text(p.command[:60]), f"{p.used_mib / 1024:.1f} GiB")
        console.err.print(table)


def empty_report(gpu_check: str) -> dict[str, Any]:
    return {"ended": [], "survived": [], "gpus": None, "gpu_check": gpu_check}


def execute(kill_plan: KillPlan) -> dict[str, Any]:
    """End the planned processes, then wait for their GPU memory to be released."""
    ended: list[int] = []
    survivors: list[int] = []
    for record in kill_plan.ours:
        result = servers.stop(record, quiet=True)
        ended += [record.pid]
        survivors += result.left
    left = processes.terminate(kill_plan.orphans, grace=10.0)
    ended += [p.pid for p in kill_plan.orphans]
    survivors += [p.pid for p in left]
    foreign_procs = []
    for entry in kill_plan.foreign:
        # Rebuilt from the pid listed before the confirmation: only if it is still that process.
        proc = processes.same_process(entry.pid, entry.create_time)
        if proc is not None:
            foreign_procs.append(proc)
    survivors += [p.pid for p in processes.terminate(foreign_procs, grace=10.0)]
    ended += [p.pid for p in foreign_procs]
    if not kill_plan.nvml:
        return {**empty_report("skipped: no NVIDIA driver (NVML unavailable)"), "ended": ended, "survived": survivors}
    gpus.wait_released(set(ended), kill_plan.gpu_filter)
    indices = kill_plan.gpu_filter if kill_plan.gpu_filter is not None else list(range(gpus.gpu_count()))
    remaining = gpus.processes(indices)
    return {
        "ended": ended, "survived": survivors, "gpu_check": "done",
        "gpus": {
            str(index): {"used_mib": round(gpus.memory_used_mib(index)),
                         "processes": [p.pid for p in remaining if p.gpu == index]}
            for index in indices
        },
    }


def render_report(report: dict[str, Any]) -> None:
    console.say(f"ended {len(report['ended'])} process(es)")
    if report["survived"]:
        console.warn(f"still alive after SIGKILL: {', '.join(map(str, report['survived']))}")
    if report["gpus"] is None:
        console.info(f"GPU check {report['gpu_check']}")
        return
    for index, state in report["gpus"].items():
        others = f", {len(state['processes'])} process(es) left" if state["processes"] else ""
        console.say(f"GPU {index}: {state['used_mib'] / 1024:.1f} GiB in use{others}")
