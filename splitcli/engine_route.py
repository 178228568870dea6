"""Our routes INSIDE the vLLM servers we launch (`--middleware splitcli.engine_route.ContinuationsRoute`):
- PATH, the continuations route (engine_route_continuations): the greedy continuations of every
  prefix of one token sequence, with the sequence sent once, for cheap exact probes at long context;
- LIVE_PATH, the live route (engine_route_live): requests kept alive in the engine, so that a warm
  handoff sends only the new tokens.
Both lean on engine_route_shared (incremental text, the model's sampling defaults, JSON answers).

These modules import nothing of splitcli but each other (and vLLM only inside functions): they are
loaded by vLLM's API server process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Coroutine
from typing import Any

from splitcli.engine_route_continuations import continuations
from splitcli.engine_route_live import live, live_unsupported, open_while_connected, stream_append
from splitcli.engine_route_shared import disconnected, send_json

PATH = "/splitreason/v1/continuations"
LIVE_PATH = "/splitreason/v1/live"


class ContinuationsRoute:
    """Pure ASGI middleware: answers PATH and LIVE_PATH, passes everything else through untouched (so streams,
    disconnects and aborts of vLLM's own routes behave exactly as without it)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path")
        if scope.get("type") != "http" or path not in (PATH, LIVE_PATH) or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            request = json.loads(body)
            engine = scope["app"].state.engine_client
            if path == LIVE_PATH and request.get("op") == "append":
                await stream_append(engine, request, receive, send)
                return
            if path == LIVE_PATH and request.get("op") == "open":
                if (why := live_unsupported()) is not None:
                    await send_json(send, 501, {"error": {"message": why, "code": 501}})
                    return
                await open_while_connected(engine, request, receive, send)
                return
            if path == PATH:
                answer = await _while_connected(continuations(engine, request), receive)
                if answer is None:
                    return  # the client went away (a probe past the cut): its engine requests were aborted
                status = 200
            else:
                status, answer = 200, await live(engine, request)
        except (KeyError, TypeError, ValueError) as exc:
            name = "continuations" if path == PATH else "live"
            status, answer = 400, {"error": {"message": f"bad {name} request: {exc}", "code": 400}}
        except Exception as exc:  # the engine's own errors: reported, never a crashed route
            status, answer = 500, {"error": {"message": f"{type(exc).__name__}: {exc}", "code": 500}}
        await send_json(send, status, answer)


async def _while_connected(work: Coroutine[Any, Any, dict[str, Any]], receive: Any) -> dict[str, Any] | None:
    """`work`'s answer; None when the client went away first: then `work` is cancelled, and vLLM
    aborts the requests it was making (a cancelled generate aborts its request), instead of computing
    continuations nobody reads."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected(receive))
    try:
        await asyncio.wait([task, watcher], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
    finally:
        watcher.cancel()
