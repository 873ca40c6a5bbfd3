"""Pacing (walstream.delivery.pacing): a paced target gets at most ``max_per_s`` entries per
second; the rest wait durably for their send slot (paced timers), none is sent before its
slot or its due time, a key keeps its order, no attempt is spent; ``adaptive`` halves the
rate when the target is overloaded or slow and grows it back."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

import pytest

from tests.unit.conftest import RecordingTarget, add_namespace, build_wal
from tests.unit.test_delivery_agent import agent, entry, send, tick, timers
from walstream.app import WalApp
from walstream.delivery.pacing import (
    ADAPTIVE_HORIZON_S,
    BURST_S,
    GROWTH_FRACTION,
    MIN_FRACTION,
    TOLERANCE_S,
    Pacer,
)
from walstream.entry import WriteClock
from walstream.namespaces.model import PacingConfig
from walstream.targets.base import TransientError

pytestmark = pytest.mark.timeout(60)

RATE = 50.0


def paced_worker(store: str, tmp_path: Path, **pacing: Any) -> tuple[WalApp, RecordingTarget]:
    wal = build_wal(store, tmp_path)
    add_namespace(wal, {"name": "orders", "targets": [{"type": "noop", "pacing": {"max_per_s": RATE, **pacing}}],
                        "retry": {"initial_delay_ms": 1, "max_delay_ms": 5, "max_attempts": 3, "jitter": 0}})
    target = RecordingTarget()
    wal.targets.get = lambda cfg: target  # type: ignore[method-assign]
    wal.deliverer.pacer = Pacer(lambda: 1.0)  # this worker holds every partition
    return wal, target


async def drain(ctx: Any, target: RecordingTarget, n: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(target.applied) < n and time.monotonic() < deadline:
        await tick(ctx, after_s=0.005)


async def test_a_burst_is_spread_at_the_rate_and_nothing_goes_before_its_slot(store: str, tmp_path: Path) -> None:
    wal, target = paced_worker(store, tmp_path)
    clock = WriteClock()
    n = 40
    async with agent(wal).test_context() as ctx:
        started = time.time()
        await send(ctx, *(entry(i, clock, key=f"k{i}") for i in range(n)))
        slots = {t["entry"]["id"]: t["due_ms"] / 1000 for t in timers(wal) if t.get("paced")}
        # a tolerance's worth went at once (per processing batch: the records may come in a
        # few); the rest wait, one slot every 1/RATE s, from now on
        assert 1 <= n - len(slots) <= 6 and len(target.applied) == n - len(slots)
        due = sorted(slots.values())
        assert due[0] >= started and all(b - a >= 1 / RATE - 0.002 for a, b in itertools.pairwise(due))
        waiting = wal.states.get("orders", "e39")
        assert waiting is not None and next(iter(waiting["targets"].values()))["state"] == "PENDING"
        await drain(ctx, target, n)
    assert sorted(e.id for e in target.applied) == sorted(f"e{i}" for i in range(n))
    applied_at = dict(zip((e.id for e in target.applied), target.applied_at, strict=True))
    for entry_id, slot in slots.items():
        assert applied_at[entry_id] >= slot, (entry_id, applied_at[entry_id], slot)  # never before its slot
    # at most the rate (and one tolerance) in any window
    times = sorted(applied_at.values())
    window = 0.2
    for i, t in enumerate(times):
        assert sum(1 for u in times[i:] if u < t + window) <= RATE * window + TOLERANCE_S * RATE + 2
    assert times[-1] - times[0] >= (n - 3) / RATE - 0.05
    assert all(t["attempt"] == 0 for t in timers(wal))  # (none left) and pacing spends no attempts
    assert timers(wal) == []


async def test_slots_that_came_due_together_still_go_at_the_rate(store: str, tmp_path: Path) -> None:
    """The scheduler late (no tick for a second): every slot of that second is due at once,
    and still at most the bucket's burst goes out at a time, the rest at the rate."""
    wal, target = paced_worker(store, tmp_path)
    clock = WriteClock()
    async with agent(wal).test_context() as ctx:
        await send(ctx, *(entry(i, clock, key=f"k{i}") for i in range(30)))
        first = len(target.applied)
        await asyncio.sleep(0.7)  # ~35 slots' worth: all 30 due now
        await tick(ctx, after_s=0)
        assert len(target.applied) - first <= max(1, int(RATE * BURST_S)) + 1, len(target.applied) - first
        await drain(ctx, target, 30)
    times = sorted(target.applied_at)
    for i, t in enumerate(times):
        assert sum(1 for u in times[i:] if u < t + 0.2) <= RATE * 0.2 + RATE * BURST_S + 2


async def test_a_key_keeps_its_order_through_its_slots(store: str, tmp_path: Path) -> None:
    wal, target = paced_worker(store, tmp_path)
    clock = WriteClock()
    async with agent(wal).test_context() as ctx:
        await send(ctx, *(entry(i, clock, key="same") for i in range(8)))
        await drain(ctx, target, 8)
    assert [e.id for e in target.applied] == [f"e{i}" for i in range(8)]
    times = target.applied_at
    assert times[-1] - times[0] >= 6 / RATE - 0.01  # the key's entries were paced too


async def test_an_overloaded_target_gets_half_the_rate_with_adaptive(store: str, tmp_path: Path) -> None:
    wal, target = paced_worker(store, tmp_path, adaptive=True)
    target.script["e0"] = [TransientError("429 Too Many Requests")]
    pacing = PacingConfig(max_per_s=RATE, adaptive=True)
    async with agent(wal).test_context() as ctx:
        await send(ctx, entry(0, WriteClock()))
        [tid] = {t["target_id"] for t in timers(wal)}
        assert wal.deliverer.pacer.rate(tid, pacing) == RATE / 2
        await drain(ctx, target, 1)
    assert wal.deliverer.pacer.rate(tid, pacing) == pytest.approx(RATE / 2 + RATE / GROWTH_FRACTION)  # adds back


def test_the_slots_follow_the_rate_the_share_and_adaptive() -> None:
    share = [1.0]
    pacer = Pacer(lambda: share[0])
    fixed = PacingConfig(max_per_s=100)
    assert pacer.slots("t", fixed, 3, now_s=10.0) == pytest.approx([10.0, 10.01, 10.02])
    assert pacer.slots("t", fixed, 1, now_s=10.0) == pytest.approx([10.03])  # the schedule goes on
    assert pacer.slots("t", fixed, 1, now_s=20.0) == pytest.approx([20.0])  # idle: free again
    share[0] = 0.25  # a quarter of the partitions: a quarter of the fleet's rate
    assert pacer.slots("u", fixed, 2, now_s=0.0) == pytest.approx([0.0, 0.04])
    adaptive = PacingConfig(max_per_s=64, adaptive=True, slow_ms=100)
    share[0] = 1.0
    pacer.feedback("a", adaptive, overloaded=False, took_s=0.5)  # slow
    assert pacer.rate("a", adaptive) == 32
    for _ in range(20):
        pacer.feedback("a", adaptive, overloaded=True, took_s=0.0)
    assert pacer.rate("a", adaptive) == 64 / MIN_FRACTION
    for _ in range(100):
        pacer.feedback("a", adaptive, overloaded=False, took_s=0.0)
    assert pacer.rate("a", adaptive) == 64
    pacer.feedback("t", fixed, overloaded=True, took_s=9.0)  # not adaptive: unchanged
    assert pacer.rate("t", fixed) == 100
    # an adaptive lane gives slots only up to its horizon: the rest try again then
    given = pacer.slots("h", adaptive, 1000, now_s=0.0)
    assert len(given) == int(64 * ADAPTIVE_HORIZON_S) + 1 and given[-1] <= ADAPTIVE_HORIZON_S
    assert len(pacer.slots("t2", fixed, 1000, now_s=0.0)) == 1000  # a fixed rate reserves them all


def test_a_target_without_pacing_keeps_its_id(tmp_path: Path) -> None:
    """Pacing is left out of a target's JSON when not given: targets written before it
    existed keep their ids (their timers, states and dead letters name them)."""
    from walstream.namespaces.model import parse_namespace
    from walstream.tables.keys import target_id

    cfg = parse_namespace({"name": "a", "targets": [{"type": "kafka", "topic": "t"}]}).targets[0]
    assert cfg.model_dump(mode="json") == {"type": "kafka", "topic": "t", "bootstrap": None}
    assert target_id(cfg.model_dump(mode="json")) == target_id({"type": "kafka", "topic": "t", "bootstrap": None})


