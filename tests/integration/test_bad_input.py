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
    # strict reading (walstream/strict_json.py): nothing changes silently, nothing is a 500
    ("duplicate key", b'{"namespace": "{ns}", "key": "a", "key": "b", "payload": 1}', 400, "duplicate key 'key'"),
    ("integer beyond 64 bits", b'{"namespace": "{ns}", "payload": {"mutations": [{"table": "movies", "op": "put",'
     b' "key": {"id": 18446744073709551617}}]}}', 400,
     "payload.mutations.0.key.id: integer 18446744073709551617 is outside the 64-bit range"),
    ("float overflow", b'{"namespace": "{ns}", "payload": [1e400]}', 400, "payload.0: number is beyond the range"),
    ("NaN", b'{"namespace": "{ns}", "payload": [NaN]}', 400, "payload.0: NaN is not a JSON number"),
    ("float a double cannot hold", b'{"namespace": "{ns}", "payload": {"mutations": [{"table": "movies", "op": "put",'
     b' "key": {"id": "1"}, "value": {"price": 12345678901234567890.123}}]}}', 400,
     "payload.mutations.0.value.price: 12345678901234567890.123 cannot be held exactly by a JSON reader's double;"
     " send it as a string"),
    ("lone surrogate in a key", b'{"namespace": "{ns}", "payload": {"\\udc00": 1}}', 400,
     "payload.\\udc00: key is not valid Unicode (a lone surrogate)"),
    ("nested 300 deep", b'{"namespace": "{ns}", "payload": ' + b"[" * 300 + b"]" * 300 + b"}", 400,
     "payload: nested deeper than 128 levels"),
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
            raw = (orjson.dumps(body) if isinstance(body, dict) else body).replace(b"{ns}", ns.encode())
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
        # strict reading: no "last wins", no YAML 1.1 booleans where a number is expected
        for raw, fragment in [
            (b'{"targets": [{"type": "noop"}], "retry": {"max_attempts": 3, "max_attempts": 5}}',
             "retry: duplicate key 'max_attempts'"),
            (b"targets: [{type: noop}]\ntargets: [{type: kafka, topic: t}]\n", "duplicate key 'targets'"),
            (b"targets: [{type: noop}]\nretry: {max_attempts: yes}\n", "retry.max_attempts"),
            (b'{"targets": [{"type": "noop"}], "retry": {"max_attempts": 18446744073709551617}}', "64-bit range"),
            (b'{"targets": [{"type": "noop"}], "labels": {"\\udc00": 1}}', "key is not valid Unicode"),
            (b'{"targets": [{"type": "noop"}], "retry": {"multiplier": 2.0000000000000001}}',
             "retry.multiplier: 2.0000000000000001 cannot be held exactly"),
        ]:
            r = c.put("/v1/namespaces/good-name", content=raw)
            assert r.status_code == 400 and fragment in r.json()["message"], r.text
        assert c.get("/v1/namespaces/good-name").status_code == 404
        # the namespace that exists is listed and shown
        assert ns in {n["name"] for n in c.get("/v1/namespaces").json()["namespaces"]}
        assert c.get(f"/v1/namespaces/{ns}").json()["version"] == 1


def movie_entry(ns: str, entry_id: str, key_id: bytes, title: bytes) -> bytes:
    """One batch item as raw bytes (so that it can hold what a JSON encoder cannot write)."""
    return (
        b'{"namespace": "%s", "id": "%s", "key": "%s", "payload": {"mutations": [{"table": "movies", "op": "put",'
        b' "key": {"id": %s}, "value": {"title": %s, "year": 1995}}]}}'
        % (ns.encode(), entry_id.encode(), entry_id.encode(), key_id, title)
    )


@pytest.mark.timeout(180)
def test_a_batch_refuses_its_bad_entries_one_by_one(worker_ns: tuple[Worker, str]) -> None:
    """Given a batch of two good entries and three that strict reading refuses (300 levels
    deep, a key id beyond 64 bits, a duplicate key), when it is posted as raw bytes, then each
    bad entry gets its own 400 naming its problem, the good ones are written (two records in
    the WAL topic, no more), and the worker keeps serving."""
    w, ns = worker_ns
    before = end_offsets(f"wal.{ns}")
    items = [
        movie_entry(ns, "good-1", b'"1"', b'"Heat"'),
        movie_entry(ns, "deep", b'"2"', b"[" * 300 + b'"x"' + b"]" * 300),
        movie_entry(ns, "big", b"18446744073709551617", b'"Big"'),
        movie_entry(ns, "dup", b'"3"', b'"Ran", "title": "Kagemusha"'),
        movie_entry(ns, "good-2", b'"4"', b'"Alien"'),
    ]
    with w.client() as c:
        r = c.post("/v1/log/batch", content=b'{"entries": [' + b", ".join(items) + b"]}")
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["status"] for x in results] == [200, 400, 400, 400, 200], results
        assert [x["durable"] for x in results] == ["SUCCESS", "FAILED", "FAILED", "FAILED", "SUCCESS"]
        assert [x["id"] for x in results] == ["good-1", "deep", "big", "dup", "good-2"]
        assert results[1]["message"] == "payload: nested deeper than 128 levels"
        assert results[2]["message"] == (
            "payload.mutations.0.key.id: integer 18446744073709551617 is outside the 64-bit range; send it as a string"
        )
        assert results[3]["message"] == "payload.mutations.0.value: duplicate key 'title'"
        assert end_offsets(f"wal.{ns}") == before + 2
        # the worker still serves, and reads the same entries well-formed
        r = c.post("/v1/log", content=movie_entry(ns, "after", b'"5"', b'"Ran"'))
        assert r.status_code == 200 and r.json()["durable"] == "SUCCESS", r.text
    assert end_offsets(f"wal.{ns}") == before + 3


@pytest.mark.timeout(120)
def test_a_surrogate_key_or_a_lossy_float_fails_alone_in_a_batch(worker_ns: tuple[Worker, str]) -> None:
    """Given a batch of one good entry between one with a lone surrogate escape as an object
    key and one with a float literal a double cannot hold, when it is posted, then the answer
    is a 200 whose bad entries have their own 400 naming where, the good one is written
    (exactly one record added to the WAL topic), and other endpoints answer such a body
    with a 400 too (the dead-letter redrive, which echoes nothing of it)."""
    w, ns = worker_ns
    before = end_offsets(f"wal.{ns}")
    items = [
        b'{"namespace": "%s", "id": "bad-key", "payload": {"\\udc00": 1}}' % ns.encode(),
        movie_entry(ns, "good", b'"1"', b'"Heat"'),
        movie_entry(ns, "lossy", b'"2"', b"9007199254740993.0"),
    ]
    with w.client() as c:
        r = c.post("/v1/log/batch", content=b'{"entries": [' + b", ".join(items) + b"]}")
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [(x["id"], x["status"], x["durable"]) for x in results] == [
            ("bad-key", 400, "FAILED"), ("good", 200, "SUCCESS"), ("lossy", 400, "FAILED")
        ], results
        assert results[0]["message"] == "payload.\\udc00: key is not valid Unicode (a lone surrogate)"
        assert results[2]["message"] == (
            "payload.mutations.0.value.title: 9007199254740993.0 cannot be held exactly by a JSON reader's double;"
            " send it as a string"
        )
        r = c.post(f"/v1/dlq/{ns}/redrive", content=b'{"ids": ["x"], "\\ud800": true}')
        assert r.status_code == 400 and "key is not valid Unicode" in r.json()["message"], r.text
    assert end_offsets(f"wal.{ns}") == before + 1


@pytest.mark.timeout(120)
def test_a_body_that_cannot_be_read_as_sent_is_a_400_and_writes_nothing(worker_ns: tuple[Worker, str]) -> None:
    """A ``Content-Encoding`` the body is not in (aiohttp's decoder fails while reading):
    every endpoint that reads a body answers 400 JSON naming it, never a 500."""
    w, ns = worker_ns
    before = end_offsets(f"wal.{ns}")
    with w.client() as c:
        for path, method in [("/v1/log", "POST"), ("/v1/log/batch", "POST"), (f"/v1/dlq/{ns}/redrive", "POST"),
                             ("/v1/namespaces/enc-test", "PUT")]:
            for encoding in ("gzip", "deflate"):
                r = c.request(method, path, content=b'{"namespace": "x"}', headers={"content-encoding": encoding})
                assert r.status_code == 400, (path, encoding, r.text)
                assert "cannot be read as sent" in r.json()["message"], (path, r.text)
        assert c.get("/v1/namespaces/enc-test").status_code == 404
    assert end_offsets(f"wal.{ns}") == before


@pytest.mark.timeout(120)
def test_unknown_routes_and_methods_are_answered_in_json(worker_ns: tuple[Worker, str]) -> None:
    w, _ = worker_ns
    with w.client() as c:
        r = c.get("/v1/no-such-thing")
        assert r.status_code == 404 and "no such endpoint: GET /v1/no-such-thing" in r.json()["message"]
        r = c.put("/v1/log", json={})
        assert r.status_code == 405 and "PUT is not allowed on /v1/log" in r.json()["message"]
        assert "POST" in r.headers["allow"]


@pytest.mark.timeout(120)
def test_query_parameters_a_route_does_not_take_are_refused_on_every_route(worker_ns: tuple[Worker, str]) -> None:
    """Every route checks its query against what it declares (walstream.web.query): an
    unknown name (``lcoal`` was ignored, and a fleet-wide read made), a repeat, an empty
    value, a value outside the declared set; a write so refused writes nothing."""
    w, ns = worker_ns
    before = end_offsets(f"wal.{ns}")
    cases = [
        ("GET", f"/v1/log/{ns}/some-id?lcoal=1", "unknown query parameter 'lcoal'"),
        ("GET", f"/v1/log/{ns}/some-id?local=2", "local: expected one of 1"),
        ("GET", f"/v1/dlq/{ns}?limit=1&limit=2", "'limit' is given 2 times"),
        ("GET", f"/v1/dlq/{ns}?since=", "since: empty"),
        ("GET", f"/v1/dlq/{ns}?limit=0", "limit: expected a whole number from 1 to 100000"),
        ("DELETE", f"/v1/namespaces/{ns}?force=yes", "force: expected one of true, false"),
        ("DELETE", f"/v1/namespaces/{ns}?forse=true", "unknown query parameter 'forse'"),
        ("GET", "/v1/namespaces?verbose=1", "it takes none"),
        ("GET", "/v1/health/ready?x=1", "unknown query parameter 'x'"),
    ]
    with w.client() as c:
        for method, url, said in cases:
            r = c.request(method, url)
            assert r.status_code == 400 and said in r.json()["message"], (method, url, r.status_code, r.text)
        r = c.post("/v1/log?sync=1", json={"namespace": ns, "payload": 1})
        assert r.status_code == 400 and r.json()["durable"] == "FAILED", r.text
        assert "unknown query parameter 'sync'" in r.json()["message"]
        r = c.post("/v1/log/batch?sync=1", json={"entries": [{"namespace": ns, "payload": 1}]})
        assert r.status_code == 400 and "unknown query parameter 'sync'" in r.json()["message"], r.text
        assert c.get(f"/v1/namespaces/{ns}").status_code == 200  # the refused DELETEs deleted nothing
        assert c.get(f"/v1/dlq/{ns}?limit=5&local=1").status_code == 200
        assert c.get(f"/v1/dlq/{ns}?id=a&id=b").json() == {"dead_letters": []}  # id is a list
    assert end_offsets(f"wal.{ns}") == before
