"""The Kafka target under many concurrent calls to one partition (real broker): none fails.

aiokafka's wait for a partition's batch queue counts its timeout down wrongly when many
batches wait together (it failed 69 of 150 such calls within 0.15 s); the target queues one
batch per partition at a time."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.conftest import KAFKA, create_topic
from walstream.entry import Entry, WriteClock
from walstream.namespaces.model import KafkaTargetConfig
from walstream.targets.kafka import KafkaTarget

pytestmark = pytest.mark.timeout(120)


def test_concurrent_calls_to_one_partition_all_succeed(unique: str) -> None:
    topic = f"{unique}.calls"
    create_topic(topic, partitions=1)
    clock = WriteClock()

    async def run() -> list[object]:
        t = KafkaTarget(KafkaTargetConfig(type="kafka", topic=topic), KAFKA, timeout_s=5.0)
        try:
            await t.start()
            calls = [
                t.apply([Entry(id=f"e{i}", namespace="ns", key=f"k{i}", payload={"i": i},
                               written_at_us=clock.now_us())])
                for i in range(300)
            ]
            return [o for outcomes in await asyncio.gather(*calls) for o in outcomes]
        finally:
            await t.close()

    outcomes = asyncio.run(run())
    assert [o for o in outcomes if o is not None] == []
