"""Per-key order through Faust's ``agent.test_context()``, on memory:// and rocksdb://: how a
key's blocker hands over to the entries held behind it.

Given entries of key A held behind a blocker (an entry of A waiting for a retry), when the
blocker ends in any way (delivered, dead-lettered, cancelled), then the next held entry of A
takes its place, and so on one by one in write order, none lost, none applied twice; entries
of A arriving meanwhile queue up behind them; other keys are never held.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.unit.conftest import (
    FakeChangelog,
    FakeProducer,
    Harness,
    MemoryConsumer,
    RecordingTarget,
    add_namespace,
)
from tests.unit.test_delivery_agent import agent, entry, letters, send, tick, timers
from walstream.app import WalApp, build_app
from walstream.delivery.commands import COMMAND_KEY, TICK, cancel
from walstream.entry import Entry, WriteClock
from walstream.settings import Settings
from walstream.tables import ordered
from walstream.tables.keys import part
from walstream.targets.base import KeyRuns, Outcomes, PermanentError, TargetError, TransientError

pytestmark = pytest.mark.timeout(60)


def record_batches(wal: WalApp) -> list[list[int]]:
    """Wrap the deliverer: returns the list that gets the record offsets of each batch."""
    batches: list[list[int]] = []
    real = wal.deliverer.process

    async def process(partition: int, records: Any, **kw: Any) -> None:
        batches.append([r.offset for r in records])
        await real(partition, records, **kw)

    wal.deliverer.process = process  # type: ignore[method-assign]
    return batches


async def send_together(ctx: Any, *entries: Entry, with_tick: bool = False) -> None:
    """Queue ``entries`` (after a tick, with ``with_tick``) before the agent runs, so that it
    takes them as one batch; returns when that batch is processed."""
    if with_tick:
        await ctx.put(key=COMMAND_KEY, value=TICK, wait=False)
    for e in entries[:-1]:
        await ctx.put(key=e.key_bytes, value=e.encode(), wait=False)
    last = entries[-1]
    await ctx.put(key=last.key_bytes, value=last.encode(), wait=True)


def held_ids(wal: WalApp) -> list[str]:
    return [orjson.loads(v)["entry"]["id"] for _, v in ordered.scan(wal.key_order.held, 0)]


def held_keys(wal: WalApp) -> list[bytes]:
    return [k for k, _ in ordered.scan(wal.key_order.held, 0)]


def order_tables_empty(wal: WalApp) -> bool:
    return list(ordered.scan(wal.key_order.held, 0)) == [] and list(ordered.scan(wal.key_order.blocked, 0)) == []


def applied_ids(harness: Harness, key: str | None = None) -> list[str]:
    _, target, _ = harness
    return [e.id for e in target.applied if key is None or e.key == key]


def timers_of_key(wal: WalApp, key: str) -> list[dict[str, Any]]:
    return [t for t in timers(wal) if t["entry"]["key"] == key]


async def tick_until(ctx: Any, wal: WalApp, done: Callable[[], bool], max_ticks: int = 20) -> None:
    """Tick until ``done()`` or ``max_ticks`` ticks (the test then fails on its assertions)."""
    for _ in range(max_ticks):
        if done():
            return
        await tick(ctx)


# -- a blocker that ends hands over to the next held entry ------------------------------------


@pytest.mark.parametrize(
    "end_of_blocker",
    [
        pytest.param([TransientError("blip"), PermanentError("mapping conflict")], id="permanent-on-retry"),
        pytest.param([TransientError("blip")] * 3, id="attempts-exhausted"),
    ],
)
async def test_a_dead_lettered_blocker_releases_the_next_held_entry(
    harness: Harness, end_of_blocker: list[TargetError]
) -> None:
    wal, target, producer = harness
    clock = WriteClock()
    a1, a2, a3 = entry(1, clock, "A"), entry(2, clock, "A"), entry(3, clock, "A")
    target.script[a1.id] = list(end_of_blocker)
    async with agent(wal).test_context() as ctx:
        # Given a1 retrying and a2, a3 held behind it
        await send(ctx, a1, a2, a3)
        assert held_ids(wal) == ["e2", "e3"]
        # When a1 is dead-lettered (on a retry), Then a2 and a3 follow, in order
        await tick_until(ctx, wal, lambda: len(applied_ids(harness)) == 2)
    assert set(letters(producer)) == {"e1"}
    assert applied_ids(harness) == ["e2", "e3"]
    assert order_tables_empty(wal)
    assert timers(wal) == []


async def test_a_cancelled_blocker_releases_the_next_held_entry(harness: Harness) -> None:
    wal, target, producer = harness
    clock = WriteClock()
    a1, a2, a3 = entry(1, clock, "A"), entry(2, clock, "A"), entry(3, clock, "A")
    target.script[a1.id] = [TransientError("blip")] * 2  # still retrying when it is cancelled
    async with agent(wal).test_context() as ctx:
        await send(ctx, a1, a2, a3)
        assert held_ids(wal) == ["e2", "e3"]
        # When the blocker a1 is cancelled
        await ctx.put(key=COMMAND_KEY, value=cancel("orders", "e1", 0), wait=True)
        # Then a2 and a3 follow, in order; a1 is never applied
        await tick_until(ctx, wal, lambda: len(applied_ids(harness)) == 2)
    assert applied_ids(harness) == ["e2", "e3"]
    assert wal.states.get("orders", "e1")["state"] == "CANCELLED"  # type: ignore[index]
    assert producer.sent == []
    assert order_tables_empty(wal)
    assert timers(wal) == []


async def test_a_cancelled_held_entry_is_skipped_and_the_next_one_follows(harness: Harness) -> None:
    wal, target, _ = harness
    clock = WriteClock()
    a1, a2, a3 = entry(1, clock, "A"), entry(2, clock, "A"), entry(3, clock, "A")
    target.script[a1.id] = [TransientError("blip")]
    async with agent(wal).test_context() as ctx:
        await send(ctx, a1, a2, a3)
        await ctx.put(key=COMMAND_KEY, value=cancel("orders", "e2", 0), wait=True)
        assert held_ids(wal) == ["e3"]
        await tick_until(ctx, wal, lambda: len(applied_ids(harness)) == 2)
    assert applied_ids(harness) == ["e1", "e3"]
    assert wal.states.get("orders", "e2")["state"] == "CANCELLED"  # type: ignore[index]
    assert order_tables_empty(wal)


# -- the same key twice in one batch ---------------------------------------------------------------


async def test_the_same_key_twice_in_one_batch_goes_out_in_write_order(harness: Harness) -> None:
    wal, target, _ = harness
    batches = record_batches(wal)
    clock = WriteClock()
    a1, a2 = entry(1, clock, "A"), entry(2, clock, "A")
    async with agent(wal).test_context() as ctx:
        await send_together(ctx, a1, a2)
    assert batches == [[0, 1]]  # one batch
    assert applied_ids(harness) == ["e1", "e2"]
    # the second went out only after the first succeeded: not in the same call
    assert target.batches == [["e1"], ["e2"]]


async def test_the_same_key_twice_in_one_batch_the_first_failing_holds_the_second(harness: Harness) -> None:
    wal, target, _ = harness
    batches = record_batches(wal)
    clock = WriteClock()
    a1, a2, b1 = entry(1, clock, "A"), entry(2, clock, "A"), entry(3, clock, "B")
    target.script[a1.id] = [TransientError("blip")]
    async with agent(wal).test_context() as ctx:
        await send_together(ctx, a1, a2, b1)
        # Then a2 waits behind a1; B is not held up
        assert applied_ids(harness) == ["e3"]
        assert held_ids(wal) == ["e2"]
        await tick_until(ctx, wal, lambda: len(applied_ids(harness)) == 3)
    assert batches[0] == [0, 1, 2]
    assert applied_ids(harness) == ["e3", "e1", "e2"]
    assert order_tables_empty(wal)


async def test_the_same_key_twice_in_one_batch_the_first_dead_lettered_the_second_applied(harness: Harness) -> None:
    wal, target, producer = harness
    batches = record_batches(wal)
    clock = WriteClock()
    a1, a2 = entry(1, clock, "A"), entry(2, clock, "A")
    target.script[a1.id] = [PermanentError("mapping conflict")]
    async with agent(wal).test_context() as ctx:
        await send_together(ctx, a1, a2)
    assert batches == [[0, 1]]
    assert set(letters(producer)) == {"e1"}
    assert applied_ids(harness) == ["e2"]
    assert target.batches == [["e1"], ["e2"]]
    assert order_tables_empty(wal)


# -- arrivals during a release ---------------------------------------------------------------------


async def test_arrivals_during_a_release_are_applied_one_by_one_in_write_order(harness: Harness) -> None:
    wal, target, _ = harness
    batches = record_batches(wal)
    clock = WriteClock()
    a = [entry(i, clock, "A") for i in range(1, 9)]  # e1..e8, all key A
    b = [entry(i, clock, "B") for i in range(11, 15)]  # e11..e14, key B
    target.script[a[0].id] = [TransientError("blip")]
    async with agent(wal).test_context() as ctx:
        # Given a1 retrying, a2 and a3 held
        await send(ctx, a[0], a[1], a[2])
        assert held_ids(wal) == ["e2", "e3"]
        # When each tick that releases the key's next entry comes in one batch with new
        # entries of A (and of B)
        await send_together(ctx, a[3], b[0], with_tick=True)
        await send_together(ctx, a[4], a[5], b[1], with_tick=True)
        await send_together(ctx, b[2], a[6], with_tick=True)
        await send(ctx, a[7], b[3])
        # Then: at any time the key has at most one entry out (its blocker), the rest held in
        # order (a release applies the held entries in the releasing batch, one per wave)
        assert len(timers_of_key(wal, "A")) <= 1
        assert held_ids(wal) == sorted(held_ids(wal), key=lambda i: int(i[1:]))
        seen_out: list[int] = [len(timers_of_key(wal, "A"))]
        for _ in range(20):
            if len(applied_ids(harness, "A")) == len(a):
                break
            await tick(ctx)
            seen_out.append(len(timers_of_key(wal, "A")))
    # (the arrivals came in the batches of the ticks: offsets 4-5, 7-9, 11-12 are records)
    assert batches[3:6] == [[4, 5], [7, 8, 9], [11, 12]]
    # every entry of A applied once, in write order; none lost, none twice
    assert applied_ids(harness, "A") == [e.id for e in a]
    assert Counter(applied_ids(harness)) == Counter(e.id for e in a + b)
    # released one by one: one call per entry of A, never two of A together
    assert all(sum(i in {e.id for e in a} for i in call) <= 1 for call in target.batches)
    assert max(seen_out) <= 1
    # B never waited: each applied in the batch it arrived in
    assert applied_ids(harness, "B") == [e.id for e in b]
    assert order_tables_empty(wal)
    assert timers(wal) == []


# -- other keys are never held ---------------------------------------------------------------------


async def test_another_key_is_never_held(harness: Harness) -> None:
    wal, target, _ = harness
    clock = WriteClock()
    a1, a2 = entry(1, clock, "A"), entry(2, clock, "A")
    target.script[a1.id] = [TransientError("blip")] * 2
    async with agent(wal).test_context() as ctx:
        await send(ctx, a1, a2)
        # While A is blocked, entries of B and C flow at once, alone or next to A's
        await send(ctx, entry(3, clock, "B"))
        assert applied_ids(harness) == ["e3"]
        await send_together(ctx, entry(4, clock, "A"), entry(5, clock, "C"), entry(6, clock, "B"))
        assert applied_ids(harness) == ["e3", "e5", "e6"]
        await send_together(ctx, entry(7, clock, "B"), with_tick=True)  # a1 fails again
        assert applied_ids(harness) == ["e3", "e5", "e6", "e7"]
        # the held table has only A's entries, the blocked table only A
        prefix = b"%s|" % part("orders")
        assert held_ids(wal) == ["e2", "e4"]
        assert all(k.startswith(prefix) and part("A") in k for k in held_keys(wal))
        assert [k for k, _ in ordered.scan(wal.key_order.blocked, 0)] == [
            k for k, _ in ordered.scan(wal.key_order.blocked, 0) if part("A") in k
        ]
        assert len(list(ordered.scan(wal.key_order.blocked, 0))) == 1
        # a key that becomes blocked within a batch holds only its own later entries there:
        # d8 fails, d9 waits behind it; B's second entry in the same batch is applied
        target.script["e8"] = [TransientError("blip")]
        await send_together(ctx, entry(8, clock, "D"), entry(9, clock, "D"), entry(10, clock, "B"),
                            entry(11, clock, "B"))
        assert applied_ids(harness, "B") == ["e3", "e6", "e7", "e10", "e11"]
        assert held_ids(wal) == ["e2", "e4", "e9"]
        await tick_until(ctx, wal, lambda: len(applied_ids(harness)) == 11)
    assert applied_ids(harness, "A") == ["e1", "e2", "e4"]
    assert applied_ids(harness, "D") == ["e8", "e9"]
    assert order_tables_empty(wal)


# -- catch-up: a key's held entries are released as a run, not one per tick -------------------------


async def test_a_released_key_catches_up_in_one_batch_in_write_order(harness: Harness) -> None:
    """Issue 8: after an outage, each key's held entries drained one scheduler tick at a time
    (~240/s). The blocker's success now applies the held entries in the same batch, one per
    target call, in write order."""
    wal, target, _ = harness
    batches = record_batches(wal)
    clock = WriteClock()
    a = [entry(i, clock, "A") for i in range(1, 51)]
    target.script[a[0].id] = [TransientError("blip")]
    async with agent(wal).test_context() as ctx:
        await send(ctx, *a)
        assert len(held_ids(wal)) == 49
        calls_before = len(batches)
        await tick(ctx)
        assert applied_ids(harness, "A") == [e.id for e in a]  # all of them, at the one tick
        assert len(batches) == calls_before + 1
    assert all(sum(i.startswith("e") for i in call) <= 1 for call in target.batches)  # one of A per call
    assert order_tables_empty(wal)
    assert timers(wal) == []


async def test_a_failure_inside_a_released_run_keeps_the_rest_held_in_order(harness: Harness) -> None:
    wal, target, _ = harness
    clock = WriteClock()
    a = [entry(i, clock, "A") for i in range(1, 11)]
    target.script[a[0].id] = [TransientError("blip")]
    target.script[a[4].id] = [TransientError("blip again")]  # e5, in the middle of the run
    async with agent(wal).test_context() as ctx:
        await send(ctx, *a)
        await tick(ctx)
        # e1..e4 applied; e5 retrying (the key's blocker); e6..e10 still held, rows kept
        assert applied_ids(harness, "A") == ["e1", "e2", "e3", "e4"]
        assert [t["entry"]["id"] for t in timers_of_key(wal, "A")] == ["e5"]
        assert held_ids(wal) == ["e6", "e7", "e8", "e9", "e10"]
        await tick_until(ctx, wal, lambda: len(applied_ids(harness, "A")) == 10)
    assert applied_ids(harness, "A") == [e.id for e in a]
    assert order_tables_empty(wal)


async def test_beyond_the_release_budget_the_scheduler_takes_over(harness: Harness, monkeypatch: Any) -> None:
    from walstream.delivery import deliverer

    monkeypatch.setattr(deliverer, "RELEASE_RUN", 2)
    monkeypatch.setattr(deliverer, "RELEASE_BUDGET", 3)
    wal, target, _ = harness
    clock = WriteClock()
    a = [entry(i, clock, "A") for i in range(1, 11)]
    target.script[a[0].id] = [TransientError("blip")]
    async with agent(wal).test_context() as ctx:
        await send(ctx, *a)
        await tick(ctx)
        # runs of 2, then 1 (the budget), then the next held entry becomes a timer due now
        assert applied_ids(harness, "A") == ["e1", "e2", "e3", "e4"]
        assert [t["entry"]["id"] for t in timers_of_key(wal, "A")] == ["e5"]
        await tick_until(ctx, wal, lambda: len(applied_ids(harness, "A")) == 10)
    assert applied_ids(harness, "A") == [e.id for e in a]
    assert order_tables_empty(wal)


# -- a target that takes a key's entries in one call (KeyRuns) --------------------------------

#: a target that keeps KeyRuns.IN_ORDER, and one that applies a key's later entries in a
#: call although an earlier one failed (recorded delivered, the key still waits)
RUNS = [pytest.param(False, id="in-order"), pytest.param(True, id="breaks-order")]


@pytest.mark.parametrize("breaks", RUNS)
async def test_a_keys_entries_share_one_call_in_write_order(harness: Harness, breaks: bool) -> None:
    wal, target, _ = harness
    target.key_runs = KeyRuns.IN_ORDER
    target.breaks_order = breaks
    clock = WriteClock()
    a1, a2, b1, a3 = entry(1, clock, "A"), entry(2, clock, "A"), entry(3, clock, "B"), entry(4, clock, "A")
    async with agent(wal).test_context() as ctx:
        await send_together(ctx, a1, a2, b1, a3)
    assert target.batches == [["e1", "e2", "e3", "e4"]]  # one call, in write order
    assert applied_ids(harness) == ["e1", "e2", "e3", "e4"]
    assert order_tables_empty(wal)


@pytest.mark.parametrize("breaks", RUNS)
async def test_a_failure_in_a_call_holds_its_keys_later_entries_or_leaves_them_applied(
    harness: Harness, breaks: bool
) -> None:
    wal, target, _ = harness
    target.key_runs = KeyRuns.IN_ORDER
    target.breaks_order = breaks
    clock = WriteClock()
    a1, a2, b1, a3 = entry(1, clock, "A"), entry(2, clock, "A"), entry(3, clock, "B"), entry(4, clock, "A")
    target.script[a1.id] = [TransientError("blip")]
    async with agent(wal).test_context() as ctx:
        await send_together(ctx, a1, a2, b1, a3)
        assert [t["entry"]["id"] for t in timers_of_key(wal, "A")] == ["e1"]  # A waits for e1
        if not breaks:
            # not applied in that call: they wait behind e1, attempts unspent, in order
            assert applied_ids(harness) == ["e3"]
            assert held_ids(wal) == ["e2", "e4"]
            for i in ("e2", "e4"):
                doc = wal.states.get("orders", i)
                assert doc is not None
                [t] = doc["targets"].values()
                assert (t["state"], t["attempts"], t["held_behind"]) == ("PENDING", 0, "e1"), t
        else:
            # applied all the same: recorded delivered, not sent again
            assert applied_ids(harness) == ["e2", "e3", "e4"]
            assert held_ids(wal) == []
        await tick_until(ctx, wal, lambda: len(applied_ids(harness)) == 4)
        if not breaks:
            assert applied_ids(harness) == ["e3", "e1", "e2", "e4"]
        else:
            assert applied_ids(harness) == ["e2", "e3", "e4", "e1"]
    assert order_tables_empty(wal)
    assert timers(wal) == []


@pytest.mark.parametrize("breaks", RUNS)
async def test_a_released_key_catches_up_in_one_call(harness: Harness, breaks: bool) -> None:
    """Issue 8, catch-up at the target's speed: the held entries released by the blocker's
    success go out in one call, not one call each."""
    wal, target, _ = harness
    target.key_runs = KeyRuns.IN_ORDER
    target.breaks_order = breaks
    clock = WriteClock()
    a = [entry(i, clock, "A") for i in range(1, 51)]
    target.script[a[0].id] = [TransientError("blip")]
    async with agent(wal).test_context() as ctx:
        await send(ctx, *a)
        assert len(held_ids(wal)) == 49
        calls_before = len(target.batches)
        await tick(ctx)
        assert applied_ids(harness, "A") == [e.id for e in a]
    assert target.batches[calls_before:] == [["e1"], [e.id for e in a[1:]]]  # the blocker, then the run
    assert order_tables_empty(wal)
    assert timers(wal) == []


@pytest.mark.parametrize("breaks", RUNS)
async def test_a_failure_inside_a_released_run_in_one_call(harness: Harness, breaks: bool) -> None:
    wal, target, _ = harness
    target.key_runs = KeyRuns.IN_ORDER
    target.breaks_order = breaks
    clock = WriteClock()
    a = [entry(i, clock, "A") for i in range(1, 11)]
    target.script[a[0].id] = [TransientError("blip")]
    target.script[a[4].id] = [TransientError("blip again")]  # e5, in the middle of the run
    async with agent(wal).test_context() as ctx:
        await send(ctx, *a)
        await tick(ctx)
        assert [t["entry"]["id"] for t in timers_of_key(wal, "A")] == ["e5"]  # the key's blocker
        if not breaks:
            assert applied_ids(harness, "A") == ["e1", "e2", "e3", "e4"]
            assert held_ids(wal) == ["e6", "e7", "e8", "e9", "e10"]  # rows kept, in order
        else:
            assert applied_ids(harness, "A") == ["e1", "e2", "e3", "e4", "e6", "e7", "e8", "e9", "e10"]
            assert held_ids(wal) == []
        # the key still waits for e5 (the run's last, applied, released nothing): a new one queues
        a.append(entry(11, clock, "A"))
        await send(ctx, a[-1])
        assert held_ids(wal)[-1] == "e11"
        await tick_until(ctx, wal, lambda: len(applied_ids(harness, "A")) == 11)
    assert sorted(applied_ids(harness, "A"), key=lambda i: int(i[1:])) == [e.id for e in a]
    if not breaks:
        assert applied_ids(harness, "A") == [e.id for e in a]
    else:
        assert applied_ids(harness, "A")[-2:] == ["e5", "e11"]
    assert Counter(applied_ids(harness, "A")).most_common(1)[0][1] == 1  # none applied twice
    assert order_tables_empty(wal)
    assert timers(wal) == []


# -- an entry the target did not send spends no attempt (NotSent) ------------------------------


@pytest.mark.parametrize("runs", [KeyRuns.ONE_PER_CALL, KeyRuns.IN_ORDER], ids=lambda r: r.value)
async def test_a_later_entry_of_a_key_is_sent_after_the_earlier_one_ran_out_of_attempts(
    harness: Harness, runs: KeyRuns
) -> None:
    wal, target, producer = harness
    add_namespace(wal, {"name": "orders", "targets": [{"type": "noop"}],
                        "retry": {"initial_delay_ms": 1, "max_delay_ms": 5, "max_attempts": 1, "jitter": 0}})
    target.key_runs = runs
    clock = WriteClock()
    a1, a2 = entry(1, clock, "A"), entry(2, clock, "A")
    target.script[a1.id] = [TransientError("blip")]
    async with agent(wal).test_context() as ctx:
        await send_together(ctx, a1, a2)
        await tick_until(ctx, wal, lambda: "e2" in applied_ids(harness), max_ticks=5)
    assert set(letters(producer)) == {"e1"}  # out of attempts: dead-lettered
    assert applied_ids(harness) == ["e2"]  # never tried in the first call: sent, not dead-lettered


@pytest.mark.parametrize("runs", [KeyRuns.ONE_PER_CALL, KeyRuns.IN_ORDER], ids=lambda r: r.value)
async def test_after_a_dead_lettered_entry_the_next_of_its_key_goes_in_the_same_batch_unspent(
    harness: Harness, runs: KeyRuns
) -> None:
    wal, target, _ = harness
    target.key_runs = runs
    clock = WriteClock()
    a1, a2 = entry(1, clock, "A"), entry(2, clock, "A")
    target.script[a1.id] = [PermanentError("bad")]
    async with agent(wal).test_context() as ctx:
        await send_together(ctx, a1, a2)
        doc = wal.states.get("orders", "e2")
        assert doc is not None
        [t] = doc["targets"].values()
        assert (t["state"], t["attempts"]) == ("DELIVERED", 0), t


class _SlowFirstCall(RecordingTarget):
    async def apply(self, entries: Sequence[Entry]) -> Outcomes:
        if self.calls == 0:
            await asyncio.sleep(0.3)  # beyond target_wait_s: the agent moves on
        return await super().apply(entries)


async def test_a_not_sent_outcome_kept_from_a_slow_call_spends_no_attempt(store: str, tmp_path: Path) -> None:
    """A call still running after target_wait_s can hold a key's e1 and e2; it ends with e1
    failed and e2 not sent. e2 is sent once e1 is delivered, and has spent no attempt."""
    s = Settings(store=store, datadir=tmp_path / "w", app_id=f"unit-{tmp_path.name}",
                 target_wait_s=0.05, target_call_timeout_s=2.0)
    wal = build_app(s, offsets_port=MemoryConsumer())
    wal.changelogs.send_batch = FakeChangelog().send_batch  # type: ignore[method-assign]
    add_namespace(wal, {"name": "orders", "targets": [{"type": "noop"}],
                        "retry": {"initial_delay_ms": 1, "max_delay_ms": 5, "max_attempts": 3, "jitter": 0}})
    target = _SlowFirstCall()
    target.key_runs = KeyRuns.IN_ORDER
    wal.targets.get = lambda cfg: target  # type: ignore[method-assign]
    wal.dead_letters._producer = FakeProducer()  # type: ignore[assignment]
    clock = WriteClock()
    a1, a2 = entry(1, clock, "A"), entry(2, clock, "A")
    target.script[a1.id] = [TransientError("blip")]
    async with agent(wal).test_context() as ctx:
        await send_together(ctx, a1, a2)  # the slow call [e1, e2]: e1 waits for it, e2 held
        await asyncio.sleep(0.4)  # the call ends: e1 failed, e2 not sent
        for _ in range(30):
            if [e.id for e in target.applied] == ["e1", "e2"]:
                break
            await tick(ctx, 0.02)
        await wal.deliverer._target_calls.close()
    assert [e.id for e in target.applied] == ["e1", "e2"]
    doc = wal.states.get("orders", "e2")
    assert doc is not None
    [t] = doc["targets"].values()
    assert (t["state"], t["attempts"]) == ("DELIVERED", 0), t
