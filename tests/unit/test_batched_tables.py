"""Table writes: RocksDB at once, the changelog in batches (walstream.faust_tables).

Every row written through walstream's tables is readable at once, its changelog record is
produced (in write order, deletions as tombstones) when the batch's records are sent, the
partition's persisted changelog offset follows the acknowledgements, and a refused changelog
record stops every later flush (no offset may be committed past it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.unit.conftest import build_wal
from walstream.app import WalApp
from walstream.delivery.event_context import bound_event
from walstream.tables import ordered


@pytest.fixture
def rocks(tmp_path: Path) -> WalApp:
    """A worker on rocksdb:// (memory:// writes take Faust's own path)."""
    return build_wal("rocksdb://", tmp_path)


class _Event:
    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(topic="wal.orders", partition=partition)


def rows(wal: WalApp, partition: int) -> list[tuple[bytes, bytes]]:
    return list(ordered.scan(wal.states.table, partition))


async def test_rows_are_readable_at_once_and_changelogged_in_write_order(wal: WalApp) -> None:
    table = wal.states.table
    sent: list[tuple[str, bytes, bytes | None, int]] = []
    real_send = wal.changelogs.send_batch

    async def recording(topic: str, partition: int, records: Sequence[tuple[bytes, bytes | None]]) -> Any:
        sent.extend((topic, key, value, partition) for key, value in records)
        return await real_send(topic, partition, records)

    wal.changelogs.send_batch = recording  # type: ignore[method-assign]
    event = _Event(2)
    with bound_event(event):
        table[b"a"] = b"1"
        table[b"b"] = b"2"
        table[b"a"] = b"3"
        assert table.get(b"a") == b"3" and table[b"b"] == b"2" and b"b" in table
        assert table.pop(b"b") == b"2"
        assert table.get(b"b") is None and b"b" not in table
        assert table.pop(b"missing", "default") == "default"
        with pytest.raises(KeyError):
            del table[b"missing"]
    if wal.settings.store.startswith("memory"):
        return  # memory:// takes Faust's own path
    assert rows(wal, 2) == [(b"a", b"3")]
    assert sent == []  # nothing produced before the batch's records are sent
    assert wal.changelogs.pending == 4
    await wal.changelogs.send_pending()
    topic = table.changelog_name
    assert sent == [(topic, b"a", b"1", 2), (topic, b"b", b"2", 2), (topic, b"a", b"3", 2), (topic, b"b", None, 2)]
    await wal.changelogs.flush()
    # the partition's RocksDB remembers the last acknowledged changelog offset (recovery starts there)
    store = table.data
    assert store._dbs[2].get(store.offset_key) == b"3"


async def test_a_refused_changelog_record_fails_every_later_flush(rocks: WalApp) -> None:
    wal = rocks

    async def refusing(topic: str, partition: int, records: Sequence[tuple[bytes, bytes | None]]) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_exception(RuntimeError("broker said no"))
        return len(records), fut

    wal.changelogs.send_batch = refusing  # type: ignore[method-assign]
    with bound_event(_Event(0)):
        wal.states.table[b"x"] = b"1"
    with pytest.raises(RuntimeError, match="not acknowledged"):
        await wal.changelogs.flush()
    with pytest.raises(RuntimeError, match="not acknowledged"):
        await wal.changelogs.flush()
    assert wal.states.table.data._dbs[0].get(wal.states.table.data.offset_key) is None


async def test_a_write_outside_an_event_is_refused(rocks: WalApp) -> None:
    with pytest.raises(RuntimeError, match="current event"):
        rocks.states.table[b"x"] = b"1"


async def test_a_send_that_raises_keeps_the_unsent_records_in_order(rocks: WalApp) -> None:
    """A changelog record the producer did not take (no metadata in time, producer stopping)
    is sent by the next call, in order, before rows written meanwhile: none is dropped
    between the table and its changelog. Batches here hold two records."""
    wal = rocks
    sent: list[bytes] = []
    real_send = wal.changelogs.send_batch
    fail_at = {b"c"}

    async def flaky(topic: str, partition: int, records: Sequence[tuple[bytes, bytes | None]]) -> Any:
        batch = list(records[:2])
        if fail_at & {k for k, _ in batch}:
            fail_at.clear()
            raise TimeoutError("no metadata in time")
        sent.extend(k for k, _ in batch)
        return await real_send(topic, partition, batch)

    wal.changelogs.send_batch = flaky  # type: ignore[method-assign]
    with bound_event(_Event(1)):
        for k in (b"a", b"b", b"c", b"d"):
            wal.states.table[k] = b"v"
    with pytest.raises(TimeoutError):
        await wal.changelogs.send_pending()
    assert sent == [b"a", b"b"] and wal.changelogs.pending == 2
    with bound_event(_Event(1)):
        wal.states.table[b"e"] = b"v"  # written after the failure: goes after c and d
    await wal.changelogs.flush()
    assert sent == [b"a", b"b", b"c", b"d", b"e"] and wal.changelogs.pending == 0
    # the persisted offset is the last record's (batches' base offsets + their places)
    store = wal.states.table.data
    assert store._dbs[1].get(store.offset_key) == b"4"


async def test_a_cancelled_send_keeps_the_unsent_records(rocks: WalApp) -> None:
    wal = rocks
    real_send = wal.changelogs.send_batch
    gate = asyncio.Event()

    async def slow(topic: str, partition: int, records: Sequence[tuple[bytes, bytes | None]]) -> Any:
        await gate.wait()
        return await real_send(topic, partition, records)

    wal.changelogs.send_batch = slow  # type: ignore[method-assign]
    for p in (0, 1):
        with bound_event(_Event(p)):
            wal.states.table[b"k%d" % p] = b"v"
    task = asyncio.ensure_future(wal.changelogs.send_pending())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert wal.changelogs.pending == 2, "nothing taken is dropped"
    wal.changelogs.send_batch = real_send  # type: ignore[method-assign]
    await wal.changelogs.flush()
    assert wal.changelogs.pending == 0
