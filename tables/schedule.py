"""The schedule table: delayed entries and pending retries, ordered by due time.

Key ``<due ms:013d>|<seq:020d>|<namespace>|<entry id>|<target id or *>`` (strings
length-prefixed), so a scan from the front of a partition yields what is due first, and
entries due in the same millisecond come out in write order (``seq`` is the entry's offset
in its WAL partition). The value is a :class:`Timer` encoded with orjson.

One table serves delays and retries: the scheduler makes one scan per partition for both.
Like every walstream table it is co-partitioned with the WAL topics: a timer lives in the
partition of its entry, and is written only while an event of that partition is current.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from tables import ordered
from tables.keys import part

TABLE_NAME = "walstream-schedule"


@dataclass
class Timer:
    """A delayed entry (``target`` None: every target of the entry) or a retry of one target."""

    kind: str  # "delay" | "retry"
    due_ms: int
    seq: int
    entry: dict[str, Any]
    target: dict[str, Any] | None = None
    target_id: str = "*"
    attempt: int = 0
    first_failure_s: float | None = None
    last_error: str | None = None
    error_class: str | None = None
    source: list[Any] = field(default_factory=list)  # [topic, partition, offset]
    #: a redrive from the dead-letter queue: its success removes the dead-letter index row
    redrive: bool = False

    @property
    def key(self) -> bytes:
        return b"%013d|%020d|%s|%s|%s" % (
            max(0, self.due_ms),
            self.seq,
            part(self.entry["ns"]),
            part(self.entry["id"]),
            self.target_id.encode(),
        )

    def encode(self) -> bytes:
        return orjson.dumps(self.__dict__)

    @classmethod
    def decode(cls, value: bytes) -> Timer:
        return cls(**orjson.loads(value))


class Schedule:
    def __init__(self, table: Any) -> None:
        self.table = table

    def put(self, timer: Timer) -> None:
        self.table[timer.key] = timer.encode()

    def delete(self, key: bytes) -> None:
        # ``pop`` rather than ``del``: a key already gone (a re-processed tick) is no error
        self.table.pop(key, None)

    def due(self, partition: int, now_ms: int, limit: int) -> Iterator[tuple[bytes, Timer]]:
        """Timers of ``partition`` due at or before ``now_ms``, earliest first."""
        stop = b"%013d|~" % now_ms
        for n, (key, value) in enumerate(ordered.scan(self.table, partition, stop=stop)):
            if n >= limit:
                return
            yield key, Timer.decode(value)

    def next_due_ms(self, partition: int) -> int | None:
        key = ordered.first_key(self.table, partition)
        return int(key[:13]) if key is not None else None
