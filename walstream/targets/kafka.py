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
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidTopicError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)

from walstream.entry import Entry
from walstream.namespaces.model import KafkaTargetConfig
from walstream.targets.base import Outcomes, PermanentError, Target, TargetDownError, TargetError, TransientError

_PERMANENT = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
    TopicAuthorizationFailedError,
)


class KafkaTarget(Target):
    def __init__(self, cfg: KafkaTargetConfig, bootstrap: str, timeout_s: float) -> None:
        self.cfg = cfg
        self.label = f"kafka:{cfg.topic}"
        self.bootstrap = bootstrap
        self.timeout_s = timeout_s
        self._producer = self._new_producer()
        self._started = False
        self._lock = asyncio.Lock()
        #: producers given up on, being stopped in the background
        self._discarded: set[asyncio.Task[None]] = set()

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=True,
            request_timeout_ms=int(self.timeout_s * 1000),
            max_request_size=8 * 1024 * 1024,
        )

    async def start(self) -> None:
        async with self._lock:
            if self._started:
                return
            try:
                await self._producer.start()
            except BaseException as exc:
                # A failed or interrupted start (the caller's deadline: an unreachable host,
                # DNS that hangs) leaves a half-connected producer: the next call starts a
                # fresh one.
                old, self._producer = self._producer, self._new_producer()
                task = asyncio.ensure_future(_stop_quietly(old))
                self._discarded.add(task)
                task.add_done_callback(self._discarded.discard)
                if isinstance(exc, KafkaError):
                    raise TargetDownError(f"{type(exc).__name__}: {exc}") from exc
                raise
            self._started = True

    async def close(self) -> None:
        await _stop_quietly(self._producer)  # started or not (an unstarted one holds a client)
        if self._discarded:
            await asyncio.gather(*self._discarded, return_exceptions=True)

    async def _check_topic(self) -> None:
        """Raise unless the topic exists and this client may write it (one metadata
        request when the topic is not known yet; afterwards free)."""
        client = self._producer.client
        topic = self.cfg.topic
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
        try:
            await self.start()
            await self._check_topic()
        except TargetError as err:
            return [err] * len(entries)
        futures: list[asyncio.Future[object] | TargetError] = []
        for e in entries:
            try:
                futures.append(
                    await self._producer.send(
                        self.cfg.topic,
                        value=orjson.dumps(e.payload),
                        key=e.key_bytes,
                        headers=[
                            ("walstream-id", e.id.encode()),
                            ("walstream-ts", str(e.written_at_us).encode()),
                        ],
                    )
                )
            except Exception as exc:
                futures.append(_classify(exc))
        out: Outcomes = []
        for f in futures:
            if isinstance(f, TargetError):
                out.append(f)
                continue
            try:
                await f
                out.append(None)
            except Exception as exc:
                out.append(_classify(exc))
        return out


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await producer.stop()
    except Exception:  # it never worked; nothing to flush
        pass


def _classify(exc: BaseException) -> TargetError:
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, _PERMANENT):
        return PermanentError(text)
    # a topic deleted since its metadata was read: the destination as a whole is missing
    if isinstance(exc, (KafkaConnectionError, KafkaTimeoutError, UnknownTopicOrPartitionError)):
        return TargetDownError(text)
    return TransientError(text)
