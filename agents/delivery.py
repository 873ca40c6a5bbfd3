"""The core delivery agent: consumes every ``wal.<namespace>`` topic of the worker's shard and
hands batches to the :class:`~walstream.delivery.deliverer.Deliverer`.

Concurrency is 1: entries of one partition are handled in offset order. Batches are acked
only after the deliverer returns (every entry applied or dead-lettered), so a crash
re-delivers the batch (at-least-once; targets are idempotent). The deliverer never raises.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from walstream.delivery.dead_letters import SourceRecord

if TYPE_CHECKING:
    from walstream.app import WalApp


def register(wal: WalApp) -> None:
    settings = wal.settings
    command_topic = wal.command_topic

    @wal.faust.agent(wal.wal_channel, name="walstream.deliver", concurrency=1)
    async def deliver(stream: Any) -> Any:
        async for events in stream.take_events(settings.delivery_batch, within=settings.delivery_linger_s):
            records = []
            for ev in events:
                msg = ev.message
                if msg.topic == command_topic:
                    continue  # no commands defined yet
                records.append(SourceRecord(msg.topic, msg.partition, msg.offset, msg.key, msg.value))
            if records:
                await wal.deliverer.deliver(records)
            yield len(records)
