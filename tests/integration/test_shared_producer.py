"""The shared producer's batched sends (the write path's): every record lands at the partition
and offset it was answered with, a key's records in order, one too large refused alone."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.partitioner import murmur2

from tests.integration.conftest import KAFKA, create_topic
from walstream.producer import MAX_REQUEST_BYTES, Queued, SharedProducer

pytestmark = pytest.mark.timeout(120)


def test_records_land_where_their_answers_say_in_order_per_key(unique: str) -> None:
    topic = f"{unique}.shared"
    create_topic(topic, partitions=3)
    pad = b"x" * 3000  # several batches per partition (256 KiB each)
    records = [(topic, f"k{i % 7}".encode(), b"%d:" % i + pad) for i in range(600)]
    records.insert(300, (topic, b"k3", b"y" * (MAX_REQUEST_BYTES + 1)))

    async def run() -> tuple[list[Queued | BaseException], dict[tuple[int, int], tuple[bytes, bytes]]]:
        producer = SharedProducer(KAFKA, request_timeout_s=30)
        await producer.start()
        try:
            sent = await producer.send_many(records)
            await asyncio.gather(*{s.batch for s in sent if isinstance(s, Queued)})
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(3)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            got: dict[tuple[int, int], tuple[bytes, bytes]] = {}
            while sum(1 for _ in got) < sum(ends.values()):
                for tp, recs in (await consumer.getmany(timeout_ms=1000)).items():
                    for r in recs:
                        got[(tp.partition, r.offset)] = (r.key, r.value)
        finally:
            await consumer.stop()
        return sent, got

    sent, got = asyncio.run(run())
    too_large = sent[300]
    assert isinstance(too_large, MessageSizeTooLargeError), too_large
    assert len(got) == 600, "every other record landed, once"
    where: dict[bytes, list[tuple[int, int]]] = {}
    for (_, key, value), s in zip(records, sent, strict=True):
        if s is too_large:
            continue
        assert isinstance(s, Queued), s
        place = (s.partition, s.offset())
        assert got[place] == (key, value), f"the answer for {value[:6]!r} names {place}"
        # the partition the worker computes for a key (walstream.app.partition_for)
        assert s.partition == (murmur2(key) & 0x7FFFFFFF) % 3
        where.setdefault(key, []).append(place)
    for key, places in where.items():
        assert len({p for p, _ in places}) == 1, f"{key!r} in one partition"
        offsets = [o for _, o in places]
        assert offsets == sorted(offsets), f"{key!r} in write order"
