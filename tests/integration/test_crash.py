"""Invariant 1: an entry answered SUCCESS survives a SIGKILL of the worker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
import pytest
from cassandra.cluster import Session
from elasticsearch import Elasticsearch

from tests.integration.conftest import (
    Worker,
    both_targets,
    cassandra_movies,
    es_movies,
    put_movie,
    put_namespace,
    wait_until,
)


# two worker starts, a restart's recovery, then up to 2 x 120 s for the targets to catch up
@pytest.mark.timeout(600)
def test_sigkill_while_entries_flow_loses_nothing_acknowledged(
    start_worker: Callable[..., Worker], cassandra: Session, es: Elasticsearch, movies_keyspace: str, unique: str,
) -> None:
    w = start_worker()
    put_namespace(w, unique, both_targets(movies_keyspace, f"{unique}_"))
    acknowledged: list[str] = []
    stop = threading.Event()

    def writer(prefix: str) -> None:
        n = 0
        with httpx.Client(timeout=10) as c:
            while not stop.is_set() and n < 20_000:
                time.sleep(0.02)  # ~1,000 entries/s at most: a steady flow, not a flood
                batch = [
                    {"namespace": unique, "key": f"{prefix}{n + i}", "payload": put_movie(f"{prefix}{n + i}", "t", 1)}
                    for i in range(20)
                ]
                n += 20
                try:
                    r = c.post(f"{w.url}/v1/log/batch", json={"entries": batch})
                except httpx.HTTPError:
                    time.sleep(0.05)  # the worker is down: these are not acknowledged
                    continue
                if r.status_code == 200:
                    for item, res in zip(batch, r.json()["results"], strict=True):
                        if res["durable"] == "SUCCESS":
                            acknowledged.append(item["key"])

    # Given entries flowing, when the worker is SIGKILLed mid-stream and started again
    t = threading.Thread(target=writer, args=("a",))
    t.start()
    wait_until(lambda: len(acknowledged) >= 400, what="entries to flow")
    w.kill()
    killed_at = len(acknowledged)
    w.start()
    wait_until(lambda: len(acknowledged) >= killed_at + 400, what="entries to flow after restart")
    stop.set()
    t.join()
    # Then every acknowledged entry is in both targets
    want = set(acknowledged)
    wait_until(lambda: want <= set(cassandra_movies(cassandra, movies_keyspace)), timeout_s=120,
               what=f"{len(want)} acknowledged entries in Cassandra")
    wait_until(lambda: want <= set(es_movies(es, f"{unique}_movies")), timeout_s=120,
               what=f"{len(want)} acknowledged entries in Elasticsearch")
