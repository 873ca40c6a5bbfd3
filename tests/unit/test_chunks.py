"""Records in chunks: the offset ledger admits a chunk's offsets exactly as it admits them one
by one (walstream.delivery.offsets.admit_chunk), and the agent handles a chunk message as the
records it carries (walstream.faust_consumer.ChunkMessage)."""

from __future__ import annotations

import asyncio

from faust.types import TP

from tests.unit.conftest import MemoryConsumer
from walstream.delivery.dead_letters import SourceRecord
from walstream.delivery.offsets import OffsetLedger
from walstream.faust_consumer import ChunkMessage, records_of

A = TP("wal.orders", 0)


async def settle() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_a_chunk_is_admitted_from_the_next_offset_and_rereads_are_skipped() -> None:
    consumer = MemoryConsumer()
    led = OffsetLedger(consumer, refetch_backoff_s=60.0)
    assert await led.admit_chunk(A, [0, 1, 2, 3], 0) == (0, 4)
    # a chunk overlapping what was admitted: only the new records
    assert await led.admit_chunk(A, [2, 3, 4, 5], 0) == (2, 4)
    assert led.rereads_skipped == 2
    # a chunk wholly read before: nothing
    assert await led.admit_chunk(A, [4, 5], 0) == (2, 2)
    led.finished(A, 6, 0)
    assert await led.commit()
    assert consumer.commits[-1] == {A: 6}


async def test_a_hole_in_or_before_a_chunk_admits_nothing_past_it_and_reads_it_again() -> None:
    consumer = MemoryConsumer()
    led = OffsetLedger(consumer, refetch_backoff_s=60.0)
    assert await led.admit_chunk(A, [0, 1], 0) == (0, 2)
    # 2 and 3 were dropped on the way: nothing from 4 on is processed, the consumer goes back to 2
    assert await led.admit_chunk(A, [4, 5, 6], 0) == (0, 0)
    await settle()
    assert consumer.seeks == [(A, 2)]
    # a hole inside a chunk: the part before it is admitted, the rest read again
    assert await led.admit_chunk(A, [2, 3, 5, 6], 0) == (0, 2)
    await settle()
    assert consumer.seeks[-1] == (A, 4)
    led.finished(A, 4, 0)
    assert await led.commit()
    assert consumer.commits[-1] == {A: 4}  # never past the hole


async def test_a_chunk_of_an_old_generation_is_refused_whole() -> None:
    consumer = MemoryConsumer()
    led = OffsetLedger(consumer, refetch_backoff_s=60.0)
    assert await led.admit_chunk(A, [0, 1], 0) == (0, 2)
    consumer.gen = 1
    assert await led.admit_chunk(A, [2, 3], 0) == (0, 0)
    assert await led.admit_chunk(A, [0, 1], 1) == (0, 2)  # the new generation starts over


def test_a_chunk_message_carries_its_records_and_a_plain_one_its_own() -> None:
    records = [SourceRecord("wal.orders", 3, o, b"k", b"v%d" % o) for o in (7, 8, 9)]
    msg = ChunkMessage(TP("wal.orders", 3), records, generation_id=5, timestamp_s=0.0)
    assert (msg.offset, msg.end, msg.partition, msg.generation_id) == (7, 10, 3, 5)
    assert records_of(msg) == records
