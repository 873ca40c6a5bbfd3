"""Ordered scans of one partition of a Faust table, on either store.

Faust gives no range reads. Under ``rocksdb://`` every table partition is its own RocksDB
(rocksdict) database whose keys iterate in bytewise order, so a time-ordered key layout
(zero-padded numbers first) gives "everything due before T" as a prefix scan from the front.
Under ``memory://`` (unit tests) the store is one dict holding every partition: it is
sorted on each scan, which is fine for the sizes tests use.

Reads here bypass Faust's table API; every write still goes through it (changelogged).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

#: Faust keeps each partition's changelog offset inside the partition's RocksDB
FAUST_OFFSET_KEY_PREFIX = b"__faust"


def scan(table: Any, partition: int, start: bytes = b"", stop: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
    """Yield ``(key, value)`` of ``table``'s ``partition`` with ``start <= key < stop``, in
    key order. Stops early when the caller stops iterating."""
    store = table.data
    dbs = getattr(store, "_dbs", None)
    if dbs is None:  # memory store: one dict for all partitions
        items = sorted((k, v) for k, v in store.data.items() if k >= start and (stop is None or k < stop))
        yield from items
        return
    db = dbs.get(partition)
    if db is None:
        return
    it = db.iter()
    if start:
        it.seek(start)
    else:
        it.seek_to_first()
    while it.valid():
        key = it.key()
        if stop is not None and key >= stop:
            return
        if not key.startswith(FAUST_OFFSET_KEY_PREFIX):
            yield key, it.value()
        it.next()


def get(table: Any, partition: int, key: bytes) -> bytes | None:
    """The value of ``key`` in ``table``'s ``partition`` only (Faust's own lookup outside an
    event returns the first partition holding the key, standby copies included)."""
    store = table.data
    dbs = getattr(store, "_dbs", None)
    if dbs is None:  # memory store: one dict for all partitions
        value: bytes | None = store.data.get(key)
        return value
    db = dbs.get(partition)
    return None if db is None else db.get(key)


def first_key(table: Any, partition: int) -> bytes | None:
    for key, _ in scan(table, partition):
        return key
    return None


def partitions(table: Any, actives: set[int] | None = None) -> list[int]:
    """Partitions with local data under rocksdb (only ``actives`` when given: a standby copy
    may lag); ``[0]`` for memory."""
    dbs = getattr(table.data, "_dbs", None)
    if dbs is None:
        return [0]
    return sorted(p for p in dbs if actives is None or p in actives)
