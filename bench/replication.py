"""Replication benchmark: forwarding from east to west next to a raw aiokafka relay, one run.

Run ``python -m bench.replication``. East is the stack's Kafka (127.0.0.1:9092), west is
``kafka-west`` (127.0.0.1:9192), started for the run if it is not running and stopped again
after. One east worker (``WALSTREAM_REGION=east``, 8 partitions) holds a namespace with a
``noop`` target replicated to west; no west worker runs, so that both sides of the comparison
do the same work: read in east, write in west. West's ``wal.<ns>`` is set to
``message.timestamp.type=LogAppendTime``, so a record's timestamp is when west took it.

**Throughput.** ``BENCH_REPL_N`` entries (default 50,000; ~1 KB payloads, 1,000 keys) are
written in east in ``POST /v1/log/batch`` requests of 500, as fast as the worker acks them.
Forwarded entries/s = N / (last append in west - first append in west). Raw: the same N
records (same sizes and keys) produced to an east topic first, then a relay (one aiokafka
consumer on east, one idempotent ``acks=all`` producer on west, as the region target's)
started: N / (last append - first append) in its west topic.

**Lag at a fixed rate.** ``BENCH_REPL_RATE`` entries/s (default 500) for
``BENCH_REPL_SECONDS`` (default 30), a batch of rate/10 entries every 100 ms. Lag of an
entry = its append time in west - its write time (the envelope's ``ts``): p50, p99, max,
over the entries written after the first ``BENCH_REPL_WARM_S`` seconds (default 5).
Raw: a producer at the same rate on east with the relay running; lag = append time in west -
the record's CreateTime in east.

CPU seconds per 1,000 entries: the east worker (or the relay, in this process) and the
brokers are reported for the throughput part. Every wait is bounded; workers, temp dirs and
the run's topics (both clusters) are removed at the end.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.procstat import proc_cpu_s, self_cpu_s
from bench.recovery import delete_topics, west, west_running
from bench.worker import Worker
from walstream.kafka_admin import TopicSpec, ensure_topics, set_topic_config

EAST = os.environ.get("WALSTREAM_BROKER", "127.0.0.1:9092")
WEST = "127.0.0.1:9192"
N = int(os.environ.get("BENCH_REPL_N", "50000"))
RATE = float(os.environ.get("BENCH_REPL_RATE", "500"))
SECONDS = float(os.environ.get("BENCH_REPL_SECONDS", "30"))
#: lag samples of entries written in the first seconds are left out (a new namespace's first
#: rebalance and a relay's first fetch are not the steady state measured)
WARM_S = float(os.environ.get("BENCH_REPL_WARM_S", "5"))
PARTITIONS = 8
KEYS = 1000
BATCH = 500
PAD = "x" * 900  # ~1 KB entries


def payload(i: int) -> dict[str, Any]:
    return {"n": i, "pad": PAD}


def say(msg: str) -> None:
    print(msg, flush=True)


def pcts(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    xs = sorted(xs)
    return {"p50": statistics.median(xs), "p99": xs[min(len(xs) - 1, int(len(xs) * 0.99))], "max": xs[-1]}


@dataclass
class Side:
    rate: float = float("nan")
    cpu_per_1000: dict[str, float] = field(default_factory=dict)
    lag_ms: dict[str, float] = field(default_factory=dict)
    lag_n: int = 0


async def appended(topic: str, n: int, timeout_s: float, ts_of: Any = None) -> list[tuple[int, Any]]:
    """Read ``topic`` in west from its start until ``n`` records arrived (or the timeout):
    their append times (ms), with ``ts_of(record)`` when given."""
    c = AIOKafkaConsumer(topic, bootstrap_servers=WEST, auto_offset_reset="earliest", group_id=None,
                         enable_auto_commit=False)
    await c.start()
    out: list[tuple[int, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < n and time.monotonic() < deadline:
            for records in (await c.getmany(timeout_ms=500, max_records=5000)).values():
                out += [(r.timestamp, ts_of(r) if ts_of else None) for r in records]
    finally:
        await c.stop()
    return out


def steady(lags: list[tuple[int, Any]]) -> list[float]:
    """Lag (ms) of each (append ms, written ms) pair, leaving out the first WARM_S seconds."""
    if not lags:
        return []
    start = min(w for _, w in lags)
    return [float(a - w) for a, w in lags if w >= start + WARM_S * 1000]


def rate_of(times: list[tuple[int, Any]], n: int) -> float:
    if len(times) < n or n < 2:
        return float("nan")
    stamps = sorted(t for t, _ in times)
    span_s = (stamps[-1] - stamps[0]) / 1000
    return n / span_s if span_s > 0 else float("nan")


async def create(bootstrap: str, topic: str, log_append: bool = False) -> None:
    await ensure_topics(bootstrap, [TopicSpec(topic, PARTITIONS, 1)])
    if log_append:
        await set_topic_config(bootstrap, topic, {"message.timestamp.type": "LogAppendTime"})


async def relay(src: str, dst: str, stop: asyncio.Event) -> None:
    """Raw forwarding: consume ``src`` in east, produce each record to ``dst`` in west."""
    c = AIOKafkaConsumer(src, bootstrap_servers=EAST, auto_offset_reset="earliest", group_id=None,
                         enable_auto_commit=False)
    p = AIOKafkaProducer(bootstrap_servers=WEST, acks="all", enable_idempotence=True)
    await c.start()
    await p.start()
    try:
        while not stop.is_set():
            batch = await c.getmany(timeout_ms=200, max_records=5000)
            futures = [await p.send(dst, value=r.value, key=r.key, headers=[("src-ts", str(r.timestamp).encode())])
                       for records in batch.values() for r in records]
            if futures:
                await asyncio.gather(*futures)
    finally:
        await p.stop()
        await c.stop()


async def raw(tag: str) -> Side:
    side = Side()
    src, dst = f"bench.repl.raw.{tag}", f"bench.repl.rawout.{tag}"
    await create(EAST, src)
    await create(WEST, dst, log_append=True)
    p = AIOKafkaProducer(bootstrap_servers=EAST, acks="all", enable_idempotence=True, linger_ms=5)
    await p.start()
    try:
        futures = [await p.send(src, value=orjson.dumps(payload(i)), key=f"k{i % KEYS}".encode()) for i in range(N)]
        await asyncio.gather(*futures)
        say(f"raw: {N} records in east; relaying")
        stop = asyncio.Event()
        cpu0 = self_cpu_s()
        task = asyncio.create_task(relay(src, dst, stop))
        times = await appended(dst, N, timeout_s=600)
        side.rate = rate_of(times, N)
        side.cpu_per_1000 = {"relay": (self_cpu_s() - cpu0) / N * 1000}
        # lag at a fixed rate, the relay still running
        dst_lag = f"{dst}.lag"
        await create(WEST, dst_lag, log_append=True)
        stop.set()
        await task
        stop = asyncio.Event()
        src_lag = f"{src}.lag"
        await create(EAST, src_lag)
        task = asyncio.create_task(relay(src_lag, dst_lag, stop))
        sent = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < SECONDS:
            for _ in range(int(RATE / 10)):
                await p.send(src_lag, value=orjson.dumps(payload(sent)), key=f"k{sent % KEYS}".encode())
                sent += 1
            await asyncio.sleep(max(0.0, t0 + sent / RATE - time.monotonic()))
        await p.flush()
        lags = await appended(dst_lag, sent, 120, ts_of=lambda r: int(dict(r.headers)["src-ts"]))
        stop.set()
        await task
        side.lag_ms = pcts(steady(lags))
        side.lag_n = len(lags)
    finally:
        await p.stop()
    return side


async def post_batch(s: aiohttp.ClientSession, url: str, entries: list[dict[str, Any]]) -> None:
    async with s.post(f"{url}/v1/log/batch", json={"entries": entries}) as r:
        body = await r.json()
        if r.status != 200 or any(x["durable"] != "SUCCESS" for x in body["results"]):
            raise RuntimeError(f"write failed: {r.status} {str(body)[:300]}")


async def walstream(root: Path, tag: str, s: aiohttp.ClientSession) -> tuple[Side, str]:
    side = Side()
    env = {"WALSTREAM_REGION": "east", "WALSTREAM_REGION_BROKERS": f"east={EAST},west={WEST}"}
    worker = Worker(root / "east", app_prefix=f"bench-repl-{tag}", partitions=PARTITIONS, broker=EAST, env=env)
    ns = f"brepl{tag}"
    try:
        await worker_ready(worker, s)
        doc = {"name": ns, "targets": [{"type": "noop"}], "replication": {"regions": {"east": {}, "west": {}}}}
        async with s.put(f"{worker.url}/v1/namespaces/{ns}", json=doc) as r:
            answer = await r.json()
            if r.status != 200:
                raise RuntimeError(f"namespace refused: {answer}")
        say(f"walstream: namespace {ns}: west {answer.get('regions')}")
        await create(WEST, f"wal.{ns}", log_append=True)
        await worker.wait_assigned(s, f"wal.{ns}:")
        cpu0, w0 = self_cpu_s(), proc_cpu_s(worker.pid)
        for start in range(0, N, BATCH):
            await post_batch(s, worker.url, [{"namespace": ns, "key": f"k{i % KEYS}", "payload": payload(i)}
                                             for i in range(start, start + BATCH)])
        times = await appended(f"wal.{ns}", N, timeout_s=900)
        side.rate = rate_of(times, N)
        side.cpu_per_1000 = {"worker": (proc_cpu_s(worker.pid) - w0) / N * 1000,
                             "bench": (self_cpu_s() - cpu0) / N * 1000}
        # lag at a fixed rate: another namespace, fresh
        ns_lag = f"{ns}lag"
        doc["name"] = ns_lag
        async with s.put(f"{worker.url}/v1/namespaces/{ns_lag}", json=doc) as r:
            await r.read()
        await create(WEST, f"wal.{ns_lag}", log_append=True)
        await worker.wait_assigned(s, f"wal.{ns_lag}:")
        sent = 0
        t0 = time.monotonic()
        per = int(RATE / 10)
        while time.monotonic() - t0 < SECONDS:
            await post_batch(s, worker.url, [{"namespace": ns_lag, "key": f"k{i % KEYS}", "payload": payload(i)}
                                             for i in range(sent, sent + per)])
            sent += per
            await asyncio.sleep(max(0.0, t0 + sent / RATE - time.monotonic()))
        lags = await appended(f"wal.{ns_lag}", sent, 120, ts_of=lambda r: orjson.loads(r.value)["ts"] // 1000)
        side.lag_ms = pcts(steady(lags))
        side.lag_n = len(lags)
    finally:
        worker.stop()
    return side, worker.app_id


async def worker_ready(worker: Worker, s: aiohttp.ClientSession, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            raise RuntimeError(f"worker exited; see {worker.log_path}")
        try:
            await worker.health(s)
            return
        except aiohttp.ClientError:
            await asyncio.sleep(0.5)
    raise RuntimeError(f"worker not serving; see {worker.log_path}")


def fmt(x: float, digits: int = 0) -> str:
    return "n/a" if x != x else f"{x:,.{digits}f}"


async def main() -> None:
    tag = uuid.uuid4().hex[:8]
    root = Path(tempfile.mkdtemp(prefix="bench-repl-"))
    (root / "east").mkdir()
    started_west = not west_running()
    if started_west:
        await west("up")
    app = ""
    try:
        raw_side = await raw(tag)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
            ws, app = await walstream(root, tag, s)
    finally:
        for bootstrap in (EAST, WEST):
            try:
                await delete_topics(bootstrap, lambda t: tag in t or (bool(app) and t.startswith(app)))
            except Exception as exc:
                say(f"(could not remove the run's topics on {bootstrap}: {exc})")
        if started_west:
            await west("down")
        shutil.rmtree(root, ignore_errors=True)
    say(f"\nreplication east -> west: N={N} ~1 KB entries, {KEYS} keys, {PARTITIONS} partitions; "
        f"lag at {RATE:.0f}/s for {SECONDS:.0f} s")
    say("| | entries/s forwarded | ratio to raw | CPU s / 1000 (forwarder) | lag p50 ms | p99 ms | max ms |")
    say("|---|---|---|---|---|---|---|")
    for name, side in (("raw aiokafka relay", raw_side), ("walstream region target", ws)):
        cpu = next(iter(side.cpu_per_1000.values()), float("nan"))
        say(f"| {name} | {fmt(side.rate)} | {fmt(side.rate / raw_side.rate, 2)} | {fmt(cpu, 3)} | "
            f"{fmt(side.lag_ms['p50'])} | {fmt(side.lag_ms['p99'])} | {fmt(side.lag_ms['max'])} |")
    say(f"(lag samples: raw {raw_side.lag_n}, walstream {ws.lag_n}; walstream CPU: {ws.cpu_per_1000})")


if __name__ == "__main__":
    asyncio.run(main())
