"""What ``GET /metrics`` shows (walstream.metrics, walstream.gauges), read from the worker's
registry after the delivery agent did the work, on memory:// and rocksdb://."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from faust.types import TP
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.conftest import build_wal
from tests.unit.test_delivery_agent import Harness, agent, entry, send, tick
from walstream.entry import WriteClock
from walstream.gauges import WorkerGauges
from walstream.targets.base import TransientError

pytestmark = pytest.mark.timeout(60)


def samples(registry: Any, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples called ``name``, by their sorted labels."""
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


async def test_latency_and_lateness_are_told_apart(harness: Harness) -> None:
    wal, _, _ = harness
    clock = WriteClock()
    async with agent(wal).test_context() as ctx:
        await send(ctx, entry(1, clock), entry(2, clock))
        due_ms = int(time.time() * 1000) + 200
        await send(ctx, entry(3, clock, due_at_ms=due_ms))
        await tick(ctx, after_s=max(0.0, due_ms / 1000 - time.time()) + 0.01)
    labels = (("namespace", "orders"), ("target", "noop"))
    assert samples(wal.metrics.registry, "walstream_delivery_latency_seconds_count") == {labels: 2.0}
    assert samples(wal.metrics.registry, "walstream_delay_lateness_seconds_count") == {labels: 1.0}
    assert samples(wal.metrics.registry, "walstream_delivered_total") == {labels: 3.0}


async def test_table_rows_earliest_due_and_circuits_are_read_at_scrape_time(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal, _, _ = harness
    # the test context's one partition, as the consumer's assignment
    monkeypatch.setattr("walstream.app.assignment_of", lambda app: {TP(wal.command_topic, 0)})
    clock = WriteClock()
    due_ms = int(time.time() * 1000) + 3_600_000
    async with agent(wal).test_context() as ctx:
        await send(ctx, *(entry(i, clock, due_at_ms=due_ms + i) for i in range(3)))
        rows = samples(wal.metrics.registry, "walstream_table_rows_estimate")
        # exact in memory; RocksDB's estimate counts overwrites still in its memtable too
        # (Kafka Streams exports the same property as its estimate-num-keys metric)
        n = rows[(("partition", "0"), ("table", "walstream-schedule"))]
        assert n == 3 if wal.settings.store == "memory://" else 3 <= n <= 6, n
        assert samples(wal.metrics.registry, "walstream_schedule_earliest_due_seconds") == {
            (("partition", "0"),): due_ms / 1000}
    down = wal.breakers.get("t1", "cassandra")
    wal.breakers.get("t2", "elasticsearch")
    for _ in range(wal.settings.breaker_threshold):  # an outage opens its circuit
        down.record(down=True)
    assert samples(wal.metrics.registry, "walstream_circuit_open") == {
        (("target", "cassandra"), ("target_id", "t1")): 1.0,
        (("target", "elasticsearch"), ("target_id", "t2")): 0.0,
    }


async def test_a_targets_backlog_is_its_blocked_keys_and_the_entries_held_behind_them(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal, target, _ = harness
    monkeypatch.setattr("walstream.app.assignment_of", lambda app: {TP(wal.command_topic, 0)})
    target.script["e0"] = [TransientError("timed out")]  # key k0 waits for its retry
    clock = WriteClock()
    async with agent(wal).test_context() as ctx:
        await send(ctx, *(entry(i, clock) for i in range(7)))  # k0: e0, e3, e6
        blocked = samples(wal.metrics.registry, "walstream_target_blocked_keys")
        held = samples(wal.metrics.registry, "walstream_target_held_entries")
        [(labels, n)] = blocked.items()
        assert dict(labels)["namespace"] == "orders" and n == 1
        assert held == {labels: 2.0}  # e3 and e6, the same target
        assert samples(wal.metrics.registry, "walstream_target_backlog_cut_short") == {(): 0.0}
        await tick(ctx)  # the retry succeeds: the key and what it held are released
        assert samples(wal.metrics.registry, "walstream_target_blocked_keys") == {}
        assert samples(wal.metrics.registry, "walstream_target_held_entries") == {}
    assert sorted(e.id for e in target.applied) == [f"e{i}" for i in range(7)]


def test_a_target_backlog_count_stops_at_its_limit_and_says_so(tmp_path: Path) -> None:
    wal = build_wal("memory://", tmp_path)
    for i in range(5):
        wal.key_order.blocked.data.data[b"6:orders|t1|%d:k%d" % (len(f"k{i}"), i)] = b"e"
    counts, cut_short = wal.key_order.backlog([0], limit=3)
    assert counts == {("orders", "t1", "blocked"): 3} and cut_short
    assert wal.key_order.backlog([0], limit=5) == ({("orders", "t1", "blocked"): 5}, False)


def test_consumer_lag_is_the_end_offset_less_what_was_processed() -> None:
    a, b = TP("wal.orders", 0), TP("wal.orders", 1)
    gauges = WorkerGauges(
        progress=lambda: {a: 40, b: 7}, highwater=lambda tp: {a: 100, b: None}[tp], tables={},
        active_partitions=lambda: [], next_due_ms=lambda p: None, circuits=lambda: [],
        target_backlog=lambda partitions: ({}, False),
    )
    [lag] = [f for f in gauges.collect() if f.name == "walstream_consumer_lag_records"]
    assert [(s.labels, s.value) for s in lag.samples] == [({"topic": "wal.orders", "partition": "0"}, 60)]


def test_fausts_own_sensors_are_on_the_same_registry(harness: Harness) -> None:
    wal, _, _ = harness
    names = {f.name for f in text_string_to_metric_families(generate_latest(wal.metrics.registry).decode())}
    wanted = {"faust_messages_received", "faust_assign_latency", "faust_consumer_commit_latency"}
    assert wanted <= names, sorted(n for n in names if "faust" in n)
