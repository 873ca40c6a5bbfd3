"""Faust's Kafka consumer, hardened for rebalances of a live worker, and the offset ledger's
view of it.

A subscription change, which walstream makes whenever a namespace is created, replaces
aiokafka's assignment at once (faust-streaming 0.15.3 on aiokafka 0.14). Whatever Faust is
doing with a partition at that moment then meets a bare ``AssertionError`` from aiokafka,
which kills the Faust service doing it and with it the worker:

* the fetcher, reading a fetched record's end offset (``highwater``): here the last known
  end offset is answered instead (it only feeds lag monitoring; the records of that fetch
  are discarded by Faust as belonging to an old generation);
* table recovery, seeking changelog or stream partitions: here the assertion becomes
  aiokafka's ``IllegalStateError``, on which Faust's recovery starts over ("rebalance again").

Records of the ledger's topics reach the delivery agent in chunks: one Faust message per
partition per fetch (:class:`ChunkMessage`), not one per record. Faust's hand-off costs
~150 µs per message (a task pair per ``wait_first``, the conductor, the stream iterator),
which bounded delivery to a few percent of the Kafka underneath; per chunk it is paid once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from aiokafka import AIOKafkaConsumer as AIOKafkaConsumerClient
from aiokafka import TopicPartition as AIOKafkaTP
from aiokafka.errors import IllegalStateError, KafkaError
from aiokafka.protocol.group import LeaveGroupRequest
from aiokafka.structs import OffsetAndMetadata
from faust.exceptions import ConsumerNotStarted
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP
from faust.types.tuples import ConsumerMessage, Message, ack_lock
from mode.utils.futures import notify

from walstream.delivery.dead_letters import SourceRecord
from walstream.faust_tables import Changelogs

log = logging.getLogger(__name__)

#: The most records one chunk carries (a fetch of one partition is split beyond this).
CHUNK_MAX_RECORDS = 1000


class ChunkMessage(ConsumerMessage):
    """Consecutive records of one partition, fetched together, as one Faust message.

    ``offset`` is the first record's and ``end`` one past the last's; ``key`` and ``value``
    are empty (the records are in ``records``). The agent releases it as it would one record.
    """

    __slots__ = ("end", "records")

    def __init__(self, tp: TP, records: list[SourceRecord], generation_id: int, timestamp_s: float) -> None:
        super().__init__(tp.topic, tp.partition, records[0].offset, timestamp_s, 0, None, None, b"",
                         None, 0, 0, tp, generation_id=generation_id)
        self.records = records
        self.end = records[-1].offset + 1


def records_of(message: Message) -> list[SourceRecord]:
    """The records ``message`` carries: a chunk's, or the one record of a plain message (Faust's
    test harness and any topic outside the ledger's)."""
    if isinstance(message, ChunkMessage):
        return message.records
    return [SourceRecord(message.topic, message.partition, message.offset, message.key, message.value)]


class _ReadOffsets(dict[TP, int | None]):
    """Faust's read offsets, always unknown (None) for the ledger's topics."""

    def __init__(self, ledger_topics: Collection[str]) -> None:
        super().__init__()
        self._ledger_topics = ledger_topics

    def __getitem__(self, tp: TP) -> int | None:
        if tp.topic in self._ledger_topics:
            return None
        return self.get(tp)


@contextmanager
def _unassigned_is_illegal_state() -> Iterator[None]:
    try:
        yield
    except AssertionError as exc:  # aiokafka: the partition (or any) is not assigned any more
        raise IllegalStateError(f"partition not assigned (the subscription changed): {exc!r}") from exc


class LeavingConsumerThread(AIOKafkaConsumerThread):
    """Faust's consumer thread, leaving the group explicitly when the worker stops.

    A static member (``group.instance.id``, see ``Settings.instance_id``) sends no LeaveGroup
    when it closes (aiokafka, per KIP-345): that is what lets a crashed worker restart into
    its old assignment, but a worker stopped for good would keep its partitions unserved
    until its session expired. So a stopping worker leaves by its member id (LeaveGroup v1,
    which the broker honours for a static member too): its partitions move at once, as
    with dynamic membership. A SIGKILLed worker sends nothing and gets them back on restart.
    """

    async def on_thread_stop(self) -> None:
        await self._leave_group()
        await super().on_thread_stop()

    async def _leave_group(self) -> None:
        consumer = self._consumer
        coordinator = getattr(consumer, "_coordinator", None) if consumer is not None else None
        if coordinator is None or coordinator._group_instance_id is None:
            return  # dynamic membership: aiokafka leaves by itself
        if coordinator.generation <= 0 or not coordinator.member_id:
            return
        try:
            await asyncio.wait_for(
                coordinator._send_req(LeaveGroupRequest(coordinator.group_id, coordinator.member_id)), 5.0
            )
        except Exception as exc:  # stopping anyway: the session expires instead
            log.warning("could not leave the consumer group: %r", exc)
        else:
            log.info("left the consumer group (static member %s)", coordinator._group_instance_id)


class RebalanceSafeConsumer(AIOKafkaConsumer):
    """The aiokafka-driven Faust consumer, safe across a subscription change."""

    #: Awaited before the subscription changes. A new subscription drops the assignment at
    #: once, so the revocation that follows can commit nothing: progress is committed here.
    before_subscribe: Callable[[], Awaitable[Any]] | None = None

    #: the ledger's topics, whose records are handed over in chunks
    _chunked: Collection[str] = ()
    #: rotates which partition's chunk is handed over first, so none waits behind the others
    _rotation = 0

    def hand_offsets_to_ledger(self, topics: Collection[str], before_subscribe: Callable[[], Awaitable[Any]]) -> None:
        """The offset ledger owns the offsets of ``topics`` (a live collection).

        Faust drops a fetched record older than the last one it handed over for its partition
        (its "read offset"). After the ledger moves a partition back, the rest of a fetch
        already in Faust's hands raises that read offset again, and the records read again
        would all be dropped; for these topics the ledger orders and deduplicates exactly, so
        the filter is off.
        """
        self._read_offset = _ReadOffsets(topics)
        self._chunked = topics
        self.before_subscribe = before_subscribe

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:  # noqa: ASYNC109 - Faust's signature
        """Faust's fetch loop, handing over the ledger's topics one chunk per partition per
        fetch (:class:`ChunkMessage`) and other topics record by record, as Faust does.

        Faust's own checks are kept: nothing is handed over while flow is stopped (the
        consumer seeks back to committed offsets then), after the generation changed, or for
        a partition neither active nor buffered.
        """
        records, active = await self._wait_next_records(timeout)
        generation = self.app.consumer_generation_id
        if records is None or self.should_stop:
            return
        if not self.flow_active:
            try:
                await self.perform_seek()
            except Exception as exc:
                log.warning("seek while flow is stopped failed: %r", exc)
            return
        tps = list(records)
        if len(tps) > 1:
            self._rotation = (self._rotation + 1) % len(tps)
            tps = tps[self._rotation:] + tps[:self._rotation]
        now = time.time()
        for tp in tps:
            if not self.flow_active or self.app.consumer_generation_id != generation:
                return
            if active is not None and tp not in active and tp not in self._buffered_partitions:
                continue
            fetched = records[tp]
            if not fetched:
                continue
            self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
            if tp.topic not in self._chunked:
                for record in fetched:
                    if not self.flow_active or self.app.consumer_generation_id != generation:
                        return
                    yield tp, self._to_message(tp, record)
                continue
            for start in range(0, len(fetched), CHUNK_MAX_RECORDS):
                if not self.flow_active or self.app.consumer_generation_id != generation:
                    return
                part = [SourceRecord(r.topic, r.partition, r.offset, r.key, r.value)
                        for r in fetched[start:start + CHUNK_MAX_RECORDS]]
                yield tp, ChunkMessage(tp, part, generation, now)

    def on_buffer_full(self, tp: TP) -> None:
        """Faust stops fetching a partition whose channel queue is nearly full, and fetches it
        again once the queue is seen empty. For the ledger's topics that hand-back could be
        missed (one agent's short queue of chunks is often that full): a partition of delayed
        entries then sat unfetched for good after a move back (seen in test_crash_points). A
        full queue blocks Faust's hand-off instead, which stops fetching just as well."""
        if tp.topic in self._chunked:
            return
        super().on_buffer_full(tp)

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return LeavingConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def subscribe(self, topics: Iterable[str]) -> None:
        if self.before_subscribe is not None:
            try:
                await self.before_subscribe()
            except Exception:  # the subscription matters more; a rebalance re-reads
                log.exception("commit before re-subscribing failed")
        await super().subscribe(topics)

    async def seek_wait(self, partitions: Mapping[TP, int]) -> None:
        with _unassigned_is_illegal_state():
            await super().seek_wait(partitions)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        with _unassigned_is_illegal_state():
            return await super().seek_to_committed()

    async def _seek(self, partition: TP, offset: int) -> None:
        with _unassigned_is_illegal_state():
            await super()._seek(partition, offset)

    def highwater(self, tp: TP) -> int:
        try:
            return int(super().highwater(tp))
        except AssertionError:  # "Partition is not assigned": a rebalance is under way
            known: Any = self.app.monitor.tp_end_offsets.get(tp)
            return int(known) if known is not None else 0

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Faust records a jump in fetched offsets as a "gap" it may commit as processed.

        On a WAL topic a jump means records were dropped on the way to the agent, never that
        they do not exist (the topics are neither compacted nor transactional). The offset
        ledger (walstream.delivery.offsets) reads them again and alone commits these topics,
        so no gap is kept.
        """


async def _in_loop_of(thread: Any, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
    """Await ``fn(*args)`` (a coroutine of Faust's aiokafka consumer) on the consumer
    thread's event loop, where that consumer lives.

    Not through Faust's ``call_thread``: its method queue has two workers, which Faust's
    fetcher and table recovery keep busy with long calls during a rebalance; the offset
    ledger's reads of committed offsets queued behind them past their 10 s bound (a
    restarted worker's first delivery came ~12 s late). aiokafka's coroutines may run
    concurrently in their own loop.
    """
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(fn(*args), thread.thread_loop))


def assignment_of(app: Any) -> set[Any]:
    """The partitions assigned to ``app``'s consumer; empty before the consumer has started
    (the web server answers first: a view or a metrics scrape must not fail then)."""
    try:
        return set(app.consumer.assignment())
    except ConsumerNotStarted:
        return set()


class FaustConsumerPort:
    """The offset ledger's view of a worker's Faust consumer (see walstream.delivery.offsets).

    ``topics`` names the topics the ledger owns; only their partitions are reported.
    ``bootstrap``: Kafka's address, for :meth:`earliest`'s own client.
    """

    def __init__(self, app: Any, topics: Collection[str], bootstrap: str) -> None:
        self._app = app
        self._topics = topics
        self._bootstrap = bootstrap
        self._offsets_client: AIOKafkaConsumerClient | None = None
        self._offsets_client_lock = asyncio.Lock()
        self._last_write: Any = None
        #: the batched table writes (walstream.faust_tables), flushed with Faust's own
        self.changelogs: Changelogs | None = None

    def generation(self) -> int:
        return int(self._app.consumer_generation_id)

    def settled(self) -> bool:
        return not self._app.rebalancing and bool(self._app.flow_control.is_active())

    def assignment(self) -> set[Any]:
        return {tp for tp in assignment_of(self._app) if tp.topic in self._topics}

    def _kafka(self) -> Any:
        return self._app.consumer._thread._ensure_consumer()

    def _state(self, tp: Any) -> Any:
        """aiokafka's fetch state of ``tp`` (None when not assigned), read without a trip to the
        consumer thread: a value a moment stale is fine for what reads it (checks, gauges)."""
        try:
            assignment = self._kafka()._subscription.subscription.assignment
            return assignment.state_value(AIOKafkaTP(tp.topic, tp.partition)) if assignment else None
        except Exception:
            return None

    def position(self, tp: Any) -> int | None:
        # aiokafka's consumed position: past every record it has handed to Faust (a stale
        # value only delays the idle check by a second)
        state = self._state(tp)
        if state is None or not state.has_valid_position:
            return None
        return int(state.position)

    def highwater(self, tp: Any) -> int | None:
        """The offset the next record produced to ``tp`` will get, as of the last fetch."""
        state = self._state(tp)
        return None if state is None or state.highwater is None else int(state.highwater)

    async def committed(self, tp: Any) -> int | None:
        thread = self._app.consumer._thread
        offset = await _in_loop_of(thread, self._kafka().committed, AIOKafkaTP(tp.topic, tp.partition))
        return None if offset is None or offset < 0 else int(offset)

    async def earliest(self, tp: Any) -> int:
        # Asked on a connection of its own: on the Faust consumer's, a ListOffsets request
        # waits behind the fetch long-polls to the same broker, ~1.5 s each and one after the
        # other, so opening a new namespace's partitions took up to 18 s (and timed out).
        client = await self._client()
        key = AIOKafkaTP(tp.topic, tp.partition)
        found = await client.beginning_offsets([key])
        return int(found[key])

    async def _client(self) -> AIOKafkaConsumerClient:
        async with self._offsets_client_lock:
            if self._offsets_client is None:
                client = AIOKafkaConsumerClient(bootstrap_servers=self._bootstrap, enable_auto_commit=False)
                await client.start()  # no group, no subscription: it only answers offset questions
                self._offsets_client = client
            return self._offsets_client

    async def close(self) -> None:
        """Stop :meth:`earliest`'s client (when one was started)."""
        client, self._offsets_client = self._offsets_client, None
        if client is not None:
            await client.stop()

    async def seek(self, tp: Any, offset: int) -> None:
        await self._app.consumer.seek_wait({tp: offset})

    def watch_producer(self, producer: Any) -> None:
        """Remember the last message each table write hands to Faust's producer buffer.

        Faust's own ``flush()`` waits until that buffer is empty, which under a steady load it
        never is: commits starved for minutes (seen in the 1M-entry benchmark), and the flush
        loop itself slowed intake. ``flush()`` here waits only for what was written before it.
        """
        put = producer.buffer.put

        def remembering_put(fut: Any) -> None:
            self._last_write = fut
            put(fut)

        producer.buffer.put = remembering_put

    async def flush(self) -> None:
        if self.changelogs is not None:
            await self.changelogs.flush()
        # The buffer hands messages to aiokafka in order, so once the last one written is
        # acknowledged every earlier one is in aiokafka's accumulator or acknowledged too, and
        # aiokafka's flush waits for the batches it holds now.
        last = self._last_write
        if last is not None and not last.done():
            await asyncio.shield(last)
        if last is not None and not last.cancelled() and last.exception() is not None:
            raise RuntimeError(f"a table write was not acknowledged: {last.exception()!r}")
        kafka = self._app.producer._producer
        if kafka is not None:
            await kafka.flush()

    async def commit(self, offsets: dict[Any, int]) -> bool:
        # Not Faust's Consumer._commit: that one crashes the worker on any commit error other
        # than "already rebalanced", and a subscription change leaves no partition assigned
        # for a moment. A refused commit is retried by the ledger; a rebalance re-reads.
        kafka = self._kafka()
        assigned = kafka.assignment()
        wanted = {AIOKafkaTP(tp.topic, tp.partition): OffsetAndMetadata(offset, "") for tp, offset in offsets.items()}
        commitable = {tp: meta for tp, meta in wanted.items() if tp in assigned}
        if not commitable:
            return False
        thread = self._app.consumer._thread
        try:
            await _in_loop_of(thread, kafka.commit, commitable)
        except (KafkaError, AssertionError) as exc:
            log.info("offset commit refused (%r); it is tried again", exc)
            return False
        # keep Faust's own view current: its stall detector warns about partitions it
        # believes uncommitted, and its monitor reports committed offsets
        done = {tp: offset for tp, offset in offsets.items() if AIOKafkaTP(tp.topic, tp.partition) in commitable}
        now = time.monotonic()
        thread.tp_last_committed_at.update({tp: now for tp in done})
        self._app.monitor.on_tp_commit(done)
        return len(commitable) == len(wanted)

    def release(self, message: Any) -> None:
        """Let Faust forget ``message`` without counting it as processed (no commit follows).

        Faust waits for every message a stream took to be acked before it finishes a
        revocation; the agent's messages are released instead, and the ledger commits.
        """
        consumer = self._app.consumer
        with ack_lock:
            message.acked = True
            consumer._unacked_messages.discard(message)
        notify(consumer._waiting_for_ack)
