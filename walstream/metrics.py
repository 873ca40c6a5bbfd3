"""Prometheus metrics of one worker, served at ``GET /metrics``."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ReplicationLag:
    """``walstream_replication_lag_seconds{namespace,peer}``: how far forwarding to a peer
    region is behind: the age of the oldest entry this worker tried to forward and could not
    yet (0 when none waits). An entry stops counting once forwarded, dead-lettered, or not
    tried again for ``stale_s`` (its partition moved to another worker, its namespace or
    peer went away: the blocked entry of each key is tried at least every circuit cooldown)."""

    def __init__(self, registry: CollectorRegistry, stale_s: float = 300.0) -> None:
        self.gauge = Gauge(
            "walstream_replication_lag_seconds",
            "How far forwarding to a peer region is behind: the age of the oldest entry not "
            "forwarded yet after a failed try (0: none waits).",
            ["namespace", "peer"],
            registry=registry,
        )
        self.stale_s = stale_s
        #: (namespace, peer) -> entry id -> (its write time in s, when it was last tried in s)
        self._waiting: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}

    def observe(self, namespace: str, peer: str, entry_id: str, written_at_us: int, waits: bool, now_s: float) -> None:
        """One forward's outcome: ``waits`` when the entry is to be tried again, else it was
        forwarded or given up (dead-lettered)."""
        key = (namespace, peer)
        waiting = self._waiting.get(key)
        if waiting is None:
            waiting = self._waiting[key] = {}
            self.gauge.labels(namespace, peer).set_function(lambda: self._lag(key))
        if waits:
            waiting[entry_id] = (written_at_us / 1e6, now_s)
        else:
            waiting.pop(entry_id, None)

    def _lag(self, key: tuple[str, str]) -> float:
        now = time.time()
        waiting = self._waiting[key]
        for entry_id in [e for e, (_, tried) in waiting.items() if now - tried > self.stale_s]:
            del waiting[entry_id]
        return max(0.0, now - min(w for w, _ in waiting.values())) if waiting else 0.0


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
