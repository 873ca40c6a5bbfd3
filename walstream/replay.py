"""Point-in-time replay: re-apply what ``wal.<namespace>`` holds from one time to another,
with the entries' original write times, to the namespace's targets (corruption recovery:
restore a backup, then replay the WAL from the backup's time, skipping the bad entries).

Because every target applies by write time (Cassandra ``USING TIMESTAMP``, Elasticsearch
external versions), replaying an entry twice, or an older one after a newer one, leaves the
state the last write implies: a replay can be cut short and started again.

What is replayed, record by record in offset order per partition:

- the entries written from ``from`` (the offsets Kafka gives for that time: the first record
  with a timestamp at or after it) up to ``to`` (exclusive; default: the end of the topic
  when the job starts);
- except the ``skip`` ids; entries not due yet (a delay still running: the schedule delivers
  them); entries or targets the fleet's entry states know as cancelled (known for
  ``WALSTREAM_ENTRY_RETENTION_S`` after the cancellation); undecodable records (counted);
- a mutation group only whole: its members and commit marker all in the range, read before
  its deadline (``group_timeout_s`` after its first record), each member written as the
  delivery path writes it (the marker's write time plus its seq, in µs). A group with a
  skipped record, or cut by the range, is not replayed (counted ``groups_incomplete``).

The namespace's topic retention bounds the reach: a ``from`` before the oldest record a
partition still holds, in a partition Kafka has already deleted records of, is refused
naming the earliest time that can be replayed (:class:`ReplayRefused`).

Targets: the entry's own (an override) or the namespace's current ones, optionally only
those named (``target``: ids as entry status shows them, or labels). A transient failure is
retried with the namespace's retry policy; an entry still failing, or failing permanently,
is counted ``failed`` (samples name it and why); the job goes on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError

from walstream.api import ReplayRequest
from walstream.delivery.retry import backoff_ms
from walstream.entry import MAX_WRITE_TIME_US, Entry, EntryDecodeError, cancelled_by, parse_record
from walstream.jobs import Job, Jobs
from walstream.kafka_admin import topic_config
from walstream.namespaces.model import NamespaceConfig
from walstream.namespaces.registry import NamespaceRegistry
from walstream.tables.entry_state import ALL_TARGETS
from walstream.tables.keys import target_id as make_target_id
from walstream.targets.base import PermanentError, Target, TargetError
from walstream.targets.pool import TargetPool

log = logging.getLogger(__name__)

#: entries applied to a target in one call
APPLY_BATCH = 200
#: records read per poll
READ_BATCH = 500
#: how often a waiting replay (paced, or backing off) looks whether it is cancelled, in seconds
CHECK_EVERY_S = 0.25
#: group members a replay holds at once while their groups are incomplete
MAX_BUFFERED_MEMBERS = 200_000


#: the latest time shown as a date (9999-12-31T23:59:59.999Z), in ms
MAX_TIME_MS = MAX_WRITE_TIME_US // 1000


def kafka_ms(t: datetime, *, ceil: bool) -> int:
    """``t`` as a Kafka timestamp (epoch ms), within 0 .. :data:`MAX_TIME_MS`. Kafka's
    timestamps start at the epoch (an earlier time means from the beginning) and are
    milliseconds: a time within a millisecond is rounded outward (``ceil`` for the end of a
    range), so the edges take in the whole millisecond rather than leave part of it out."""
    us = (t - EPOCH) // timedelta(microseconds=1)
    ms = -(-us // 1000) if ceil else us // 1000
    return min(max(0, ms), MAX_TIME_MS)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ReplayRefused(ValueError):
    """A replay that cannot be done as asked (400: the message names the problem)."""


def iso_ms(ms: int) -> str:
    ms = min(max(0, ms), MAX_TIME_MS)
    return (EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ReplayTarget:
    config: dict[str, Any]
    id: str
    label: str


@dataclass
class ReplayPlan:
    """What a replay reads (``ranges``: partition → [start, stop) offsets) and where it applies."""

    namespace: NamespaceConfig
    topic: str
    from_ms: int
    to_ms: int | None
    ranges: dict[int, tuple[int, int]]
    #: the namespace's targets chosen (an entry's override replaces them, filtered by ``only``)
    targets: list[ReplayTarget]
    #: the target ids or labels asked for (None: all)
    only: frozenset[str] | None
    skip: frozenset[str]
    #: the earliest time every partition still holds (None: nothing was deleted yet)
    earliest_ms: int | None
    retention_ms: int | None
    cancelled: dict[str, list[str]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(stop - start for start, stop in self.ranges.values())

    def public(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "from": iso_ms(self.from_ms),
            "to": None if self.to_ms is None else iso_ms(self.to_ms),
            "offsets": {str(p): {"start": a, "stop": b} for p, (a, b) in sorted(self.ranges.items())},
            "records": self.total,
            "targets": [{"id": t.id, "label": t.label} for t in self.targets],
            "skip": len(self.skip),
            "earliest": None if self.earliest_ms is None else iso_ms(self.earliest_ms),
            "retention_ms": self.retention_ms,
            "known_cancelled": len(self.cancelled),
        }

    def chosen(self, cfg: dict[str, Any], tid: str, label: str) -> bool:
        return self.only is None or tid in self.only or label in self.only


def choose_targets(ns: NamespaceConfig, pool: TargetPool, only: list[str] | None) -> list[ReplayTarget]:
    """The namespace's targets, those named in ``only`` when given (by id or label);
    :class:`ReplayRefused` names an unknown one and lists the namespace's."""
    targets = []
    for t in ns.targets_in(pool.settings.region):  # this region's own (walstream.replication)
        cfg = t.model_dump(mode="json")
        targets.append(ReplayTarget(cfg, make_target_id(cfg), pool.get(t).label))
    if only is None:
        return targets
    known = ", ".join(f"{t.id} ({t.label})" for t in targets)
    for name in only:
        if not any(name in (t.id, t.label) for t in targets):
            raise ReplayRefused(f"target: namespace {ns.name!r} has no target {name!r}; its targets are {known}")
    return [t for t in targets if t.id in only or t.label in only]


async def plan_replay(
    request: ReplayRequest,
    ns: NamespaceConfig,
    pool: TargetPool,
    consumer: AIOKafkaConsumer,
    bootstrap: str,
    now_ms: int,
) -> ReplayPlan:
    """The offsets a replay reads, from Kafka's offsets for the request's times. Raises
    :class:`ReplayRefused` for a ``from`` in the future, or earlier than the topic keeps."""
    from_ms = kafka_ms(request.from_, ceil=False)
    to_ms = None if request.to is None else kafka_ms(request.to, ceil=True)
    if from_ms > now_ms:
        raise ReplayRefused(f"from: {iso_ms(from_ms)} is in the future; nothing was written then yet")
    targets = choose_targets(ns, pool, request.target)
    topic = ns.topic
    partitions = consumer.partitions_for_topic(topic) or await _partitions(consumer, topic)
    if not partitions:
        raise ReplayRefused(f"topic {topic} does not exist (yet): nothing to replay")
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    begins = await consumer.beginning_offsets(tps)
    ends = await consumer.end_offsets(tps)
    firsts = await consumer.offsets_for_times(dict.fromkeys(tps, 0))
    # a partition that deleted records (retention) holds whatever was written from its first
    # record on: before that, entries may be gone
    earliest: int | None = None
    for tp in tps:
        first = firsts.get(tp)
        if begins[tp] > 0 and first is not None:
            earliest = max(earliest or 0, first.timestamp)
    cfg = await topic_config(bootstrap, topic)
    retention = cfg.effective.get("retention.ms") if cfg is not None else None
    retention_ms = int(retention) if retention is not None and retention.lstrip("-").isdigit() else None
    if earliest is not None and from_ms < earliest:
        raise ReplayRefused(
            f"from: {topic} keeps records from {iso_ms(earliest)} on (retention.ms={retention_ms}): entries written "
            f"at {iso_ms(from_ms)} may be deleted. Replay from {iso_ms(earliest)} or later, or restore an older "
            "backup of the target instead"
        )
    starts = await consumer.offsets_for_times(dict.fromkeys(tps, from_ms))
    stops = await consumer.offsets_for_times(dict.fromkeys(tps, to_ms)) if to_ms is not None else {}
    ranges: dict[int, tuple[int, int]] = {}
    for tp in tps:
        start_at = starts.get(tp)
        start = ends[tp] if start_at is None else max(start_at.offset, begins[tp])
        stop_at = stops.get(tp)
        stop = ends[tp] if stop_at is None else stop_at.offset
        if stop > start:
            ranges[tp.partition] = (start, stop)
    only = frozenset(request.target) if request.target is not None else None
    return ReplayPlan(ns, topic, from_ms, to_ms, ranges, targets, only, frozenset(request.skip), earliest,
                      retention_ms)


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """The topic's partitions from fresh metadata (the consumer's cache knows only topics it
    was asked about)."""
    meta = await consumer._client.fetch_all_metadata()  # aiokafka's client: no public call for this
    return set(meta.partitions_for_topic(topic) or ())


@dataclass
class _Group:
    partition: int
    deadline_ms: int
    #: seq → (member, its offset)
    members: dict[int, tuple[Entry, int]] = field(default_factory=dict)
    marker: Entry | None = None
    spoiled: str | None = None


class GroupCollector:
    """Holds the members of the mutation groups a replay reads until each group is whole
    (walstream.delivery.deliverer's rules: all members and the marker read before the group's
    deadline), then gives its members in seq order with the write times delivery used.
    ``timeout_s``: the namespace's ``group_timeout_s``."""

    def __init__(self, timeout_s: int, limit: int = MAX_BUFFERED_MEMBERS) -> None:
        self.timeout_s = timeout_s
        self.limit = limit
        self.open: dict[str, _Group] = {}
        #: groups replayed or given up: their later records are ignored, as delivery does
        self.ended: set[str] = set()
        self.buffered = 0
        self.applied = 0
        self.incomplete = 0
        #: per partition, (deadline_ms, group id) of its open groups, earliest first
        self._deadlines: dict[int, list[tuple[int, str]]] = {}

    def _end(self, gid: str, applied: bool) -> None:
        group = self.open.pop(gid)
        self.buffered -= len(group.members)
        self.ended.add(gid)
        if applied:
            self.applied += 1
        else:
            self.incomplete += 1

    def expire(self, partition: int, written_ms: int) -> None:
        """A record of ``partition`` written at ``written_ms`` was read: groups of the
        partition whose deadline it passed were aborted by delivery."""
        deadlines = self._deadlines.get(partition)
        while deadlines and deadlines[0][0] <= written_ms:
            _, gid = heapq.heappop(deadlines)
            if gid in self.open:  # else it ended before its deadline
                self._end(gid, applied=False)

    def add(
        self, entry: Entry, partition: int, offset: int, *, skipped: bool, cancelled: bool
    ) -> list[tuple[Entry, int]]:
        """Take a group record (``skipped`` by the request, or ``cancelled`` before it was
        consumed, which aborted the group); the group's members to apply with their offsets,
        in seq order, once it is whole."""
        assert entry.group is not None
        gid = str(entry.group["id"])
        if gid in self.ended:
            return []
        group = self.open.get(gid)
        if group is None:
            group = self.open[gid] = _Group(partition, entry.written_at_us // 1000 + self.timeout_s * 1000)
            heapq.heappush(self._deadlines.setdefault(partition, []), (group.deadline_ms, gid))
        if skipped:
            group.spoiled = f"record {entry.id} skipped"
        if cancelled:
            group.spoiled = f"record {entry.id} cancelled"
        if entry.group.get("commit"):
            if group.marker is not None and group.marker.group != entry.group and group.marker.id != entry.id:
                group.spoiled = "two commit markers"
            group.marker = group.marker or entry
        else:
            seq = int(entry.group["seq"])
            held = group.members.get(seq)
            if held is None:
                group.members[seq] = (entry, offset)
                self.buffered += 1
                if self.buffered > self.limit:
                    raise ReplayRefused(
                        f"more than {self.limit} members of incomplete mutation groups at once; replay a "
                        "shorter range"
                    )
            elif held[0].id != entry.id:
                group.spoiled = f"two members with seq {seq}"
        if group.marker is None:
            return []
        size = int(group.marker.group["size"]) if group.marker.group else 0
        if group.spoiled or any(seq >= size for seq in group.members):
            self._end(gid, applied=False)
            return []
        if len(group.members) < size:
            return []
        commit_us = group.marker.written_at_us
        members = [(dataclasses.replace(member, written_at_us=commit_us + seq), at)
                   for seq in range(size) for member, at in [group.members[seq]]]
        self._end(gid, applied=True)
        return members

    def finish(self) -> None:
        """The range ended: groups still open are not replayed."""
        for gid in list(self.open):
            self._end(gid, applied=False)


Sleep = Callable[[float], Awaitable[None]]


class Replayer:
    """Runs one replay (:meth:`run`) as a job's work, updating its counts and progress."""

    def __init__(self, plan: ReplayPlan, pool: TargetPool, consumer: AIOKafkaConsumer, *, dry_run: bool,
                 rate: float | None, sleep: Sleep = asyncio.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        self.plan = plan
        self.pool = pool
        self.consumer = consumer
        self.dry_run = dry_run
        self.rate = rate
        self.sleep = sleep
        self.clock = clock
        self.groups = GroupCollector(plan.namespace.group_timeout_s)
        self._pending: dict[str, tuple[Target, list[Entry]]] = {}
        self._labels: dict[str, str] = {}
        self._paced_from = clock()
        self._emitted = 0
        #: entries per target call: paced, a quarter second's worth, so that what is read is
        #: applied as it goes (and a cancelled job stops within that)
        self.batch_size = APPLY_BATCH if rate is None else max(1, min(APPLY_BATCH, int(rate / 4)))

    async def run(self, job: Job) -> None:
        plan = self.plan
        tps = {TopicPartition(plan.topic, p): r for p, r in plan.ranges.items()}
        positions = {tp: start for tp, (start, _) in tps.items()}
        if tps:
            self.consumer.assign(list(tps))
            for tp, (start, _) in tps.items():
                self.consumer.seek(tp, start)
        remaining = set(tps)
        for name in ("read", "applied" if not self.dry_run else "would_apply"):
            job.counts.setdefault(name, 0)
        while remaining:
            job.check()
            try:
                batches = await self.consumer.getmany(*remaining, timeout_ms=1000, max_records=READ_BATCH)
            except OffsetOutOfRangeError as exc:
                raise ReplayRefused(
                    f"records of {plan.topic} were deleted by its retention while the replay read them ({exc}); "
                    "the replay is incomplete: start it again from a later time"
                ) from None
            for tp, records in batches.items():
                stop = tps[tp][1]
                for rec in records:
                    if rec.offset >= stop:
                        break
                    job.done += rec.offset + 1 - positions[tp]
                    positions[tp] = rec.offset + 1
                    await self._record(job, tp.partition, rec.offset, rec.value)
            for tp in list(remaining):
                if positions[tp] >= tps[tp][1] or await self.consumer.position(tp) >= tps[tp][1]:
                    remaining.discard(tp)
                    job.done += tps[tp][1] - positions[tp]  # offsets with no record (none here, or gaps)
                    positions[tp] = tps[tp][1]
            await self._flush(job)
        self.groups.finish()
        await self._flush(job)
        job.counts["groups_applied"] = self.groups.applied
        job.counts["groups_incomplete"] = self.groups.incomplete
        job.done = job.total

    async def _record(self, job: Job, partition: int, offset: int, value: bytes | None) -> None:
        job.count("read")
        try:
            doc = parse_record(value)
            if cancelled_by(doc) is not None:  # a peer region's cancellation: not an entry
                job.count("cancellations")
                return
            entry = Entry.from_doc(doc)
        except EntryDecodeError as exc:
            job.count("undecodable")
            job.sample("undecodable", {"partition": partition, "offset": offset, "error": str(exc)[:300]})
            return
        self.groups.expire(partition, entry.written_at_us // 1000)
        skipped = entry.id in self.plan.skip
        if skipped:
            job.count("skipped")
            job.sample("skipped", _brief(entry, partition, offset))
        if entry.group is not None:
            cancelled = ALL_TARGETS in self.plan.cancelled.get(entry.id, ())
            for member, at in self.groups.add(entry, partition, offset, skipped=skipped, cancelled=cancelled):
                await self._emit(job, member, partition, at)
            return
        if skipped:
            return
        if entry.due_at_ms is not None and entry.due_at_ms > int(time.time() * 1000):
            job.count("not_due")
            job.sample("not_due", _brief(entry, partition, offset))
            return
        await self._emit(job, entry, partition, offset)

    def _targets_of(self, entry: Entry) -> list[tuple[dict[str, Any], str]]:
        if entry.targets is not None:
            pairs = [(cfg, make_target_id(cfg)) for cfg in entry.targets]
        else:
            pairs = [(t.config, t.id) for t in self.plan.targets]
        chosen = []
        for cfg, tid in pairs:
            label = self._labels.get(tid) or self._labels.setdefault(tid, self.pool.get(cfg).label)
            if entry.targets is None or self.plan.chosen(cfg, tid, label):
                chosen.append((cfg, tid))
        return chosen

    async def _emit(self, job: Job, entry: Entry, partition: int, offset: int) -> None:
        cancelled = set(self.plan.cancelled.get(entry.id, ()))
        targets = [(cfg, tid) for cfg, tid in self._targets_of(entry)
                   if ALL_TARGETS not in cancelled and tid not in cancelled]
        if not targets:
            job.count("cancelled" if cancelled else "no_target")
            job.sample("cancelled" if cancelled else "no_target", _brief(entry, partition, offset))
            return
        if self.dry_run:
            job.count("would_apply")
            job.sample("would_apply", {**_brief(entry, partition, offset), "targets": [tid for _, tid in targets]})
            return
        job.check()
        await self._pace(job)
        for cfg, tid in targets:
            _, batch = self._pending.setdefault(tid, (self.pool.get(cfg), []))
            batch.append(entry)
            if len(batch) >= self.batch_size:
                await self._apply(job, tid)

    async def _pace(self, job: Job) -> None:
        """At most :attr:`rate` entries per second over the job's run."""
        self._emitted += 1
        if self.rate is None:
            return
        # the first entry goes at once, each next one 1/rate after the one before
        ahead_s = (self._emitted - 1) / self.rate - (self.clock() - self._paced_from)
        if ahead_s > 0:
            await self._wait(job, ahead_s)

    async def _wait(self, job: Job, seconds: float) -> None:
        """Sleep ``seconds`` in slices of at most :data:`CHECK_EVERY_S`, stopping (raising
        walstream.jobs.JobCancelled) as soon as the job is cancelled."""
        end = self.clock() + seconds
        while (left := end - self.clock()) > 0:
            job.check()
            await self.sleep(min(left, CHECK_EVERY_S))
        job.check()

    async def _flush(self, job: Job) -> None:
        for tid in list(self._pending):
            await self._apply(job, tid)

    async def _apply(self, job: Job, tid: str) -> None:
        """Apply the target's pending entries, retrying transient failures with the
        namespace's retry policy; what still fails is counted ``failed``."""
        target, batch = self._pending.pop(tid)
        policy = self.plan.namespace.retry
        attempt = 1
        while batch:
            outcomes = await target.apply(batch)
            retry: list[Entry] = []
            for entry, err in zip(batch, outcomes, strict=True):
                if err is None:
                    job.count("applied")
                elif isinstance(err, PermanentError) or attempt >= policy.max_attempts:
                    self._failed(job, entry, tid, target, err, attempt)
                else:
                    retry.append(entry)
            if not retry:
                return
            asked_s = max((e.retry_after_s or 0.0 for e in outcomes if e is not None), default=0.0)
            await self._wait(job, max(backoff_ms(policy, attempt) / 1000, asked_s))
            attempt += 1
            batch = retry

    @staticmethod
    def _failed(job: Job, entry: Entry, tid: str, target: Target, err: TargetError, attempts: int) -> None:
        job.count("failed")
        job.sample("failed", {"id": entry.id, "key": entry.key, "target_id": tid, "target": target.label,
                              "error_class": err.error_class.value, "error": err.message[:500], "attempts": attempts})


def _brief(entry: Entry, partition: int, offset: int) -> dict[str, Any]:
    return {"id": entry.id, "key": entry.key, "partition": partition, "offset": offset,
            "written_at": iso_ms(entry.written_at_us // 1000)}


#: the fleet's entries known as cancelled, of a namespace (walstream.status.EntryStatus.cancelled)
CancelledLookup = Callable[[str], Awaitable[dict[str, list[str]]]]


class Replays:
    """Starts replays as jobs of this worker (``POST /v1/replay/{namespace}``)."""

    def __init__(
        self, bootstrap: str, registry: NamespaceRegistry, pool: TargetPool, jobs: Jobs, cancelled: CancelledLookup
    ) -> None:
        self.bootstrap = bootstrap
        self.registry = registry
        self.pool = pool
        self.jobs = jobs
        self.cancelled = cancelled

    async def start(self, namespace: str, request: ReplayRequest) -> Job:
        """Plan the replay and start it; raises :class:`LookupError` for an unknown
        namespace, :class:`ReplayRefused` for a replay that cannot be done as asked, and
        walstream.status.FleetIncomplete while the fleet cannot say which entries were cancelled."""
        ns = self.registry.get(namespace)
        if ns is None:
            raise LookupError(f"unknown namespace {namespace!r}")
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
            # a record deleted under the replay must stop it, never be skipped silently
            auto_offset_reset="none",
        )
        await consumer.start()
        try:
            plan = await plan_replay(request, ns, self.pool, consumer, self.bootstrap, int(time.time() * 1000))
            plan.cancelled = await self.cancelled(namespace)
            replayer = Replayer(plan, self.pool, consumer, dry_run=request.dry_run, rate=request.rate)

            async def work(job: Job) -> None:
                try:
                    await replayer.run(job)
                finally:
                    await stop_consumer(consumer)

            asked = request.model_dump(mode="json", by_alias=True)
            asked["skip"] = len(request.skip)  # the ids may be many: the job shows how many
            # the job owns the consumer from here (its work stops it)
            return self.jobs.start("replay", namespace, asked, work, plan=plan.public(), total=plan.total)
        except BaseException:
            await stop_consumer(consumer)
            raise


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """Stop ``consumer``. aiokafka 0.14 re-raises, from ``stop()``, the cancellation of its
    coordinator's task when that task never ran (a consumer stopped right after its start):
    that is swallowed; a cancellation of the caller itself is not."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.debug("aiokafka re-raised its coordinator's cancellation while stopping", exc_info=True)
