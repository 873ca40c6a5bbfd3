"""The offset ledger: records are processed in offset order, dropped ones are read again, and
only what was processed is committed (walstream.delivery.offsets)."""

from __future__ import annotations

import asyncio

from faust.types import TP

from tests.unit.conftest import MemoryConsumer
from walstream.delivery.offsets import OffsetLedger

A = TP("wal.orders", 0)
B = TP("wal.orders", 1)


def ledger(consumer: MemoryConsumer, backoff_s: float = 60.0) -> OffsetLedger:
    return OffsetLedger(consumer, refetch_backoff_s=backoff_s)


async def admit_all(led: OffsetLedger, tp: TP, offsets: range | list[int]) -> list[int]:
    return [o for o in offsets if await led.admit(tp, o, 0)]


async def settle() -> None:
    await asyncio.sleep(0)  # let the ledger's move-back task run
    await asyncio.sleep(0)


async def test_starts_at_the_committed_offset_and_commits_only_what_finished() -> None:
    c = MemoryConsumer()
    c.committed_offsets[A] = 10
    led = ledger(c)
    assert await admit_all(led, A, range(5, 15)) == [10, 11, 12, 13, 14]  # 5..9: re-reads
    assert led.rereads_skipped == 5
    led.finished(A, 13, 0)
    assert await led.commit()
    assert c.commits == [{A: 13}] and c.flushes == 1  # table writes flushed before the commit
    assert not await led.commit()  # nothing new finished
    led.finished(A, 15, 0)
    await led.commit()
    assert c.commits[-1] == {A: 15}


async def test_nothing_committed_starts_at_the_log_start() -> None:
    c = MemoryConsumer()
    c.earliest_offset = 3
    led = ledger(c)
    assert await admit_all(led, A, [3, 4]) == [3, 4]


async def test_a_hole_is_read_again_not_skipped() -> None:
    c = MemoryConsumer()
    led = ledger(c)
    assert await admit_all(led, A, [0, 1]) == [0, 1]
    # Given Faust dropped offsets 2 and 3, when 4 and 5 arrive
    assert await admit_all(led, A, [4, 5]) == []
    await settle()
    # Then the consumer is moved back once (5 does not ask again), and nothing past 2 commits
    assert c.seeks == [(A, 2)] and led.refetches == 1
    led.finished(A, 2, 0)
    await led.commit()
    assert c.commits == [{A: 2}]
    # When the records are read again: 2..5 in order, the stale 4 and 5 already dropped
    assert await admit_all(led, A, [2, 3, 4, 5]) == [2, 3, 4, 5]
    led.finished(A, 6, 0)
    await led.commit()
    assert c.commits[-1] == {A: 6}


async def test_a_hole_asks_again_after_the_backoff() -> None:
    c = MemoryConsumer()
    led = ledger(c, backoff_s=0.0)
    await admit_all(led, A, [0, 2])
    await settle()
    await admit_all(led, A, [3])
    await settle()
    assert c.seeks == [(A, 1), (A, 1)]


async def test_partitions_are_independent() -> None:
    c = MemoryConsumer()
    led = ledger(c)
    assert await admit_all(led, A, [0, 1]) == [0, 1]
    assert await admit_all(led, B, [0, 2]) == [0]
    led.finished(A, 2, 0)
    led.finished(B, 1, 0)
    await led.commit()
    assert c.commits == [{A: 2, B: 1}]


async def test_records_deleted_by_retention_are_reported_and_passed() -> None:
    c = MemoryConsumer()
    c.committed_offsets[A] = 5
    c.earliest_offset = 8
    led = ledger(c)
    assert await admit_all(led, A, [8, 9]) == [8, 9]
    assert led.expired == 3


async def test_a_new_generation_starts_again_from_the_committed_offset() -> None:
    c = MemoryConsumer()
    led = ledger(c)
    assert await admit_all(led, A, range(0, 10)) == list(range(10))
    led.finished(A, 4, 0)
    await led.commit()
    # When the group rebalances (another worker had the partition and committed 6)
    c.gen = 1
    c.committed_offsets[A] = 6
    assert not await led.admit(A, 10, 0)  # a record of the old generation
    led.finished(A, 10, 0)  # a batch of the old generation finishing late counts for nothing
    assert await led.admit(A, 6, 1)
    led.finished(A, 7, 1)
    await led.commit()
    assert c.commits[-1] == {A: 7}


async def test_vanished_last_records_are_read_again_when_idle() -> None:
    c = MemoryConsumer()
    c.assigned = {A}
    led = ledger(c)
    assert await admit_all(led, A, [0, 1]) == [0, 1]
    led.finished(A, 2, 0)
    # Given the consumer handed over records up to 4 and none reached the agent
    c.positions[A] = 5
    await led.tick(idle=False)  # busy: records may be in the agent's hands
    await led.tick(idle=True)  # first idle sighting: may still be in transit
    await settle()
    assert c.seeks == []
    await led.tick(idle=True)  # the same again: they are gone
    await settle()
    assert c.seeks == [(A, 2)]


async def test_no_move_while_a_rebalance_is_under_way() -> None:
    c = MemoryConsumer()
    c.assigned = {A}
    c.positions[A] = 5
    c.is_settled = False
    led = ledger(c)
    for _ in range(3):
        await led.tick(idle=True)
    await settle()
    assert c.seeks == [] and c.commits == []


async def test_an_abandoned_batch_is_read_again() -> None:
    c = MemoryConsumer()
    led = ledger(c)
    assert await admit_all(led, A, range(0, 6)) == list(range(6))
    led.finished(A, 2, 0)
    led.abandoned(A, 2, 0)  # offsets 2..5 failed
    await settle()
    assert c.seeks == [(A, 2)]
    led.finished(A, 6, 0)  # cannot jump over records that were not processed
    await led.commit()
    assert c.commits == [{A: 2}]
    assert await admit_all(led, A, range(2, 6)) == [2, 3, 4, 5]


async def test_a_refused_commit_is_tried_again() -> None:
    c = MemoryConsumer()
    led = ledger(c)
    await admit_all(led, A, [0, 1])
    led.finished(A, 2, 0)
    c.refuse_commits = True
    assert not await led.commit()
    c.refuse_commits = False
    assert await led.commit()
    assert c.commits == [{A: 2}]


async def test_the_periodic_commit_runs_in_the_background_one_at_a_time() -> None:
    c = MemoryConsumer()
    release = asyncio.Event()
    flushes = 0

    async def slow_flush() -> None:  # table writes still on their way
        nonlocal flushes
        flushes += 1
        await release.wait()

    c.flush = slow_flush  # type: ignore[method-assign]
    led = ledger(c)
    await admit_all(led, A, [0, 1])
    led.finished(A, 2, 0)
    await asyncio.wait_for(led.tick(idle=False), 1)  # does not wait for the flush
    await asyncio.wait_for(led.tick(idle=False), 1)
    await settle()
    assert flushes == 1 and c.commits == []
    release.set()
    await settle()
    assert c.commits == [{A: 2}]


async def test_a_record_is_refused_while_the_committed_offset_cannot_be_read() -> None:
    c = MemoryConsumer()
    failures = [ConnectionError("coordinator moving")]
    real_committed = c.committed

    async def flaky_committed(tp: TP) -> int | None:
        if failures:
            raise failures.pop()
        return await real_committed(tp)

    c.committed = flaky_committed  # type: ignore[method-assign]
    led = ledger(c)
    assert not await led.admit(A, 0, 0)  # refused, not lost: the consumer reads it again
    assert await admit_all(led, A, [0, 1]) == [0, 1]
