"""Point-in-time replay without services: what a replay applies of the records it reads (skips,
delays still running, cancellations, mutation groups whole or not at all, write times kept,
transient failures retried, permanent ones counted), its request's validation, and jobs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from pydantic import ValidationError

from tests.unit.conftest import RecordingTarget
from walstream.api import JobState, ReplayRequest
from walstream.entry import Entry
from walstream.jobs import Job, JobCancelled, Jobs
from walstream.metrics import Metrics
from walstream.namespaces.model import NamespaceConfig
from walstream.replay import Replayer, ReplayPlan, ReplayRefused, ReplayTarget, kafka_ms
from walstream.tables.entry_state import ALL_TARGETS, cancelled_targets
from walstream.targets.base import PermanentError, TransientError

pytestmark = pytest.mark.timeout(30)

NS = NamespaceConfig.model_validate({"name": "kv", "targets": [{"type": "noop"}], "group_timeout_s": 60,
                                     "retry": {"initial_delay_ms": 1, "max_attempts": 3, "jitter": 0.0}})
TOPIC = "wal.kv"
T0_US = 1_800_000_000_000_000


class FakeRecord(SimpleNamespace):
    offset: int
    value: bytes


class FakeConsumer:
    """Serves the records of one topic's partitions in offset order, a few per poll."""

    def __init__(self, partitions: dict[int, list[bytes]]) -> None:
        self.records = partitions
        self.pos: dict[TopicPartition, int] = {}

    def assign(self, tps: list[TopicPartition]) -> None:
        self.pos = dict.fromkeys(tps, 0)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.pos[tp] = offset

    async def getmany(self, *tps: TopicPartition, timeout_ms: int, max_records: int) -> dict[Any, list[FakeRecord]]:
        out = {}
        for tp in tps:
            at = self.pos[tp]
            chunk = self.records[tp.partition][at:at + 3]
            if chunk:
                out[tp] = [FakeRecord(offset=at + i, value=v) for i, v in enumerate(chunk)]
                self.pos[tp] = at + len(chunk)
        return out

    async def position(self, tp: TopicPartition) -> int:
        return self.pos[tp]


class FakePool:
    def __init__(self) -> None:
        self.target = RecordingTarget("noop")

    def get(self, cfg: Any) -> RecordingTarget:
        return self.target


def entry(eid: str, key: str, at_us: int, *, due_ms: int | None = None, group: dict[str, Any] | None = None,
          payload: Any = None) -> bytes:
    return Entry(eid, "kv", key, payload if payload is not None or group else {"v": eid}, at_us, due_at_ms=due_ms,
                 group=group).encode()


def plan(records: dict[int, list[bytes]], *, skip: Sequence[str] = (), cancelled: dict[str, list[str]] | None = None,
         start: int = 0) -> ReplayPlan:
    cfg = NS.targets[0].model_dump(mode="json")
    return ReplayPlan(NS, TOPIC, 0, None, {p: (start, len(r)) for p, r in records.items()},
                      [ReplayTarget(cfg, "tid0", "noop")], None, frozenset(skip), None, None,
                      cancelled=cancelled or {})


async def replay(records: dict[int, list[bytes]], *, dry_run: bool = False, rate: float | None = None,
                 script: dict[str, list[Any]] | None = None, cancel_after_sleeps: int | None = None,
                 **kw: Any) -> tuple[Job, RecordingTarget, list[float]]:
    pool = FakePool()
    pool.target.script = script or {}
    slept: list[float] = []
    now = [0.0]

    async def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s
        if cancel_after_sleeps is not None and len(slept) >= cancel_after_sleeps:
            job.cancel_requested = True  # as Jobs.cancel does

    p = plan(records, **kw)
    job = Job("replay.kv.x", "replay", "kv", "me", {}, total=p.total)
    replayer = Replayer(p, pool, FakeConsumer(records), dry_run=dry_run, rate=rate, sleep=sleep,  # type: ignore[arg-type]
                        clock=lambda: now[0])
    try:
        await replayer.run(job)
    except JobCancelled:
        job.state = JobState.CANCELLED
    return job, pool.target, slept


def test_entries_are_applied_with_their_write_times_except_skipped_and_not_due() -> None:
    future_ms = int(time.time() * 1000) + 600_000
    records = {0: [entry("a", "k1", T0_US), entry("bad", "k1", T0_US + 1), entry("b", "k2", T0_US + 2)],
               1: [entry("later", "k3", T0_US + 3, due_ms=future_ms), entry("c", "k3", T0_US + 4)]}
    job, target, _ = asyncio.run(replay(records, skip=["bad"]))
    assert {e.id: e.written_at_us for e in target.applied} == {"a": T0_US, "b": T0_US + 2, "c": T0_US + 4}
    assert job.counts == {"read": 5, "skipped": 1, "not_due": 1, "applied": 3, "groups_applied": 0,
                          "groups_incomplete": 0}
    assert job.samples["skipped"][0]["id"] == "bad" and job.done == job.total == 5


def test_records_before_the_start_offset_are_not_read() -> None:
    records = {0: [entry("old", "k", T0_US), entry("new", "k", T0_US + 1)]}
    _, target, _ = asyncio.run(replay(records, start=1))
    assert [e.id for e in target.applied] == ["new"]


def test_cancelled_entries_and_targets_are_not_applied() -> None:
    records = {0: [entry("gone", "k1", T0_US), entry("part", "k2", T0_US + 1), entry("elsewhere", "k3", T0_US + 2)]}
    job, target, _ = asyncio.run(replay(records, cancelled={"gone": [ALL_TARGETS], "part": ["tid0"],
                                                            "elsewhere": ["other-target"]}))
    assert [e.id for e in target.applied] == ["elsewhere"]
    assert job.counts["cancelled"] == 2


def test_cancelled_targets_come_from_the_entry_states() -> None:
    docs = [
        {"id": "a", "state": "CANCELLED", "targets": {}},
        {"id": "b", "state": "CANCELLED", "targets": {"t1": {"state": "DELIVERED"}, "t2": {"state": "CANCELLED"}}},
        {"id": "c", "state": "DELIVERED", "targets": {"t1": {"state": "DELIVERED"}}},
        {"id": "d", "state": "DEAD", "targets": {"t1": {"state": "DEAD"}}},
    ]
    assert cancelled_targets(docs) == {"a": [ALL_TARGETS], "b": ["t2"]}


def test_a_dry_run_applies_nothing_and_lists_what_it_would() -> None:
    records = {0: [entry("a", "k1", T0_US), entry("b", "k2", T0_US + 1)]}
    job, target, _ = asyncio.run(replay(records, dry_run=True, skip=["b"]))
    assert target.applied == [] and target.calls == 0
    assert job.counts["would_apply"] == 1 and [s["id"] for s in job.samples["would_apply"]] == ["a"]


def test_transient_failures_are_retried_and_permanent_ones_counted() -> None:
    records = {0: [entry("flaky", "k1", T0_US), entry("broken", "k2", T0_US + 1), entry("down", "k3", T0_US + 2)]}
    script: dict[str, list[Any]] = {"flaky": [TransientError("timeout")], "broken": [PermanentError("no such table")],
              "down": [TransientError("x")] * 5}
    job, target, slept = asyncio.run(replay(records, script=script))
    assert [e.id for e in target.applied] == ["flaky"]
    assert job.counts["applied"] == 1 and job.counts["failed"] == 2
    failed = {f["id"]: f for f in job.samples["failed"]}
    assert failed["broken"]["error_class"] == "permanent" and failed["broken"]["attempts"] == 1
    assert failed["down"]["attempts"] == NS.retry.max_attempts  # then given up: the job goes on
    assert len(slept) == 2  # backoff between the attempts


def test_the_rate_paces_what_is_applied() -> None:
    records = {0: [entry(f"e{i}", f"k{i}", T0_US + i) for i in range(10)]}
    _, target, slept = asyncio.run(replay(records, rate=5.0))
    assert len(target.applied) == 10
    # the first at once, then one every 0.2 s (its own work takes no time here)
    assert sum(slept) == pytest.approx(1.8)


def member(gid: str, seq: int, at_us: int) -> bytes:
    return entry(f"{gid}-{seq}", gid, at_us, group={"id": gid, "seq": seq}, payload={"seq": seq})


def marker(gid: str, size: int, at_us: int) -> bytes:
    return Entry(f"{gid}-commit", "kv", gid, None, at_us, group={"id": gid, "commit": True, "size": size}).encode()


def test_a_whole_group_is_applied_in_seq_order_at_the_markers_write_time_plus_seq() -> None:
    records = {0: [member("g", 1, T0_US), member("g", 0, T0_US + 5), marker("g", 2, T0_US + 10),
                   member("g", 0, T0_US + 20)]}  # read again after its release: ignored, as delivery does
    job, target, _ = asyncio.run(replay(records))
    assert [(e.id, e.written_at_us) for e in target.applied] == [("g-0", T0_US + 10), ("g-1", T0_US + 11)]
    assert job.counts["groups_applied"] == 1 and job.counts["groups_incomplete"] == 0


@pytest.mark.parametrize("records, why", [
    ({0: [member("g", 0, T0_US), marker("g", 2, T0_US + 1)]}, "a member missing (cut by the range)"),
    ({0: [member("g", 0, T0_US), member("g", 1, T0_US + 61_000_000), marker("g", 2, T0_US + 61_000_001)]},
     "read past its deadline: delivery aborted it"),
    ({0: [member("g", 0, T0_US), member("g", 3, T0_US + 1), marker("g", 2, T0_US + 2)]}, "a seq beyond its size"),
])
def test_a_group_not_applied_by_delivery_is_not_replayed(records: dict[int, list[bytes]], why: str) -> None:
    job, target, _ = asyncio.run(replay(records))
    assert target.applied == [], why
    assert job.counts["groups_incomplete"] == 1 and job.counts["groups_applied"] == 0


def test_a_group_aborted_by_a_cancellation_is_not_replayed() -> None:
    records = {0: [member("g", 0, T0_US), member("g", 1, T0_US + 1), marker("g", 2, T0_US + 2)]}
    job, target, _ = asyncio.run(replay(records, cancelled={"g-1": [ALL_TARGETS]}))
    assert target.applied == []
    assert job.counts["groups_incomplete"] == 1 and job.counts["groups_applied"] == 0


def test_skipping_one_member_leaves_its_whole_group_out() -> None:
    records = {0: [member("g", 0, T0_US), member("g", 1, T0_US + 1), marker("g", 2, T0_US + 2),
                   entry("plain", "k", T0_US + 3)]}
    job, target, _ = asyncio.run(replay(records, skip=["g-1"]))
    assert [e.id for e in target.applied] == ["plain"]
    assert job.counts["groups_incomplete"] == 1


def test_an_undecodable_record_is_counted_and_passed_over() -> None:
    records = {0: [b"not json", entry("a", "k", T0_US)]}
    job, target, _ = asyncio.run(replay(records))
    assert [e.id for e in target.applied] == ["a"] and job.counts["undecodable"] == 1


@pytest.mark.parametrize("body, problem", [
    ({}, "from"),
    ({"from": "2026-11-30T10:00:00"}, "timezone"),
    ({"from": "1700000000"}, "ISO-8601"),
    ({"from": "2026-11-30T10:00:00Z", "to": "2026-11-30T09:00:00Z"}, "later than from"),
    ({"from": "2026-11-30T10:00:00Z", "skips": ["x"]}, "skips"),
    ({"from": "2026-11-30T10:00:00Z", "rate": 0}, "rate"),
    ({"from": "2026-11-30T10:00:00Z", "dry_run": "yes"}, "dry_run"),
    ({"from": "2026-11-30T10:00:00Z", "target": [""]}, "target"),
])
def test_a_bad_replay_request_is_refused_naming_the_field(body: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ReplayRequest.model_validate(body)
    assert problem in str(caught.value)


def test_one_target_may_be_given_as_a_string() -> None:
    asked = ReplayRequest.model_validate({"from": "2026-11-30T10:00:00Z", "target": "cassandra:ks"})
    assert asked.target == ["cassandra:ks"]


def test_jobs_end_succeeded_failed_or_cancelled() -> None:
    async def run() -> None:
        jobs = Jobs("http://me")
        gate = asyncio.Event()

        async def waits(job: Job) -> None:
            while not gate.is_set():
                job.check()
                await asyncio.sleep(0.01)

        async def fails(job: Job) -> None:
            raise ReplayRefused("records deleted")

        ok = jobs.start("replay", "kv", {}, waits, plan={}, total=1)
        cancelled = jobs.start("replay", "kv", {}, waits, plan={}, total=1)
        failed = jobs.start("replay", "kv", {}, fails, plan={}, total=1)
        assert ok.id.startswith("replay.kv.") and jobs.get(ok.id) is ok
        jobs.cancel(cancelled.id)
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.sleep(0.05)
        assert ok.state == JobState.SUCCEEDED and ok.public()["progress"] == 1.0
        assert cancelled.state == JobState.CANCELLED
        assert failed.state == JobState.FAILED and "records deleted" in (failed.error or "")
        assert jobs.cancel(ok.id) is ok and ok.state == JobState.SUCCEEDED  # an ended job stays as it ended
        await jobs.close()

    asyncio.run(run())


def test_a_job_checks_for_cancellation() -> None:
    job = Job("replay.kv.x", "replay", "kv", "me", {})
    job.check()
    job.cancel_requested = True
    with pytest.raises(JobCancelled):
        job.check()


def test_a_paced_replay_stops_within_a_quarter_second_of_its_cancellation() -> None:
    records = {0: [entry(f"e{i}", f"k{i}", T0_US + i) for i in range(3)]}
    # one entry per 100 s: the first goes at once, the second waits 100 s; cancelled then
    job, target, slept = asyncio.run(replay(records, rate=0.01, cancel_after_sleeps=2))
    assert job.state == JobState.CANCELLED and [e.id for e in target.applied] == ["e0"]
    assert max(slept) <= 0.25 and sum(slept) == pytest.approx(0.5)


def test_a_replay_cancelled_while_it_backs_off_applies_nothing_more() -> None:
    records = {0: [entry("down", "k", T0_US), entry("next", "k2", T0_US + 1)]}
    script: dict[str, list[Any]] = {"down": [TransientError("x")] * 5}
    job, target, _ = asyncio.run(replay(records, script=script, cancel_after_sleeps=1))
    assert job.state == JobState.CANCELLED and target.calls == 1


def test_a_job_cancelled_during_its_last_step_ends_cancelled() -> None:
    async def run() -> Job:
        jobs = Jobs("http://me")

        async def last_step(job: Job) -> None:
            jobs.cancel(job.id)  # asked while the work had nothing left to check

        job = jobs.start("replay", "kv", {}, last_step, plan={}, total=1)
        assert job.task is not None
        await job.task
        return job

    assert asyncio.run(run()).state == JobState.CANCELLED


def test_progress_moves_with_every_record() -> None:
    records = {0: [entry(f"e{i}", f"k{i}", T0_US + i) for i in range(10)]}
    seen: list[int] = []
    pool = FakePool()
    p = plan(records)
    job = Job("replay.kv.x", "replay", "kv", "me", {}, total=p.total)

    async def apply(entries: Sequence[Entry]) -> list[Any]:
        seen.append(job.done)
        return [None] * len(entries)

    pool.target.apply = apply  # type: ignore[method-assign]

    now = [0.0]

    async def sleep(s: float) -> None:
        now[0] += s

    async def go() -> None:
        await Replayer(p, pool, FakeConsumer(records), dry_run=False, rate=4.0,  # type: ignore[arg-type]
                       sleep=sleep, clock=lambda: now[0]).run(job)

    asyncio.run(go())
    assert seen[:3] == [1, 2, 3]  # 4 a second: applied one by one, progress with each


@pytest.mark.parametrize("text, ceil, ms", [
    ("1969-12-31T23:59:59Z", False, 0),
    ("0001-01-01T00:00:00Z", False, 0),
    ("2026-12-01T00:00:00.000999Z", False, 1_796_083_200_000),
    ("2026-12-01T00:00:00.000001Z", True, 1_796_083_200_001),
    ("9999-12-31T23:59:59-14:00", True, 253_402_300_799_999),
])
def test_times_become_kafka_timestamps_within_range_rounded_outward(text: str, ceil: bool, ms: int) -> None:
    assert kafka_ms(ReplayRequest.model_validate({"from": text}).from_, ceil=ceil) == ms


def test_jobs_count_their_entries_and_ends_in_metrics() -> None:
    metrics = Metrics()

    async def run() -> None:
        jobs = Jobs("http://me", metrics)

        async def work(job: Job) -> None:
            job.count("read", 5)
            job.count("applied", 4)

        job = jobs.start("replay", "kv", {}, work, plan={}, total=5)
        assert job.task is not None
        await job.task

    asyncio.run(run())
    value = metrics.registry.get_sample_value
    assert value("walstream_job_entries_total", {"kind": "replay", "namespace": "kv", "outcome": "applied"}) == 4
    assert value("walstream_job_entries_total", {"kind": "replay", "namespace": "kv", "outcome": "read"}) == 5
    assert value("walstream_jobs_ended_total", {"kind": "replay", "state": "SUCCEEDED"}) == 1
