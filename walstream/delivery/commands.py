"""Commands on the fleet's command topic (``<app_id>.commands``), co-partitioned with the
WAL topics so that a command for partition P is handled with P's tables.

``{"op": "tick"}`` — timers of this partition are due; ``{"op": "cancel", "ns", "id",
"partition"}`` — cancel an entry (``partition``: where its key maps, which marks a
not-yet-seen entry cancelled in advance); ``{"op": "sweep"}`` — forget this partition's
final entry states older than the retention (tables.entry_state ``EntryStates.sweep``).
"""

from __future__ import annotations

import orjson

TICK = orjson.dumps({"op": "tick"})
SWEEP = orjson.dumps({"op": "sweep"})
#: key of every command record (entry keys never start with NUL: the write API refuses them)
COMMAND_KEY = b"\x00walstream-command"


def purge(namespace: str) -> bytes:
    """Dead-letter every pending timer and held entry of a namespace deleted with force."""
    return orjson.dumps({"op": "purge", "ns": namespace})


def cancel(namespace: str, entry_id: str, home_partition: int) -> bytes:
    return orjson.dumps({"op": "cancel", "ns": namespace, "id": entry_id, "partition": home_partition})
