"""Session affinity over replicas: every call of one Session goes to one replica per model (its
prefix cache is there), Sessions spread over the replicas, and each request carries the session id
routers hash (X-Session-ID). Two URLs of each running demo server stand in for two replicas."""

from __future__ import annotations

import asyncio

import pytest

from splitcli import demo
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
