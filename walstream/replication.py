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
- Not forwarded: entries that name their own targets (an allowed override, an index repair:
  they are about this region's targets). Refused in a replicated namespace: mutation groups.
"""

from __future__ import annotations

from walstream.namespaces.model import NamespaceConfig
from walstream.settings import Settings


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
