"""The namespace registry: every worker's view of the compacted namespaces topic.

Writes go to Kafka (acks=all) keyed by namespace name; a deletion is a tombstone. Each
worker tails the topic from the beginning with its own group-less consumer, so every worker
sees every namespace, whatever shard it serves, and changes apply live.

Guarantees:
- :meth:`NamespaceRegistry.apply` returns only after the WAL and DLQ topics exist and this
  worker's own view holds the new version (read-your-writes on the worker that answered).
- Deleting a namespace stops new writes to it; its topics and their data are kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pydantic import ValidationError

from walstream.kafka_admin import TopicSpec, ensure_topics, set_topic_config, wal_topic_specs
from walstream.namespaces.model import NamespaceConfig
from walstream.settings import Settings

log = logging.getLogger(__name__)

Listener = Callable[[NamespaceConfig | None, str], None]


class NamespaceRegistry:
    """In-memory, always-current map of namespace name → config."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = settings.namespaces_topic
        self._configs: dict[str, NamespaceConfig] = {}
        #: the last version seen of every name, deleted ones too: a namespace created again
        #: continues its versions (a version names one config, never two)
        self._last_version: dict[str, int] = {}
        #: when each current config was written (its record's Kafka timestamp, ms): which of
        #: two regions' configs is the later one (walstream.replication)
        self._written_ms: dict[str, int] = {}
        self._listeners: list[Listener] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._tail_task: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()

    # -- reading -----------------------------------------------------------------------

    def get(self, name: str) -> NamespaceConfig | None:
        return self._configs.get(name)

    def all(self) -> list[NamespaceConfig]:
        return sorted(self._configs.values(), key=lambda c: c.name)

    def for_shard(self, shard: str) -> list[NamespaceConfig]:
        return [c for c in self.all() if c.shard == shard]

    def add_listener(self, listener: Listener) -> None:
        """``listener(config_or_None, name)`` is called on every change seen by the tail."""
        self._listeners.append(listener)

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Create the namespaces topic if needed, load it to its end, then tail it."""
        s = self.settings
        await ensure_topics(
            s.broker,
            [
                TopicSpec(
                    self.topic,
                    partitions=1,
                    replication_factor=s.replication_factor,
                    config={"cleanup.policy": "compact", "min.compaction.lag.ms": "0"},
                )
            ],
        )
        self._producer = AIOKafkaProducer(
            bootstrap_servers=s.broker, acks="all", enable_idempotence=True
        )
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=s.broker,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await self._consumer.start()
        tp = TopicPartition(self.topic, 0)
        self._consumer.assign([tp])
        await self._consumer.seek_to_beginning(tp)
        end = (await self._consumer.end_offsets([tp]))[tp]
        while await self._consumer.position(tp) < end:
            batch = await self._consumer.getmany(tp, timeout_ms=1000)
            for records in batch.values():
                for rec in records:
                    self._apply_record(rec.key, rec.value, rec.timestamp)
        self._tail_task = asyncio.create_task(self._tail(), name="namespace-registry-tail")

    async def stop(self) -> None:
        if self._tail_task is not None:
            self._tail_task.cancel()
            try:
                await self._tail_task
            except asyncio.CancelledError:
                pass
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def _tail(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=1000)
            except asyncio.CancelledError:
                raise
            except Exception:  # a broker hiccup must not stop live config updates
                log.exception("namespace registry: read failed; retrying")
                await asyncio.sleep(1.0)
                continue
            if not batch:
                continue
            for records in batch.values():
                for rec in records:
                    self._apply_record(rec.key, rec.value, rec.timestamp)
            async with self._changed:
                self._changed.notify_all()

    def written_ms(self, name: str) -> int | None:
        """When the current config of ``name`` was written (epoch ms), None if unknown."""
        return self._written_ms.get(name)

    def _apply_record(self, key: bytes | None, value: bytes | None, timestamp_ms: int | None = None) -> None:
        if key is None:
            return
        name = key.decode(errors="replace")
        if value is None:
            self._written_ms.pop(name, None)
            if self._configs.pop(name, None) is not None:
                self._notify(None, name)
            return
        try:
            cfg = NamespaceConfig.model_validate_json(value)
        except ValidationError:
            # Written by a newer walstream, or corrupted: keep the last good config.
            log.error("namespace registry: ignoring unreadable config for %r", name)
            return
        self._configs[name] = cfg
        if timestamp_ms is not None:
            self._written_ms[name] = timestamp_ms
        self._last_version[name] = max(self._last_version.get(name, 0), cfg.version)
        self._notify(cfg, name)

    def _notify(self, cfg: NamespaceConfig | None, name: str) -> None:
        for listener in self._listeners:
            try:
                listener(cfg, name)
            except Exception:
                log.exception("namespace listener failed for %r", name)

    # -- writing -----------------------------------------------------------------------

    async def apply(self, cfg: NamespaceConfig) -> NamespaceConfig:
        """Create or replace a namespace; returns it with its new version."""
        s = self.settings
        await ensure_topics(s.broker, wal_topic_specs(cfg.name, s.partitions, s.replication_factor))
        if cfg.retention_ms is not None:
            await set_topic_config(s.broker, cfg.topic, {"retention.ms": str(cfg.retention_ms)})
        current = self._configs.get(cfg.name)
        last = max(current.version if current else 0, self._last_version.get(cfg.name, 0))
        new = cfg.model_copy(update={"version": last + 1})
        await self._send(cfg.name, new.to_json())
        await self._wait_for(lambda: (c := self._configs.get(cfg.name)) is not None
                             and c.version >= new.version)
        return new

    async def delete(self, name: str) -> bool:
        """Tombstone a namespace. Returns False when it did not exist."""
        if name not in self._configs:
            return False
        await self._send(name, None)
        await self._wait_for(lambda: name not in self._configs)
        return True

    async def _send(self, name: str, value: bytes | None) -> None:
        assert self._producer is not None, "registry not started"
        await self._producer.send_and_wait(self.topic, key=name.encode(), value=value)

    async def _wait_for(self, predicate: Callable[[], bool]) -> None:
        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)

        await asyncio.wait_for(wait(), timeout=self.settings.namespace_wait_s)
