"""What one worker says about itself to the operator's pages (walstream.web.pages): who it is,
which partitions it holds (active and standby), whether its loops make progress, and per
namespace what waits in its tables and how far its delivery agent lags.

Every figure is of this worker's own active partitions; the pages ask every worker of the
fleet (``GET /v1/internal/report``) and add the answers up. Counting reads the tables, so a
namespace's counts stop at :data:`COUNT_LIMIT` rows per table and partition (the answer says
when a count was cut short), and hands the event loop back every :data:`YIELD_EVERY` rows:
a page view must not hold up deliveries.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, TypeVar

from prometheus_client import Counter

from walstream.delivery.breaker import Breakers
from walstream.health import Liveness
from walstream.metrics import Metrics
from walstream.namespaces.model import wal_topic
from walstream.namespaces.registry import NamespaceRegistry
from walstream.tables import ordered
from walstream.tables.dead_letter_index import DeadLetterIndex
from walstream.tables.entry_state import FINAL, EntryStates
from walstream.tables.held import KeyOrder
from walstream.tables.schedule import Schedule

T = TypeVar("T")

#: most rows one count reads from one table partition
COUNT_LIMIT = 20_000
#: the window writes and deliveries per second are averaged over
RATE_WINDOW_S = 60.0
#: a count hands the event loop back to the worker's other tasks every this many rows
YIELD_EVERY = 1_000


def counter_total(counter: Counter) -> float:
    """The sum of a counter's samples over all its labels (0 when it has none yet). Reads this
    counter alone: collecting the whole registry would run every gauge's table reads too."""
    return sum(s.value for family in counter.collect() for s in family.samples if s.name.endswith("_total"))


class WorkerReport:
    """This worker's report (:meth:`report`), from what the composition root hands it.

    ``progress``/``highwater``: the delivery agent's processed offset and a partition's end
    offset as of the last fetch (their difference is the lag); ``actives``/``standbys``: the
    (topic, partition) pairs this worker holds actively and as a standby; ``version``: the
    installed walstream's.
    """

    def __init__(
        self,
        *,
        url: str,
        version: str,
        shard: str,
        registry: NamespaceRegistry,
        states: EntryStates,
        schedule: Schedule,
        key_order: KeyOrder,
        dlq_index: DeadLetterIndex,
        breakers: Breakers,
        liveness: Liveness,
        metrics: Metrics,
        active_partitions: Callable[[], list[int]],
        progress: Callable[[], Mapping[Any, int]],
        highwater: Callable[[Any], int | None],
        actives: Callable[[], set[tuple[str, int]]],
        standbys: Callable[[], set[tuple[str, int]]],
        not_ready: Callable[[], list[str]],
        settling: Callable[[], bool],
    ) -> None:
        self.url = url
        self.version = version
        self.shard = shard
        self.started_at_s = time.time()
        self._registry = registry
        self._states = states
        self._schedule = schedule
        self._key_order = key_order
        self._dlq_index = dlq_index
        self._breakers = breakers
        self._liveness = liveness
        self._metrics = metrics
        self._active_partitions = active_partitions
        self._progress = progress
        self._highwater = highwater
        self._actives = actives
        self._standbys = standbys
        self._not_ready = not_ready
        self._settling = settling
        #: (monotonic s, writes total, delivered total), oldest first
        self._samples: deque[tuple[float, float, float]] = deque()

    def sample(self) -> None:
        """Remember the write and delivery totals now (a timer calls it every few seconds):
        :meth:`rates` are taken over the last :data:`RATE_WINDOW_S` of samples."""
        now = time.monotonic()
        self._samples.append((now, counter_total(self._metrics.writes),
                              counter_total(self._metrics.delivered)))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW_S:
            self._samples.popleft()

    def rates(self) -> dict[str, float | None]:
        """Writes and deliveries per second over the samples' window (None before two samples)."""
        if len(self._samples) < 2 or self._samples[-1][0] <= self._samples[0][0]:
            return {"writes_per_s": None, "delivered_per_s": None}
        (t0, w0, d0), (t1, w1, d1) = self._samples[0], self._samples[-1]
        return {"writes_per_s": (w1 - w0) / (t1 - t0), "delivered_per_s": (d1 - d0) / (t1 - t0)}

    async def report(self) -> dict[str, Any]:
        """This worker's report, a JSON document:

        - ``worker``, ``version``, ``shard``, ``started_at_s``, ``now_s`` (epoch s);
        - ``not_ready``: why it should not take traffic (empty: ready); ``settling``: a
          rebalance or a table recovery is under way (its counts may be incomplete); ``loops``: per loop,
          seconds since its last sign of progress (walstream.health);
        - ``active``, ``standby``: the partitions it holds so; ``rates``: ``writes_per_s``
          and ``delivered_per_s``; ``totals``: ``writes``, ``delivered``, ``dead_lettered``;
        - ``breakers``: target id → ``target``, ``open``;
        - ``namespaces``: name → ``lag`` (partition → records not processed yet),
          ``delayed``, ``pending``, ``retrying``, ``held``, ``dead_letters``,
          ``targets_pending`` (target id → entries not final there) and ``cut_short``
          (a count stopped at :data:`COUNT_LIMIT`).
        """
        return {
            "worker": self.url,
            "version": self.version,
            "shard": self.shard,
            "started_at_s": self.started_at_s,
            "now_s": time.time(),
            "not_ready": self._not_ready(),
            "settling": self._settling(),
            "loops": self._liveness.ages_s(),
            "active": _partitions(self._actives()),
            "standby": _partitions(self._standbys()),
            "rates": self.rates(),
            "totals": {
                "writes": counter_total(self._metrics.writes),
                "delivered": counter_total(self._metrics.delivered),
                "dead_lettered": counter_total(self._metrics.dead_lettered),
            },
            "breakers": {tid: {"target": b.label, "open": b.is_open} for tid, b in self._breakers.all().items()},
            "namespaces": {cfg.name: await self._namespace(cfg.name) for cfg in self._registry.all()},
        }

    async def _namespace(self, ns: str) -> dict[str, Any]:
        actives = set(self._active_partitions())
        topic = wal_topic(ns)
        lag: dict[str, int] = {}
        for tp, done in self._progress().items():
            end = self._highwater(tp)
            if tp.topic == topic and end is not None:
                lag[str(tp.partition)] = max(0, end - done)
        states: Tally[str] = Tally()
        per_target: Tally[str] = Tally()
        rows = _Bounded(COUNT_LIMIT)
        for p in ordered.partitions(self._states.table, actives):
            async for doc in rows.of(self._states.of_namespace(p, ns)):
                if doc["state"] not in FINAL:
                    states[doc["state"]] += 1
                for tid, t in (doc.get("targets") or {}).items():
                    if t.get("state") not in FINAL:
                        per_target[tid] += 1
        held = 0
        for p in ordered.partitions(self._key_order.held, actives):
            async for _ in rows.of(self._key_order.of_namespace(p, ns)):
                held += 1
        dead = 0
        for p in ordered.partitions(self._dlq_index.table, actives):
            async for _ in rows.of(self._dlq_index.rows(ns, [p])):
                dead += 1
        return {
            "lag": lag,
            "delayed": states["DELAYED"],
            "pending": states["PENDING"],
            "retrying": states["RETRYING"],
            "held": held,
            "dead_letters": dead,
            "targets_pending": dict(per_target),
            "cut_short": rows.cut_short,
        }


class _Bounded:
    """Rows of one table partition at a time, at most ``limit`` of each (:attr:`cut_short`
    says whether some were left), handing the event loop back every :data:`YIELD_EVERY`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.cut_short = False

    async def of(self, rows: Iterable[T]) -> AsyncIterator[T]:
        for n, row in enumerate(rows):
            if n >= self.limit:
                self.cut_short = True
                return
            if n % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)  # the delivery agent shares this loop
            yield row


def _partitions(pairs: set[tuple[str, int]]) -> list[int]:
    """The partition numbers of the tables' changelogs among ``pairs`` (every table and WAL
    topic is co-partitioned: a number stands for the same keys everywhere)."""
    return sorted({p for topic, p in pairs if topic.endswith("-changelog")})
