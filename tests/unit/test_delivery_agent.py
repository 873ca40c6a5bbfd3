"""The delivery agent through Faust's ``agent.test_context()``, on memory:// and rocksdb://.

Given a namespace and a stub target, when records arrive on its WAL topic, then every
entry is applied or dead-lettered, and none is skipped.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from tests.unit.conftest import FakeProducer, RecordingTarget, add_namespace
from walstream.app import WalApp
from walstream.entry import Entry, WriteClock
from walstream.targets.base import PermanentError, TransientError

NS = {"name": "orders", "targets": [{"type": "noop"}],
      "retry": {"initial_delay_ms": 1, "max_delay_ms": 5, "max_attempts": 3, "jitter": 0}}


def entry(i: int, clock: WriteClock, **kw: Any) -> Entry:
    return Entry(id=f"e{i}", namespace="orders", key=f"k{i % 3}", payload={"n": i},
                 written_at_us=clock.now_us(), **kw)


@pytest.fixture
def harness(wal: WalApp) -> tuple[WalApp, RecordingTarget, FakeProducer]:
    add_namespace(wal, NS)
    target = RecordingTarget()
    wal.targets.get = lambda cfg: target  # type: ignore[method-assign]
    producer = FakeProducer()
    wal.dead_letters._producer = producer  # type: ignore[assignment]
    wal.dead_letters._retry_s = 0.01
    return wal, target, producer


def agent(wal: WalApp) -> Any:
    return wal.faust.agents["walstream.deliver"]


async def test_entries_are_applied_in_order(harness: tuple[WalApp, RecordingTarget, FakeProducer]) -> None:
    wal, target, producer = harness
    clock = WriteClock()
    entries = [entry(i, clock) for i in range(20)]
    async with agent(wal).test_context() as ctx:
        for e in entries:
            await ctx.put(key=e.key_bytes, value=e.encode(), wait=True)
    assert [e.id for e in target.applied] == [e.id for e in entries]
    assert producer.sent == []


async def test_transient_failure_is_retried_then_applied(harness: tuple[WalApp, RecordingTarget, FakeProducer]) -> None:
    wal, target, producer = harness
    clock = WriteClock()
    e = entry(1, clock)
    target.script[e.id] = [TransientError("timeout"), TransientError("timeout")]
    async with agent(wal).test_context() as ctx:
        await ctx.put(key=e.key_bytes, value=e.encode(), wait=True)
    assert [x.id for x in target.applied] == ["e1"]
    assert target.calls == 3
    assert producer.sent == []


async def test_exhausted_and_permanent_failures_are_dead_lettered(
    harness: tuple[WalApp, RecordingTarget, FakeProducer],
) -> None:
    wal, target, producer = harness
    clock = WriteClock()
    bad, flaky, good = entry(1, clock), entry(2, clock), entry(3, clock)
    target.script[bad.id] = [PermanentError("mapping conflict")]
    target.script[flaky.id] = [TransientError("down")] * 5
    async with agent(wal).test_context() as ctx:
        for e in (bad, flaky, good):
            await ctx.put(key=e.key_bytes, value=e.encode(), wait=True)
    assert [x.id for x in target.applied] == ["e3"]
    letters = {orjson.loads(v)["entry"]["id"]: (t, orjson.loads(v)) for t, v, _ in producer.sent}
    assert set(letters) == {"e1", "e2"}
    topic, dl = letters["e1"]
    assert topic.endswith(".dlq")
    assert dl["error_class"] == "permanent" and dl["message"] == "mapping conflict" and dl["attempts"] == 1
    assert letters["e2"][1]["error_class"] == "transient" and letters["e2"][1]["attempts"] == 3
    assert dl["target"] == {"type": "noop"}


async def test_undecodable_record_is_dead_lettered_not_dropped(
    harness: tuple[WalApp, RecordingTarget, FakeProducer],
) -> None:
    wal, target, producer = harness
    async with agent(wal).test_context() as ctx:
        await ctx.put(key=b"k", value=b"\x00garbage", wait=True)
        e = entry(1, WriteClock())
        await ctx.put(key=e.key_bytes, value=e.encode(), wait=True)
    assert [x.id for x in target.applied] == ["e1"]
    [(_, value, key)] = producer.sent
    dl = orjson.loads(value)
    assert dl["error_class"] == "undecodable" and dl["entry"] is None and key == b"k"
    assert dl["raw_value_b64"]


async def test_unknown_namespace_is_dead_lettered(harness: tuple[WalApp, RecordingTarget, FakeProducer]) -> None:
    wal, target, producer = harness
    ghost = Entry(id="g", namespace="ghost", key="k", payload=1, written_at_us=WriteClock().now_us())
    async with agent(wal).test_context() as ctx:
        await ctx.put(key=b"k", value=ghost.encode(), wait=True)
    assert target.applied == []
    assert orjson.loads(producer.sent[0][1])["error_class"] == "no_namespace"


async def test_delayed_entry_is_not_applied_early(harness: tuple[WalApp, RecordingTarget, FakeProducer]) -> None:
    wal, target, _ = harness
    clock = WriteClock()
    due_ms = int(time.time() * 1000) + 300
    e = entry(1, clock, due_at_ms=due_ms)
    async with agent(wal).test_context() as ctx:
        await ctx.put(key=e.key_bytes, value=e.encode(), wait=True)
    assert target.applied and time.time() * 1000 >= due_ms
