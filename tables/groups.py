"""The ``groups`` table: mutation groups waiting for their commit (walstream.delivery.groups).

Two kinds of rows, in the partition of the group id (every record of a group is keyed by
it):
- ``h|<namespace>|<group id>`` → the group's header (a JSON document: state, size, the
  marker's write time, per-target progress, times); a scan of ``h|`` finds every open group
  of a partition without reading members;
- ``m|<namespace>|<group id>|<seq:010d>`` → one staged member (its entry and source record),
  so a prefix scan returns a group's members in ``seq`` order. Members leave the table when
  the group is released to its targets or aborted.
(strings length-prefixed: walstream.tables.keys.part)
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum
from typing import Any

import orjson

from walstream.tables import ordered
from walstream.tables.keys import part

TABLE_NAME = "walstream-groups"


def header_key(ns: str, group_id: str) -> bytes:
    return b"h|%s|%s" % (part(ns), part(group_id))


def _members_prefix(ns: str, group_id: str) -> bytes:
    return b"m|%s|%s|" % (part(ns), part(group_id))


def member_key(ns: str, group_id: str, seq: int) -> bytes:
    return _members_prefix(ns, group_id) + b"%010d" % seq


class Groups:
    def __init__(self, table: Any) -> None:
        self.table = table

    def header(self, ns: str, group_id: str) -> dict[str, Any] | None:
        value = self.table.get(header_key(ns, group_id))
        return None if value is None else dict(orjson.loads(value))

    def put_header(self, doc: dict[str, Any]) -> None:
        self.table[header_key(doc["ns"], doc["id"])] = orjson.dumps(doc)

    def member(self, ns: str, group_id: str, seq: int) -> dict[str, Any] | None:
        value = self.table.get(member_key(ns, group_id, seq))
        return None if value is None else dict(orjson.loads(value))

    def put_member(self, ns: str, group_id: str, seq: int, row: dict[str, Any]) -> None:
        self.table[member_key(ns, group_id, seq)] = orjson.dumps(row)

    def members(self, partition: int, ns: str, group_id: str) -> Iterator[tuple[bytes, int, dict[str, Any]]]:
        """The staged members of one group: (row key, seq, row), in ``seq`` order."""
        prefix = _members_prefix(ns, group_id)
        for k, v in ordered.scan(self.table, partition, start=prefix, stop=prefix + b"~"):
            yield k, int(k[len(prefix):]), orjson.loads(v)

    def seqs(self, partition: int, ns: str, group_id: str) -> Iterator[int]:
        """The seqs of one group's staged members, in order (keys only: no row is parsed)."""
        prefix = _members_prefix(ns, group_id)
        for k, _ in ordered.scan(self.table, partition, start=prefix, stop=prefix + b"~"):
            yield int(k[len(prefix):])

    def headers(self, partition: int, ns: str | None = None) -> Iterator[dict[str, Any]]:
        """Every group header of ``partition`` (of one namespace, with ``ns``)."""
        prefix = b"h|" + (part(ns) + b"|" if ns is not None else b"")
        for _, v in ordered.scan(self.table, partition, start=prefix, stop=prefix + b"\xff"):
            yield orjson.loads(v)

    def member_rows_of(self, partition: int, ns: str) -> Iterator[tuple[bytes, dict[str, Any]]]:
        """Every staged member of ``ns`` in ``partition``, whatever its group."""
        prefix = b"m|" + part(ns) + b"|"
        for k, v in ordered.scan(self.table, partition, start=prefix, stop=prefix + b"\xff"):
            yield k, orjson.loads(v)

    def delete(self, key: bytes) -> None:
        self.table.pop(key, None)


class GroupState(StrEnum):
    """A mutation group's state (``GET /v1/groups/{namespace}/{group id}``)."""

    #: members are being written; no commit marker yet
    PENDING = "PENDING"
    #: the marker is here: waiting for missing members, or being applied
    COMMITTED = "COMMITTED"
    #: every member applied to every target
    APPLIED = "APPLIED"
    #: no marker (or members missing) by ``group_timeout_s``: none of it applied
    ABORTED = "ABORTED"
    #: a member could not be applied: it and the members after it are dead letters
    DEAD_LETTERED = "DEAD_LETTERED"


#: states a group does not leave
GROUP_ENDED = frozenset({GroupState.APPLIED, GroupState.ABORTED, GroupState.DEAD_LETTERED})
