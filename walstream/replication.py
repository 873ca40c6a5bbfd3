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

from walstream.entry import cancellation_record
from walstream.namespaces.model import NamespaceConfig, RegionTargetConfig
from walstream.settings import Settings
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

    def _target(self, peer: str) -> RegionTarget:
        target = self.targets.get(RegionTargetConfig(type="region", region=peer))
        assert isinstance(target, RegionTarget)
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
                await self._target(peer).send_record(cfg.name, key, value, PEER_TIMEOUT_S)
            except Exception as exc:
                return f"not reached: {exc}"
            return "sent"

        peers = self.of(cfg)
        return dict(zip(peers, await asyncio.gather(*(one(p) for p in peers)), strict=True))
