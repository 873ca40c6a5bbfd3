"""Target outages: nothing lost, nothing dead-lettered for a transient outage; permanent
failures dead-lettered with the reason while other targets and entries carry on."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from cassandra.cluster import Session
from elasticsearch import Elasticsearch

from tests.integration.conftest import (
    KAFKA,
    Worker,
    both_targets,
    cassandra_movies,
    es_movies,
    put_movie,
    put_namespace,
    wait_until,
)
from walstream.stack.stack import runners


def dead_letters(topic: str) -> list[dict[str, object]]:
    import asyncio

    async def run() -> list[dict[str, object]]:
        c = AIOKafkaConsumer(topic, bootstrap_servers=KAFKA, auto_offset_reset="earliest", group_id=None)
        await c.start()
        out = []
        try:
            batch = await c.getmany(timeout_ms=3000)
            for records in batch.values():
                out.extend(orjson.loads(r.value) for r in records)
        finally:
            await c.stop()
        return out

    return asyncio.run(run())


# a 30 s outage, Cassandra's restart, then up to 180 s for the backlog to drain
@pytest.mark.timeout(600)
def test_cassandra_down_30s_nothing_lost_nothing_dead_lettered(
    start_worker: Callable[..., Worker], cassandra: Session, es: Elasticsearch, movies_keyspace: str, unique: str,
) -> None:
    w = start_worker()
    put_namespace(w, unique, both_targets(movies_keyspace, f"{unique}_"))
    acknowledged: list[str] = []
    stop = threading.Event()
    timeline: list[str] = []
    t0 = time.monotonic()

    def mark(what: str) -> None:
        timeline.append(f"{time.monotonic() - t0:6.1f}s {what}")

    def writer() -> None:
        n = 0
        with httpx.Client(timeout=10) as c:
            while not stop.is_set():
                time.sleep(0.05)
                batch = [{"namespace": unique, "key": f"m{n + i}", "payload": put_movie(f"m{n + i}", "t", n + i)}
                         for i in range(10)]
                n += 10
                r = c.post(f"{w.url}/v1/log/batch", json={"entries": batch})
                acknowledged.extend(b["key"] for b, res in zip(batch, r.json()["results"], strict=True)
                                    if res["durable"] == "SUCCESS")

    thread = threading.Thread(target=writer)
    thread.start()
    [cass] = runners(["cassandra"])
    try:
        wait_until(lambda: len(acknowledged) >= 200, what="entries to flow")
        mark(f"{len(acknowledged)} acknowledged; stopping Cassandra (SIGKILL)")
        cass.kill()
        time.sleep(30)
        mark(f"{len(acknowledged)} acknowledged; starting Cassandra")
        cass.up()
        mark("Cassandra answers")
        time.sleep(3)
    finally:
        stop.set()
        thread.join()
        cass.up()
    mark(f"writes stopped at {len(acknowledged)} acknowledged")
    want = {k for k in acknowledged}
    wait_until(lambda: want <= set(cassandra_movies(cassandra, movies_keyspace)), timeout_s=120,
               what="every acknowledged entry in Cassandra")
    mark("all acknowledged entries in Cassandra")
    wait_until(lambda: want <= set(es_movies(es, f"{unique}_movies")), timeout_s=60, what="... and in Elasticsearch")
    assert dead_letters(f"wal.{unique}.dlq") == []
    with w.client() as c:
        circuits = c.get("/v1/health").json()["circuits"]
    cass_circuit = next(v for v in circuits.values() if v["target"].startswith("cassandra"))
    moves = [t["to"] for t in cass_circuit["transitions"]]
    mark(f"cassandra circuit transitions: {moves}")
    print("outage timeline:\n  " + "\n  ".join(timeline))
    assert "opened" in moves and moves[-1] == "closed" and not cass_circuit["open"]


def test_permanent_failure_in_one_target_is_dead_lettered_others_unaffected(
    start_worker: Callable[..., Worker], cassandra: Session, es: Elasticsearch, movies_keyspace: str, unique: str,
) -> None:
    # Given an Elasticsearch index whose mapping makes `title` a number
    index = f"{unique}_movies"
    es.indices.create(index=index, mappings={"properties": {"title": {"type": "integer"}, "year": {"type": "integer"}}})
    w = start_worker()
    put_namespace(w, unique, both_targets(movies_keyspace, f"{unique}_"))
    # When entries with numeric and non-numeric titles are written
    with w.client() as c:
        r = c.post("/v1/log/batch", json={"entries": [
            {"namespace": unique, "id": "good", "key": "1", "payload": put_movie("1", "1995", 1995)},
            {"namespace": unique, "id": "bad", "key": "2", "payload": put_movie("2", "Heat", 1995)},
            {"namespace": unique, "id": "good2", "key": "3", "payload": put_movie("3", "42", 2001)},
        ]})
        assert {x["durable"] for x in r.json()["results"]} == {"SUCCESS"}
    # Then Cassandra has all three, Elasticsearch the good ones, and the bad one is in the DLQ
    wait_until(lambda: set(cassandra_movies(cassandra, movies_keyspace)) == {"1", "2", "3"}, what="Cassandra")
    wait_until(lambda: set(es_movies(es, index)) == {"1", "3"}, what="Elasticsearch")
    dls = wait_until(lambda: dead_letters(f"wal.{unique}.dlq"), what="the dead letter")
    [dl] = dls
    assert dl["entry"]["id"] == "bad"  # type: ignore[index]
    assert dl["error_class"] == "permanent" and "failed to parse field [title]" in str(dl["message"])
    assert dl["target"]["type"] == "elasticsearch"  # type: ignore[index]
    assert dl["attempts"] == 1

    # The dead-letter index lists it, filtered by error class
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "walstream.cli", "dlq", *args, unique, "--url", w.url],
                              capture_output=True, text=True, check=True)

    listed = wait_until(lambda: "bad\t" in cli("list", "--error-class", "permanent").stdout, what="the DLQ index")
    assert listed
    assert cli("list", "--error-class", "transient").stdout == ""
    # When the mapping is fixed and the DLQ redriven (dry run first)
    es.indices.delete(index=index)
    es.indices.create(index=index, mappings={"properties": {"title": {"type": "keyword"}, "year": {"type": "integer"}}})
    dry = cli("redrive")
    assert "would redrive bad" in dry.stdout and set(es_movies(es, index)) == set()
    done = cli("redrive", "--execute", "--rate", "20")
    assert "redrove 1" in done.stdout
    # Then Elasticsearch gets it, and it leaves the index
    wait_until(lambda: es_movies(es, index).get("2") == ("Heat", 1995), what="the redriven entry in Elasticsearch")
    wait_until(lambda: cli("list").stdout == "", what="the DLQ index to empty")
    with w.client() as c:
        s = c.get(f"/v1/log/{unique}/bad").json()
    assert s["state"] == "DELIVERED", s
