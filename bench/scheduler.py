"""Scheduler benchmark: a walstream worker holding N pending delayed entries, against plain RocksDB.

Run ``python -m bench.scheduler`` (Kafka at ``WALSTREAM_BROKER``, default 127.0.0.1:9092).
For each size N (``BENCH_SCHED_SIZES``, default ``100000,1000000``) one fresh worker
subprocess is started (unique ``WALSTREAM_APP_ID``, own ``WALSTREAM_DATADIR`` in a temp dir,
``WALSTREAM_PARTITIONS=8``, its own web port) with one namespace whose only target is
``kafka`` (a fresh output topic). Then, in order:

1. **Idle worker**: RSS (``VmRSS`` of ``/proc/<pid>/status``) and CPU (utime+stime of
   ``/proc/<pid>/stat``) over a quiet window (``BENCH_SCHED_IDLE_S``, default 10 s) with
   nothing pending.
2. **Load**: N entries with ``lifecycle.delay_ms`` = +6 h and a ~40 B payload through
   ``POST /v1/log/batch`` (batches of ``BENCH_SCHED_BATCH``, ``BENCH_SCHED_CLIENTS``
   concurrent clients). "Taken into the table" means: the worker's consumer group has
   committed every offset of ``wal.<namespace>`` (lag 0; the agent acks a batch only after
   its timers are written) *and* the ``walstream-schedule`` changelog holds ≥ N records.
3. **Pending**: after a settle pause, RSS, on-disk size of the datadir (and of the schedule
   table's RocksDBs) and CPU over a quiet window while N entries are pending and none is due.
   **RSS per pending entry** = (RSS now - idle RSS) / N: everything the worker keeps for a
   pending entry (every table it writes, RocksDB memtables, Python heap left by the load).
   **Cost per idle tick** = worker CPU in the window / (window / ``WALSTREAM_SCHEDULER_INTERVAL_S``)
   — the timer's work plus everything else an idle worker does (Faust's own timers, consumer
   fetches, heartbeats); the same figure with nothing pending (step 1) is printed next to it,
   and the difference is what the N pending entries cost.
4. **Probes**: ``BENCH_SCHED_PROBES`` (default 2000) entries with ``lifecycle.deliver_at``
   (ISO-8601 UTC, ms) due 5-30 s after they are written. The output topic is consumed;
   lateness = record timestamp (CreateTime, set when the kafka target produces) - due ms,
   matched by the ``walstream-id`` header. Early = lateness < 0 (must be 0). **Cost of a
   due tick**: worker CPU from just before the first probe is due until the last one is
   delivered, minus the idle rate from step 3, per delivered probe and per tick command
   (tick commands counted from the command topic's end offsets). Lateness is split into
   due -> tick sent (the tick's CreateTime on the command topic, per WAL partition of the
   probe) and tick sent -> delivered. Machine CPU use in the window is printed: on a busy
   machine the raw timer's lateness shows how much is the machine's.
5. **After**: another quiet window once the probes are delivered (their deletions leave
   tombstones at the front of each partition, where every tick seeks).

Raw baselines, same run, reported as walstream/raw ratios:

- **raw RocksDB** (a child process, after the worker has stopped): plain ``rocksdict`` with
  the options walstream gives its tables (8 MiB write buffer and block cache, Faust's other
  defaults), 8 databases, the same N keys and values (``walstream.tables.schedule.Timer``, identical
  bytes), written with one ``put`` each: µs per put, RSS and disk bytes per key, and the cost
  of what one scheduler tick asks of RocksDB — a seek-to-first on each of the 8 databases —
  before and after deleting the first ``probes/8`` keys of each.
- **raw timer** (in this process, during the probe window): an asyncio loop that sleeps
  until each probe's due time and produces it with aiokafka: lateness floor of the machine.

Other knobs: ``BENCH_SCHED_LOAD_TIMEOUT_S`` (default 1800) bounds the load and again the wait
for the table; every other wait is bounded too. Temp dirs are removed and the Kafka topics of
the run deleted at the end; ``BENCH_SCHED_KEEP_LOG=1`` keeps the worker log (also kept when it
shows errors). Idle-window CPU per tick varies by a few hundred µs between windows and runs
(Faust's and aiokafka's background work): smaller differences are noise.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.kafka_view import KafkaView
from bench.worker import Worker
from walstream.kafka_admin import TopicSpec, ensure_topics

BROKER = os.environ.get("WALSTREAM_BROKER", "127.0.0.1:9092")
SIZES = [int(x) for x in os.environ.get("BENCH_SCHED_SIZES", "100000,1000000").split(",") if x.strip()]
PROBES = int(os.environ.get("BENCH_SCHED_PROBES", "2000"))
CLIENTS = int(os.environ.get("BENCH_SCHED_CLIENTS", "4"))
BATCH = int(os.environ.get("BENCH_SCHED_BATCH", "1000"))
IDLE_S = float(os.environ.get("BENCH_SCHED_IDLE_S", "10"))
LOAD_TIMEOUT_S = float(os.environ.get("BENCH_SCHED_LOAD_TIMEOUT_S", "1800"))
INTERVAL_S = float(os.environ.get("WALSTREAM_SCHEDULER_INTERVAL_S", "0.02"))
PARTITIONS = 8
BULK_DELAY_MS = 6 * 3600 * 1000
PROBE_FIRST_S = 5.0
PROBE_LAST_S = 30.0
SETTLE_S = 5.0
PAD = "x" * 32
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024
SCHEDULE_TABLE = "walstream-schedule"


# -- helpers -------------------------------------------------------------------------------


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def rss_bytes(pid: int, field_name: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field_name} not found for pid {pid}")


def cpu_s(pid: int) -> float:
    """utime + stime of every thread of ``pid``, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def dir_bytes(path: Path, contains: str = "") -> int:
    total = 0
    for root, _, files in os.walk(path):
        if contains and contains not in root:
            continue
        for f in files:
            try:
                total += (Path(root) / f).stat().st_size
            except FileNotFoundError:
                pass
    return total


def iso_ms(ms: int) -> str:
    t = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ms)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def mb(x: float) -> str:
    return f"{x / MIB:.1f} MiB"


# -- the worker ----------------------------------------------------------------------------


async def idle_window(worker: Worker, seconds: float) -> float:
    """Worker CPU seconds per scheduler interval over a quiet window."""
    c0, t0 = cpu_s(worker.pid), time.monotonic()
    await asyncio.sleep(seconds)
    c1, t1 = cpu_s(worker.pid), time.monotonic()
    return (c1 - c0) / ((t1 - t0) / INTERVAL_S)


# -- writing entries -----------------------------------------------------------------------


@dataclass
class LoadResult:
    written: int = 0
    failures: int = 0
    errors: list[str] = field(default_factory=list)


async def post_batches(
    s: aiohttp.ClientSession, url: str, bodies: Iterator[tuple[int, bytes]], clients: int, deadline: float
) -> LoadResult:
    """POST every body with ``clients`` concurrent clients; bounded by ``deadline`` (monotonic)."""
    res = LoadResult()

    async def client() -> None:
        for n, body in bodies:  # a shared iterator: each body is taken once
            if time.monotonic() > deadline:
                return
            try:
                async with s.post(f"{url}/v1/log/batch", data=body, headers={"content-type": "application/json"}) as r:
                    raw = await r.read()
                if r.status != 200:
                    res.failures += n
                    if len(res.errors) < 5:
                        res.errors.append(f"HTTP {r.status}: {raw[:200]!r}")
                    continue
                results = orjson.loads(raw)["results"]
                ok = sum(1 for x in results if x["durable"] == "SUCCESS")
                res.written += ok
                res.failures += len(results) - ok
            except (aiohttp.ClientError, TimeoutError) as exc:
                res.failures += n
                if len(res.errors) < 5:
                    res.errors.append(repr(exc))

    await asyncio.gather(*(client() for _ in range(clients)))
    return res


def bulk_bodies(ns: str, n: int) -> Iterator[tuple[int, bytes]]:
    for start in range(0, n, BATCH):
        entries = [
            {
                "namespace": ns,
                "id": f"b{i}",
                "key": f"k{i}",
                "lifecycle": {"delay_ms": BULK_DELAY_MS},
                "payload": {"i": i, "pad": PAD},
            }
            for i in range(start, min(n, start + BATCH))
        ]
        yield len(entries), orjson.dumps({"entries": entries})


def probe_bodies(ns: str, dues: dict[str, int]) -> Iterator[tuple[int, bytes]]:
    items = list(dues.items())
    for start in range(0, len(items), BATCH):
        entries = [
            {
                "namespace": ns,
                "id": pid,
                "key": pid,
                "lifecycle": {"deliver_at": iso_ms(due)},
                "payload": {"probe": pid, "pad": PAD},
            }
            for pid, due in items[start : start + BATCH]
        ]
        yield len(entries), orjson.dumps({"entries": entries})


# -- lateness ------------------------------------------------------------------------------


async def raw_timer(topic: str, dues: dict[str, int]) -> None:
    """Baseline: sleep until each due time, then produce (record timestamp = send time)."""
    producer = AIOKafkaProducer(bootstrap_servers=BROKER, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        heap = [(due, pid) for pid, due in dues.items()]
        heapq.heapify(heap)
        futures = []
        while heap:
            due, pid = heapq.heappop(heap)
            for _ in range(1000):  # sleep may wake a hair early: never produce early
                wait = due / 1000 - time.time()
                if wait <= 0:
                    break
                await asyncio.sleep(max(wait, 0.0005))
            futures.append(
                await producer.send(topic, value=b"{}", key=pid.encode(), headers=[("walstream-id", pid.encode())])
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def collect(topic: str, dues: dict[str, int], deadline: float) -> tuple[dict[str, int], int]:
    """Record timestamps of probe ids on ``topic`` (first one wins) and the count of other records."""
    consumer = AIOKafkaConsumer(bootstrap_servers=BROKER, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    seen: dict[str, int] = {}
    others = 0
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while len(seen) < len(dues) and time.time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    pid = dict(r.headers).get("walstream-id", b"").decode()
                    if pid in dues:
                        seen.setdefault(pid, r.timestamp)
                    else:
                        others += 1
    finally:
        await consumer.stop()
    return seen, others


async def read_range(topic: str, start: dict[int, int], end: dict[int, int]) -> list[tuple[int, bytes, int]]:
    """``(partition, key, timestamp)`` of the records of ``topic`` between two offset maps."""
    consumer = AIOKafkaConsumer(bootstrap_servers=BROKER, enable_auto_commit=False)
    await consumer.start()
    out: list[tuple[int, bytes, int]] = []
    try:
        want = {p: e for p, e in end.items() if e > start.get(p, 0)}
        tps = [TopicPartition(topic, p) for p in want]
        if not tps:
            return out
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, start.get(tp.partition, 0))
        pos = dict(start)
        deadline = time.monotonic() + 60
        while any(pos.get(p, 0) < e for p, e in want.items()) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for tp, records in batch.items():
                for r in records:
                    if r.offset < want[tp.partition]:
                        out.append((tp.partition, r.key or b"", r.timestamp))
                    pos[tp.partition] = r.offset + 1
    finally:
        await consumer.stop()
    return out


@dataclass
class Breakdown:
    """Where the lateness of each probe went: until its tick was sent, then until delivered."""

    to_tick: list[float] = field(default_factory=list)
    tick_to_out: list[float] = field(default_factory=list)
    #: delivered by a tick sent before it was due (still in flight at its due time)
    early_tick: int = 0
    worst: list[tuple[float, float, int, float, float]] = field(default_factory=list)


def breakdown(
    dues: dict[str, int], seen: dict[str, int], probe_parts: dict[str, int], ticks: dict[int, list[int]], t0: int
) -> Breakdown:
    import bisect

    b = Breakdown()
    rows = []
    for pid, out_ts in seen.items():
        due, part = dues[pid], probe_parts.get(pid, -1)
        ts = ticks.get(part, [])
        i = bisect.bisect_left(ts, due)
        if i < len(ts) and ts[i] <= out_ts:
            b.to_tick.append(float(ts[i] - due))
            b.tick_to_out.append(float(out_ts - ts[i]))
            rows.append((float(out_ts - due), (due - t0) / 1000, part, float(ts[i] - due), float(out_ts - ts[i])))
        else:
            b.early_tick += 1
            rows.append((float(out_ts - due), (due - t0) / 1000, part, float("nan"), float("nan")))
    b.worst = sorted(rows, reverse=True)[:5]
    return b


def sys_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = f[3] + f[4]
    return sum(f) - idle, sum(f)


def stamp() -> str:
    return time.strftime("%H:%M:%S")


def git_state() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, timeout=10)
        n = len([x for x in dirty.stdout.splitlines() if x.strip()])
        return f"{head.stdout.strip()}{f' + {n} uncommitted files' if n else ''}"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def lateness_stats(seen: dict[str, int], dues: dict[str, int]) -> dict[str, float]:
    late = [float(ts - dues[pid]) for pid, ts in seen.items()]
    return {
        "n": len(late),
        "missing": len(dues) - len(late),
        "min": min(late) if late else float("nan"),
        "p50": pct(late, 50),
        "p99": pct(late, 99),
        "max": max(late) if late else float("nan"),
        "early": sum(1 for x in late if x < 0),
    }


# -- raw RocksDB baseline (child process) --------------------------------------------------


def raw_rocksdb(n: int, probes: int, root: Path) -> dict[str, float]:
    """Plain rocksdict, walstream's table options, the same keys and values."""
    from rocksdict import BlockBasedIndexType, BlockBasedOptions, Cache, Options, Rdict

    from walstream.tables.schedule import Timer

    def options() -> Options:
        # what faust.stores.rocksdb.RocksDBOptions.as_options() builds from walstream's
        # table options (8 MiB block cache and write buffer), with Faust's other defaults
        o = Options(raw_mode=True)
        o.create_if_missing(True)
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        o.set_max_open_files(int(soft * 0.9) if soft > 0 else -1)
        o.set_write_buffer_size(8 * MIB)
        o.set_target_file_size_base(64 * MIB)
        o.set_max_write_buffer_number(3)
        t = BlockBasedOptions()
        t.set_bloom_filter(3, True)
        t.set_block_cache(Cache(8 * MIB))
        t.set_index_type(BlockBasedIndexType.binary_search())
        o.set_block_based_table_factory(t)
        return o

    pid = os.getpid()
    rss0 = rss_bytes(pid)
    dbs = [Rdict(str(root / f"p{p}.db"), options=options()) for p in range(PARTITIONS)]
    now_ms = int(time.time() * 1000)
    seqs = [0] * PARTITIONS
    t0 = time.perf_counter()
    for i in range(n):
        p = i % PARTITIONS
        due = now_ms + BULK_DELAY_MS + i // 10
        doc = {
            "v": 1,
            "id": f"b{i}",
            "ns": "benchns0000",
            "key": f"k{i}",
            "ts": now_ms * 1000 + i,
            "payload": {"i": i, "pad": PAD},
            "due": due,
        }
        timer = Timer(kind="delay", due_ms=due, seq=seqs[p], entry=doc, source=["wal.benchns0000", p, seqs[p]])
        seqs[p] += 1
        dbs[p].put(timer.key, timer.encode())
    put_s = time.perf_counter() - t0
    time.sleep(SETTLE_S)
    rss1 = rss_bytes(pid)
    disk = dir_bytes(root)

    def seek_cost(seconds: float = 2.0) -> float:
        """µs for one tick's worth of RocksDB work: seek-to-first + key on each partition."""
        loops = 0
        c0, end = time.process_time(), time.perf_counter() + seconds
        while time.perf_counter() < end:
            for db in dbs:
                it = db.iter()
                it.seek_to_first()
                if it.valid():
                    int(it.key()[:13])
            loops += 1
        return (time.process_time() - c0) / loops * 1e6

    seek_us = seek_cost()
    # what the probes leave behind in walstream: the first probes/8 keys of each partition deleted
    for db in dbs:
        it = db.iter()
        it.seek_to_first()
        doomed: list[bytes] = []
        while it.valid() and len(doomed) < probes // PARTITIONS:
            doomed.append(it.key())
            it.next()
        for k in doomed:
            db.delete(k)
    seek_after_us = seek_cost()
    for db in dbs:
        db.close()
    return {
        "put_us": put_s / n * 1e6,
        "rss_per_key": (rss1 - rss0) / n,
        "rss_delta": rss1 - rss0,
        "disk": disk,
        "disk_per_key": disk / n,
        "seek_us": seek_us,
        "seek_after_us": seek_after_us,
    }


def run_raw_baseline(n: int) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="walstream-bench-rawdb-"))
    try:
        out = subprocess.run(
            [sys.executable, "-m", "bench.scheduler", "--raw-rocksdb", str(n), str(PROBES), str(root)],
            capture_output=True,
            timeout=1800,
            check=True,
        )
        doc: dict[str, float] = json.loads(out.stdout.decode().strip().splitlines()[-1])
        return doc
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- one size ------------------------------------------------------------------------------


@dataclass
class Result:
    n: int
    wall_s: float = 0.0
    loaded: int = 0
    load_failures: int = 0
    load_s: float = 0.0
    table_wait_s: float = 0.0
    changelog_records: int = 0
    load_cpu_per_entry_us: float = 0.0
    rss_idle: int = 0
    rss_pending: int = 0
    rss_after: int = 0
    rss_peak: int = 0
    disk: int = 0
    disk_schedule: int = 0
    tick_idle0_us: float = 0.0
    tick_pending_us: float = 0.0
    tick_after_us: float = 0.0
    due_ticks: int = 0
    due_cpu_s: float = 0.0
    lat: dict[str, float] = field(default_factory=dict)
    raw_lat: dict[str, float] = field(default_factory=dict)
    unexpected: int = 0
    raw: dict[str, float] = field(default_factory=dict)
    bd: Breakdown = field(default_factory=Breakdown)
    machine_busy: float = 0.0
    log_counts: dict[str, int] = field(default_factory=dict)
    log_path: str = ""


async def run_size(n: int) -> Result:
    res = Result(n=n)
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="walstream-bench-sched-"))
    worker = Worker(root, app_prefix="bench-sched", partitions=PARTITIONS, broker=BROKER)
    kv = KafkaView(BROKER)
    await kv.start()
    ns = f"bsched{uuid.uuid4().hex[:8]}"
    out_topic = f"bench.sched.out.{ns}"
    raw_topic = f"bench.sched.raw.{ns}"
    try:
        await ensure_topics(BROKER, [TopicSpec(out_topic, PARTITIONS, 1), TopicSpec(raw_topic, PARTITIONS, 1)])
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout) as s:
            await worker.wait_assigned(s, f"{worker.app_id}.commands:", timeout_s=180)
            async with s.put(
                f"{worker.url}/v1/namespaces/{ns}", json={"targets": [{"type": "kafka", "topic": out_topic}]}
            ) as r:
                if r.status != 200:
                    raise RuntimeError(f"namespace: HTTP {r.status} {await r.text()}")
            await worker.wait_assigned(s, f"wal.{ns}:")
            await asyncio.sleep(SETTLE_S)

            # 1. idle worker
            res.rss_idle = rss_bytes(worker.pid)
            res.tick_idle0_us = await idle_window(worker, IDLE_S) * 1e6
            print(
                f"  [{n}] {stamp()} idle: RSS {mb(res.rss_idle)}, {res.tick_idle0_us:.0f} µs CPU per tick interval",
                flush=True,
            )

            # 2. load
            changelog = f"{worker.app_id}-{SCHEDULE_TABLE}-changelog"
            cpu0 = cpu_s(worker.pid)
            t0 = time.monotonic()
            load = await post_batches(s, worker.url, bulk_bodies(ns, n), CLIENTS, t0 + LOAD_TIMEOUT_S)
            res.load_s = time.monotonic() - t0
            res.loaded, res.load_failures = load.written, load.failures
            print(
                f"  [{n}] {stamp()} load: {load.written} acked in {res.load_s:.1f} s "
                f"({load.written / res.load_s:.0f}/s), "
                f"{load.failures} failed {load.errors[:2]}",
                flush=True,
            )
            t1 = time.monotonic()
            lag = -1
            while time.monotonic() - t1 < LOAD_TIMEOUT_S:
                lag = await kv.lag(worker.app_id, f"wal.{ns}")
                res.changelog_records = await kv.end_total(changelog)
                if lag == 0 and res.changelog_records >= load.written:
                    break
                await asyncio.sleep(1.0)
            res.table_wait_s = time.monotonic() - t1
            res.load_cpu_per_entry_us = (cpu_s(worker.pid) - cpu0) / max(1, load.written) * 1e6
            print(
                f"  [{n}] {stamp()} in table after {res.table_wait_s:.1f} s more "
                f"(lag {lag}, changelog {res.changelog_records})",
                flush=True,
            )
            if lag != 0:
                raise RuntimeError(f"worker never caught up (lag {lag}); see {worker.log_path}")

            # 3. pending, nothing due
            await asyncio.sleep(SETTLE_S)
            res.rss_pending = rss_bytes(worker.pid)
            res.disk = dir_bytes(worker.datadir)
            res.disk_schedule = dir_bytes(worker.datadir, SCHEDULE_TABLE)
            res.tick_pending_us = await idle_window(worker, IDLE_S) * 1e6
            print(
                f"  [{n}] {stamp()} pending: RSS {mb(res.rss_pending)}, disk {mb(res.disk)}, "
                f"{res.tick_pending_us:.0f} µs CPU per tick interval",
                flush=True,
            )

            # 4. probes
            now_ms = int(time.time() * 1000)
            span = (PROBE_LAST_S - PROBE_FIRST_S) * 1000
            dues = {
                f"probe-{i:05d}": now_ms + int(PROBE_FIRST_S * 1000 + span * i / max(1, PROBES - 1))
                for i in range(PROBES)
            }
            first_due, last_due = min(dues.values()), max(dues.values())
            wal0 = await kv.ends(f"wal.{ns}")
            raw_task = asyncio.create_task(raw_timer(raw_topic, dues))
            probe_load = await post_batches(s, worker.url, probe_bodies(ns, dues), 2, time.monotonic() + 60)
            if probe_load.failures:
                print(f"  [{n}] probe writes failed: {probe_load.failures} {probe_load.errors[:2]}", flush=True)
            commands = f"{worker.app_id}.commands"
            ticks0 = await kv.ends(commands)
            print(
                f"  [{n}] {stamp()} probes written, due {PROBE_FIRST_S:.0f}-{PROBE_LAST_S:.0f} s from now", flush=True
            )
            await asyncio.sleep(max(0.0, first_due / 1000 - 0.2 - time.time()))
            c0, w0, m0 = cpu_s(worker.pid), time.monotonic(), sys_cpu()
            seen, res.unexpected = await collect(out_topic, dues, deadline=last_due / 1000 + 60)
            c1, w1, m1 = cpu_s(worker.pid), time.monotonic(), sys_cpu()
            res.machine_busy = (m1[0] - m0[0]) / max(1, m1[1] - m0[1])
            print(f"  [{n}] {stamp()} probes delivered: {len(seen)}/{len(dues)}", flush=True)
            ticks1 = await kv.ends(commands)
            res.due_ticks = sum(ticks1.values()) - sum(ticks0.values())
            wal_records = await read_range(f"wal.{ns}", wal0, await kv.ends(f"wal.{ns}"))
            probe_parts = {k.decode(): p for p, k, _ in wal_records if k.decode() in dues}
            tick_ts: dict[int, list[int]] = {}
            for p, _, ts in await read_range(commands, ticks0, ticks1):
                tick_ts.setdefault(p, []).append(ts)
            for v in tick_ts.values():
                v.sort()
            res.bd = breakdown(dues, seen, probe_parts, tick_ts, now_ms)
            res.due_cpu_s = (c1 - c0) - res.tick_pending_us / 1e6 * (w1 - w0) / INTERVAL_S
            res.lat = lateness_stats(seen, dues)
            await asyncio.wait_for(raw_task, timeout=60)
            raw_seen, _ = await collect(raw_topic, dues, deadline=time.time() + 30)
            res.raw_lat = lateness_stats(raw_seen, dues)

            # 5. after the probes
            await asyncio.sleep(SETTLE_S)
            res.tick_after_us = await idle_window(worker, IDLE_S) * 1e6
            res.rss_after = rss_bytes(worker.pid)
            res.rss_peak = rss_bytes(worker.pid, "VmHWM")
    finally:
        worker.stop()
        try:
            topics = await kv.admin.list_topics()
            mine = [t for t in topics if t.startswith(worker.app_id) or ns in t]
            await kv.delete_topics(mine)
        except Exception as exc:
            print(f"  [{n}] topic clean-up failed: {exc!r}", flush=True)
        await kv.stop()
        res.log_counts = log_summary(worker.log_path)
        if os.environ.get("BENCH_SCHED_KEEP_LOG") or res.log_counts.get("ERROR/Traceback"):
            keep = root.parent / f"{root.name}-worker.log"
            shutil.copy(worker.log_path, keep)
            res.log_path = str(keep)
        shutil.rmtree(root, ignore_errors=True)

    res.raw = await asyncio.to_thread(run_raw_baseline, n)
    res.wall_s = time.monotonic() - started
    return res


def log_summary(path: Path) -> dict[str, int]:
    """Counts of the worker's notable log lines (it runs at --loglevel warning)."""
    counts: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        if "ERROR" in line or "Traceback" in line:
            what = "ERROR/Traceback"
        elif "producer buffer full" in line:
            what = "faust producer buffer full"
        elif "is overlapping" in line:
            what = "timer overlapping: " + line.split("Timer ", 1)[1].split(" is overlapping")[0].rsplit(".", 1)[-1]
        elif "WARNING" in line:
            what = "other warnings"
        else:
            continue
        counts[what] = counts.get(what, 0) + 1
    return counts


# -- report --------------------------------------------------------------------------------


def report(r: Result) -> None:
    n = r.n
    raw = r.raw
    rss_per = (r.rss_pending - r.rss_idle) / n
    disk_per = r.disk_schedule / n
    tick_delta = r.tick_pending_us - r.tick_idle0_us
    raw_ticks = PARTITIONS  # seek-to-first per partition per tick
    print(f"\n== scheduler, N = {n:,} pending (+{PROBES} probes), {PARTITIONS} partitions, run {r.wall_s:.0f} s ==")
    print(
        f"load            {r.loaded:,} acked in {r.load_s:.1f} s = {r.loaded / r.load_s:,.0f} entries/s "
        f"(+{r.table_wait_s:.1f} s until lag 0; {r.load_failures} failed); worker CPU {r.load_cpu_per_entry_us:.0f} "
        f"µs/entry; raw put {raw['put_us']:.2f} µs/key"
    )
    print(f"{'':34}{'walstream':>14}{'raw rocksdict':>16}{'ratio':>9}")
    print(
        f"{'RSS per pending entry':34}{rss_per:>12.0f} B{raw['rss_per_key']:>14.0f} B"
        f"{rss_per / raw['rss_per_key'] if raw['rss_per_key'] > 0 else float('nan'):>8.1f}x"
    )
    print(
        f"{'  RSS idle → pending (peak)':34}{mb(r.rss_idle)} → {mb(r.rss_pending)} (peak {mb(r.rss_peak)}, "
        f"after probes {mb(r.rss_after)}); raw Δ {mb(raw['rss_delta'])}"
    )
    print(
        f"{'disk per entry (schedule table)':34}{disk_per:>12.0f} B{raw['disk_per_key']:>14.0f} B"
        f"{disk_per / raw['disk_per_key']:>8.1f}x   (datadir {mb(r.disk)}, schedule {mb(r.disk_schedule)}, "
        f"raw {mb(raw['disk'])})"
    )
    print(
        f"{'CPU per idle tick, N pending':34}{r.tick_pending_us:>11.0f} µs{raw['seek_us']:>13.1f} µs"
        f"{r.tick_pending_us / raw['seek_us']:>8.0f}x   (raw = seek-to-first on {raw_ticks} DBs)"
    )
    print(
        f"{'  … nothing pending / Δ from N':34}{r.tick_idle0_us:>11.0f} µs   Δ {tick_delta:+.0f} µs"
        f" ({r.tick_pending_us / INTERVAL_S / 1e4:.1f} % of a core at N pending)"
    )
    print(
        f"{'  … after probe deletes':34}{r.tick_after_us:>11.0f} µs{raw['seek_after_us']:>13.1f} µs"
        f"{r.tick_after_us / raw['seek_after_us']:>8.0f}x"
    )
    delivered = max(1, int(r.lat.get("n", 0)))
    print(
        f"{'CPU per due tick (above idle)':34}{r.due_cpu_s / max(1, r.due_ticks) * 1e6:>11.0f} µs"
        f"   {r.due_ticks} tick commands, {r.due_cpu_s / delivered * 1e6:.0f} µs per delivered probe"
    )
    lat, rl = r.lat, r.raw_lat
    print(f"{'lateness ms':34}{'walstream':>14}{'raw timer':>16}{'ratio':>9}")
    for k in ("min", "p50", "p99", "max"):
        ratio = f"{lat[k] / rl[k]:>8.1f}x" if rl[k] > 0 else f"{'n/a':>9}"
        print(f"{'  ' + k:34}{lat[k]:>14.0f}{rl[k]:>16.0f}{ratio}")
    print(
        f"{'  early / missing':34}{int(lat['early']):>8} / {int(lat['missing']):<4}"
        f"{int(rl['early']):>10} / {int(rl['missing']):<4}  unexpected deliveries {r.unexpected}"
    )
    bd = r.bd
    print(
        f"{'  due -> tick sent / -> delivered':34}p50 {pct(bd.to_tick, 50):.0f} / {pct(bd.tick_to_out, 50):.0f} ms, "
        f"p99 {pct(bd.to_tick, 99):.0f} / {pct(bd.tick_to_out, 99):.0f} ms, max {max(bd.to_tick, default=0):.0f} / "
        f"{max(bd.tick_to_out, default=0):.0f} ms ({bd.early_tick} delivered by a tick sent before due)"
    )
    for late, at, part, a, b in bd.worst:
        print(f"{'    worst':34}{late:.0f} ms (due at +{at:.1f} s, partition {part}: tick +{a:.0f}, then +{b:.0f} ms)")
    print(f"{'  machine CPU busy, probe window':34}{100 * r.machine_busy:.0f} % of {os.cpu_count()} CPUs")
    verdict = "OK" if lat["p99"] <= 100 and lat["early"] == 0 and lat["missing"] == 0 else "MISSED"
    print(f"aim p99 ≤ 100 ms, never early: {verdict}")
    if r.log_counts:
        print("worker log: " + ", ".join(f"{k} x{v}" for k, v in sorted(r.log_counts.items())))
    if r.log_path:
        print(f"worker log kept at {r.log_path}")


async def main() -> None:
    print(
        f"walstream scheduler bench: sizes {SIZES}, {PROBES} probes due {PROBE_FIRST_S:.0f}-{PROBE_LAST_S:.0f} s "
        f"after writing, batches of {BATCH} x {CLIENTS} clients, tick interval {INTERVAL_S * 1000:.0f} ms, "
        f"broker {BROKER}, code {git_state()}",
        flush=True,
    )
    results = []
    for n in SIZES:
        r = await run_size(n)
        report(r)
        results.append(r)
    if len(results) > 1:
        print("\nsummary  N           RSS/entry  disk/entry  tick µs (idle0→N)  p50 ms  p99 ms  early  wall s")
        for r in results:
            print(
                f"         {r.n:<11,} {(r.rss_pending - r.rss_idle) / r.n:>7.0f} B {r.disk_schedule / r.n:>8.0f} B"
                f"  {r.tick_idle0_us:>6.0f} → {r.tick_pending_us:<6.0f}  {r.lat['p50']:>6.0f}  {r.lat['p99']:>6.0f}"
                f"  {int(r.lat['early']):>5}  {r.wall_s:>6.0f}"
            )


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--raw-rocksdb":
        print(json.dumps(raw_rocksdb(int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))))
    else:
        asyncio.run(main())
