"""`put` means one thing in every target: a merge of the columns it names, last writer wins per
column by write time, deletes removing what was written before them — Cassandra's cell
timestamps. Partial puts and deletes are delivered to the real Cassandra and Elasticsearch
targets in every order (and again, duplicated), and the two must hold the same columns for
every row, and the state the write times imply."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from cassandra.cluster import Session
from elasticsearch import Elasticsearch

from tests.integration.conftest import ES_URL
from walstream.entry import Entry
from walstream.namespaces.model import CassandraTargetConfig, ElasticsearchTargetConfig
from walstream.targets.base import Outcomes
from walstream.targets.cassandra import CassandraTarget
from walstream.targets.elasticsearch import META_FIELD, TOMBSTONE_PREFIX, ElasticsearchTarget

COLS = ("title", "year", "genre")
Op = tuple[int, str, dict[str, Any] | None]  # (write time offset, "put" | "delete", value)

#: scenario -> (its writes, the row they imply: None = no row)
SCENARIOS: dict[str, tuple[list[Op], dict[str, Any] | None]] = {
    # a delete between two puts removes the older put's columns; the newer put keeps the row
    "partial-after-delete": ([(10, "put", {"title": "Heat", "year": 1995}), (20, "put", {"year": 1996}),
                              (15, "delete", None)], {"title": None, "year": 1996, "genre": None}),
    # a put older than a delete never resurrects the row
    "no-resurrection": ([(10, "put", {"title": "Heat"}), (20, "delete", None), (15, "put", {"genre": "crime"})],
                        None),
    # a put newer than a delete recreates it with only its columns
    "recreate": ([(10, "put", {"title": "Heat", "year": 1995}), (20, "delete", None), (30, "put", {"genre": "x"})],
                 {"title": None, "year": None, "genre": "x"}),
    # partial puts merge; a null removes the column
    "merge-and-null": ([(10, "put", {"title": "Heat", "year": 1995}), (20, "put", {"genre": "crime"}),
                        (30, "put", {"title": None})], {"title": None, "year": 1995, "genre": "crime"}),
    # the newest value of a column wins whatever the delivery order
    "last-writer-wins": ([(30, "put", {"title": "C"}), (10, "put", {"title": "A", "year": 1}),
                          (20, "put", {"title": "B", "genre": "g"})], {"title": "C", "year": 1, "genre": "g"}),
    # a delete at the same microsecond as a put wins, as a Cassandra tombstone does
    "delete-wins-tie": ([(10, "put", {"title": "A"}), (10, "delete", None), (20, "put", {"year": 5})],
                        {"title": None, "year": 5, "genre": None}),
}


@pytest.fixture
def keyspace(cassandra: Session, unique: str) -> Iterator[str]:
    ks = f"ks_{unique}"
    cassandra.execute(f"CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    cassandra.execute(f"CREATE TABLE {ks}.movies (id text PRIMARY KEY, title text, year int, genre text)")
    yield ks
    cassandra.execute(f"DROP KEYSPACE IF EXISTS {ks}")


def payload(mid: str, op: str, value: dict[str, Any] | None) -> dict[str, Any]:
    m: dict[str, Any] = {"table": "movies", "op": op, "key": {"id": mid}}
    if value is not None:
        m["value"] = value
    return {"mutations": [m]}


def deliver(ks: str, prefix: str, batches: Sequence[Sequence[Entry]]) -> None:
    """Apply each batch to both real targets, in order; every entry must succeed."""

    async def run() -> None:
        cass = CassandraTarget(CassandraTargetConfig(type="cassandra", keyspace=ks, consistency="ONE"),
                               ["127.0.0.1"], 9042, 30.0)
        es = ElasticsearchTarget(ElasticsearchTargetConfig(type="elasticsearch", index_prefix=prefix), ES_URL, 30.0)
        try:
            await cass.start()
            for batch in batches:
                outcomes: Outcomes = list(await cass.apply(batch)) + list(await es.apply(batch))
                assert outcomes == [None] * len(outcomes), outcomes
        finally:
            await cass.close()
            await es.close()

    asyncio.run(run())


def cassandra_row(session: Session, ks: str, mid: str) -> dict[str, Any] | None:
    rows = list(session.execute(f"SELECT title, year, genre FROM {ks}.movies WHERE id = %s", (mid,)))
    return None if not rows else {c: getattr(rows[0], c) for c in COLS}


def es_doc(es: Elasticsearch, index: str, mid: str) -> dict[str, Any] | None:
    r = es.options(ignore_status=404).get(index=index, id=mid)
    if not r.get("found"):
        return None
    src = r["_source"]
    assert src["id"] == mid
    return {c: src.get(c) for c in COLS}


def test_partial_puts_and_deletes_in_every_order_agree_across_targets(
    cassandra: Session, es: Elasticsearch, keyspace: str, unique: str,
) -> None:
    # Given every scenario's writes delivered in every order (one key per order), one write
    # per key per batch, then all of them again as one batch in a random order (duplicates)
    base = time.time_ns() // 1000
    keys: dict[str, dict[str, Any] | None] = {}
    rounds: list[list[Entry]] = [[], [], []]
    replay: list[Entry] = []
    for name, (ops, want) in SCENARIOS.items():
        for p, order in enumerate(itertools.permutations(ops)):
            mid = f"{name}-{p}"
            keys[mid] = want
            for step, (dt, op, value) in enumerate(order):
                e = Entry(id=f"{mid}-{step}", namespace=unique, key=mid, written_at_us=base + dt,
                          payload=payload(mid, op, value))
                rounds[step].append(e)
                replay.append(e)
    random.Random(7).shuffle(replay)
    index = f"{unique}_movies"
    deliver(keyspace, f"{unique}_", [*rounds, replay])
    # Then Cassandra holds the rows the write times imply, and Elasticsearch the same, column by column
    for mid, want in keys.items():
        assert cassandra_row(cassandra, keyspace, mid) == want, mid
        assert es_doc(es, index, mid) == want, mid
    # ... and a search sees exactly the rows that exist: tombstones are not in the index
    es.indices.refresh(index=index)
    hits = es.search(index=index, size=1000, query={"match_all": {}})["hits"]["hits"]
    assert {h["_id"] for h in hits} == {mid for mid, want in keys.items() if want is not None}
    assert es.indices.get_settings(index=TOMBSTONE_PREFIX + index, expand_wildcards="all")[
        TOMBSTONE_PREFIX + index]["settings"]["index"]["hidden"] == "true"
    # ... and the write times are kept out of the mapping
    mapping = es.indices.get_mapping(index=index)[index]["mappings"]["properties"]
    assert mapping[META_FIELD] == {"type": "object", "enabled": False}


def test_all_writes_of_a_key_in_one_batch_fold_like_cassandra(
    cassandra: Session, es: Elasticsearch, keyspace: str, unique: str,
) -> None:
    # Given each scenario's writes all in one batch (reversed), applied twice
    base = time.time_ns() // 1000
    batch = [Entry(id=f"{name}-{i}", namespace=unique, key=name, written_at_us=base + dt,
                   payload=payload(name, op, value))
             for name, (ops, _) in SCENARIOS.items() for i, (dt, op, value) in enumerate(reversed(ops))]
    deliver(keyspace, f"{unique}_", [batch, batch])
    for name, (_, want) in SCENARIOS.items():
        assert cassandra_row(cassandra, keyspace, name) == want, name
        assert es_doc(es, f"{unique}_movies", name) == want, name
