"""The write path: make entries durable in ``wal.<namespace>`` and say how it went.

Answers (the ``durable`` field of the write API):
- ``SUCCESS`` only after Kafka acknowledged the record with acks=all (idempotent producer:
  the producer's own retries never duplicate or reorder it);
- ``UNKNOWN`` when no answer came within ``produce_timeout_s`` or the send failed after it
  may have reached the broker: the entry may or may not be in the log;
- ``FAILED`` is decided before anything is sent (validation); see :mod:`walstream.requests`.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka.errors import MessageSizeTooLargeError

from walstream.entry import Entry
from walstream.producer import SharedProducer


class Durable(enum.StrEnum):
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class WriteResult:
    durable: Durable
    id: str | None
    status: int
    partition: int | None = None
    offset: int | None = None
    message: str | None = None

    def to_dict(self) -> dict[str, object]:
        doc: dict[str, object] = {"durable": self.durable.value, "id": self.id}
        if self.durable is Durable.SUCCESS:
            doc["partition"] = self.partition
            doc["offset"] = self.offset
        if self.message:
            doc["message"] = self.message
        return doc


@dataclass(frozen=True)
class Remembered:
    """A successful write this worker remembers: its answer, and the digest of the request
    that made it (None for an entry without one)."""

    result: WriteResult
    digest: str | None


class LogWriter:
    """Produces entries; remembers recent successful writes of client-chosen ids (entries with
    a request digest) by (namespace, id), so that a client retrying a write (e.g. after
    UNKNOWN) gets the original answer, not a copy, and a different request under a used id
    is recognised. A generated id cannot be written again, so it is not remembered."""

    #: most remembered writes; older ones are still recognised through the entries table
    RECENT_MAX = 100_000

    def __init__(self, producer: SharedProducer, timeout_s: float, retention_s: float = 86_400.0) -> None:
        self._producer = producer
        self._timeout_s = timeout_s
        self._retention_s = retention_s
        self._recent: OrderedDict[tuple[str, str], tuple[float, Remembered]] = OrderedDict()
        #: (namespace, id) → when a cancellation of it was sent through this worker
        self._cancelled: OrderedDict[tuple[str, str], float] = OrderedDict()

    def recent(self, namespace: str, entry_id: str) -> Remembered | None:
        """The write of ``entry_id`` this worker answered SUCCESS within the retention window."""
        hit = self._recent.get((namespace, entry_id))
        if hit is None or time.monotonic() - hit[0] > self._retention_s:
            return None
        return hit[1]

    def cancelled(self, namespace: str, entry_id: str) -> None:
        """A cancellation of ``entry_id`` was sent through this worker."""
        k = (namespace, entry_id)
        self._cancelled[k] = time.monotonic()
        self._cancelled.move_to_end(k)
        while len(self._cancelled) > self.RECENT_MAX:
            self._cancelled.popitem(last=False)

    def was_cancelled(self, namespace: str, entry_id: str) -> bool:
        """A cancellation of ``entry_id`` was sent through this worker within the retention window."""
        at = self._cancelled.get((namespace, entry_id))
        return at is not None and time.monotonic() - at <= self._retention_s

    def _remember(self, entry: Entry, result: WriteResult) -> None:
        k = (entry.namespace, entry.id)
        self._recent[k] = (time.monotonic(), Remembered(result, entry.digest))
        self._recent.move_to_end(k)
        while len(self._recent) > self.RECENT_MAX:
            self._recent.popitem(last=False)

    async def write(self, entries: Sequence[tuple[Entry, bytes]]) -> list[WriteResult]:
        """Produce every entry (in order, so one key's entries keep their order) and wait
        for all acknowledgements, at most ``timeout_s`` in total (one timeout over the
        batch's sends, not one per entry)."""
        sends: list[asyncio.Future[object] | WriteResult] = []
        try:
            async with asyncio.timeout(self._timeout_s):
                for entry, value in entries:
                    try:
                        fut = await self._producer.send(f"wal.{entry.namespace}", value=value, key=entry.key_bytes)
                    except MessageSizeTooLargeError as exc:
                        sends.append(WriteResult(Durable.FAILED, entry.id, 413, message=str(exc)))
                        continue
                    except Exception as exc:
                        # the record may already sit in the producer's buffer: not known
                        sends.append(_unknown(entry, exc))
                        continue
                    sends.append(fut)
                for sent in sends:
                    # in send order, one future at a time: a partition's records are
                    # acknowledged batch by batch, so most futures are done when reached and
                    # only a few get a waiter (a callback per record cost ~4 % of the
                    # worker's CPU under load)
                    if isinstance(sent, asyncio.Future) and not sent.done():
                        await asyncio.wait((sent,))
        except TimeoutError:
            pass  # what is not acknowledged by now is answered UNKNOWN below
        finally:
            for sent in sends:
                if not isinstance(sent, asyncio.Future):
                    continue
                # a future still pending (at the timeout, or if this task is cancelled)
                # settles later, unobserved; a failed one is read here, not logged at GC
                if sent.done():
                    _observe(sent)
                else:
                    sent.add_done_callback(_observe)
        results: list[WriteResult] = []
        for n, (entry, _) in enumerate(entries):
            s = sends[n] if n < len(sends) else None
            if isinstance(s, WriteResult):
                results.append(s)
            elif s is None or not s.done():
                # not handed to the producer in time, or handed and not acknowledged: either
                # way the record may be in the log
                results.append(WriteResult(Durable.UNKNOWN, entry.id, 503,
                                           message=f"no acknowledgement within {self._timeout_s}s"))
            elif s.exception() is not None:
                results.append(_unknown(entry, s.exception()))
            else:
                md = s.result()
                ok = WriteResult(Durable.SUCCESS, entry.id, 200, partition=getattr(md, "partition", None),
                                 offset=getattr(md, "offset", None))
                if entry.digest is not None:  # a client-chosen id: it may be written again
                    self._remember(entry, ok)
                results.append(ok)
        return results


def _observe(fut: asyncio.Future[object]) -> None:
    if not fut.cancelled():
        fut.exception()


def _unknown(entry: Entry, exc: BaseException | None) -> WriteResult:
    return WriteResult(Durable.UNKNOWN, entry.id, 503, message=f"{type(exc).__name__}: {exc}")
