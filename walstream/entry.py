"""The WAL entry: what the write API makes durable and the delivery agents apply.

An entry is encoded once, at write time, as an orjson document (the Kafka record value);
its Kafka key is the entry's ``key`` so that every entry of one key lands in one partition,
in write order.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

ENVELOPE_VERSION = 1


class EntryDecodeError(ValueError):
    """A record on a WAL topic is not a walstream entry (it is dead-lettered, never dropped)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One durable intent.

    ``written_at_us`` is the original write time in microseconds since the epoch, assigned
    by the worker that accepted the write; targets use it as the write timestamp / external
    version, so that the last write per key wins whatever the delivery order.
    ``due_at_ms`` is the earliest delivery time (epoch milliseconds), ``None`` for "now".
    ``targets`` is an optional per-entry override of the namespace's targets (raw config
    dicts, validated at write time).
    """

    id: str
    namespace: str
    key: str
    payload: Any
    written_at_us: int
    due_at_ms: int | None = None
    targets: list[dict[str, Any]] | None = field(default=None)
    #: per-entry override of the namespace's retry policy (validated at write time)
    retry: dict[str, Any] | None = None

    def encode(self) -> bytes:
        doc: dict[str, Any] = {
            "v": ENVELOPE_VERSION,
            "id": self.id,
            "ns": self.namespace,
            "key": self.key,
            "ts": self.written_at_us,
            "payload": self.payload,
        }
        if self.due_at_ms is not None:
            doc["due"] = self.due_at_ms
        if self.targets is not None:
            doc["targets"] = self.targets
        if self.retry is not None:
            doc["retry"] = self.retry
        return orjson.dumps(doc)

    @classmethod
    def decode(cls, data: bytes | None) -> Entry:
        if data is None:
            raise EntryDecodeError("record has no value")
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise EntryDecodeError(f"not a walstream entry: {exc!r}") from None
        return cls.from_doc(doc)

    @classmethod
    def from_doc(cls, doc: Any) -> Entry:
        """The entry of an already parsed envelope document."""
        try:
            if doc.get("v") != ENVELOPE_VERSION:
                raise EntryDecodeError(f"unsupported envelope version {doc.get('v')!r}")
            return cls(
                id=str(doc["id"]),
                namespace=str(doc["ns"]),
                key=str(doc["key"]),
                payload=doc["payload"],
                written_at_us=int(doc["ts"]),
                due_at_ms=None if doc.get("due") is None else int(doc["due"]),
                targets=doc.get("targets"),
                retry=doc.get("retry"),
            )
        except EntryDecodeError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise EntryDecodeError(f"not a walstream entry: {exc!r}") from None

    @property
    def key_bytes(self) -> bytes:
        return self.key.encode()


class WriteClock:
    """Strictly increasing microsecond timestamps for one worker process.

    Two writes in the same microsecond (common within one batch) must still order, because
    targets resolve conflicts by this value: a put followed by a delete of the same key in
    one batch must end deleted.
    """

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def now_us(self) -> int:
        with self._lock:
            now = time.time_ns() // 1000
            self._last = now if now > self._last else self._last + 1
            return self._last
