"""Prometheus metrics of one worker, served at ``GET /metrics``."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ReplicationLag:
    """``walstream_replication_lag_seconds{namespace,peer}``: how far forwarding to a peer
    region is behind. While entries wait for the peer (its last forward failed), the age of
    the entry tried last, growing until the peer takes entries again; after a forward that
    succeeded, the time that entry took from its write to the peer's acknowledgement."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.gauge = Gauge(
            "walstream_replication_lag_seconds",
            "How far forwarding to a peer region is behind: while entries wait for it, the age "
            "of the entry tried last; else the write-to-acknowledgement time of the last one.",
            ["namespace", "peer"],
            registry=registry,
        )
        #: (namespace, peer) -> (write time of the entry tried last in s, when it was
        #: acknowledged in s, or None while it waits)
        self._last: dict[tuple[str, str], tuple[float, float | None]] = {}

    def observe(self, namespace: str, peer: str, written_at_us: int, forwarded: bool, now_s: float) -> None:
        """One forward's outcome (``forwarded``: the peer acknowledged it at ``now_s``)."""
        key = (namespace, peer)
        if key not in self._last:
            self.gauge.labels(namespace, peer).set_function(lambda: self._lag(key))
        self._last[key] = (written_at_us / 1e6, now_s if forwarded else None)

    def _lag(self, key: tuple[str, str]) -> float:
        written_s, acked_s = self._last[key]
        return max(0.0, (time.time() if acked_s is None else acked_s) - written_s)


class Metrics:
    """All of a worker's metrics, on a registry of their own (tests build many apps)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.replication = ReplicationLag(self.registry)
        self.writes = Counter(
            "walstream_writes_total",
            "Write requests answered, by namespace and durable outcome.",
            ["namespace", "durable"],
            registry=self.registry,
        )
        self.write_latency = Histogram(
            "walstream_write_ack_seconds",
            "Time from a write request to Kafka's acknowledgement of its entries.",
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )
        self.groups_ended = Counter(
            "walstream_groups_ended_total",
            "Mutation groups that ended, by namespace and state (APPLIED, ABORTED, DEAD_LETTERED).",
            ["namespace", "state"],
            registry=self.registry,
        )
        self.job_entries = Counter(
            "walstream_job_entries_total",
            "Entries a job (a replay) dealt with, by kind, namespace and outcome (read, applied, "
            "skipped, not_due, cancelled, failed, ...: the job's counts).",
            ["kind", "namespace", "outcome"],
            registry=self.registry,
        )
        self.jobs_ended = Counter(
            "walstream_jobs_ended_total",
            "Jobs that ended, by kind and state (SUCCEEDED, FAILED, CANCELLED).",
            ["kind", "state"],
            registry=self.registry,
        )
        self.delivered = Counter(
            "walstream_delivered_total",
            "Entries applied to a target.",
            ["namespace", "target"],
            registry=self.registry,
        )
        self.delivery_failures = Counter(
            "walstream_delivery_failures_total",
            "Failed delivery attempts, by error class.",
            ["namespace", "target", "error_class"],
            registry=self.registry,
        )
        self.dead_lettered = Counter(
            "walstream_dead_lettered_total",
            "Entries written to a dead-letter topic.",
            ["namespace", "target", "error_class"],
            registry=self.registry,
        )
        delivery_buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
        self.delivery_latency = Histogram(
            "walstream_delivery_latency_seconds",
            "From an entry's write time to its application to a target, for entries without a "
            "delay (retries and held time included).",
            ["namespace", "target"],
            registry=self.registry,
            buckets=delivery_buckets,
        )
        self.delay_lateness = Histogram(
            "walstream_delay_lateness_seconds",
            "From a delayed entry's due time to its application to a target (never negative: "
            "nothing is applied early).",
            ["namespace", "target"],
            registry=self.registry,
            buckets=delivery_buckets,
        )
        self.writes_refused = Counter(
            "walstream_writes_refused_total",
            "Entries refused by the write API (nothing written), by the HTTP status of their "
            "answer: 400 invalid, 401/403 auth, 404 unknown namespace, 409 id conflict, 413 too large.",
            ["status"],
            registry=self.registry,
        )
        self.refetches = Counter(
            "walstream_offset_refetches_total",
            "Times a partition was read again because records were dropped on their way to the "
            "delivery agent (during rebalances); see walstream.delivery.offsets.",
            ["topic"],
            registry=self.registry,
        )
        self.rereads_skipped = Counter(
            "walstream_rereads_skipped_total",
            "Records read again that the delivery agent had processed already, and skipped.",
            ["topic"],
            registry=self.registry,
        )
        self.expired_records = Counter(
            "walstream_records_expired_total",
            "Records deleted by topic retention before the delivery agent processed them (lost).",
            ["topic"],
            registry=self.registry,
        )
