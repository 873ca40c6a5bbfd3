"""The core delivery agent and its scheduler.

The agent consumes every ``wal.<namespace>`` topic of the worker's shard plus the worker
fleet's command topic (all co-partitioned with the state tables). Concurrency is 1, so each
partition is handled in offset order. Records arrive in chunks (one Faust event per
partition per fetch, walstream.faust_consumer.ChunkMessage). Each chunk is admitted by the offset ledger
(walstream.delivery.offsets), and a partition's offsets advance there only after the
deliverer returns for its part of the batch (every entry applied, waiting durably in a
table, or dead-lettered); the ledger alone commits. A crash or a rebalance re-delivers from
the last committed offset (at-least-once; targets are idempotent), and records Faust drops
during a rebalance are read again.

The scheduler is a timer on every worker: for each partition it holds actively whose
earliest timer is due, it sends a ``tick`` command to that partition of the command topic;
the agent then handles the due timers with that partition's event current (table writes
are only possible there). Every ``WALSTREAM_SWEEP_INTERVAL_S`` it also sends each such
partition a ``sweep`` command: final entry states past the retention are deleted there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import orjson

from walstream.delivery.commands import COMMAND_KEY, SWEEP, TICK
from walstream.delivery.dead_letters import SourceRecord
from walstream.delivery.event_context import bound_event
from walstream.faust_consumer import records_of
from walstream.health import DELIVERY, SCHEDULER

if TYPE_CHECKING:
    from walstream.context import AgentContext

log = logging.getLogger(__name__)

#: How often the ledger commits finished offsets and looks for vanished records.
OFFSET_COMMIT_INTERVAL_S = 1.0
#: A partition whose last sweep stopped at its limit is swept again this soon.
SWEEP_AGAIN_S = 1.0

#: How long the agent, holding a batch, waits for a further record before processing it.
BATCH_FOLLOW_S = 0.005


def register(ctx: AgentContext) -> None:
    settings = ctx.settings
    command_topic = ctx.commands.topic
    #: partition → when its last tick was sent; cleared when the agent handles it
    ticks_in_flight: dict[int, float] = {}
    #: partition → when its last sweep command was sent
    sweeps_sent: dict[int, float] = {}

    #: what the idle check needs to know about the agent
    state: dict[str, Any] = {"busy": False, "queue": None}

    @ctx.faust.agent(ctx.wal_channel, name="walstream.deliver", concurrency=1)
    async def deliver(stream: Any) -> Any:
        # Batches are built here rather than with ``stream.take_events()``: each event is
        # taken as Faust yields it (with its own current event), the batch is processed when
        # it is full or when nothing more is waiting. Records are admitted by the offset
        # ledger (strict offset order per partition; see walstream.delivery.offsets), which
        # alone commits: every message is released to Faust, never acked.
        manual = stream.noack()
        queue = state["queue"] = manual.channel.queue
        events = manual.events().__aiter__()
        #: the next event, asked for in its own task so that waiting for it can be given up
        #: without cancelling Faust's stream generator
        upcoming: asyncio.Future[Any] | None = None
        #: admitted events, each with the records of it to process (a chunk may be cut)
        batch: list[tuple[Any, list[SourceRecord]]] = []
        size = 0
        try:
            while True:
                if upcoming is None:
                    upcoming = asyncio.ensure_future(events.__anext__())
                # Holding records, the agent takes more only if they come at once. A rebalance
                # can stop the flow while records are held, and Faust then waits for those very
                # records before it goes on: agent and consumer waited for each other for good
                # (seen in test_rebalance: 22,772 entries undelivered). So a batch whose next
                # record does not follow at once is processed.
                await asyncio.wait({upcoming}, timeout=BATCH_FOLLOW_S if batch else None)
                if upcoming.done():
                    try:
                        event = upcoming.result()
                    except StopAsyncIteration:
                        break
                    finally:
                        upcoming = None
                    msg = event.message
                    records = records_of(msg)
                    start, stop = await ctx.offsets.admit_chunk(msg.tp, [r.offset for r in records], msg.generation_id)
                    if stop > start:
                        batch.append((event, records[start:stop]))
                        size += stop - start
                    else:
                        ctx.offsets.release(msg)
                    if not batch or (size < settings.delivery_batch and not queue.empty()):
                        continue
                state["busy"] = True
                ctx.liveness.busy(DELIVERY)
                try:
                    await _handle(batch)
                except Exception:
                    # The deliverer contains target and input errors itself; anything reaching
                    # here is a bug. The batch is read again rather than lost or crashing the worker.
                    log.exception("delivery batch failed; its records will be read again")
                    _settle(batch, processed=False)
                else:
                    _settle(batch, processed=True)
                finally:
                    state["busy"] = False
                    ctx.liveness.done(DELIVERY)
                yield size
                batch = []
                size = 0
        finally:
            if upcoming is not None and not upcoming.done():
                upcoming.cancel()
            # a worker stopping commits what it finished (a crash re-reads it instead)
            try:
                await asyncio.wait_for(ctx.offsets.commit(), timeout=5)
            except Exception:  # stopping anyway; the next owner re-reads what was not committed
                log.warning("final offset commit failed", exc_info=True)

    @ctx.faust.timer(interval=OFFSET_COMMIT_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def commit_offsets() -> None:
        try:
            queue = state["queue"]
            await ctx.offsets.tick(idle=not state["busy"] and (queue is None or queue.empty()))
        except Exception:
            log.exception("offset commit failed")

    @ctx.faust.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def commit_on_revoke(app: Any, revoked: Any, **kwargs: Any) -> None:
        # Faust has waited for the agent's batch in hand; commit it while still in the
        # generation, so the next owner does not process it again.
        try:
            await ctx.offsets.commit()
        except Exception:
            log.exception("offset commit on revocation failed")

    def _settle(batch: list[tuple[Any, list[SourceRecord]]], processed: bool) -> None:
        # an admitted record's generation is the ledger's at admission (admit refuses others)
        first: dict[Any, int] = {}
        end: dict[Any, tuple[int, int]] = {}
        for ev, records in batch:
            msg = ev.message
            first.setdefault(msg.tp, records[0].offset)
            end[msg.tp] = (records[-1].offset + 1, msg.generation_id)
            ctx.offsets.release(msg)
        for tp, (stop, generation) in end.items():
            if processed:
                ctx.offsets.finished(tp, stop, generation)
            else:
                ctx.offsets.abandoned(tp, first[tp], generation)

    async def _handle(batch: list[tuple[Any, list[SourceRecord]]]) -> None:
        by_partition: dict[int, list[tuple[Any, list[SourceRecord]]]] = defaultdict(list)
        for ev, records in batch:
            by_partition[ev.message.partition].append((ev, records))
        for partition, parts in by_partition.items():
            fresh: list[SourceRecord] = []
            commands: list[dict[str, Any]] = []
            for ev, records in parts:
                if _is_command(ev.message, command_topic):
                    commands.extend(cmd for cmd in map(_command, (r.value for r in records)) if cmd is not None)
                else:
                    fresh.extend(records)
            tick = any(c.get("op") == "tick" for c in commands)
            if tick:
                ticks_in_flight.pop(partition, None)
            with bound_event(parts[-1][0]):
                await ctx.deliverer.process(partition, fresh, tick=tick, commands=commands)
        # the batch's table writes head for their changelogs together (acknowledged by the
        # next flush: the deliverer's before it removes anything, the ledger's before a commit)
        await ctx.changelogs.send_pending()

    @ctx.faust.timer(interval=settings.scheduler_interval_s)  # type: ignore[untyped-decorator]
    async def scheduler() -> None:
        # an exception escaping a Faust timer kills the worker: contain everything
        ctx.liveness.beat(SCHEDULER)
        try:
            now_s = time.time()
            partitions = ctx.active_partitions()
            ctx.schedule.follow(partitions, ctx.settling())  # recovered timers may sort earlier
            for partition in partitions:
                due = ctx.schedule.next_due_ms(partition)
                if due is None or due > now_s * 1000:
                    continue
                sent = ticks_in_flight.get(partition)
                if sent is not None and now_s - sent < settings.tick_resend_s:
                    continue
                ticks_in_flight[partition] = now_s
                await ctx.commands.post(TICK, partition)
            for partition in partitions:
                sent = sweeps_sent.get(partition)
                if sent is not None:
                    # more to read after the last sweep (handled since it was sent): soon again
                    more = ctx.states.mid_pass(partition) and ctx.states.swept_at.get(partition, 0.0) >= sent
                    wait_s = min(SWEEP_AGAIN_S, settings.sweep_interval_s) if more else settings.sweep_interval_s
                    if now_s - sent < wait_s:
                        continue
                sweeps_sent[partition] = now_s
                await ctx.commands.post(SWEEP, partition)
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
    if not isinstance(doc, dict) or doc.get("op") not in ("tick", "cancel", "redrive", "purge", "sweep"):
        log.warning("ignoring unreadable command %r", (value or b"")[:200])
        return None
    return doc
