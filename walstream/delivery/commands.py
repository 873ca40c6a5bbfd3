"""Commands on the shard's command topic (``<group_id>.commands``: walstream.shards),
co-partitioned with the WAL topics so that a command for partition P is handled with P's
tables.

``{"op": "tick"}`` — timers of this partition are due; ``{"op": "cancel", "ns", "id",
"partition"}`` — cancel an entry (``partition``: where its key maps, which marks a
not-yet-seen entry cancelled in advance); ``{"op": "sweep"}`` — forget this partition's
final entry states older than the retention (walstream.tables.entry_state ``EntryStates.sweep``);
``{"op": "redrive", "ns", "id", "target_id"}`` — deliver a dead letter again;
``{"op": "purge", "ns"}`` — dead-letter what a namespace deleted with force still holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from walstream.producer import SharedProducer

TICK = orjson.dumps({"op": "tick"})
SWEEP = orjson.dumps({"op": "sweep"})
#: key of every command record (entry keys never start with NUL: the write API refuses them)
COMMAND_KEY = b"\x00walstream-command"


def purge(namespace: str) -> bytes:
    """Dead-letter every pending timer and held entry of a namespace deleted with force."""
    return orjson.dumps({"op": "purge", "ns": namespace})


def cancel(namespace: str, entry_id: str, home_partition: int) -> bytes:
    return orjson.dumps({"op": "cancel", "ns": namespace, "id": entry_id, "partition": home_partition})


class CommandSender:
    """Sends commands to partitions of the command topic through the worker's producer.

    :meth:`send` waits until every record is acknowledged (``timeout_s`` in all) and raises
    what the producer raised, or :class:`TimeoutError`; :meth:`post` only queues one (the
    scheduler's ticks and sweeps: a lost one is sent again on a later pass)."""

    def __init__(self, producer: SharedProducer, topic: str, timeout_s: float) -> None:
        self._producer = producer
        self.topic = topic
        self.timeout_s = timeout_s

    async def send(self, command: bytes, partitions: Iterable[int]) -> None:
        futures = [await self.post(command, p) for p in partitions]
        await asyncio.wait_for(asyncio.gather(*futures), timeout=self.timeout_s)

    async def post(self, command: bytes, partition: int) -> asyncio.Future[Any]:
        """Queue ``command`` for ``partition``; the future resolves once it is acknowledged."""
        return await self._producer.send(self.topic, command, key=COMMAND_KEY, partition=partition)


def redrive(namespace: str, entry_id: str, target_id: str) -> bytes:
    """Deliver a dead-lettered entry to one target again (``*``: the whole entry)."""
    return orjson.dumps({"op": "redrive", "ns": namespace, "id": entry_id, "target_id": target_id})
