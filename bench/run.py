"""``make bench``: walstream's throughput and ack latency next to raw aiokafka, same broker, one run.

Run ``python -m bench.run`` with Kafka at ``WALSTREAM_BROKER`` (default ``127.0.0.1:9092``).
Every rung runs ``BENCH_REPEATS`` times, the repeats interleaved (run 1 of every rung, then
run 2, ...) so that a busy minute on the machine does not land on one rung only; the table
printed at the end shows the median of the runs. Entries are ~1 KB, topics have 8 partitions,
every Kafka producer (raw or walstream's) uses ``acks=all`` with idempotence.

Rungs, each measured on fresh topics / a fresh namespace per run:

- **L2 raw loop**: an aiokafka producer sends ``BENCH_N`` records (``linger_ms=2``, 256 KiB
  batches) while an aiokafka consumer (partitions assigned, read from the beginning) reads
  them back; entries/s from the first send to the last record read.
- **raw produce**: the same producer sends ``BENCH_N`` records and awaits every ack; entries/s.
- **L3 noop**: one ``walstream worker``; ``BENCH_N`` entries through ``POST /v1/log/batch``
  (batches of 500, 4 concurrent clients) into a namespace whose only target is ``noop``.
  End to end: entries/s from the first POST until the worker's
  ``walstream_delivered_total`` for the namespace (``GET /metrics``, polled every 0.2 s)
  reaches the entries written; writes acknowledged: entries/s until the last POST is answered.
- **L3 kafka**: the same, but the namespace's target is ``{"type": "kafka", "topic": <fresh
  topic>}`` and the end is when that topic holds every entry (sum of its end offsets).
- **ack latency**: single writes at a fixed rate (``BENCH_RATE`` per second for
  ``BENCH_SECONDS``, open loop): raw ``send_and_wait`` of a 1 KB record, next to
  ``POST /v1/log`` (no client id) to the L3 worker; p50/p99 of the time to the answer.
- **fleet**: a fresh app id; single ``POST /v1/log`` *with* a client ``id`` at the same rate,
  first to one worker alone, then (two more workers of that app id started, the namespace's
  partitions spread over all three) round-robin over the three. p50/p99, and the fleet's p99
  as a multiple of the single worker's (aim <= 1.5).

Ratios: L3 noop and L3 kafka end to end as % of L2 (aim >= 40 %), writes acknowledged as % of
raw produce (aim >= 60 %), fleet p99 / single-worker p99.

CPU: for each run, CPU seconds per 1,000 entries (latency rungs: per 1,000 requests) of the
worker process(es) (utime+stime of ``/proc/<pid>/stat``, a fleet's three summed), of this bench
process (``getrusage``), and of the Kafka broker ``walstream stack`` runs (its pid file), as
deltas over the run (see :mod:`bench.procstat`). The broker is shared: its figure includes
whatever else uses it meanwhile. Medians are taken per process.

Knobs (environment): ``BENCH_N`` entries per throughput run (default 200000);
``BENCH_REPEATS`` (3); ``BENCH_RATE`` requests/s of the latency rungs (200); ``BENCH_SECONDS``
per latency run (10); ``BENCH_TIMEOUT_S`` longest one run may take (1800);
``BENCH_STALL_S`` a run whose count (records read, entries delivered) does not move for this
long fails (60); ``WALSTREAM_BROKER``.

Every wait is bounded: worker start-up and partition assignment (180 s), each HTTP request
(120 s; 30 s in the latency rungs, counted as errors), each run (``BENCH_TIMEOUT_S``, and
``BENCH_STALL_S`` without progress). A worker that exits or stalls fails the bench with a
message naming its log, which is then kept (its data dir is not). At the end, also on error,
the workers are stopped, the temp dir removed and every Kafka topic of the run deleted (all
their names carry the run's tag: raw topics, output topics, ``wal.<namespace>`` and the
workers' own topics).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from bench.kafka_view import KafkaView
from bench.procstat import PROCESSES, CpuWindow, kafka_broker_pid
from bench.worker import Worker
from walstream.kafka_admin import TopicSpec, ensure_topics

BROKER = os.environ.get("WALSTREAM_BROKER", "127.0.0.1:9092")
N = int(os.environ.get("BENCH_N", "200000"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
RATE = float(os.environ.get("BENCH_RATE", "200"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
TIMEOUT_S = float(os.environ.get("BENCH_TIMEOUT_S", "1800"))
STALL_S = float(os.environ.get("BENCH_STALL_S", "60"))
#: the environment variables that change what is measured (printed with the command line)
KNOBS = ("BENCH_N", "BENCH_REPEATS", "BENCH_RATE", "BENCH_SECONDS", "BENCH_TIMEOUT_S", "BENCH_STALL_S",
         "WALSTREAM_BROKER")

PARTITIONS = 8
VALUE_BYTES = 1024
BATCH = 500
CLIENTS = 4
FLEET = 3
START_TIMEOUT_S = 180.0
HTTP_TIMEOUT_S = 120.0
ACK_TIMEOUT_S = 30.0
#: how often a run's end is polled: the end time is known to this much; each poll of
#: ``/metrics`` costs the worker some CPU, which counts in its figure
POLL_S = 0.2
WARMUP_S = 1.0
JSON = {"content-type": "application/json"}

T = TypeVar("T")


class BenchError(RuntimeError):
    """A run did not finish: a worker exited or stalled, or a bound was passed."""


@dataclass
class Measure:
    """One run of one rung: its figures, CPU s per 1,000 entries per process, failed items."""

    values: dict[str, float]
    cpu: dict[str, float | None]
    errors: int = 0


@dataclass
class Results:
    """Every run of every rung, by rung name."""

    runs: dict[str, list[Measure]] = field(default_factory=dict)

    def add(self, rung: str, m: Measure) -> Measure:
        self.runs.setdefault(rung, []).append(m)
        return m

    def median(self, rung: str, key: str) -> float | None:
        xs = [m.values[key] for m in self.runs.get(rung, []) if key in m.values]
        return statistics.median(xs) if xs else None

    def cpu(self, rung: str, proc: str) -> float | None:
        xs = [c for m in self.runs.get(rung, []) if (c := m.cpu.get(proc)) is not None]
        return statistics.median(xs) if xs else None

    def errors(self, rung: str) -> int:
        return sum(m.errors for m in self.runs.get(rung, []))


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


async def bounded(aw: Awaitable[T], what: str, timeout_s: float = TIMEOUT_S) -> T:
    try:
        return await asyncio.wait_for(aw, timeout_s)
    except TimeoutError:
        raise BenchError(f"{what}: not done within {timeout_s:.0f} s") from None


def check_alive(workers: Sequence[Worker]) -> None:
    for w in workers:
        if w.proc.poll() is not None:
            raise BenchError(f"worker {w.app_id} exited ({w.proc.returncode}); see {w.log_path}")


def logs(workers: Sequence[Worker]) -> str:
    return ", ".join(str(w.log_path) for w in workers)


async def wait_count(
    what: str, count: Callable[[], Awaitable[float]], goal: float, workers: Sequence[Worker], deadline: float
) -> None:
    """Poll ``count()`` until it reaches ``goal``; fail when a worker exits, the count stays
    put for ``STALL_S``, or the monotonic ``deadline`` passes."""
    last, moved = -1.0, time.monotonic()
    while True:
        check_alive(workers)
        c = await bounded(count(), f"{what}: reading the count", 30.0)
        if c >= goal:
            return
        now = time.monotonic()
        if c != last:
            last, moved = c, now
        if now - moved > STALL_S or now > deadline:
            why = f"no progress for {STALL_S:.0f} s" if now - moved > STALL_S else "run took too long"
            raise BenchError(f"{what}: {c:.0f} of {goal:.0f} ({why}); see {logs(workers)}")
        await asyncio.sleep(POLL_S)


def raw_producer() -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=BROKER, acks="all", enable_idempotence=True, linger_ms=2, max_batch_size=256 * 1024
    )


@contextlib.asynccontextmanager
async def producing_to(topic: str) -> AsyncIterator[AIOKafkaProducer]:
    """A started :func:`raw_producer` that knows ``topic`` (created if missing); stopped on the way out."""
    await ensure_topics(BROKER, [TopicSpec(topic, PARTITIONS, 1)])
    producer = raw_producer()
    await producer.start()
    try:
        await producer.partitions_for(topic)
        yield producer
    finally:
        await producer.stop()


# -- raw aiokafka ------------------------------------------------------------------------------


async def l2_loop(topic: str, n: int, broker_pid: int | None) -> Measure:
    """Produce ``n`` records and read them back with a consumer running meanwhile."""
    await ensure_topics(BROKER, [TopicSpec(topic, PARTITIONS, 1)])
    consumer = AIOKafkaConsumer(bootstrap_servers=BROKER, enable_auto_commit=False, auto_offset_reset="earliest")
    producer = raw_producer()
    await consumer.start()
    await producer.start()
    task: asyncio.Task[None] | None = None
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        await producer.partitions_for(topic)  # metadata before the clock starts
        pad = b"x" * (VALUE_BYTES - 20)
        latencies: list[float] = []

        async def consume() -> None:
            seen, quiet_since = 0, time.monotonic()
            while seen < n:
                batch = await consumer.getmany(timeout_ms=200)
                now = time.time()
                for records in batch.values():
                    for rec in records:
                        latencies.append(now - float(rec.value[:20]))
                        seen += 1
                if batch:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > STALL_S:
                    raise BenchError(f"L2: the consumer read {seen} of {n} records, then nothing for {STALL_S:.0f} s")

        cpu = CpuWindow([], broker_pid)
        started = time.monotonic()
        task = asyncio.create_task(consume())
        futures = [
            await producer.send(topic, value=f"{time.time():<20.6f}".encode() + pad, key=str(i % 1000).encode())
            for i in range(n)
        ]
        await asyncio.gather(*futures)
        await task
        elapsed = time.monotonic() - started
        return Measure(
            {"rate": n / elapsed, "p50_ms": pct(latencies, 50) * 1000, "p99_ms": pct(latencies, 99) * 1000},
            cpu.per_1000(n),
        )
    finally:
        if task is not None and not task.done():
            task.cancel()
        await producer.stop()
        await consumer.stop()


async def raw_produce(topic: str, n: int, broker_pid: int | None) -> Measure:
    """Send ``n`` records and await every ack."""
    async with producing_to(topic) as producer:
        pad = b"x" * VALUE_BYTES
        cpu = CpuWindow([], broker_pid)
        started = time.monotonic()
        futures = [await producer.send(topic, value=pad, key=str(i % 1000).encode()) for i in range(n)]
        await asyncio.gather(*futures)
        elapsed = time.monotonic() - started
        return Measure({"rate": n / elapsed}, cpu.per_1000(n))


async def paced(rate: float, seconds: float, fn: Callable[[int], Coroutine[Any, Any, None]]) -> int:
    """Start ``fn(i)`` at a fixed rate (open loop) for ``seconds``, then wait for all of them
    (each bounds itself). Returns how many were started."""
    tasks: list[asyncio.Task[None]] = []
    interval = 1.0 / rate
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds:
        tasks.append(asyncio.create_task(fn(i)))
        i += 1
        await asyncio.sleep(max(0.0, start + i * interval - time.perf_counter()))
    await asyncio.gather(*tasks)
    return i


async def ack_raw(topic: str, seconds: float, broker_pid: int | None) -> Measure:
    """``send_and_wait`` of single 1 KB records at ``RATE``."""
    async with producing_to(topic) as producer:
        pad = b"x" * VALUE_BYTES
        lat: list[float] = []
        errors = 0

        async def one(i: int) -> None:
            nonlocal errors
            t0 = time.perf_counter()
            try:
                await asyncio.wait_for(producer.send_and_wait(topic, value=pad, key=str(i).encode()), ACK_TIMEOUT_S)
            except (KafkaError, TimeoutError):
                errors += 1
                return
            lat.append(time.perf_counter() - t0)

        cpu = CpuWindow([], broker_pid)
        sent = await paced(RATE, seconds, one)
        return Measure({"p50_ms": pct(lat, 50) * 1000, "p99_ms": pct(lat, 99) * 1000}, cpu.per_1000(sent), errors)


# -- through walstream -------------------------------------------------------------------------


async def delivered(s: aiohttp.ClientSession, url: str, ns: str) -> float:
    """The worker's ``walstream_delivered_total`` for ``ns`` and its noop target."""
    async with s.get(f"{url}/metrics") as r:
        text = await r.text()
    m = re.search(rf'walstream_delivered_total\{{namespace="{re.escape(ns)}",target="noop"\}} ([0-9.e+]+)', text)
    return float(m.group(1)) if m else 0.0


async def put_namespace(s: aiohttp.ClientSession, worker: Worker, ns: str, target: dict[str, str]) -> None:
    async with s.put(f"{worker.url}/v1/namespaces/{ns}", json={"targets": [target]}) as r:
        if r.status != 200:
            raise BenchError(f"PUT namespace {ns}: HTTP {r.status} {await r.text()}; see {worker.log_path}")


async def wait_owned(s: aiohttp.ClientSession, workers: Sequence[Worker], namespaces: Sequence[str]) -> None:
    """Until every partition of each namespace's WAL topic is assigned, and (in a fleet) each
    worker holds some of the first one's, the same for three polls in a row (the rebalance is over)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    want = {f"wal.{ns}:{p}" for ns in namespaces for p in range(PARTITIONS)}
    first = f"wal.{namespaces[0]}:"
    steady = 0
    while steady < 3:
        check_alive(workers)
        if time.monotonic() > deadline:
            raise BenchError(f"partitions of {', '.join(namespaces)} never all assigned; see {logs(workers)}")
        try:
            held = [set((await w.health(s))["assigned"]) for w in workers]
        except (aiohttp.ClientError, TimeoutError):
            held = []
        ok = bool(held) and want <= set().union(*held) and all(any(t.startswith(first) for t in h) for h in held)
        steady = steady + 1 if ok else 0
        await asyncio.sleep(1.0 if ok else 0.5)


async def post_batches(s: aiohttp.ClientSession, worker: Worker, ns: str, n: int) -> tuple[int, int, str]:
    """``n`` entries in batches of ``BATCH`` from ``CLIENTS`` concurrent clients.
    Returns (entries acknowledged durable, entries failed, the first failure's text)."""
    starts = iter(range(0, n, BATCH))  # shared: each batch is taken by exactly one client
    pad = "x" * (VALUE_BYTES - 100)
    written = failed = 0
    first_error = ""

    async def client() -> None:
        nonlocal written, failed, first_error
        for start in starts:
            count = min(n, start + BATCH) - start
            body = orjson.dumps({"entries": [
                {"namespace": ns, "key": str(i % 1000), "payload": {"i": i, "pad": pad}}
                for i in range(start, start + count)
            ]})
            try:
                async with s.post(f"{worker.url}/v1/log/batch", data=body, headers=JSON) as r:
                    raw, status = await r.read(), r.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                check_alive([worker])
                raise BenchError(f"POST /v1/log/batch: {exc!r}; see {worker.log_path}") from exc
            if status == 200:
                ok = sum(1 for x in orjson.loads(raw)["results"] if x.get("durable") == "SUCCESS")
            else:
                ok = 0
            written += ok
            failed += count - ok
            if count > ok and not first_error:
                first_error = f"HTTP {status} {raw[:200].decode(errors='replace')}"

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return written, failed, first_error


async def l3(
    s: aiohttp.ClientSession, worker: Worker, ns: str, n: int, kv: KafkaView, out_topic: str | None,
    broker_pid: int | None,
) -> Measure:
    """``n`` entries written to ``ns``; done when they are all delivered (noop: the worker's
    counter; kafka: records in ``out_topic``)."""
    what = f"L3 {'kafka' if out_topic else 'noop'} ({ns})"
    cpu = CpuWindow([worker.pid], broker_pid)
    started = time.monotonic()
    deadline = started + TIMEOUT_S
    written, failed, first_error = await bounded(post_batches(s, worker, ns, n), f"{what}: writing", TIMEOUT_S)
    acked_s = time.monotonic() - started
    if failed:
        print(f"    {what}: {failed} entries not written: {first_error}", flush=True)

    async def count() -> float:
        if out_topic is None:
            return await delivered(s, worker.url, ns)
        return float(await kv.end_total(out_topic))

    await wait_count(f"{what}: entries delivered", count, written, [worker], deadline)
    elapsed = time.monotonic() - started
    return Measure({"rate": written / elapsed, "acked": written / acked_s}, cpu.per_1000(written), failed)


async def ack_http(
    s: aiohttp.ClientSession, workers: Sequence[Worker], ns: str, seconds: float, id_prefix: str | None,
    broker_pid: int | None,
) -> Measure:
    """Single ``POST /v1/log`` at ``RATE``, round-robin over ``workers``; with a client id
    ``<id_prefix>-<i>`` unless ``id_prefix`` is None."""
    pad = "x" * (VALUE_BYTES - 60)
    lat: list[float] = []
    errors = 0
    per_request = aiohttp.ClientTimeout(total=ACK_TIMEOUT_S)

    async def one(i: int) -> None:
        nonlocal errors
        doc: dict[str, Any] = {"namespace": ns, "key": f"k{i % 1000}", "payload": {"i": i, "pad": pad}}
        if id_prefix is not None:
            doc["id"] = f"{id_prefix}-{i}"
        body = orjson.dumps(doc)
        url = f"{workers[i % len(workers)].url}/v1/log"
        t0 = time.perf_counter()
        try:
            async with s.post(url, data=body, headers=JSON, timeout=per_request) as r:
                await r.read()
                ok = r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        if ok:
            lat.append(time.perf_counter() - t0)
        else:
            errors += 1

    cpu = CpuWindow([w.pid for w in workers], broker_pid)
    sent = await paced(RATE, seconds, one)
    check_alive(workers)
    return Measure({"p50_ms": pct(lat, 50) * 1000, "p99_ms": pct(lat, 99) * 1000}, cpu.per_1000(sent), errors)


# -- the run -----------------------------------------------------------------------------------


class Workers:
    """Every worker the bench starts, each in its own dir under ``root``."""

    def __init__(self, root: Path, prefix: str) -> None:
        self.root = root
        self.prefix = prefix
        self.all: list[Worker] = []

    def start(self, app_id: str | None = None) -> Worker:
        d = self.root / f"worker{len(self.all)}"
        d.mkdir()
        w = Worker(d, app_prefix=self.prefix, partitions=PARTITIONS, broker=BROKER, app_id=app_id)
        self.all.append(w)
        return w

    def close(self, keep_logs: bool) -> list[Path]:
        """Stop every worker; remove ``root``, or only the data dirs when ``keep_logs``.
        Returns the logs kept."""
        for w in self.all:
            try:
                w.stop()
            except Exception as exc:  # stop the others all the same
                print(f"stopping {w.app_id} (pid {w.pid}): {exc!r}", flush=True)
        if keep_logs:
            for w in self.all:
                shutil.rmtree(w.datadir, ignore_errors=True)
            return [w.log_path for w in self.all if w.log_path.exists()]
        shutil.rmtree(self.root, ignore_errors=True)
        return []


def show(r: int, label: str, m: Measure) -> None:
    """One progress line per run."""
    v = m.values
    fig = f"{v['rate']:>9,.0f}/s" if "rate" in v else f"p50 {v['p50_ms']:7.2f} ms  p99 {v['p99_ms']:7.2f} ms"
    if "p50_ms" in v and "rate" in v:
        fig += f"  (e2e p99 {v['p99_ms']:.0f} ms)"
    if "acked" in v:
        fig += f"  (acked {v['acked']:,.0f}/s)"
    if m.errors:
        fig += f"  {m.errors} FAILED"
    cpu = "  ".join(f"{p} {fmt_cpu(m.cpu[p])}" for p in PROCESSES)
    print(f"  [{r + 1}/{REPEATS}] {label:<24} {fig}   CPU s/1k: {cpu}", flush=True)


async def single_worker_rungs(
    s: aiohttp.ClientSession, workers: Workers, kv: KafkaView, tag: str, broker_pid: int | None, res: Results
) -> None:
    """L2, raw produce, L3 noop, L3 kafka and the ack latency rungs, on one worker."""
    w = workers.start()
    await w.wait_assigned(s, f"{w.app_id}.commands:", START_TIMEOUT_S)
    noop = [f"{tag}-noop{r}" for r in range(REPEATS)]
    kafka = [f"{tag}-kafka{r}" for r in range(REPEATS)]
    out = {ns: f"bench.{tag}.out.{ns}" for ns in kafka}
    ack_ns = f"{tag}-ack"
    raw = [f"bench.{tag}.{what}.{r}" for r in range(REPEATS) for what in ("l2", "produce", "ackraw")]
    # all at once and early: a topic's partitions have no leader for a moment after creation
    # (NotLeaderForPartition retries inside a timed run)
    await ensure_topics(BROKER, [TopicSpec(t, PARTITIONS, 1) for t in [*out.values(), *raw, f"bench.{tag}.warm"]])
    for ns in [*noop, ack_ns]:
        await put_namespace(s, w, ns, {"type": "noop"})
    for ns in kafka:
        await put_namespace(s, w, ns, {"type": "kafka", "topic": out[ns]})
    await wait_owned(s, [w], [*noop, *kafka, ack_ns])
    # warm-up, not measured: connections, metadata, the write path's first requests
    await bounded(ack_raw(f"bench.{tag}.warm", WARMUP_S, None), "warm-up")
    await bounded(ack_http(s, [w], ack_ns, WARMUP_S, None, None), "warm-up")
    for r in range(REPEATS):
        show(r, "L2 raw loop", res.add("l2", await bounded(l2_loop(f"bench.{tag}.l2.{r}", N, broker_pid), "L2")))
        show(r, "raw produce", res.add("produce", await bounded(
            raw_produce(f"bench.{tag}.produce.{r}", N, broker_pid), "raw produce")))
        show(r, "L3 noop", res.add("l3noop", await l3(s, w, noop[r], N, kv, None, broker_pid)))
        show(r, "L3 kafka", res.add("l3kafka", await l3(s, w, kafka[r], N, kv, out[kafka[r]], broker_pid)))
        limit = SECONDS + 2 * ACK_TIMEOUT_S
        show(r, "ack raw send_and_wait", res.add("ack_raw", await bounded(
            ack_raw(f"bench.{tag}.ackraw.{r}", SECONDS, broker_pid), "ack raw", limit)))
        show(r, "ack POST /v1/log", res.add("ack_log", await bounded(
            ack_http(s, [w], ack_ns, SECONDS, None, broker_pid), "ack POST /v1/log", limit)))
    w.stop()  # not idling through the fleet rung


async def fleet_rungs(s: aiohttp.ClientSession, workers: Workers, tag: str, broker_pid: int | None,
                      res: Results) -> None:
    """Single writes with ids: one worker alone, then a fleet of ``FLEET`` (same app id)."""
    first = workers.start()
    await first.wait_assigned(s, f"{first.app_id}.commands:", START_TIMEOUT_S)
    ns = f"{tag}-fleet"
    await put_namespace(s, first, ns, {"type": "noop"})
    await wait_owned(s, [first], [ns])
    limit = SECONDS + 2 * ACK_TIMEOUT_S
    await bounded(ack_http(s, [first], ns, WARMUP_S, f"warm1-{tag}", None), "warm-up")
    for r in range(REPEATS):
        show(r, "ack ids, 1 worker", res.add("ids1", await bounded(
            ack_http(s, [first], ns, SECONDS, f"one{r}-{tag}", broker_pid), "ack ids, 1 worker", limit)))
    fleet = [first, *(workers.start(app_id=first.app_id) for _ in range(FLEET - 1))]
    await wait_owned(s, fleet, [ns])
    await bounded(ack_http(s, fleet, ns, WARMUP_S, f"warm3-{tag}", None), "warm-up")
    for r in range(REPEATS):
        show(r, f"ack ids, {FLEET}-worker fleet", res.add("ids3", await bounded(
            ack_http(s, fleet, ns, SECONDS, f"fleet{r}-{tag}", broker_pid), "ack ids, fleet", limit)))


# -- the report --------------------------------------------------------------------------------


def fmt_cpu(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    n = sum(1 for x in dirty if x.strip())
    return f"{head or 'unknown'}{f' + {n} uncommitted changes' if n else ''}"


def command_line() -> str:
    env = [f"{k}={shlex.quote(os.environ[k])}" for k in KNOBS if k in os.environ]
    return " ".join([*env, *(shlex.quote(a) for a in sys.orig_argv)])


def table(res: Results) -> str:
    """The markdown table: one row per rung (two per L3 rung: end to end, writes acked)."""

    def ratio(a: float | None, b: float | None, how: str) -> str:
        return "" if a is None or not b else f"{100 * a / b:.1f} % of {how}"

    def rate(rung: str, key: str = "rate") -> str:
        x = res.median(rung, key)
        failed = res.errors(rung)
        return ("-" if x is None else f"{x:,.0f}/s") + (f" ({failed} failed)" if failed else "")

    def lat(rung: str) -> str:
        p50, p99 = res.median(rung, "p50_ms"), res.median(rung, "p99_ms")
        failed = res.errors(rung)
        text = "-" if p50 is None or p99 is None else f"p50 {p50:.1f} / p99 {p99:.1f} ms"
        return text + (f" ({failed} failed)" if failed else "")

    def times(a: str, b: str, of: str) -> str:
        x, y = res.median(a, "p99_ms"), res.median(b, "p99_ms")
        return "" if x is None or not y else f"p99 {x / y:.2f}x {of}"

    def cpu(rung: str) -> list[str]:
        return [fmt_cpu(res.cpu(rung, p)) for p in PROCESSES]

    l2, produce = res.median("l2", "rate"), res.median("produce", "rate")
    rows = [
        ["L2 raw aiokafka loop", rate("l2"), "", "", *cpu("l2")],
        ["raw produce, all acked", rate("produce"), "", "", *cpu("produce")],
        ["L3 batch → noop, end to end", rate("l3noop"), ratio(res.median("l3noop", "rate"), l2, "L2"), "≥ 40 %",
         *cpu("l3noop")],
        ["L3 batch → noop, writes acked", rate("l3noop", "acked"),
         ratio(res.median("l3noop", "acked"), produce, "raw produce"), "≥ 60 %", "", "", ""],
        ["L3 batch → kafka, end to end", rate("l3kafka"), ratio(res.median("l3kafka", "rate"), l2, "L2"), "≥ 40 %",
         *cpu("l3kafka")],
        ["L3 batch → kafka, writes acked", rate("l3kafka", "acked"),
         ratio(res.median("l3kafka", "acked"), produce, "raw produce"), "≥ 60 %", "", "", ""],
        [f"ack @{RATE:.0f}/s raw send_and_wait", lat("ack_raw"), "", "", *cpu("ack_raw")],
        [f"ack @{RATE:.0f}/s POST /v1/log", lat("ack_log"), times("ack_log", "ack_raw", "raw"), "", *cpu("ack_log")],
        [f"ack @{RATE:.0f}/s with ids, 1 worker", lat("ids1"), "", "", *cpu("ids1")],
        [f"ack @{RATE:.0f}/s with ids, {FLEET} workers", lat("ids3"), times("ids3", "ids1", "1 worker"), "≤ 1.5x",
         *cpu("ids3")],
    ]
    head = ["rung", "median", "ratio", "aim", "CPU s/1k: worker(s)", "bench", "kafka"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|---|---:|---:|---:|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


async def main() -> int:
    tag = f"b{uuid.uuid4().hex[:8]}"  # in every topic, namespace and app id of this run
    load = os.getloadavg()[0]
    print(f"walstream bench {tag}: N={N:,} x ~{VALUE_BYTES} B, {REPEATS} repeats (median), {PARTITIONS} partitions, "
          f"ack rungs {RATE:.0f}/s for {SECONDS:.0f} s, broker {BROKER}", flush=True)
    root = Path(tempfile.mkdtemp(prefix=f"walstream-bench-{tag}-"))
    workers = Workers(root, tag)
    kv = KafkaView(BROKER)
    broker_pid = kafka_broker_pid()
    if broker_pid is None:
        print("  (no broker pid from `walstream stack`: its CPU is not measured)", flush=True)
    res = Results()
    failure: BaseException | None = None
    await kv.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)) as s:
            await single_worker_rungs(s, workers, kv, tag, broker_pid, res)
            await fleet_rungs(s, workers, tag, broker_pid, res)
    except (Exception, asyncio.CancelledError) as exc:
        failure = exc
    finally:
        kept = workers.close(keep_logs=failure is not None)
        try:
            await kv.delete_topics([t for t in await kv.admin.list_topics() if tag in t])
        except Exception as exc:
            print(f"deleting the run's topics failed: {exc!r}", flush=True)
        await kv.stop()

    print(f"\n{table(res)}\n")
    print(f"CPU: utime+stime over each run per 1,000 entries (ack rows: per 1,000 requests), median of runs; "
          f"worker(s) summed; kafka = the shared broker, load of others included. Load avg at start {load:.2f} "
          f"on {os.cpu_count()} cores.")
    print(f"command: {command_line()}")
    print(f"commit:  {git_commit()}")
    if failure is not None:
        if isinstance(failure, BenchError):
            print(f"\nFAILED: {failure}", file=sys.stderr)
        else:
            traceback.print_exception(failure)
        if kept:
            print(f"worker logs kept: {', '.join(map(str, kept))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
