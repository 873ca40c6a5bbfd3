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

from walstream.delivery.dead_letters import SourceRecord
from walstream.delivery.event_context import bound_event

if TYPE_CHECKING:
    from walstream.app import WalApp

log = logging.getLogger(__name__)

TICK = orjson.dumps({"op": "tick"})
#: key of every command record (entry keys never start with NUL: the write API refuses them)
COMMAND_KEY = b"\x00walstream-command"


def register(wal: WalApp) -> None:
    settings = wal.settings
    command_topic = wal.command_topic
    #: partition → when its last tick was sent; cleared when the agent handles it
    ticks_in_flight: dict[int, float] = {}

    @wal.faust.agent(wal.wal_channel, name="walstream.deliver", concurrency=1)
    async def deliver(stream: Any) -> Any:
        async for events in stream.take_events(settings.delivery_batch, within=settings.delivery_linger_s):
            by_partition: dict[int, list[Any]] = defaultdict(list)
            for ev in events:
                by_partition[ev.message.partition].append(ev)
            for partition, evs in by_partition.items():
                records = []
                tick = False
                for ev in evs:
                    msg = ev.message
                    if _is_command(msg, command_topic):
                        tick = tick or _is_tick(msg.value)
                    else:
                        records.append(SourceRecord(msg.topic, msg.partition, msg.offset, msg.key, msg.value))
                if tick:
                    ticks_in_flight.pop(partition, None)
                with bound_event(evs[-1]):
                    await wal.deliverer.process(partition, records, tick=tick)
            yield len(events)

    @wal.faust.timer(interval=settings.scheduler_interval_s)  # type: ignore[untyped-decorator]
    async def scheduler() -> None:
        # an exception escaping a Faust timer kills the worker: contain everything
        try:
            now_s = time.time()
            for partition in wal.active_partitions():
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


def _is_tick(value: bytes | None) -> bool:
    try:
        return bool(value) and orjson.loads(value or b"{}").get("op") == "tick"
    except orjson.JSONDecodeError:
        return False
