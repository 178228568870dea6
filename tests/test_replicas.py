"""Replicas: `serve` launches several servers of a model, and Session affinity keeps every call of one
Session on one replica per model (its prefix cache is there) while Sessions spread over the
replicas; each request carries the session id routers hash (X-Session-ID). Two URLs of one running
demo server stand in for two replicas where only our own bookkeeping is checked; real second
replicas (ports + 1000) where the servers' own metrics are."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Severable, cli

from splitcli import demo
from splitcli.engine_wire import metric_totals
from splitcli.profiles import load_profile
from splitcli.solve import close_clients, open_clients, run_question
from splitcli.trace import Trace

pytestmark = pytest.mark.usefixtures("demo_servers")
REPLICAS = {"small": ["http://127.0.0.1:8101", "http://localhost:8101"],
            "big": ["http://127.0.0.1:8102", "http://localhost:8102"]}


def test_each_session_keeps_one_replica_per_model_and_sessions_spread_over_them() -> None:
    profile = load_profile("demo", [f"{role}.endpoints=[{','.join(urls)}]" for role, urls in REPLICAS.items()]
                           + ["small.served_name=demo-small", "big.served_name=demo-big", "big.speculative=null"])

    async def four_at_once() -> list[Trace]:
        clients = open_clients(profile, {"small": "small", "big": "big"})
        try:
            return list(await asyncio.gather(*(run_question(profile, item.question, "splitreason", clients=clients)
                                               for item in demo.QUESTIONS)))
        finally:
            await close_clients(clients)

    traces = asyncio.run(four_at_once())
    assert [trace.error for trace in traces] == [None] * 4
    assert [trace.answer for trace in traces] == [item.answer for item in demo.QUESTIONS]
    for role, urls in REPLICAS.items():
        pinned = [{call.url for call in trace.calls if call.model == role} for trace in traces]
        assert all(len(used) == 1 for used in pinned), pinned  # one replica for all of a session's calls
        assert sorted(used.pop() for used in pinned) == sorted(urls * 2)  # two sessions on each
    assert len({trace.session_id for trace in traces}) == 4


def test_a_replica_dying_under_a_session_fails_it_and_later_sessions_take_the_live_one() -> None:
    question = demo.QUESTIONS[0]

    async def go() -> tuple[Trace, Trace, str]:
        async with Severable(8101) as relay:  # replica A: a relay to demo-small that we cut; B: the server itself
            profile = load_profile("demo", [f"small.endpoints=[{relay.url},http://localhost:8101]",
                                            "big.endpoints=[http://127.0.0.1:8102]", "small.served_name=demo-small",
                                            "big.served_name=demo-big", "big.speculative=null"])
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

    async def four_at_once() -> list[Trace]:
        clients = open_clients(profile, {"small": "small", "big": "big"})
        try:
            return list(await asyncio.gather(*(run_question(profile, item.question, "random-switch", clients=clients)
                                               for item in demo.QUESTIONS)))
        finally:
            await close_clients(clients)

    before = {url: _requests(url) for url in urls}
    traces = asyncio.run(four_at_once())
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


def test_stop_ends_each_replica_by_its_name(second_replicas: str) -> None:
    for name in SECOND:
        result = cli("stop", name)
        assert result.code == 0 and f"stopped {name}" in result.err
    names = {row["name"] for row in cli("ps", "--json").json()}  # type: ignore[union-attr]
    assert not names & set(SECOND) and {"demo-small", "demo-big"} <= names  # the first replicas still serve
