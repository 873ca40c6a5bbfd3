"""The worker's one Kafka producer for its own cluster (writes, dead letters).

aiokafka binds a producer to the running event loop when it is built, so the real producer
is created in :meth:`SharedProducer.start`, inside the worker's loop; collaborators hold
this wrapper from construction on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from walstream.kafka_admin import DERIVED_MAX_MESSAGE_BYTES

_PARTITIONER = DefaultPartitioner()

#: the largest produce request (and so record) of the shared producer: dead letters embed
#: whole WAL records (see walstream.kafka_admin)
MAX_REQUEST_BYTES = DERIVED_MAX_MESSAGE_BYTES + 64 * 1024


def key_partitioner(producer: AIOKafkaProducer, topic: str) -> Callable[[bytes], int]:
    """The partition of a key in ``topic`` (known to ``producer``'s metadata now), chosen as
    ``send`` chooses it: murmur2 of the key over the partitions sorted by id, as Java's
    default partitioner. Made once per topic and call: the metadata's partition sets are
    built afresh on every look-up."""
    cluster = producer.client.cluster
    partitions = sorted(cluster.partitions_for_topic(topic) or ())
    available = list(cluster.available_partitions_for_topic(topic) or ())
    return lambda key: int(_PARTITIONER(key, partitions, available))


@dataclass(frozen=True, slots=True)
class Queued:
    """A record handed to the producer in a batch: acknowledged when ``batch`` resolves (to
    the batch's metadata); its offset is the batch's base offset + ``index``."""

    batch: asyncio.Future[Any]
    index: int
    partition: int

    def offset(self) -> int:
        """The record's offset (once ``batch`` resolved)."""
        return int(self.batch.result().offset) + self.index


class SharedProducer:
    """acks=all, idempotent: a retried send never duplicates or reorders a record."""

    def __init__(self, bootstrap: str, request_timeout_s: float) -> None:
        self._bootstrap = bootstrap
        self._request_timeout_ms = max(1000, int(request_timeout_s * 1000))
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self._bootstrap,
                acks="all",
                enable_idempotence=True,
                linger_ms=2,
                max_batch_size=256 * 1024,
                max_request_size=MAX_REQUEST_BYTES,
                request_timeout_ms=self._request_timeout_ms,
            )
            await producer.start()
            self._producer = producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None
    ) -> asyncio.Future[Any]:
        """Queue a record; the returned future resolves to its metadata once acknowledged."""
        if self._producer is None:
            raise RuntimeError("producer not started")
        fut: asyncio.Future[Any] = await self._producer.send(topic, value=value, key=key, partition=partition)
        return fut

    async def send_many(self, records: Sequence[tuple[str, bytes, bytes]]) -> list[Queued | BaseException]:
        """Queue ``records`` (topic, key, value), each partition's in their order, in as few
        batches as fit (one record future less per record, and one metadata look-up per
        topic: a ``send`` per record cost ~30 µs here). Each record gets its place in a
        queued batch, or the error that kept it out: ``MessageSizeTooLargeError`` for a
        record larger than a request may be (refused alone), else the error of queueing its
        batch (nothing of that batch was sent). Raises what waiting for a topic's metadata
        raises (``KafkaTimeoutError``: nothing was sent)."""
        if self._producer is None:
            raise RuntimeError("producer not started")
        producer = self._producer
        out: list[Queued | BaseException | None] = [None] * len(records)
        lanes: dict[tuple[str, int], list[int]] = {}
        partitioners: dict[str, Callable[[bytes], int]] = {}
        limit = MAX_REQUEST_BYTES
        for i, (topic, key, value) in enumerate(records):
            if topic not in partitioners:
                await producer.partitions_for(topic)  # waits for the topic's metadata
                partitioners[topic] = key_partitioner(producer, topic)
            size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, [])
            if size > limit:
                out[i] = MessageSizeTooLargeError(
                    f"The message is {size} bytes when serialized which is larger than the "
                    f"maximum request size ({limit} bytes)"
                )
                continue
            lanes.setdefault((topic, partitioners[topic](key)), []).append(i)
        for (topic, partition), lane in lanes.items():
            n = 0
            while n < len(lane):
                batch = producer.create_batch()
                taken = 0
                for i in lane[n:]:  # an empty batch takes any record; a full one refuses it
                    _, key, value = records[i]
                    if batch.append(timestamp=None, key=key, value=value, headers=[]) is None:
                        break
                    taken += 1
                batch.close()  # nothing else joins it (a send() of the same producer)
                members = lane[n:n + taken]
                n += taken
                try:
                    fut = await producer.send_batch(batch, topic, partition=partition)
                except Exception as exc:
                    for i in members:
                        out[i] = exc
                    continue
                for j, i in enumerate(members):
                    out[i] = Queued(fut, j, partition)
        return [x if x is not None else RuntimeError("not queued") for x in out]
