"""End to end on real services: HTTP write → Kafka → delivery agent → Cassandra + Elasticsearch."""

from __future__ import annotations

import random
from collections.abc import Callable

from cassandra.cluster import Session
from elasticsearch import Elasticsearch

from tests.integration.conftest import (
    Worker,
    both_targets,
    cassandra_movies,
    delete_movie,
    es_movies,
    put_movie,
    put_namespace,
    wait_until,
)


def test_entry_written_over_http_lands_in_both_targets(
    start_worker: Callable[..., Worker], cassandra: Session, es: Elasticsearch, movies_keyspace: str, unique: str,
) -> None:
    # Given a running worker and a namespace created after it started
    w = start_worker()
    put_namespace(w, unique, both_targets(movies_keyspace, f"{unique}_"))
    # When an entry is written
    with w.client() as c:
        r = c.post("/v1/log", json={"namespace": unique, "id": "evt-1", "key": "movie:42",
                                    "payload": put_movie("42", "Heat", 1995)})
    # Then it is durable, and both targets get its content
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["durable"] == "SUCCESS" and doc["id"] == "evt-1"
    assert isinstance(doc["partition"], int) and isinstance(doc["offset"], int)
    wait_until(lambda: cassandra_movies(cassandra, movies_keyspace) == {"42": ("Heat", 1995)},
               what="the row in Cassandra")
    wait_until(lambda: es_movies(es, f"{unique}_movies") == {"42": ("Heat", 1995)}, what="the doc in Elasticsearch")
    # and Cassandra holds it with the entry's original write time
    [row] = cassandra.execute(f"SELECT WRITETIME(title) AS wt FROM {movies_keyspace}.movies WHERE id = '42'")
    assert row.wt > 1_600_000_000_000_000


def test_puts_and_deletes_converge_to_last_write_per_key(
    start_worker: Callable[..., Worker], cassandra: Session, es: Elasticsearch, movies_keyspace: str, unique: str,
) -> None:
    # Given 2,000 puts and deletes over 200 keys, in batches
    w = start_worker()
    put_namespace(w, unique, both_targets(movies_keyspace, f"{unique}_"))
    rng = random.Random(7)
    expected: dict[str, tuple[str, int]] = {}
    entries = []
    for i in range(2000):
        mid = str(rng.randrange(200))
        if rng.random() < 0.3:
            entries.append({"namespace": unique, "key": f"movie:{mid}", "payload": delete_movie(mid)})
            expected.pop(mid, None)
        else:
            entries.append({"namespace": unique, "key": f"movie:{mid}", "payload": put_movie(mid, f"title-{i}", i)})
            expected[mid] = (f"title-{i}", i)
    with w.client() as c:
        for start in range(0, len(entries), 250):
            r = c.post("/v1/log/batch", json={"entries": entries[start:start + 250]})
            assert r.status_code == 200
            assert {x["durable"] for x in r.json()["results"]} == {"SUCCESS"}
    # Then both targets hold exactly the last write per key
    wait_until(lambda: cassandra_movies(cassandra, movies_keyspace) == expected, timeout_s=120,
               what="Cassandra to converge")
    wait_until(lambda: es_movies(es, f"{unique}_movies") == expected, timeout_s=120,
               what="Elasticsearch to converge")
