"""The entries table: each entry's delivery state, per target, for status queries,
duplicate-id detection and cancellation.

Key ``<namespace>|<entry id>`` (length-prefixed), in the partition of the entry's WAL record
like every walstream table. The value is a JSON document::

    {"id", "ns", "key", "state", "partition", "offset", "written_at_us", "due_ms",
     "updated_ms", "targets": {<target id>: {"type", "state", "attempts", "last_error",
                                            "next_attempt_ms", "held_behind"}}}

States are those of :class:`EntryState`; the entry's own state summarises its targets'.
Documents expire after the retention window (RocksDB TTL locally, ``compact,delete`` with
the same retention on the changelog): a repeated id within the window is recognised.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Any

import orjson

from tables import ordered
from tables.keys import part

TABLE_NAME = "walstream-entries"


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


class EntryStates:
    def __init__(self, table: Any) -> None:
        self.table = table

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

    def of_namespace(self, partition: int, ns: str) -> Iterator[dict[str, Any]]:
        """Every document of ``ns`` in ``partition`` (outside an event)."""
        prefix = part(ns) + b"|"
        for _, value in ordered.scan(self.table, partition, start=prefix, stop=prefix + b"\xff"):
            yield dict(orjson.loads(value))

    def put(self, doc: dict[str, Any]) -> None:
        self.table[state_key(doc["ns"], doc["id"])] = orjson.dumps(doc)
