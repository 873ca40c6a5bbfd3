"""Targets whose entries of one key commute (last writer wins by write time: Cassandra,
Elasticsearch, noop) get a key's entries together: a batch's entries of one key in one call,
and a released run of held entries in one call, not one call per entry. Per-key order still
holds where it matters: one blocker per key, nothing applied twice, nothing lost, and the
held entries behind a failure wait for it. Through ``agent.test_context()`` on memory:// and
rocksdb://."""

from __future__ import annotations

import pytest

from tests.unit.conftest import Harness
from tests.unit.test_delivery_agent import agent, entry, letters, tick, timers
from tests.unit.test_key_order_release import (
    applied_ids,
    held_ids,
    order_tables_empty,
    send_together,
    tick_until,
    timers_of_key,
)
from walstream.entry import WriteClock
from walstream.targets.base import PermanentError, TransientError

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def commuting(harness: Harness) -> Harness:
    harness[1].commutes = True
    return harness


async def test_a_keys_entries_of_one_batch_go_out_in_one_call(commuting: Harness) -> None:
    wal, target, _ = commuting
    clock = WriteClock()
    a = [entry(i, clock, "A") for i in range(1, 6)]
    async with agent(wal).test_context() as ctx:
        await send_together(ctx, *a)
    assert target.batches == [["e1", "e2", "e3", "e4", "e5"]]
    assert applied_ids(commuting) == ["e1", "e2", "e3", "e4", "e5"]
    assert order_tables_empty(wal)


async def test_a_released_run_goes_out_in_one_call(commuting: Harness) -> None:
    wal, target, _ = commuting
    clock = WriteClock()
    a = [entry(i, clock, "A") for i in range(1, 8)]
    target.down_for_calls = 1  # an outage: the first call fails as a whole
    async with agent(wal).test_context() as ctx:
        await send_together(ctx, *a)
        # one blocker (e1, a retry timer), the others held behind it
        assert [t["entry"]["id"] for t in timers_of_key(wal, "A")] == ["e1"]
        assert held_ids(wal) == ["e2", "e3", "e4", "e5", "e6", "e7"]
        await tick_until(ctx, wal, lambda: len(applied_ids(commuting)) == 7)
    # the retried blocker, then its whole run in one call (the waves path took one call each)
    assert target.batches[1:] == [["e1"], ["e2", "e3", "e4", "e5", "e6", "e7"]]
    assert applied_ids(commuting) == ["e1", "e2", "e3", "e4", "e5", "e6", "e7"]
    assert order_tables_empty(wal)
    assert timers(wal) == []


async def test_failures_in_one_call_leave_one_blocker_and_hold_the_later_ones(commuting: Harness) -> None:
    wal, target, producer = commuting
    clock = WriteClock()
    a1, a2, a3, a4, a5 = (entry(i, clock, "A") for i in range(1, 6))
    b1 = entry(6, clock, "B")
    target.script[a2.id] = [TransientError("blip")]
    target.script[a4.id] = [TransientError("blip")]
    async with agent(wal).test_context() as ctx:
        await send_together(ctx, a1, a2, a3, a4, a5, b1)
        # Then a2, the first to fail, is the key's only blocker (one retry timer); a4, which
        # failed after it, waits behind it; a1, a3, a5 and B were applied
        assert [t["entry"]["id"] for t in timers_of_key(wal, "A")] == ["e2"]
        assert held_ids(wal) == ["e4"]
        assert sorted(applied_ids(commuting)) == ["e1", "e3", "e5", "e6"]
        # When a2's retry succeeds, Then a4 follows; each applied exactly once
        await tick_until(ctx, wal, lambda: len(applied_ids(commuting)) == 6)
    assert sorted(applied_ids(commuting)) == ["e1", "e2", "e3", "e4", "e5", "e6"]
    assert letters(producer) == {}
    assert order_tables_empty(wal)
    assert timers(wal) == []


async def test_a_failure_inside_a_released_run_blocks_the_key_again(commuting: Harness) -> None:
    wal, target, producer = commuting
    clock = WriteClock()
    a = [entry(i, clock, "A") for i in range(1, 7)]
    target.down_for_calls = 1
    target.script["e3"] = [TransientError("blip")]
    target.script["e5"] = [PermanentError("mapping conflict")]
    async with agent(wal).test_context() as ctx:
        await send_together(ctx, *a)
        await tick(ctx)  # the outage is over: e1 retried, its run e2..e6 released in one call
        await tick_until(ctx, wal, lambda: len(applied_ids(commuting)) == 5)
    # e3 failed in the run: it blocked the key; e4 and e6 went through with it (they commute),
    # e5 failed for good and was dead-lettered at once (a dead entry blocks nothing)
    assert sorted(applied_ids(commuting)) == ["e1", "e2", "e3", "e4", "e6"]
    assert set(letters(producer)) == {"e5"}
    assert order_tables_empty(wal)
    assert timers(wal) == []


async def test_a_target_that_does_not_commute_still_gets_one_entry_per_key_per_call(harness: Harness) -> None:
    wal, target, _ = harness
    assert target.commutes is False
    clock = WriteClock()
    a = [entry(i, clock, "A") for i in range(1, 4)]
    async with agent(wal).test_context() as ctx:
        await send_together(ctx, *a)
    assert target.batches == [["e1"], ["e2"], ["e3"]]
