"""Cross-region replication: the rules a regional fleet follows (docs/replication.md).

Each region runs its own Kafka and worker fleet; ``WALSTREAM_REGION`` names a fleet's region
and ``WALSTREAM_REGION_BROKERS`` every region's Kafka. A namespace whose
``replication.regions`` lists several regions is held in each of them:

- An entry written in region R carries ``origin: R`` (walstream.requests). R applies it to
  its own targets (``replication.regions.R.targets``, default the namespace's) and forwards it
  unchanged to ``wal.<namespace>`` of every other listed region, each peer a tracked target
  ``region:<peer>`` of the entry (walstream.targets.region): retries, circuit breaker, dead
  letters, and ``walstream_replication_lag_seconds{namespace,peer}``.
- A region applies an entry whose origin is another region to its own targets only: it never
  forwards it again, so loops cannot happen (walstream.delivery.deliverer ``_targets_for``).
- A delayed entry is forwarded when it is read, not when it is due, so each region holds it
  in its own schedule and it is due at the same instant everywhere (``_forward_early``).
- Every region applies an entry with its original write time, so last writer wins gives the
  same final state everywhere.
- A cancellation (``DELETE /v1/log/...``, in any region) is sent to every other region as a
  cancellation record in ``wal.<namespace>``, keyed by the entry's key (:class:`Peers`); a
  region applies it as its own cancel and never sends it on. One that arrives before the
  entry marks it cancelled in advance.
- Not forwarded: entries that name their own targets (an allowed override, an index repair:
  they are about this region's targets). Refused in a replicated namespace: mutation groups.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from walstream.entry import cancellation_record
from walstream.kafka_admin import ensure_topics, set_topic_config, wal_topic_specs
from walstream.namespaces.model import NamespaceConfig, RegionTargetConfig, wal_topic
from walstream.namespaces.registry import NamespaceRegistry
from walstream.settings import Settings
from walstream.targets.base import TargetError
from walstream.targets.pool import TargetPool
from walstream.targets.region import RegionTarget


def region_problem(cfg: NamespaceConfig, settings: Settings) -> str | None:
    """Why this worker's fleet cannot hold ``cfg`` as it is (a 400 message), or None.

    A replicated namespace must list this fleet's region (it is applied in a region that holds
    it), and every region it lists must be in ``WALSTREAM_REGION_BROKERS`` (or its entries
    could never be forwarded there). A worker outside replication takes any namespace.
    """
    if cfg.replication is None or settings.region is None:
        return None
    listed = sorted(cfg.replication.regions)
    if settings.region not in cfg.replication.regions:
        return (
            f"replication.regions lists {', '.join(listed)} but not this fleet's region {settings.region!r}: "
            "apply the namespace in one of its regions"
        )
    unknown = [r for r in listed if r not in settings.region_broker_map]
    if unknown:
        return (
            f"replication.regions: {', '.join(repr(r) for r in unknown)} not in this fleet's "
            f"WALSTREAM_REGION_BROKERS (it knows {', '.join(sorted(settings.region_broker_map))})"
        )
    return None


log = logging.getLogger(__name__)

#: how long a request waits for each peer region's Kafka to acknowledge what it sends there
PEER_TIMEOUT_S = 10.0


class Peers:
    """What a request sends to the peer regions of a namespace (not entries: the delivery
    agent forwards those, with retries). Each peer is reached through the worker's shared
    ``region:<peer>`` target, so its producer and its repair are the forwarding's own."""

    def __init__(self, settings: Settings, targets: TargetPool) -> None:
        self.settings = settings
        self.targets = targets

    def of(self, cfg: NamespaceConfig) -> list[str]:
        return cfg.peers_of(self.settings.region)

    def _target(self, peer: str, namespace: str) -> RegionTarget:
        """The forwarding target of ``namespace`` to ``peer`` (the caller checked that this
        fleet knows the peer: :func:`region_problem`, :meth:`known`)."""
        target = self.targets.get(RegionTargetConfig(type="region", region=peer, namespace=namespace))
        if not isinstance(target, RegionTarget):
            raise TargetError(f"region {peer!r} is not in this fleet's WALSTREAM_REGION_BROKERS")
        return target

    async def cancel(self, cfg: NamespaceConfig, entry_id: str, key: str, at_us: int) -> dict[str, str]:
        """Send the cancellation of ``entry_id`` (of ``key``) to every peer region of ``cfg``;
        returns ``{peer: "sent"}``, or what went wrong for a peer its Kafka did not
        acknowledge (the cancellation can be asked again there, or here, once it is back)."""
        region = self.settings.region
        assert region is not None or not self.of(cfg)
        value = cancellation_record(cfg.name, entry_id, key, region or "", at_us)

        async def one(peer: str) -> str:
            try:
                await self._target(peer, cfg.name).send_record(wal_topic(cfg.name), key, value, PEER_TIMEOUT_S)
            except Exception as exc:
                return f"not confirmed: {exc} (it may still arrive; ask again once the region answers)"
            return "sent"

        peers = self.of(cfg)
        return dict(zip(peers, await asyncio.gather(*(one(p) for p in peers)), strict=True))

    async def push_namespace(
        self, cfg: NamespaceConfig, written_ms: int | None, peers: list[str] | None = None
    ) -> dict[str, str]:
        """Make ``cfg`` the namespace's config in every peer region it lists: its topics there
        (this fleet's partition count, which every region must share), then the config into
        the peer fleet's namespaces topic, with ``written_ms`` as its time so that each region
        knows it for the same write. Returns ``{peer: "applied"}`` or why it was not reached
        (it gets the config later: :meth:`reconcile`). ``peers``: these regions instead of
        the ones ``cfg`` lists (also those its previous version listed)."""
        async def one(peer: str) -> str:
            try:
                await asyncio.wait_for(self._push(peer, cfg, written_ms), PEER_TIMEOUT_S)
            except TimeoutError:
                return f"not reached: no answer within {PEER_TIMEOUT_S:.0f} s"
            except Exception as exc:
                return f"not reached: {exc}"
            return "applied"

        peers = self.of(cfg) if peers is None else peers
        return dict(zip(peers, await asyncio.gather(*(one(p) for p in peers)), strict=True))

    async def _push(self, peer: str, cfg: NamespaceConfig, written_ms: int | None) -> None:
        s = self.settings
        brokers = s.region_broker_map.get(peer)
        if brokers is None:
            raise TargetError(f"region {peer!r} is not in this fleet's WALSTREAM_REGION_BROKERS")
        timeout_ms = int(PEER_TIMEOUT_S * 1000)
        await ensure_topics(brokers, wal_topic_specs(cfg.name, s.partitions, s.replication_factor), timeout_ms)
        if cfg.retention_ms is not None:
            await set_topic_config(brokers, cfg.topic, {"retention.ms": str(cfg.retention_ms)}, timeout_ms)
        try:
            await self._target(peer, cfg.name).send_record(
                s.namespaces_topic, cfg.name, cfg.to_json(), PEER_TIMEOUT_S, timestamp_ms=written_ms)
        except TargetError as exc:
            raise TargetError(f"{exc} (is a fleet of app {s.app_id!r} running in region {peer!r}?)") from None

    async def reconcile(self, registry: NamespaceRegistry) -> dict[str, list[str]]:
        """Push to each peer region the replicated namespaces whose config there is missing,
        or different and older than this region's (by write time): what a region that could
        not be reached when a namespace was applied gets once it is back. Configs converge to
        the one written last. Returns ``{peer: [names pushed]}``; a peer not reached is left
        for the next round (logged)."""
        pushed: dict[str, list[str]] = {}
        for peer in sorted(set(self.settings.region_broker_map) - {self.settings.region or ""}):
            mine = [c for c in registry.all() if peer in self.of(c)]
            if not mine:
                continue
            try:
                theirs = await read_configs(self.settings.region_broker_map[peer], self.settings.namespaces_topic)
            except Exception as exc:
                log.warning("replication: cannot read region %s's namespaces: %s", peer, exc)
                continue
            for cfg in mine:
                written_ms = registry.written_ms(cfg.name)
                there = theirs.get(cfg.name)
                if there is not None and not newer(cfg, written_ms or 0, *there):
                    continue
                try:
                    await asyncio.wait_for(self._push(peer, cfg, written_ms), 3 * PEER_TIMEOUT_S)
                except Exception as exc:
                    log.warning("replication: namespace %s not applied in region %s: %s", cfg.name, peer, exc)
                    break
                pushed.setdefault(peer, []).append(cfg.name)
        return pushed


def newer(mine: NamespaceConfig, mine_ms: int, theirs: NamespaceConfig | None, theirs_ms: int) -> bool:
    """Whether this region's config of a namespace supersedes a peer's (``theirs``: None
    when the peer deleted it, which this region never undoes unless it wrote later). The
    later write wins; at the same millisecond a deletion wins, then the greater encoding, so
    two regions always agree on which. Equal configs (versions aside) supersede nothing."""
    if theirs is not None and _content(theirs) == _content(mine):
        return False
    if mine_ms != theirs_ms:
        return mine_ms > theirs_ms
    return theirs is not None and _content(mine) > _content(theirs)


def _content(cfg: NamespaceConfig) -> bytes:
    """What a config says, its version aside (each region numbers its own)."""
    return orjson.dumps(cfg.model_dump(mode="json", exclude={"version"}), option=orjson.OPT_SORT_KEYS)


async def read_configs(bootstrap: str, topic: str) -> dict[str, tuple[NamespaceConfig | None, int]]:
    """The namespace configs in ``topic`` on ``bootstrap``, each with its write time (ms);
    a deleted namespace is ``(None, when it was deleted)``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                request_timeout_ms=int(PEER_TIMEOUT_S * 1000))
    out: dict[str, tuple[NamespaceConfig | None, int]] = {}
    try:
        await asyncio.wait_for(consumer.start(), PEER_TIMEOUT_S)
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await asyncio.wait_for(consumer.end_offsets([tp]), PEER_TIMEOUT_S))[tp]
        deadline = asyncio.get_running_loop().time() + 4 * PEER_TIMEOUT_S
        while await consumer.position(tp) < end:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{topic} on {bootstrap} not read to its end in time")
            for records in (await consumer.getmany(tp, timeout_ms=1000)).values():
                for rec in records:
                    if rec.key is None:
                        continue
                    if rec.value is None:
                        out[rec.key.decode(errors="replace")] = (None, rec.timestamp)
                        continue
                    try:
                        out[rec.key.decode(errors="replace")] = (
                            NamespaceConfig.model_validate_json(rec.value), rec.timestamp)
                    except ValueError:
                        continue  # unreadable here (a newer walstream's): left alone
    finally:
        await consumer.stop()
    return out
