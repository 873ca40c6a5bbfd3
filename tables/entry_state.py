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
from typing import Any

import orjson

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

    def put(self, doc: dict[str, Any]) -> None:
        self.table[state_key(doc["ns"], doc["id"])] = orjson.dumps(doc)
