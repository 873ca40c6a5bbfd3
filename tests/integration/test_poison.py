"""Issue 7, invariants: nothing delivered early, no accepted entry crashes a worker.

Given entries at the edges of what walstream accepts (a due time far in the future, an entry
of ~1 MB with a delay), when they are written and their delays, state rows and dead letters
are made, then the worker never crashes, the far-future entry is not delivered, the large
entry is delivered after its delay — and where the fleet's changelog topics are too small for
an entry's rows (topics made by an older walstream), it is refused at write time (413), and a
record written around the API is dead-lettered instead of crashing the worker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.conftest import KAFKA, Worker, kafka_target, put_namespace, read_deliveries, wait_until
from walstream.entry import Entry, WriteClock
from walstream.kafka_admin import TopicSpec, ensure_topics

pytestmark = pytest.mark.timeout(240)

BIG = 1_010_000
TABLES = ["walstream-schedule", "walstream-held", "walstream-blocked", "walstream-entries", "walstream-dlq-index"]


def make_topic(topic: str, max_message_bytes: int | None = None, partitions: int = 4) -> None:
    config = {"max.message.bytes": str(max_message_bytes)} if max_message_bytes else {}
    asyncio.run(ensure_topics(KAFKA, [TopicSpec(topic, partitions, 1, config)]))


def test_far_future_refused_and_a_large_delayed_entry_is_delivered_without_a_crash(
    start_worker: Callable[..., Worker], unique: str
) -> None:
    # Given a worker whose namespace delivers to a topic that takes large records
    w = start_worker()
    out = f"out-{unique}"
    make_topic(out, 4 * 1024 * 1024)
    put_namespace(w, unique, [kafka_target(out)])
    with w.client() as c:
        # When: a due time past the schedule's range, the last one in it, and a ~1 MB entry
        far = c.post("/v1/log", json={"namespace": unique, "id": "far", "payload": 1,
                                      "lifecycle": {"deliver_at": "2300-01-01T00:00:00Z"}})
        last = c.post("/v1/log", json={"namespace": unique, "id": "last", "payload": 1,
                                       "lifecycle": {"deliver_at": "2286-11-20T17:46:39Z"}})
        big = c.post("/v1/log", json={"namespace": unique, "id": "big", "payload": "x" * BIG,
                                      "lifecycle": {"delay_ms": 3000}})
        small = c.post("/v1/log", json={"namespace": unique, "id": "small", "payload": 2})
    # Then: the far one is refused naming the limit; the others are durable
    assert far.status_code == 400 and "2286-11-20T17:46:40Z" in far.json()["message"], far.text
    assert (last.status_code, big.status_code, small.status_code) == (200, 200, 200), big.text
    delivered = read_deliveries(out, expect=2, timeout_s=60)
    assert set(delivered) == {"big", "small"}
    assert w.proc is not None and w.proc.poll() is None, w.tail()
    with w.client() as c:
        assert c.get(f"/v1/log/{unique}/last").json()["state"] == "DELAYED"
    # And a restart (recovering the big entry's rows from the changelogs) works
    w.stop()
    w.start()
    assert w.proc.poll() is None


def test_entries_too_large_for_old_changelog_topics_are_refused_or_dead_lettered(
    start_worker: Callable[..., Worker], unique: str
) -> None:
    # Given changelog topics made by an older walstream (the broker's ~1 MB record limit)
    app_id = f"ws-{unique}"
    for table in TABLES:
        make_topic(f"{app_id}-{table}-changelog")
    w = start_worker(app_id=app_id)
    out = f"out-{unique}"
    make_topic(out, 4 * 1024 * 1024)
    put_namespace(w, unique, [kafka_target(out)])
    with w.client() as c:
        # When the write API is given an entry whose delay row would not fit
        r = c.post("/v1/log", json={"namespace": unique, "id": "big", "payload": "x" * BIG,
                                    "lifecycle": {"delay_ms": 3000}})
    # Then it is refused (413) and names the limit
    assert r.status_code == 413, r.text
    assert "limit" in r.json()["message"]

    # When the same entry reaches the WAL topic around the API (another producer)
    entry = Entry(id="around", namespace=unique, key="k", payload="x" * BIG, written_at_us=WriteClock().now_us(),
                  due_at_ms=int(time.time() * 1000) + 2000)

    async def produce() -> None:
        p = AIOKafkaProducer(bootstrap_servers=KAFKA, max_request_size=4 * 1024 * 1024)
        await p.start()
        try:
            await p.send_and_wait(f"wal.{unique}", entry.encode(), key=b"k")
        finally:
            await p.stop()

    asyncio.run(produce())
    with w.client() as c:
        c.post("/v1/log", json={"namespace": unique, "id": "after", "key": "k", "payload": 1})
        # Then it is dead-lettered with the reason, the worker keeps running, later entries flow
        rows = wait_until(lambda: c.get(f"/v1/dlq/{unique}").json()["dead_letters"], timeout_s=60,
                          what="the oversized entry in the dead-letter index")
    assert [r["id"] for r in rows] == ["around"] and "too large" in rows[0]["message"]
    assert set(read_deliveries(out, expect=1, timeout_s=30)) == {"after"}
    assert w.proc is not None and w.proc.poll() is None, w.tail()
