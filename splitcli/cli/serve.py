"""serve, ps, stop, logs, kill-gpus: the lifecycle of our vLLM servers."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from splitcli import console, gpus, server_records, servers
from splitcli.cli.common import build_demo_models, command, load, starting_status
from splitcli.cli.options import JsonOpt, ProfileOpt, SetOpt
from splitcli.errors import ServerError, UsageError
from splitcli.profiles import ROLES, SERVER_KEYS


def _uptime(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _raise_on_sigterm(*_: object) -> None:
    raise KeyboardInterrupt


def serve(
    profile: ProfileOpt = "demo",
    only: Annotated[str | None, typer.Option(metavar="small,big,spec,...", help=(
        "Start only these servers: small, big, spec (the big model with speculative decoding), "
        "annotator (gendata's). Default: small,big."))] = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Return once ready; servers keep running.")] = False,
    api: Annotated[bool, typer.Option("--api", help="Also serve the OpenAI-compatible API over the pair.")] = False,
    api_port: Annotated[int | None, typer.Option("--api-port", min=1, max=65535, metavar="PORT",
                                                 help="The API's port (default: api.port, 8100).")] = None,
    host: Annotated[str | None, typer.Option("--host", metavar="ADDRESS",
                                             help="Address the API binds (default: 127.0.0.1).")] = None,
    api_key_env: Annotated[str | None, typer.Option("--api-key-env", metavar="NAME",
                                                    help="Require the key in this variable (environment or .env).")] = None,
    overrides: SetOpt = None,
) -> None:
    """Start the profile's vLLM servers and wait until they answer; with --api, the
    OpenAI-compatible API in front of them too (model ids: splitreason, splitreason/MODE).

    Example: splitreason serve --profile demo --api --detach
    """
    extra = [f"api.port={api_port}"] if api_port else []
    extra += [f"api.host={host}"] if host else []
    extra += [f"api.api_key_env={api_key_env}"] if api_key_env else []
    prof = load(profile, [*(overrides or []), *extra])
    wanted = [part.strip() for part in only.split(",") if part.strip()] if only is not None else list(ROLES)
    if api and "api" not in wanted:
        wanted.append("api")
    unknown = [key for key in wanted if key not in SERVER_KEYS]
    if unknown or not wanted:
        raise UsageError(f"--only {only}: choose from {', '.join(SERVER_KEYS)} (comma-separated)")
    keys = tuple(key for key in SERVER_KEYS if key in wanted)
    if not any(prof.spec(key).launched for key in keys):
        raise UsageError(f"profile {prof.name} uses external endpoints only; there is nothing to serve")
    build_demo_models(prof, keys)
    started = time.monotonic()
    with starting_status() as tick:
        result = servers.ensure_servers(prof, keys, on_tick=tick)
    for name in result.reused:
        console.info(f"reusing {name} (already running and healthy)")
    for record in result.records:
        console.say(("ready", "green"), f" {record.name}: {record.served_name} at {record.url} (pid {record.pid})")
    if result.started:
        console.info(f"ready after {time.monotonic() - started:.1f}s; logs: `splitreason logs NAME`")
    if detach:
        return
    # Handlers first, then the promise: a shell that starts us in the background without job
    # control leaves SIGINT ignored, and Python then installs no KeyboardInterrupt for it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    console.say(("serving in the foreground; Ctrl-C stops what this command started", "dim"))
    mine = [record for record in result.records if record.name in result.started]
    try:
        while True:
            for record in mine:
                if record.leader() is None:
                    raise ServerError(f"server {record.name} died (see `splitreason logs {record.name}`)")
            time.sleep(1.0)
    except KeyboardInterrupt:
        console.say(f"interrupted: stopping {', '.join(record.name for record in mine) or 'nothing (none started here)'}")
    finally:
        servers.stop_together(mine)


def ps(json_output: JsonOpt = False) -> None:
    """List our servers: model, port, pid, GPUs, health, uptime, GPU memory.

    Example: splitreason ps --json
    """
    rows = []
    for record in server_records.all_records():
        held = gpus.memory_by_pid({p.pid for p in record.processes()}) if record.gpus and gpus.available() else {}
        rows.append({
            "name": record.name, "model": record.model, "served_name": record.served_name, "url": record.url,
            "port": record.port, "pid": record.pid, "gpus": record.gpus, "status": servers.status(record),
            "uptime_s": round(time.time() - record.started_at, 1), "profile": record.profile,
            "gpu_memory_mib": {str(gpu): round(mib) for gpu, mib in held.items()}, "log": record.log_path,
            "temporary": record.temporary,
        })
    if json_output:
        console.print_json(rows)
        return
    if not rows:
        console.info("no splitreason servers (start them with `splitreason serve --profile demo`)")
        return
    table = Table("name", "model", "port", "pid", "GPUs", "status", "uptime", "GPU memory")
    colors = {"healthy": "green", "starting": "yellow"}
    for row in rows:
        memory = ", ".join(f"{gpu}: {mib / 1024:.1f} GiB" for gpu, mib in row["gpu_memory_mib"].items()) or "-"
        table.add_row(Text(row["name"]), Text(row["model"]), str(row["port"]), str(row["pid"]),
                      ",".join(map(str, row["gpus"])) or "cpu", Text(row["status"], colors.get(row["status"], "red")),
                      _uptime(row["uptime_s"]), memory)
    console.out.print(table)


def stop(
    name: Annotated[str | None, typer.Argument(help="Server name (see `splitreason ps`).")] = None,
    all_servers: Annotated[bool, typer.Option("--all", help="Stop every splitreason server.")] = False,
) -> None:
    """Stop servers: process group, engine core and workers, then check that nothing is left.

    Example: splitreason stop demo-big   (or: splitreason stop --all)
    """
    if (name is None) == (not all_servers):
        raise UsageError("name one server or pass --all (see `splitreason ps`)")
    records = server_records.all_records() if all_servers else [server_records.find_record(name or "")]
    if not records:
        console.info("no splitreason servers running")
    for record in records:
        result = servers.stop(record)
        line = f"stopped {record.name} ({result.ended} process{'es' if result.ended != 1 else ''})"
        if result.gpu_left_mib:
            line += "; GPU memory still held: " + ", ".join(f"GPU {g}: {m:.0f} MiB" for g, m in result.gpu_left_mib.items())
        console.say(line)


def logs(
    name: Annotated[str, typer.Argument(help="Server name (see `splitreason ps`).")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", min=0, metavar="N", help="How many last lines to show.")] = 50,
) -> None:
    """Show a server's log.

    Example: splitreason logs demo-big -f
    """
    record = server_records.find_record(name)
    path = Path(record.log_path)
    if not path.is_file():
        raise ServerError(f"log of {name} is missing ({path})")
    text = path.read_text(errors="replace").splitlines()
    for line in text[len(text) - lines:] if lines else []:
        sys.stdout.write(line + "\n")
    if follow:
        try:
            for line in server_records.follow(path):
                sys.stdout.write(line)
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass


def _parse_gpus(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        indices = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        indices = []
    if not indices or any(index < 0 for index in indices):
        raise UsageError(f"--gpus {text}: expected GPU indices like 0,1")
    return indices


def kill_gpus(
    gpu_list: Annotated[str | None, typer.Option("--gpus", metavar="0,1", help="Only these GPUs (default: all).")] = None,
    everything: Annotated[bool, typer.Option("--all", help="Also end processes splitreason did not start.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be ended; end nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before ending other processes.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """End what splitreason started (and its orphans); with --all, also others' GPU processes.

    --json prints one object: {dry_run, plan: {gpus, nvml, servers, orphans, foreign}, ended, survived,
    gpus, gpu_check}; a dry run ends nothing, so `ended` is empty there.

    Example: splitreason kill-gpus --gpus 0 --dry-run
    """
    from splitcli import cleanup

    plan = cleanup.plan(_parse_gpus(gpu_list), everything)
    if not json_output:
        cleanup.render_plan(plan, everything)
    if dry_run:
        report = cleanup.empty_report("not run (dry run)")
    else:
        if plan.foreign and not yes:
            if not sys.stdin.isatty():
                raise UsageError("--all would end processes splitreason did not start; confirm with --yes")
            typer.confirm(f"End these {len(plan.foreign)} other process(es)?", abort=True)
        report = cleanup.execute(plan)
    if json_output:
        console.print_json({"dry_run": dry_run, "plan": plan.as_dict(), **report})
    elif not dry_run:
        cleanup.render_report(report)


def register(app: typer.Typer) -> None:
    for function in (serve, ps, stop, logs):
        command(app, function)
    command(app, kill_gpus, "kill-gpus")
