"""Entry states expire only once final (issue 7, item 10: status never lies), through Faust's
``agent.test_context()`` on memory:// and rocksdb://.

Given entries in every state, when the retention has passed and a ``sweep`` command arrives,
then the final ones (DELIVERED, DEAD, CANCELLED) are forgotten and the pending ones (DELAYED,
RETRYING, PENDING) keep their state however old it is; a sweep reads a bounded slice of the
partition and the next one goes on from where it stopped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import orjson
import pytest

from tests.unit.conftest import add_namespace
from tests.unit.test_delivery_agent import (
    NS,
    Harness,
    agent,
    entry,
    send,
)
from walstream.app import WalApp
from walstream.delivery.commands import COMMAND_KEY, SWEEP, cancel
from walstream.entry import Entry, WriteClock
from walstream.tables.entry_state import state_key
from walstream.targets.base import PermanentError, TransientError

pytestmark = pytest.mark.timeout(60)

HOUR_MS = 3_600_000


async def sweep(ctx: Any) -> None:
    await ctx.put(key=COMMAND_KEY, value=SWEEP, wait=True)


def state_of(wal: Any, entry_id: str) -> str | None:
    doc = wal.states.get("orders", entry_id)
    return None if doc is None else str(doc["state"])


async def age_past_retention(wal: Any) -> None:
    """Make every document written so far older than the retention (50 ms)."""
    wal.states.retention_ms = 50
    await asyncio.sleep(0.1)


async def test_final_states_past_retention_are_forgotten_pending_ones_are_kept(harness: Harness) -> None:
    wal, target, _ = harness
    clock = WriteClock()
    later_ms = int(time.time() * 1000) + HOUR_MS
    delivered, dead, cancelled = entry(1, clock, "D"), entry(2, clock, "X"), entry(3, clock, "C", due_at_ms=later_ms)
    delayed = entry(4, clock, "L", due_at_ms=later_ms)
    retrying, held = entry(5, clock, "A"), entry(6, clock, "A")
    target.script[dead.id] = [PermanentError("mapping conflict")]
    target.script[retrying.id] = [TransientError("timeout")] * 10
    async with agent(wal).test_context() as ctx:
        # Given: an entry in every state
        await send(ctx, delivered, dead, cancelled, delayed, retrying, held)
        await ctx.put(key=COMMAND_KEY, value=cancel("orders", cancelled.id, 0), wait=True)
        before = {e.id: state_of(wal, e.id) for e in (delivered, dead, cancelled, delayed, retrying, held)}
        assert before == {"e1": "DELIVERED", "e2": "DEAD", "e3": "CANCELLED", "e4": "DELAYED",
                          "e5": "RETRYING", "e6": "PENDING"}
        # When: all of them are older than the retention and the partition is swept
        await age_past_retention(wal)
        await sweep(ctx)
        # Then: the final ones are gone, the pending ones kept as they were
        after = {e: state_of(wal, e) for e in before}
    assert after == {"e1": None, "e2": None, "e3": None, "e4": "DELAYED", "e5": "RETRYING", "e6": "PENDING"}


async def test_final_states_within_retention_are_kept(harness: Harness) -> None:
    wal, _, _ = harness
    async with agent(wal).test_context() as ctx:
        await send(ctx, entry(1, WriteClock()))
        await sweep(ctx)  # the default retention: a day
        assert state_of(wal, "e1") == "DELIVERED"
        # with one minute of retention left the state is still kept
        wal.states.retention_ms = 60_000
        await sweep(ctx)
    assert state_of(wal, "e1") == "DELIVERED"


async def test_a_swept_id_written_again_is_a_new_entry(harness: Harness) -> None:
    """The retention is the duplicate-id window: past it, the same id is delivered again."""
    wal, target, _ = harness
    e = entry(1, WriteClock())
    async with agent(wal).test_context() as ctx:
        await send(ctx, e)
        await age_past_retention(wal)
        await sweep(ctx)
        assert state_of(wal, "e1") is None
        await send(ctx, e)
    assert [x.id for x in target.applied] == ["e1", "e1"]
    assert state_of(wal, "e1") == "DELIVERED"


async def test_a_sweep_reads_a_bounded_slice_and_the_next_goes_on_from_there(harness: Harness) -> None:
    wal, _, _ = harness
    clock = WriteClock()
    later_ms = int(time.time() * 1000) + HOUR_MS

    def named(name: str, **kw: Any) -> Entry:
        return dataclasses.replace(entry(0, clock, name, **kw), id=name)

    # keys sort by id (same length): the four delayed entries come first, then six delivered
    delayed = [named(f"a{i}", due_at_ms=later_ms) for i in range(4)]
    delivered = [named(f"b{i}") for i in range(6)]
    wal.states.sweep_limit = 4
    async with agent(wal).test_context() as ctx:
        await send(ctx, *delayed, *delivered)
        await age_past_retention(wal)

        def left() -> list[str]:
            return [e.id for e in delayed + delivered if state_of(wal, e.id) is not None]

        # first slice: the four delayed entries, all kept
        await sweep(ctx)
        assert left() == ["a0", "a1", "a2", "a3", "b0", "b1", "b2", "b3", "b4", "b5"]
        assert wal.states.mid_pass(0)
        # second slice goes on from there: four delivered entries forgotten, no more
        await sweep(ctx)
        assert left() == ["a0", "a1", "a2", "a3", "b4", "b5"]
        # third: the rest; the pass is complete and the next starts from the front
        await sweep(ctx)
        assert left() == ["a0", "a1", "a2", "a3"]
        assert not wal.states.mid_pass(0)
        # an entry final since, at the front, is found by the next pass
        await ctx.put(key=COMMAND_KEY, value=cancel("orders", "a0", 0), wait=True)
        await asyncio.sleep(0.1)
        await sweep(ctx)
        assert left() == ["a1", "a2", "a3"]


async def test_entry_states_written_by_the_ttl_expiring_version_read_back(wal: WalApp, store: str) -> None:
    """An earlier version expired the entries table by RocksDB TTL, which stores a timestamp in
    every value: its databases must still read back as they were written (an upgrade)."""
    if not store.startswith("rocksdb"):
        pytest.skip("RocksDB's on-disk format")
    from rocksdict import AccessType, Options, Rdict

    add_namespace(wal, NS)
    # Given partition 0's entries database as the earlier version wrote it (a day's TTL)
    path = wal.states.table.data.partition_path(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"id": "old", "ns": "orders", "key": "k", "state": "DELIVERED", "partition": 0, "offset": 7,
           "written_at_us": 1, "due_ms": None, "updated_ms": int(time.time() * 1000), "targets": {}}
    db = Rdict(str(path), Options(raw_mode=True), access_type=AccessType.with_ttl(86_400))
    db[state_key("orders", "old")] = orjson.dumps(doc)
    db.close()
    async with agent(wal).test_context() as ctx:
        # When this version opens it (in an event of partition 0: a cancel of the entry)
        await ctx.put(key=COMMAND_KEY, value=cancel("orders", "old", 0), wait=True)
    # Then the document reads back as written (a delivered entry is not cancelled)
    got = wal.states.get("orders", "old")
    assert got is not None and {k: got[k] for k in ("state", "offset")} == {"state": "DELIVERED", "offset": 7}
