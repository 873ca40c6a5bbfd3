"""Mutation groups through Faust's ``agent.test_context()``, on memory:// and rocksdb://.

Given members of a group (from any request, in any order) and its commit marker, nothing of
the group is applied before the marker and every member are here; then every member is
applied to every target in seq order, written at the marker's write time (seq order is also
last-writer-wins order); a member that keeps failing dead-letters the rest of the group at
that target; a group not released by its deadline is aborted with nothing applied.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from tests.unit.conftest import Harness, add_namespace
from tests.unit.test_delivery_agent import agent, letters, send, tick
from walstream.app import WalApp
from walstream.delivery.commands import COMMAND_KEY, SWEEP, cancel
from walstream.delivery.deliverer import RELEASE_RUN
from walstream.entry import Entry, WriteClock
from walstream.tables import ordered
from walstream.tables.groups import GroupState
from walstream.targets.base import KeyRuns, PermanentError, TransientError

pytestmark = pytest.mark.timeout(120)

CLOCK = WriteClock()


def member(gid: str, seq: int, eid: str | None = None, ns: str = "orders") -> Entry:
    return Entry(id=eid or f"{gid}-m{seq}", namespace=ns, key=gid, payload={"seq": seq},
                 written_at_us=CLOCK.now_us(), group={"id": gid, "seq": seq})


def marker(gid: str, size: int, eid: str | None = None, ns: str = "orders") -> Entry:
    return Entry(id=eid or f"{gid}-commit", namespace=ns, key=gid, payload=None,
                 written_at_us=CLOCK.now_us(), group={"id": gid, "commit": True, "size": size})


def header(wal: WalApp, gid: str, ns: str = "orders") -> dict[str, Any]:
    doc = wal.groups.header(ns, gid)
    assert doc is not None
    return doc


def staged_rows(wal: WalApp) -> list[bytes]:
    return [k for k, _ in ordered.scan(wal.groups.table, 0, start=b"m|", stop=b"m|\xff")]


def state(wal: WalApp, eid: str) -> dict[str, Any]:
    doc = wal.states.get("orders", eid)
    assert doc is not None
    return doc


def ended(wal: WalApp, state: str) -> float | None:
    return wal.metrics.registry.get_sample_value("walstream_groups_ended_total",
                                                 {"namespace": "orders", "state": state})


def applied(harness: Harness) -> list[str]:
    return [e.id for e in harness[1].applied]


async def sweep(ctx: Any) -> None:
    await ctx.put(key=COMMAND_KEY, value=SWEEP, wait=True)


async def tick_until(ctx: Any, done: Any, ticks: int = 50) -> None:
    for _ in range(ticks):
        if done():
            return
        await tick(ctx, after_s=0.02)


async def test_nothing_is_applied_before_the_marker_then_all_in_seq_order(harness: Harness) -> None:
    wal, target, producer = harness
    # members from different requests, out of seq order
    m2, m0, m1 = member("g1", 2), member("g1", 0), member("g1", 1)
    async with agent(wal).test_context() as ctx:
        await send(ctx, m2, m0, m1)
        assert applied(harness) == []
        assert header(wal, "g1")["state"] == GroupState.PENDING
        assert state(wal, m0.id)["state"] == "PENDING"
        commit = marker("g1", 3)
        await send(ctx, commit)
    assert applied(harness) == ["g1-m0", "g1-m1", "g1-m2"]
    # written at the marker's write time, in seq order (last writer wins agrees with seq)
    stamps = [e.written_at_us for e in target.applied]
    assert stamps == [commit.written_at_us, commit.written_at_us + 1, commit.written_at_us + 2]
    h = header(wal, "g1")
    assert h["state"] == GroupState.APPLIED and set(h["targets"].values()) == {"APPLIED"}
    assert staged_rows(wal) == []
    assert {state(wal, m.id)["state"] for m in (m0, m1, m2)} == {"DELIVERED"}
    assert state(wal, commit.id)["state"] == "DELIVERED"
    assert letters(producer) == {}
    assert ended(wal, "APPLIED") == 1


async def test_a_marker_before_its_members_waits_for_the_last_one(harness: Harness) -> None:
    wal, _, _ = harness
    async with agent(wal).test_context() as ctx:
        await send(ctx, member("g2", 1), marker("g2", 3), member("g2", 0))
        assert applied(harness) == []
        assert header(wal, "g2")["state"] == GroupState.COMMITTED
        await send(ctx, member("g2", 2))
    assert applied(harness) == ["g2-m0", "g2-m1", "g2-m2"]


@pytest.mark.parametrize("runs", list(KeyRuns), ids=lambda r: r.value)
async def test_a_member_failing_transiently_holds_the_rest_until_it_succeeds(harness: Harness, runs: KeyRuns) -> None:
    """Also with a target that takes a key's entries in one call: a group's members still go
    one per call (a member's failure must stop the rest before they are sent)."""
    wal, target, producer = harness
    target.key_runs = runs
    target.script["g3-m1"] = [TransientError("blip"), TransientError("blip")]
    async with agent(wal).test_context() as ctx:
        await send(ctx, *(member("g3", i) for i in range(4)), marker("g3", 4))
        assert applied(harness) == ["g3-m0"]
        assert header(wal, "g3")["state"] == GroupState.COMMITTED
        await tick_until(ctx, lambda: len(applied(harness)) == 4)
    assert applied(harness) == ["g3-m0", "g3-m1", "g3-m2", "g3-m3"]
    assert header(wal, "g3")["state"] == GroupState.APPLIED
    assert letters(producer) == {}


@pytest.mark.parametrize("runs", list(KeyRuns), ids=lambda r: r.value)
@pytest.mark.parametrize("errors", [[PermanentError("mapping")], [TransientError("blip")] * 3],
                         ids=["permanent", "attempts-exhausted"])
async def test_a_member_that_keeps_failing_dead_letters_the_rest_of_the_group(
    harness: Harness, errors: list[Any], runs: KeyRuns
) -> None:
    wal, target, producer = harness
    target.key_runs = runs
    target.script["g4-m1"] = list(errors)
    async with agent(wal).test_context() as ctx:
        await send(ctx, *(member("g4", i) for i in range(4)), marker("g4", 4))
        await tick_until(ctx, lambda: set(letters(producer)) >= {"g4-m1", "g4-m2", "g4-m3"})
    assert applied(harness) == ["g4-m0"]
    assert set(letters(producer)) == {"g4-m1", "g4-m2", "g4-m3"}
    assert "group 'g4' failed at member seq 1" in letters(producer)["g4-m3"]["message"]
    h = header(wal, "g4")
    assert h["state"] == GroupState.DEAD_LETTERED and "seq 1" in h["error"]
    assert {state(wal, f"g4-m{i}")["state"] for i in (1, 2, 3)} == {"DEAD"}
    assert ended(wal, "DEAD_LETTERED") == 1 and ended(wal, "APPLIED") is None
    assert list(ordered.scan(wal.key_order.held, 0)) == [] and list(ordered.scan(wal.key_order.blocked, 0)) == []


async def test_a_group_without_a_marker_is_aborted_at_its_deadline(harness: Harness) -> None:
    wal, _, producer = harness
    add_namespace(wal, {"name": "orders", "targets": [{"type": "noop"}], "group_timeout_s": 1,
                        "retry": {"initial_delay_ms": 1, "max_delay_ms": 5, "max_attempts": 3, "jitter": 0}})
    async with agent(wal).test_context() as ctx:
        await send(ctx, member("g5", 0), member("g5", 1))
        await sweep(ctx)
        assert header(wal, "g5")["state"] == GroupState.PENDING  # not yet past its deadline
        await asyncio.sleep(1.1)
        # past it, but the partition is not read to its end: a marker may still be on its way
        wal.deliverer.caught_up = lambda ns, partition: False
        await sweep(ctx)
        assert header(wal, "g5")["state"] == GroupState.PENDING
        wal.deliverer.caught_up = lambda ns, partition: True
        await sweep(ctx)
        h = header(wal, "g5")
        assert h["state"] == GroupState.ABORTED and "no commit marker" in h["error"]
        assert staged_rows(wal) == []
        assert state(wal, "g5-m0")["state"] == "CANCELLED"
        # a marker (or member) arriving after that applies nothing
        await send(ctx, marker("g5", 2), member("g5", 2))
        await tick(ctx)
    assert applied(harness) == []
    assert header(wal, "g5")["state"] == GroupState.ABORTED
    assert state(wal, "g5-commit")["state"] == "CANCELLED"
    assert ended(wal, "ABORTED") == 1
    assert letters(producer) == {}


async def test_a_repeated_seq_is_dead_lettered_and_a_repeated_record_ignored(harness: Harness) -> None:
    wal, _, producer = harness
    first = member("g6", 0)
    async with agent(wal).test_context() as ctx:
        await send(ctx, first, first, member("g6", 0, eid="other"), member("g6", 1), marker("g6", 2))
    assert applied(harness) == ["g6-m0", "g6-m1"]
    assert set(letters(producer)) == {"other"}
    assert "seq 0 of group 'g6' is already entry 'g6-m0'" in letters(producer)["other"]["message"]


async def test_a_member_beyond_the_markers_size_dead_letters_the_whole_group(harness: Harness) -> None:
    wal, _, producer = harness
    async with agent(wal).test_context() as ctx:
        await send(ctx, member("g7", 0), member("g7", 2), marker("g7", 2))
    assert applied(harness) == []
    assert set(letters(producer)) == {"g7-m0", "g7-m2"}
    assert header(wal, "g7")["state"] == GroupState.DEAD_LETTERED
    assert state(wal, "g7-commit")["state"] == "DEAD"


async def test_a_marker_with_another_size_is_dead_lettered(harness: Harness) -> None:
    wal, _, producer = harness
    async with agent(wal).test_context() as ctx:
        await send(ctx, marker("g8", 2), marker("g8", 3, eid="g8-other"), member("g8", 0), member("g8", 1))
    assert applied(harness) == ["g8-m0", "g8-m1"]
    assert set(letters(producer)) == {"g8-other"}


async def test_a_member_cannot_be_cancelled_alone(harness: Harness) -> None:
    wal, _, _ = harness
    async with agent(wal).test_context() as ctx:
        await send(ctx, member("g9", 0), member("g9", 1))
        await ctx.put(key=COMMAND_KEY, value=cancel("orders", "g9-m0", 0), wait=True)
        await send(ctx, marker("g9", 2))
    assert applied(harness) == ["g9-m0", "g9-m1"]


async def test_a_group_larger_than_a_release_run_is_applied_whole_in_order(harness: Harness) -> None:
    wal, _, _ = harness
    size = RELEASE_RUN * 3 + 7
    members = [member("big", i) for i in range(size)]
    async with agent(wal).test_context() as ctx:
        await send(ctx, *reversed(members), marker("big", size))
        await tick_until(ctx, lambda: len(applied(harness)) == size)
    assert applied(harness) == [m.id for m in members]
    assert header(wal, "big")["state"] == GroupState.APPLIED
    assert list(ordered.scan(wal.key_order.held, 0)) == [] and list(ordered.scan(wal.key_order.blocked, 0)) == []


async def test_group_members_never_queue_behind_an_ordinary_key_of_the_same_name(harness: Harness) -> None:
    wal, target, _ = harness
    plain = Entry(id="plain", namespace="orders", key="g10", payload={}, written_at_us=CLOCK.now_us())
    target.script["plain"] = [TransientError("blip")]
    async with agent(wal).test_context() as ctx:
        await send(ctx, plain, member("g10", 0), marker("g10", 1))
        assert applied(harness) == ["g10-m0"]  # not held behind "plain", retrying on key g10
        await tick_until(ctx, lambda: "plain" in applied(harness))
    assert orjson.loads(orjson.dumps(header(wal, "g10")))["state"] == GroupState.APPLIED


def drop_row(table: Any, key: bytes) -> None:
    """Remove a row from the store underneath, as if its write had been lost in a crash."""
    dbs = getattr(table.data, "_dbs", None)
    if dbs is None:
        table.data.data.pop(key, None)
    else:
        for db in dbs.values():
            db.delete(key)


async def test_members_read_again_after_a_crash_that_lost_the_header_are_counted(harness: Harness) -> None:
    from walstream.tables.groups import header_key

    wal, _, _ = harness
    m0, m1 = member("g11", 0), member("g11", 1)
    async with agent(wal).test_context() as ctx:
        await send(ctx, m0, m1)
        assert header(wal, "g11")["count"] == 2
        # a crash kept the member rows but not the header (a subset of a batch's writes):
        # the records are read again from the last committed offset
        drop_row(wal.groups.table, header_key("orders", "g11"))
        [part] = wal.offsets._partitions.values()
        part.next = part.done = 0
        ctx.sent_offset = 0
        await send(ctx, m0, m1)
        assert header(wal, "g11")["count"] == 2
        await send(ctx, member("g11", 2), marker("g11", 3))
    assert applied(harness) == ["g11-m0", "g11-m1", "g11-m2"]


class FailsOnce(Exception):
    pass


async def test_a_release_interrupted_midway_is_made_again_from_its_first_member(harness: Harness) -> None:
    # the batch applying a group larger than a run fails midway (as a crash would stop it):
    # what it wrote of the key's order (a blocker, held members) must not strand the group
    wal, target, _ = harness
    wal.deliverer.retry_pause_s = 0.01
    real = target.apply
    calls = 0

    async def apply(entries: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 50:
            raise FailsOnce("the worker stops here")
        return await real(entries)

    target.apply = apply  # type: ignore[method-assign]
    size = RELEASE_RUN * 2 + 50
    members = [member("g12", i) for i in range(size)]
    async with agent(wal).test_context() as ctx:
        await send(ctx, *members, marker("g12", size))
        await tick_until(ctx, lambda: header(wal, "g12")["state"] == GroupState.APPLIED, ticks=100)
    ids = [m.id for m in members]
    assert applied(harness)[-size:] == ids  # applied again from its first member, in order
    assert list(ordered.scan(wal.key_order.held, 0)) == [] and list(ordered.scan(wal.key_order.blocked, 0)) == []


async def test_members_read_again_after_their_group_was_released_are_not_dead_lettered(harness: Harness) -> None:
    wal, _, producer = harness
    records = [member("g13", 0), member("g13", 1), marker("g13", 2)]
    async with agent(wal).test_context() as ctx:
        await send(ctx, *records)
        assert header(wal, "g13")["state"] == GroupState.APPLIED and staged_rows(wal) == []
        [part] = wal.offsets._partitions.values()
        part.next = part.done = 0
        ctx.sent_offset = 0
        await send(ctx, *records)  # a crash before the offsets were committed: read again
    assert letters(producer) == {}
    assert {state(wal, r.id)["state"] for r in records} == {"DELIVERED"}


async def test_a_member_cancelled_before_it_arrived_aborts_its_group(harness: Harness) -> None:
    wal, _, producer = harness
    async with agent(wal).test_context() as ctx:
        await ctx.put(key=COMMAND_KEY, value=cancel("orders", "g14-m1", 0), wait=True)
        await send(ctx, member("g14", 0), member("g14", 1), marker("g14", 2))
    assert applied(harness) == []
    h = header(wal, "g14")
    assert h["state"] == GroupState.ABORTED and "'g14-m1' was cancelled" in h["error"]
    assert {state(wal, i)["state"] for i in ("g14-m0", "g14-m1", "g14-commit")} == {"CANCELLED"}
    assert letters(producer) == {}


async def test_a_marker_repeated_under_another_id_follows_its_group(harness: Harness) -> None:
    wal, _, _ = harness
    async with agent(wal).test_context() as ctx:
        await send(ctx, member("g15", 0), marker("g15", 2), marker("g15", 2, eid="g15-again"), member("g15", 1))
    assert applied(harness) == ["g15-m0", "g15-m1"]
    assert state(wal, "g15-commit")["state"] == state(wal, "g15-again")["state"] == "DELIVERED"
