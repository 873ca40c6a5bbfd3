"""The tables' RocksDB store (walstream.faust_tables.PromptRocksDBStore): a rebalance that
closes none of a table's databases runs no garbage collection (Faust's store ran one per table
on every rebalance: ~0.1 s each, most of a restarted worker's wait before recovery), and one
that drops a database still does, so that the database is closed."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from faust.stores.memory import Store as MemoryStore
from faust.types import TP

from tests.unit.conftest import build_wal
from walstream.faust_tables import PromptRocksDBStore


def test_every_table_of_a_rocksdb_worker_uses_the_prompt_store(tmp_path: Path) -> None:
    wal = build_wal("rocksdb://", tmp_path)
    tables = [wal.schedule.table, wal.key_order.blocked, wal.key_order.held, wal.states.table, wal.dlq_index.table,
              wal.groups.table]
    assert all(isinstance(t.faust_table.data, PromptRocksDBStore) for t in tables)


def test_a_memory_worker_keeps_faust_s_memory_store(tmp_path: Path) -> None:
    wal = build_wal("memory://", tmp_path)
    assert isinstance(wal.states.table.faust_table.data, MemoryStore)


def test_a_rebalance_collects_garbage_only_when_it_drops_a_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal = build_wal("rocksdb://", tmp_path)
    table = wal.states.table.faust_table
    store = table.data
    collections: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda *a: collections.append(1) or 0)
    store._db_for_partition(2)  # open, as an assignment would
    [changelog] = table.changelog_topic.topics

    store.revoke_partitions(table, set())
    store.revoke_partitions(table, {TP(changelog, 5)})  # not open here
    store.revoke_partitions(table, {TP("wal.orders", 2)})  # another topic's partition
    assert collections == [] and 2 in store._dbs

    store.revoke_partitions(table, {TP(changelog, 2), TP(changelog, 5)})
    assert collections and 2 not in store._dbs
