"""``make bench``: walstream against raw baselines, same services, one run, ratios reported.

Rungs:
- L2  raw aiokafka produce→consume loop, acks=all, idempotent, 1 KB values: entries/s and
      end-to-end p50/p99;
- L3  the same volume through ``POST /v1/log/batch`` → delivery agent → no-op target:
      entries/s, and L3 as a percentage of L2;
- ack latency of single ``POST /v1/log`` at a fixed rate, next to raw aiokafka
      ``send_and_wait`` at the same rate.

Environment: ``BENCH_N`` (entries per rung, default 50000), ``BENCH_RATE`` (requests/s for
the latency rung, default 200), ``BENCH_SECONDS`` (default 10).
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.worker import Worker
from walstream.kafka_admin import TopicSpec, ensure_topics

BROKER = os.environ.get("WALSTREAM_BROKER", "127.0.0.1:9092")
N = int(os.environ.get("BENCH_N", "50000"))
RATE = float(os.environ.get("BENCH_RATE", "200"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
PARTITIONS = 8
VALUE_BYTES = 1024
BATCH = 500
CLIENTS = 4


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def filler(n: int) -> str:
    return "x" * n


# -- L2: raw aiokafka --------------------------------------------------------------------


async def raw_kafka_loop(n: int) -> dict[str, float]:
    topic = f"bench.raw.{uuid.uuid4().hex[:8]}"
    await ensure_topics(BROKER, [TopicSpec(topic, PARTITIONS, 1)])
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=BROKER,
        auto_offset_reset="earliest",
        group_id=f"bench-{topic}",
        enable_auto_commit=False,
    )
    await consumer.start()
    producer = AIOKafkaProducer(
        bootstrap_servers=BROKER, acks="all", enable_idempotence=True, linger_ms=2, max_batch_size=256 * 1024
    )
    await producer.start()
    pad = filler(VALUE_BYTES - 40).encode()
    latencies: list[float] = []
    done = asyncio.Event()

    async def consume() -> None:
        seen = 0
        while seen < n:
            batch = await consumer.getmany(timeout_ms=500)
            now = time.time()
            for records in batch.values():
                for r in records:
                    sent = float(r.value[:20])
                    latencies.append(now - sent)
                    seen += 1
        done.set()

    await asyncio.sleep(1.0)  # let the consumer join
    task = asyncio.create_task(consume())
    started = time.time()
    futures = []
    for i in range(n):
        value = f"{time.time():<20.6f}".encode() + pad
        futures.append(await producer.send(topic, value=value, key=str(i % 1000).encode()))
    await asyncio.gather(*futures)
    await done.wait()
    elapsed = time.time() - started
    await task
    await producer.stop()
    await consumer.stop()
    return {"entries_per_s": n / elapsed, "p50_ms": pct(latencies, 50) * 1000, "p99_ms": pct(latencies, 99) * 1000}


async def raw_ack_latency(rate: float, seconds: float) -> dict[str, float]:
    topic = f"bench.rawack.{uuid.uuid4().hex[:8]}"
    await ensure_topics(BROKER, [TopicSpec(topic, PARTITIONS, 1)])
    producer = AIOKafkaProducer(bootstrap_servers=BROKER, acks="all", enable_idempotence=True, linger_ms=2)
    await producer.start()
    pad = filler(VALUE_BYTES).encode()
    lat: list[float] = []

    async def one(i: int) -> None:
        t0 = time.perf_counter()
        await producer.send_and_wait(topic, value=pad, key=str(i).encode())
        lat.append(time.perf_counter() - t0)

    await paced(rate, seconds, one)
    await producer.stop()
    return {"p50_ms": pct(lat, 50) * 1000, "p99_ms": pct(lat, 99) * 1000, "n": len(lat)}


async def paced(rate: float, seconds: float, fn: object) -> None:
    """Start ``fn(i)`` at a fixed rate (open loop), then wait for all of them."""
    tasks = []
    interval = 1.0 / rate
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds:
        tasks.append(asyncio.create_task(fn(i)))  # type: ignore[operator]
        i += 1
        await asyncio.sleep(max(0.0, start + i * interval - time.perf_counter()))
    await asyncio.gather(*tasks)


# -- L3: through walstream -----------------------------------------------------------------


async def delivered(session: aiohttp.ClientSession, url: str, ns: str) -> float:
    async with session.get(f"{url}/metrics") as r:
        text = await r.text()
    m = re.search(rf'walstream_delivered_total\{{namespace="{re.escape(ns)}",target="noop"\}} ([0-9.e+]+)', text)
    return float(m.group(1)) if m else 0.0


async def lag_quantiles(session: aiohttp.ClientSession, url: str, ns: str) -> tuple[float, float]:
    """p50/p99 of write→delivery lag from the worker's histogram (bucket upper bounds)."""
    async with session.get(f"{url}/metrics") as r:
        text = await r.text()
    buckets = []
    for line in text.splitlines():
        if line.startswith("walstream_delivery_lag_seconds_bucket{") and f'namespace="{ns}"' in line:
            le = re.search(r'le="([^"]+)"', line)
            if le:
                buckets.append((float(le.group(1)), float(line.rsplit(" ", 1)[1])))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0

    def q(p: float) -> float:
        for le, c in buckets:
            if c >= p * total:
                return le
        return float("inf")

    return q(0.5), q(0.99)


async def walstream_rungs(n: int, rate: float, seconds: float) -> tuple[dict[str, float], dict[str, float]]:
    worker = Worker(Path(tempfile.mkdtemp(prefix="walstream-bench-")), app_prefix="bench", partitions=PARTITIONS,
                    broker=BROKER)
    try:
        async with aiohttp.ClientSession() as s:
            await worker.wait_assigned(s, "")  # any partition: the worker has joined
            ns = f"bench{uuid.uuid4().hex[:8]}"
            async with s.put(f"{worker.url}/v1/namespaces/{ns}", json={"targets": [{"type": "noop"}]}) as r:
                assert r.status == 200, await r.text()
            await worker.wait_assigned(s, f"wal.{ns}:")  # the delivery agent consumes the new topic
            pad = filler(VALUE_BYTES - 100)
            bodies = []
            for start in range(0, n, BATCH):
                entries = [
                    {"namespace": ns, "key": str(i % 1000), "payload": {"i": i, "pad": pad}}
                    for i in range(start, min(n, start + BATCH))
                ]
                bodies.append(orjson.dumps({"entries": entries}))
            queue: asyncio.Queue[bytes] = asyncio.Queue()
            for b in bodies:
                queue.put_nowait(b)
            failures = 0

            async def client() -> None:
                nonlocal failures
                while not queue.empty():
                    body = queue.get_nowait()
                    async with s.post(
                        f"{worker.url}/v1/log/batch", data=body, headers={"content-type": "application/json"}
                    ) as r:
                        doc = orjson.loads(await r.read())
                        failures += sum(1 for x in doc["results"] if x["durable"] != "SUCCESS")

            started = time.time()
            await asyncio.gather(*(client() for _ in range(CLIENTS)))
            acked = time.time() - started
            while await delivered(s, worker.url, ns) < n:  # noqa: ASYNC110 - polling another process
                await asyncio.sleep(0.05)
            elapsed = time.time() - started
            p50, p99 = await lag_quantiles(s, worker.url, ns)
            l3 = {
                "entries_per_s": n / elapsed,
                "write_entries_per_s": n / acked,
                "failures": failures,
                "lag_p50_le_ms": p50 * 1000,
                "lag_p99_le_ms": p99 * 1000,
            }

            lat: list[float] = []
            body_tpl = {"namespace": ns, "payload": {"pad": filler(VALUE_BYTES - 60)}}

            async def one(i: int) -> None:
                t0 = time.perf_counter()
                async with s.post(f"{worker.url}/v1/log", json={**body_tpl, "key": str(i)}) as r:
                    await r.read()
                    assert r.status == 200
                lat.append(time.perf_counter() - t0)

            await paced(rate, seconds, one)
            ack = {"p50_ms": pct(lat, 50) * 1000, "p99_ms": pct(lat, 99) * 1000, "n": len(lat)}
            return l3, ack
    finally:
        worker.stop()


async def main() -> None:
    print(f"walstream bench: N={N} entries of ~{VALUE_BYTES} B, {PARTITIONS} partitions, broker {BROKER}")
    l2 = await raw_kafka_loop(N)
    print(
        f"L2 raw aiokafka loop:      {l2['entries_per_s']:>9.0f} entries/s   e2e p50 {l2['p50_ms']:.1f} ms"
        f"  p99 {l2['p99_ms']:.1f} ms"
    )
    raw_ack = await raw_ack_latency(RATE, SECONDS)
    l3, ack = await walstream_rungs(N, RATE, SECONDS)
    print(
        f"L3 walstream batch→noop:   {l3['entries_per_s']:>9.0f} entries/s   (writes acked at "
        f"{l3['write_entries_per_s']:.0f}/s, failures {l3['failures']})  lag p50 ≤{l3['lag_p50_le_ms']:.0f} ms"
        f"  p99 ≤{l3['lag_p99_le_ms']:.0f} ms"
    )
    print(f"L3 / L2:                   {100 * l3['entries_per_s'] / l2['entries_per_s']:>8.1f} %   (aim ≥ 40 %)")
    print(
        f"ack latency @ {RATE:.0f}/s raw send_and_wait: p50 {raw_ack['p50_ms']:.2f} ms  p99 {raw_ack['p99_ms']:.2f} ms"
        f"  (n={raw_ack['n']:.0f})"
    )
    print(
        f"ack latency @ {RATE:.0f}/s POST /v1/log:       p50 {ack['p50_ms']:.2f} ms  p99 {ack['p99_ms']:.2f} ms"
        f"  (n={ack['n']:.0f})"
    )
    print(f"p99 ack ratio walstream/raw: {ack['p99_ms'] / raw_ack['p99_ms']:.2f}x   (aim ≤ 2x)")


if __name__ == "__main__":
    asyncio.run(main())
