"""The worker's one Kafka producer for its own cluster (writes, dead letters).

aiokafka binds a producer to the running event loop when it is built, so the real producer
is created in :meth:`SharedProducer.start`, inside the worker's loop; collaborators hold
this wrapper from construction on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

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


def fill_batch(
    producer: AIOKafkaProducer, records: Iterable[tuple[bytes, bytes | None, list[tuple[str, bytes]]]]
) -> tuple[Any, int]:
    """A builder batch of ``producer`` holding the first of ``records`` (key, value, headers)
    that fit, at least one (an empty batch takes any record); returns it and how many it
    took. It is closed: no ``send()`` of the same producer joins it."""
    batch = producer.create_batch()
    taken = 0
    for key, value, headers in records:
        if batch.append(timestamp=None, key=key, value=value, headers=headers) is None:
            break
        taken += 1
    batch.close()
    return batch, taken


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
