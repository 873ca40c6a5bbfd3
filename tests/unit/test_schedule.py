"""The schedule's seek bound: it must never skip a live timer."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson

from walstream.tables.schedule import Schedule, Timer


class DictTable:
    """The part of a Faust table the schedule uses, over one dict (like memory://)."""

    def __init__(self) -> None:
        self.data = SimpleNamespace(data={})

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.data.data[key] = value

    def pop(self, key: bytes, default: Any = None) -> Any:
        return self.data.data.pop(key, default)


def timer(due_ms: int, seq: int) -> Timer:
    return Timer(kind="delay", due_ms=due_ms, seq=seq, entry={"ns": "n", "id": f"e{seq}"})


def test_bound_follows_deletes_and_earlier_puts() -> None:
    s = Schedule(DictTable())
    for i, due in enumerate([500, 300, 900]):
        s.put(timer(due, i))
    assert s.next_due_ms(0) == 300
    s.delete(timer(300, 1).key)
    assert s.next_due_ms(0) == 500
    s.put(timer(100, 3))  # earlier than the bound: the bound moves down
    assert s.next_due_ms(0) == 100
    assert [t.due_ms for _, t in s.due(0, now_ms=600, limit=10)] == [100, 500]
    s.reset_bounds()
    assert s.next_due_ms(0) == 100


def test_due_respects_now_and_limit() -> None:
    s = Schedule(DictTable())
    for i in range(5):
        s.put(timer(1000 + i, i))
    assert [t.seq for _, t in s.due(0, now_ms=1002, limit=10)] == [0, 1, 2]
    assert [t.seq for _, t in s.due(0, now_ms=1004, limit=2)] == [0, 1]


def test_timers_a_recovery_writes_before_the_bound_are_found_after_it() -> None:
    """A changelog recovery writes timers straight into the table (not through ``put``): the
    bounds are dropped while tables settle and once after, so such a timer is found."""
    table = DictTable()
    s = Schedule(table)
    s.put(timer(500, 1))
    s.follow([0], settling=False)
    assert s.next_due_ms(0) == 500  # the bound is now at 500
    s.follow([0], settling=True)  # a rebalance: partition 0 recovers ...
    table[timer(100, 2).key] = timer(100, 2).encode()  # ... a timer due earlier, written by the recovery
    assert s.next_due_ms(0) == 100
    s.follow([0], settling=True)
    assert s.next_due_ms(0) == 100  # a pass during the recovery sets the bound at 100 ...
    table[timer(50, 3).key] = timer(50, 3).encode()  # ... and the recovery's last write sorts before it
    s.follow([0], settling=False)  # the first pass after the recovery
    assert s.next_due_ms(0) == 50
    s.follow([0], settling=False)
    assert s.next_due_ms(0) == 50  # settled: the bound is kept again
    assert [t.due_ms for _, t in s.due(0, now_ms=600, limit=10)] == [50, 100, 500]


def test_a_timer_says_paced_only_when_it_is() -> None:
    """A worker of a version before pacing decodes every timer of an unpaced target (a
    rolling upgrade moves partitions between versions)."""
    plain = Timer(kind="retry", due_ms=1, seq=1, entry={"ns": "n", "id": "e"}, target={"type": "noop"}, target_id="t")
    assert "paced" not in orjson.loads(plain.encode())
    paced = Timer(kind="retry", due_ms=1, seq=1, entry={"ns": "n", "id": "e"}, target_id="t", paced=True)
    assert orjson.loads(paced.encode())["paced"] is True
    assert Timer.decode(plain.encode()) == plain and Timer.decode(paced.encode()) == paced
