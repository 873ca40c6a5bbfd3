"""Byte layouts of table keys. Numbers are zero-padded so that RocksDB's bytewise order is
numeric order; free-form strings are length-prefixed so that no key is a prefix of another."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson


def part(s: str) -> bytes:
    b = s.encode()
    return b"%d:%s" % (len(b), b)


def read_part(buf: bytes, pos: int) -> tuple[str, int]:
    """The string :func:`part` wrote at ``pos`` of ``buf``, and the position after it."""
    colon = buf.index(b":", pos)
    end = colon + 1 + int(buf[pos:colon])
    return buf[colon + 1 : end].decode(), end


def target_id(cfg: dict[str, Any]) -> str:
    """A short stable id of a target config (its place in keys and DLQ records)."""
    return hashlib.sha1(orjson.dumps(cfg, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]
