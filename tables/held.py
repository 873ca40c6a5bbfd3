"""Per-key order: the ``blocked`` and ``held`` tables.

While an entry for key K waits for a retry at target T, ``blocked[(ns, T, K)]`` names it,
and later entries for K bound for T wait in ``held`` under
``<namespace>|<target id>|<key>|<seq:020d>`` (strings length-prefixed), so a prefix scan
returns them in write order. Other keys and other targets are never held.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from walstream.tables import ordered
from walstream.tables.keys import part, read_part

BLOCKED_TABLE = "walstream-blocked"
HELD_TABLE = "walstream-held"


def _prefix(ns: str, target_id: str, key: str) -> bytes:
    return b"%s|%s|%s|" % (part(ns), target_id.encode(), part(key))


class KeyOrder:
    def __init__(self, blocked: Any, held: Any) -> None:
        self.blocked = blocked
        self.held = held

    def blocker(self, ns: str, target_id: str, key: str) -> str | None:
        """Id of the entry that holds up ``key`` at this target, if any."""
        value = self.blocked.get(_prefix(ns, target_id, key))
        return value.decode() if value is not None else None

    def block(self, ns: str, target_id: str, key: str, entry_id: str) -> None:
        self.blocked[_prefix(ns, target_id, key)] = entry_id.encode()

    def unblock(self, ns: str, target_id: str, key: str) -> None:
        self.blocked.pop(_prefix(ns, target_id, key), None)

    def held_key(self, ns: str, target_id: str, key: str, seq: int) -> bytes:
        return _prefix(ns, target_id, key) + b"%020d" % seq

    def hold(self, ns: str, target_id: str, key: str, seq: int, item: dict[str, Any]) -> None:
        self.held[self.held_key(ns, target_id, key, seq)] = orjson.dumps(item)

    def held_for(self, partition: int, ns: str, target_id: str, key: str) -> Iterator[tuple[bytes, dict[str, Any]]]:
        """Held items of one key at one target, in write order."""
        prefix = _prefix(ns, target_id, key)
        for k, v in ordered.scan(self.held, partition, start=prefix, stop=prefix + b"~"):
            yield k, orjson.loads(v)

    def of_namespace(self, partition: int, ns: str) -> Iterator[tuple[bytes, dict[str, Any]]]:
        """Every held item of ``ns`` in ``partition``, whatever its target and key."""
        prefix = part(ns) + b"|"
        for k, v in ordered.scan(self.held, partition, start=prefix, stop=prefix + b"\xff"):
            yield k, orjson.loads(v)

    def blocked_of(self, partition: int, ns: str) -> list[bytes]:
        """The blocked-key rows of ``ns`` in ``partition``."""
        prefix = part(ns) + b"|"
        return [k for k, _ in ordered.scan(self.blocked, partition, start=prefix, stop=prefix + b"\xff")]

    def unblock_key(self, blocked_key: bytes) -> None:
        self.blocked.pop(blocked_key, None)

    def release(self, held_key: bytes) -> None:
        self.held.pop(held_key, None)

    def backlog(self, partitions: Iterable[int], limit: int) -> tuple[Counter[tuple[str, str, str]], bool]:
        """Per (namespace, target id, ``"blocked"`` or ``"held"``): the keys waiting for a
        retry at the target, and the entries held behind them, in ``partitions``; reads keys
        only, at most ``limit`` rows per table and partition (the bool: some were left)."""
        counts: Counter[tuple[str, str, str]] = Counter()
        cut_short = False
        for kind, table in (("blocked", self.blocked), ("held", self.held)):
            for p in ordered.partitions(table, set(partitions)):
                for n, (key, _) in enumerate(ordered.scan(table, p)):
                    if n == limit:
                        cut_short = True
                        break
                    ns, at = read_part(key, 0)
                    counts[(ns, key[at + 1 : key.index(b"|", at + 1)].decode(), kind)] += 1
        return counts, cut_short
