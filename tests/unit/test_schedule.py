"""The schedule's seek bound: it must never skip a live timer."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from tables.schedule import Schedule, Timer


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
