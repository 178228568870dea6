"""The waves of big segments (gathering.py): as a pure rule (who waits, and when a wave goes), and
through the real engine on both demo pairs (the same traces, the waits said in the trace)."""

from __future__ import annotations

import asyncio

import pytest

from splitcli import demo
from splitcli.gathering import GatherConfig, Gathering
from splitcli.profiles import load_profile
from splitcli.solve import close_clients, open_clients, run_question
from splitcli.trace import Trace


async def _arrivals(gathering: Gathering, count: int, gap: float = 0.0) -> list[float]:
    async def one(index: int) -> float:
        await asyncio.sleep(index * gap)
        return await gathering.enter()

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def test_few_sessions_never_wait() -> None:
    gathering = Gathering(GatherConfig(share=0.25, wait_s=5))
    for _ in range(7):  # 0.25 x 7 < 2: a wave of one is no wave
        gathering.join()
    assert asyncio.run(_arrivals(gathering, 3)) == [0.0, 0.0, 0.0]
    assert gathering.waves == 0


def test_a_wave_goes_when_its_share_waits() -> None:
    gathering = Gathering(GatherConfig(share=0.25, wait_s=5))
    for _ in range(16):
        gathering.join()
    assert gathering.wave_size == 4
    waited = asyncio.run(_arrivals(gathering, 4, gap=0.05))
    assert gathering.waves == 1
    assert waited[0] >= 0.14 and waited[-1] < 0.05  # the first waited for the fourth, the fourth not at all
    assert max(waited) < 1  # nowhere near wait_s


def test_the_first_to_wait_long_enough_takes_the_others_along() -> None:
    gathering = Gathering(GatherConfig(share=0.5, wait_s=0.2))
    for _ in range(16):
        gathering.join()
    waited = asyncio.run(_arrivals(gathering, 3, gap=0.05))  # 3 of the 8 a wave needs
    assert gathering.waves == 1
    assert 0.19 <= waited[0] < 0.5 and waited[2] < waited[0]  # all three went when the first's time was up


def test_when_everyone_in_flight_waits_the_wave_goes() -> None:
    gathering = Gathering(GatherConfig(share=1.0, wait_s=5))

    async def scenario() -> list[float]:
        for _ in range(4):
            gathering.join()
        waiting = asyncio.gather(*(gathering.enter() for _ in range(3)))
        await asyncio.sleep(0.1)
        gathering.leave()  # the fourth session ended: the three waiting are all there is
        return list(await waiting)

    waited = asyncio.run(scenario())
    assert gathering.waves == 1 and all(0.09 <= w < 1 for w in waited)


def test_a_cancelled_wait_leaves_the_wave() -> None:
    gathering = Gathering(GatherConfig(share=0.5, wait_s=5))

    async def scenario() -> None:
        for _ in range(8):
            gathering.join()
        first = asyncio.ensure_future(gathering.enter())
        await asyncio.sleep(0.05)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert gathering._waiting == []

    asyncio.run(scenario())


def test_share_zero_turns_it_off() -> None:
    gathering = Gathering(GatherConfig(share=0, wait_s=5))
    for _ in range(64):
        gathering.join()
    assert asyncio.run(_arrivals(gathering, 2)) == [0.0, 0.0]


@pytest.mark.parametrize("mode", ["splitreason", "splitreason-stream"])
def test_concurrent_sessions_start_their_big_segments_in_waves_with_the_same_text(pair: str, mode: str) -> None:
    questions = demo.questions_of(pair)

    async def all_at_once(share: float) -> tuple[list[Trace], int]:
        profile = load_profile(pair, [f"gather.share={share}", "gather.wait_s=5"])
        clients = open_clients(profile, {"small": "small", "big": "big"})
        try:
            traces = await asyncio.gather(*(run_question(profile, item.question, mode, clients=clients)
                                            for item in questions))
            waves = sum(gathering.waves for gathering in clients["big"]._gatherings.values())
            return list(traces), waves
        finally:
            await close_clients(clients)

    alone, no_waves = asyncio.run(all_at_once(0))
    gathered, waves = asyncio.run(all_at_once(0.5))  # a wave: half the sessions in flight, or all that are left
    assert no_waves == 0 and waves >= 1
    assert [t.error for t in gathered] == [None] * len(questions)
    assert [t.text for t in gathered] == [t.text for t in alone]  # waves change when, never what
    assert [t.answer for t in gathered] == [item.answer for item in questions]
    waited = [s.waited for t in gathered for s in t.segments if s.model == "big"]
    assert any(w > 0 for w in waited)
    assert all(s.waited == 0 for t in gathered for s in t.segments if s.model == "small")
    assert all(s.waited == 0 for t in alone for s in t.segments)
    for trace in gathered:  # said in the trace, and not counted as the handoff's latency
        stats = trace.stats()
        assert stats["waited_seconds"] == round(sum(s.waited for s in trace.segments), 4)
        assert all(cost["latency_s"] is None or cost["latency_s"] >= 0 for cost in stats["handoff_costs"])
