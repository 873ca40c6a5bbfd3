"""The dead-letter index: one row per (entry, target) in the dead-letter topic, for listing,
filtering and redrive without reading the whole topic.

Key ``<namespace>|<entry id>|<target id>`` (length-prefixed), in the partition of the
entry's WAL record. The value repeats the dead letter (entry, target, error class, message,
attempts, first/last failure, source) so that a redrive needs nothing else. A redriven entry
that is then delivered leaves the index; one that fails again is indexed again.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from walstream.tables import ordered
from walstream.tables.keys import part

TABLE_NAME = "walstream-dlq-index"


def index_key(ns: str, entry_id: str, target_id: str) -> bytes:
    return b"%s|%s|%s" % (part(ns), part(entry_id), target_id.encode())


class DeadLetterIndex:
    def __init__(self, table: Any) -> None:
        self.table = table

    def put(self, row: dict[str, Any]) -> None:
        self.table[index_key(row["ns"], row["id"], row["target_id"])] = orjson.dumps(row)

    def get(self, ns: str, entry_id: str, target_id: str) -> dict[str, Any] | None:
        value = self.table.get(index_key(ns, entry_id, target_id))
        return None if value is None else dict(orjson.loads(value))

    def delete(self, ns: str, entry_id: str, target_id: str) -> None:
        self.table.pop(index_key(ns, entry_id, target_id), None)

    def rows(self, ns: str, partitions: list[int], entry_id: str | None = None) -> Iterator[dict[str, Any]]:
        """Rows of ``ns`` (one entry's, with ``entry_id``) held in ``partitions``."""
        prefix = part(ns) + b"|" + (part(entry_id) + b"|" if entry_id is not None else b"")
        for p in partitions:
            for _, value in ordered.scan(self.table, p, start=prefix, stop=prefix + b"\xff"):
                yield orjson.loads(value)
