"""walstream's Faust topic class: each topic is created (declared) once per worker process.

Faust declares every internal topic (the tables' changelogs, the leader topic) again each time
its subscription changes: one CreateTopics round trip per topic, each answered "already
exists", ~0.3 s apiece on this project's machines, one after another. A new namespace changes
the subscription, so its WAL topic was consumed ~2 s later than it needs to be, on every
worker. A topic this process has declared is not declared again; one deleted meanwhile is
recreated by the next worker start, as before this class.
"""

from __future__ import annotations

from typing import Any

import faust


class OnceDeclaredTopic(faust.Topic):
    """A :class:`faust.Topic` whose :meth:`maybe_declare` does nothing once every one of its
    topic names was declared by this app (clones share the app's record)."""

    async def maybe_declare(self) -> None:
        declared: set[str] = _declared(self.app)
        names = set(self.topics)
        if names <= declared:
            return
        # not super().maybe_declare(): Faust's is wrapped in mode's ``stampede``, whose first
        # call stores a bound wrapper on the instance, shadowing this method from then on
        await self.declare()
        declared.update(names)


def _declared(app: Any) -> set[str]:
    found: set[str] | None = getattr(app, "_walstream_declared_topics", None)
    if found is None:
        found = set()
        app._walstream_declared_topics = found
    return found
