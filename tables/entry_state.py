"""The entries table: each entry's delivery state, per target, for status queries,
duplicate-id detection and cancellation.

Key ``<namespace>|<entry id>`` (length-prefixed), in the partition of the entry's WAL record
like every walstream table. The value is a JSON document::

    {"id", "ns", "key", "state", "partition", "offset", "written_at_us", "due_ms",
     "updated_ms", "targets": {<target id>: {"type", "state", "attempts", "last_error",
                                            "next_attempt_ms", "held_behind"}}}

States are those of :class:`EntryState`; the entry's own state summarises its targets'.

Retention: a document is kept while its entry is pending, however long that is (a delay of a
year, retries for days), and for the retention window after it became final (``FINAL``,
counted from ``updated_ms``): a repeated id within the window is recognised. Expired
documents are deleted by :meth:`EntryStates.sweep` through the table, so every deletion is
in the changelog and a worker recovering from it agrees with one that kept its RocksDB. Time
never deletes anything by itself: no RocksDB TTL expiry, a ``compact`` changelog.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from walstream.tables import ordered
from walstream.tables.keys import part

TABLE_NAME = "walstream-entries"

#: most documents one sweep reads from one partition; the next sweep goes on from there
SWEEP_LIMIT = 1000


class EntryState(enum.StrEnum):
    DELAYED = "DELAYED"
    PENDING = "PENDING"
    RETRYING = "RETRYING"
    DELIVERED = "DELIVERED"
    DEAD = "DEAD"
    CANCELLED = "CANCELLED"


FINAL = frozenset({EntryState.DELIVERED, EntryState.DEAD, EntryState.CANCELLED})


def state_key(ns: str, entry_id: str) -> bytes:
    return part(ns) + b"|" + part(entry_id)


def best(docs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The document that describes the entry: the one of its record (with an offset) over a
    cancel-in-advance placeholder, the most recently updated among equals."""
    if not docs:
        return None
    return max(docs, key=lambda d: (d.get("offset") is not None, d.get("updated_ms") or 0))


def summarise(targets: dict[str, dict[str, Any]], fallback: str) -> str:
    """The entry's state from its targets': anything still moving wins over final states."""
    states = {t["state"] for t in targets.values()}
    if not states:
        return fallback
    for moving in (EntryState.RETRYING, EntryState.PENDING, EntryState.DELAYED):
        if moving in states:
            return moving.value
    if states == {EntryState.DELIVERED}:
        return EntryState.DELIVERED.value
    if EntryState.DEAD in states:
        return EntryState.DEAD.value
    if states <= {EntryState.CANCELLED, EntryState.DELIVERED}:
        return EntryState.CANCELLED.value
    return fallback


#: in :func:`cancelled_targets`: every target (an entry cancelled before it was consumed)
ALL_TARGETS = "*"


def cancelled_targets(docs: Iterable[dict[str, Any]]) -> dict[str, list[str]]:
    """The ids of the entries with cancelled targets among ``docs``, each with those target
    ids (:data:`ALL_TARGETS`: cancelled before it was consumed, so before it had targets)."""
    out: dict[str, list[str]] = {}
    for doc in docs:
        tids = [tid for tid, t in (doc.get("targets") or {}).items() if t.get("state") == EntryState.CANCELLED]
        if not tids and doc.get("state") == EntryState.CANCELLED:
            tids = [ALL_TARGETS]
        if tids:
            out.setdefault(str(doc["id"]), []).extend(tids)
    return out


class EntryStates:
    def __init__(self, table: Any, retention_s: float = 86_400.0) -> None:
        self.table = table
        #: how long a final document is kept after its last change
        self.retention_ms = int(retention_s * 1000)
        #: partition → key the next sweep starts at (absent or b"": a new pass from the front)
        self._sweep_from: dict[int, bytes] = {}
        #: partition → when its last sweep ran (epoch seconds)
        self.swept_at: dict[int, float] = {}
        #: most documents one sweep reads from one partition
        self.sweep_limit = SWEEP_LIMIT

    def get(self, ns: str, entry_id: str) -> dict[str, Any] | None:
        """In an event: the current partition. Outside: any partition this worker holds."""
        value = self.table.get(state_key(ns, entry_id))
        return None if value is None else dict(orjson.loads(value))

    def find(self, ns: str, entry_id: str, partitions: list[int]) -> list[dict[str, Any]]:
        """Every document of the entry in ``partitions`` (outside an event). An entry has one,
        in its record's partition; a cancellation sent before the entry was seen leaves a
        placeholder (``offset`` None) in its key's partition, which may be another one."""
        key = state_key(ns, entry_id)
        docs = []
        for p in partitions:
            value = ordered.get(self.table, p, key)
            if value is not None:
                docs.append(dict(orjson.loads(value)))
        return docs

    def of_namespace(self, partition: int, ns: str, containing: bytes | None = None) -> Iterator[dict[str, Any]]:
        """Every document of ``ns`` in ``partition`` (outside an event); with ``containing``,
        only those whose stored bytes contain it (the others are not parsed: a namespace may
        hold millions)."""
        prefix = part(ns) + b"|"
        for _, value in ordered.scan(self.table, partition, start=prefix, stop=prefix + b"\xff"):
            if containing is None or containing in value:
                yield dict(orjson.loads(value))

    def put(self, doc: dict[str, Any]) -> None:
        self.table[state_key(doc["ns"], doc["id"])] = orjson.dumps(doc)

    def sweep(self, partition: int, now_ms: int) -> int:
        """Delete the documents of ``partition`` that are final and unchanged for longer than
        the retention; a pending document is never deleted, whatever its age.

        Call it in an event of ``partition`` (table writes land in the current event's
        changelog partition). Reads at most ``sweep_limit`` documents, from where the previous sweep
        of the partition stopped (after the last one, the next pass starts from the front), so
        one sweep never holds up delivery for long. Returns how many documents it deleted.
        """
        cutoff_ms = now_ms - self.retention_ms
        expired: list[bytes] = []
        resume = b""
        seen = 0
        for key, value in ordered.scan(self.table, partition, start=self._sweep_from.get(partition, b"")):
            if seen == self.sweep_limit:
                resume = key
                break
            seen += 1
            doc = orjson.loads(value)
            updated_ms = doc.get("updated_ms")
            # a document without updated_ms has no known age: kept
            if doc.get("state") in FINAL and updated_ms is not None and updated_ms < cutoff_ms:
                expired.append(key)
        self._sweep_from[partition] = resume
        self.swept_at[partition] = now_ms / 1000
        for key in expired:  # after the scan: the iterator never sees its own deletions
            del self.table[key]
        return len(expired)

    def mid_pass(self, partition: int) -> bool:
        """The last sweep of ``partition`` stopped at its limit: there is more to read."""
        return bool(self._sweep_from.get(partition))
