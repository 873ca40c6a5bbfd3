"""Shards: fleets of workers isolated from each other, sharing one namespace registry.

A namespace names the shard that delivers it (``shard`` in its config, default
``default``); a worker serves one shard (``WALSTREAM_SHARD``). Each shard is its own Kafka
consumer group with its own tables (their changelog topics are named after the group) and
its own command topic, so a shard's rebalances, stalls and backlogs never reach another
shard's workers. Every shard of one app id shares the registry topic
(``<app_id>.namespaces``) and writes to any namespace through any worker: a write is only
produced to the namespace's WAL topic.

What reads a shard's tables (an entry's status, a cancellation, dead letters, a namespace's
pending entries) is answered by that shard's workers: a worker of another shard forwards
such a request to the URL configured for the shard (``WALSTREAM_SHARD_URLS``; see
walstream.shard_router).
"""

from __future__ import annotations

import re

#: the shard ``default``: its consumer group is the app id itself (what walstream used before
#: shards had groups of their own, so existing tables and offsets stay where they are)
DEFAULT_SHARD = "default"
#: what a shard's name may be (it becomes part of Kafka group and topic names)
SHARD_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
SHARD_RE = re.compile(SHARD_PATTERN)


def group_id(app_id: str, shard: str) -> str:
    """The consumer group, Faust app id and topic-name prefix of ``shard``'s workers:
    ``<app_id>`` for the default shard, else ``<app_id>.shard-<shard>``."""
    return app_id if shard == DEFAULT_SHARD else f"{app_id}.shard-{shard}"


def parse_shard_urls(text: str) -> dict[str, str]:
    """``"b=http://walstream-b:6066,c=http://walstream-c:6066"`` → ``{"b": ..., "c": ...}``.

    Raises ValueError naming the item that is not ``shard=http(s)://host[:port]``, or a shard
    given twice. Blank items are skipped; trailing slashes dropped."""
    out: dict[str, str] = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        shard, sep, url = (p.strip() for p in item.partition("="))
        if not sep or not SHARD_RE.match(shard):
            raise ValueError(f"{item!r}: give shard=URL, the shard's name as in a namespace's 'shard'")
        if not re.match(r"^https?://[^/\s?#]+/?$", url):
            raise ValueError(f"{item!r}: the URL must be http(s)://host[:port] of a worker or load balancer "
                             f"of shard {shard!r}")
        if shard in out:
            raise ValueError(f"shard {shard!r} is given twice")
        out[shard] = url.rstrip("/")
    return out
