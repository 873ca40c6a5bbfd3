"""Per-key order against a real target: an early entry of key A fails transiently (its
Elasticsearch index refuses writes with 429); later entries of A wait behind it and land
after it; key B is not held."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from elasticsearch import Elasticsearch

from tests.integration.conftest import Worker, put_namespace, wait_until


def put(table: str, doc_id: str, title: str) -> dict[str, Any]:
    return {"mutations": [{"table": table, "op": "put", "key": {"id": doc_id}, "value": {"title": title}}]}


def docs(es: Elasticsearch, index: str) -> set[str]:
    if not es.indices.exists(index=index):
        return set()
    es.indices.refresh(index=index)
    return {h["_id"] for h in es.search(index=index, size=100)["hits"]["hits"]}


def test_later_entries_of_a_key_wait_behind_a_transient_failure(
    start_worker: Callable[..., Worker], es: Elasticsearch, unique: str,
) -> None:
    frozen, movies = f"{unique}_frozen", f"{unique}_movies"
    es.indices.create(index=frozen)
    es.indices.put_settings(index=frozen, settings={"index.blocks.read_only_allow_delete": True})
    w = start_worker()
    put_namespace(w, unique, [{"type": "elasticsearch", "index_prefix": f"{unique}_"}],
                  retry={"initial_delay_ms": 200, "multiplier": 1.5, "max_delay_ms": 1000, "max_attempts": 1000})
    with w.client() as c:
        r = c.post("/v1/log/batch", json={"entries": [
            {"namespace": unique, "id": "a1", "key": "A", "payload": put("frozen", "a1", "first")},
            {"namespace": unique, "id": "a2", "key": "A", "payload": put("movies", "a2", "second")},
            {"namespace": unique, "id": "b1", "key": "B", "payload": put("movies", "b1", "other key")},
        ]})
        assert {x["durable"] for x in r.json()["results"]} == {"SUCCESS"}
        # key B flows; a2 waits behind a1 although its own index accepts writes
        wait_until(lambda: docs(es, movies) == {"b1"}, what="b1 delivered")
        a1 = wait_until(lambda: (s := c.get(f"/v1/log/{unique}/a1").json()).get("state") == "RETRYING" and s,
                        what="a1 retrying")
        assert a1["targets"][0]["attempts"] >= 1 and "429" in a1["targets"][0]["last_error"]
        a2 = c.get(f"/v1/log/{unique}/a2").json()
        assert a2["state"] == "PENDING" and a2["targets"][0]["held_behind"] == "a1"
        time.sleep(2)
        assert docs(es, movies) == {"b1"}
        # when the index accepts writes again, a1 lands, then a2
        es.indices.put_settings(index=frozen, settings={"index.blocks.read_only_allow_delete": None})
        wait_until(lambda: docs(es, frozen) == {"a1"} and docs(es, movies) == {"a2", "b1"}, timeout_s=60,
                   what="a1 and a2 delivered")
        s1, s2 = c.get(f"/v1/log/{unique}/a1").json(), c.get(f"/v1/log/{unique}/a2").json()
    assert s1["state"] == s2["state"] == "DELIVERED"
    assert s1["updated_at"] <= s2["updated_at"]
