"""Invariant 3, never early, through Faust's ``agent.test_context()`` on memory:// and rocksdb://,
at the edge where it breaks: entries read a few milliseconds before they are due, and entries
due exactly now.

Times are checked where the effect happens: the target records when it applies each entry.
"""

from __future__ import annotations

import time
from collections import Counter
from types import SimpleNamespace

import pytest

import walstream.delivery.deliverer as deliverer_module
from tests.unit.conftest import Harness
from tests.unit.test_delivery_agent import agent, entry, send, tick, timers
from walstream.entry import WriteClock

pytestmark = pytest.mark.timeout(60)

#: entries that must have been read before their due time for the test to say anything
WANT_READ_EARLY = 10
#: at most this many entries are written to get them
MAX_ENTRIES = 300


def state(harness: Harness, entry_id: str) -> str:
    doc = harness[0].states.get("orders", entry_id)
    assert doc is not None
    return str(doc["state"])


async def test_entries_read_milliseconds_before_they_are_due_are_not_applied_early(harness: Harness) -> None:
    wal, target, _ = harness
    clock = WriteClock()
    due: dict[str, int] = {}
    read_early: list[str] = []
    async with agent(wal).test_context() as ctx:
        # Given entries due 1-20 ms after they are written, read by the agent at once
        n = 0
        while len(read_early) < WANT_READ_EARLY and n < MAX_ENTRIES:
            e = entry(n, clock, f"k{n}", due_at_ms=int(time.time() * 1000) + 1 + n % 20)
            due[e.id] = e.due_at_ms  # type: ignore[assignment]
            await send(ctx, e)
            if state(harness, e.id) == "DELAYED":  # the agent read it before it was due
                read_early.append(e.id)
            n += 1
        # When the scheduler ticks every few milliseconds
        deadline = time.monotonic() + 10
        while len(target.applied) < len(due) and time.monotonic() < deadline:
            await tick(ctx, after_s=0.002)
    # Then each is applied once, none before its due time
    assert Counter(e.id for e in target.applied) == Counter(list(due))
    early = {e.id: due[e.id] - at * 1000 for e, at in zip(target.applied, target.applied_at, strict=True)
             if at * 1000 < due[e.id]}
    assert not early, f"applied before due (ms early): {early}"
    assert timers(wal) == []
    # (and the test tested something: some entries waited for their due time in the schedule)
    assert len(read_early) >= WANT_READ_EARLY, f"only {len(read_early)} of {n} entries were read before due"


T0_S = 1_800_000_000.0  # a clock reading whose milliseconds are exact in binary floating point
T0_MS = 1_800_000_000_000


async def test_an_entry_due_exactly_now_is_applied_now_and_one_due_later_waits(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal, target, _ = harness
    now = [T0_S]
    # the deliverer's clock (and the target's) is frozen and moved by the test
    monkeypatch.setattr(deliverer_module, "time", SimpleNamespace(time=lambda: now[0]))
    target.clock = lambda: now[0]
    clock = WriteClock()
    past, due_now, later = (
        entry(1, clock, "a", due_at_ms=T0_MS - 1),
        entry(2, clock, "b", due_at_ms=T0_MS),
        entry(3, clock, "c", due_at_ms=T0_MS + 125),  # T0 + 0.125 s, also exact
    )
    async with agent(wal).test_context() as ctx:
        # Given the clock at T0, When entries due just before, exactly at and after T0 are read
        await send(ctx, past, due_now, later)
        await tick(ctx)
        # Then those due at or before T0 are applied, the later one waits
        assert [e.id for e in target.applied] == ["e1", "e2"]
        assert state(harness, "e3") == "DELAYED"
        # half a millisecond before it is due, it still waits
        now[0] = T0_S + 0.1245
        await tick(ctx)
        assert [e.id for e in target.applied] == ["e1", "e2"]
        # exactly at its due time, the schedule lets it go
        now[0] = T0_S + 0.125
        await tick(ctx)
    assert [e.id for e in target.applied] == ["e1", "e2", "e3"]
    applied_at_ms = [at * 1000 for at in target.applied_at]
    assert applied_at_ms == [T0_MS, T0_MS, T0_MS + 125]
    assert all(at >= e.due_at_ms for e, at in zip(target.applied, applied_at_ms, strict=True))  # type: ignore[operator]
    assert timers(wal) == []
