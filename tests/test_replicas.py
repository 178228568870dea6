"""Replicas: `serve` launches several servers of a model, and Session affinity keeps every call of one
Session on one replica per model (its prefix cache is there) while Sessions spread over the
replicas; each request carries the session id routers hash (X-Session-ID). Two URLs of one running
demo server stand in for two replicas where only our own bookkeeping is checked; real second
replicas (ports + 1000) where the servers' own metrics are."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Severable, cli, solve_together

from splitcli import demo, engine_connection, server_records, servers
from splitcli.engine_wire import metric_totals
from splitcli.profiles import Profile, load_profile
from splitcli.solve import close_clients, open_clients, run_question
from splitcli.trace import Trace

pytestmark = pytest.mark.usefixtures("demo_servers")
REPLICAS = {"small": ["http://127.0.0.1:8101", "http://localhost:8101"],
            "big": ["http://127.0.0.1:8102", "http://localhost:8102"]}


def test_each_session_keeps_one_replica_per_model_and_sessions_spread_over_them() -> None:
    profile = load_profile("demo", [f"{role}.endpoints=[{','.join(urls)}]" for role, urls in REPLICAS.items()]
                           + ["small.served_name=demo-small", "big.served_name=demo-big", "big.speculative=null"])

    traces = solve_together(profile, "splitreason", [item.question for item in demo.QUESTIONS])
    assert [trace.error for trace in traces] == [None] * 4
    assert [trace.answer for trace in traces] == [item.answer for item in demo.QUESTIONS]
    for role, urls in REPLICAS.items():
        pinned = [{call.url for call in trace.calls if call.model == role} for trace in traces]
        assert all(len(used) == 1 for used in pinned), pinned  # one replica for all of a session's calls
        assert sorted(used.pop() for used in pinned) == sorted(urls * 2)  # two sessions on each
    assert len({trace.session_id for trace in traces}) == 4


def test_every_request_of_a_session_carries_its_id_and_sessions_differ() -> None:
    # What the servers received (through relays that keep the wire), not what our client meant to send.
    async def two_sessions() -> tuple[list[Trace], list[tuple[str, dict[str, str]]]]:
        async with Severable(8101) as small, Severable(8102) as big:
            profile = load_profile("demo", [f"small.endpoints=[{small.url}]", f"big.endpoints=[{big.url}]",
                                            "small.served_name=demo-small", "big.served_name=demo-big",
                                            "big.speculative=null"])
            clients = open_clients(profile, {"small": "small", "big": "big"})
            try:
                traces = await asyncio.gather(*(run_question(profile, item.question, "splitreason", clients=clients)
                                                for item in demo.QUESTIONS[:2]))
            finally:
                await close_clients(clients)
            return list(traces), small.requests() + big.requests()

    traces, received = asyncio.run(two_sessions())
    assert [trace.error for trace in traces] == [None, None]
    ids = [trace.session_id for trace in traces]
    assert ids[0] != ids[1] and all(ids)
    work = [(line, headers) for line, headers in received if line.startswith("POST ")]
    assert work and all("x-session-id" in headers for _, headers in work)  # every generation, probe, tokenisation
    for trace in traces:  # all of a session's calls, and only those, carry its id
        mine = [line for line, headers in work if headers["x-session-id"] == trace.session_id]
        assert len(mine) >= len([call for call in trace.calls if call.kind in ("generate", "probe")]) > 0
    assert {headers["x-session-id"] for _, headers in work} == set(ids)


def _small_replicas(relay_url: str, pairs: bool = False) -> Profile:
    """The demo pair with two small replicas: A through `relay_url` (a relay to demo-small), B the server;
    with `pairs`, two big ones too (the server under two names), paired by index with the small ones."""
    big = "[http://127.0.0.1:8102,http://localhost:8102]" if pairs else "[http://127.0.0.1:8102]"
    return load_profile("demo", [f"small.endpoints=[{relay_url},http://localhost:8101]", f"big.endpoints={big}",
                                 "small.served_name=demo-small", "big.served_name=demo-big", "big.speculative=null",
                                 f"replica_pairs={str(pairs).lower()}"])


def test_a_replica_dying_under_a_session_fails_it_and_later_sessions_take_the_live_one() -> None:
    question = demo.QUESTIONS[0]

    async def go() -> tuple[Trace, Trace, str]:
        async with Severable(8101) as relay:  # replica A: a relay to demo-small that we cut; B: the server itself
            profile = _small_replicas(relay.url)
            clients = open_clients(profile, {"small": "small", "big": "big"})

            def cut_when_small_writes(trace: Trace) -> None:
                trace.subscribe(lambda event, segment: relay.sever() if segment.model == "small" and segment.tokens else None)

            try:
                first = await run_question(profile, question.question, "random-switch", clients=clients,
                                           watch=cut_when_small_writes)
                second = await run_question(profile, question.question, "random-switch", clients=clients)
            finally:
                await close_clients(clients)
            return first, second, relay.url

    first, second, relay_url = asyncio.run(go())
    assert first.error is not None and first.error.startswith(f"small model demo-small at {relay_url} failed")
    assert {call.url for call in first.calls if call.model == "small"} == {relay_url}  # no silent switch
    assert second.error is None and second.answer == question.answer
    assert {call.url for call in second.calls if call.model == "small"} == {"http://localhost:8101"}


@pytest.mark.parametrize("pairs", [False, True], ids=["replicas", "replica-pairs"])
def test_a_replica_that_comes_back_serves_new_sessions_again_after_the_recheck_time(
        pairs: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # A long-running `serve --api` must not keep a restarted replica out for good, nor take it back
    # unchecked (with pairs, the big replica moves with the small one). The recheck time is set around
    # each Session, so that how long a Session takes does not matter.
    question = demo.QUESTIONS[1]

    async def solve(clients: Any, profile: Profile, recheck_s: float) -> Trace:
        monkeypatch.setattr(engine_connection, "DOWN_RECHECK_S", recheck_s)
        return await run_question(profile, question.question, "splitreason", clients=clients)

    async def go() -> tuple[list[Trace], str]:
        async with Severable(8101) as relay:  # replica A: a relay to demo-small; B: the server itself
            profile = _small_replicas(relay.url, pairs)
            clients = open_clients(profile, {"small": "small", "big": "big"})
            try:
                relay.sever()
                traces = [await solve(clients, profile, 3600)]  # A is down before any Session: moved to B, said
                traces.append(await solve(clients, profile, 0))  # A is tried again, still down: B, not said again
                await relay.restore()
                traces.append(await solve(clients, profile, 3600))  # A is back, but not due to be tried: B
                traces.append(await solve(clients, profile, 0))  # A is tried, answers: taken again, said
            finally:
                await close_clients(clients)
            return traces, relay.url

    traces, relay_url = asyncio.run(go())
    assert [trace.error for trace in traces] == [None] * 4
    assert [trace.answer for trace in traces] == [question.answer] * 4
    used = [{call.url for call in trace.calls if call.model == "small"} for trace in traces]
    assert used == [{"http://localhost:8101"}] * 3 + [{relay_url}]
    big = [{call.url for call in trace.calls if call.model == "big"} for trace in traces]
    assert big == ([{"http://localhost:8102"}] * 3 + [{"http://127.0.0.1:8102"}] if pairs else
                   [{"http://127.0.0.1:8102"}] * 4)
    err = capsys.readouterr().err
    assert err.count(f"warning: small replica {relay_url} does not answer (ConnectError)") == 1
    assert err.count(f"· small replica {relay_url} answers again: new Sessions use it too") == 1


TWO = ["small.replicas=2", "big.replicas=2", "big.speculative=null"]
SECOND = {"demo-small-1": "http://127.0.0.1:9101", "demo-big-1": "http://127.0.0.1:9102"}


@pytest.fixture(scope="module")
def second_replicas() -> Iterator[str]:
    """A second replica of each demo model, launched by `serve` (the first is the running server)."""
    sets = [arg for item in [*TWO, "small.gpu_memory=0.05", "big.gpu_memory=0.05"] for arg in ("--set", item)]
    result = cli("serve", "--only", "small,big", *sets, "--detach", timeout=900)
    assert result.code == 0, result.err
    yield result.err
    for name in SECOND:
        cli("stop", name)


def test_serve_launches_the_replicas_it_lacks_and_lists_each(second_replicas: str) -> None:
    assert "reusing demo-small (already running and healthy)" in second_replicas
    assert "ready demo-small-1: demo-small at http://127.0.0.1:9101" in second_replicas
    assert "ready demo-big-1: demo-big at http://127.0.0.1:9102" in second_replicas
    rows = {row["name"]: row for row in cli("ps", "--json").json()}  # type: ignore[union-attr]
    assert {name: rows[name]["url"] for name in SECOND} == SECOND
    assert all(rows[name]["status"] == "healthy" for name in SECOND)


def _requests(url: str) -> float:
    return metric_totals(httpx.get(f"{url}/metrics", timeout=10).text).get("vllm:request_success_total", 0.0)


@pytest.mark.usefixtures("second_replicas")
def test_the_servers_own_counts_show_each_session_on_one_replica_per_model() -> None:
    # The big model writes every other chunk or so: each session calls both models.
    profile = load_profile("demo", [*TWO, "modes.random-switch.ratio=1", "modes.random-switch.chunk=4"])
    urls = [*profile.small.urls, *profile.big.urls]
    assert urls == ["http://127.0.0.1:8101", "http://127.0.0.1:9101", "http://127.0.0.1:8102", "http://127.0.0.1:9102"]

    before = {url: _requests(url) for url in urls}
    traces = solve_together(profile, "random-switch", [item.question for item in demo.QUESTIONS])
    served = {url: _requests(url) - before[url] for url in urls}
    assert [trace.error for trace in traces] == [None] * 4
    for trace in traces:
        for role in ("small", "big"):
            assert len({call.url for call in trace.calls if call.model == role}) == 1  # one replica per model
    ours = {url: sum(1 for trace in traces for call in trace.calls if call.url == url and call.kind == "generate")
            for url in urls}
    assert served == ours  # what each server counted is what our sessions sent it
    assert all(count > 0 for count in served.values())  # and every replica had sessions


@pytest.mark.usefixtures("second_replicas")
def test_an_eval_spreads_its_samples_over_the_replicas(tmp_path: Path) -> None:
    sets = [arg for item in TWO for arg in ("--set", item)]
    result = cli("eval", "--mode", "random-switch", "--concurrency", "4", "--out", str(tmp_path / "run"), *sets)
    assert result.code == 0, result.err
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    used = [{call["url"] for call in sample["trace"]["calls"] if call["model"] == "small"} for sample in samples]
    assert all(len(one) == 1 for one in used)
    assert set().union(*used) == {"http://127.0.0.1:8101", "http://127.0.0.1:9101"}


@pytest.mark.usefixtures("second_replicas")
def test_replica_pairs_keep_each_sessions_small_and_big_on_one_index() -> None:
    profile = load_profile("demo", [*TWO, "replica_pairs=true", "modes.random-switch.ratio=1",
                                    "modes.random-switch.chunk=4"])
    traces = solve_together(profile, "random-switch", [item.question for item in demo.QUESTIONS])
    assert [trace.error for trace in traces] == [None] * 4
    pairs = set()
    for trace in traces:
        (small,) = {call.url for call in trace.calls if call.model == "small"}
        (big,) = {call.url for call in trace.calls if call.model == "big"}
        pairs.add((profile.small.urls.index(small), profile.big.urls.index(big)))  # type: ignore[arg-type]
    assert pairs == {(0, 0), (1, 1)}  # co-located, and both pairs used


def _block_size(url: str) -> int:
    info = next(line for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines()
                if line.startswith("vllm:cache_config_info{"))
    return int(dict(re.findall(r'(\w+)="([^"]*)"', info))["block_size"])


def _uncached_after_first(traces: list[Trace]) -> list[tuple[int, int]]:
    """For each segment after its model's first in a Session: the prompt tokens not served from the
    prefix cache, and the tokens the other model wrote since this model's last segment."""
    found = []
    for trace in traces:
        last: dict[str, int] = {}  # model -> index of its last segment
        for index, segment in enumerate(trace.segments):
            if segment.model in last:
                between = sum(s.tokens for s in trace.segments[last[segment.model] + 1:index])
                found.append((segment.prompt_tokens - segment.cached_tokens, between))
            last[segment.model] = index
    return found


@pytest.mark.usefixtures("second_replicas")
def test_affinity_keeps_every_handoff_as_cached_as_on_one_replica() -> None:
    # Questions no server has seen (cold caches); the models take turns every 4 tokens.
    chunk = 4
    knobs = ["modes.random-switch.ratio=1", f"modes.random-switch.chunk={chunk}", "sampling.max_new_tokens=96",
             "big.speculative=null"]

    def four_at_once(profile_knobs: list[str], run: str) -> list[Trace]:
        questions = [f"Question {run}{index}: what is 12 * 3 + 7?" for index in range(4)]
        return solve_together(load_profile("demo", profile_knobs), "random-switch", questions)

    one = four_at_once(knobs, "a")
    two = four_at_once([*TWO, *knobs], "b")
    assert {call.url for trace in two for call in trace.calls} == {*SECOND.values(), "http://127.0.0.1:8101",
                                                                   "http://127.0.0.1:8102"}
    # A model's server already holds all it computed for the Session, to its last full cache block: only
    # that block's tail (its own last token among it, never fed back) and the other model's new tokens
    # are computed again, on one replica as on two. The other model may have written several chunks in
    # a row (random turns; one segment), so its tokens are counted from the trace.
    block = _block_size("http://127.0.0.1:8101")
    for traces in (one, two):
        uncached = _uncached_after_first(traces)
        assert len(uncached) >= 8 and all(computed <= block + between for computed, between in uncached), uncached


@pytest.mark.usefixtures("second_replicas")
def test_a_replica_killed_mid_eval_errors_its_samples_and_resume_completes_them_on_the_other(tmp_path: Path) -> None:
    out = tmp_path / "run"
    sets = [arg for item in ["small.endpoints=[http://127.0.0.1:8101,http://127.0.0.1:9101]",
                             "big.endpoints=[http://127.0.0.1:8102,http://127.0.0.1:9102]",
                             "small.served_name=demo-small", "big.served_name=demo-big", "big.speculative=null"]
            for arg in ("--set", item)]
    proc = subprocess.Popen([sys.executable, "-m", "splitcli", "eval", "--mode", "random-switch", "--n", "3",
                             "--concurrency", "4", "--out", str(out), *sets],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples = out / "samples.jsonl"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and (not samples.exists() or len(samples.read_text().splitlines()) < 2):
        time.sleep(0.05)
    servers.stop(server_records.find_record("demo-small-1"))  # replica B of the small model dies mid-eval
    _, err = proc.communicate(timeout=300)
    lines = [json.loads(line) for line in samples.read_text().splitlines()]
    errored = [line for line in lines if line["error"]]
    assert proc.returncode == 1 and len(lines) == 12 and errored, err
    # The replica that died, whichever way its end reached a request (no reply, or a refusal while stopping).
    assert all(line["error"].startswith("small model") and "http://127.0.0.1:9101" in line["error"]
               for line in errored), [line["error"] for line in errored]

    resumed = cli("eval", "--resume", str(out), "--json")
    assert resumed.code == 0, resumed.err
    # Found before any Session sent it anything, and said.
    assert ("warning: small replica http://127.0.0.1:9101 does not answer (ConnectError): Sessions from now on "
            "use the other 1 of 2 (it is tried again after 30 s)") in resumed.err
    assert resumed.json()["errored"] == 0  # type: ignore[index]
    redone = [json.loads(line) for line in samples.read_text().splitlines()][len(lines):]
    assert len(redone) == len(errored)
    assert {call["url"] for line in redone for call in line["trace"]["calls"] if call["model"] == "small"} == {
        "http://127.0.0.1:8101"}  # the live replica


def test_stop_ends_each_replica_by_its_name(second_replicas: str) -> None:
    result = cli("stop", "demo-big-1")  # demo-small-1 was killed above
    assert result.code == 0 and "stopped demo-big-1" in result.err
    names = {row["name"] for row in cli("ps", "--json").json()}  # type: ignore[union-attr]
    assert not names & set(SECOND) and {"demo-small", "demo-big"} <= names  # the first replicas still serve
