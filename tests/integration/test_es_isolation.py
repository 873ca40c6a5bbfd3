"""One bad item fails alone at the real Elasticsearch: whatever makes it refuse a whole
``_bulk`` request (here a 600-byte document id) fails only the entry that holds it; its
neighbours in the same batch are indexed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from elasticsearch import Elasticsearch

from tests.integration.conftest import ES_URL, KAFKA, Worker, put_namespace, wait_until
from tests.integration.test_outages import dead_letters
from walstream.entry import Entry
from walstream.namespaces.model import ElasticsearchTargetConfig
from walstream.targets import elasticsearch as es_target
from walstream.targets.base import Outcomes, PermanentError
from walstream.targets.elasticsearch import ElasticsearchTarget

LONG_ID = "x" * 600


def put(mid: str, i: int) -> dict[str, Any]:
    return {"mutations": [{"table": "movies", "op": "put", "key": {"id": mid}, "value": {"title": f"t{i}", "year": i}}]}


def entries(ns: str, n: int, bad_at: int) -> list[Entry]:
    now = time.time_ns() // 1000
    return [Entry(id=f"e{i}", namespace=ns, key=f"k{i}", written_at_us=now + i,
                  payload=put(LONG_ID if i == bad_at else str(i), i)) for i in range(n)]


def apply(prefix: str, batch: Sequence[Entry]) -> Outcomes:
    async def run() -> Outcomes:
        t = ElasticsearchTarget(ElasticsearchTargetConfig(type="elasticsearch", index_prefix=prefix, refresh=True),
                                ES_URL, 30.0)
        try:
            return await t.apply(batch)
        finally:
            await t.close()

    return asyncio.run(run())


def doc_ids(es: Elasticsearch, index: str) -> set[str]:
    if not es.indices.exists(index=index):
        return set()
    es.indices.refresh(index=index)
    return {h["_id"] for h in es.search(index=index, size=1000, query={"match_all": {}})["hits"]["hits"]}


@pytest.mark.parametrize("validated", [True, False], ids=["validated-first", "found-by-splitting"])
def test_an_id_elasticsearch_refuses_fails_only_its_entry(
    es: Elasticsearch, unique: str, validated: bool, monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not validated:
        # the real cluster refuses the whole request: the target must find the culprit itself
        monkeypatch.setattr(es_target, "es_doc_id_problem", lambda _doc_id: None)
    # Given a batch of 9 valid entries and one whose document id is 600 bytes
    batch = entries(unique, 10, bad_at=6)
    # When the target applies it
    outcomes = apply(f"{unique}_", batch)
    # Then the 9 are indexed and only the bad one fails, with the 512-byte limit as its reason
    assert [i for i, o in enumerate(outcomes) if o is not None] == [6]
    bad = outcomes[6]
    assert isinstance(bad, PermanentError) and "512" in bad.message, bad
    assert doc_ids(es, f"{unique}_movies") == {str(i) for i in range(10) if i != 6}


def test_a_batch_with_one_bad_entry_indexes_the_others_and_dead_letters_only_it(
    start_worker: Callable[..., Worker], es: Elasticsearch, unique: str,
) -> None:
    w = start_worker()
    put_namespace(w, unique, [{"type": "elasticsearch", "index_prefix": f"{unique}_"}])
    # The write API refuses, naming the limit, an id Elasticsearch can never take, and writes nothing
    with w.client() as c:
        r = c.post("/v1/log", json={"namespace": unique, "id": "long", "payload": put(LONG_ID, 1)})
    assert r.status_code == 400 and "at most 512" in r.json()["message"], r.text
    # Given such an entry nonetheless on the WAL (another producer), in one partition with 7 valid ones
    batch = entries(unique, 8, bad_at=3)

    async def produce() -> None:
        p = AIOKafkaProducer(bootstrap_servers=KAFKA, acks="all")
        await p.start()
        try:
            for e in batch:
                await p.send(f"wal.{unique}", e.encode(), key=e.key_bytes, partition=0)
            await p.flush()
        finally:
            await p.stop()

    asyncio.run(produce())
    # Then the valid ones are indexed ...
    wait_until(lambda: doc_ids(es, f"{unique}_movies") == {str(i) for i in range(8) if i != 3},
               timeout_s=60, what="the 7 valid entries in Elasticsearch")
    # ... and only the bad one is dead-lettered, with its own reason
    dls = wait_until(lambda: dead_letters(f"wal.{unique}.dlq"), timeout_s=60, what="the dead letter")
    assert [dl["entry"]["id"] for dl in dls] == ["e3"]  # type: ignore[index]
    assert dls[0]["error_class"] == "permanent" and "512" in str(dls[0]["message"])
    with httpx.Client(base_url=w.url, timeout=10) as c:
        states = {e.id: c.get(f"/v1/log/{unique}/{e.id}").json().get("state") for e in batch}
    assert states == {e.id: ("DEAD" if e.id == "e3" else "DELIVERED") for e in batch}, states


def test_a_value_the_mapping_refuses_fails_only_its_entry_even_when_merged_with_others(
    es: Elasticsearch, unique: str,
) -> None:
    # Given an index whose mapping makes `title` a number
    index = f"{unique}_movies"
    es.indices.create(index=index, mappings={"properties": {"title": {"type": "integer"}, "year": {"type": "integer"}}})
    now = time.time_ns() // 1000

    def e(i: int, mid: str, value: dict[str, Any]) -> Entry:
        return Entry(id=f"e{i}", namespace=unique, key=mid, written_at_us=now + i,
                     payload={"mutations": [{"table": "movies", "op": "put", "key": {"id": mid}, "value": value}]})

    # When one batch puts three entries on one document, the newest with a text title, and one on another
    outcomes = apply(f"{unique}_", [e(0, "1", {"year": 1995}), e(1, "1", {"title": 7}),
                                    e(2, "1", {"title": "Heat"}), e(3, "2", {"year": 2001})])
    # Then only that entry fails, with the mapping's reason, and the others are merged in
    assert [i for i, o in enumerate(outcomes) if o is not None] == [2], outcomes
    assert isinstance(outcomes[2], PermanentError) and "title" in outcomes[2].message
    src = es.get(index=index, id="1")["_source"]
    assert (src["title"], src["year"]) == (7, 1995)
    assert es.get(index=index, id="2")["_source"]["year"] == 2001
