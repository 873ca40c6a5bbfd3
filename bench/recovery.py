"""Recovery benchmark: take-over after SIGKILL, and catch-up after a target outage, each next to raw.

Run ``python -m bench.recovery`` (Kafka at ``WALSTREAM_BROKER``, default 127.0.0.1:9092; for
part 2 the second local cluster, kafka-west, on 127.0.0.1:9192). Every worker is a
``walstream worker`` subprocess with ``WALSTREAM_PARTITIONS=8``, its own datadir in a temp dir
and a unique ``WALSTREAM_APP_ID``; every wait is bounded; temp dirs, workers and the run's topics
are removed at the end.

**Part 1a, restart after SIGKILL.** One worker, one namespace whose target is ``kafka`` (a fresh
output topic on the main cluster). A trickle of immediate single writes runs throughout
(``BENCH_REC_TRICKLE_RATE`` writes/s, default 20). ``BENCH_REC_PROBES`` (default 2000) delayed
entries are written with ``lifecycle.deliver_at`` (ISO-8601 UTC, ms) spread evenly over
[kill + 1 s, kill + 20 s]; once the worker has consumed them (its group's lag on the WAL is 0),
it is SIGKILLed at the planned kill time and started again at once with the same app id,
datadir and web port. Reported, from the moment the new process is started:

- *first delivery*: the earliest record of the output topic with CreateTime after the restart
  (only the new process can have produced it);
- *health*: the first ``GET /v1/health`` answered (and, apart, when all 8 WAL partitions are
  assigned again); *writes back*: the first trickle write sent after the restart that is acked;
- *lateness* of the probes = record CreateTime - due ms (matched by the ``walstream-id``
  header, first record wins): for the probes due while the worker was down or recovering
  (due between the kill and the first delivery after the restart) and for all probes;
  p50/p99/max, and the count delivered early (must be 0) or missing.

**Part 1b, dies for good.** Two workers of one app id share the namespace's 8 partitions; the
trickle is written through the survivor (each answer names the entry's WAL partition). One
worker is SIGKILLed and not restarted: *take-over* = time from the kill until the survivor
delivers an entry of one of the dead worker's partitions, printed next to
``WALSTREAM_SESSION_TIMEOUT_S`` (the workers' session timeout; default 10 s).

Raw baseline of part 1: a relay process (aiokafka consumer group, the same session timeout,
consume -> produce each record to an output topic, auto-commit) fed by a trickle; SIGKILL and
restart at once, with static membership (``group.instance.id``, the floor for a restart) and
without it (a new member, which waits out the dead one's session); and two relay members of
one group with one SIGKILLed for good. Same figures: restart -> first relayed record, kill ->
first relayed record of the dead member's partitions.

**Part 2, catch-up after a target outage.** One worker, a namespace whose target is
``{"type": "kafka", "topic": T, "bootstrap": "127.0.0.1:9192"}`` with ordering by key (the
default); T has ``message.timestamp.type=LogAppendTime`` so that a record's timestamp is when
the target took it, even for a send created before the outage. Writes go at a steady
``BENCH_REC_RATE`` entries/s (default 1000) in ``POST /v1/log/batch`` requests of
``BENCH_REC_WRITE_BATCH`` entries (default 20) over ``BENCH_REC_KEYS`` busy keys (default 30),
open loop, from the moment the worker has delivered a first entry to T (a fresh worker can
take seconds for that): ``BENCH_REC_WARM_S`` (default 10 s) with the target up, then
kafka-west is stopped (``walstream stack down --services kafka-west``) for ``BENCH_REC_OUTAGE_S`` seconds (default
60) and started again (``walstream stack up --services kafka-west``, which returns once the
broker answers: the target is down for the outage plus that start, both printed); the writes
continue until every entry acked before the target came back (the backlog) is in T (bounded by
``BENCH_REC_CATCHUP_TIMEOUT_S``, default 900). Reported: backlog size, *drained entries/s* =
backlog / (last backlog record's append time - first append after the outage), the backlog
being the entries acked before the target came back and appended after it had stopped; all
records appended per second over that span (new writes included), the time from ``stack up``
returning to the first append, write acks (p50/p99 per request, failures) before the outage,
during it and during the catch-up, and the entries acked but not in T ``BENCH_REC_TAIL_S``
(default 60) after the writes stopped (still queued, unless the backlog itself timed out).
Raw baseline: a plain aiokafka producer (acks=all, idempotent, as the kafka target's) writing
the backlog's count of records of the same size and keys to kafka-west: entries/s.
kafka-west is left running at the end only if it was running at the start; no other service
is started or stopped.

Other knobs: ``BENCH_REC_PARTS`` (default ``takeover,catchup``; either alone runs that part),
``BENCH_REC_KEEP_LOG=1`` keeps the workers' logs (kept anyway when they show errors),
``BENCH_REC_LOGLEVEL`` (default ``warning``) sets the workers' log level (``info`` shows when
each start-up step ends, at some cost of its own).
Output: progress lines, a compact printout per part, then a markdown table (figure, walstream,
raw, ratio) with the command and the git commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient

from bench.scheduler import git_state, pct, post_batches, probe_bodies, stamp
from bench.worker import free_port
from walstream.kafka_admin import TopicSpec, ensure_topics

BROKER = os.environ.get("WALSTREAM_BROKER", "127.0.0.1:9092")
WEST = "127.0.0.1:9192"
PARTITIONS = 8
PROBES = int(os.environ.get("BENCH_REC_PROBES", "2000"))
DUE_FIRST_S = 1.0
DUE_LAST_S = 20.0
TRICKLE_RATE = float(os.environ.get("BENCH_REC_TRICKLE_RATE", "20"))
SESSION_S = float(os.environ.get("WALSTREAM_SESSION_TIMEOUT_S", "10"))
OUTAGE_S = float(os.environ.get("BENCH_REC_OUTAGE_S", "60"))
RATE = float(os.environ.get("BENCH_REC_RATE", "1000"))
WRITE_BATCH = int(os.environ.get("BENCH_REC_WRITE_BATCH", "20"))
KEYS = int(os.environ.get("BENCH_REC_KEYS", "30"))
WARM_S = float(os.environ.get("BENCH_REC_WARM_S", "10"))
CATCHUP_TIMEOUT_S = float(os.environ.get("BENCH_REC_CATCHUP_TIMEOUT_S", "900"))
TAIL_S = float(os.environ.get("BENCH_REC_TAIL_S", "60"))
RUN_PARTS = {p.strip() for p in os.environ.get("BENCH_REC_PARTS", "takeover,catchup").split(",") if p.strip()}
KEEP_LOG = bool(os.environ.get("BENCH_REC_KEEP_LOG"))
LOGLEVEL = os.environ.get("BENCH_REC_LOGLEVEL", "warning")
START_TIMEOUT_S = 180.0
PAD = "x" * 64
ID_HEADER = "walstream-id"


def now_ms() -> int:
    return int(time.time() * 1000)


def say(msg: str) -> None:
    print(f"  {stamp()} {msg}", flush=True)


def stats_ms(xs: list[float]) -> dict[str, float]:
    return {
        "n": float(len(xs)),
        "p50": pct(xs, 50),
        "p99": pct(xs, 99),
        "max": max(xs) if xs else float("nan"),
    }


# -- a worker that can be SIGKILLed and started again ---------------------------------------


class WorkerProc:
    """A ``walstream worker`` subprocess whose app id, datadir and port survive a restart.

    (``bench.worker.Worker`` picks a fresh app id and port per object; a restart must keep them.)
    """

    def __init__(self, root: Path, app_id: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.app_id = app_id
        self.port = free_port()
        self.datadir = root / "data"
        self.log_path = root / "worker.log"
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "WALSTREAM_APP_ID": self.app_id,
            "WALSTREAM_WEB_PORT": str(self.port),
            "WALSTREAM_DATADIR": str(self.datadir),
            "WALSTREAM_PARTITIONS": str(PARTITIONS),
            "WALSTREAM_BROKER": BROKER,
        }
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "walstream.cli", "worker", "--loglevel", LOGLEVEL],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, and reap it (its port and RocksDB locks are free afterwards)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    async def health(self, s: aiohttp.ClientSession, timeout_s: float = 2.0) -> dict[str, Any] | None:
        """The health document, or None while the worker does not answer."""
        try:
            async with s.get(f"{self.url}/v1/health", timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
                if r.status != 200:
                    return None
                doc: dict[str, Any] = await r.json()
                return doc
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def wait_health(
        self, s: aiohttp.ClientSession, ok: Callable[[dict[str, Any]], bool], what: str, timeout_s: float
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"worker exited before {what}; see {self.log_path}")
            doc = await self.health(s)
            if doc is not None and ok(doc):
                return doc
            await asyncio.sleep(0.2)
        raise RuntimeError(f"worker: no {what} within {timeout_s:.0f} s; see {self.log_path}")


def wal_parts(doc: dict[str, Any] | None, ns: str) -> set[int]:
    """The partitions of ``wal.<ns>`` a health document says are assigned."""
    if doc is None:
        return set()
    prefix = f"wal.{ns}:"
    return {int(t[len(prefix) :]) for t in doc.get("assigned", []) if t.startswith(prefix)}


def has_commands(doc: dict[str, Any]) -> bool:
    return any(".commands:" in t for t in doc.get("assigned", []))


async def put_namespace(s: aiohttp.ClientSession, url: str, ns: str, target: dict[str, str]) -> None:
    async with s.put(f"{url}/v1/namespaces/{ns}", json={"targets": [target]}) as r:
        if r.status != 200:
            raise RuntimeError(f"namespace {ns}: HTTP {r.status} {await r.text()}")


# -- Kafka -----------------------------------------------------------------------------------


class Watch:
    """Reads a topic from its beginning in the background: each ``walstream-id``'s first
    record timestamp (ms; CreateTime or LogAppendTime, as the topic says) and every timestamp."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.first: dict[str, int] = {}
        self.stamps: list[tuple[int, str]] = []
        #: ids expected and not seen yet (see :meth:`expect`)
        self.waiting: set[str] = set()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        parts = self._consumer.partitions_for_topic(self.topic)
        if not parts:
            await self._consumer._client.force_metadata_update()
            parts = self._consumer.partitions_for_topic(self.topic) or set()
        if not parts:
            raise RuntimeError(f"topic {self.topic} not found on {self.bootstrap}")
        tps = [TopicPartition(self.topic, p) for p in parts]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for r in records:
                    rid = dict(r.headers).get(ID_HEADER, b"").decode()
                    ts = int(r.timestamp)
                    self.stamps.append((ts, rid))
                    if rid not in self.first or ts < self.first[rid]:
                        self.first[rid] = ts
                    self.waiting.discard(rid)

    def expect(self, ids: Iterable[str]) -> None:
        """Track which of ``ids`` are not seen yet (``waiting``), cheaply as records come in."""
        self.waiting = set(ids) - self.first.keys()

    async def wait_for(self, done: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                return False
            if self._task is not None and self._task.done():
                self._task.result()  # raises what stopped the reader
            await asyncio.sleep(0.1)
        return True

    def first_from(self, ms: int, ids: set[str] | None = None) -> int | None:
        """The earliest timestamp >= ``ms`` (of a record whose id is in ``ids``, when given)."""
        xs = [ts for ts, rid in self.stamps if ts >= ms and (ids is None or rid in ids)]
        return min(xs) if xs else None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._consumer.stop()


async def delete_topics(bootstrap: str, match: Callable[[str], bool]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        doomed = [t for t in await admin.list_topics() if match(t)]
        if doomed:
            await admin.delete_topics(doomed, timeout_ms=30_000)
    finally:
        await admin.close()


async def group_lag(bootstrap: str, group: str, topic: str) -> int:
    """Records of ``topic`` not yet committed by ``group`` (-1 when unknown)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await consumer.start()
    await admin.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or set()]
        if not tps:
            return -1
        ends = await consumer.end_offsets(tps)
        committed = await admin.list_consumer_group_offsets(group, partitions=tps)
        lag = 0
        for tp in tps:
            meta = committed.get(tp)
            lag += max(0, ends[tp] - (meta.offset if meta is not None and meta.offset >= 0 else 0))
        return lag
    finally:
        await consumer.stop()
        await admin.close()


# -- writing -----------------------------------------------------------------------------------


@dataclass
class Write:
    """One write request: sent and answered (wall ms), the ids acked, entries failed."""

    sent_ms: int
    done_ms: int
    ok: dict[str, int | None]
    failed: int
    #: why, for the first entry that failed (the answer's durable and message, or the error)
    why: str = ""


async def paced(rate: float, stop: asyncio.Event, fn: Callable[[int], Coroutine[Any, Any, None]]) -> None:
    """Start ``fn(i)`` at ``rate`` per second (open loop) until ``stop``, then wait for them all."""
    tasks: set[asyncio.Task[None]] = set()
    start = time.monotonic()
    i = 0
    while not stop.is_set():
        t = asyncio.create_task(fn(i))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        i += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=max(0.0, start + i / rate - time.monotonic()))
    if tasks:
        await asyncio.wait(tasks, timeout=60)


async def post(s: aiohttp.ClientSession, url: str, path: str, body: bytes, timeout_s: float = 30.0) -> Write:
    """POST one write request; every entry of a request that got no answer counts as failed."""
    sent = now_ms()
    try:
        async with s.post(
            url + path,
            data=body,
            headers={"content-type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as r:
            raw = await r.read()
        doc = orjson.loads(raw)
        results = doc["results"] if path.endswith("/batch") and r.status == 200 else [doc]
        ok = {x["id"]: x.get("partition") for x in results if x.get("durable") == "SUCCESS"}
        bad = [x for x in results if x.get("durable") != "SUCCESS"]
        why = f"HTTP {r.status} {bad[0].get('durable')}: {bad[0].get('message')}" if bad else ""
        return Write(sent, now_ms(), ok, len(results) - len(ok), why)
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        n = body.count(b'"namespace"')
        return Write(sent, now_ms(), {}, max(1, n), f"{type(exc).__name__}: {exc}")


async def trickle(
    s: aiohttp.ClientSession, url: str, ns: str, prefix: str, stop: asyncio.Event, out: list[Write]
) -> None:
    """Immediate single writes at ``TRICKLE_RATE``/s with ids ``<prefix><n>`` until ``stop``;
    each answer is appended to ``out`` as it comes."""

    async def one(i: int) -> None:
        body = orjson.dumps({"namespace": ns, "id": f"{prefix}{i}", "key": f"{prefix}{i}", "payload": {"pad": PAD}})
        out.append(await post(s, url, "/v1/log", body, timeout_s=10.0))

    await paced(TRICKLE_RATE, stop, one)


def acked(writes: Iterable[Write]) -> dict[str, int | None]:
    ids: dict[str, int | None] = {}
    for w in writes:
        ids.update(w.ok)
    return ids


# -- raw relay (the baseline of part 1) --------------------------------------------------------


class _Announce(ConsumerRebalanceListener):  # type: ignore[misc]
    async def on_partitions_revoked(self, revoked: Any) -> None:
        print("assigned", flush=True)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        print("assigned " + ",".join(str(tp.partition) for tp in sorted(assigned)), flush=True)


async def relay_main(group: str, src: str, dst: str, session_s: float, instance: str) -> None:
    """Child process: consume ``src`` in ``group``, produce every record to ``dst`` (same key,
    same headers); prints ``assigned <partitions>`` on each rebalance."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=BROKER,
        group_id=group,
        group_instance_id=instance or None,
        session_timeout_ms=int(session_s * 1000),
        heartbeat_interval_ms=int(min(3.0, session_s / 3) * 1000),
        enable_auto_commit=True,
        auto_commit_interval_ms=500,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(bootstrap_servers=BROKER, acks="all", enable_idempotence=True)
    consumer.subscribe([src], listener=_Announce())
    await consumer.start()
    await producer.start()
    while True:
        batch = await consumer.getmany(timeout_ms=200)
        futures = [
            await producer.send(dst, value=r.value, key=r.key, headers=list(r.headers))
            for records in batch.values()
            for r in records
        ]
        if futures:
            await asyncio.gather(*futures)


class Relay:
    """One raw relay child process; ``assigned`` is its latest assignment."""

    def __init__(self, group: str, src: str, dst: str, instance: str, log: Path) -> None:
        self.args = [group, src, dst, str(SESSION_S), instance]
        self.log = log
        self.assigned: set[int] = set()
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._err = open(log, "ab")  # closed in kill()

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.recovery", "--raw-relay", *self.args,
            stdout=asyncio.subprocess.PIPE, stderr=self._err,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            words = line.decode().split()
            if words and words[0] == "assigned":
                self.assigned = {int(p) for p in words[1].split(",")} if len(words) > 1 else set()

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await asyncio.wait_for(self.proc.wait(), timeout=30)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        self._err.close()


async def wait_until(done: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} within {timeout_s:.0f} s")
        await asyncio.sleep(0.1)


async def raw_feed(topic: str, prefix: str, stop: asyncio.Event, parts: dict[str, int]) -> None:
    """The relay's input: records at ``TRICKLE_RATE``/s, id in the header; ``parts`` id -> partition."""
    producer = AIOKafkaProducer(bootstrap_servers=BROKER, acks="all", enable_idempotence=True)
    await producer.start()
    try:

        async def one(i: int) -> None:
            rid = f"{prefix}{i}"
            fut = await producer.send(topic, value=PAD.encode(), key=rid.encode(), headers=[(ID_HEADER, rid.encode())])
            parts[rid] = (await fut).partition

        await paced(TRICKLE_RATE, stop, one)
    finally:
        await producer.stop()


async def raw_takeover(root: Path, *, restart: bool, static: bool) -> float:
    """Seconds from the (re)start (restart) or the kill (for good) to the first relayed record
    of the killed member's partitions."""
    tag = uuid.uuid4().hex[:8]
    src, dst, group = f"bench.rec.rawin.{tag}", f"bench.rec.rawout.{tag}", f"bench-rec-raw-{tag}"
    await ensure_topics(BROKER, [TopicSpec(src, PARTITIONS, 1), TopicSpec(dst, PARTITIONS, 1)])
    log = root / f"relay-{tag}.log"
    a = Relay(group, src, dst, f"relay-{tag}-a" if static else "", log)
    b = Relay(group, src, dst, f"relay-{tag}-b" if static else "", log)
    watch = Watch(BROKER, dst)
    stop = asyncio.Event()
    parts: dict[str, int] = {}
    feed: asyncio.Task[None] | None = None
    try:
        await a.start()
        if restart:
            await wait_until(lambda: len(a.assigned) == PARTITIONS, START_TIMEOUT_S, "relay assignment")
        else:
            await b.start()
            await wait_until(
                lambda: bool(a.assigned) and bool(b.assigned) and len(a.assigned | b.assigned) == PARTITIONS,
                START_TIMEOUT_S,
                "two-member relay assignment",
            )
        await watch.start()
        feed = asyncio.create_task(raw_feed(src, "r", stop, parts))
        await watch.wait_for(lambda: len(watch.first) >= 10, 60)
        dead = set(a.assigned)
        kill_ms = now_ms()
        await a.kill()
        if restart:
            a = Relay(group, src, dst, a.args[4], log)
            await a.start()
        t0 = now_ms()

        def mine() -> set[str]:
            return {rid for rid, p in list(parts.items()) if p in dead}

        since = t0 if restart else kill_ms
        await watch.wait_for(lambda: watch.first_from(since, mine()) is not None, SESSION_S + 120)
        first = watch.first_from(since, mine())
        return float("nan") if first is None else (first - since) / 1000
    finally:
        stop.set()
        if feed is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(feed, timeout=60)
        await a.kill()
        await b.kill()
        await watch.stop()
        await delete_topics(BROKER, lambda t: t in (src, dst))



class TrickleRun:
    """What both take-over runs share: a namespace delivering to a fresh kafka topic, a watch
    on that topic, and a trickle of writes (started with :meth:`trickle`, ended with
    :meth:`end_trickle`). Use as ``async with``: on the way out the trickle ends, the workers
    stop and the run's topics are deleted."""

    def __init__(self, root: Path, names: list[str]) -> None:
        tag = uuid.uuid4().hex[:8]
        self.ns, self.out = f"brec{tag}", f"bench.rec.out.{tag}"
        self.app = f"bench-rec-{tag}"
        #: one worker of the app per name, each with its own folder under ``root``
        self.workers = [WorkerProc(root / name, self.app) for name in names]
        self.watch = Watch(BROKER, self.out)
        self.stop = asyncio.Event()
        self.trickled: list[Write] = []
        self._writes: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TrickleRun:
        await ensure_topics(BROKER, [TopicSpec(self.out, PARTITIONS, 1)])
        return self

    async def start(self, s: aiohttp.ClientSession, w: WorkerProc) -> None:
        """Start ``w`` with the namespace and wait until it holds every WAL partition."""
        w.start()
        await w.wait_health(s, has_commands, "commands partitions", START_TIMEOUT_S)
        await put_namespace(s, w.url, self.ns, {"type": "kafka", "topic": self.out})
        await w.wait_health(s, lambda d: len(wal_parts(d, self.ns)) == PARTITIONS, "WAL partitions", START_TIMEOUT_S)

    def trickle(self, s: aiohttp.ClientSession, url: str, prefix: str) -> None:
        self._writes = asyncio.create_task(trickle(s, url, self.ns, prefix, self.stop, self.trickled))

    async def end_trickle(self) -> set[str]:
        """Stop the trickle, wait until every acknowledged write of it is delivered (60 s at
        most) and return their ids."""
        self.stop.set()
        if self._writes is not None:
            await asyncio.wait_for(self._writes, timeout=90)
            self._writes = None
        t_ids = set(acked(self.trickled))
        await self.watch.wait_for(lambda: t_ids <= self.watch.first.keys(), 60)
        return t_ids

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        if self._writes is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writes, timeout=90)
        for w in self.workers:
            w.stop()
        await self.watch.stop()
        await delete_topics(BROKER, lambda t: t == self.out or self.ns in t or t.startswith(self.app))


# -- part 1a: restart after SIGKILL ------------------------------------------------------------


@dataclass
class Restart:
    first_delivery_s: float = float("nan")
    health_s: float = float("nan")
    assigned_s: float = float("nan")
    writes_back_s: float = float("nan")
    scheduled_at_kill: bool = False
    down_lat: dict[str, float] = field(default_factory=dict)
    all_lat: dict[str, float] = field(default_factory=dict)
    early: int = 0
    missing: int = 0
    failed_writes: int = 0
    trickle_missing: int = 0


async def run_restart(root: Path, s: aiohttp.ClientSession) -> Restart:
    res = Restart()
    async with TrickleRun(root, ["restart"]) as run:
        [w], ns, watch, trickled = run.workers, run.ns, run.watch, run.trickled
        await run.start(s, w)
        await watch.start()
        run.trickle(s, w.url, "t")
        kill_at = now_ms() + 5000 + PROBES  # time to write the probes and let the worker take them
        span = (DUE_LAST_S - DUE_FIRST_S) * 1000
        dues = {f"p{i:05d}": kill_at + int(DUE_FIRST_S * 1000 + span * i / max(1, PROBES - 1)) for i in range(PROBES)}
        load = await post_batches(s, w.url, probe_bodies(ns, dues), 2, time.monotonic() + 60)
        if load.failures:
            raise RuntimeError(f"probe writes failed: {load.failures} {load.errors[:2]}")
        while now_ms() < kill_at - 300:
            if await group_lag(BROKER, w.app_id, f"wal.{ns}") == 0:
                res.scheduled_at_kill = True
                break
            await asyncio.sleep(0.3)
        await asyncio.sleep(max(0.0, kill_at / 1000 - time.time()))
        say(f"restart: {PROBES} probes written (taken in by the worker: {res.scheduled_at_kill}); SIGKILL")

        kill_ms = now_ms()
        w.kill()
        w.start()
        t0 = now_ms()
        health_ms: int | None = None
        assigned_ms: int | None = None
        while (health_ms is None or assigned_ms is None) and now_ms() - t0 < START_TIMEOUT_S * 1000:
            if not w.alive():
                raise RuntimeError(f"restarted worker exited; see {w.log_path}")
            doc = await w.health(s, timeout_s=1.0)
            if doc is not None and health_ms is None:
                health_ms = now_ms()
            if len(wal_parts(doc, ns)) == PARTITIONS and assigned_ms is None:
                assigned_ms = now_ms()
            await asyncio.sleep(0.05)
        res.health_s = float("nan") if health_ms is None else (health_ms - t0) / 1000
        res.assigned_s = float("nan") if assigned_ms is None else (assigned_ms - t0) / 1000
        say(f"restart: health after {res.health_s:.1f} s, WAL partitions after {res.assigned_s:.1f} s")
        last_due = max(dues.values())
        await watch.wait_for(lambda: all(p in watch.first for p in dues), last_due / 1000 - time.time() + 120)
        t_ids = await run.end_trickle()

        first = watch.first_from(t0)
        res.first_delivery_s = float("nan") if first is None else (first - t0) / 1000
        back = [x.done_ms for x in trickled if x.sent_ms >= t0 and x.ok]
        res.writes_back_s = (min(back) - t0) / 1000 if back else float("nan")
        res.failed_writes = sum(x.failed for x in trickled)
        res.trickle_missing = len(t_ids - watch.first.keys())
        late = {p: float(watch.first[p] - due) for p, due in dues.items() if p in watch.first}
        resumed = first if first is not None else now_ms()
        res.down_lat = stats_ms([x for p, x in late.items() if kill_ms <= dues[p] <= resumed])
        res.all_lat = stats_ms(list(late.values()))
        res.early = sum(1 for x in late.values() if x < 0)
        res.missing = len(dues) - len(late)
        return res


# -- part 1b: one of two workers dies for good ---------------------------------------------------


@dataclass
class Dies:
    takeover_s: float = float("nan")
    any_delivery_s: float = float("nan")
    dead_parts: list[int] = field(default_factory=list)
    trickle_missing: int = 0


async def run_dies(root: Path, s: aiohttp.ClientSession) -> Dies:
    res = Dies()
    async with TrickleRun(root, ["dies-a", "dies-b"]) as run:
        [a, b], ns, watch, trickled = run.workers, run.ns, run.watch, run.trickled
        await run.start(s, a)
        b.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        steady = 0
        while steady < 3:  # the same split seen three times in a row: the rebalance is over
            if time.monotonic() > deadline or not (a.alive() and b.alive()):
                raise RuntimeError(f"two workers never shared the partitions; see {a.log_path}, {b.log_path}")
            pa, pb = wal_parts(await a.health(s), ns), wal_parts(await b.health(s), ns)
            split = bool(pa) and bool(pb) and not (pa & pb) and len(pa | pb) == PARTITIONS
            steady = steady + 1 if split else 0
            await asyncio.sleep(1.0)
        await watch.start()
        run.trickle(s, b.url, "d")
        await watch.wait_for(lambda: len(watch.first) >= 20, 60)
        res.dead_parts = sorted(wal_parts(await a.health(s), ns))
        say(f"dies: SIGKILL the worker holding partitions {res.dead_parts}, not restarted")
        kill_ms = now_ms()
        a.kill()

        def dead_ids() -> set[str]:
            return {rid for x in list(trickled) for rid, p in x.ok.items() if p in res.dead_parts}

        await watch.wait_for(lambda: watch.first_from(kill_ms, dead_ids()) is not None, SESSION_S + 120)
        t_ids = await run.end_trickle()
        first = watch.first_from(kill_ms, dead_ids())
        res.takeover_s = float("nan") if first is None else (first - kill_ms) / 1000
        any_first = watch.first_from(kill_ms)
        res.any_delivery_s = float("nan") if any_first is None else (any_first - kill_ms) / 1000
        res.trickle_missing = len(t_ids - watch.first.keys())
        return res


# -- part 2: catch-up after a target outage ------------------------------------------------------


async def delivered_total(s: aiohttp.ClientSession, url: str, ns: str) -> float:
    """The worker's ``walstream_delivered_total`` for ``ns`` (nan when it does not answer)."""
    try:
        async with s.get(f"{url}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r:
            text = await r.text()
    except (aiohttp.ClientError, TimeoutError):
        return float("nan")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("walstream_delivered_total{") and f'namespace="{ns}"' in line
    )


def west_running() -> bool:
    """Whether this stack's kafka-west runs (by its pid file, as ``walstream stack status``)."""
    from walstream.stack.stack import SECOND_REGION, runners

    return bool(runners([SECOND_REGION])[0].running())


async def west(command: str) -> None:
    """``walstream stack up|down --services kafka-west``: kafka-west only, never another service."""
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "walstream.cli", "stack", command, "--services", "kafka-west"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"stack {command} kafka-west failed: {(proc.stdout + proc.stderr).strip()[-500:]}")


@dataclass
class Catchup:
    written: int = 0
    backlog: int = 0
    drain_s: float = float("nan")
    drain_rate: float = float("nan")
    appended_rate: float = float("nan")
    first_after_up_s: float = float("nan")
    outage_s: float = float("nan")
    down_cmd_s: float = float("nan")
    up_cmd_s: float = float("nan")
    undelivered: int = 0
    #: WAL partition -> entries of it not in the target at the end
    undelivered_by_part: dict[int, int] = field(default_factory=dict)
    #: acked before the outage / of those, in the target before it
    warm_acked: int = 0
    warm_delivered: int = 0
    timed_out: bool = False
    acks: dict[str, dict[str, float]] = field(default_factory=dict)
    raw_rate: float = float("nan")
    raw_n: int = 0


def ack_stats(writes: list[Write]) -> dict[str, float]:
    out = stats_ms([float(w.done_ms - w.sent_ms) for w in writes])
    out["failed"] = float(sum(w.failed for w in writes))
    reasons = {w.why for w in writes if w.failed}
    if reasons:
        print(f"    write failures ({len(reasons)} kinds): {'; '.join(sorted(reasons)[:3])}", flush=True)
    return out


async def raw_produce(bootstrap: str, topic: str, n: int) -> float:
    """entries/s of a plain producer configured as the kafka target's (acks=all, idempotent),
    records of the benchmark's payload, keys and headers."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        t0 = time.perf_counter()
        futures = []
        for i in range(n):
            payload = orjson.dumps({"i": i, "pad": PAD})
            headers = [(ID_HEADER, f"raw{i}".encode()), ("walstream-ts", str(time.time_ns() // 1000).encode())]
            futures.append(await producer.send(topic, value=payload, key=f"key{i % KEYS}".encode(), headers=headers))
        await asyncio.gather(*futures)
        return n / (time.perf_counter() - t0)
    finally:
        await producer.stop()


async def run_catchup(root: Path, s: aiohttp.ClientSession) -> Catchup:
    res = Catchup()
    was_running = west_running()
    tag = uuid.uuid4().hex[:8]
    ns, topic, raw_topic, app = f"brec{tag}", f"bench.rec.west.{tag}", f"bench.rec.westraw.{tag}", f"bench-rec-{tag}"
    w = WorkerProc(root / "catchup", app)
    watch: Watch | None = None
    stop = asyncio.Event()
    writes: list[Write] = []
    inflight: dict[int, int] = {}  # request number -> sent ms, until answered
    writer: asyncio.Task[None] | None = None
    try:
        if not was_running:
            say("catch-up: starting kafka-west")
            await west("up")
        await ensure_topics(
            WEST,
            [
                TopicSpec(topic, PARTITIONS, 1, {"message.timestamp.type": "LogAppendTime"}),
                TopicSpec(raw_topic, PARTITIONS, 1),
            ],
        )
        w.start()
        await w.wait_health(s, has_commands, "commands partitions", START_TIMEOUT_S)
        await put_namespace(s, w.url, ns, {"type": "kafka", "topic": topic, "bootstrap": WEST})
        await w.wait_health(s, lambda d: len(wal_parts(d, ns)) == PARTITIONS, "WAL partitions", START_TIMEOUT_S)

        async def one(i: int) -> None:
            first = i * WRITE_BATCH
            entries = [
                {"namespace": ns, "id": f"c{n}", "key": f"key{n % KEYS}", "payload": {"i": n, "pad": PAD}}
                for n in range(first, first + WRITE_BATCH)
            ]
            inflight[i] = now_ms()
            try:
                writes.append(await post(s, w.url, "/v1/log/batch", orjson.dumps({"entries": entries})))
            finally:
                inflight.pop(i, None)

        # the warm-up starts once the worker delivers: a fresh worker can take many seconds
        # before its first delivery (committed offsets not readable yet on a busy machine)
        await post(s, w.url, "/v1/log", orjson.dumps({"namespace": ns, "id": "live", "payload": {"pad": PAD}}))
        t_live = time.monotonic()
        while await delivered_total(s, w.url, ns) < 1:
            if time.monotonic() - t_live > START_TIMEOUT_S:
                raise RuntimeError(f"no delivery to kafka-west within {START_TIMEOUT_S:.0f} s; see {w.log_path}")
            await asyncio.sleep(0.5)
        say(f"catch-up: first delivery to kafka-west {time.monotonic() - t_live:.1f} s after the first write")
        writer = asyncio.create_task(paced(RATE / WRITE_BATCH, stop, one))
        await asyncio.sleep(WARM_S)
        say(
            f"catch-up: {len(acked(writes))} acked, {await delivered_total(s, w.url, ns):.0f} delivered (worker's "
            "metrics) with the target up; stopping kafka-west"
        )
        down0 = now_ms()
        await west("down")
        down1 = now_ms()
        await asyncio.sleep(OUTAGE_S)
        up0 = now_ms()
        await west("up")
        up1 = now_ms()
        res.down_cmd_s, res.up_cmd_s = (down1 - down0) / 1000, (up1 - up0) / 1000
        res.outage_s = (up1 - down1) / 1000
        say(f"catch-up: kafka-west back after {res.outage_s:.0f} s down; {len(acked(writes))} acked so far")

        watch = Watch(WEST, topic)
        await watch.start()

        # every request sent before the target came back gets its answer (or times out, 30 s)
        await wait_until(lambda: not any(t < up1 for t in list(inflight.values())), 60, "answers of outage writes")
        before_up = {rid for x in list(writes) if x.sent_ms < up1 for rid in x.ok}
        watch.expect(before_up)
        res.timed_out = not await watch.wait_for(lambda: not watch.waiting, CATCHUP_TIMEOUT_S)
        stop.set()
        await asyncio.wait_for(writer, timeout=120)
        writer = None
        all_ids = set(acked(writes))
        res.written = len(all_ids)
        watch.expect(all_ids)
        await watch.wait_for(lambda: not watch.waiting, TAIL_S)
        res.undelivered = len(watch.waiting)
        parts_of = acked(writes)
        for rid in watch.waiting:
            p = parts_of.get(rid)
            res.undelivered_by_part[-1 if p is None else p] = res.undelivered_by_part.get(-1 if p is None else p, 0) + 1
        seen = watch.first

        # the broker takes records until it has stopped (``stack down`` returned): what is
        # appended after that was held by the worker through the outage
        warm = {rid for x in writes if x.sent_ms < down0 for rid in x.ok}
        res.warm_acked, res.warm_delivered = len(warm), sum(1 for rid in warm if seen.get(rid, down1) < down1)
        backlog = {rid for rid in before_up if rid in seen and seen[rid] >= down1}
        res.backlog = len(backlog)
        start = watch.first_from(down1)
        if backlog and start is not None:
            end = max(seen[rid] for rid in backlog)
            res.drain_s = max(0.001, (end - start) / 1000)
            res.drain_rate = len(backlog) / res.drain_s
            res.appended_rate = sum(1 for ts, _ in watch.stamps if start <= ts <= end) / res.drain_s
            res.first_after_up_s = (start - up1) / 1000
        else:
            end = now_ms()
        res.acks = {
            "before": ack_stats([x for x in writes if x.sent_ms < down0]),
            "outage": ack_stats([x for x in writes if down0 <= x.sent_ms < up1]),
            "catch-up": ack_stats([x for x in writes if up1 <= x.sent_ms <= end]),
        }
        say(f"catch-up: backlog of {res.backlog} drained in {res.drain_s:.1f} s; raw producer next")
        res.raw_n = max(1000, res.backlog)
        res.raw_rate = await raw_produce(WEST, raw_topic, res.raw_n)
        return res
    finally:
        stop.set()
        if writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer, timeout=120)
        w.stop()
        if watch is not None:
            await watch.stop()
        with contextlib.suppress(Exception):
            await delete_topics(BROKER, lambda t: ns in t or t.startswith(app))
        try:
            if not west_running():
                await west("up")  # back as it was, or up to delete the run's topics
            with contextlib.suppress(Exception):  # an interrupted run may find it still starting
                await delete_topics(WEST, lambda t: t in (topic, raw_topic))
        finally:
            if not was_running:
                say("catch-up: stopping kafka-west (it was not running at the start)")
                await west("down")


# -- report --------------------------------------------------------------------------------------


def fmt(x: float, unit: str = "", digits: int = 1) -> str:
    return "n/a" if x != x else f"{x:,.{digits}f}{unit}"


def ratio(a: float, b: float) -> str:
    return "n/a" if a != a or b != b or b == 0 else f"{a / b:.2f}x"


def lat3(d: dict[str, float]) -> str:
    return f"{fmt(d.get('p50', float('nan')), '', 0)} / {fmt(d.get('p99', float('nan')), '', 0)} / " + fmt(
        d.get("max", float("nan")), "", 0
    )


@dataclass
class Report:
    restart: Restart | None = None
    dies: Dies | None = None
    raw_static: float = float("nan")
    raw_dynamic: float = float("nan")
    raw_dies: float = float("nan")
    catchup: Catchup | None = None
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)


def print_takeover(r: Report) -> None:
    print(f"\n== take-over (8 partitions, session timeout {SESSION_S:.0f} s, {PROBES} probes due kill+1..20 s) ==")
    if r.restart is not None:
        x = r.restart
        print(
            f"restart after SIGKILL: first delivery {fmt(x.first_delivery_s, ' s', 2)}, /v1/health "
            f"{fmt(x.health_s, ' s', 2)}, WAL partitions assigned {fmt(x.assigned_s, ' s', 2)}, writes acked again "
            f"{fmt(x.writes_back_s, ' s', 2)} (trickle writes failed meanwhile: {x.failed_writes}; probes taken in "
            f"before the kill: {x.scheduled_at_kill})"
        )
        print(
            f"  lateness ms p50/p99/max: due while down/recovering ({x.down_lat.get('n', 0):.0f}) {lat3(x.down_lat)}; "
            f"all ({x.all_lat.get('n', 0):.0f}) {lat3(x.all_lat)}; early {x.early}, missing {x.missing}, "
            f"trickle missing {x.trickle_missing}"
        )
    if r.dies is not None:
        d = r.dies
        print(
            f"dies for good: survivor delivers partitions {d.dead_parts} after {fmt(d.takeover_s, ' s', 2)} "
            f"(anything delivered after {fmt(d.any_delivery_s, ' s', 2)}; trickle missing {d.trickle_missing})"
        )
    print(
        f"raw relay: restart -> first record {fmt(r.raw_static, ' s', 2)} static membership, "
        f"{fmt(r.raw_dynamic, ' s', 2)} without; a member dies for good -> {fmt(r.raw_dies, ' s', 2)}"
    )
    if r.restart is not None:
        x = r.restart
        r.rows += [
            ("restart after SIGKILL → first delivery (s; raw: relay, static membership)",
             fmt(x.first_delivery_s, "", 2), fmt(r.raw_static, "", 2), ratio(x.first_delivery_s, r.raw_static)),
            ("restart → /v1/health answers (s)", fmt(x.health_s, "", 2), "", ""),
            ("restart → all 8 WAL partitions assigned (s)", fmt(x.assigned_s, "", 2), "", ""),
            ("restart → writes acked again (s)", fmt(x.writes_back_s, "", 2), "", ""),
            (f"lateness of entries due while down/recovering, p50 / p99 / max ms (n={x.down_lat.get('n', 0):.0f})",
             lat3(x.down_lat), "", ""),
            ("lateness of all probes, p50 / p99 / max ms", lat3(x.all_lat), "", ""),
            ("probes early / missing (must be 0)", f"{x.early} / {x.missing}", "", ""),
        ]  # fmt: skip
    if r.dies is not None:
        d = r.dies
        r.rows.append(
            (f"dies for good: kill → survivor delivers its partitions (s; session timeout {SESSION_S:.0f} s)",
             fmt(d.takeover_s, "", 2), fmt(r.raw_dies, "", 2), ratio(d.takeover_s, r.raw_dies))
        )  # fmt: skip
    r.rows.append(("raw relay restart without static membership (s)", "", fmt(r.raw_dynamic, "", 2), ""))


def print_catchup(r: Report) -> None:
    c = r.catchup
    if c is None:
        return
    print(
        f"\n== catch-up after a {c.outage_s:.0f} s kafka-west outage (stopped {OUTAGE_S:.0f} s + {c.up_cmd_s:.0f} s "
        f"to start; {RATE:.0f} entries/s in batches of "
        f"{WRITE_BATCH}, {KEYS} keys, ordering by key) =="
    )
    print(
        f"backlog {c.backlog:,} drained in {fmt(c.drain_s, ' s')} = {fmt(c.drain_rate, '/s', 0)} "
        f"(all appends {fmt(c.appended_rate, '/s', 0)}); first delivery {fmt(c.first_after_up_s, ' s', 2)} after "
        f"`stack up` returned (down took {c.down_cmd_s:.1f} s, up {c.up_cmd_s:.1f} s); raw producer "
        f"{fmt(c.raw_rate, '/s', 0)} ({c.raw_n:,} records)"
    )
    for phase, a in c.acks.items():
        print(
            f"  write acks {phase:9} p50 {fmt(a['p50'], ' ms', 0)}  p99 {fmt(a['p99'], ' ms', 0)}  "
            f"max {fmt(a['max'], ' ms', 0)}  requests {a['n']:.0f}  entries failed {a['failed']:.0f}"
        )
    print(
        f"  delivered before the outage {c.warm_delivered:,} of the {c.warm_acked:,} acked by then; "
        f"written {c.written:,}; not in the target {TAIL_S:.0f} s after the writes stopped: {c.undelivered:,}"
        + (f" (by WAL partition {dict(sorted(c.undelivered_by_part.items()))})" if c.undelivered else "")
        + (f"; backlog NOT DRAINED within {CATCHUP_TIMEOUT_S:.0f} s" if c.timed_out else "")
    )
    before, during = c.acks["before"], c.acks["catch-up"]
    r.rows += [
        (f"catch-up after {c.outage_s:.0f} s outage: backlog drained, entries/s (n={c.backlog:,}; raw: producer)",
         fmt(c.drain_rate, "", 0), fmt(c.raw_rate, "", 0), ratio(c.drain_rate, c.raw_rate)),
        ("target back (`stack up` returned) → first delivery (s)", fmt(c.first_after_up_s, "", 2), "", ""),
        ("write ack p50 during catch-up, ms (raw: same worker before the outage)",
         fmt(during["p50"], "", 0), fmt(before["p50"], "", 0), ratio(during["p50"], before["p50"])),
        ("write ack p99 during catch-up, ms (raw: same worker before the outage)",
         fmt(during["p99"], "", 0), fmt(before["p99"], "", 0), ratio(during["p99"], before["p99"])),
        ("entries failed during catch-up / backlog drained in time",
         f"{during['failed']:.0f} / {'yes' if not c.timed_out else 'NO'}", "", ""),
    ]  # fmt: skip


def command() -> str:
    knobs = sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith("BENCH_REC_"))
    extra = (
        [f"WALSTREAM_SESSION_TIMEOUT_S={os.environ['WALSTREAM_SESSION_TIMEOUT_S']}"]
        if ("WALSTREAM_SESSION_TIMEOUT_S" in os.environ)
        else []
    )
    return " ".join([*knobs, *extra, "python -m bench.recovery"])


def print_table(r: Report) -> None:
    print("\n| figure | walstream | raw | ratio |\n|---|---|---|---|")
    for row in r.rows:
        print("| " + " | ".join(row) + " |")
    print(f"\ncommand: `{command()}`; commit {git_state()}")


#: ERROR lines the outage itself causes (aiokafka logs every failed connect to kafka-west)
OUTAGE_NOISE = ("Unable connect to", "Unable to update metadata", "Connect call failed")


def process_logs(root: Path) -> list[Path]:
    """The workers' and relays' logs (not RocksDB's own ``*.log`` files in the datadirs)."""
    return [p for p in root.rglob("*.log") if p.name == "worker.log" or p.name.startswith("relay-")]


def log_problems(root: Path) -> list[Path]:
    """Logs with a traceback or an ERROR line the outage does not explain (a SIGKILLed
    process's log just ends; that is no error)."""
    bad = []
    for p in process_logs(root):
        lines = p.read_text(errors="replace").splitlines()
        if any("Traceback" in x or ("[ERROR]" in x and not any(n in x for n in OUTAGE_NOISE)) for x in lines):
            bad.append(p)
    return bad


def clean_up(root: Path) -> None:
    """Remove the run's temp dir; its logs are copied beside it first when asked or erroneous."""
    bad = log_problems(root)
    if KEEP_LOG or bad:
        keep = root.parent / f"{root.name}-logs"
        keep.mkdir(exist_ok=True)
        for p in process_logs(root):
            shutil.copy(p, keep / f"{p.parent.name}-{p.name}")
        print(f"logs kept in {keep}" + (f" (errors in {', '.join(p.parent.name for p in bad)})" if bad else ""))
    shutil.rmtree(root, ignore_errors=True)


async def main() -> None:
    print(
        f"walstream recovery bench: parts {sorted(RUN_PARTS)}, {PARTITIONS} partitions, broker {BROKER}, "
        f"target cluster for catch-up {WEST}, session timeout {SESSION_S:.0f} s, code {git_state()}",
        flush=True,
    )
    root = Path(tempfile.mkdtemp(prefix="walstream-bench-rec-"))
    r = Report()
    try:
        async with aiohttp.ClientSession() as s:
            if "takeover" in RUN_PARTS:
                r.restart = await run_restart(root, s)
                r.dies = await run_dies(root, s)
                say("raw relay: restart with static membership")
                r.raw_static = await raw_takeover(root, restart=True, static=True)
                say("raw relay: restart without")
                r.raw_dynamic = await raw_takeover(root, restart=True, static=False)
                say("raw relay: a member dies for good")
                r.raw_dies = await raw_takeover(root, restart=False, static=False)
                print_takeover(r)
            if "catchup" in RUN_PARTS:
                r.catchup = await run_catchup(root, s)
                print_catchup(r)
    finally:
        clean_up(root)
    print_table(r)


async def run_main() -> None:
    """``main`` with SIGTERM/SIGINT cancelling it, so that its clean-up runs (workers stopped,
    kafka-west restored, topics and temp dirs removed) also under ``timeout`` or Ctrl-C."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    await main()


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--raw-relay":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(relay_main(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]), sys.argv[6]))
    else:
        asyncio.run(run_main())
