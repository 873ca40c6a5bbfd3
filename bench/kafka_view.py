"""Kafka as the benchmarks see it from outside the workers: end offsets, group lag, clean-up."""

from __future__ import annotations

import os

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient


class KafkaView:
    """End offsets and committed offsets of any topic, and deleting a run's topics.

    ``broker`` defaults to ``WALSTREAM_BROKER`` (``127.0.0.1:9092``). Call :meth:`start`
    before use and :meth:`stop` after.
    """

    def __init__(self, broker: str | None = None) -> None:
        broker = broker or os.environ.get("WALSTREAM_BROKER", "127.0.0.1:9092")
        self.consumer = AIOKafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False)
        self.admin = AIOKafkaAdminClient(bootstrap_servers=broker)

    async def start(self) -> None:
        await self.consumer.start()
        await self.admin.start()

    async def stop(self) -> None:
        await self.consumer.stop()
        await self.admin.close()

    async def _partitions(self, topic: str) -> set[int]:
        parts = self.consumer.partitions_for_topic(topic)
        if not parts:
            await self.consumer._client.force_metadata_update()  # topics created after start
            parts = self.consumer.partitions_for_topic(topic)
        return set(parts or ())

    async def ends(self, topic: str) -> dict[int, int]:
        """End offset of each partition of ``topic`` ({} when the topic does not exist)."""
        parts = await self._partitions(topic)
        if not parts:
            return {}
        ends = await self.consumer.end_offsets([TopicPartition(topic, p) for p in parts])
        return {tp.partition: off for tp, off in ends.items()}

    async def end_total(self, topic: str) -> int:
        """Records ever written to ``topic``: the sum of its end offsets."""
        return sum((await self.ends(topic)).values())

    async def lag(self, group: str, topic: str) -> int:
        """Records of ``topic`` not yet committed by consumer group ``group``."""
        tps = [TopicPartition(topic, p) for p in await self._partitions(topic)]
        ends = await self.consumer.end_offsets(tps)
        committed = await self.admin.list_consumer_group_offsets(group, partitions=tps)
        total = 0
        for tp in tps:
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            total += max(0, ends[tp] - done)
        return total

    async def delete_topics(self, names: list[str]) -> None:
        """Delete those of ``names`` that exist."""
        existing = set(await self.admin.list_topics())
        doomed = [t for t in names if t in existing]
        if doomed:
            await self.admin.delete_topics(doomed, timeout_ms=30_000)
