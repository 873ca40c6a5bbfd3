"""The worker's one Kafka producer for its own cluster (writes, dead letters).

aiokafka binds a producer to the running event loop when it is built, so the real producer
is created in :meth:`SharedProducer.start`, inside the worker's loop; collaborators hold
this wrapper from construction on.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaProducer

from walstream.kafka_admin import DERIVED_MAX_MESSAGE_BYTES


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
                # dead letters embed whole WAL records (see walstream.kafka_admin)
                max_request_size=DERIVED_MAX_MESSAGE_BYTES + 64 * 1024,
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
