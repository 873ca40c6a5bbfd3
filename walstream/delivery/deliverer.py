"""The delivery runtime: from WAL records and due timers to targets.

Contract (what the delivery agent relies on):
- :meth:`Deliverer.process` handles the records of **one partition** while an event of that
  partition is current (every table write lands in that partition's changelog). It never
  raises: an exception escaping a Faust agent would commit offsets without delivering.
- When it returns, every entry of the batch is applied to each of its targets, or is
  durably waiting in a table (delayed, retrying, held behind an earlier entry of its key),
  or its dead letter is acknowledged by Kafka. Nothing is dropped.
- Each target is tracked separately: a failure at one target never re-applies another.
- An entry is never applied before its due time.
- With ``ordering: key``, while an entry for key K waits for a retry at target T, later
  entries for K wait for T behind it and are applied after it, in write order. Other keys
  and other targets keep flowing.
- Transient failures are retried at ``backoff(attempt)``; permanent failures and exhausted
  attempts go to ``wal.<namespace>.dlq``. While a target's circuit breaker is open, entries
  wait for it without spending attempts.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from walstream.delivery.breaker import Breaker, Breakers
from walstream.delivery.dead_letters import DeadLetter, DeadLetterWriter, SourceRecord
from walstream.delivery.pacing import ADAPTIVE_HORIZON_S, TOLERANCE_S, Pacer
from walstream.delivery.retry import backoff_ms
from walstream.delivery.target_calls import TargetCalls
from walstream.entry import Entry, EntryDecodeError, cancelled_by, parse_record
from walstream.failpoints import Failpoints
from walstream.kafka_admin import DERIVED_MAX_MESSAGE_BYTES
from walstream.metrics import Metrics
from walstream.namespaces.model import NamespaceConfig, PacingConfig, RegionTargetConfig, RetryPolicy
from walstream.namespaces.registry import NamespaceRegistry
from walstream.tables.dead_letter_index import DeadLetterIndex
from walstream.tables.entry_state import FINAL, EntryState, EntryStates, summarise
from walstream.tables.groups import GROUP_ENDED, Groups, GroupState, header_key, member_key
from walstream.tables.held import KeyOrder
from walstream.tables.keys import target_id as make_target_id
from walstream.tables.schedule import Schedule, Timer
from walstream.targets.base import (
    ErrorClass,
    KeyRuns,
    NotSent,
    Target,
    TargetDownError,
    TargetError,
    TransientError,
    shorten,
)
from walstream.targets.pool import TargetPool

log = logging.getLogger(__name__)

#: most due timers one tick takes from one partition (the rest wait for the next tick)
TICK_LIMIT = 1000

#: a batch that raises is run again this many times (after a pause) before its records,
#: commands and timers are taken one by one, so that one that keeps failing is found
BATCH_ATTEMPTS = 3
#: a unit (record or timer) that raises this many times alone is dead-lettered
UNIT_ATTEMPTS = 2

#: held entries of one key released together when their blocker is done: applied in the same
#: batch, one per wave, in write order (releasing them one timer at a time drained ~240/s)
RELEASE_RUN = 200
#: most held entries one partition batch releases that way; the rest go through the scheduler
RELEASE_BUDGET = 5000


async def _no_flush() -> None:
    return None


@dataclass
class Item:
    """One entry bound for one target."""

    entry: Entry
    doc: dict[str, Any]
    ns: NamespaceConfig
    source: SourceRecord
    target_cfg: dict[str, Any]
    target_id: str
    target: Target
    attempt: int = 0
    first_failure_s: float | None = None
    #: this item is the one its key waits for (a retry, or a released held entry)
    is_blocker: bool = False
    #: redriven from the dead-letter queue
    redrive: bool = False
    #: released from the held table in this batch (its row, removed once this is durable)
    held_key: bytes | None = None
    #: its pacing slot has come (a paced timer fired): sent without taking another
    paced: bool = False

    @property
    def seq(self) -> int:
        """Where the entry queues behind its key: its offset, or its place in its group."""
        group_seq = self.entry.group_seq
        return self.source.offset if group_seq is None else group_seq

    @property
    def policy(self) -> RetryPolicy:
        """The entry's own retry policy, else its namespace's (retry policy is data)."""
        if self.entry.retry is not None:
            return RetryPolicy.model_validate(self.entry.retry)
        return self.ns.retry

    @property
    def ordered(self) -> bool:
        # a group's members are applied in seq order whatever the namespace's ordering
        return self.ns.ordering == "key" or self.entry.group is not None

    @property
    def order_key(self) -> tuple[str, str]:
        return (self.entry.namespace, self.entry.order_key)


@dataclass
class _Outcome:
    """What processing one partition batch decided, applied after the targets answered."""

    letters: list[DeadLetter]
    #: timers written while processing: a due timer whose successor got the same key
    #: (same due millisecond) must not be deleted afterwards
    timers_put: set[bytes]
    #: entry state documents touched by this batch, written once at the end
    docs: dict[tuple[str, str], dict[str, Any]]
    #: held rows whose entries became retry timers: removed only once those are durable
    released: set[bytes] = field(default_factory=set)
    #: timers and blocked-key rows to remove once dead letters and states are durable
    removals: list[bytes] = field(default_factory=list)
    unblocked: list[bytes] = field(default_factory=list)
    #: target id → runs of held entries released in this batch, each in its key's order,
    #: for the target's wave loop to apply one per wave (see Deliverer._release)
    chains: dict[str, list[list[Item]]] = field(default_factory=dict)
    #: how many held entries this batch may still release that way
    release_budget: int = 0
    #: (namespace, target type) → delivery lag (s) of each entry delivered, for the metrics
    #: (namespace, target type, delayed?) -> seconds from write (or due) time to application
    lags: dict[tuple[str, str, bool], list[float]] = field(default_factory=dict)
    #: group headers touched by this batch, written once at the end
    groups: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    #: staged group members (and expired headers) to remove once this batch is durable
    group_removals: list[bytes] = field(default_factory=list)
    #: (namespace, target id, group id) → why: groups dead-lettered at a target in this batch,
    #: whose members still in its waves are dead-lettered instead of sent
    failed_groups: dict[tuple[str, str, str], str] = field(default_factory=dict)
    #: (namespace, group id) of groups released (or dead-lettered whole) in this batch
    groups_released: set[tuple[str, str]] = field(default_factory=set)
    #: (namespace, state) of each group that ended in this batch, counted once it is written
    groups_ended: list[tuple[str, str]] = field(default_factory=list)


class Deliverer:
    def __init__(
        self,
        registry: NamespaceRegistry,
        targets: TargetPool,
        dead_letters: DeadLetterWriter,
        metrics: Metrics,
        schedule: Schedule,
        order: KeyOrder,
        breakers: Breakers,
        states: EntryStates,
        dlq_index: DeadLetterIndex,
        flush: Callable[[], Awaitable[None]] = _no_flush,
        failpoints: Failpoints | None = None,
        retry_pause_s: float = 1.0,
        pacer: Pacer | None = None,
        *,
        groups: Groups,
    ) -> None:
        self.registry = registry
        self.targets = targets
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.schedule = schedule
        self.order = order
        self.breakers = breakers
        self.states = states
        self.dlq_index = dlq_index
        #: waits until every table write made so far is durable (the changelog producer)
        self.flush = flush
        self.failpoints = failpoints or Failpoints("", flush)
        self.retry_pause_s = retry_pause_s
        #: send slots of paced targets (walstream.delivery.pacing)
        self.pacer = pacer or Pacer()
        #: mutation groups waiting for their commit (walstream.tables.groups)
        self.groups = groups
        #: (namespace, partition) → whether its WAL partition is consumed to its end (as of the
        #: last fetch); set by the composition root. A group is aborted only then, or once a
        #: record written after its deadline was read (see _sweep_groups)
        self.caught_up: Callable[[str, int], bool] = lambda namespace, partition: True
        #: (namespace, partition) → the latest write time (µs) of a record admitted from it
        self._read_to_us: dict[tuple[str, int], int] = {}
        self._pacing: dict[str, PacingConfig | None] = {}
        #: the largest table row the changelog topics accept (set by the composition root)
        self.row_limit_bytes = DERIVED_MAX_MESSAGE_BYTES
        self._ns_targets: dict[tuple[str, int, bool], list[tuple[dict[str, Any], str, Target]]] = {}
        # a namespace deleted and created again starts its versions anew: forget its targets
        registry.add_listener(self._forget_targets)

    # -- entry point -----------------------------------------------------------------------

    async def process(
        self,
        partition: int,
        records: Sequence[SourceRecord],
        *,
        tick: bool,
        commands: Sequence[dict[str, Any]] = (),
    ) -> None:
        """Handle fresh ``records`` of ``partition``, its due timers when ``tick``, and
        ``commands`` (cancellations, redrives) addressed to it.

        Last line of defence against walstream's own bugs and records it cannot handle: a
        batch that raises is run again from the start (targets are idempotent), and after
        :data:`BATCH_ATTEMPTS` its parts are run one by one; a record or timer that still
        raises alone is dead-lettered (``permanent``, with the exception), so every record
        ends delivered or dead-lettered in bounded time and the partition keeps flowing.
        """
        for attempt in range(1, BATCH_ATTEMPTS + 1):
            try:
                await self._process(partition, records, tick, commands)
                return
            except Exception:
                log.exception(
                    "delivery of partition %d failed (attempt %d of %d)", partition, attempt, BATCH_ATTEMPTS
                )
                await asyncio.sleep(self.retry_pause_s)
        await self._isolate(partition, records, tick, commands)

    async def _isolate(
        self, partition: int, records: Sequence[SourceRecord], tick: bool, commands: Sequence[dict[str, Any]]
    ) -> None:
        """Run each command, record and due timer of a failing batch alone."""
        for cmd in commands:
            if not await self._attempt_alone(partition, [], False, [cmd]):
                log.error("command %r on partition %d keeps failing; skipped", cmd, partition)
        for rec in records:
            if not await self._attempt_alone(partition, [rec], False, ()):
                await self._dead_letter_unit(rec, None, None, "record")
        if tick:
            for key, timer in list(self.schedule.due(partition, int(time.time() * 1000), TICK_LIMIT)):
                if not await self._attempt_alone(partition, [], False, (), timers=[(key, timer)]):
                    await self._dead_letter_unit(_timer_source(timer), timer, key, "timer")

    async def _attempt_alone(
        self,
        partition: int,
        records: Sequence[SourceRecord],
        tick: bool,
        commands: Sequence[dict[str, Any]],
        timers: list[tuple[bytes, Timer]] | None = None,
    ) -> bool:
        for _ in range(UNIT_ATTEMPTS):
            try:
                await self._process(partition, records, tick, commands, timers)
                return True
            except Exception:
                log.exception("delivery of one unit of partition %d failed", partition)
                await asyncio.sleep(self.retry_pause_s)
        return False

    async def _dead_letter_unit(
        self, rec: SourceRecord, timer: Timer | None, timer_key: bytes | None, what: str
    ) -> None:
        """Dead-letter a record or timer walstream cannot process (its own bug or an input it
        does not handle): the failure is kept, the partition moves on."""
        now_s = time.time()
        doc: Any = timer.entry if timer is not None else None
        if doc is None:
            try:
                doc = orjson.loads(rec.value or b"null")
            except orjson.JSONDecodeError:
                doc = None
        letter = _letter(
            rec,
            doc if isinstance(doc, dict) else None,
            timer.target if timer is not None else None,
            ErrorClass.PERMANENT,
            f"walstream could not process this {what} (a bug; see the worker log)",
            timer.attempt if timer is not None else 0,
            now_s,
        )
        log.error("dead-lettering a %s of %s[%d]@%d that keeps failing", what, rec.topic, rec.partition, rec.offset)
        await self.dead_letters.write([letter])
        try:
            self._index(letter)
            if timer_key is not None:
                await self.flush()
                self.schedule.delete(timer_key)
        except Exception:
            log.exception("dead-letter index update failed; the dead letter itself is written")

    async def _process(
        self,
        partition: int,
        records: Sequence[SourceRecord],
        tick: bool,
        commands: Sequence[dict[str, Any]],
        timers: list[tuple[bytes, Timer]] | None = None,
    ) -> None:
        now_s = time.time()
        out = _Outcome(letters=[], timers_put=set(), docs={}, release_budget=RELEASE_BUDGET)
        for cmd in commands:
            if cmd.get("op") == "cancel":
                self._cancel(partition, str(cmd["ns"]), str(cmd["id"]), cmd.get("partition") == partition, now_s, out)
            elif cmd.get("op") == "redrive":
                self._redrive(str(cmd["ns"]), str(cmd["id"]), str(cmd["target_id"]), now_s, out)
            elif cmd.get("op") == "purge":
                self._purge(partition, str(cmd["ns"]), now_s, out)
            elif cmd.get("op") == "sweep":
                self._sweep(partition, now_s, out)
        items: list[Item] = []
        for rec in records:
            items.extend(self._admit(rec, now_s, out))
        done_timers: list[bytes] = []
        if tick:
            timers = list(self.schedule.due(partition, int(now_s * 1000), TICK_LIMIT))
        for key, timer in timers or ():
            items.extend(self._from_timer(partition, timer, now_s, out))
            done_timers.append(key)

        by_target: dict[str, list[Item]] = defaultdict(list)
        for it in items:
            by_target[it.target_id].append(it)
        for tid in out.chains:  # groups released at admission: their members' runs
            by_target[tid]
        await asyncio.gather(*(self._run_target(partition, tid, its, out) for tid, its in by_target.items()))
        self._count_deliveries(out)
        if items:
            await self.failpoints.hit("deliverer.after_delivery")

        if out.letters:
            await self.dead_letters.write(out.letters)
            for dl in out.letters:
                self._index(dl)
                self.metrics.dead_lettered.labels(
                    _ns(dl), target_type(dl.target) if dl.target else "-", dl.error_class.value
                ).inc()
        now_ms = int(time.time() * 1000)
        for doc in out.docs.values():
            doc["state"] = summarise(doc["targets"], doc["state"])
            doc["updated_ms"] = now_ms
            if doc["state"] == EntryState.DELIVERED:
                doc.pop("last_error", None)  # an entry-level error of before no longer holds
            self.states.put(doc)
        for header in out.groups.values():
            header["updated_ms"] = now_ms
            self.groups.put_header(header)
        for ns_name, ended in out.groups_ended:
            self.metrics.groups_ended.labels(ns_name, ended).inc()
        # Removals come last, once every write above is durable (dead letters are already
        # acknowledged): a timer's or held row's successors (retry timers, released entries,
        # state documents) live in other tables, i.e. other changelog partitions, and a crash
        # can keep any subset of unflushed writes. Removing first could keep the removal and
        # lose its successor (seen: entries answering DELAYED forever after a SIGKILL). In this
        # order a crash at worst runs a timer again, and targets are idempotent.
        deletions = [key for key in done_timers if key not in out.timers_put] + out.removals
        if deletions or out.released or out.unblocked or out.group_removals:
            await self.flush()
            await self.failpoints.hit("deliverer.before_timer_deletes")
            for key in deletions:
                self.schedule.delete(key)
            for held_key in out.released:
                self.order.release(held_key)
            for blocked_key in out.unblocked:
                self.order.unblock_key(blocked_key)
            for group_key in out.group_removals:
                self.groups.delete(group_key)
            await self.failpoints.hit("deliverer.after_timer_deletes")

    def _index(self, dl: DeadLetter) -> None:
        """Add a dead letter to the index; an entry too large for a table row is indexed
        without its payload (it stays in the WAL and dead-letter topics) and cannot be
        redriven."""
        row = _index_row(dl)
        try:
            size = len(orjson.dumps(row))
        except orjson.JSONEncodeError:
            size = self.row_limit_bytes  # cannot be written whole: keep it without the entry
        if size + 1024 > self.row_limit_bytes:
            row["entry"] = None
            row["message"] = shorten(f"{row['message']} [payload not indexed: too large; see the dead-letter topic]")
        self.dlq_index.put(row)

    # -- admission -----------------------------------------------------------------------

    def _admit(self, rec: SourceRecord, now_s: float, out: _Outcome) -> list[Item]:
        doc = None
        try:
            doc = parse_record(rec.value)
            if (cancelled := cancelled_by(doc)) is not None:
                self._cancel_from_peer(rec.partition, *cancelled, now_s, out)
                return []
            entry = Entry.from_doc(doc)
        except EntryDecodeError as exc:
            out.letters.append(_letter(rec, None, None, ErrorClass.UNDECODABLE, str(exc), 0, now_s))
            self._invalid_state(rec, doc, str(exc), out)
            return []
        read_to = (entry.namespace, rec.partition)
        if entry.written_at_us > self._read_to_us.get(read_to, 0):
            self._read_to_us[read_to] = entry.written_at_us
        ns = self.registry.get(entry.namespace)
        if ns is None:
            out.letters.append(
                _letter(
                    rec, doc, None, ErrorClass.NO_NAMESPACE, f"namespace {entry.namespace!r} does not exist", 0, now_s
                )
            )
            return []
        try:
            # Measured as walstream will write it, embedded two levels down: re-encoding can
            # make a record larger than it came (9e15 is written 9000000000000000.0, 4.5 times
            # the bytes), and orjson writes at most 254 levels though it reads 1024.
            encoded = len(orjson.dumps({"embedded": {"entry": doc}}))
        except orjson.JSONEncodeError as exc:
            message = f"entry cannot be stored (delays, retries, dead letters embed it): {exc}"
            out.letters.append(_letter(rec, None, None, ErrorClass.UNDECODABLE, message, 0, now_s))
            return []
        derived = entry.derived_record_bytes(max(len(rec.value or b""), encoded))
        if derived > self.row_limit_bytes:
            # its timer, held row or index row would be refused by Kafka, crashing the worker
            # on every restart: such an entry (from another producer; the write API refuses
            # it with 413) can only be dead-lettered
            message = (
                f"entry too large: its table rows would be up to {derived} bytes; the tables' changelog "
                f"topics accept {self.row_limit_bytes} (max.message.bytes)"
            )
            out.letters.append(_letter(rec, doc, None, ErrorClass.PERMANENT, message, 0, now_s))
            return []
        state = self._state(out, entry, rec)
        if state.get("offset") is None:
            # cancelled before it arrived: record where it is, deliver nothing
            state.update(partition=rec.partition, offset=rec.offset, key=entry.key, written_at_us=entry.written_at_us)
            if entry.group is not None:  # a group is applied or aborted whole: aborted, then
                header = self._group(out, ns, str(entry.group["id"]), rec.partition, entry.written_at_us // 1000)
                state["group"] = entry.group
                if header["released_ms"] is None and header["state"] not in GROUP_ENDED:
                    self._abort_group(rec.partition, header, f"its entry {entry.id!r} was cancelled", out)
            return []
        if (state["partition"], state["offset"]) != (rec.partition, rec.offset):
            if doc.get("digest") and state.get("digest") and doc["digest"] != state["digest"]:
                # the same id for a different entry, written before the write API could know
                # (through another worker, before this record's first copy was consumed): it
                # is not delivered, and not silently either
                message = (
                    f"id {entry.id!r} was already used for a different entry (partition {state['partition']}, "
                    f"offset {state['offset']}); this one was not delivered: write it with a new id"
                )
                out.letters.append(_letter(rec, doc, None, ErrorClass.PERMANENT, message, 0, now_s))
                return []
            log.info(
                "entry %s/%s written again (offset %d); already tracked at offset %d: skipped",
                entry.namespace,
                entry.id,
                rec.offset,
                state["offset"],
            )
            return []
        if state["state"] == EntryState.CANCELLED:
            return []
        if entry.group is not None:
            return self._grouped(rec, entry, doc, ns, out, now_s)
        if entry.due_at_ms is not None and entry.due_at_ms > now_s * 1000:
            self._put_timer(
                Timer(kind="delay", due_ms=entry.due_at_ms, seq=rec.offset, entry=doc, source=_src(rec)), out
            )
            state["state"] = EntryState.DELAYED.value
            return self._forward_early(rec, entry, doc, ns, state)
        return self._expand(rec, entry, doc, ns, out, now_s)

    def _forward_early(
        self, rec: SourceRecord, entry: Entry, doc: dict[str, Any], ns: NamespaceConfig, state: dict[str, Any]
    ) -> list[Item]:
        """A delayed entry goes to its peer regions at once, so that each holds it in its own
        schedule and it is due at the same instant everywhere; its own targets here wait
        (DELAYED) for the delay timer, which expands to them alone (walstream.replication)."""
        try:
            resolved = self._targets_for(ns, entry)
        except Exception:  # a bad override: the delay timer's expansion dead-letters it
            return []
        if not any(cfg["type"] == "region" for cfg, _, _ in resolved):
            return []
        items = []
        for cfg, tid, target in resolved:
            forwarding = cfg["type"] == "region"
            wait = EntryState.PENDING if forwarding else EntryState.DELAYED
            t = state["targets"].setdefault(tid, {"type": target_type(cfg), "state": wait.value, "attempts": 0})
            if forwarding and t["state"] == EntryState.PENDING:
                items.append(Item(entry, doc, ns, rec, cfg, tid, target))
        return items

    def _invalid_state(self, rec: SourceRecord, doc: Any, message: str, out: _Outcome) -> None:
        """A record that is not a valid entry but names one (string ns, id and key): its status
        says DEAD with the reason, instead of "never written" or a stale state."""
        if not isinstance(doc, dict) or not all(isinstance(doc.get(f), str) and doc[f] for f in ("ns", "id", "key")):
            return
        if self.states.get(doc["ns"], doc["id"]) is not None:
            return  # a valid entry of that id exists: this record does not change it
        out.docs[(doc["ns"], doc["id"])] = {
            "id": doc["id"],
            "ns": doc["ns"],
            "key": doc["key"],
            "state": EntryState.DEAD.value,
            "partition": rec.partition,
            "offset": rec.offset,
            "written_at_us": None,
            "due_ms": None,
            "targets": {},
            "last_error": shorten(message),
        }

    def _expand(
        self, rec: SourceRecord, entry: Entry, doc: dict[str, Any], ns: NamespaceConfig, out: _Outcome, now_s: float
    ) -> list[Item]:
        if entry.due_at_ms is not None and entry.due_at_ms > now_s * 1000:
            # not due yet, expanded by a timer of one of its targets (one its namespace no
            # longer has): its own delay timer expands it when due; never early
            return self._forward_early(rec, entry, doc, ns, self._state(out, entry, rec))
        try:
            resolved = self._targets_for(ns, entry)
        except Exception as exc:  # an override that does not validate (another producer's record)
            message = shorten(f"bad target config: {exc}")
            out.letters.append(_letter(rec, doc, None, ErrorClass.PERMANENT, message, 0, now_s))
            self._state(out, entry, rec).update(state=EntryState.DEAD.value, last_error=message)
            return []
        state = self._state(out, entry, rec)
        # the whole entry is being expanded to its targets: a whole-entry placeholder (left by
        # the redrive of an entry dead-lettered before it had targets) is replaced by them
        state["targets"].pop("*", None)
        items = []
        for cfg, tid, target in resolved:
            t = state["targets"].setdefault(
                tid, {"type": target_type(cfg), "state": EntryState.PENDING.value, "attempts": 0}
            )
            if t["state"] in (EntryState.PENDING, EntryState.DELAYED):
                t["state"] = EntryState.PENDING.value
                items.append(Item(entry, doc, ns, rec, cfg, tid, target))
        return items

    def _from_timer(self, partition: int, timer: Timer, now_s: float, out: _Outcome) -> list[Item]:
        topic, part, offset = timer.source
        # the timer carries the parsed entry: no need to encode it only to parse it again
        rec = SourceRecord(topic, part, offset, timer.entry.get("key", "").encode(), None)
        try:
            entry = Entry.from_doc(timer.entry)
        except EntryDecodeError as exc:  # cannot happen for timers we wrote; never drop it anyway
            out.letters.append(_letter(rec, timer.entry, timer.target, ErrorClass.UNDECODABLE, str(exc), 0, now_s))
            return []
        ns = self.registry.get(entry.namespace)
        if ns is None:
            message = f"namespace {entry.namespace!r} does not exist"
            out.letters.append(
                _letter(rec, timer.entry, timer.target, ErrorClass.NO_NAMESPACE, message, timer.attempt, now_s)
            )
            state = self._state(out, entry, rec)
            target_state = state["targets"].get(timer.target_id) if timer.kind == "retry" else None
            if target_state is not None:
                target_state.update(state=EntryState.DEAD.value, last_error=message, next_attempt_ms=None)
            else:
                for t in state["targets"].values():
                    if t["state"] not in FINAL:
                        t.update(state=EntryState.DEAD.value, last_error=message, next_attempt_ms=None)
                state.update(state=EntryState.DEAD.value, last_error=message)
            return []
        state = self._state(out, entry, rec)
        if state["state"] == EntryState.CANCELLED:
            return []
        if timer.kind == "delay":
            return self._expand(rec, entry, timer.entry, ns, out, now_s)
        if state["targets"].get(timer.target_id, {}).get("state") in (EntryState.CANCELLED, EntryState.DELIVERED):
            return []
        if self._removed_target(ns, entry, timer.target_id):
            # The namespace no longer has this target (its config was changed: a fixed url is
            # another target): the entry goes to the namespace's targets as they are now, and
            # the old one is neither retried nor reported any more. Its key moves on.
            state["targets"].pop(timer.target_id, None)
            if self.order.blocker(entry.namespace, timer.target_id, entry.order_key) == entry.id:
                self._release_key(partition, ns, timer.target_id, entry.order_key, now_s, out)
            return self._expand(rec, entry, timer.entry, ns, out, now_s)
        assert timer.target is not None
        try:
            target = self.targets.get(timer.target)
        except Exception as exc:
            out.letters.append(
                _letter(
                    rec,
                    timer.entry,
                    timer.target,
                    ErrorClass.PERMANENT,
                    f"bad target config: {exc}",
                    timer.attempt,
                    now_s,
                )
            )
            return []
        item = Item(
            entry,
            timer.entry,
            ns,
            rec,
            timer.target,
            timer.target_id,
            target,
            attempt=timer.attempt,
            first_failure_s=timer.first_failure_s,
            redrive=timer.redrive,
            paced=timer.paced,
        )
        blocker = self.order.blocker(entry.namespace, timer.target_id, entry.order_key)
        item.is_blocker = (not item.ordered) or blocker in (None, entry.id)
        return [item]

    def _removed_target(self, ns: NamespaceConfig, entry: Entry, target_id: str) -> bool:
        """The entry follows its namespace's targets (no override of its own), and this target
        is no longer one of them."""
        if entry.targets is not None:
            return False
        return target_id not in {tid for _, tid, _ in self._targets_for(ns, entry)}

    def _forget_targets(self, cfg: NamespaceConfig | None, name: str) -> None:
        for cache_key in [k for k in self._ns_targets if k[0] == name]:
            del self._ns_targets[cache_key]

    def _targets_for(self, ns: NamespaceConfig, entry: Entry) -> list[tuple[dict[str, Any], str, Target]]:
        """The targets of an entry: its override, else its namespace's (resolved once per
        namespace version: this runs for every entry)."""
        if entry.targets is not None:
            # named by the entry itself (a write's allowed override, an index repair): applied
            # here only, never forwarded (walstream.replication)
            return [(cfg, make_target_id(cfg), self.targets.get(cfg)) for cfg in entry.targets]
        region = self.targets.settings.region
        # forwarded only from the region it was written in: a forwarded entry never goes back
        forward = entry.origin is not None and entry.origin == region
        cache_key = (ns.name, ns.version, forward)
        resolved = self._ns_targets.get(cache_key)
        if resolved is None:
            resolved = []
            configs: list[Any] = [*ns.targets_in(region)]
            if forward:
                configs += [RegionTargetConfig(type="region", region=peer, namespace=ns.name)
                            for peer in ns.peers_of(region)]
            for t in configs:
                cfg = t.model_dump(mode="json")
                resolved.append((cfg, make_target_id(cfg), self.targets.get(t)))
            self._ns_targets[cache_key] = resolved
        return resolved

    # -- one target ------------------------------------------------------------------------

    async def _run_target(self, partition: int, tid: str, items: list[Item], out: _Outcome) -> None:
        """Apply ``items`` (all for target ``tid``) and the runs of group members released
        for it at admission, honouring key order, retries and the breaker."""
        released = out.chains.pop(tid, [])
        first = items[0] if items else released[0][0]
        breaker = self.breakers.get(first.target_id, first.target.label)
        pacing = self._pacing_of(first)
        # Whether a key's entries may share a call (the target applies them as if one after
        # the other: KeyRuns). Not for a group's members, whose failure must stop the rest
        # before they are sent, nor for a paced target, whose sends each take a slot.
        runs = first.target.key_runs is not KeyRuns.ONE_PER_CALL and pacing is None

        def one_per_wave(it: Item) -> bool:
            return it.ordered and (not runs or it.entry.group is not None)

        blocked: set[tuple[str, str]] = set()  # keys that became blocked during this call
        resent: set[int] = set()  # items sent again after the target did not send them
        waves: list[list[Item]] = [[]]

        def put(k: int, it: Item) -> None:
            while len(waves) <= k:
                waves.append([])
            waves[k].append(it)

        for run in released:  # one per wave, in seq order, like the runs _release makes
            for j, it in enumerate(run):
                put(j if one_per_wave(it) else 0, it)
        wave_of: dict[tuple[str, str], int] = {}
        for it in items:
            if it.ordered and not it.is_blocker:
                if it.order_key in blocked or self.order.blocker(it.entry.namespace, it.target_id, it.entry.order_key):
                    self._hold(it, out)
                    continue
            if one_per_wave(it):
                # one entry per key per wave: a later entry of a key goes out only after the
                # earlier one succeeded
                w = wave_of.get(it.order_key, -1) + 1
                wave_of[it.order_key] = w
                put(w, it)
            else:
                put(0, it)

        w = 0
        while w < len(waves):
            pending = []
            for it in waves[w]:
                failed = self._failed_group(it, out)
                if failed is not None:
                    self._group_letter(it, failed, out, time.time())
                elif it.ordered and it.order_key in blocked:
                    self._hold(it, out)
                else:
                    pending.append(it)
            w += 1
            if pending and pacing is not None:
                pending = self._pace(pending, pacing, blocked, out)
            if not pending:
                continue
            started_s = time.time()
            outcomes = await self._call(breaker, pending)
            if pacing is not None:
                overloaded = any(isinstance(o, TransientError) for o in outcomes)
                self.pacer.feedback(first.target_id, pacing, overloaded=overloaded, took_s=time.time() - started_s)
            now_s = time.time()
            for it, err in zip(pending, outcomes, strict=True):
                if isinstance(err, NotSent) and not (it.ordered and it.order_key in blocked):
                    # never sent (an earlier entry of its call failed first), and nothing of
                    # its key waits: again in the next wave, no attempt spent; a second time
                    # in one batch, it waits for the scheduler (still no attempt spent)
                    if id(it) not in resent:
                        resent.add(id(it))
                        put(w, it)
                    else:
                        self._retry_later(it, int(now_s * 1000), it.attempt, err, out)
                        if it.ordered:
                            blocked.add(it.order_key)
                    continue
                if it.ordered and it.order_key in blocked:
                    # an earlier entry of its key in this call failed, and the key now waits
                    # for that one: a later one waits behind it (no attempt spent: with
                    # KeyRuns.IN_ORDER it was not even sent). One the target applied all the
                    # same (it broke that promise) is recorded delivered, not sent again, and
                    # releases nothing.
                    if err is None:
                        self._settle(partition, it, None, breaker, now_s, out, release=False)
                    else:
                        self._hold(it, out)
                    continue
                became_blocked = self._settle(partition, it, err, breaker, now_s, out)
                if became_blocked:
                    blocked.add(it.order_key)
            # held entries released by this wave's blockers: in the next wave (a key's runs)
            # or one per later wave, in order
            for run in out.chains.pop(first.target_id, []):
                for j, it in enumerate(run):
                    put(w + j if one_per_wave(it) else w, it)

    def _pacing_of(self, it: Item) -> PacingConfig | None:
        """The pacing of ``it``'s target (None: not paced), parsed once per target id."""
        if it.target_id not in self._pacing:
            given = it.target_cfg.get("pacing")
            self._pacing[it.target_id] = None if given is None else PacingConfig.model_validate(given)
        return self._pacing[it.target_id]

    def _pace(
        self, items: list[Item], pacing: PacingConfig, blocked: set[tuple[str, str]], out: _Outcome
    ) -> list[Item]:
        """The items of a wave that may go now; the others wait for their send slot as paced
        timers (no attempt spent; a key of an ordered namespace waits with them)."""
        now_s = time.time()
        tid = items[0].target_id
        fresh = [it for it in items if not it.paced]
        slots = iter(self.pacer.slots(tid, pacing, len(fresh), now_s))
        due_now = [it for it in items if it.paced]  # their slot was taken when they were scheduled
        later: list[Item] = []
        later_slots: list[float] = []
        for it in fresh:
            slot_s = next(slots, None)
            if slot_s is not None and slot_s <= now_s + TOLERANCE_S:
                due_now.append(it)
            else:
                later.append(it)
                if slot_s is not None:
                    later_slots.append(slot_s)
        self._defer_to(later, later_slots, now_s, blocked, out)
        # Every send takes a token: slots that came due together (the scheduler late) still
        # go at the rate. Those without one take new slots at the end of the schedule (not
        # the next free instants: those belong to entries already waiting, which would then
        # find no token in turn). Leaving their timers in place for the next tick instead
        # re-read and re-wrote every such entry's state each tick: under a backlog the worker
        # spent itself on that (20,000 at 500/s took 192 s instead of 48).
        allowed = self.pacer.take(tid, pacing, len(due_now), now_s)
        rest = due_now[allowed:]
        if rest:
            step_s = 1.0 / self.pacer.rate(tid, pacing)
            self._defer_to(rest, self.pacer.slots(tid, pacing, len(rest), now_s + step_s), now_s, blocked, out)
        send = due_now[:allowed]
        for it in send:
            it.paced = False
        return send

    def _defer_to(
        self, items: list[Item], slots: list[float], now_s: float, blocked: set[tuple[str, str]], out: _Outcome
    ) -> None:
        """``items`` wait for their send slots (paced timers; see :meth:`_pace`), in order; those
        beyond the slots given (an adaptive lane's horizon) try again then, unreserved."""
        for n, it in enumerate(items):
            reserved = n < len(slots)
            when_s = slots[n] if reserved else now_s + ADAPTIVE_HORIZON_S
            self._retry_later(it, math.ceil(when_s * 1000), it.attempt, None, out, paced=True, reserved=reserved)
            if it.ordered:
                blocked.add(it.order_key)

    async def close(self) -> None:
        """Cancel target calls still running in the background (a stopping worker)."""
        calls = self.__dict__.get("_target_calls")
        if calls is not None:
            await calls.close()

    @functools.cached_property
    def _target_calls(self) -> TargetCalls:
        s = self.targets.settings
        return TargetCalls(wait_s=s.target_wait_s, timeout_s=s.target_call_timeout_s)

    async def _call(self, breaker: Breaker, items: list[Item]) -> list[TargetError | None]:
        """One bounded call to the target (:mod:`walstream.delivery.target_calls`), or a
        refusal by its open or stalled breaker (no attempt spent).

        Items whose outcome arrived from an earlier call the agent stopped waiting for take
        that outcome instead of a new call. A call still running after ``target_wait_s``
        leaves its items waiting for it (retried without spending an attempt). While the
        breaker is open, items that failed because the target is down wait for it without
        spending an attempt: a down target is not the entry's fault, and the entry must
        survive an outage of any length."""
        calls = self._target_calls
        outcomes: list[TargetError | None] = []
        fresh: list[int] = []  # items that need a call
        for i, it in enumerate(items):
            found, outcome = calls.take(_call_key(it))
            outcomes.append(outcome)
            if not found:
                fresh.append(i)
        if fresh:
            result: list[TargetError | None]
            if not breaker.allows():
                result = [_BreakerOpen(breaker)] * len(fresh)
            else:
                target = items[fresh[0]].target
                answered = await calls.call(
                    breaker, target, [items[i].entry for i in fresh], [_call_key(items[i]) for i in fresh]
                )
                if answered is None:
                    waiting = f"waiting for a call to {target.label} that is still running"
                    result = [_BreakerOpen(breaker, message=waiting)] * len(fresh)
                else:
                    result = answered
            for i, outcome in zip(fresh, result, strict=True):
                outcomes[i] = outcome
        if breaker.is_open:
            outcomes = [_waits_for(breaker, o) for o in outcomes]
        return outcomes

    def _settle(
        self, partition: int, it: Item, err: TargetError | None, breaker: Breaker, now_s: float, out: _Outcome,
        *, release: bool = True,
    ) -> bool:
        """Record the outcome of one item. Returns True when its key is now blocked.
        ``release=False``: its key stays blocked by another entry, so a delivered blocker
        releases no held entries."""
        ns_name = it.entry.namespace
        label = target_type(it.target_cfg)
        t = self._target_state(out, it)
        if it.target_cfg["type"] == "region":
            # waits unless forwarded now, or dead-lettered below (a permanent error, or out of attempts)
            waits = err is not None and (isinstance(err, TargetDownError) or (
                isinstance(err, TransientError) and it.attempt + 1 < it.policy.max_attempts))
            self.metrics.replication.observe(
                ns_name, it.target_cfg["region"], it.entry.id, it.entry.written_at_us, waits, now_s)
        if err is None:
            # a delivered target has no error: an earlier failure's text would read as current
            t.update(state=EntryState.DELIVERED.value, next_attempt_ms=None, held_behind=None, last_error=None)
            if it.redrive:
                self.dlq_index.delete(ns_name, it.entry.id, it.target_id)
            # counted per batch (_count_deliveries): a labelled metric per entry cost ~5 µs
            delayed = it.entry.due_at_ms is not None  # lateness after the due time, else latency
            out.lags.setdefault((ns_name, label, delayed), []).append(max(0.0, now_s - _ready_at_s(it.entry)))
            if it.entry.group is not None:
                self._group_progress(it, out)
            if not release:
                return True
            if self._blocks_its_key(it):
                return self._release(partition, it, breaker, now_s, out)
            return False
        if isinstance(err, TargetDownError):
            # The target is down (or its circuit open): not the entry's fault. It waits without
            # spending an attempt, so an outage of any length dead-letters nothing, whatever
            # max_attempts (with max_attempts below the breaker's threshold, the calls before
            # the circuit opened dead-lettered entries of a target that was merely down).
            # never sooner than the target asked (Retry-After), circuit open or not
            due_s = max(breaker.retry_at_s(now_s), now_s + (err.retry_after_s or 0.0))
            if not isinstance(err, _BreakerOpen):
                due_s = max(due_s, now_s + backoff_ms(it.policy, max(1, breaker.consecutive_failures)) / 1000)
            self._retry_later(it, int(due_s * 1000), it.attempt, err, out)
            return it.ordered
        self.metrics.delivery_failures.labels(ns_name, label, err.error_class.value).inc()
        attempt = it.attempt + 1
        first = it.first_failure_s or now_s
        if isinstance(err, TransientError) and attempt < it.policy.max_attempts:
            it.first_failure_s = first
            # no sooner than the target asked (Retry-After)
            wait_ms = max(backoff_ms(it.policy, attempt), int((err.retry_after_s or 0.0) * 1000))
            self._retry_later(it, int(now_s * 1000) + wait_ms, attempt, err, out)
            return it.ordered
        out.letters.append(
            _letter(it.source, it.doc, it.target_cfg, err.error_class, err.message, attempt, first, now_s)
        )
        t.update(state=EntryState.DEAD.value, attempts=attempt, last_error=err.message, next_attempt_ms=None)
        if it.entry.group is not None:
            self._fail_group(partition, it, err.message, out, now_s)
            return False
        if self._blocks_its_key(it):
            return self._release(partition, it, breaker, now_s, out)
        return False

    def _count_deliveries(self, out: _Outcome) -> None:
        for (ns_name, label, delayed), lags in out.lags.items():
            self.metrics.delivered.labels(ns_name, label).inc(len(lags))
            family = self.metrics.delay_lateness if delayed else self.metrics.delivery_latency
            histogram = family.labels(ns_name, label)
            for lag in lags:
                histogram.observe(lag)
        out.lags.clear()

    def _blocks_its_key(self, it: Item) -> bool:
        """Whether entries of ``it``'s key wait for it at its target. Under ``ordering: key``
        a blocker does; and when the namespace changed to ``none`` while entries were held,
        the one its key still names must release them (they would wait for good)."""
        if not it.is_blocker:
            return False
        if it.ordered:
            return True
        return self.order.blocker(it.entry.namespace, it.target_id, it.entry.order_key) == it.entry.id

    def _put_timer(self, timer: Timer, out: _Outcome) -> None:
        self.schedule.put(timer)
        out.timers_put.add(timer.key)

    def _retry_later(
        self, it: Item, due_ms: int, attempt: int, err: TargetError | None, out: _Outcome, *, paced: bool = False,
        reserved: bool = True,
    ) -> None:
        """Schedule ``it`` for ``due_ms`` as attempt ``attempt`` (RETRYING; ``paced``: waiting
        for its send slot, PENDING, and ``reserved``: the slot is its own, else it takes one
        then); with per-key order its key waits for it."""
        self._target_state(out, it).update(
            state=(EntryState.PENDING if paced else EntryState.RETRYING).value,
            attempts=attempt,
            last_error=err.message if err else None,
            next_attempt_ms=due_ms,
            held_behind=None,
        )
        self._put_timer(
            Timer(
                kind="retry",
                due_ms=due_ms,
                seq=it.seq,
                entry=it.doc,
                target=it.target_cfg,
                target_id=it.target_id,
                attempt=attempt,
                first_failure_s=it.first_failure_s,
                last_error=err.message if err else None,
                error_class=err.error_class.value if err else None,
                source=_src(it.source),
                redrive=it.redrive,
                paced=paced and reserved,
            ),
            out,
        )
        if it.ordered:
            self.order.block(it.entry.namespace, it.target_id, it.entry.order_key, it.entry.id)

    def _hold(self, it: Item, out: _Outcome) -> None:
        blocker = self.order.blocker(it.entry.namespace, it.target_id, it.entry.order_key)
        self._target_state(out, it).update(state=EntryState.PENDING.value, held_behind=blocker)
        if it.held_key is not None:
            # released in this batch, and its key blocked again before its turn: it stays held
            out.released.discard(it.held_key)
            return
        self.order.hold(
            it.entry.namespace,
            it.target_id,
            it.entry.order_key,
            it.seq,
            {"entry": it.doc, "target": it.target_cfg, "source": _src(it.source)},
        )

    def _release(self, partition: int, blocker: Item, breaker: Breaker, now_s: float, out: _Outcome) -> bool:
        """The blocker of a key is done. Returns True when the key stays blocked.

        Its held entries (up to :data:`RELEASE_RUN`, within the batch's budget) are applied
        in this batch: the target's wave loop sends them one per wave, in write order. Only
        the run's last entry is a blocker, so only its success releases the next run; one
        that fails blocks the key again, and the run's later entries stay held (their rows
        are kept). Held rows are removed only once the batch's writes are durable. Beyond
        the budget, the next held entry becomes a retry timer due now (the scheduler's path).
        """
        key = blocker.entry.order_key
        if out.release_budget > 0:
            run: list[Item] = []
            for held_key, held in self.order.held_for(partition, blocker.ns.name, blocker.target_id, key):
                if held_key in out.released:
                    continue
                run.append(self._held_item(blocker.ns, blocker.target_id, key, held, held_key))
                out.released.add(held_key)
                if len(run) >= min(RELEASE_RUN, out.release_budget):
                    break
            if run:
                out.release_budget -= len(run)
                for it in run[:-1]:
                    it.is_blocker = False
                out.chains.setdefault(blocker.target_id, []).append(run)
                return False  # the run is applied in this batch's next waves
        return self._release_key(partition, blocker.ns, blocker.target_id, key, now_s, out)

    def _held_item(self, ns: NamespaceConfig, tid: str, key: str, held: dict[str, Any], held_key: bytes) -> Item:
        topic, part, offset = held["source"]
        rec = SourceRecord(topic, part, offset, key.encode(), None)
        target = self.targets.get(held["target"])
        return Item(Entry.from_doc(held["entry"]), held["entry"], ns, rec, held["target"], tid, target,
                    is_blocker=True, held_key=held_key)

    def _release_key(
        self, partition: int, ns: NamespaceConfig, tid: str, key: str, now_s: float, out: _Outcome
    ) -> bool:
        """The first held entry of ``key`` at target ``tid`` takes the blocker's place, due
        now; with none held the key is unblocked. Returns True when the key stays blocked."""
        for held_key, held in self.order.held_for(partition, ns.name, tid, key):
            if held_key in out.released:
                continue  # already released in this batch; its row goes once that is durable
            nxt = self._held_item(ns, tid, key, held, held_key)
            nxt.held_key = None  # a timer now: its row goes once the timer is durable
            self._retry_later(nxt, int(now_s * 1000), 0, None, out)  # the key now waits for it
            # (also after a change to ordering: none, so that it releases the rest in turn)
            self.order.block(ns.name, tid, key, nxt.entry.id)
            out.released.add(held_key)
            return True
        self.order.unblock(ns.name, tid, key)
        return False

    # -- mutation groups -------------------------------------------------------------------

    def _group(self, out: _Outcome, ns: NamespaceConfig, gid: str, partition: int, first_ms: int) -> dict[str, Any]:
        """The group's header, loaded once per batch (created on its first record)."""
        k = (ns.name, gid)
        header = out.groups.get(k)
        if header is None:
            header = self.groups.header(ns.name, gid) or {
                "ns": ns.name,
                "id": gid,
                "state": GroupState.PENDING.value,
                "partition": partition,
                "size": None,
                # how many distinct members are staged: a hint, checked against the rows
                # before the group is released (a crash can keep a header without its rows)
                "count": 0,
                "first_ms": first_ms,
                "deadline_ms": first_ms + ns.group_timeout_s * 1000,
                "commit_ts": None,
                "marker": None,
                "released_ms": None,
                "targets": {},
                "error": None,
            }
            out.groups[k] = header
        return header

    def _grouped(
        self, rec: SourceRecord, entry: Entry, doc: dict[str, Any], ns: NamespaceConfig, out: _Outcome, now_s: float
    ) -> list[Item]:
        """A member or commit marker of a mutation group: staged until the group is complete,
        then every member goes to every target in seq order (see :meth:`_release_group`)."""
        assert entry.group is not None
        gid = str(entry.group["id"])
        header = self._group(out, ns, gid, rec.partition, entry.written_at_us // 1000)
        state = self._state(out, entry, rec)
        seen_before = state.get("group") is not None  # this record was admitted before (a crash)
        state["group"] = entry.group
        seq = entry.group_seq
        what = "commit marker" if seq is None else f"member (seq {seq})"
        if header["state"] == GroupState.ABORTED:
            state.update(state=EntryState.CANCELLED.value,
                         last_error=shorten(f"{header['error']}; this {what} came after that and is not applied"))
            return []
        released = header["released_ms"] is not None or header["state"] == GroupState.DEAD_LETTERED
        if seq is not None:
            staged = self.groups.member(ns.name, gid, seq)
            # A crash keeps any subset of a batch's table writes: the header may lack members
            # whose rows were kept. It counts the records up to ``counted_to`` (offsets of the
            # group's one WAL partition), so a record read again is counted exactly once.
            uncounted = rec.offset > header.get("counted_to", -1)
            if staged is not None and staged["entry"]["id"] == entry.id:
                # the same record read again after a crash: staged already; a release it made
                # may have been lost with that crash (rows still here), so look again
                if uncounted:
                    header.update(count=header["count"] + 1, counted_to=rec.offset)
                return self._maybe_release(rec.partition, ns, header, out, now_s)
            if staged is None and seen_before and released:
                return []  # read again after a crash; released with its group since (its row with it)
            if staged is not None or released:
                why = (f"seq {seq} of group {gid!r} is already entry {staged['entry']['id']!r}" if staged is not None
                       else f"group {gid!r} was already released to its targets")
                message = f"{why}; this entry was not applied (write each member of a group once, before its marker)"
                self._group_entry_dead(rec, doc, state, message, out, now_s)
                return []
            self.groups.put_member(ns.name, gid, seq, {"entry": doc, "source": _src(rec)})
            if uncounted:
                header.update(count=header["count"] + 1, counted_to=rec.offset)
        else:
            size = int(entry.group["size"])
            if header["size"] is not None and header["size"] != size:
                message = (f"group {gid!r} was committed with size {header['size']} by entry {header['marker']!r}; "
                           f"this marker says {size} and was not applied")
                self._group_entry_dead(rec, doc, state, message, out, now_s)
                return []
            if header["size"] is None:
                header.update(size=size, commit_ts=entry.written_at_us, marker=entry.id,
                              state=GroupState.COMMITTED.value)
            elif entry.id != header["marker"] and entry.id not in header.setdefault("markers", []):
                header["markers"].append(entry.id)  # a marker repeated under another id follows the group too
            if released:
                # a marker repeated, or read again after a crash that may have lost the release
                dead = header["state"] == GroupState.DEAD_LETTERED
                state["state"] = (EntryState.DEAD if dead else EntryState.DELIVERED).value
        return self._maybe_release(rec.partition, ns, header, out, now_s)

    def _group_entry_dead(
        self, rec: SourceRecord, doc: dict[str, Any], state: dict[str, Any], message: str, out: _Outcome, now_s: float
    ) -> None:
        out.letters.append(_letter(rec, doc, None, ErrorClass.PERMANENT, message, 0, now_s))
        state.update(state=EntryState.DEAD.value, last_error=shorten(message))

    def _maybe_release(
        self, partition: int, ns: NamespaceConfig, header: dict[str, Any], out: _Outcome, now_s: float
    ) -> list[Item]:
        """Release the group if its marker and every member are here (checked on the rows);
        a member beyond the marker's size dead-letters the group."""
        size = header["size"]
        if size is None or header["count"] < size or (ns.name, header["id"]) in out.groups_released:
            return []
        seqs = list(self.groups.seqs(partition, ns.name, header["id"]))
        if not seqs:
            return []  # released before (its rows are removed once that is durable)
        if seqs[-1] >= size:
            message = (f"group {header['id']!r} was committed with size {size} but has a member with seq {seqs[-1]} "
                       "(seq counts from 0); none of it was applied")
            header.update(state=GroupState.DEAD_LETTERED.value, error=message)
            out.groups_ended.append((ns.name, GroupState.DEAD_LETTERED.value))
            out.groups_released.add((ns.name, header["id"]))
            for key, _, row in self.groups.members(partition, ns.name, header["id"]):
                entry = Entry.from_doc(row["entry"])
                rec = _row_source(row)
                self._group_entry_dead(rec, row["entry"], self._state(out, entry, rec), message, out, now_s)
                out.group_removals.append(key)
            self._mark_marker(out, header, EntryState.DEAD, message)
            return []
        header["count"] = len(seqs)
        if len(seqs) == size:
            self._release_group(partition, ns, header, out, now_s)
        return []

    def _release_group(
        self, partition: int, ns: NamespaceConfig, header: dict[str, Any], out: _Outcome, now_s: float
    ) -> None:
        """Every member to every target of the namespace, in seq order: the first
        :data:`RELEASE_RUN` in this batch (one per wave), the rest held behind the run's last
        and released as it completes (the path of held entries). A member is written at the
        marker's write time plus ``seq`` µs (the accepting worker's clock skips past the group:
        walstream.requests), so seq order is also the order last writer wins sees and every
        write acknowledged before the marker is older: the group lands as one write made when
        it was committed. Members
        are read from their rows one at a time, once per target: a large group costs a run's
        worth of memory, not the group's."""
        gid = str(header["id"])
        header["released_ms"] = int(now_s * 1000)
        out.groups_released.add((ns.name, gid))  # its rows stay until the batch is durable
        _, _, first = next(self.groups.members(partition, ns.name, gid))
        probe = Entry.from_doc(first["entry"])
        resolved = self._targets_for(ns, probe)
        header["targets"] = {tid: GroupState.COMMITTED.value for _, tid, _ in resolved}
        self._mark_marker(out, header, EntryState.DELIVERED, None)
        out.group_removals.extend(member_key(ns.name, gid, seq) for seq in self.groups.seqs(partition, ns.name, gid))
        for cfg, tid, target in resolved:
            self._restart_group_at(partition, ns, tid, probe.order_key)
            run: list[Item] = []
            queue_rest = False
            for _, seq, row in self.groups.members(partition, ns.name, gid):
                doc = {**row["entry"], "ts": int(header["commit_ts"]) + seq}
                entry = Entry.from_doc(doc)
                rec = _row_source(row)
                t = self._state(out, entry, rec)["targets"].setdefault(
                    tid, {"type": target_type(cfg), "state": EntryState.PENDING.value, "attempts": 0}
                )
                if t["state"] in FINAL:
                    continue  # applied by a release repeated after a crash
                if t.get("next_attempt_ms") is not None:  # its retry, left by that release: sent from here
                    self.schedule.delete(Timer(kind="retry", due_ms=t["next_attempt_ms"], seq=seq,
                                               entry={"ns": ns.name, "id": entry.id}, target_id=tid).key)
                t.update(state=EntryState.PENDING.value, next_attempt_ms=None, held_behind=None)
                it = Item(entry, doc, ns, rec, cfg, tid, target)
                if not queue_rest and len(run) < RELEASE_RUN:
                    run.append(it)
                    continue
                if not queue_rest:  # the run is full: the rest wait for its last
                    self.order.block(ns.name, tid, probe.order_key, run[-1].entry.id)
                    queue_rest = True
                self._hold(it, out)
            if run:
                for it in run[:-1]:
                    it.is_blocker = False
                run[-1].is_blocker = True
                out.chains.setdefault(tid, []).append(run)

    def _restart_group_at(self, partition: int, ns: NamespaceConfig, tid: str, order_key: str) -> None:
        """Drop what an earlier release of this group left at target ``tid`` (its blocked key
        and held rows): a release made again after a crash starts over there from the first
        member not applied. Its rows stay until this release is durable, so a crash here
        only makes it again."""
        self.order.unblock(ns.name, tid, order_key)
        for held_key, _ in list(self.order.held_for(partition, ns.name, tid, order_key)):
            self.order.release(held_key)

    def _mark_marker(self, out: _Outcome, header: dict[str, Any], state: EntryState, error: str | None) -> None:
        """The commit markers' own states follow their group's (they go to no target)."""
        for marker in ([header["marker"]] if header["marker"] else []) + header.get("markers", []):
            k = (header["ns"], marker)
            doc = out.docs.get(k) or self.states.get(*k)
            if doc is not None:
                doc.update(state=state.value, last_error=shorten(error) if error else None)
                out.docs[k] = doc

    def _group_of(self, out: _Outcome, it: Item) -> dict[str, Any] | None:
        assert it.entry.group is not None
        k = (it.entry.namespace, str(it.entry.group["id"]))
        header = out.groups.get(k) or self.groups.header(*k)
        if header is not None:
            out.groups[k] = header
        return header

    def _group_progress(self, it: Item, out: _Outcome) -> None:
        """A member was applied at its target: the group is APPLIED there once its last
        member is (members go in seq order), and APPLIED once it is at every target."""
        header = self._group_of(out, it)
        if header is None or header["size"] is None or it.entry.group_seq != header["size"] - 1:
            return
        if header["targets"].get(it.target_id) == GroupState.COMMITTED:
            header["targets"][it.target_id] = GroupState.APPLIED.value
        if header["state"] == GroupState.COMMITTED and all(
            v == GroupState.APPLIED for v in header["targets"].values()
        ):
            header.update(state=GroupState.APPLIED.value, applied_ms=int(time.time() * 1000))
            out.groups_ended.append((header["ns"], GroupState.APPLIED.value))

    def _fail_group(self, partition: int, it: Item, why: str, out: _Outcome, now_s: float) -> None:
        """A member is dead-lettered at its target: so is the rest of its group there (the
        members held behind it now, those still in this batch's waves as they come up)."""
        assert it.entry.group is not None
        gid = str(it.entry.group["id"])
        message = shorten(f"group {gid!r} failed at member seq {it.entry.group_seq} ({it.entry.id!r}): {why}; "
                          "the group's later members were not applied to this target")
        out.failed_groups[(it.entry.namespace, it.target_id, gid)] = message
        for held_key, held in list(self.order.held_for(partition, it.ns.name, it.target_id, it.entry.order_key)):
            if held_key in out.released:
                continue  # in this batch's waves: dead-lettered there
            out.released.add(held_key)
            self._group_letter(self._held_item(it.ns, it.target_id, it.entry.order_key, held, held_key),
                               message, out, now_s)
        self.order.unblock(it.ns.name, it.target_id, it.entry.order_key)
        header = self._group_of(out, it)
        if header is not None:
            header["targets"][it.target_id] = GroupState.DEAD_LETTERED.value
            if header["state"] != GroupState.DEAD_LETTERED:
                out.groups_ended.append((header["ns"], GroupState.DEAD_LETTERED.value))
            header.update(state=GroupState.DEAD_LETTERED.value, error=header["error"] or message)
            self._mark_marker(out, header, EntryState.DEAD, header["error"])

    def _failed_group(self, it: Item, out: _Outcome) -> str | None:
        if it.entry.group is None or not out.failed_groups:
            return None
        return out.failed_groups.get((it.entry.namespace, it.target_id, str(it.entry.group["id"])))

    def _group_letter(self, it: Item, message: str, out: _Outcome, now_s: float) -> None:
        out.letters.append(_letter(it.source, it.doc, it.target_cfg, ErrorClass.PERMANENT, message, it.attempt, now_s))
        self._target_state(out, it).update(
            state=EntryState.DEAD.value, last_error=message, next_attempt_ms=None, held_behind=None
        )

    def _sweep_groups(self, partition: int, now_s: float, out: _Outcome) -> None:
        """Abort the groups of ``partition`` not released by their deadline (none of their
        members is applied), and forget ended groups past the retention. A group is aborted
        only once its namespace's partition is consumed past the deadline (a record written
        after it was read, or nothing is left to read): a marker still in a backlog counts."""
        now_ms = int(now_s * 1000)
        for header in list(self.groups.headers(partition)):
            k = (header["ns"], header["id"])
            if header["released_ms"] is None and header["state"] in (GroupState.PENDING, GroupState.COMMITTED):
                deadline_ms = header["deadline_ms"]
                if now_ms < deadline_ms:
                    continue
                read_to_ms = self._read_to_us.get((header["ns"], partition), 0) // 1000
                if read_to_ms < deadline_ms and not self.caught_up(header["ns"], partition):
                    continue
                header = out.groups.get(k) or header
                out.groups[k] = header
                timeout_s = (deadline_ms - header["first_ms"]) // 1000
                reason = ("no commit marker" if header["size"] is None
                          else f"{header['size'] - header['count']} of its {header['size']} members missing")
                self._abort_group(partition, header, f"{reason} {timeout_s} s after its first record", out)
            elif k not in out.groups and header["state"] in GROUP_ENDED and (
                now_ms - header.get("updated_ms", now_ms) > self.states.retention_ms
            ):
                out.group_removals.append(header_key(*k))

    def _abort_group(self, partition: int, header: dict[str, Any], why: str, out: _Outcome) -> None:
        """ABORTED: none of the group is applied; its staged members and markers CANCELLED."""
        message = f"group {header['id']!r} aborted: {why}; none of it was applied"
        header.update(state=GroupState.ABORTED.value, error=message)
        out.groups_ended.append((header["ns"], GroupState.ABORTED.value))
        for key, _, row in list(self.groups.members(partition, header["ns"], header["id"])):
            entry = Entry.from_doc(row["entry"])
            self._state(out, entry, _row_source(row)).update(
                state=EntryState.CANCELLED.value, last_error=shorten(message)
            )
            out.group_removals.append(key)
        self._mark_marker(out, header, EntryState.CANCELLED, message)

    # -- entry state -------------------------------------------------------------------------

    def _state(self, out: _Outcome, entry: Entry, rec: SourceRecord) -> dict[str, Any]:
        """The entry's state document, loaded once per batch (created on first sight)."""
        k = (entry.namespace, entry.id)
        doc = out.docs.get(k)
        if doc is None:
            doc = self.states.get(entry.namespace, entry.id) or {
                "id": entry.id,
                "ns": entry.namespace,
                "key": entry.key,
                "state": EntryState.PENDING.value,
                "partition": rec.partition,
                "offset": rec.offset,
                "written_at_us": entry.written_at_us,
                "due_ms": entry.due_at_ms,
                "targets": {},
                # the write request's digest: a later write of this id must ask for the same entry
                "digest": entry.digest,
                # the region it was written in (walstream.replication)
                "origin": entry.origin,
            }
            out.docs[k] = doc
        return doc

    def _target_state(self, out: _Outcome, it: Item) -> dict[str, Any]:
        doc = self._state(out, it.entry, it.source)
        t: dict[str, Any] = doc["targets"].setdefault(
            it.target_id, {"type": target_type(it.target_cfg), "state": EntryState.PENDING.value, "attempts": 0}
        )
        return t

    def _cancel_from_peer(self, partition: int, ns_name: str, entry_id: str, now_s: float, out: _Outcome) -> None:
        """A peer region's cancellation (walstream.replication), read in the partition the
        entry's key maps to. The peer cancelled it while it waited for its due time; here it
        is cancelled likewise, or in advance if it has not arrived. If it is due and being
        delivered here already (the cancellation crossed its due time), it is left alone."""
        doc = out.docs.get((ns_name, entry_id)) or self.states.get(ns_name, entry_id)
        due_ms = None if doc is None else doc.get("due_ms")
        if doc is not None and doc.get("offset") is not None and not (due_ms is not None and due_ms > now_s * 1000):
            log.info("cancellation of %s/%s from another region came when it was due here (%s): not applied",
                     ns_name, entry_id, doc["state"])
            return
        self._cancel(partition, ns_name, entry_id, True, now_s, out)

    def _cancel(self, partition: int, ns_name: str, entry_id: str, home: bool, now_s: float, out: _Outcome) -> None:
        """Cancel what of an entry is not delivered yet. ``home``: this is the partition the
        entry's key maps to, where a not-yet-seen entry is marked cancelled in advance."""
        doc = out.docs.get((ns_name, entry_id)) or self.states.get(ns_name, entry_id)
        if doc is None:
            if home:
                out.docs[(ns_name, entry_id)] = {
                    "id": entry_id,
                    "ns": ns_name,
                    "key": None,
                    "state": EntryState.CANCELLED.value,
                    "partition": None,
                    "offset": None,
                    "written_at_us": None,
                    "due_ms": None,
                    "targets": {},
                }
            return
        out.docs[(ns_name, entry_id)] = doc
        if doc["state"] in FINAL or doc.get("group") is not None:
            return  # a group's member is applied or aborted with its group, never alone
        ref = {"ns": ns_name, "id": entry_id}
        if doc["state"] == EntryState.DELAYED and doc.get("due_ms") is not None:
            self.schedule.delete(Timer(kind="delay", due_ms=doc["due_ms"], seq=doc["offset"], entry=ref).key)
        ns = self.registry.get(ns_name)
        for tid, t in doc["targets"].items():
            if t["state"] in (EntryState.DELIVERED, EntryState.DEAD):
                continue
            if t.get("next_attempt_ms") is not None:
                self.schedule.delete(
                    Timer(kind="retry", due_ms=t["next_attempt_ms"], seq=doc["offset"], entry=ref, target_id=tid).key
                )
            self.order.release(self.order.held_key(ns_name, tid, doc["key"], doc["offset"]))
            if ns is not None and self.order.blocker(ns_name, tid, doc["key"]) == entry_id:
                self._release_key(partition, ns, tid, doc["key"], now_s, out)
            t.update(state=EntryState.CANCELLED.value, next_attempt_ms=None, held_behind=None)
        doc["state"] = EntryState.CANCELLED.value

    def _purge(self, partition: int, ns_name: str, now_s: float, out: _Outcome) -> None:
        """A namespace deleted with force: its pending timers and held entries in this
        partition are dead-lettered now (``no_namespace``) rather than when they fall due."""
        if self.registry.get(ns_name) is not None:
            return  # created again since: nothing to purge
        message = f"namespace {ns_name!r} was deleted (with force) while this entry was pending"
        pending: list[tuple[dict[str, Any], dict[str, Any] | None, SourceRecord, int]] = []
        for key, timer in list(self.schedule.of_namespace(partition, ns_name)):
            pending.append((timer.entry, timer.target, _timer_source(timer), timer.attempt))
            out.removals.append(key)
        for held_key, held in list(self.order.of_namespace(partition, ns_name)):
            topic, part, offset = held["source"]
            rec = SourceRecord(topic, part, offset, str(held["entry"].get("key", "")).encode(), None)
            pending.append((held["entry"], held["target"], rec, 0))
            out.released.add(held_key)
        out.unblocked.extend(self.order.blocked_of(partition, ns_name))
        for staged_key, row in list(self.groups.member_rows_of(partition, ns_name)):
            pending.append((row["entry"], None, _row_source(row), 0))
            out.group_removals.append(staged_key)
        out.group_removals.extend(header_key(ns_name, h["id"]) for h in self.groups.headers(partition, ns_name))
        for doc, target, rec, attempt in pending:
            out.letters.append(_letter(rec, doc, target, ErrorClass.NO_NAMESPACE, message, attempt, now_s))
            state = self._state(out, Entry.from_doc(doc), rec)
            for t in state["targets"].values():
                if t["state"] not in FINAL:
                    t.update(state=EntryState.DEAD.value, last_error=message, next_attempt_ms=None, held_behind=None)
            state.update(state=EntryState.DEAD.value, last_error=message)

    def _sweep(self, partition: int, now_s: float, out: _Outcome) -> None:
        """Forget final entry states older than the retention, a bounded slice of the
        partition per call; a pending entry keeps its state however long it waits. A document
        this batch also touches is written again at its end, with a fresh ``updated_ms``.
        Groups past their timeout are aborted, and ended groups past the retention forgotten."""
        self._sweep_groups(partition, now_s, out)
        swept = self.states.sweep(partition, int(now_s * 1000))
        if swept:
            log.debug("partition %d: forgot %d final entry states past retention", partition, swept)

    def _redrive(self, ns_name: str, entry_id: str, target_id: str, now_s: float, out: _Outcome) -> None:
        """Give a dead-lettered (entry, target) a fresh set of attempts, due now."""
        row = self.dlq_index.get(ns_name, entry_id, target_id)
        if row is None or row.get("entry") is None:
            return  # not here (another partition), already redriven, or undecodable
        ns = self.registry.get(ns_name)
        if row.get("target") and ns is not None and self._removed_target(ns, Entry.from_doc(row["entry"]), target_id):
            # dead at a target the namespace no longer has (its config was fixed since):
            # redriven whole, to the namespace's targets as they are now
            self.dlq_index.delete(ns_name, entry_id, target_id)
            rec = SourceRecord(row["source"][0], row["source"][1], row["source"][2], None, None)
            self._state(out, Entry.from_doc(row["entry"]), rec)["targets"].pop(target_id, None)
            row = {**row, "target": None}
            target_id = "*"
        # due now, but never before the entry's own due time (a delayed entry dead-lettered
        # early, e.g. by a forced namespace deletion, is redriven to wait for it)
        due_ms = max(int(now_s * 1000), Entry.from_doc(row["entry"]).due_at_ms or 0)
        topic, part, offset = row["source"]
        timer = Timer(
            kind="retry" if row.get("target") else "delay",
            due_ms=due_ms,
            seq=offset,
            entry=row["entry"],
            target=row.get("target"),
            target_id=target_id if row.get("target") else "*",
            source=row["source"],
            redrive=True,
        )
        self._put_timer(timer, out)
        rec = SourceRecord(topic, part, offset, None, None)
        state = self._state(out, Entry.from_doc(row["entry"]), rec)
        if row.get("target"):
            state["targets"].setdefault(target_id, {"type": target_type(row["target"])}).update(
                state=EntryState.RETRYING.value, attempts=0, next_attempt_ms=due_ms
            )
        else:
            # re-admitted whole: its targets are resolved when the timer fires
            state["state"] = EntryState.PENDING.value
            self.dlq_index.delete(ns_name, entry_id, target_id)


class _BreakerOpen(TargetDownError):
    """Not an attempt: the target was not called (open or stalled breaker), or failed
    because it is down while its circuit is open. The item waits for the breaker."""

    def __init__(
        self, breaker: Breaker, why: str | None = None, *, message: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        circuit = f"circuit open for {breaker.label}"
        why = why or breaker.reason
        super().__init__(message or (f"{circuit}: {why}" if why else circuit), retry_after_s=retry_after_s)


def _waits_for(breaker: Breaker, err: TargetError | None) -> TargetError | None:
    """With the circuit open, "the target is down" is no attempt: the item waits for it."""
    if isinstance(err, TargetDownError) and not isinstance(err, _BreakerOpen):
        return _BreakerOpen(breaker, err.message, retry_after_s=err.retry_after_s)
    return err


def _call_key(it: Item) -> tuple[str, str, str, int]:
    """One entry at one target, across calls (see TargetCalls.take)."""
    return (it.target_id, it.entry.namespace, it.entry.id, it.seq)


def _timer_source(timer: Timer) -> SourceRecord:
    topic, part, offset = timer.source
    return SourceRecord(topic, part, offset, str(timer.entry.get("key", "")).encode(), None)


def _row_source(row: dict[str, Any]) -> SourceRecord:
    topic, part, offset = row["source"]
    return SourceRecord(topic, part, offset, str(row["entry"].get("key", "")).encode(), None)


def _src(rec: SourceRecord) -> list[Any]:
    return [rec.topic, rec.partition, rec.offset]


def target_type(cfg: dict[str, Any]) -> str:
    """How a target is named in entry states and metric labels: its type, and for forwarding
    the peer too (``region:west``)."""
    kind = str(cfg.get("type"))
    return f"region:{cfg.get('region')}" if kind == "region" else kind


def _ready_at_s(entry: Entry) -> float:
    if entry.due_at_ms is not None:
        return max(entry.due_at_ms / 1000, entry.written_at_us / 1e6)
    return entry.written_at_us / 1e6


def _ns(dl: DeadLetter) -> str:
    if isinstance(dl.entry, dict):
        return str(dl.entry.get("ns", "-"))
    return dl.source.topic.removeprefix("wal.")


def _index_row(dl: DeadLetter) -> dict[str, Any]:
    entry = dl.entry if isinstance(dl.entry, dict) else None
    src = dl.source
    return {
        "ns": entry["ns"] if entry else src.topic.removeprefix("wal."),
        "id": entry["id"] if entry else f"@{src.partition}:{src.offset}",
        "key": entry.get("key") if entry else None,
        "target_id": make_target_id(dl.target) if dl.target else "*",
        "target": dl.target,
        "error_class": dl.error_class.value,
        "message": dl.message,
        "attempts": dl.attempts,
        "first_failure_s": dl.first_failure_s,
        "last_failure_s": dl.last_failure_s,
        "entry": entry,
        "source": [src.topic, src.partition, src.offset],
    }


def _letter(
    rec: SourceRecord,
    doc: dict[str, Any] | None,
    target: dict[str, Any] | None,
    error_class: ErrorClass,
    message: str,
    attempts: int,
    first_s: float,
    last_s: float | None = None,
) -> DeadLetter:
    return DeadLetter(
        source=rec,
        entry=doc,
        target=target,
        error_class=error_class,
        message=shorten(message),
        attempts=attempts,
        first_failure_s=first_s,
        last_failure_s=last_s if last_s is not None else first_s,
    )
