"""Invariant 5: bad input gets a clear 4xx, writes nothing, and the worker keeps serving."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.integration.conftest import KAFKA, Worker, put_movie, put_namespace

BAD: list[tuple[str, Any, int, str]] = [
    ("malformed JSON", b'{"namespace": "x", "payload": ', 400, "malformed JSON"),
    ("empty body", b"", 400, "empty"),
    ("not an object", b"[1, 2, 3]", 400, "JSON object"),
    ("missing payload", {"namespace": "{ns}"}, 400, "payload is required"),
    ("mistyped id", {"namespace": "{ns}", "id": 7, "payload": 1}, 400, "id"),
    ("unknown field", {"namespace": "{ns}", "payload": 1, "priority": 9}, 400, "priority"),
    ("negative delay", {"namespace": "{ns}", "payload": 1, "lifecycle": {"delay_ms": -5}}, 400, "delay_ms"),
    ("naive deliver_at", {"namespace": "{ns}", "payload": 1, "lifecycle": {"deliver_at": "2030-01-01T10:00:00"}},
     400, "timezone"),
    ("not a mutation payload", {"namespace": "{ns}", "payload": {"title": "x"}}, 400, "mutations"),
    ("unknown namespace", {"namespace": "no-such-namespace", "payload": 1}, 404, "unknown namespace"),
    ("oversized", {"namespace": "{ns}", "payload": put_movie("1", "x" * (1024 * 1024 + 10), 1)}, 413, "limit"),
]


def end_offsets(topic: str) -> int:
    import asyncio

    async def run() -> int:
        c = AIOKafkaConsumer(bootstrap_servers=KAFKA)
        await c.start()
        try:
            tps = [TopicPartition(topic, p) for p in (c.partitions_for_topic(topic) or set())]
            if not tps:
                await c._client.force_metadata_update()
                tps = [TopicPartition(topic, p) for p in (c.partitions_for_topic(topic) or set())]
            return sum((await c.end_offsets(tps)).values())
        finally:
            await c.stop()

    return asyncio.run(run())


@pytest.fixture
def worker_ns(start_worker: Callable[..., Worker], unique: str) -> tuple[Worker, str]:
    w = start_worker()
    put_namespace(w, unique, [{"type": "cassandra", "keyspace": "unused"}])
    return w, unique


def test_each_bad_input_gets_its_4xx_and_writes_nothing(worker_ns: tuple[Worker, str]) -> None:
    import orjson

    w, ns = worker_ns
    before = end_offsets(f"wal.{ns}")
    with w.client() as c:
        for what, body, status, fragment in BAD:
            if isinstance(body, dict):
                raw = orjson.dumps(body).replace(b"{ns}", ns.encode())
            else:
                raw = body
            r = c.post("/v1/log", content=raw, headers={"content-type": "application/json"})
            assert r.status_code == status, (what, r.text)
            doc = r.json()
            assert doc["durable"] == "FAILED", what
            assert fragment in doc["message"], (what, doc)
            assert "id" in doc
        # the batch endpoint answers per entry, in order; the good one is written
        r = c.post("/v1/log/batch", json={"entries": [
            {"namespace": ns, "payload": 1},
            {"namespace": ns, "key": "k", "payload": put_movie("1", "ok", 1)},
            {"namespace": "no-such-namespace", "payload": 1},
        ]})
        assert r.status_code == 200
        results = r.json()["results"]
        assert [x["durable"] for x in results] == ["FAILED", "SUCCESS", "FAILED"]
        assert [x["status"] for x in results] == [400, 200, 404]
        for bad_batch in (b"{", b'{"entries": 5}', b'{"items": []}'):
            r = c.post("/v1/log/batch", content=bad_batch)
            assert r.status_code == 400, r.text
    # nothing but the one good batch entry reached the log
    assert end_offsets(f"wal.{ns}") == before + 1
    # and the worker still serves
    with w.client() as c:
        r = c.post("/v1/log", json={"namespace": ns, "key": "k2", "payload": put_movie("2", "ok", 2)})
        assert r.status_code == 200 and r.json()["durable"] == "SUCCESS"


def test_bad_namespace_configs_are_refused(worker_ns: tuple[Worker, str]) -> None:
    w, ns = worker_ns
    with w.client() as c:
        for body, fragment in [
            ({"targets": [{"type": "mysql"}]}, "unknown target type"),
            ({"targets": [{"type": "noop"}], "retry": {"max_attempts": 0}}, "retry.max_attempts"),
            ({"targets": [{"type": "noop"}], "retry": {"multiplier": -1}}, "retry.multiplier"),
        ]:
            r = c.put("/v1/namespaces/good-name", json=body)
            assert r.status_code == 400 and fragment in r.json()["message"], r.text
        r = c.put("/v1/namespaces/Bad_Name", json={"targets": [{"type": "noop"}]})
        assert r.status_code == 400 and "name" in r.json()["message"]
        r = c.put("/v1/namespaces/x", content=b"targets: [")
        assert r.status_code == 400
        assert c.get("/v1/namespaces/good-name").status_code == 404
        # the namespace that exists is listed and shown
        assert ns in {n["name"] for n in c.get("/v1/namespaces").json()["namespaces"]}
        assert c.get(f"/v1/namespaces/{ns}").json()["version"] == 1
