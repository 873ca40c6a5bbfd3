"""The composition root: builds a worker's Faust app and hands every collaborator its
dependencies. Nothing else in walstream constructs long-lived objects or reads settings
from the environment.

Start-up order (see :meth:`WalApp.start_services`): Kafka producer, topics walstream owns,
namespace registry loaded to its end (so the delivery agent subscribes to every namespace
of its shard from the first rebalance), then Faust (agents, web server).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import faust
from aiokafka.partitioner import murmur2
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor

from walstream import installed_version
from walstream.auth import Auth
from walstream.context import AgentContext, WebContext
from walstream.delivery.breaker import Breakers
from walstream.delivery.commands import CommandSender
from walstream.delivery.dead_letters import DeadLetterWriter
from walstream.delivery.deliverer import Deliverer
from walstream.delivery.offsets import ConsumerPort, OffsetLedger
from walstream.delivery.pacing import Pacer
from walstream.entry import DERIVED_OVERHEAD_BYTES, WriteClock
from walstream.failpoints import Failpoints
from walstream.faust_consumer import FaustConsumerPort, RebalanceSafeConsumer, assignment_of
from walstream.faust_tables import BatchedTable, Changelogs, PromptTableManager, WalTable
from walstream.faust_topics import OnceDeclaredTopic
from walstream.fleet import Fleet
from walstream.gauges import TARGET_BACKLOG_LIMIT, WorkerGauges
from walstream.health import Liveness
from walstream.index_check import IndexChecks
from walstream.jobs import Jobs
from walstream.kafka_admin import (
    DERIVED_MAX_MESSAGE_BYTES,
    WAL_MAX_MESSAGE_BYTES,
    TopicError,
    TopicSpec,
    ensure_topics,
    group_consumed,
    max_message_bytes,
    set_cleanup_policy,
)
from walstream.metrics import Metrics
from walstream.namespaces.model import NamespaceConfig, wal_topic
from walstream.namespaces.registry import NamespaceRegistry
from walstream.producer import SharedProducer
from walstream.replay import Replays
from walstream.replication import Peers
from walstream.settings import Settings
from walstream.shard_router import ShardRouter
from walstream.shards import group_id
from walstream.status import EntryStatus
from walstream.tables.dead_letter_index import TABLE_NAME as DLQ_INDEX_TABLE
from walstream.tables.dead_letter_index import DeadLetterIndex
from walstream.tables.entry_state import TABLE_NAME as ENTRIES_TABLE
from walstream.tables.entry_state import EntryStates
from walstream.tables.groups import TABLE_NAME as GROUPS_TABLE
from walstream.tables.groups import Groups
from walstream.tables.held import BLOCKED_TABLE, HELD_TABLE, KeyOrder
from walstream.tables.schedule import TABLE_NAME as SCHEDULE_TABLE
from walstream.tables.schedule import Schedule
from walstream.targets.pool import TargetPool
from walstream.worker_report import WorkerReport
from walstream.writer import LogWriter

log = logging.getLogger(__name__)

#: How many chunks (walstream.faust_consumer.ChunkMessage) wait for the delivery agent at most.
CHUNK_QUEUE_SIZE = 16
#: how often the write and delivery totals are sampled for the pages' rates (walstream.worker_report)
REPORT_SAMPLE_S = 5.0


class _FaustApp(faust.App):
    """Faust's app with walstream's rebalance-safe consumer (see walstream.faust_consumer)."""

    #: set by WalApp: the topics whose offsets the ledger owns, and its commit
    ledger_topics: Collection[str] = ()
    ledger_commit: Callable[[], Awaitable[Any]] | None = None

    #: set by WalApp: told about the producer when Faust creates it
    on_producer: Callable[[Any], None] | None = None

    def _new_producer(self) -> Any:
        producer = super()._new_producer()
        if self.on_producer is not None:
            self.on_producer(producer)
        return producer

    def _new_consumer(self) -> Any:
        self.transport.Consumer = RebalanceSafeConsumer  # type: ignore[misc]
        consumer: Any = super()._new_consumer()
        if self.ledger_commit is not None:
            consumer.hand_offsets_to_ledger(self.ledger_topics, self.ledger_commit)
        return consumer


class WalApp:
    """One worker: Faust app + write path + delivery runtime + namespace registry."""

    def __init__(self, settings: Settings, *, offsets_port: ConsumerPort | None = None) -> None:
        """``offsets_port``: the consumer the offset ledger reads positions from and commits
        through (default: Faust's, through walstream.faust_consumer; unit tests give an
        in-memory one)."""
        self.settings = settings
        s = settings
        self.faust = _FaustApp(
            # each shard its own consumer group and tables (walstream.shards)
            s.group_id,
            broker=[f"kafka://{b.strip()}" for b in s.broker.split(",") if b.strip()],
            store=s.store,
            datadir=str(s.datadir),
            autodiscover=False,
            processing_guarantee="at_least_once",
            producer_acks=-1,
            consumer_auto_offset_reset="earliest",
            topic_partitions=s.partitions,
            topic_replication_factor=s.replication_factor,
            broker_commit_interval=1.0,
            broker_session_timeout=s.session_timeout_s,
            # static membership: a worker restarted at once (after a crash) takes its
            # partitions back without waiting for its old session to expire
            consumer_group_instance_id=s.group_instance_id,
            broker_heartbeat_interval=min(3.0, s.session_timeout_s / 3),
            web_enabled=True,
            web_bind=s.web_bind or s.web_host,
            web_host=s.web_host,
            web_port=s.web_port,
            canonical_url=s.web_url,
            web_tables_enabled=False,
            # copies of other workers' table partitions, kept up to date from the changelogs:
            # a worker taking a partition over starts from its copy instead of the whole changelog
            table_standby_replicas=s.standby_replicas,
            Topic=OnceDeclaredTopic,
            # every table is declared before the app starts: no pause for late ones
            TableManager=PromptTableManager,
            # RocksDB stores without a garbage collection per table on every rebalance
            Table=WalTable,
            web_application_options={"client_max_size": s.max_request_bytes},
            # table rows embed whole entries (timers, held rows, dead-letter index rows)
            producer_max_request_size=DERIVED_MAX_MESSAGE_BYTES + 64 * 1024,
            # changelog records are produced in bursts at the end of each agent batch
            # (walstream.faust_tables.Changelogs): batches of up to 256 KiB per partition
            # rather than Faust's 16 KiB make fewer, larger produce requests. No linger:
            # the burst is appended at once, and a linger would delay every flush before
            # timer removals.
            producer_max_batch_size=256 * 1024,
        )
        #: the largest table row (changelog record) this fleet's topics accept; see
        #: :meth:`_read_record_limits`
        self.row_limit_bytes = DERIVED_MAX_MESSAGE_BYTES
        self.metrics = Metrics()
        # a waiting forward is tried again at least every circuit cooldown: longer unseen, it went away
        self.metrics.replication.stale_s = max(300.0, 4 * s.breaker_cooldown_max_s)
        #: changelog records of table writes, produced in batches (walstream.faust_tables)
        self.changelogs = Changelogs(self.faust)
        self.clock = WriteClock()
        self.registry = NamespaceRegistry(s)
        self.targets = TargetPool(s)
        self.producer = SharedProducer(s.broker, s.produce_timeout_s)
        self.writer = LogWriter(self.producer, s.produce_timeout_s, s.entry_retention_s)
        #: the other workers: who holds which partition (Faust's assignor), asked over HTTP
        self.fleet = Fleet(s.web_url, lambda: self.faust.assignor.tables_metadata())
        #: the other shards, asked about their namespaces (walstream.shards)
        self.shard_router = ShardRouter(
            s.shard, s.shard_url_map, self.registry,
            consumed=lambda shard, ns: group_consumed(s.broker, group_id(s.app_id, shard), wal_topic(ns)),
        )
        self.dead_letters = DeadLetterWriter(self.producer)
        self.schedule = Schedule(self._table(SCHEDULE_TABLE, "delayed entries and pending retries, by due time"))
        self.key_order = KeyOrder(
            self._table(BLOCKED_TABLE, "keys waiting for a retry, per target"),
            self._table(HELD_TABLE, "entries held behind an earlier entry of their key"),
        )
        self.states = EntryStates(
            self._table(ENTRIES_TABLE, "delivery state of each entry, per target", ttl_format=True),
            retention_s=s.entry_retention_s,
        )
        self.dlq_index = DeadLetterIndex(self._table(DLQ_INDEX_TABLE, "dead letters by namespace and entry"))
        self.groups = Groups(self._table(GROUPS_TABLE, "mutation groups waiting for their commit"))
        self.liveness = Liveness(s.stuck_after_s)
        self.breakers = Breakers(s.breaker_threshold, s.breaker_cooldown_s, s.breaker_cooldown_max_s)
        self.auth = Auth(s.admin_token_list)
        self.deliverer = Deliverer(
            self.registry,
            self.targets,
            self.dead_letters,
            self.metrics,
            self.schedule,
            self.key_order,
            self.breakers,
            self.states,
            self.dlq_index,
            flush=self._flush_tables,
            failpoints=Failpoints(s.failpoints, self._flush_tables),
            # a paced target's rate is the fleet's: each worker sends its partitions' share
            pacer=Pacer(lambda: max(1, len(self.active_partitions())) / s.partitions),
            groups=self.groups,
        )
        self.deliverer.caught_up = self.caught_up

        #: Topics the delivery agent consumes. Faust shares this list object between the
        #: topic and the clones its agents iterate, so appending a name and flagging the
        #: conductor re-subscribes live (Faust's pattern subscription does not work).
        #: The command topic keeps the list non-empty and later carries table commands.
        self.command_topic = f"{s.group_id}.commands"
        self.commands = CommandSender(self.producer, self.command_topic, s.produce_timeout_s)
        self.status = EntryStatus(
            self.states, self.schedule, self.key_order, self.fleet, self.active_partitions, self.settling
        )
        self.jobs = Jobs(self.fleet.self_url, self.metrics)
        self.replays = Replays(s.broker, self.registry, self.targets, self.jobs, self.status.cancelled)
        self.peers = Peers(s, self.targets)
        self.index_checks = IndexChecks(self.registry, self.targets, self.jobs, self.writer)
        self._wal_topic_names: list[str] = [self.command_topic]
        self.wal_channel = self.faust.topic(
            *self._wal_topic_names,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=s.partitions,
            # events are chunks of up to CHUNK_MAX_RECORDS records: a short queue bounds memory
            maxsize=CHUNK_QUEUE_SIZE,
        )
        self.wal_channel.topics = self._wal_topic_names
        #: the delivery agent's offsets: strict order per partition, committed by walstream
        self.offsets_port = FaustConsumerPort(self.faust, self._wal_topic_names, bootstrap=s.broker)
        self.offsets_port.changelogs = self.changelogs
        self.offsets = OffsetLedger(offsets_port or self.offsets_port, metrics=self.metrics)
        self.metrics.registry.register(WorkerGauges(
            progress=self.offsets.progress,
            highwater=self.offsets_port.highwater,
            tables=self.faust.tables,
            active_partitions=self.active_partitions,
            next_due_ms=self.schedule.next_due_ms,
            circuits=lambda: [(tid, b.label, b.is_open) for tid, b in self.breakers.all().items()],
            target_backlog=lambda partitions: self.key_order.backlog(partitions, TARGET_BACKLOG_LIMIT),
        ))
        self.report = WorkerReport(
            url=s.web_url,
            version=installed_version(),
            shard=s.shard,
            registry=self.registry,
            states=self.states,
            schedule=self.schedule,
            key_order=self.key_order,
            dlq_index=self.dlq_index,
            breakers=self.breakers,
            liveness=self.liveness,
            metrics=self.metrics,
            active_partitions=self.active_partitions,
            progress=self.offsets.progress,
            highwater=self.offsets_port.highwater,
            actives=lambda: {(tp.topic, tp.partition) for tp in self.faust.assignor.assigned_actives()},
            standbys=lambda: {(tp.topic, tp.partition) for tp in self.faust.assignor.assigned_standbys()},
            not_ready=self.not_ready,
            settling=self.settling,
        )
        self.faust.timer(interval=REPORT_SAMPLE_S)(self._sample_rates)
        # Faust's own sensors (messages, events, commits, table operations, rebalances) on
        # the same registry, named faust_*
        self.faust.monitor = PrometheusMonitor(metrics=FaustMetrics.create(self.metrics.registry, "faust"))
        self.faust.ledger_topics = self._wal_topic_names
        self.faust.ledger_commit = self.offsets.commit
        self.faust.on_producer = self.offsets_port.watch_producer
        assert self.faust._consumer is None and self.faust._producer is None, "wire the ledger first"
        self.registry.add_listener(self._on_namespace_change)
        self.faust.timer(interval=max(1.0, s.resubscribe_s))(self._check_subscription)
        if s.region is not None:
            self.faust.timer(interval=s.region_sync_s)(self._sync_regions)
        self._services_started = False

    async def _sync_regions(self) -> None:
        """Other regions get the replicated namespaces' configs they lack (walstream.replication)."""
        if not self._services_started:
            return
        try:
            pushed = await self.peers.reconcile(self.registry)
        except Exception:  # the next round tries again
            log.exception("replication: syncing namespace configs failed")
            return
        for peer, names in pushed.items():
            log.info("replication: region %s got the configs of %s", peer, ", ".join(names))

    async def _sample_rates(self) -> None:
        self.report.sample()

    async def _flush_tables(self) -> None:
        await self.offsets.flush_tables()

    def _table(self, name: str, help: str, ttl_format: bool = False) -> Any:
        """A raw-bytes table co-partitioned with the WAL topics (keys sort bytewise), with a
        compacted changelog: rows live until walstream deletes them through the table.

        ``ttl_format``: the partitions' RocksDBs are opened in RocksDB's TTL format with no
        expiry (TTL 0). Earlier versions expired the entries table by RocksDB TTL, which stores a
        timestamp in every value; a database written so must be opened so (opened plainly, each
        value reads with 4 stray bytes), and new ones are made the same way.
        """
        mb = 1024 * 1024
        options: dict[str, Any] | None = None
        if self.settings.store.startswith("rocksdb"):
            options = {"block_cache_size": self.settings.table_cache_mb * mb, "write_buffer_size": 8 * mb}
            if ttl_format:
                options["ttl"] = 0  # RocksDB: a TTL <= 0 never expires anything
        topic_configs = {"max.message.bytes": str(DERIVED_MAX_MESSAGE_BYTES)}
        return BatchedTable(self.faust.Table(
            name,
            key_type=bytes,  # bytes → Faust's "raw" serializer: our key layouts reach RocksDB as-is
            value_type=bytes,
            partitions=self.settings.partitions,
            help=help,
            options=options,
            extra_topic_configs=topic_configs,
        ), self.changelogs)

    def caught_up(self, namespace: str, partition: int) -> bool:
        """Whether this worker has processed partition ``partition`` of ``namespace``'s WAL
        topic to its end, as of the consumer's last fetch (False when it cannot tell)."""
        topic = wal_topic(namespace)
        for tp, done in self.offsets.progress().items():
            if tp.topic == topic and tp.partition == partition:
                high = self.offsets_port.highwater(tp)
                return high is not None and done >= high
        return False

    def partition_for(self, key: str) -> int:
        """The partition Kafka's default partitioner gives ``key`` in every WAL topic."""
        return int(murmur2(key.encode()) & 0x7FFFFFFF) % self.settings.partitions

    def settling(self) -> bool:
        """This worker's tables may be incomplete: a rebalance or a changelog recovery is under way."""
        recovery = getattr(self.faust.tables, "recovery", None)
        return bool(self.faust.rebalancing or getattr(recovery, "in_recovery", False))

    def not_ready(self) -> list[str]:
        """Why this worker should not take traffic yet (empty: ready); see walstream.health."""
        reasons = []
        recovery = getattr(self.faust.tables, "recovery", None)
        if recovery is None or not recovery.completed.is_set():
            reasons.append("tables not recovered and partitions not sought yet")
        if self.faust.should_stop:
            reasons.append("stopping")
        return reasons

    def active_partitions(self) -> list[int]:
        """Partitions this worker consumes actively (same numbers for every WAL topic)."""
        return sorted({tp.partition for tp in assignment_of(self.faust) if tp.topic == self.command_topic})

    # -- lifecycle ---------------------------------------------------------------------

    async def start_services(self) -> None:
        """Start what Faust does not own. Call in the loop the Faust worker will use."""
        s = self.settings
        await ensure_topics(
            s.broker, [TopicSpec(self.command_topic, s.partitions, s.replication_factor)]
        )
        await self._read_record_limits()
        await self._compact_entries_changelog()
        await self.producer.start()
        await self.registry.start()
        for ns in self.registry.for_shard(s.shard):
            self._subscribe(ns.name)
        conductor: Any = self.faust.topics
        conductor._resubscribe_sleep_lock_seconds = s.resubscribe_s
        self._services_started = True

    async def _read_record_limits(self) -> None:
        """Bound what the delivery runtime writes by the changelog topics that really exist.

        Faust creates missing changelog topics with :data:`DERIVED_MAX_MESSAGE_BYTES`; topics
        created by an older walstream keep the broker's ~1 MB. A table row over a topic's limit
        would crash the worker on every restart (Faust's producer fails on it), so entries
        whose rows could not fit are dead-lettered at admission and refused (413) at write.
        """
        tables = [self.schedule.table, self.key_order.held, self.key_order.blocked, self.states.table,
                  self.dlq_index.table, self.groups.table]
        names = [str(t.changelog_topic.get_topic_name()) for t in tables]
        found = await max_message_bytes(self.settings.broker, names)
        self.row_limit_bytes = min([DERIVED_MAX_MESSAGE_BYTES, *found.values()])
        self.deliverer.row_limit_bytes = self.row_limit_bytes
        if self.row_limit_bytes < DERIVED_MAX_MESSAGE_BYTES:
            log.warning(
                "table changelog topics accept records of at most %d bytes (max.message.bytes); entries "
                "are limited to %d bytes. Raise max.message.bytes of %s to %d to lift it.",
                self.row_limit_bytes,
                self.entry_limit_bytes,
                ", ".join(n for n in names if found.get(n, DERIVED_MAX_MESSAGE_BYTES) < DERIVED_MAX_MESSAGE_BYTES),
                DERIVED_MAX_MESSAGE_BYTES,
            )

    async def _compact_entries_changelog(self) -> None:
        """Make the entries table's changelog plain ``compact``.

        Earlier versions created it ``compact,delete`` with ``retention.ms``: Kafka would delete
        the states of entries pending longer than that from the changelog, and a recovering
        worker would answer 404 for them. States now expire only through the sweep
        (:meth:`walstream.tables.entry_state.EntryStates.sweep`), as changelogged deletions.
        """
        topic = str(self.states.table.changelog_topic.get_topic_name())
        try:
            changed = await set_cleanup_policy(self.settings.broker, topic, "compact")
        except TopicError as exc:  # e.g. no AlterConfigs permission: the worker still runs
            log.error(
                "%s. Entries pending longer than its retention.ms lose their state on recovery; "
                "set cleanup.policy=compact on %s (kafka-configs.sh --alter).",
                exc,
                topic,
            )
            return
        if changed:
            log.warning("changed cleanup.policy of %s to compact (entry states expire only once final)", topic)

    @property
    def entry_limit_bytes(self) -> int:
        """The largest encoded entry the write API accepts: ``WALSTREAM_MAX_ENTRY_BYTES``, lowered
        so that the entry fits its WAL topic and every record derived from it fits too (the
        API's keys and ids are at most 4,096 and 256 characters: 17 KiB of UTF-8)."""
        return min(
            self.settings.max_entry_bytes,
            WAL_MAX_MESSAGE_BYTES - 64 * 1024,
            self.row_limit_bytes - DERIVED_OVERHEAD_BYTES - 17 * 1024 - 64,
        )

    async def stop_services(self) -> None:
        if not self._services_started:
            return
        await self.jobs.close()
        await self.registry.stop()
        await self.deliverer.close()
        await self.targets.close()
        await self.producer.stop()
        await self.fleet.close()
        await self.shard_router.close()
        await self.offsets_port.close()
        self._services_started = False

    # -- live subscription ---------------------------------------------------------------

    def _on_namespace_change(self, cfg: NamespaceConfig | None, name: str) -> None:
        topic = wal_topic(name)
        wanted = cfg is not None and cfg.shard == self.settings.shard
        if wanted and topic not in self._wal_topic_names:
            self._subscribe(name)
            self._resubscribe()
        elif not wanted and topic in self._wal_topic_names:
            self._wal_topic_names.remove(topic)
            self._resubscribe()

    def _subscribe(self, name: str) -> None:
        topic = wal_topic(name)
        if topic not in self._wal_topic_names:
            self._wal_topic_names.append(topic)
            log.info("delivery: consuming %s", topic)

    def _resubscribe(self) -> None:
        if self._services_started:
            conductor: Any = self.faust.topics
            conductor._flag_changes()

    async def _check_subscription(self) -> None:
        """Re-flag the conductor while a wanted topic is not subscribed.

        Faust drops a subscription change that arrives while the app is rebalancing, so a
        namespace created during a rebalance would otherwise never be consumed.

        Not while the conductor rebuilds its topic index (under its ``_tp_to_callback_lock``):
        the index is cleared first and refilled while topics are declared, which takes a
        second or more, so every topic looks missing then. Flagging there made every new
        namespace cost two rebalances of the whole fleet instead of one.
        """
        try:
            conductor: Any = self.faust.topics
            subscribed = set(getattr(conductor, "_topic_name_index", {}) or {})
            changed = getattr(conductor, "_subscription_changed", None)
            pending = changed is not None and changed.is_set()
            rebuilding = conductor._tp_to_callback_lock.locked()
            missing = set(self._wal_topic_names) - subscribed
            if (self._services_started and missing and not pending and not rebuilding
                    and not self.faust.rebalancing):
                log.info("re-subscribing for %s", sorted(missing))
                conductor._flag_changes()
        except Exception:  # a timer that raises kills the worker
            log.exception("subscription check failed")

    @property
    def consumed_topics(self) -> list[str]:
        return list(self._wal_topic_names)

    # -- what views and agents get -------------------------------------------------------

    def web_context(self) -> WebContext:
        return WebContext(
            settings=self.settings,
            faust=self.faust,
            registry=self.registry,
            writer=self.writer,
            clock=self.clock,
            metrics=self.metrics,
            fleet=self.fleet,
            status=self.status,
            commands=self.commands,
            dlq_index=self.dlq_index,
            breakers=self.breakers,
            auth=self.auth,
            partition_for=self.partition_for,
            active_partitions=self.active_partitions,
            settling=self.settling,
            not_ready=self.not_ready,
            liveness=self.liveness,
            consumed_topics=lambda: self.consumed_topics,
            entry_limit_bytes=lambda: self.entry_limit_bytes,
            report=self.report,
            tables={t.name: t for t in (self.schedule.table, self.key_order.blocked, self.key_order.held,
                                        self.states.table, self.dlq_index.table, self.groups.table)},
            shard_router=self.shard_router,
            jobs=self.jobs,
            replays=self.replays,
            peers=self.peers,
            index_checks=self.index_checks,
        )

    def agent_context(self) -> AgentContext:
        return AgentContext(
            settings=self.settings,
            faust=self.faust,
            wal_channel=self.wal_channel,
            offsets=self.offsets,
            changelogs=self.changelogs,
            deliverer=self.deliverer,
            commands=self.commands,
            schedule=self.schedule,
            states=self.states,
            active_partitions=self.active_partitions,
            settling=self.settling,
            liveness=self.liveness,
        )


def build_app(settings: Settings | None = None, *, offsets_port: ConsumerPort | None = None) -> WalApp:
    """Build a worker with its agents and web views registered (``offsets_port``: see
    :class:`WalApp`)."""
    from walstream.plugins import register_agents
    from walstream.web.views import register_views

    wal = WalApp(settings or Settings(), offsets_port=offsets_port)
    register_views(wal.web_context())
    register_agents(wal.agent_context())
    return wal
