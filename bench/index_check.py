"""Index check benchmark: rows and documents checked per second, and the worker's memory, next
to a raw scan of the table and of the index.

Run ``python -m bench.index_check`` (the stack's Kafka at ``WALSTREAM_BROKER``, default
127.0.0.1:9092; Cassandra at 127.0.0.1:9042; Elasticsearch at http://127.0.0.1:9200). Every
name the run creates (keyspace, index prefix, namespace, the worker's app id) is ``bic`` plus a
random suffix; the keyspace, the indices (and any tombstone index) and the worker's Kafka topics
are removed at the end, as is the temp dir. Every wait is bounded.

**Load.** A keyspace (SimpleStrategy, RF 1) with ``movies (id text PRIMARY KEY, title text,
year int)``; ``BENCH_IC_ROWS`` rows (default 1,000,000) written with cassandra-driver's
``execute_concurrent_with_args`` (a prepared ``INSERT ... USING TIMESTAMP ?``, each row its own
write time in µs). The same rows go to the index ``<prefix>movies`` in the exact layout the
Elasticsearch target writes (walstream.targets.elasticsearch: document id = the key, the key and
the values in the document, per-column write times in ``_walstream``), by one of
``BENCH_IC_ES_LOAD``:

- ``bulk`` (default): each document built by the target's own row fold (``_Row.put`` then
  ``.source()``) and sent with ``_bulk`` ``create`` operations, into an index created with the
  target's mapping (``refresh_interval`` off during the load, back to the default after);
- ``target``: ``ElasticsearchTarget.apply`` on entries carrying put mutations, as delivery does.

Both in batches of ``BENCH_IC_LOAD_BATCH`` (default 5,000), ``BENCH_IC_LOAD_CONCURRENCY``
(default 4) at a time. Drift is made on purpose in ``BENCH_IC_DRIFT`` of the rows (default
0.001), evenly spread, in turn: a row without its document (*missing*), a document whose
``title`` holds a value written 1 s before the row's (*stale*), and, for the third kind, a
document with no row (*extra*, key ``ghost...``). The check must report exactly these counts
(and ``index_newer`` 0); the run exits 1 otherwise.

**Raw baselines** (this process, after the load, before the check, same page size as the check,
500): the table read in token order with the driver's paging (``SELECT id, token(id),
WRITETIME(title), WRITETIME(year)``, consistency ONE, rows as tuples): rows/s; the index read
over a point in time with ``search_after`` (sort ``_shard_doc``, ``_source`` = ``id`` and
``_walstream``): documents/s.

**The check.** One worker (``bench.worker.Worker``, 8 partitions), a namespace with the
``cassandra`` target (the keyspace, consistency ONE) and the ``elasticsearch`` target (the
prefix); once its WAL partitions are assigned, ``POST /v1/index/{ns}/movies/check``
(``{"repair": false}``) and ``GET /v1/jobs/{id}`` every second until the job ends (at most
``BENCH_IC_CHECK_TIMEOUT_S``, default 3600; then it is cancelled). Meanwhile the worker's
``VmRSS`` and ``VmHWM`` (``/proc/<pid>/status``) and CPU seconds are sampled every second.
Reported: rows + documents checked, seconds (the job's own start and end times), rows+docs/s;
the two passes apart (pass 1 rows -> documents ends at the first poll that sees a document
counted, so ± 1 s), each next to its raw baseline; RSS at the start, at the end of pass 1, the
peak sampled, at the end, and its growth over the check's second half (a bounded check does not
grow with the rows read); VmHWM before and after; worker CPU s per 1,000 rows+docs; drift found
vs made. ERROR lines and tracebacks in the worker's log are counted (the log is kept beside the
temp dir when there are any, or with ``BENCH_IC_KEEP_LOG=1``).

Output: progress lines, then a markdown table with the command and the git commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from cassandra import ConsistencyLevel
from cassandra.cluster import Cluster, Session
from cassandra.concurrent import execute_concurrent_with_args
from cassandra.query import SimpleStatement, tuple_factory
from elasticsearch import AsyncElasticsearch

from bench.procstat import proc_cpu_s
from bench.recovery import delete_topics
from bench.scheduler import git_state, stamp
from bench.worker import Worker
from walstream.entry import Entry
from walstream.namespaces.model import ElasticsearchTargetConfig
from walstream.targets.elasticsearch import _LIVE_INDEX_MAPPING, META_FIELD, TOMBSTONE_PREFIX, ElasticsearchTarget, _Row

BROKER = os.environ.get("WALSTREAM_BROKER", "127.0.0.1:9092")
CASSANDRA_HOST = "127.0.0.1"
CASSANDRA_PORT = 9042
ES_URL = "http://127.0.0.1:9200"
ROWS = int(os.environ.get("BENCH_IC_ROWS", "1000000"))
DRIFT = float(os.environ.get("BENCH_IC_DRIFT", "0.001"))
ES_LOAD = os.environ.get("BENCH_IC_ES_LOAD", "bulk")
LOAD_BATCH = int(os.environ.get("BENCH_IC_LOAD_BATCH", "5000"))
LOAD_CONCURRENCY = int(os.environ.get("BENCH_IC_LOAD_CONCURRENCY", "4"))
CQL_CONCURRENCY = int(os.environ.get("BENCH_IC_CQL_CONCURRENCY", "512"))
CHECK_TIMEOUT_S = float(os.environ.get("BENCH_IC_CHECK_TIMEOUT_S", "3600"))
KEEP_LOG = bool(os.environ.get("BENCH_IC_KEEP_LOG"))
PARTITIONS = 8
PAGE = 500  # the check's page (walstream.index_check.PAGE)
TABLE = "movies"
STALE_BY_US = 1_000_000
START_TIMEOUT_S = 180.0
LOAD_TIMEOUT_S = 1800.0
SCAN_TIMEOUT_S = 1800.0
MIB = 1024 * 1024


def say(msg: str) -> None:
    print(f"  {stamp()} {msg}", flush=True)


# -- the data set -----------------------------------------------------------------------------


@dataclass
class DataSet:
    """Rows ``0..n-1`` (id ``m<i>``, write time ``base_us + i``) and the drift made on purpose."""

    n: int
    base_us: int
    missing: set[int] = field(default_factory=set)
    stale: set[int] = field(default_factory=set)
    #: write times of the documents without a row (ids ``ghost<k>``)
    extra: list[int] = field(default_factory=list)

    @classmethod
    def make(cls, n: int, drift: float) -> DataSet:
        ds = cls(n, int(time.time() * 1e6) - n - 10 * STALE_BY_US)
        k = max(3, round(n * drift)) if drift > 0 else 0
        step = max(1, n // max(1, k))
        for j in range(k):
            i = min(n - 1, j * step + step // 2)
            if j % 3 == 0:
                ds.missing.add(i)
            elif j % 3 == 1:
                ds.stale.add(i)
            else:
                ds.extra.append(ds.base_us + n + j)
        return ds

    @staticmethod
    def key(i: int) -> str:
        return f"m{i:07d}"

    def written(self, i: int) -> int:
        return self.base_us + i

    @staticmethod
    def values(i: int) -> dict[str, Any]:
        return {"title": f"Title {i}", "year": 1900 + i % 125}

    @property
    def documents(self) -> int:
        return self.n - len(self.missing) + len(self.extra)

    def expected(self) -> dict[str, int]:
        return {"rows": self.n, "documents": self.documents, "missing": len(self.missing),
                "stale": len(self.stale), "extra": len(self.extra), "index_newer": 0}

    def puts(self, i: int) -> list[tuple[dict[str, Any], int]]:
        """What the index was given of row ``i``: (value, write time) puts; none when missing."""
        if i in self.missing:
            return []
        t, v = self.written(i), self.values(i)
        if i in self.stale:  # the row's title write at t never reached the index; an older one did
            return [({"title": "OLD"}, t - STALE_BY_US), ({"year": v["year"]}, t)]
        return [(v, t)]

    def ghosts(self) -> list[tuple[str, dict[str, Any], int]]:
        return [(f"ghost{j:07d}", {"title": "Nobody", "year": 1}, t) for j, t in enumerate(self.extra)]


# -- Cassandra --------------------------------------------------------------------------------


def cassandra_session() -> tuple[Cluster, Session]:
    cluster = Cluster([CASSANDRA_HOST], port=CASSANDRA_PORT, protocol_version=5, connect_timeout=10)
    session = cluster.connect()
    session.row_factory = tuple_factory
    session.default_timeout = 120
    return cluster, session


def cassandra_load(session: Session, ks: str, ds: DataSet) -> float:
    """Create the keyspace and table, write every row; rows/s."""
    session.execute(f"CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    session.execute(f"CREATE TABLE {ks}.{TABLE} (id text PRIMARY KEY, title text, year int)")
    insert = session.prepare(f"INSERT INTO {ks}.{TABLE} (id, title, year) VALUES (?, ?, ?) USING TIMESTAMP ?")
    insert.consistency_level = ConsistencyLevel.ONE
    t0 = time.monotonic()
    chunk = 50_000
    for start in range(0, ds.n, chunk):
        args = []
        for i in range(start, min(ds.n, start + chunk)):
            v = ds.values(i)
            args.append((ds.key(i), v["title"], v["year"], ds.written(i)))
        results = execute_concurrent_with_args(session, insert, args, concurrency=CQL_CONCURRENCY,
                                               raise_on_first_error=True)
        assert all(ok for ok, _ in results)
        if time.monotonic() - t0 > LOAD_TIMEOUT_S:
            raise RuntimeError(f"Cassandra load not done within {LOAD_TIMEOUT_S:.0f} s")
    return ds.n / (time.monotonic() - t0)


def cassandra_scan(session: Session, ks: str) -> tuple[int, float]:
    """The raw baseline: the whole table in token order, the driver's paging: (rows, rows/s)."""
    stmt = SimpleStatement(f"SELECT id, token(id), writetime(title), writetime(year) FROM {ks}.{TABLE}",
                           fetch_size=PAGE, consistency_level=ConsistencyLevel.ONE)
    t0 = time.monotonic()
    n = 0
    for _ in session.execute(stmt, timeout=60):
        n += 1
        if n % 100_000 == 0 and time.monotonic() - t0 > SCAN_TIMEOUT_S:
            raise RuntimeError(f"raw Cassandra scan not done within {SCAN_TIMEOUT_S:.0f} s")
    return n, n / (time.monotonic() - t0)


# -- Elasticsearch ----------------------------------------------------------------------------


async def in_batches(n: int, work: Any) -> None:
    """``await work(start, end)`` over ``0..n`` in batches of LOAD_BATCH, LOAD_CONCURRENCY at a time."""
    sem = asyncio.Semaphore(LOAD_CONCURRENCY)

    async def one(start: int) -> None:
        async with sem:
            await work(start, min(n, start + LOAD_BATCH))

    await asyncio.wait_for(asyncio.gather(*(one(s) for s in range(0, n, LOAD_BATCH))), LOAD_TIMEOUT_S)


def document(key: str, puts: list[tuple[dict[str, Any], int]]) -> bytes:
    """The document the target writes for these puts of one row (its own fold and layout)."""
    row = _Row(key={"id": key})
    for value, t in puts:
        row.put({"id": key}, value, t)
    return orjson.dumps(row.source())


async def es_load_bulk(es: AsyncElasticsearch, index: str, ds: DataSet) -> None:
    await es.indices.create(index=index, mappings=_LIVE_INDEX_MAPPING)
    await es.indices.put_settings(index=index, settings={"index": {"refresh_interval": "-1"}})
    ghosts = ds.ghosts()

    async def send(lines: list[bytes]) -> None:
        if not lines:
            return
        body: Any = lines  # already NDJSON lines: the client passes bytes through unchanged
        resp = await es.bulk(operations=body, refresh=False)
        if resp["errors"]:
            bad = [it for it in resp["items"] if next(iter(it.values())).get("status", 500) >= 300]
            raise RuntimeError(f"bulk load: {len(bad)} items failed, e.g. {bad[:2]}")

    async def rows(start: int, end: int) -> None:
        lines: list[bytes] = []
        for i in range(start, end):
            puts = ds.puts(i)
            if puts:
                key = ds.key(i)
                lines += [orjson.dumps({"create": {"_index": index, "_id": key}}), document(key, puts)]
        await send(lines)

    await in_batches(ds.n, rows)
    await send([line for key, v, t in ghosts
                for line in (orjson.dumps({"create": {"_index": index, "_id": key}}), document(key, [(v, t)]))])
    await es.indices.put_settings(index=index, settings={"index": {"refresh_interval": None}})


async def es_load_target(index_prefix: str, ns: str, ds: DataSet) -> None:
    target = ElasticsearchTarget(ElasticsearchTargetConfig(type="elasticsearch", index_prefix=index_prefix),
                                 ES_URL, timeout_s=120)

    def entry(key: str, value: dict[str, Any], t: int) -> Entry:
        mutation = {"table": TABLE, "op": "put", "key": {"id": key}, "value": value}
        return Entry(f"load-{key}-{t}", ns, key, {"mutations": [mutation]}, t)

    async def apply(entries: list[Entry]) -> None:
        outcomes = await target.apply(entries)
        bad = [(e.key, o) for e, o in zip(entries, outcomes, strict=True) if o is not None]
        if bad:
            raise RuntimeError(f"target load: {len(bad)} entries failed, e.g. {bad[:2]}")

    async def rows(start: int, end: int) -> None:
        await apply([entry(ds.key(i), v, t) for i in range(start, end) for v, t in ds.puts(i)])

    try:
        await apply([entry(key, v, t) for key, v, t in ds.ghosts()[:1]])  # creates the index, once
        await in_batches(ds.n, rows)
        await apply([entry(key, v, t) for key, v, t in ds.ghosts()[1:]])
    finally:
        await target.close()


async def es_scan(es: AsyncElasticsearch, index: str) -> tuple[int, float]:
    """The raw baseline: every document over a point in time, ``search_after``: (docs, docs/s)."""
    t0 = time.monotonic()
    pit = await es.open_point_in_time(index=index, keep_alive="5m")
    pit_id = pit["id"]
    after: list[Any] | None = None
    n = 0
    try:
        while True:
            if time.monotonic() - t0 > SCAN_TIMEOUT_S:
                raise RuntimeError(f"raw index scan not done within {SCAN_TIMEOUT_S:.0f} s")
            query: dict[str, Any] = {"pit": {"id": pit_id, "keep_alive": "5m"}, "size": PAGE, "sort": ["_shard_doc"],
                                     "source_includes": ["id", META_FIELD], "track_total_hits": False}
            if after is not None:
                query["search_after"] = after
            resp = await es.search(**query)
            hits = resp["hits"]["hits"]
            if not hits:
                break
            pit_id = resp.get("pit_id", pit_id)
            after = hits[-1]["sort"]
            n += len(hits)
    finally:
        with contextlib.suppress(Exception):
            await es.close_point_in_time(id=pit_id)
    return n, n / (time.monotonic() - t0)


# -- the worker and its check -------------------------------------------------------------------


def mem(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in bytes."""
    out = {"VmRSS": 0, "VmHWM": 0}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name = line.split(":", 1)[0]
        if name in out:
            out[name] = int(line.split()[1]) * 1024
    return out["VmRSS"], out["VmHWM"]


@dataclass
class Check:
    job: dict[str, Any] = field(default_factory=dict)
    seconds: float = float("nan")
    pass1_s: float = float("nan")
    #: (seconds since the POST, VmRSS, VmHWM, rows + documents counted at the last poll)
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)
    rss_start: int = 0
    hwm_start: int = 0
    hwm_end: int = 0
    rss_pass1: int = 0
    cpu_s: float = float("nan")
    log_errors: list[str] = field(default_factory=list)


async def worker_ready(w: Worker, s: aiohttp.ClientSession) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if w.proc.poll() is not None:
            raise RuntimeError(f"worker exited; see {w.log_path}")
        try:
            await w.health(s)
            return
        except (aiohttp.ClientError, TimeoutError):
            await asyncio.sleep(0.5)
    raise RuntimeError(f"worker not serving within {START_TIMEOUT_S:.0f} s; see {w.log_path}")


def iso_s(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def run_check(w: Worker, s: aiohttp.ClientSession, ns: str, ks: str, prefix: str) -> Check:
    c = Check()
    await worker_ready(w, s)
    doc = {"name": ns, "targets": [{"type": "cassandra", "keyspace": ks, "consistency": "ONE"},
                                   {"type": "elasticsearch", "index_prefix": prefix}]}
    async with s.put(f"{w.url}/v1/namespaces/{ns}", json=doc) as r:
        if r.status != 200:
            raise RuntimeError(f"namespace {ns}: HTTP {r.status} {await r.text()}")
    await w.wait_assigned(s, f"wal.{ns}:", timeout_s=START_TIMEOUT_S)
    await asyncio.sleep(2)  # the rebalance's aftermath
    c.rss_start, c.hwm_start = mem(w.pid)
    cpu0 = proc_cpu_s(w.pid)
    t0 = time.monotonic()
    async with s.post(f"{w.url}/v1/index/{ns}/{TABLE}/check", json={"repair": False}) as r:
        if r.status != 202:
            raise RuntimeError(f"check refused: HTTP {r.status} {await r.text()}")
        job_id = (await r.json())["id"]
    say(f"check: job {job_id} started")
    counted = 0
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                rss, hwm = mem(w.pid)
                c.samples.append((time.monotonic() - t0, rss, hwm, counted))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    sampler = asyncio.create_task(sample())
    last_say = 0.0
    try:
        while True:
            if time.monotonic() - t0 > CHECK_TIMEOUT_S:
                with contextlib.suppress(Exception):
                    async with s.delete(f"{w.url}/v1/jobs/{job_id}") as r:
                        await r.read()
                raise RuntimeError(f"check not done within {CHECK_TIMEOUT_S:.0f} s (cancelled)")
            if w.proc.poll() is not None:
                raise RuntimeError(f"worker exited during the check; see {w.log_path}")
            async with s.get(f"{w.url}/v1/jobs/{job_id}") as r:
                if r.status != 200:
                    raise RuntimeError(f"job {job_id}: HTTP {r.status} {await r.text()}")
                job = await r.json()
            counts = job.get("counts", {})
            counted = int(counts.get("rows", 0)) + int(counts.get("documents", 0))
            if c.pass1_s != c.pass1_s and (counts.get("documents", 0) > 0 or job["state"] != "RUNNING"):
                c.pass1_s = time.monotonic() - t0
                c.rss_pass1 = mem(w.pid)[0]
            if time.monotonic() - last_say > 30:
                last_say = time.monotonic()
                say(f"check: progress {job['progress']:.3f}, rows {counts.get('rows', 0):,}, documents "
                    f"{counts.get('documents', 0):,}, RSS {mem(w.pid)[0] / MIB:,.0f} MiB")
            if job["state"] != "RUNNING":
                break
            await asyncio.sleep(1.0)
    finally:
        stop.set()
        await asyncio.wait_for(sampler, 10)
    c.job = job
    c.cpu_s = proc_cpu_s(w.pid) - cpu0
    rss_end, c.hwm_end = mem(w.pid)
    c.samples.append((time.monotonic() - t0, rss_end, c.hwm_end, counted))
    if job.get("ended_at") and job.get("started_at"):
        c.seconds = iso_s(job["ended_at"]) - iso_s(job["started_at"])
    else:
        c.seconds = time.monotonic() - t0
    return c


def log_errors(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [x for x in path.read_text(errors="replace").splitlines() if "Traceback" in x or "[ERROR]" in x]


# -- report -----------------------------------------------------------------------------------


def fmt(x: float, digits: int = 0) -> str:
    return "n/a" if x != x else f"{x:,.{digits}f}"


def ratio(a: float, b: float) -> str:
    return "n/a" if a != a or b != b or b == 0 else f"{a / b:.2f}x"


@dataclass
class Result:
    ds: DataSet
    cql_load_rate: float = float("nan")
    es_load_s: float = float("nan")
    raw_rows: int = 0
    raw_rows_rate: float = float("nan")
    raw_docs: int = 0
    raw_docs_rate: float = float("nan")
    check: Check | None = None


def command() -> str:
    knobs = sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith("BENCH_IC_"))
    return " ".join([*knobs, "python -m bench.index_check"])


def report(r: Result) -> bool:
    """Print the table; whether the check reported exactly the drift made."""
    ds, c = r.ds, r.check
    rows: list[tuple[str, str, str, str]] = [
        ("load: Cassandra rows/s (execute_concurrent_with_args)", fmt(r.cql_load_rate), "", ""),
        (f"load: Elasticsearch documents/s ({ES_LOAD})", fmt(ds.documents / r.es_load_s), "", ""),
    ]
    ok = False
    if c is not None:
        counts = c.job.get("counts", {})
        n_rows, n_docs = int(counts.get("rows", 0)), int(counts.get("documents", 0))
        total = n_rows + n_docs
        pass1 = n_rows / c.pass1_s if c.pass1_s > 0 else float("nan")
        pass2_s = c.seconds - c.pass1_s
        pass2 = n_docs / pass2_s if pass2_s > 0 else float("nan")
        raw_both = (r.raw_rows + r.raw_docs) / (r.raw_rows / r.raw_rows_rate + r.raw_docs / r.raw_docs_rate)
        peak = max((x[1] for x in c.samples), default=0)
        half = [x for x in c.samples if x[3] >= total / 2]
        growth = (c.samples[-1][1] - half[0][1]) / MIB if half else float("nan")
        found = {k: int(counts.get(k, 0)) for k in ds.expected()}
        ok = c.job.get("state") == "SUCCEEDED" and found == ds.expected()
        rows += [
            ("job state", str(c.job.get("state")) + (f" ({c.job.get('error')})" if c.job.get("error") else ""),
             "", ""),
            ("rows + documents checked", f"{n_rows:,} + {n_docs:,} = {total:,}",
             f"{r.raw_rows:,} + {r.raw_docs:,}", ""),
            ("check seconds (job start → end)", fmt(c.seconds, 1),
             fmt(r.raw_rows / r.raw_rows_rate + r.raw_docs / r.raw_docs_rate, 1), ""),
            ("rows + documents / s (raw: both scans, one after the other)", fmt(total / c.seconds), fmt(raw_both),
             ratio(total / c.seconds, raw_both)),
            ("pass 1, rows → documents: rows/s (raw: Cassandra token-order scan)", fmt(pass1), fmt(r.raw_rows_rate),
             ratio(pass1, r.raw_rows_rate)),
            ("pass 2, documents → rows: docs/s (raw: Elasticsearch PIT scan)", fmt(pass2), fmt(r.raw_docs_rate),
             ratio(pass2, r.raw_docs_rate)),
            ("pass 1 / pass 2 seconds (± 1 s)", f"{fmt(c.pass1_s, 1)} / {fmt(pass2_s, 1)}", "", ""),
            ("worker RSS MiB: start / end of pass 1 / peak / end",
             f"{c.rss_start / MIB:,.0f} / {c.rss_pass1 / MIB:,.0f} / {peak / MIB:,.0f} / {c.samples[-1][1] / MIB:,.0f}",
             "", ""),
            ("worker RSS growth over the check's second half, MiB", fmt(growth, 1), "", ""),
            ("worker VmHWM MiB: before / after the check", f"{c.hwm_start / MIB:,.0f} / {c.hwm_end / MIB:,.0f}",
             "", ""),
            ("worker CPU s per 1,000 rows + documents", fmt(c.cpu_s / max(1, total) * 1000, 3), "", ""),
            ("drift found / made: missing, stale, extra, index_newer",
             " ".join(f"{found[k]}/{ds.expected()[k]}" for k in ("missing", "stale", "extra", "index_newer")),
             "", "exact" if ok else "MISMATCH"),
            ("worker log: ERROR lines and tracebacks", str(len(c.log_errors)), "", ""),
        ]
    print(f"\n== index check: {ds.n:,} rows, {PARTITIONS} partitions, page {PAGE}, ES load {ES_LOAD} ==")
    print("\n| figure | walstream | raw | ratio |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if c is not None and c.log_errors:
        print("worker log, first lines with errors:\n    " + "\n    ".join(x[:300] for x in c.log_errors[:5]))
    print(f"\ncommand: `{command()}`; commit {git_state()}")
    return ok


# -- main -------------------------------------------------------------------------------------


async def main() -> int:
    tag = f"bic{uuid.uuid4().hex[:8]}"
    ks, ns, prefix = tag, tag, f"{tag}_"
    index = f"{prefix}{TABLE}"
    print(f"walstream index check bench: {ROWS:,} rows, drift {DRIFT}, ES load {ES_LOAD}, names {tag}, "
          f"code {git_state()}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="walstream-bench-ic-"))
    ds = DataSet.make(ROWS, DRIFT)
    r = Result(ds)
    cluster, session = await asyncio.to_thread(cassandra_session)
    es = AsyncElasticsearch(ES_URL, request_timeout=120)
    w: Worker | None = None
    try:
        say(f"load: {ROWS:,} rows into Cassandra {ks}.{TABLE}")
        r.cql_load_rate = await asyncio.to_thread(cassandra_load, session, ks, ds)
        say(f"load: Cassandra {r.cql_load_rate:,.0f} rows/s; {ds.documents:,} documents into {index} ({ES_LOAD})")
        t0 = time.monotonic()
        if ES_LOAD == "target":
            await es_load_target(prefix, ns, ds)
        elif ES_LOAD == "bulk":
            await es_load_bulk(es, index, ds)
        else:
            raise SystemExit(f"BENCH_IC_ES_LOAD={ES_LOAD!r}: bulk or target")
        await es.indices.refresh(index=index)
        r.es_load_s = time.monotonic() - t0
        have = int((await es.count(index=index))["count"])
        say(f"load: Elasticsearch {ds.documents / r.es_load_s:,.0f} docs/s ({r.es_load_s:.1f} s), {have:,} documents")
        if have != ds.documents:
            raise RuntimeError(f"the index holds {have} documents, not {ds.documents}")

        say("raw: Cassandra scan")
        r.raw_rows, r.raw_rows_rate = await asyncio.to_thread(cassandra_scan, session, ks)
        say(f"raw: Cassandra {r.raw_rows:,} rows, {r.raw_rows_rate:,.0f}/s; Elasticsearch scan")
        r.raw_docs, r.raw_docs_rate = await es_scan(es, index)
        say(f"raw: Elasticsearch {r.raw_docs:,} documents, {r.raw_docs_rate:,.0f}/s")
        if r.raw_rows != ds.n:
            raise RuntimeError(f"the table holds {r.raw_rows} rows, not {ds.n}")

        (root / "w").mkdir()
        env = {"WALSTREAM_CASSANDRA_HOSTS": CASSANDRA_HOST, "WALSTREAM_CASSANDRA_PORT": str(CASSANDRA_PORT),
               "WALSTREAM_ELASTICSEARCH_URL": ES_URL}
        w = Worker(root / "w", app_prefix=tag, partitions=PARTITIONS, broker=BROKER, env=env)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
            r.check = await run_check(w, s, ns, ks, prefix)
        r.check.log_errors = log_errors(w.log_path)
    finally:
        if w is not None:
            w.stop()
            if KEEP_LOG or log_errors(w.log_path):
                kept = root.parent / f"{root.name}-worker.log"
                shutil.copy(w.log_path, kept)
                print(f"worker log kept in {kept}")
        await clean_up(session, es, tag, ks, w)
        await es.close()
        cluster.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    return 0 if report(r) else 1


async def clean_up(session: Session, es: AsyncElasticsearch, tag: str, ks: str, w: Worker | None) -> None:
    """Drop the keyspace, delete the run's indices (tombstones too) and the worker's topics."""
    try:
        await asyncio.to_thread(session.execute, f"DROP KEYSPACE IF EXISTS {ks}", timeout=120)
    except Exception as exc:
        say(f"(could not drop keyspace {ks}: {exc})")
    try:
        found = await es.indices.get(index=f"{tag}*,{TOMBSTONE_PREFIX}{tag}*", expand_wildcards="all")
        for name in found:
            await es.indices.delete(index=name)
    except Exception as exc:
        say(f"(could not delete the indices of {tag}: {exc})")
    try:
        await delete_topics(BROKER, lambda t: tag in t or (w is not None and t.startswith(w.app_id)))
    except Exception as exc:
        say(f"(could not remove the run's topics: {exc})")


async def run_main() -> int:
    """``main`` with SIGTERM/SIGINT cancelling it, so that its clean-up runs."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    return await main()


if __name__ == "__main__":
    sys.exit(asyncio.run(run_main()))
