"""Forwarding to a peer region: the ``region:<name>`` target of replicated namespaces.

Each entry is produced, exactly as it was written (same id, key, write time, due time,
payload, and ``origin``: the region it was written in), to ``wal.<namespace>`` on the peer's
Kafka. The peer's fleet applies it to its own targets and, since it was written elsewhere,
never forwards it again (walstream.replication). The record is keyed by the entry key, so a
key's entries keep their order in the peer's partition too.

It is a tracked target like any other: retries with the namespace's policy, a circuit breaker
while the peer's Kafka is down (the entries wait durably in this region's tables), dead
letters and redrive. The producer is the :class:`~walstream.targets.kafka.KafkaTarget`'s, with
all of its repair of failed producers. Forwarding is at-least-once: a record forwarded again
(after a crash between the peer's acknowledgement and this region's commit) carries the same
id, and the peer's delivery skips an id it already tracks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from walstream.entry import Entry
from walstream.namespaces.model import RegionTargetConfig, wal_topic
from walstream.targets.base import Outcomes, Target, TargetDownError, TargetError, TransientError
from walstream.targets.kafka import KafkaTarget, classify_error


class RegionTarget(KafkaTarget):
    def __init__(self, cfg: RegionTargetConfig, bootstrap: str, timeout_s: float) -> None:
        self.region_cfg = cfg
        self.label = f"region:{cfg.region}"
        self._init_producer(bootstrap, timeout_s)

    def topic_of(self, entry: Entry) -> str:
        return wal_topic(entry.namespace)

    def record_of(self, entry: Entry) -> tuple[bytes, list[tuple[str, bytes]]]:
        return entry.encode(), []

    async def send_record(
        self, topic: str, key: str, value: bytes, timeout_s: float, timestamp_ms: int | None = None
    ) -> None:
        """Produce one record to ``topic`` on the peer's Kafka, keyed by ``key`` (a
        cancellation to ``wal.<namespace>``, a namespace config to the namespaces topic);
        returns once the peer acknowledged it. Raises :class:`TargetError` when it did not."""
        async def send() -> None:
            producer = await self._started_producer()
            await self._check_topic(producer, topic)
            try:
                fut = await producer.send(topic, value=value, key=key.encode(), timestamp_ms=timestamp_ms)
            except Exception as exc:
                raise classify_error(exc) from exc
            self._watch(producer, fut)
            try:
                await fut
            except Exception as exc:
                raise classify_error(exc) from exc

        try:
            await asyncio.wait_for(send(), timeout_s)
        except TargetError:
            raise
        except TimeoutError:
            raise TransientError(f"{self.label}: no acknowledgement within {timeout_s:.0f} s") from None


class UnknownRegion(Target):
    """A peer region a namespace lists that this fleet's ``WALSTREAM_REGION_BROKERS`` does not
    name (the config came from a region that knows more). Its entries wait, as for a peer
    that is down, until the workers are restarted knowing it; nothing else is held up."""

    def __init__(self, cfg: RegionTargetConfig) -> None:
        self.label = f"region:{cfg.region}"
        self.region = cfg.region

    async def apply(self, entries: Sequence[Entry]) -> Outcomes:
        message = (f"region {self.region!r} is not in this fleet's WALSTREAM_REGION_BROKERS: "
                   "add its Kafka there; the entries wait for it")
        return [TargetDownError(message)] * len(entries)
