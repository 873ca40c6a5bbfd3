"""walstream's tables: Faust tables whose writes cost near RocksDB's own.

A Faust table write costs ~100 µs on this project's machines: a RocksDB put, a
``FutureMessage`` and a trip through Faust's producer buffer for the changelog record, and a
second RocksDB put when it is acknowledged (the partition's persisted changelog offset). The
delivery agent makes one to three writes per entry, so that was most of its cost.

:class:`BatchedTable` keeps Faust's table (its changelog topic, recovery, standbys, reads)
and replaces the write: the row goes to the partition's RocksDB at once, so every later
read sees it, and its changelog record waits in :class:`Changelogs` until the batch ends.
:meth:`Changelogs.send_pending` then hands the records to the producer in one go (in write
order, so a compacted changelog keeps each key's last value), and when a partition's last
record is acknowledged its persisted offset is written once. The crash contract is Faust's:
a row is durable once its changelog record is acknowledged (:meth:`Changelogs.flush`), and
offsets are committed only after that.

Under ``memory://`` (unit tests) a write takes Faust's own path.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from faust import Table
from faust.stores import rocksdb
from faust.streams import current_event
from faust.tables import TableManager
from faust.types import TP
from yarl import URL

from walstream.producer import fill_batch

log = logging.getLogger(__name__)

_MISSING = object()


class PromptTableManager(TableManager):
    """Faust's table manager without its one-second pause before it starts the tables.

    Faust waits a second there for tables declared after the app started. walstream
    declares every table when it builds the app (:class:`walstream.app.WalApp`), before it
    starts, so the pause only delayed a restarted worker's first delivery (measured: the
    second between "Waiting for tables to be registered" and the first table starting, of
    3.8 s from restart to first delivery)."""

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


class PromptRocksDBStore(rocksdb.Store):
    """Faust's RocksDB store without a full garbage collection on a rebalance that closes none
    of its databases.

    Faust's ``revoke_partitions`` drops the revoked partitions' databases and then runs
    ``gc.collect()`` (a database is closed when its object is collected), on every rebalance
    and for every table, revoked partitions or not. With a worker's heap a collection takes
    ~0.1 s, so a restarted worker's six tables spent ~0.6 s of its take-over collecting
    nothing (measured: the ~0.1 s gaps between one table's last "opening partition" and the
    next's first, 1.3 s from assignment to recovery). The collection still runs whenever a
    database is dropped."""

    def revoke_partitions(self, table: Any, tps: set[TP]) -> None:
        topics = table.changelog_topic.topics
        if any(tp.topic in topics and tp.partition in self._dbs for tp in tps):
            super().revoke_partitions(table, tps)


class WalTable(Table):  # type: ignore[type-arg]
    """Faust's table, on :class:`PromptRocksDBStore` where Faust would use its RocksDB store
    (the app's ``Table`` setting)."""

    def _new_store_by_url(self, url: str | URL) -> Any:
        if URL(url).scheme != "rocksdb":
            return super()._new_store_by_url(url)
        return PromptRocksDBStore(
            url,
            self.app,
            self,
            table_name=self.name,
            key_type=self.key_type,
            key_serializer=self.key_serializer,
            value_serializer=self.value_serializer,
            value_type=self.value_type,
            loop=self.loop,
            options=self.options,
        )


class Changelogs:
    """The changelog records of :class:`BatchedTable` writes not yet handed to the producer,
    and what the producer has not acknowledged yet. One per worker."""

    def __init__(self, app: Any) -> None:
        self._app = app
        #: hands the first records of one changelog partition's list to the producer, as
        #: many as fit in one batch; returns how many it took and the batch's future, which
        #: resolves to its metadata (``offset``: the batch's first) once acknowledged
        #: (replaced in unit tests, which run without Kafka)
        self.send_batch: Callable[
            [str, int, Sequence[tuple[bytes, bytes | None]]], Awaitable[tuple[int, asyncio.Future[Any]]]
        ] = self._produce_batch
        #: (table, partition, key, value or None for a deletion), in write order
        self._pending: deque[tuple[BatchedTable, int, bytes, bytes | None]] = deque()
        #: the last batch of each changelog partition not yet known acknowledged
        self._last: dict[tuple[str, int], asyncio.Future[Any]] = {}
        self._failure: BaseException | None = None
        #: one sender at a time: two interleaved could reorder one key's records
        self._sending = asyncio.Lock()
        #: records handed to the producer (a metric for benchmarks and tests)
        self.sent = 0

    async def _produce_batch(
        self, topic: str, partition: int, records: Sequence[tuple[bytes, bytes | None]]
    ) -> tuple[int, asyncio.Future[Any]]:
        # Faust's own aiokafka producer, one batch per call: a send() per record cost a
        # future, a metadata look-up and a partition check each (~25 µs)
        producer = self._app.producer._ensure_producer()
        batch, taken = fill_batch(producer, ((key, value, []) for key, value in records))
        fut: asyncio.Future[Any] = await producer.send_batch(batch, topic, partition=partition)
        return taken, fut

    def add(self, table: BatchedTable, partition: int, key: bytes, value: bytes | None) -> None:
        self._pending.append((table, partition, key, value))

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def send_pending(self) -> None:
        """Hand every pending changelog record to the producer (not waiting for acks)."""
        async with self._sending:
            await self._send_pending()

    async def _send_pending(self) -> None:
        # A record leaves the queue only once the producer has taken it: a send that raises
        # (no metadata in time, producer stopping, cancelled) puts it back with every later
        # one of the call, in order, ahead of rows written meanwhile, for the next call; and
        # the caller fails (the agent's batch is read again; a flush, and with it a commit,
        # does not happen). Each changelog partition's records go in write order, in batches.
        lanes: dict[tuple[BatchedTable, int], list[tuple[bytes, bytes | None]]] = {}
        while self._pending:
            table, partition, key, value = self._pending.popleft()
            lanes.setdefault((table, partition), []).append((key, value))
        todo = list(lanes.items())
        li = n = 0
        try:
            while li < len(todo):
                (table, partition), records = todo[li]
                topic = table.changelog_name
                while n < len(records):
                    taken, fut = await self.send_batch(topic, partition, records[n:])
                    if taken < 1:
                        raise RuntimeError(f"the producer took no record of {topic}[{partition}]")
                    n += taken
                    self._last[(topic, partition)] = fut
                    fut.add_done_callback(
                        functools.partial(self._acknowledged, table=table, partition=partition, last=taken - 1)
                    )
                    self.sent += taken
                li, n = li + 1, 0
        finally:
            kept = [
                (table, partition, key, value)
                for i, ((table, partition), records) in enumerate(todo[li:], start=li)
                for key, value in (records[n:] if i == li else records)
            ]
            self._pending.extendleft(reversed(kept))

    def _acknowledged(self, fut: asyncio.Future[Any], table: BatchedTable, partition: int, last: int) -> None:
        if fut.cancelled():
            self._failure = self._failure or asyncio.CancelledError("a changelog send was cancelled")
            return
        exc = fut.exception()
        if exc is not None:
            if self._failure is None:
                log.error("a changelog record of %s was not acknowledged: %r", table.changelog_name, exc)
            self._failure = self._failure or exc
            return
        key = (table.changelog_name, partition)
        if self._last.get(key) is fut:
            del self._last[key]
            # the partition's RocksDB remembers how far the changelog holds its rows, so
            # recovery reads only what came after (as Faust does after each of its sends)
            table.persisted(partition, fut.result().offset + last)

    async def flush(self) -> None:
        """Send what is pending and wait until every record sent so far is acknowledged.

        Raises RuntimeError once a changelog record was refused: the table then holds a row
        its changelog lacks, so no offset may be committed past it (the worker's partitions
        are re-processed by whoever reads them next).
        """
        await self.send_pending()
        waiting = list(self._last.values())
        if waiting:
            await asyncio.wait([asyncio.shield(f) for f in waiting])
        if self._failure is not None:
            raise RuntimeError(f"a table write was not acknowledged: {self._failure!r}")


class BatchedTable:
    """A Faust table (``memory://`` or ``rocksdb://``, raw bytes keys and values) whose
    writes reach RocksDB at once and its changelog in batches (see the module docstring).

    Writes and event-bound reads use the *current event's* partition, as Faust's do; reads
    outside an event use Faust's lookup. Everything else (``data``, ``changelog_topic``, ...)
    is the Faust table's.
    """

    def __init__(self, table: Any, changelogs: Changelogs) -> None:
        self._table = table
        self._changelogs = changelogs
        self._name: str | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)

    @property
    def faust_table(self) -> Any:
        return self._table

    @property
    def changelog_name(self) -> str:
        if self._name is None:
            self._name = str(self._table.changelog_topic.get_topic_name())
        return self._name

    def _db(self) -> tuple[int, Any] | None:
        """(partition, its RocksDB) of the current event, or None under ``memory://``."""
        store = self._table.data
        if getattr(store, "_dbs", None) is None:
            return None
        event = current_event()
        if event is None:
            raise RuntimeError(f"a write to {self._table.name} needs a current event (its partition)")
        partition = event.message.partition
        return partition, store._db_for_partition(partition)

    def __setitem__(self, key: bytes, value: bytes) -> None:
        found = self._db()
        if found is None:
            self._table[key] = value
            return
        partition, db = found
        db.put(key, value)
        self._table.data._key_index[key] = partition
        self._changelogs.add(self, partition, key, value)

    def __delitem__(self, key: bytes) -> None:
        if self.pop(key, _MISSING) is _MISSING:
            raise KeyError(key)

    def pop(self, key: bytes, default: Any = None) -> Any:
        found = self._db()
        if found is None:
            return self._table.pop(key, default)
        partition, db = found
        value = db.get(key)
        if value is None:
            return default
        db.delete(key)
        self._table.data._key_index.pop(key, None)
        self._changelogs.add(self, partition, key, None)
        return value

    def get(self, key: bytes, default: Any = None) -> Any:
        store = self._table.data
        if getattr(store, "_dbs", None) is not None:
            event = current_event()
            if event is not None:
                value = store._db_for_partition(event.message.partition).get(key)
                return default if value is None else value
        return self._table.get(key, default)

    def __getitem__(self, key: bytes) -> bytes:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value  # type: ignore[no-any-return]

    def __contains__(self, key: bytes) -> bool:
        return self.get(key, _MISSING) is not _MISSING

    def persisted(self, partition: int, offset: int) -> None:
        """The changelog holds this table's rows of ``partition`` up to ``offset``."""
        store = self._table.data
        db = (getattr(store, "_dbs", None) or {}).get(partition)
        if db is None:  # memory://, or the partition was revoked and its database closed
            return
        known = db.get(store.offset_key)
        if known is None or offset > int(known):
            db.put(store.offset_key, str(offset).encode())
