"""Pacing on real services.

1. 20,000 deletes written within seconds to a namespace whose Cassandra target is paced at
   500/s: Cassandra's own count of writes to the table (``system_views.
   coordinator_write_latency``, sampled every 100 ms) grows by at most ~500 in any second,
   every row written beforehand is deleted, nothing is dead-lettered.
2. ``adaptive``: an http upstream made slow (each answer delayed past ``slow_ms``) gets far
   fewer requests per second than the configured rate, and everything arrives once it is
   fast again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from cassandra.cluster import Session
from cassandra.concurrent import execute_concurrent_with_args

from tests.integration.conftest import Worker, delete_movie, put_namespace, wait_until
from tests.integration.test_http_target import Upstream

pytestmark = pytest.mark.timeout(420)

RATE = 500
DELETES = 20_000


class WriteCounter(threading.Thread):
    """Samples Cassandra's count of coordinator writes to ``ks.table`` every 100 ms, each
    with the times just before and just after its query (the count is of some instant in
    between: a loaded machine can stretch the round trip)."""

    def __init__(self, session: Session, ks: str, table: str) -> None:
        super().__init__(daemon=True)
        self.session, self.ks, self.table = session, ks, table
        self.samples: list[tuple[float, float, int]] = []
        self.stopping = threading.Event()

    def count(self) -> int:
        row = self.session.execute(
            "SELECT count FROM system_views.coordinator_write_latency WHERE keyspace_name = %s AND table_name = %s",
            (self.ks, self.table),
        ).one()
        return int(row.count) if row is not None else 0

    def run(self) -> None:
        while not self.stopping.is_set():
            before = time.monotonic()
            n = self.count()
            self.samples.append((before, time.monotonic(), n))
            time.sleep(0.1)

    def last(self) -> int:
        return self.samples[-1][2] if self.samples else 0

    def most_in_a_second(self) -> int:
        """The most writes between two samples whose queries all fell within one second:
        from before the earlier query to after the later one (so a stretched round trip never
        makes a longer time look like a second)."""
        most, j = 0, 0
        for i, (_, after, n) in enumerate(self.samples):
            while j < i and self.samples[j][0] < after - 1.0:
                j += 1
            if after - self.samples[j][0] <= 1.0:
                most = max(most, n - self.samples[j][2])
        return most


def test_a_burst_of_deletes_reaches_cassandra_at_the_paced_rate(
    start_worker: Callable[..., Worker], unique: str, cassandra: Session, movies_keyspace: str
) -> None:
    ks = movies_keyspace
    ids = [f"m{i}" for i in range(DELETES)]
    insert = cassandra.prepare(f"INSERT INTO {ks}.movies (id, title, year) VALUES (?, 'x', 1) USING TIMESTAMP 1")
    execute_concurrent_with_args(cassandra, insert, [(i,) for i in ids], concurrency=100)
    w = start_worker()
    put_namespace(w, unique, [{"type": "cassandra", "keyspace": ks, "consistency": "ONE",
                               "pacing": {"max_per_s": RATE}}])
    counter = WriteCounter(cassandra, ks, "movies")
    before = counter.count()
    counter.start()
    written_at = time.monotonic()
    with w.client() as c:
        for start in range(0, DELETES, 1000):
            batch = [{"namespace": unique, "id": i, "payload": delete_movie(i)} for i in ids[start:start + 1000]]
            r = c.post("/v1/log/batch", json={"entries": batch})
            assert {x["durable"] for x in r.json()["results"]} == {"SUCCESS"}, r.text[:500]
    took_to_write = time.monotonic() - written_at
    try:
        wait_until(lambda: counter.last() - before >= DELETES, timeout_s=240,
                   interval_s=1.0, what="every delete written to Cassandra")
        time.sleep(2)  # nothing more should come
    finally:
        counter.stopping.set()
        counter.join()
    applied = counter.last() - before
    spread_s = next(after for _, after, n in counter.samples if n - before >= DELETES) - written_at
    most = counter.most_in_a_second()
    print(f"{DELETES} deletes acknowledged in {took_to_write:.1f} s; Cassandra took them over {spread_s:.1f} s, "
          f"at most {most} in any second (pacing {RATE}/s); {applied} writes in all")
    # The busiest second: the rate and the bucket's tenth of a second (550). Unpaced, the same
    # burst reaches thousands a second. (Windows timed by when each count was read, after its
    # round trip, once showed 671 in a loaded CI run: see most_in_a_second.)
    assert most <= RATE * 1.1 + 20, most
    # and on average over the whole spread, the rate
    assert applied / spread_s <= RATE * 1.05, applied / spread_s
    assert DELETES <= applied <= DELETES + 500  # nothing lost; a call past its wait may run twice
    assert cassandra.execute(f"SELECT count(*) FROM {ks}.movies").one()[0] == 0
    with w.client() as c:
        assert c.get(f"/v1/dlq/{unique}").json()["dead_letters"] == []


def test_an_adaptive_rate_backs_off_a_slow_upstream(start_worker: Callable[..., Worker], unique: str) -> None:
    up = Upstream()
    delay = [0.0]
    original = up.script

    class SlowScript(dict[str, Any]):
        def get(self, key: str, default: Any = None) -> Any:  # every answer delayed while slow
            return [(200, {}, delay[0])] if delay[0] else original.get(key, default)

    up.script = SlowScript()
    try:
        w = start_worker()
        put_namespace(w, unique, [{"type": "http", "url": up.url, "timeout_ms": 5000,
                                   "pacing": {"max_per_s": 200, "adaptive": True, "slow_ms": 200}}])

        def write(prefix: str, n: int) -> None:
            with w.client() as c:
                r = c.post("/v1/log/batch", json={"entries": [{"namespace": unique, "id": f"{prefix}{i}",
                                                               "payload": {"i": i}} for i in range(n)]})
            assert {x["durable"] for x in r.json()["results"]} == {"SUCCESS"}

        write("fast-", 400)
        wait_until(lambda: len(up.applied()) >= 400, timeout_s=60, what="the fast entries")
        delay[0] = 0.3  # every answer now takes longer than slow_ms
        write("slow-", 400)
        time.sleep(8)
        in_slow = sum(1 for i in up.applied() if i.startswith("slow-"))
        print(f"adaptive: {in_slow} of 400 entries in 8 s while the upstream was slow (configured 200/s)")
        assert in_slow < 200, in_slow  # unpaced it would take all 400 in ~2 s (0.3 s per call of many)
        delay[0] = 0.0
        wait_until(lambda: {f"slow-{i}" for i in range(400)} <= set(up.applied()), timeout_s=120,
                   what="the rest once the upstream is fast again")
    finally:
        up.close()
