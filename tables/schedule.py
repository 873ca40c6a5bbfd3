"""The schedule table: delayed entries and pending retries, ordered by due time.

Key ``<due ms:013d>|<seq:020d>|<namespace>|<entry id>|<target id or *>`` (strings
length-prefixed), so a scan from the front of a partition yields what is due first, and
entries due in the same millisecond come out in write order (``seq`` is the entry's offset
in its WAL partition). The value is a :class:`Timer` encoded with orjson.

The due time is text of a fixed width (13 digits), so it sorts correctly only from 0 to
:data:`MAX_DUE_MS` (2286-11-20T17:46:39.999Z). A due time past that would sort before
today's and fire at once: the write API refuses such entries (400), an entry from another
producer carrying one is dead-lettered, and :attr:`Timer.key` raises rather than encode it.
A due time before 1970 is clamped to 0 (it is in the past either way).

One table serves delays and retries: the scheduler makes one scan per partition for both.
Like every walstream table it is co-partitioned with the WAL topics: a timer lives in the
partition of its entry, and is written only while an event of that partition is current.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from walstream.tables import ordered
from walstream.tables.keys import part, read_part

TABLE_NAME = "walstream-schedule"

#: the latest due time (epoch ms) a 13-digit key can hold: 2286-11-20T17:46:39.999Z
MAX_DUE_MS = 10**13 - 1
#: where the namespace starts in a key: after ``<due:13>|<seq:20>|``
_NS_AT = 13 + 1 + 20 + 1


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
    #: waiting for its send slot (walstream.delivery.pacing): sent when due without taking another
    paced: bool = False

    @property
    def key(self) -> bytes:
        """Raises ValueError for a due time past :data:`MAX_DUE_MS` (it would sort early)."""
        if self.due_ms > MAX_DUE_MS:
            raise ValueError(f"due time {self.due_ms} ms is past the latest schedulable {MAX_DUE_MS} ms")
        return b"%013d|%020d|%s|%s|%s" % (
            max(0, self.due_ms),
            self.seq,
            part(self.entry["ns"]),
            part(self.entry["id"]),
            self.target_id.encode(),
        )

    def encode(self) -> bytes:
        # ``paced`` only when set: a timer of an unpaced target reads the same to a worker of
        # a version before pacing (a rolling upgrade moves partitions between versions)
        doc = self.__dict__ if self.paced else {k: v for k, v in self.__dict__.items() if k != "paced"}
        return orjson.dumps(doc)

    @classmethod
    def decode(cls, value: bytes) -> Timer:
        return cls(**orjson.loads(value))


class Schedule:
    """Access to the schedule table.

    A scan from the very front of a partition would step over every timer deleted since
    RocksDB last compacted (tombstones sort before the live keys), a cost that grows with
    traffic. So each partition keeps a lower bound, at or below its earliest live key, to
    seek from: raised when a scan finds the earliest key, lowered by any earlier ``put``,
    and dropped by :meth:`reset_bounds` when partitions move (a recovery may bring keys back).
    """

    def __init__(self, table: Any) -> None:
        self.table = table
        self._low: dict[int, bytes] = {}
        #: what :meth:`follow` saw last
        self._partitions: list[int] = []
        self._settling = False

    def put(self, timer: Timer) -> None:
        key = timer.key
        self.table[key] = timer.encode()
        for partition, low in self._low.items():
            if key < low:
                self._low[partition] = key

    def delete(self, key: bytes) -> None:
        # ``pop`` rather than ``del``: a key already gone (a re-processed tick) is no error
        self.table.pop(key, None)

    def reset_bounds(self) -> None:
        self._low.clear()

    def follow(self, partitions: list[int], settling: bool) -> None:
        """The scheduler's call before each pass, with the worker's active ``partitions`` and
        whether its tables are ``settling`` (a rebalance or a changelog recovery under way).

        Timers a recovery writes into a partition bypass :meth:`put`, so they may sort before
        its bound and would never be found. The bounds are dropped when the partitions change,
        on every pass while the tables settle, and once more on the first pass after (a
        bound set during a recovery hid a returning partition's recovered timers until the
        next rebalance: an acknowledged delayed entry was never delivered).
        """
        if partitions != self._partitions or settling or self._settling:
            self._low.clear()
        self._partitions = list(partitions)
        self._settling = settling

    def due(self, partition: int, now_ms: int, limit: int) -> Iterator[tuple[bytes, Timer]]:
        """Timers of ``partition`` due at or before ``now_ms``, earliest first."""
        stop = b"%013d|~" % now_ms
        start = self._low.get(partition, b"")
        for n, (key, value) in enumerate(ordered.scan(self.table, partition, start=start, stop=stop)):
            if n >= limit:
                return
            yield key, Timer.decode(value)

    def of_namespace(self, partition: int, namespace: str) -> Iterator[tuple[bytes, Timer]]:
        """Every timer of ``namespace`` in ``partition`` (a scan of the whole partition: the
        key leads with the due time; for rare operations such as a forced namespace deletion)."""
        for key, value in ordered.scan(self.table, partition, start=self._low.get(partition, b"")):
            if read_part(key, _NS_AT)[0] == namespace:
                yield key, Timer.decode(value)

    def next_due_ms(self, partition: int) -> int | None:
        for key, _ in ordered.scan(self.table, partition, start=self._low.get(partition, b"")):
            self._low[partition] = key
            return int(key[:13])
        return None
