"""Readiness and liveness (walstream.health): what the probes say, and that the delivery
agent and the scheduler mark their progress where the liveness probe looks."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from tests.unit.conftest import RecordingTarget
from tests.unit.test_delivery_agent import Harness, agent, entry, send
from walstream.entry import Entry, WriteClock
from walstream.health import DELIVERY, SCHEDULER, Liveness
from walstream.targets.base import Outcomes

pytestmark = pytest.mark.timeout(30)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_batch_held_past_the_limit_is_stuck_until_done() -> None:
    clock = Clock()
    live = Liveness(stuck_after_s=60, clock=clock)
    live.busy(DELIVERY)
    clock.now += 60
    assert live.stuck() == []  # at the limit: not yet
    clock.now += 1
    assert live.stuck() == ["delivery: one batch in hand for 61 s"]
    live.done(DELIVERY)
    assert live.stuck() == []


def test_a_loop_silent_past_the_limit_is_stuck_until_it_runs_again() -> None:
    clock = Clock()
    live = Liveness(stuck_after_s=10, clock=clock)
    assert live.stuck() == []  # never ran: judged by readiness, not liveness
    live.beat(SCHEDULER)
    clock.now += 11
    assert live.stuck() == ["scheduler: last ran 11 s ago"]
    live.beat(SCHEDULER)
    assert live.stuck() == []


class HangingTarget(RecordingTarget):
    """Holds every call until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def apply(self, entries: Sequence[Entry]) -> Outcomes:
        self.entered.set()
        await self.release.wait()
        return await super().apply(entries)


async def test_the_delivery_agent_marks_its_batch_in_hand(harness: Harness) -> None:
    wal, _, _ = harness
    clock = Clock()
    wal.liveness._clock = clock  # the agent's marks, read against a clock the test moves
    hanging = HangingTarget()
    wal.targets.get = lambda cfg: hanging  # type: ignore[method-assign]
    async with agent(wal).test_context() as ctx:
        sending = asyncio.ensure_future(send(ctx, entry(1, WriteClock())))
        await asyncio.wait_for(hanging.entered.wait(), 10)
        clock.now += wal.liveness.stuck_after_s + 1
        assert [line.split(":")[0] for line in wal.liveness.stuck()] == [DELIVERY]
        hanging.release.set()
        await asyncio.wait_for(sending, 10)
    assert [e.id for e in hanging.applied] == ["e1"]
    assert wal.liveness.stuck() == []


def test_not_ready_until_tables_are_recovered_once(harness: Harness) -> None:
    wal, _, _ = harness
    assert wal.not_ready() == ["tables not recovered and partitions not sought yet"]
    wal.faust.tables.recovery.completed.set()
    assert wal.not_ready() == []
