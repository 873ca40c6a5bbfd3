"""The delivery agent through Faust's ``agent.test_context()``, on memory:// and rocksdb://.

Given a namespace and a stub target, when records and scheduler ticks arrive, then every
entry is applied, waits durably in a table, or is dead-lettered — none is skipped, none is
early, and per-key order holds.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from tests.unit.conftest import FakeProducer, RecordingTarget, add_namespace
from walstream.app import WalApp
from walstream.delivery.commands import COMMAND_KEY, TICK, cancel
from walstream.entry import Entry, WriteClock
from walstream.tables import ordered
from walstream.targets.base import PermanentError, TargetDownError, TransientError

NS = {"name": "orders", "targets": [{"type": "noop"}],
      "retry": {"initial_delay_ms": 1, "max_delay_ms": 5, "max_attempts": 3, "jitter": 0}}

Harness = tuple[WalApp, RecordingTarget, FakeProducer]


def entry(i: int, clock: WriteClock, key: str | None = None, **kw: Any) -> Entry:
    return Entry(id=f"e{i}", namespace="orders", key=key or f"k{i % 3}", payload={"n": i},
                 written_at_us=clock.now_us(), **kw)


def agent(wal: WalApp) -> Any:
    return wal.faust.agents["walstream.deliver"]


async def send(ctx: Any, *entries: Entry) -> None:
    for e in entries:
        await ctx.put(key=e.key_bytes, value=e.encode(), wait=True)


async def tick(ctx: Any, after_s: float = 0.01) -> None:
    await asyncio.sleep(after_s)
    await ctx.put(key=COMMAND_KEY, value=TICK, wait=True)


def timers(wal: WalApp) -> list[dict[str, Any]]:
    return [orjson.loads(v) for _, v in ordered.scan(wal.schedule.table, 0)]


def letters(producer: FakeProducer) -> dict[str, dict[str, Any]]:
    return {orjson.loads(v)["entry"]["id"]: orjson.loads(v) for _, v, _ in producer.sent if orjson.loads(v)["entry"]}


async def test_entries_are_applied_in_order(harness: Harness) -> None:
    wal, target, producer = harness
    clock = WriteClock()
    entries = [entry(i, clock) for i in range(20)]
    async with agent(wal).test_context() as ctx:
        await send(ctx, *entries)
    assert [e.id for e in target.applied] == [e.id for e in entries]
    assert producer.sent == []


async def test_transient_failure_waits_in_the_schedule_then_is_applied(harness: Harness) -> None:
    wal, target, producer = harness
    e = entry(1, WriteClock())
    target.script[e.id] = [TransientError("timeout"), TransientError("timeout")]
    async with agent(wal).test_context() as ctx:
        await send(ctx, e)
        # Then: not applied, a retry timer holds it (attempt 1)
        assert target.applied == []
        [t] = timers(wal)
        assert (t["kind"], t["attempt"], t["last_error"]) == ("retry", 1, "timeout")
        await tick(ctx)
        assert [x["attempt"] for x in timers(wal)] == [2]
        await tick(ctx)
    assert [x.id for x in target.applied] == ["e1"]
    assert timers(wal) == []
    assert producer.sent == []


async def test_exhausted_and_permanent_failures_are_dead_lettered(harness: Harness) -> None:
    wal, target, producer = harness
    clock = WriteClock()
    bad, flaky, good = entry(1, clock), entry(2, clock), entry(3, clock)
    target.script[bad.id] = [PermanentError("mapping conflict")]
    target.script[flaky.id] = [TransientError("down")] * 5
    async with agent(wal).test_context() as ctx:
        await send(ctx, bad, flaky, good)
        await tick(ctx)
        await tick(ctx)
    assert [x.id for x in target.applied] == ["e3"]
    dls = letters(producer)
    assert set(dls) == {"e1", "e2"}
    assert dls["e1"]["error_class"] == "permanent" and dls["e1"]["message"] == "mapping conflict"
    assert dls["e1"]["attempts"] == 1 and dls["e1"]["target"] == {"type": "noop"}
    assert dls["e2"]["error_class"] == "transient" and dls["e2"]["attempts"] == 3
    assert dls["e2"]["first_failure_at"] <= dls["e2"]["last_failure_at"]
    assert timers(wal) == []


async def test_undecodable_record_is_dead_lettered_not_dropped(harness: Harness) -> None:
    wal, target, producer = harness
    async with agent(wal).test_context() as ctx:
        await ctx.put(key=b"k", value=b"\x00garbage", wait=True)
        await send(ctx, entry(1, WriteClock()))
    assert [x.id for x in target.applied] == ["e1"]
    [(_, value, key)] = producer.sent
    dl = orjson.loads(value)
    assert dl["error_class"] == "undecodable" and dl["entry"] is None and key == b"k"
    assert dl["raw_value_b64"]


async def test_unknown_namespace_is_dead_lettered(harness: Harness) -> None:
    wal, target, producer = harness
    ghost = Entry(id="g", namespace="ghost", key="k", payload=1, written_at_us=WriteClock().now_us())
    async with agent(wal).test_context() as ctx:
        await send(ctx, ghost)
    assert target.applied == []
    assert orjson.loads(producer.sent[0][1])["error_class"] == "no_namespace"


async def test_delayed_entry_is_never_applied_early(harness: Harness) -> None:
    wal, target, _ = harness
    clock = WriteClock()
    async with agent(wal).test_context() as ctx:
        # due from when the context runs: a slow RocksDB start must not make it due already
        due_ms = int(time.time() * 1000) + 300
        e = entry(1, clock, due_at_ms=due_ms)
        await send(ctx, e)
        await tick(ctx)
        if time.time() * 1000 < due_ms:  # a loaded machine may only get here after the due time
            assert target.applied == []
            assert [t["kind"] for t in timers(wal)] == ["delay"]
        await tick(ctx, after_s=max(0.0, due_ms / 1000 - time.time()) + 0.01)
    assert [x.id for x in target.applied] == ["e1"]
    assert target.applied_at[0] * 1000 >= due_ms  # when the target got it: never early
    assert timers(wal) == []


async def test_later_entries_of_a_key_wait_behind_a_retry_other_keys_flow(harness: Harness) -> None:
    wal, target, _ = harness
    clock = WriteClock()
    a1, a2, b1, a3 = entry(1, clock, "A"), entry(2, clock, "A"), entry(3, clock, "B"), entry(4, clock, "A")
    target.script[a1.id] = [TransientError("blip")]
    async with agent(wal).test_context() as ctx:
        await send(ctx, a1, a2, b1, a3)
        # B flows; A's later entries are held behind a1
        assert [x.id for x in target.applied] == ["e3"]
        for _ in range(4):
            await tick(ctx)
    assert [x.id for x in target.applied] == ["e3", "e1", "e2", "e4"]
    assert timers(wal) == []
    assert list(ordered.scan(wal.key_order.held, 0)) == []
    assert list(ordered.scan(wal.key_order.blocked, 0)) == []


async def test_ordering_none_lets_later_entries_pass(harness: Harness) -> None:
    wal, target, _ = harness
    add_namespace(wal, {**NS, "ordering": "none"})
    clock = WriteClock()
    a1, a2 = entry(1, clock, "A"), entry(2, clock, "A")
    target.script[a1.id] = [TransientError("blip")]
    async with agent(wal).test_context() as ctx:
        await send(ctx, a1, a2)
        assert [x.id for x in target.applied] == ["e2"]
        await tick(ctx)
    assert [x.id for x in target.applied] == ["e2", "e1"]


async def test_open_breaker_spends_no_attempts(harness: Harness) -> None:
    wal, target, producer = harness
    clock = WriteClock()
    down = [TargetDownError("no host available")] * 100
    entries = [entry(i, clock, f"key{i}") for i in range(3)]
    for e in entries:
        target.script[e.id] = list(down)
    async with agent(wal).test_context() as ctx:
        for e in entries:  # three failed calls open the circuit
            await send(ctx, e)
        [breaker] = wal.breakers.all().values()
        assert breaker.is_open
        calls = target.calls
        late = entry(9, clock, "late")
        await send(ctx, late)
        assert target.calls == calls  # not called while open
        t = {x["entry"]["id"]: x for x in timers(wal)}
        assert t["e9"]["attempt"] == 0
        # the target comes back: after the cool-down the probe succeeds and the circuit closes
        for e in entries:
            target.script[e.id] = []
        await tick(ctx, after_s=wal.settings.breaker_cooldown_s + 0.05)
        await tick(ctx)
    assert not breaker.is_open
    assert sorted(x.id for x in target.applied) == ["e0", "e1", "e2", "e9"]
    assert producer.sent == []
    assert [s for _, s in breaker.transitions] == ["opened", "closed"]


async def test_each_target_progresses_on_its_own(wal: WalApp) -> None:
    add_namespace(wal, {"name": "orders", "targets": [{"type": "noop"}, {"type": "kafka", "topic": "out"}],
                        "retry": {"initial_delay_ms": 1, "max_delay_ms": 5, "jitter": 0}})
    good, flaky = RecordingTarget("good"), RecordingTarget("flaky")
    def pick(cfg: Any) -> RecordingTarget:
        kind = cfg["type"] if isinstance(cfg, dict) else cfg.type
        return good if kind == "noop" else flaky

    wal.targets.get = pick  # type: ignore[method-assign]
    wal.dead_letters._producer = FakeProducer()  # type: ignore[assignment]
    e = entry(1, WriteClock())
    flaky.script[e.id] = [TransientError("slow")]
    async with agent(wal).test_context() as ctx:
        await send(ctx, e)
        await tick(ctx)
    assert [x.id for x in good.applied] == ["e1"]  # applied once, not again on flaky's retry
    assert [x.id for x in flaky.applied] == ["e1"]


async def test_cancel_removes_a_delayed_entry_and_marks_it(harness: Harness) -> None:
    wal, target, _ = harness
    # due well after the test's steps even on a loaded machine (at 200 ms it was sometimes
    # due before it was admitted, and delivered)
    e = entry(1, WriteClock(), due_at_ms=int(time.time() * 1000) + 5_000)
    async with agent(wal).test_context() as ctx:
        await send(ctx, e)
        assert wal.states.get("orders", "e1")["state"] == "DELAYED"  # type: ignore[index]
        await ctx.put(key=COMMAND_KEY, value=cancel("orders", "e1", 0), wait=True)
        await tick(ctx, after_s=0.05)
    assert target.applied == []
    assert timers(wal) == []
    assert wal.states.get("orders", "e1")["state"] == "CANCELLED"  # type: ignore[index]


async def test_cancelled_before_arrival_is_never_delivered(harness: Harness) -> None:
    wal, target, _ = harness
    async with agent(wal).test_context() as ctx:
        await ctx.put(key=COMMAND_KEY, value=cancel("orders", "e1", 0), wait=True)
        await send(ctx, entry(1, WriteClock()), entry(2, WriteClock()))
    assert [x.id for x in target.applied] == ["e2"]


async def test_a_second_record_of_a_tracked_id_is_not_delivered_again(harness: Harness) -> None:
    wal, target, _ = harness
    e = entry(1, WriteClock())
    async with agent(wal).test_context() as ctx:
        await send(ctx, e, e)  # the same id at two offsets
    assert [x.id for x in target.applied] == ["e1"]
    doc = wal.states.get("orders", "e1")
    assert doc is not None and doc["state"] == "DELIVERED" and doc["offset"] == 0


async def test_redrive_gives_fresh_attempts_and_clears_the_index(harness: Harness) -> None:
    wal, target, producer = harness
    e = entry(1, WriteClock())
    target.script[e.id] = [PermanentError("bad mapping")]
    async with agent(wal).test_context() as ctx:
        await send(ctx, e)
        [row] = list(wal.dlq_index.rows("orders", [0]))
        assert row["error_class"] == "permanent" and row["entry"]["id"] == "e1"
        assert wal.states.get("orders", "e1")["state"] == "DEAD"  # type: ignore[index]
        redrive = orjson.dumps({"op": "redrive", "ns": "orders", "id": "e1", "target_id": row["target_id"]})
        await ctx.put(key=COMMAND_KEY, value=redrive, wait=True)
        await tick(ctx)
    assert [x.id for x in target.applied] == ["e1"]
    assert list(wal.dlq_index.rows("orders", [0])) == []
    assert wal.states.get("orders", "e1")["state"] == "DELIVERED"  # type: ignore[index]
    assert len(producer.sent) == 1


async def test_entry_retry_policy_overrides_the_namespace(harness: Harness) -> None:
    wal, target, producer = harness
    e = Entry(id="e1", namespace="orders", key="k", payload=1, written_at_us=WriteClock().now_us(),
              retry={"initial_delay_ms": 1, "multiplier": 1.0, "max_delay_ms": 1, "max_attempts": 1, "jitter": 0})
    target.script[e.id] = [TransientError("blip")]
    async with agent(wal).test_context() as ctx:
        await send(ctx, e)
    # the namespace allows 3 attempts; the entry allows 1: dead-lettered at once
    assert orjson.loads(producer.sent[0][1])["attempts"] == 1
    assert timers(wal) == []


async def test_entries_failing_alone_do_not_open_the_circuit(harness: Harness) -> None:
    wal, target, _ = harness
    add_namespace(wal, {**NS, "retry": {"initial_delay_ms": 1, "max_delay_ms": 1, "max_attempts": 50, "jitter": 0}})
    clock = WriteClock()
    a1 = entry(1, clock, "A")
    target.script[a1.id] = [TransientError("index throttled")] * 5
    async with agent(wal).test_context() as ctx:
        await send(ctx, a1)
        for _ in range(4):
            await tick(ctx)
        await send(ctx, entry(2, clock, "B"))  # another key, same target
        await tick(ctx)
    [breaker] = wal.breakers.all().values()
    assert not breaker.transitions
    assert [x.id for x in target.applied] == ["e2", "e1"]


async def test_a_failing_batch_is_read_again_never_committed_past(harness: Harness) -> None:
    wal, target, _ = harness
    clock = WriteClock()
    real_process = wal.deliverer.process
    calls = 0

    async def buggy_second_call(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("a bug in the deliverer")
        return await real_process(*args, **kwargs)

    wal.deliverer.process = buggy_second_call  # type: ignore[method-assign]
    consumer = wal.offsets._consumer
    async with agent(wal).test_context() as ctx:
        await send(ctx, entry(1, clock))  # offset 0: delivered
        await send(ctx, entry(2, clock))  # offset 1: the batch raises
        # offset 2 comes while 1 is expected: held back (the consumer reads 1 again)
        await ctx.put(key=b"k", value=entry(3, clock).encode(), wait=False)
        await asyncio.sleep(0.2)
    assert [e.id for e in target.applied] == ["e1"]
    [(tp, offset)] = consumer.seeks  # type: ignore[attr-defined]
    assert offset == 1
    await wal.offsets.commit()
    assert consumer.commits == [{tp: 1}]  # type: ignore[attr-defined]
