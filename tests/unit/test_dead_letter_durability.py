"""A timer is removed only once its dead letter is acknowledged, through Faust's
``agent.test_context()`` on memory:// and rocksdb://.

Given a timer (a retry, a delay) whose entry is dead-lettered when it fires, when the dead
letter's write to Kafka is slow or fails at first, then at every moment before Kafka
acknowledges it the timer is still in the schedule table: a worker crashing at that moment
runs the timer again after recovery instead of losing the entry. (The snapshots below are
what a crash at that moment would leave in the tables.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from tests.unit.conftest import FakeProducer, Harness
from tests.unit.test_delivery_agent import agent, entry, letters, send, tick, timers
from tests.unit.test_key_order_release import held_ids
from walstream.app import WalApp
from walstream.delivery.commands import COMMAND_KEY, TICK
from walstream.entry import WriteClock
from walstream.targets.base import TransientError

pytestmark = pytest.mark.timeout(60)


class FlakyProducer(FakeProducer):
    """A dead-letter producer whose first ``fail_first`` sends are not acknowledged (their
    futures fail), and whose acknowledgements wait for ``gate`` when one is set. Calls
    ``on_send`` at every send, while the dead letter is in flight."""

    def __init__(self, fail_first: int = 0, on_send: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self.fail_first = fail_first
        self.on_send = on_send
        self.attempts = 0
        self.gate: asyncio.Future[None] | None = None
        self.pending = 0

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> Any:
        self.attempts += 1
        self.on_send()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.attempts <= self.fail_first:
            fut.set_exception(RuntimeError("KafkaTimeoutError: no acknowledgement"))
            return fut
        if self.gate is None:
            self.sent.append((topic, value, key))
            fut.set_result(None)
            return fut
        self.pending += 1

        async def ack_when_open(gate: asyncio.Future[None]) -> None:
            await gate
            self.sent.append((topic, value, key))
            self.pending -= 1

        return asyncio.ensure_future(ack_when_open(self.gate))


def snapshot(wal: WalApp, entry_id: str) -> dict[str, Any]:
    """What a crash now would leave of the entry: its timers, held rows, dead-letter index rows."""
    return {
        "timers": [(t["kind"], t["attempt"]) for t in timers(wal) if t["entry"]["id"] == entry_id],
        "held": held_ids(wal),
        "indexed": [r["entry"]["id"] for r in wal.dlq_index.rows("orders", [0]) if r["entry"]],
    }


async def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def test_a_retry_timer_stays_until_its_dead_letter_is_acknowledged(harness: Harness) -> None:
    wal, target, _ = harness
    snapshots: list[dict[str, Any]] = []
    producer = FlakyProducer(fail_first=3, on_send=lambda: snapshots.append(snapshot(wal, "e1")))
    wal.dead_letters._producer = producer  # type: ignore[assignment]
    clock = WriteClock()
    a1, a2 = entry(1, clock, "A"), entry(2, clock, "A")
    target.script[a1.id] = [TransientError("timeout")] * 3  # the namespace allows 3 attempts
    async with agent(wal).test_context() as ctx:
        # Given a1 retrying (a2 held behind it)
        await send(ctx, a1, a2)
        await tick(ctx)
        assert [(t["kind"], t["attempt"]) for t in timers(wal)] == [("retry", 2)]
        # When its last attempt fails and its dead letter is refused three times, then acknowledged
        await tick(ctx)
        await tick(ctx)  # a2, released by the dead-lettered blocker
    assert producer.attempts == 4 and len(producer.sent) == 1
    # Then while the dead letter was not acknowledged, the retry timer was still there
    for s in snapshots:
        assert s["timers"] == [("retry", 2)], snapshots
        assert s["indexed"] == []
    # and afterwards it is gone, the entry dead, indexed once, and a2 delivered
    assert set(letters(producer)) == {"e1"}
    assert [r["entry"]["id"] for r in wal.dlq_index.rows("orders", [0])] == ["e1"]
    assert wal.states.get("orders", "e1")["state"] == "DEAD"  # type: ignore[index]
    assert [e.id for e in target.applied] == ["e2"]
    assert timers(wal) == []


async def test_a_held_entry_survives_while_its_blockers_dead_letter_is_unacknowledged(harness: Harness) -> None:
    wal, target, _ = harness
    snapshots: list[dict[str, Any]] = []
    producer = FlakyProducer(fail_first=2, on_send=lambda: snapshots.append(snapshot(wal, "e2")))
    wal.dead_letters._producer = producer  # type: ignore[assignment]
    clock = WriteClock()
    a1, a2 = entry(1, clock, "A"), entry(2, clock, "A")
    target.script[a1.id] = [TransientError("timeout")] * 3
    async with agent(wal).test_context() as ctx:
        await send(ctx, a1, a2)
        await tick(ctx)
        await tick(ctx)  # a1 dead-lettered; a2 released
        await tick(ctx)
    # a crash at any moment of the dead letter's write keeps a2: held, or released as a timer
    for s in snapshots:
        assert s["held"] == ["e2"] or s["timers"] == [("retry", 0)], snapshots
    assert [e.id for e in target.applied] == ["e2"]


async def test_a_timer_stays_while_its_dead_letter_is_slow_to_be_acknowledged(harness: Harness) -> None:
    wal, target, _ = harness
    producer = FlakyProducer()
    producer.gate = asyncio.get_running_loop().create_future()
    wal.dead_letters._producer = producer  # type: ignore[assignment]
    e = entry(1, WriteClock(), "A")
    target.script[e.id] = [TransientError("timeout")] * 3
    async with agent(wal).test_context() as ctx:
        await send(ctx, e)
        await tick(ctx)
        # When the last attempt fails and Kafka is slow to acknowledge the dead letter
        await asyncio.sleep(0.01)
        await ctx.put(key=COMMAND_KEY, value=TICK, wait=False)
        await wait_for(lambda: producer.pending == 1, "the dead letter to be in flight")
        # Then, while it is in flight, the timer is still there (a crash now runs it again)
        assert [(t["kind"], t["attempt"]) for t in timers(wal)] == [("retry", 2)]
        assert wal.states.get("orders", "e1")["state"] == "RETRYING"  # type: ignore[index]
        producer.gate.set_result(None)
        await wait_for(lambda: timers(wal) == [], "the timer to go once the dead letter is acknowledged")
        await send(ctx, entry(2, WriteClock(), "B"))  # the agent has moved on
    assert set(letters(producer)) == {"e1"}
    assert wal.states.get("orders", "e1")["state"] == "DEAD"  # type: ignore[index]


async def test_a_delay_timer_stays_until_its_dead_letter_is_acknowledged(harness: Harness) -> None:
    wal, target, _ = harness
    snapshots: list[dict[str, Any]] = []
    producer = FlakyProducer(fail_first=2, on_send=lambda: snapshots.append(snapshot(wal, "e1")))
    wal.dead_letters._producer = producer  # type: ignore[assignment]
    async with agent(wal).test_context() as ctx:
        # Given a delayed entry whose namespace is then deleted
        # (due a moment later: a busy test process must not deliver it before the deletion)
        e = entry(1, WriteClock(), "A", due_at_ms=int(time.time() * 1000) + 500)
        await send(ctx, e)
        # (not through the registry's listeners: they would unsubscribe the WAL topic, and
        # Faust's test context would then number its records as another topic's)
        wal.registry._configs.pop("orders")
        # When it falls due: dead-lettered (no namespace), the write refused twice (ticked
        # until then: a busy test process may take the first tick before it is due)
        assert wal.states.get("orders", "e1")["state"] == "DELAYED"  # type: ignore[index]
        await tick(ctx, after_s=0.55)
        for _ in range(100):
            if producer.attempts >= 3 and producer.sent:
                break
            await tick(ctx, after_s=0.05)
    assert producer.attempts == 3 and len(producer.sent) == 1
    assert orjson.loads(producer.sent[0][1])["error_class"] == "no_namespace"
    for s in snapshots:
        assert s["timers"] == [("delay", 0)], snapshots
    assert target.applied == []
    assert timers(wal) == []
