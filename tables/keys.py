"""Byte layouts of table keys. Numbers are zero-padded so that RocksDB's bytewise order is
numeric order; free-form strings are length-prefixed so that no key is a prefix of another."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson


def part(s: str) -> bytes:
    b = s.encode()
    return b"%d:%s" % (len(b), b)


def target_id(cfg: dict[str, Any]) -> str:
    """A short stable id of a target config (its place in keys and DLQ records)."""
    return hashlib.sha1(orjson.dumps(cfg, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]
