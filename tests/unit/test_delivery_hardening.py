"""Issue 7 hardening of the delivery runtime, through Faust's ``agent.test_context()`` on
memory:// and rocksdb://.

Given records from any producer (not only the write API), when they carry due times past what
the schedule can order, invalid retry policies, or make walstream itself raise, then each
ends delivered or dead-lettered in bounded time, none early, and later entries keep flowing.
And the tables' removals happen only once their successors are durable.
"""

from __future__ import annotations

import random
import time
from typing import Any

import orjson
import pytest

from tests.unit.test_delivery_agent import (
    Harness,
    agent,
    entry,
    letters,
    send,
    tick,
    timers,
)
from walstream.entry import Entry, EntryDecodeError, WriteClock
from walstream.tables.schedule import MAX_DUE_MS, Timer
from walstream.targets.base import TransientError

pytestmark = pytest.mark.timeout(60)


def raw(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc)


def invalid_letters(producer: Any) -> dict[str, dict[str, Any]]:
    """Dead letters of records that are not valid entries, by the id in their raw value."""
    import base64

    out = {}
    for _, value, _ in producer.sent:
        dl = orjson.loads(value)
        if dl["entry"] is None:
            out[orjson.loads(base64.b64decode(dl["raw_value_b64"]))["id"]] = dl
    return out


def envelope(i: int, **fields: Any) -> dict[str, Any]:
    return {"v": 1, "id": f"e{i}", "ns": "orders", "key": f"k{i}", "ts": WriteClock().now_us(), "payload": i, **fields}


# -- due times: every one the schedule holds sorts correctly ------------------------------------


def test_schedule_keys_sort_like_due_times_over_the_whole_range() -> None:
    rng = random.Random(7)
    dues = [0, 1, 999, 10**12, 10**12 + 1, MAX_DUE_MS - 1, MAX_DUE_MS] + [
        rng.randrange(0, MAX_DUE_MS + 1) for _ in range(2000)
    ]
    keys = {Timer(kind="delay", due_ms=d, seq=0, entry={"ns": "n", "id": str(d)}).key: d for d in dues}
    assert [keys[k] for k in sorted(keys)] == sorted(keys.values())


def test_a_due_time_the_schedule_cannot_order_is_refused_not_encoded() -> None:
    with pytest.raises(ValueError, match="latest schedulable"):
        _ = Timer(kind="delay", due_ms=MAX_DUE_MS + 1, seq=0, entry={"ns": "n", "id": "x"}).key


@pytest.mark.parametrize(
    "fields, problem",
    [
        ({"due": MAX_DUE_MS + 1}, "'due'"),
        ({"due": 1e30}, "'due'"),
        ({"due": "soon"}, "'due'"),
        ({"due": True}, "'due'"),
        ({"ts": -1}, "'ts'"),
        ({"ts": 2**63}, "'ts'"),
        ({"ts": 2**63 - 1}, "'ts'"),
        ({"due": -(2**63) + 1}, "'due'"),
        ({"targets": []}, "'targets'"),
        ({"ts": 1.5}, "'ts'"),
        ({"id": 7}, "'id'"),
        ({"key": ""}, "'key'"),
        ({"retry": {"max_attempts": 0}}, "retry.max_attempts"),
        ({"retry": {"initial_delay_ms": "x"}}, "retry.initial_delay_ms"),
        ({"retry": [1]}, "retry"),
        ({"targets": {"type": "noop"}}, "'targets'"),
    ],
)
def test_an_envelope_that_later_steps_could_not_handle_is_refused_at_decode(
    fields: dict[str, Any], problem: str
) -> None:
    with pytest.raises(EntryDecodeError, match=problem):
        Entry.decode(raw(envelope(1, **fields)))


async def test_a_record_due_past_the_schedule_is_dead_lettered_never_delivered_early(harness: Harness) -> None:
    wal, target, producer = harness
    async with agent(wal).test_context() as ctx:
        await ctx.put(key=b"k1", value=raw(envelope(1, due=10**13 + 5)), wait=True)
        await ctx.put(key=b"k2", value=raw(envelope(2, due=2**62)), wait=True)
        await send(ctx, entry(3, WriteClock()))
        await tick(ctx)
    assert [e.id for e in target.applied] == ["e3"]
    assert timers(wal) == []
    dls = invalid_letters(producer)
    assert set(dls) == {"e1", "e2"} and all("'due'" in d["message"] for d in dls.values())


# -- records that would stall their partition ----------------------------------------------------


async def test_invalid_retry_policy_with_a_failing_target_does_not_stall_the_partition(harness: Harness) -> None:
    wal, target, producer = harness
    target.script["e1"] = [TransientError("busy")] * 3
    async with agent(wal).test_context() as ctx:
        await ctx.put(key=b"k1", value=raw(envelope(1, retry={"max_attempts": "many"})), wait=True)
        await send(ctx, entry(2, WriteClock(), key="k1"), entry(3, WriteClock()))
        await tick(ctx)
    assert sorted(e.id for e in target.applied) == ["e2", "e3"]
    assert "retry.max_attempts" in invalid_letters(producer)["e1"]["message"]


async def test_a_record_walstream_keeps_failing_on_is_dead_lettered_and_later_ones_flow(harness: Harness) -> None:
    wal, target, producer = harness
    wal.deliverer.retry_pause_s = 0.0
    real = wal.deliverer._expand

    def explode_on_poison(rec: Any, e: Entry, *args: Any) -> Any:
        if e.payload == "poison":
            raise RuntimeError("a bug walstream has for this record")
        return real(rec, e, *args)

    wal.deliverer._expand = explode_on_poison  # type: ignore[method-assign]
    clock = WriteClock()
    poison = Entry(id="p", namespace="orders", key="kp", payload="poison", written_at_us=clock.now_us())
    async with agent(wal).test_context() as ctx:
        await send(ctx, entry(1, clock), poison, entry(2, clock))
        await send(ctx, entry(3, clock))
    assert sorted(e.id for e in target.applied) == ["e1", "e2", "e3"]
    dl = letters(producer)["p"]
    assert dl["error_class"] == "permanent" and "could not process" in dl["message"]


async def test_a_timer_walstream_keeps_failing_on_is_dead_lettered_and_removed(harness: Harness) -> None:
    wal, target, producer = harness
    wal.deliverer.retry_pause_s = 0.0
    clock = WriteClock()
    # due late enough that both are still timers after the send, also on a loaded machine
    due = int(time.time() * 1000) + 500
    bad = Entry(id="p", namespace="orders", key="kp", payload="poison", written_at_us=clock.now_us(), due_at_ms=due)
    real = wal.deliverer._from_timer

    def explode(partition: int, timer: Timer, *args: Any) -> Any:
        if timer.entry["payload"] == "poison":
            raise RuntimeError("a bug walstream has for this timer")
        return real(partition, timer, *args)

    wal.deliverer._from_timer = explode  # type: ignore[method-assign]
    async with agent(wal).test_context() as ctx:
        await send(ctx, bad, entry(1, clock, due_at_ms=due))
        assert len(timers(wal)) == 2
        await tick(ctx, after_s=max(0.0, due / 1000 - time.time()) + 0.05)
    assert [e.id for e in target.applied] == ["e1"]
    assert timers(wal) == []
    assert letters(producer)["p"]["error_class"] == "permanent"


# -- status documents say what happened -----------------------------------------------------------


async def test_a_target_delivered_after_a_failure_has_no_last_error(harness: Harness) -> None:
    wal, target, _ = harness
    e = entry(1, WriteClock())
    target.script[e.id] = [TransientError("timeout")]
    async with agent(wal).test_context() as ctx:
        await send(ctx, e)
        await tick(ctx)
    doc = _state(wal, e.id)
    assert doc["state"] == "DELIVERED"
    [t] = doc["targets"].values()
    assert t["state"] == "DELIVERED" and t["last_error"] is None and t["attempts"] == 1


def _state(wal: Any, entry_id: str, ns: str = "orders") -> dict[str, Any]:
    from walstream.tables import ordered
    from walstream.tables.entry_state import state_key

    for key, value in ordered.scan(wal.states.table, 0):
        if key == state_key(ns, entry_id):
            return dict(orjson.loads(value))
    raise AssertionError(f"no state for {entry_id}")


# -- removals only after their successors are durable ---------------------------------------------


async def test_timer_removals_wait_until_state_and_successors_are_durable(harness: Harness) -> None:
    """A crash may keep any subset of unflushed table writes: at the flush that precedes the
    removal of a spent timer, the new state and the successor timer are already written and
    the spent timer is still there."""
    wal, target, _ = harness
    clock = WriteClock()
    failing = entry(2, clock)
    target.script[failing.id] = [TransientError("blip"), TransientError("blip")]
    seen: list[tuple[set[str], dict[str, str]]] = []

    async def flush() -> None:
        ids = {f"{t['entry']['id']}:{t['kind']}:{t['attempt']}" for t in timers(wal)}
        states = {i: _state(wal, i)["state"] for i in ("e1", "e2")}
        seen.append((ids, states))

    wal.deliverer.flush = flush  # type: ignore[method-assign]
    async with agent(wal).test_context() as ctx:
        # due well after it is admitted, even on a loaded machine, so that it waits as a timer
        delayed = entry(1, clock, due_at_ms=int(time.time() * 1000) + 300)
        await send(ctx, delayed, failing)
        await tick(ctx, after_s=0.35)
    # the tick's flush: e1's delay timer and e2's spent retry are still there, the states
    # already final or moved on, e2's next retry already written
    ids, states = seen[0]
    assert "e1:delay:0" in ids and "e2:retry:1" in ids and "e2:retry:2" in ids
    assert states == {"e1": "DELIVERED", "e2": "RETRYING"}


async def test_redrive_of_an_entry_whose_namespace_was_recreated_ends_delivered(harness: Harness) -> None:
    """A namespace that did not exist when its entry arrived (deleted, then created again):
    the dead-lettered entry (no_namespace, no target) is redriven whole, and its status ends
    DELIVERED, with no '*' placeholder left RETRYING."""
    from tests.unit.conftest import add_namespace
    from tests.unit.test_delivery_agent import NS
    from walstream.delivery.commands import COMMAND_KEY

    wal, target, producer = harness
    e = Entry(id="g1", namespace="ghost", key="k", payload=1, written_at_us=WriteClock().now_us())
    async with agent(wal).test_context() as ctx:
        await send(ctx, e)
        assert letters(producer)["g1"]["error_class"] == "no_namespace"
        add_namespace(wal, {**NS, "name": "ghost"})
        redrive = orjson.dumps({"op": "redrive", "ns": "ghost", "id": "g1", "target_id": "*"})
        await ctx.put(key=COMMAND_KEY, value=redrive, wait=True)
        await tick(ctx, after_s=0.02)
    assert [x.id for x in target.applied] == ["g1"]
    doc = _state(wal, "g1", ns="ghost")
    assert doc["state"] == "DELIVERED" and "*" not in doc["targets"], doc


async def test_a_record_with_an_integer_beyond_64_bits_is_dead_lettered_not_rounded(harness: Harness) -> None:
    """orjson reads 18446744073709551617 as a float: such a record from another producer is
    refused (as the write API refuses it), never delivered with a changed value."""
    wal, target, producer = harness
    value = raw(envelope(1)).replace(b'"payload":1', b'"payload":{"id":18446744073709551617}')
    ok_ns = raw(envelope(2)).replace(b'"payload":2', b'"payload":{"ts_ns":1764500000000000000}')
    async with agent(wal).test_context() as ctx:
        await ctx.put(key=b"k1", value=value, wait=True)
        await ctx.put(key=b"k2", value=ok_ns, wait=True)
    assert [(e.id, e.payload) for e in target.applied] == [("e2", {"ts_ns": 1764500000000000000})]
    assert "64-bit" in invalid_letters(producer)["e1"]["message"]


async def test_a_record_that_grows_when_re_encoded_is_measured_as_written(harness: Harness) -> None:
    """9e15 is written back as 9000000000000000.0: a record under the row limit as it came can
    be over it as walstream stores it (a timer). It is dead-lettered, never stored."""
    wal, target, producer = harness
    wal.deliverer.row_limit_bytes = 500_000
    due = int(time.time() * 1000) + 60_000
    value = raw(envelope(1, due=due)).replace(b'"payload":1', b'"payload":[' + b",".join([b"9e15"] * 40_000) + b"]")
    assert len(value) < 300_000
    async with agent(wal).test_context() as ctx:
        await ctx.put(key=b"k1", value=value, wait=True)
        await send(ctx, entry(2, WriteClock()))
    assert timers(wal) == []
    assert [e.id for e in target.applied] == ["e2"]
    [(_, letter, _)] = producer.sent
    assert "too large" in orjson.loads(letter)["message"]


async def test_a_record_nested_deeper_than_can_be_stored_is_dead_lettered_and_others_flow(harness: Harness) -> None:
    """orjson reads 1024 levels but writes 254: a delayed record nested 260 deep could be
    neither scheduled nor dead-lettered whole (the worker stalled for good)."""
    wal, target, producer = harness
    due = int(time.time() * 1000) + 60_000
    deep = b"[" * 260 + b"]" * 260
    value = raw(envelope(1, due=due)).replace(b'"payload":1', b'"payload":' + deep)
    async with agent(wal).test_context() as ctx:
        await ctx.put(key=b"k1", value=value, wait=True)
        await send(ctx, entry(2, WriteClock()))
    assert timers(wal) == []
    assert [e.id for e in target.applied] == ["e2"]
    assert "cannot be stored" in invalid_letters(producer)["e1"]["message"]


async def test_a_record_whose_target_override_does_not_validate_ends_dead_with_the_reason(harness: Harness) -> None:
    wal, target, producer = harness
    async with agent(wal).test_context() as ctx:
        await ctx.put(key=b"k1", value=raw(envelope(1, targets=[{"type": "bogus"}])), wait=True)
    assert target.applied == []
    assert "targets.0" in invalid_letters(producer)["e1"]["message"]
    doc = _state(wal, "e1")
    assert doc["state"] == "DEAD" and "targets.0" in doc["last_error"]


def _tid(cfg: dict[str, Any]) -> str:
    """The id of a target as a namespace holds it (with its defaults filled in)."""
    from pydantic import TypeAdapter

    from walstream.namespaces.model import TargetConfig
    from walstream.tables.keys import target_id

    return target_id(TypeAdapter(TargetConfig).validate_python(cfg).model_dump(mode="json"))


async def test_a_retry_for_a_target_the_namespace_no_longer_has_goes_to_its_current_targets(
    harness: Harness,
) -> None:
    """A namespace re-applied with a fixed target (another config, so another target): the
    entry retrying at the old one is delivered to the new one, and the old one is no longer
    retried nor reported. (Also: the deliverer's cache of a namespace's targets follows the
    change even though the version is the same, as after a delete and re-create.)"""
    from tests.unit.conftest import add_namespace
    from tests.unit.test_delivery_agent import NS

    wal, target, _ = harness
    e = entry(1, WriteClock())
    target.script[e.id] = [TransientError("connection refused by the old url")]
    fixed = {"type": "kafka", "topic": "fixed"}
    async with agent(wal).test_context() as ctx:
        await send(ctx, e)
        assert set(_state(wal, "e1")["targets"]) == {_tid({"type": "noop"})}
        add_namespace(wal, {**NS, "targets": [fixed]})
        await tick(ctx, after_s=0.02)
        await tick(ctx, after_s=0.02)
    assert [x.id for x in target.applied] == ["e1"]
    doc = _state(wal, "e1")
    assert doc["state"] == "DELIVERED" and set(doc["targets"]) == {_tid(fixed)}, doc
    assert timers(wal) == []


async def test_redrive_of_a_letter_for_a_replaced_target_goes_to_the_current_one(harness: Harness) -> None:
    from tests.unit.conftest import add_namespace
    from tests.unit.test_delivery_agent import NS
    from walstream.delivery.commands import COMMAND_KEY
    from walstream.targets.base import PermanentError

    wal, target, _ = harness
    e = entry(1, WriteClock())
    target.script[e.id] = [PermanentError("404 not elasticsearch")]
    fixed = {"type": "kafka", "topic": "fixed"}
    async with agent(wal).test_context() as ctx:
        await send(ctx, e)
        assert _state(wal, "e1")["state"] == "DEAD"
        add_namespace(wal, {**NS, "targets": [fixed]})
        cmd = {"op": "redrive", "ns": "orders", "id": "e1", "target_id": _tid({"type": "noop"})}
        await ctx.put(key=COMMAND_KEY, value=orjson.dumps(cmd), wait=True)
        await tick(ctx, after_s=0.02)
    assert [x.id for x in target.applied] == ["e1"]
    doc = _state(wal, "e1")
    assert doc["state"] == "DELIVERED" and set(doc["targets"]) == {_tid(fixed)}, doc


async def test_a_second_record_of_an_id_for_a_different_entry_is_dead_lettered_not_dropped(harness: Harness) -> None:
    """Two records of one id reach the log when a repeat is written through another worker
    before the first was consumed: the same request is delivered once; a different one is
    dead-lettered with the reason, never dropped behind the SUCCESS it was answered."""
    wal, target, producer = harness
    first = raw(envelope(1, digest="aaa"))
    same = raw(envelope(1, digest="aaa"))
    other = raw(envelope(1, digest="bbb")).replace(b'"payload":1', b'"payload":2')
    async with agent(wal).test_context() as ctx:
        for value in (first, same, other):
            await ctx.put(key=b"k1", value=value, wait=True)
    assert [(e.id, e.payload) for e in target.applied] == [("e1", 1)]
    [(_, letter, _)] = producer.sent
    doc = orjson.loads(letter)
    assert doc["entry"]["payload"] == 2 and "already used for a different entry" in doc["message"]


async def test_held_entries_are_released_when_the_namespace_turns_to_ordering_none(harness: Harness) -> None:
    """Entries held behind a retrying blocker, then the namespace changed to ``ordering:
    none``: the blocker's success still releases them (they waited for good)."""
    from tests.unit.conftest import add_namespace
    from tests.unit.test_delivery_agent import NS

    wal, target, _ = harness
    clock = WriteClock()
    a1, a2, a3 = entry(1, clock, "A"), entry(2, clock, "A"), entry(3, clock, "A")
    target.script[a1.id] = [TransientError("blip")]
    async with agent(wal).test_context() as ctx:
        await send(ctx, a1, a2, a3)
        assert target.applied == []  # a2, a3 held behind a1
        add_namespace(wal, {**NS, "ordering": "none"})
        for _ in range(6):
            await tick(ctx, after_s=0.02)
    assert sorted(x.id for x in target.applied) == ["e1", "e2", "e3"]
    assert {_state(wal, i)["state"] for i in ("e1", "e2", "e3")} == {"DELIVERED"}


async def test_a_redriven_delayed_entry_still_waits_for_its_due_time(harness: Harness) -> None:
    """A delayed entry dead-lettered before its due time (a forced namespace deletion) is
    redriven to wait for it, never delivered early; its old error does not outlive delivery.
    (The namespace is dropped from the registry's map directly: its change listeners re-wire
    the topic subscription, which Faust's test context does not survive.)"""
    from tests.unit.conftest import add_namespace
    from tests.unit.test_delivery_agent import NS
    from walstream.delivery.commands import COMMAND_KEY, purge

    wal, target, producer = harness
    async with agent(wal).test_context() as ctx:
        due_ms = int(time.time() * 1000) + 400
        await send(ctx, entry(1, WriteClock(), due_at_ms=due_ms))
        del wal.registry._configs["orders"]  # deleted with force (listeners left out: see below)
        await ctx.put(key=COMMAND_KEY, value=purge("orders"), wait=True)
        assert letters(producer)["e1"]["error_class"] == "no_namespace"
        add_namespace(wal, NS)
        cmd = {"op": "redrive", "ns": "orders", "id": "e1", "target_id": "*"}
        await ctx.put(key=COMMAND_KEY, value=orjson.dumps(cmd), wait=True)
        await tick(ctx)
        if time.time() * 1000 < due_ms:  # a loaded machine may only get here after the due time
            assert target.applied == []  # not before its due time
        await tick(ctx, after_s=max(0.0, due_ms / 1000 - time.time()) + 0.02)
    assert [x.id for x in target.applied] == ["e1"]
    assert target.applied_at[0] * 1000 >= due_ms  # when the target got it: never early
    doc = _state(wal, "e1")
    assert doc["state"] == "DELIVERED" and "last_error" not in doc, doc


async def test_a_second_record_of_a_cancelled_id_is_not_delivered(harness: Harness) -> None:
    """A write of a cancelled id through a worker that did not know it (a write never asks
    another worker) reaches the log again: the agent keeps the entry cancelled and delivers
    nothing of it."""
    from walstream.delivery.commands import COMMAND_KEY, cancel

    wal, target, producer = harness
    delayed = envelope(1, digest="aaa", due=int(time.time() * 1000) + 60_000)
    async with agent(wal).test_context() as ctx:
        await ctx.put(key=b"k1", value=raw(delayed), wait=True)
        await ctx.put(key=COMMAND_KEY, value=cancel("orders", "e1", 0), wait=True)
        assert _state(wal, "e1")["state"] == "CANCELLED"
        due_now = {k: v for k, v in delayed.items() if k != "due"}
        await ctx.put(key=b"k1", value=raw(due_now), wait=True)
        await tick(ctx, after_s=0.02)
    assert target.applied == []
    assert _state(wal, "e1")["state"] == "CANCELLED"
    assert producer.sent == []  # neither delivered nor dead-lettered: it was cancelled
