"""The write API's ``id`` as an idempotency key, against a real fleet of two workers.

Given an id already written, when it is written again through either worker (the one holding
its partition, or the one that wrote it: neither asks another worker): the same request gets the
original partition and offset; a different request under that id (payload, key, lifecycle) is a
409; an id whose entry was cancelled is a 409 with the state. Counted in the WAL topic itself: each id has exactly one
record, whatever was answered.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import murmur2

from tests.integration.conftest import KAFKA, Worker, create_topic, kafka_target, put_namespace, wait_until

pytestmark = pytest.mark.timeout(300)


def wal_records(topic: str, partitions: int) -> Counter[str]:
    """Entry id → number of records in ``topic`` (of ``partitions``), from the start to its current end."""

    async def run() -> Counter[str]:
        c = AIOKafkaConsumer(bootstrap_servers=KAFKA, group_id=None, enable_auto_commit=False)
        await c.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            c.assign(tps)
            await c.seek_to_beginning(*tps)
            end = await c.end_offsets(tps)
            ids: Counter[str] = Counter()
            while any([await c.position(tp) < end[tp] for tp in tps]):
                for records in (await c.getmany(timeout_ms=1000)).values():
                    ids.update(orjson.loads(r.value)["id"] for r in records)
            return ids
        finally:
            await c.stop()

    return asyncio.run(run())


def owned(w: Worker, ns: str) -> set[int]:
    with w.client() as c:
        return {int(t.rsplit(":", 1)[1]) for t in c.get("/v1/health").json()["assigned"] if t.startswith(f"wal.{ns}:")}


def key_in(partitions: set[int], of: int, prefix: str) -> str:
    """A key the default partitioner puts in one of ``partitions`` (of ``of``)."""
    keys = (f"{prefix}{n}" for n in range(1000))
    return next(k for k in keys if (murmur2(k.encode()) & 0x7FFFFFFF) % of in partitions)


def post(w: Worker, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    with w.client() as c:
        r = c.post("/v1/log", json=doc)
    return r.status_code, r.json()


def test_a_repeated_id_is_the_original_entry_or_refused(start_worker: Callable[..., Worker], unique: str) -> None:
    # Given a fleet of two workers, each holding partitions of the namespace
    a = start_worker()
    b = start_worker(app_id=a.app_id)
    out = f"{unique}.out"
    create_topic(out)
    put_namespace(a, unique, [kafka_target(out)])
    wait_until(lambda: owned(a, unique) and owned(b, unique), timeout_s=90,
               what="both workers to own partitions of the namespace")
    partitions = len(owned(a, unique) | owned(b, unique))
    on_b = key_in(owned(b, unique), partitions, "kb")  # an entry whose state lives on b, written through a

    # When the same request is written again (later: its delay_ms gives another due time),
    # through the worker that wrote it (at once: it remembers), then, once the entry is
    # consumed, through the one holding its partition and again through the first
    same = {"namespace": unique, "id": "same-1", "key": on_b, "payload": {"n": 1, "m": [1, 2]},
            "lifecycle": {"delay_ms": 120_000}}
    status, first = post(a, same)
    assert (status, first["durable"]) == (200, "SUCCESS"), first
    original = (first["partition"], first["offset"])
    for w in (a, None, b, a):
        if w is None:
            wait_until(lambda: b.client().get(f"/v1/log/{unique}/same-1").json().get("state") == "DELAYED",
                       timeout_s=30, what="same-1 DELAYED")
            continue
        status, again = post(w, {**same, "payload": {"m": [1, 2], "n": 1}})  # keys in another order
        # Then the answer is the original one
        assert (status, again["durable"], again.get("duplicate")) == (200, "SUCCESS", True), (w.url, again)
        assert (again["partition"], again["offset"]) == original

    # When the id is written again for a different entry, through either worker
    for w in (a, b):
        for change in ({"payload": {"n": 2, "m": [1, 2]}}, {"key": on_b + "x"}, {"lifecycle": {"delay_ms": 1}},
                       {"lifecycle": None}, {"retry": {"max_attempts": 1}}):
            status, refused = post(w, {**same, **change})
            # Then it is refused, naming the id, and nothing is written
            assert (status, refused["durable"]) == (409, "FAILED"), (change, refused)
            assert refused["message"].startswith("id 'same-1' was already used for a different entry (")
            assert refused["message"].endswith("; use a new id")

    # When one batch has an id three times: twice the same entry, once another
    with b.client() as c:
        batch = c.post("/v1/log/batch", json={"entries": [
            {"namespace": unique, "id": "d-1", "key": on_b, "payload": 1, "lifecycle": {"delay_ms": 120_000}},
            {"namespace": unique, "id": "d-1", "key": on_b, "payload": 1, "lifecycle": {"delay_ms": 120_000}},
            {"namespace": unique, "id": "d-1", "key": on_b, "payload": 2, "lifecycle": {"delay_ms": 120_000}},
        ]}).json()["results"]
    # Then the first is written, the second is its duplicate, the third alone is refused
    assert batch[0]["durable"] == "SUCCESS" and "duplicate" not in batch[0]
    assert batch[1]["durable"] == "SUCCESS" and batch[1]["duplicate"] is True
    assert (batch[1]["partition"], batch[1]["offset"]) == (batch[0]["partition"], batch[0]["offset"])
    assert batch[2]["durable"] == "FAILED" and "already used for a different entry" in batch[2]["message"]

    # When an entry written through a (which remembers its SUCCESS) is cancelled
    cancelled = {"namespace": unique, "id": "c-1", "key": on_b, "payload": 3, "lifecycle": {"delay_ms": 120_000}}
    status, _ = post(a, cancelled)
    assert status == 200
    wait_until(lambda: b.client().get(f"/v1/log/{unique}/c-1").json().get("state") == "DELAYED",
               timeout_s=30, what="c-1 DELAYED")
    with a.client() as c:
        r = c.delete(f"/v1/log/{unique}/c-1")
    assert r.status_code == 200 and r.json()["state"] == "CANCELLED", r.text
    # Then writing it again, through either worker, is a 409 with the state, never SUCCESS
    for w in (a, b):
        status, refused = post(w, cancelled)
        assert (status, refused["durable"], refused.get("state")) == (409, "FAILED", "CANCELLED"), refused
        assert "duplicate" not in refused

    # Then the WAL topic holds exactly one record of each id
    assert wal_records(f"wal.{unique}", partitions) == {"same-1": 1, "d-1": 1, "c-1": 1}
