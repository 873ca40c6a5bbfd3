"""Writing dead-letter records to ``wal.<namespace>.dlq``.

A dead-letter record carries everything needed to understand and redrive the failure:
the original entry (or the raw record when it could not be decoded), the target, the error
class and message, the attempt count, first and last failure times, and the source
topic/partition/offset. :meth:`DeadLetterWriter.write` returns only once Kafka has
acknowledged the record, retrying for as long as it takes: the source offset is committed
only after that, so a dead-lettered entry is never lost.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError

from walstream.producer import SharedProducer
from walstream.targets.base import ErrorClass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceRecord:
    """A record as consumed from a WAL topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def iso(ts_s: float) -> str:
    """An epoch time as ISO-8601 UTC; a time no date can show (before year 1, after 9999)
    is given as its number of seconds rather than failing whatever shows it."""
    try:
        return datetime.fromtimestamp(ts_s, tz=UTC).isoformat(timespec="milliseconds")
    except (ValueError, OverflowError, OSError):
        return f"{ts_s}s since the epoch"


@dataclass(frozen=True)
class DeadLetter:
    source: SourceRecord
    #: the decoded entry document, or None when the record was undecodable
    entry: Any
    target: dict[str, Any] | None
    error_class: ErrorClass
    message: str
    attempts: int
    first_failure_s: float
    last_failure_s: float
    #: the entry's payload (or the raw value) was left out: the letter would not fit its topic
    payload_omitted: bool = False

    def without_payload(self) -> DeadLetter:
        """This letter without the entry's payload or the raw record: what is left always fits
        a dead-letter topic; the source topic/partition/offset still lead to the record."""
        entry = self.entry
        if isinstance(entry, dict):
            entry = {k: v for k, v in entry.items() if k != "payload"}
        return dataclasses.replace(self, entry=entry, payload_omitted=True)

    def encode(self) -> bytes:
        """The dead-letter record. Never raises: an entry that cannot be encoded (nested
        deeper than orjson writes) is left out, and the raw record kept instead."""
        try:
            return self._encode()
        except orjson.JSONEncodeError:
            if self.entry is None and self.target is None:
                raise  # cannot happen: what is left is walstream's own flat fields
            return dataclasses.replace(self, entry=None, target=None)._encode()

    def _encode(self) -> bytes:
        doc: dict[str, Any] = {
            "entry": self.entry,
            "target": self.target,
            "error_class": self.error_class.value,
            "message": self.message,
            "attempts": self.attempts,
            "first_failure_at": iso(self.first_failure_s),
            "last_failure_at": iso(self.last_failure_s),
            "source": {
                "topic": self.source.topic,
                "partition": self.source.partition,
                "offset": self.source.offset,
            },
            "worker": socket.gethostname(),
        }
        if self.payload_omitted:
            doc["payload_omitted"] = True
        elif self.entry is None and self.source.value is not None:
            doc["raw_value_b64"] = base64.b64encode(self.source.value).decode()
        return orjson.dumps(doc)


class DeadLetterWriter:
    def __init__(self, producer: SharedProducer, retry_s: float = 1.0) -> None:
        self._producer = producer
        self._retry_s = retry_s

    async def write(self, letters: list[DeadLetter]) -> None:
        """Write all letters; returns when every one is acknowledged (retries forever).

        A letter Kafka refuses as too large is written again without the payload (see
        :meth:`DeadLetter.without_payload`): retrying it as it is would never succeed and
        would hold up its partition for good.
        """
        pending = letters
        while pending:
            futures: list[tuple[DeadLetter, Any]] = []
            for dl in pending:
                fut: Any
                try:
                    fut = await self._producer.send(
                        f"{dl.source.topic}.dlq", value=dl.encode(), key=dl.source.key
                    )
                except Exception as exc:
                    log.error("dead-letter send to %s.dlq failed: %r", dl.source.topic, exc)
                    fut = exc
                futures.append((dl, fut))
            failed = []
            for dl, fut in futures:
                try:
                    if isinstance(fut, Exception):
                        raise fut
                    await fut
                except (MessageSizeTooLargeError, RecordListTooLargeError) as exc:
                    if dl.payload_omitted:  # cannot happen: a letter without payload is small
                        log.error("dead letter for %s too large even without its payload: %r", dl.source, exc)
                    log.warning("dead letter of %s is too large for %s.dlq; writing it without its payload",
                                dl.source, dl.source.topic)
                    failed.append(dl.without_payload())
                except Exception as exc:
                    log.error("dead-letter write to %s.dlq failed, will retry: %r", dl.source.topic, exc)
                    failed.append(dl)
                else:
                    _log_letter(dl)
            pending = failed
            if pending:
                await asyncio.sleep(self._retry_s)


def _log_letter(dl: DeadLetter) -> None:
    """One line per dead letter written: where it came from and its error class, with the
    entry's namespace and id, but neither its payload nor the target's message (which may
    quote a value of it): ``GET /v1/dlq/{namespace}?id=...`` shows the message. With
    ``WALSTREAM_LOG_FORMAT=json`` the fields are the line's own keys."""
    entry = dl.entry if isinstance(dl.entry, dict) else {}
    fields = {
        "event": "dead_letter",
        "namespace": entry.get("ns"),
        "entry_id": entry.get("id"),
        "target": (dl.target or {}).get("type", "*"),
        "error_class": dl.error_class.value,
        "attempts": dl.attempts,
        "source": f"{dl.source.topic}[{dl.source.partition}]@{dl.source.offset}",
    }
    log.warning(
        "dead letter: %(namespace)s/%(entry_id)s for %(target)s, %(error_class)s after %(attempts)d "
        "attempt(s), from %(source)s", fields, extra=fields,
    )
