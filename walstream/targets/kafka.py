"""The Kafka target: the payload is produced as-is (JSON) to a topic, keyed by the entry key.

Kafka keeps no per-key version, so this target is at-least-once: a replay produces the
record again. Consumers of the topic de-duplicate by the ``walstream-id`` header, and order
by the ``walstream-ts`` header (original write time, µs).

A topic that does not exist is found out with one metadata request per call, not by
aiokafka's own wait (which asks again every 100 ms for ``request_timeout`` and logs an error
each time): the call reports :class:`TargetDownError` at once. It is the target's
configuration that is wrong, not the entry, and the usual fix is to create the topic: so the
entries are kept, the target's circuit opens and they wait for it without spending attempts
(a permanent error would dead-letter every entry of the namespace within a second, and
Kafka itself treats an unknown topic as retriable: it is also what a topic being created
answers). A topic the client is not authorized for is a definite answer about this client's
rights and stays permanent (dead-lettered with the reason, redrivable).

The producer is idempotent: it numbers the batches of each partition, and the broker accepts
only the next number. aiokafka (0.14) never repairs that numbering: once a batch that was
given a number fails (a partition without a leader for ``timeout_s`` while its broker
restarts: ``LeaderNotAvailableError``), every later batch of that partition is refused with
``OutOfOrderSequenceNumber``, for good; and a producer whose id or epoch the broker no longer
knows (``UnknownProducerId``, ``InvalidProducerEpoch``/``ProducerFenced``, ...) or whose
sender task died cannot send at all. So a producer that has seen any failed delivery, or a
``send`` refused for a reason that is not about the record itself, is discarded (stopped in
the background) and the next call uses a fresh one (a new producer id, numbering from 0).
The failed entries are reported transient and retried in their keys' order. Every delivery
future is observed, also the ones left behind when a call is cancelled by its deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    InvalidTopicError,
    InvalidTxnState,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    RecordListTooLargeError,
    TopicAuthorizationFailedError,
    UnknownProducerId,
    UnknownTopicOrPartitionError,
)
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from walstream.entry import Entry
from walstream.namespaces.model import KafkaTargetConfig
from walstream.producer import fill_batch, key_partitioner
from walstream.targets.base import (
    KeyRuns,
    NotSent,
    Outcomes,
    PermanentError,
    Target,
    TargetDownError,
    TargetError,
    TransientError,
)

_PERMANENT = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
    TopicAuthorizationFailedError,
)

#: errors after which the producer that saw them cannot deliver (to some partition, or at all):
#: never dead-letter reasons, the entries are retried on a fresh producer
_PRODUCER_STATE = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    ProducerFenced,
    InvalidProducerIdMapping,
    InvalidTxnState,
    ProducerClosed,
)

#: errors ``send`` raises about the record or the topic, before the record got a sequence
#: number: the producer is still sound. Any other error ``send`` raises (a dead sender task
#: re-raises its fatal error on every call) discards the producer.
_RECORD_ERRORS = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
    KafkaTimeoutError,  # buffer full or metadata not there in time: the producer is fine
)


#: the largest produce request (and so record) the target's producer sends
MAX_REQUEST_BYTES = 8 * 1024 * 1024

class KafkaTarget(Target):
    #: a key's entries in one call are produced in order, and none after one that failed
    key_runs = KeyRuns.IN_ORDER

    def __init__(self, cfg: KafkaTargetConfig, bootstrap: str, timeout_s: float) -> None:
        self.cfg = cfg
        self.label = f"kafka:{cfg.topic}"
        self._init_producer(bootstrap, timeout_s)

    def _init_producer(self, bootstrap: str, timeout_s: float) -> None:
        self.bootstrap = bootstrap
        self.timeout_s = timeout_s
        self._producer = self._new_producer()
        self._started = False
        self._lock = asyncio.Lock()
        #: producers given up on, being stopped in the background
        self._discarded: set[asyncio.Task[None]] = set()
        #: (topic, partition) → held while one of its batches waits to be queued
        self._queueing: dict[tuple[str, int], asyncio.Lock] = {}

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=True,
            request_timeout_ms=int(self.timeout_s * 1000),
            max_request_size=MAX_REQUEST_BYTES,
        )

    async def start(self) -> None:
        await self._started_producer()

    async def _started_producer(self) -> AIOKafkaProducer:
        """The current producer, started (a fresh one if the last was discarded)."""
        async with self._lock:
            if self._started:
                return self._producer
            producer = self._producer
            try:
                await producer.start()
            except BaseException as exc:
                # A failed or interrupted start (the caller's deadline: an unreachable host,
                # DNS that hangs) leaves a half-connected producer: the next call starts a
                # fresh one.
                self._discard(producer)
                if isinstance(exc, KafkaError):
                    raise TargetDownError(f"{type(exc).__name__}: {exc}") from exc
                raise
            if producer is self._producer:  # not discarded meanwhile
                self._started = True
            return producer

    def _discard(self, producer: AIOKafkaProducer) -> None:
        """Replace ``producer`` (if it is still the current one) by a fresh, unstarted one
        and stop it in the background. Idempotent: later failures of a producer already
        discarded change nothing."""
        if producer is not self._producer:
            return
        self._producer = self._new_producer()
        self._started = False
        task = asyncio.ensure_future(_stop_quietly(producer))
        self._discarded.add(task)
        task.add_done_callback(self._discarded.discard)

    def _watch(self, producer: AIOKafkaProducer, fut: asyncio.Future[object]) -> None:
        """Observe ``fut`` (a delivery of ``producer``) whoever awaits it or not: its error
        is always retrieved (a call cancelled by its deadline leaves it behind), and a failed
        delivery discards the producer, whose numbering of that partition now has a gap."""

        def done(f: asyncio.Future[object]) -> None:
            if not f.cancelled() and f.exception() is not None:
                self._discard(producer)

        fut.add_done_callback(done)

    async def close(self) -> None:
        await _stop_quietly(self._producer)  # started or not (an unstarted one holds a client)
        if self._discarded:
            await asyncio.gather(*self._discarded, return_exceptions=True)

    def topic_of(self, entry: Entry) -> str:
        """The topic ``entry`` is produced to."""
        return self.cfg.topic

    def record_of(self, entry: Entry) -> tuple[bytes, list[tuple[str, bytes]]]:
        """The value and headers of ``entry``'s record (keyed by the entry key)."""
        return orjson.dumps(entry.payload), [
            ("walstream-id", entry.id.encode()),
            ("walstream-ts", str(entry.written_at_us).encode()),
        ]

    async def _check_topic(self, producer: AIOKafkaProducer, topic: str) -> None:
        """Raise unless ``topic`` exists and this client may write it (one metadata
        request when the topic is not known yet; afterwards free)."""
        client = producer.client
        if client.cluster.partitions_for_topic(topic) is not None:
            return
        client.add_topic(topic)  # tracked from now on: a topic created later is seen
        if not await client.force_metadata_update():
            raise TargetDownError(f"no broker of {self.bootstrap} answered a metadata request")
        if client.cluster.partitions_for_topic(topic) is not None:
            return
        if topic in client.cluster.unauthorized_topics:
            raise PermanentError(f"TopicAuthorizationFailedError: not authorized to write topic {topic!r}")
        raise TargetDownError(
            f"topic {topic!r} does not exist on {self.bootstrap} (or has no leader yet); "
            "its entries wait for it: create the topic"
        )

    async def apply(self, entries: Sequence[Entry]) -> Outcomes:
        """Produce ``entries``: each partition's records in call order, one batch at a time
        (a batch is sent once the one before it was acknowledged), the partitions side by
        side. After a batch of a partition failed, none of that partition's later records
        is sent: they are reported with that failure's class and retried in order. So the
        entries of one key in one call are applied as if one after the other
        (:attr:`key_runs`)."""
        try:
            # this call's producer: once discarded (by a failed delivery of another call,
            # or of this one) it gets no more records; the runtime retries them in order
            producer = await self._started_producer()
        except TargetError as err:
            return [err] * len(entries)
        out: list[TargetError | None] = [None] * len(entries)
        checked: dict[str, TargetError | None] = {}
        partitioners: dict[str, Callable[[bytes], int]] = {}
        lanes: dict[tuple[str, int], list[_Record]] = {}
        for i, e in enumerate(entries):
            topic = self.topic_of(e)
            if topic not in checked:
                try:
                    await self._check_topic(producer, topic)
                    checked[topic] = None
                    partitioners[topic] = key_partitioner(producer, topic)
                except TargetError as err:
                    checked[topic] = err
            if (topic_error := checked[topic]) is not None:
                out[i] = topic_error
                continue
            value, headers = self.record_of(e)
            key = e.key_bytes
            size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
            if size > MAX_REQUEST_BYTES:
                out[i] = PermanentError(
                    f"MessageSizeTooLargeError: the record is {size} bytes, more than a request "
                    f"may hold ({MAX_REQUEST_BYTES} bytes)"
                )
                continue
            lanes.setdefault((topic, partitioners[topic](key)), []).append(_Record(i, key, value, headers))
        await asyncio.gather(*(self._send_lane(producer, tp, lane, out) for tp, lane in lanes.items()))
        return out

    async def _send_lane(
        self, producer: AIOKafkaProducer, tp: tuple[str, int], lane: list[_Record], out: list[TargetError | None]
    ) -> None:
        """Send one partition's records of a call, in order, one batch at a time."""
        topic, partition = tp
        n = 0
        while n < len(lane):
            if producer is not self._producer:  # discarded by a failure of another lane or call
                self._fail(lane[n:], NotSent(f"{self.label}: producer discarded after a failed delivery"), out)
                return
            batch, taken = fill_batch(producer, ((r.key, r.value, r.headers) for r in lane[n:]))
            members, rest = lane[n:n + taken], lane[n + taken:]
            try:
                # one batch of a partition waits to be queued at a time: aiokafka's wait for
                # a partition's queue (add_batch) counts its timeout down wrongly when many
                # wait together, and failed them within 0.15 s under 100 concurrent calls
                async with self._queueing.setdefault(tp, asyncio.Lock()):
                    fut = await producer.send_batch(batch, topic, partition=partition)
            except Exception as exc:
                if not isinstance(exc, _RECORD_ERRORS):
                    self._discard(producer)
                self._fail(lane[n:], classify_error(exc), out)
                return
            self._watch(producer, fut)
            try:
                # shielded: a call cancelled by its deadline leaves the delivery running,
                # and its outcome still reaches _watch
                await asyncio.shield(fut)
            except Exception as exc:
                err = classify_error(exc)
                self._fail(members, err, out)
                later: TargetError = (
                    TargetDownError(err.message) if isinstance(err, TargetDownError) else NotSent(
                        f"{self.label}: not sent: an earlier batch of {topic}[{partition}] in this call "
                        f"failed ({err.message})"
                    )
                )
                self._fail(rest, later, out)
                return
            n += taken

    @staticmethod
    def _fail(records: Sequence[_Record], err: TargetError, out: list[TargetError | None]) -> None:
        for rec in records:
            out[rec.index] = err


@dataclass(frozen=True, slots=True)
class _Record:
    """One entry's record in a call: its place in the call, key, value and headers."""

    index: int
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await producer.stop()
    except Exception:  # it never worked; nothing to flush
        pass


def classify_error(exc: BaseException) -> TargetError:
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, _PRODUCER_STATE):
        return TransientError(f"{text} (producer discarded; retried on a fresh one)")
    if isinstance(exc, _PERMANENT):
        return PermanentError(text)
    # a topic deleted since its metadata was read: the destination as a whole is missing
    if isinstance(exc, (KafkaConnectionError, KafkaTimeoutError, UnknownTopicOrPartitionError)):
        return TargetDownError(text)
    return TransientError(text)
