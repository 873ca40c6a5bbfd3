"""The table browser's data: a page of one walstream table's rows in one partition, in key
order, read from this worker's own store (the view routes the request to the worker that
holds the partition actively)."""

from __future__ import annotations

from typing import Any

import orjson

from walstream.tables import ordered

#: most rows a page shows
PAGE_LIMIT = 1000
#: most rows one request reads looking for rows whose key contains the filter
SCAN_LIMIT = 50_000


def show_key(key: bytes) -> str:
    """A key as text: walstream's keys are UTF-8 with ASCII separators; a byte that is not
    UTF-8 shows as ``\\xNN``."""
    return key.decode("utf-8", errors="backslashreplace")


def show_value(value: bytes) -> Any:
    """A value as JSON (every walstream table stores JSON); one that is not shows as text."""
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value.decode("utf-8", errors="backslashreplace")


def browse(table: Any, partition: int, *, after: bytes = b"", contains: str | None = None,
           limit: int = 100) -> dict[str, Any]:
    """Up to ``limit`` rows of ``table``'s ``partition`` with keys past ``after`` (and
    containing ``contains``, as text), in key order: ``{"rows": [{"key", "value", "key_hex"}],
    "next": hex key to continue after (None at the end), "scanned": rows read}``."""
    rows: list[dict[str, Any]] = []
    scanned = 0
    next_after: str | None = None
    start = after + b"\x00" if after else b""
    for key, value in ordered.scan(table, partition, start=start):
        scanned += 1
        text = show_key(key)
        if contains is None or contains in text:
            if len(rows) == limit:
                next_after = rows[-1]["key_hex"]
                break
            rows.append({"key": text, "value": show_value(value), "key_hex": key.hex()})
        if scanned >= SCAN_LIMIT:
            next_after = key.hex()  # read on from here on the next page
            break
    return {"rows": rows, "next": next_after, "scanned": scanned}
