"""The delivery agent's offset ledger: which records of each partition it consumes have been
processed, and which offset may be committed.

Why walstream keeps its own. Faust (faust-streaming 0.15.3) can drop a fetched record on its
way to an agent while the consumer group rebalances: a fetch cut short when flow stops, a
record skipped for an old generation, a buffer cleared on revocation. It then treats the hole
as done: a jump in fetched offsets is recorded as a "gap" that commits as if processed, and an
ack one past the committed offset is accepted. For a WAL topic a record dropped that way is an
acknowledged entry that is never delivered (seen: 6 of ~10,000 entries written while
namespaces were created and a worker joined and left). So for every partition the delivery
agent consumes:

* Records are processed strictly in offset order, starting at the group's committed offset
  (the log start when nothing was committed). A record past the next expected offset means the
  ones before it were dropped: it is not processed, and the consumer is moved back to the
  expected offset to read them again. A record before it was processed already (a re-read
  after such a move or a rebalance) and is skipped.
* A partition whose fetch position is past the expected offset while the agent sits idle lost
  its last records the same way, and is moved back too.
* Only the ledger commits these partitions. It commits the offset below which the agent has
  finished every record, after the table changelog writes of those records are flushed. The
  agent releases each message instead of acking it, so Faust's own bookkeeping never commits
  them.

Guarantee: an offset is committed only when every record below it was processed by this
worker in the current group generation, or was deleted by retention before anyone processed
it (logged as an error: that is data loss outside walstream's control).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from walstream.metrics import Metrics

log = logging.getLogger(__name__)

#: A move back to the same offset is not repeated sooner than this: records fetched before the
#: move keep arriving for a few seconds when the agent's buffer is full, and each looks like
#: a new hole. (A move that did not take effect is made again after this long.)
REFETCH_BACKOFF_S = 5.0

#: How long reading a partition's committed offset may take before the record is refused.
OPEN_TIMEOUT_S = 10.0


class ConsumerPort(Protocol):
    """What the ledger needs from the Kafka consumer (Faust's, in a worker)."""

    def generation(self) -> int:
        """The consumer group generation the worker is in."""

    def settled(self) -> bool:
        """False while a rebalance is under way (no moves are made then)."""

    def assignment(self) -> set[Any]:
        """The partitions of the ledger's topics assigned to this worker."""

    def position(self, tp: Any) -> int | None:
        """Offset of the next record the consumer will hand over (None if not known)."""

    async def committed(self, tp: Any) -> int | None:
        """The group's committed offset of ``tp`` (None if nothing was committed)."""

    async def earliest(self, tp: Any) -> int:
        """The first offset still in the log of ``tp``."""

    async def seek(self, tp: Any, offset: int) -> None:
        """Read ``tp`` again from ``offset``."""

    async def flush(self) -> None:
        """Make every table write made so far durable (the changelog producer)."""

    async def commit(self, offsets: dict[Any, int]) -> bool:
        """Commit ``offsets`` for the group; False if the commit was refused."""

    def release(self, message: Any) -> None:
        """Tell the consumer the agent is done with ``message`` without committing anything."""


@dataclass
class _Partition:
    next: int  #: the offset the agent must process next
    done: int  #: every record below this one has been processed
    committed: int  #: what the ledger last committed (or found committed)
    refetch_to: int | None = None
    refetch_at: float = 0.0
    #: (position, next) seen by the previous idle check, when position was past next
    idle_seen: tuple[int, int] | None = None


class OffsetLedger:
    """Admits records in offset order, asks for dropped ones again, and commits progress.

    One per worker, used by the delivery agent only (its concurrency is 1, so admissions and
    completions of a partition come in order).
    """

    def __init__(
        self, consumer: ConsumerPort, refetch_backoff_s: float = REFETCH_BACKOFF_S, metrics: Metrics | None = None
    ) -> None:
        self._consumer = consumer
        self._metrics = metrics
        self._refetch_backoff_s = refetch_backoff_s
        self._generation: int | None = None
        self._partitions: dict[Any, _Partition] = {}
        self._opening: dict[Any, asyncio.Task[_Partition | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._committing: asyncio.Future[None] | None = None
        #: counters, exported as metrics
        self.refetches = 0
        self.rereads_skipped = 0
        self.expired = 0

    @property
    def generation(self) -> int | None:
        return self._generation

    def _sync_generation(self) -> int:
        gen = self._consumer.generation()
        if gen != self._generation:
            # A new assignment: the group's committed offsets are the truth again.
            self._generation = gen
            self._partitions.clear()
            self._opening.clear()
        return gen

    def progress(self) -> dict[Any, int]:
        """For each partition of the current generation: the offset below which every record
        has been processed."""
        return {tp: p.done for tp, p in self._partitions.items()}

    async def _partition(self, tp: Any) -> _Partition | None:
        part = self._partitions.get(tp)
        if part is not None:
            return part
        task = self._opening.get(tp)
        if task is None:
            task = asyncio.ensure_future(self._open(tp, self._sync_generation()))
            self._opening[tp] = task
        return await asyncio.shield(task)

    async def _open(self, tp: Any, generation: int) -> _Partition | None:
        try:
            # bounded: a revocation waits for the agent, which must not wait on the broker
            # for ever; a record refused meanwhile is read again
            committed = await asyncio.wait_for(self._consumer.committed(tp), OPEN_TIMEOUT_S)
            earliest = await asyncio.wait_for(self._consumer.earliest(tp), OPEN_TIMEOUT_S)
        except Exception as exc:
            log.warning("offset ledger: cannot read the committed offset of %s yet: %r", tp, exc)
            self._opening.pop(tp, None)
            return None
        if self._sync_generation() != generation:
            return None
        start = earliest if committed is None else committed
        if start < earliest:
            self._report_expired(tp, start, earliest)
            start = earliest
        part = _Partition(next=start, done=start, committed=start)
        self._partitions[tp] = part
        self._opening.pop(tp, None)
        return part

    async def admit(self, tp: Any, offset: int, generation: int | None = None) -> bool:
        """True when the record at ``offset`` is the next one of ``tp`` to process.

        False for a record processed already (skip it) or one past a hole (drop it: the
        consumer is moved back and reads it again in order). ``generation`` is the record's
        consumer generation; records of an older one are refused.
        """
        return (await self.admit_chunk(tp, [offset], generation)) == (0, 1)

    async def admit_chunk(self, tp: Any, offsets: Sequence[int], generation: int | None = None) -> tuple[int, int]:
        """Which records of a chunk of ``tp`` (their ``offsets``, ascending) to process:
        ``offsets[start:stop]``, possibly empty.

        Records below the next expected offset were processed already and are skipped. From
        the expected offset on, consecutive offsets are admitted; the first record past a hole
        and every one after it are refused, and the consumer is moved back to read the hole
        again in order. ``generation`` is the chunk's consumer generation; a chunk of an older
        one is refused whole.
        """
        gen = self._sync_generation()
        if generation is not None and generation != gen:
            return 0, 0
        part = await self._partition(tp)
        if part is None or self._generation != gen:
            return 0, 0
        start = bisect.bisect_left(offsets, part.next)
        if start:
            self.rereads_skipped += start
            if self._metrics is not None:
                self._metrics.rereads_skipped.labels(_topic(tp)).inc(start)
        stop = start
        while stop < len(offsets) and offsets[stop] == part.next:
            part.next += 1
            stop += 1
        if stop < len(offsets):
            self._refetch(tp, part, f"offset {offsets[stop]} arrived while {part.next} was expected")
        return start, stop

    def release(self, message: Any) -> None:
        """The agent is done with ``message`` (processed, skipped or dropped)."""
        self._consumer.release(message)

    def finished(self, tp: Any, end: int, generation: int | None) -> None:
        """Every admitted record of ``tp`` below ``end`` has been processed."""
        if generation != self._generation:
            return  # admitted before a rebalance: the new generation starts from the committed offset
        part = self._partitions.get(tp)
        if part is not None and part.done < end <= part.next:
            part.done = end

    def abandoned(self, tp: Any, start: int, generation: int | None) -> None:
        """The admitted records of ``tp`` from ``start`` on were not processed: read them again."""
        part = self._partitions.get(tp)
        if generation != self._generation or part is None or start >= part.next:
            return
        part.next = max(start, part.done)
        part.refetch_to = None
        self._refetch(tp, part, "a batch failed")

    async def flush_tables(self) -> None:
        """Wait until every table write made so far is durable (raises if one failed)."""
        await self._consumer.flush()

    async def commit(self) -> bool:
        """Commit what is finished and not yet committed (after flushing table writes)."""
        gen = self._generation
        offsets = {tp: p.done for tp, p in self._partitions.items() if p.done > p.committed}
        if not offsets:
            return False
        await self._consumer.flush()
        if not await self._consumer.commit(offsets):
            return False
        if gen == self._generation:
            for tp, offset in offsets.items():
                part = self._partitions.get(tp)
                if part is not None:
                    part.committed = max(part.committed, offset)
        return True

    async def tick(self, idle: bool) -> None:
        """The agent's periodic call (about once a second): commit, then look for records that
        vanished. Nothing is committed while a rebalance is under way (the revocation commits).

        The commit runs on its own: flushing table writes can take seconds under load, and
        the next call skips committing while one is still running.
        """
        if self._consumer.settled() and (self._committing is None or self._committing.done()):
            self._committing = asyncio.ensure_future(self._commit_logged())
        await self.check_idle(idle)

    async def _commit_logged(self) -> None:
        try:
            await self.commit()
        except Exception:
            log.exception("offset commit failed; it is tried again")

    async def check_idle(self, idle: bool) -> None:
        """Called about once a second: move back partitions whose last records vanished.

        With the agent ``idle`` (nothing buffered for it, no batch in hand), a fetch position
        past the next expected offset means records were handed over and dropped. It takes two
        checks in a row seeing the same positions to act, so records merely in transit do not
        count.
        """
        gen = self._sync_generation()
        if not self._consumer.settled():
            for known in self._partitions.values():
                known.idle_seen = None
            return
        assigned = sorted(self._consumer.assignment())
        unknown = [tp for tp in assigned if tp not in self._partitions]
        if unknown:  # read their committed offsets together, not one round trip each
            await asyncio.gather(*(self._partition(tp) for tp in unknown))
        for tp in assigned:
            part = self._partitions.get(tp)
            if part is None or self._generation != gen:
                continue
            position = self._consumer.position(tp)
            if not idle or position is None or position <= part.next:
                part.idle_seen = None
                continue
            seen = (position, part.next)
            if part.idle_seen == seen:
                part.idle_seen = None
                self._refetch(tp, part, f"fetch position {position} is past {part.next} with nothing left to process")
            else:
                part.idle_seen = seen

    def _refetch(self, tp: Any, part: _Partition, why: str) -> None:
        now = time.monotonic()
        if part.refetch_to == part.next and now - part.refetch_at < self._refetch_backoff_s:
            return
        part.refetch_to, part.refetch_at = part.next, now
        self.refetches += 1
        if self._metrics is not None:
            self._metrics.refetches.labels(_topic(tp)).inc()
        log.warning("%s[%s]: %s; reading again from %d (records dropped during a rebalance)",
                    _topic(tp), getattr(tp, "partition", ""), why, part.next)
        task = asyncio.ensure_future(self._move(tp, part, part.next, self._generation))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _move(self, tp: Any, part: _Partition, offset: int, generation: int | None) -> None:
        try:
            earliest = await self._consumer.earliest(tp)
            if generation != self._generation or part.next != offset:
                return
            if offset < earliest:
                self._report_expired(tp, offset, earliest)
                part.next = part.done = earliest
                offset = earliest
            await self._consumer.seek(tp, offset)
        except Exception:
            # the next hole or idle check asks again
            log.exception("could not move %s back to offset %d", tp, offset)
            part.refetch_to = None

    def _report_expired(self, tp: Any, start: int, earliest: int) -> None:
        self.expired += earliest - start
        if self._metrics is not None:
            self._metrics.expired_records.labels(_topic(tp)).inc(earliest - start)
        log.error("%s: offsets %d..%d were deleted by retention before they were delivered; "
                  "their entries are lost (raise the topic's retention.ms)", tp, start, earliest - 1)


def _topic(tp: Any) -> str:
    return str(getattr(tp, "topic", tp))
