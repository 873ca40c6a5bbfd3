"""Duplicates counted at the target, through Faust's ``agent.test_context()`` on memory:// and
rocksdb://.

Given two records with the same entry id on a WAL topic (a producer's retry, a client writing
again, another producer), when the agent reads both, then the target receives the entry exactly
once — whether the first copy was delivered, is in the same batch, is delayed, retrying or held
behind its key — and never before its due time.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from tests.unit.conftest import Harness
from tests.unit.test_delivery_agent import agent, entry, send, tick, timers
from tests.unit.test_key_order_release import send_together, tick_until
from walstream.entry import Entry, WriteClock
from walstream.targets.base import TransientError

pytestmark = pytest.mark.timeout(60)


def applied_count(harness: Harness) -> Counter[str]:
    """How many times the target applied each entry id (the raw applies, not the answers)."""
    return Counter(e.id for e in harness[1].applied)


async def test_the_same_id_twice_in_one_batch_is_applied_once(harness: Harness) -> None:
    wal, _, _ = harness
    e = entry(1, WriteClock(), "A")
    async with agent(wal).test_context() as ctx:
        await send_together(ctx, e, e, entry(2, WriteClock(), "B"))
    assert applied_count(harness) == {"e1": 1, "e2": 1}
    doc = wal.states.get("orders", "e1")
    assert doc is not None and doc["state"] == "DELIVERED" and doc["offset"] == 0


async def test_the_same_id_again_with_another_payload_keeps_the_first(harness: Harness) -> None:
    wal, target, _ = harness
    first = entry(1, WriteClock(), "A")
    again = Entry(id=first.id, namespace="orders", key="A", payload={"n": "changed"},
                  written_at_us=WriteClock().now_us())
    async with agent(wal).test_context() as ctx:
        await send_together(ctx, first, again)
        await send(ctx, again)
    assert applied_count(harness) == {"e1": 1}
    assert target.applied[0].payload == first.payload


async def test_the_same_id_twice_while_the_first_is_held_is_applied_once(harness: Harness) -> None:
    wal, target, _ = harness
    clock = WriteClock()
    blocker, e = entry(1, clock, "A"), entry(2, clock, "A")
    target.script[blocker.id] = [TransientError("blip")]
    async with agent(wal).test_context() as ctx:
        # Given e2 held behind e1's retry, When e2's record comes again
        await send(ctx, blocker, e, e)
        await tick_until(ctx, wal, lambda: len(target.applied) >= 2)
        for _ in range(3):  # and whatever else is due
            await tick(ctx)
    assert applied_count(harness) == {"e1": 1, "e2": 1}
    assert timers(wal) == []


async def test_the_same_id_twice_while_the_first_is_retrying_is_applied_once(harness: Harness) -> None:
    wal, target, _ = harness
    e = entry(1, WriteClock(), "A")
    target.script[e.id] = [TransientError("blip")]
    async with agent(wal).test_context() as ctx:
        await send(ctx, e, e)
        for _ in range(4):
            await tick(ctx)
    assert applied_count(harness) == {"e1": 1}
    assert timers(wal) == []


async def test_the_same_delayed_id_twice_is_applied_once_never_early(harness: Harness) -> None:
    wal, target, _ = harness
    async with agent(wal).test_context() as ctx:
        # due well after the three records are processed, even on a loaded machine (150 ms
        # was once not enough under a parallel test run: "applied == []" read it due already)
        due_ms = int(time.time() * 1000) + 1000
        e = entry(1, WriteClock(), "A", due_at_ms=due_ms)
        # Given a delayed entry, When its record comes again (with and without its due time)
        undelayed = Entry(id=e.id, namespace="orders", key="A", payload=e.payload, written_at_us=e.written_at_us)
        await send(ctx, e, e, undelayed)
        assert target.applied == []
        await tick(ctx, after_s=max(0.0, due_ms / 1000 - time.time()) + 0.01)
        await tick(ctx)
    assert applied_count(harness) == {"e1": 1}
    assert target.applied_at[0] * 1000 >= due_ms
    assert timers(wal) == []
