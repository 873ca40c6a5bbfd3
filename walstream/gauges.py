"""Gauges read when ``GET /metrics`` is scraped, not kept up to date on the hot path: the
delivery agent's lag, the tables' sizes, the schedule's earliest due time, and the targets'
circuits. Each reads this worker's own state only (its active partitions); a fleet's totals
are the sums over its workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from walstream.tables import ordered

#: RocksDB's estimate of a database's keys (live keys, approximately: deletions not yet
#: compacted away may still count)
_ESTIMATE = "rocksdb.estimate-num-keys"
#: most rows a scrape reads of one table partition for the target backlog gauges (keys only,
#: some ms): the tables are empty while targets are healthy
TARGET_BACKLOG_LIMIT = 20_000


class WorkerGauges(Collector):
    """What :meth:`collect` reads, each given by the composition root:

    - ``progress``: per consumed partition (a ``TP``), the offset below which the agent has
      processed every record (walstream.delivery.offsets);
    - ``highwater``: a partition's end offset as of the last fetch (None: not known yet);
    - ``tables``: the walstream tables by name (Faust tables, either store);
    - ``active_partitions``: the partitions this worker consumes actively;
    - ``next_due_ms``: a partition's earliest timer (epoch ms), None when it has none;
    - ``circuits``: target id → (label, open?);
    - ``target_backlog``: per (namespace, target id, ``blocked``/``held``) the keys waiting
      for a retry at the target and the entries held behind them, and whether a count was
      cut short (walstream.tables.held ``KeyOrder.backlog``).
    """

    def __init__(
        self,
        *,
        progress: Callable[[], Mapping[Any, int]],
        highwater: Callable[[Any], int | None],
        tables: Mapping[str, Any],
        active_partitions: Callable[[], list[int]],
        next_due_ms: Callable[[int], int | None],
        circuits: Callable[[], Iterable[tuple[str, str, bool]]],
        target_backlog: Callable[[list[int]], tuple[Mapping[tuple[str, str, str], int], bool]],
    ) -> None:
        self._progress = progress
        self._highwater = highwater
        self._tables = tables
        self._active_partitions = active_partitions
        self._next_due_ms = next_due_ms
        self._circuits = circuits
        self._target_backlog = target_backlog

    def describe(self) -> Iterable[Any]:
        return []  # read at scrape time only: nothing to check when registering

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lag = GaugeMetricFamily(
            "walstream_consumer_lag_records",
            "Records of a consumed partition not yet processed by this worker's delivery agent "
            "(end offset as of the last fetch minus the processed offset). A WAL topic's "
            "namespace is the topic without its 'wal.' prefix.",
            labels=["topic", "partition"],
        )
        for tp, done in sorted(self._progress().items()):
            end = self._highwater(tp)
            if end is not None:
                lag.add_metric([tp.topic, str(tp.partition)], max(0, end - done))
        yield lag

        partitions = self._active_partitions()
        rows = GaugeMetricFamily(
            "walstream_table_rows_estimate",
            "Rows of a walstream table in one of this worker's active partitions (RocksDB's "
            "estimate): walstream-schedule is the delay and retry backlog, walstream-held the "
            "entries waiting behind their key, walstream-dlq-index the dead letters.",
            labels=["table", "partition"],
        )
        for name, table in sorted(self._tables.items()):
            for partition in partitions:
                n = _rows_estimate(table, partition)
                if n is not None:
                    rows.add_metric([name, str(partition)], n)
        yield rows

        due = GaugeMetricFamily(
            "walstream_schedule_earliest_due_seconds",
            "The earliest due time (epoch seconds) of a delay or retry in one of this worker's "
            "active partitions; absent when it has none. Far in the past: timers are late.",
            labels=["partition"],
        )
        for partition in partitions:
            due_ms = self._next_due_ms(partition)
            if due_ms is not None:
                due.add_metric([str(partition)], due_ms / 1000)
        yield due

        circuit = GaugeMetricFamily(
            "walstream_circuit_open",
            "1 while a target's circuit breaker is open (calls to it are held back), else 0.",
            labels=["target_id", "target"],
        )
        for target_id, label, is_open in sorted(self._circuits()):
            circuit.add_metric([target_id, label], 1.0 if is_open else 0.0)
        yield circuit

        # one agent feeds every target of a namespace, so the consumer lag above is the
        # namespace's; what one target is behind by is what waits for it alone
        counts, cut_short = self._target_backlog(partitions)
        blocked = GaugeMetricFamily(
            "walstream_target_blocked_keys",
            "Keys of a namespace waiting for a retry at one target (the entry that failed "
            "there), in this worker's active partitions.",
            labels=["namespace", "target_id"],
        )
        held = GaugeMetricFamily(
            "walstream_target_held_entries",
            "Entries of a namespace held behind a blocked key of theirs at one target, in this "
            "worker's active partitions: what the target will get once its retries succeed.",
            labels=["namespace", "target_id"],
        )
        for (ns, target_id, kind), n in sorted(counts.items()):
            (blocked if kind == "blocked" else held).add_metric([ns, target_id], n)
        yield blocked
        yield held
        partial = GaugeMetricFamily(
            "walstream_target_backlog_cut_short",
            f"1 when the two target backlog gauges stopped counting at {TARGET_BACKLOG_LIMIT} rows "
            "of some table partition (the figures are lower bounds), else 0.",
        )
        partial.add_metric([], 1.0 if cut_short else 0.0)
        yield partial


def _rows_estimate(table: Any, partition: int) -> int | None:
    store = table.data
    dbs = getattr(store, "_dbs", None)
    if dbs is None:  # memory:// (tests): one dict for every partition, reported as partition 0
        return len(store.data) if partition == 0 else None
    db = dbs.get(partition)
    if db is None:
        return None
    estimate = db.property_int_value(_ESTIMATE)
    if estimate is None:
        return None
    # Faust's persisted changelog offset is a key of the database too
    has_offset = ordered.get(table, partition, store.offset_key) is not None
    return max(0, int(estimate) - int(has_offset))
