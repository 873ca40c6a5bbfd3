"""The core delivery agent and its scheduler.

The agent consumes every ``wal.<namespace>`` topic of the worker's shard plus the worker
fleet's command topic (all co-partitioned with the state tables). Concurrency is 1, so each
partition is handled in offset order. A batch is acked only after the deliverer returns for
each of its partitions (every entry applied, waiting durably in a table, or dead-lettered),
so a crash re-delivers it (at-least-once; targets are idempotent).

The scheduler is a timer on every worker: for each partition it holds actively whose
earliest timer is due, it sends a ``tick`` command to that partition of the command topic;
the agent then handles the due timers with that partition's event current (table writes
are only possible there).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import orjson

from walstream.delivery.commands import COMMAND_KEY, TICK
from walstream.delivery.dead_letters import SourceRecord
from walstream.delivery.event_context import bound_event

if TYPE_CHECKING:
    from walstream.app import WalApp

log = logging.getLogger(__name__)



def register(wal: WalApp) -> None:
    settings = wal.settings
    command_topic = wal.command_topic
    #: partition → when its last tick was sent; cleared when the agent handles it
    ticks_in_flight: dict[int, float] = {}
    seen_partitions: list[int] = []

    @wal.faust.agent(wal.wal_channel, name="walstream.deliver", concurrency=1)
    async def deliver(stream: Any) -> Any:
        # Batches are built here rather than with ``stream.take_events()``: under load that
        # helper was seen to hand over some events twice and never hand over others (75 of
        # 2,000 in one run), which would lose entries until a restart. Here each event is
        # taken as Faust yields it (with its own current event), the batch is processed when
        # it is full or when nothing more is waiting, and every event is acked afterwards.
        manual = stream.noack()
        batch: list[Any] = []
        async for event in manual.events():
            batch.append(event)
            if len(batch) < settings.delivery_batch and not manual.channel.queue.empty():
                continue
            await _handle(batch)
            for ev in batch:
                await manual.ack(ev)
            yield len(batch)
            batch = []

    async def _handle(events: list[Any]) -> None:
        by_partition: dict[int, list[Any]] = defaultdict(list)
        for ev in events:
            by_partition[ev.message.partition].append(ev)
        for partition, evs in by_partition.items():
            records = []
            commands = []
            for ev in evs:
                msg = ev.message
                if _is_command(msg, command_topic):
                    cmd = _command(msg.value)
                    if cmd is not None:
                        commands.append(cmd)
                else:
                    records.append(SourceRecord(msg.topic, msg.partition, msg.offset, msg.key, msg.value))
            tick = any(c.get("op") == "tick" for c in commands)
            if tick:
                ticks_in_flight.pop(partition, None)
            with bound_event(evs[-1]):
                await wal.deliverer.process(partition, records, tick=tick, commands=commands)

    @wal.faust.timer(interval=settings.scheduler_interval_s)  # type: ignore[untyped-decorator]
    async def scheduler() -> None:
        # an exception escaping a Faust timer kills the worker: contain everything
        try:
            now_s = time.time()
            partitions = wal.active_partitions()
            if partitions != seen_partitions:  # a rebalance: recovered timers may sort earlier
                wal.schedule.reset_bounds()
                seen_partitions[:] = partitions
            for partition in partitions:
                due = wal.schedule.next_due_ms(partition)
                if due is None or due > now_s * 1000:
                    continue
                sent = ticks_in_flight.get(partition)
                if sent is not None and now_s - sent < settings.tick_resend_s:
                    continue
                ticks_in_flight[partition] = now_s
                await wal.producer.send(command_topic, TICK, key=COMMAND_KEY, partition=partition)
        except Exception:
            log.exception("scheduler tick failed")


def _is_command(msg: Any, command_topic: str) -> bool:
    # Faust's test harness gives records no topic: there the key tells commands apart.
    return bool(msg.topic == command_topic or (not msg.topic.startswith("wal.") and msg.key == COMMAND_KEY))


def _command(value: bytes | None) -> dict[str, Any] | None:
    """A command document, or None for anything unreadable (commands are ours; a stray
    record on the command topic is logged and skipped: it carries no entry)."""
    try:
        doc = orjson.loads(value or b"null")
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict) or doc.get("op") not in ("tick", "cancel", "redrive"):
        log.warning("ignoring unreadable command %r", (value or b"")[:200])
        return None
    return doc
