"""Cross-region replication on two real Kafka clusters (east: the stack's Kafka on 9092, west:
``kafka-west`` on 9192), a worker per region, and each region's own Cassandra keyspace and
Elasticsearch indices (the same local services, other names): what docs/replication.md
promises, counted at the targets and in each region's WAL topic.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from cassandra.cluster import Session
from elasticsearch import Elasticsearch

from tests.integration.conftest import (
    KAFKA,
    KAFKA_WEST,
    Worker,
    cassandra_movies,
    delete_movie,
    es_movies,
    put_movie,
    put_namespace,
    wait_until,
)
from walstream.namespaces.model import wal_topic
from walstream.stack.stack import SECOND_REGION, runners

BROKERS = f"east={KAFKA},west={KAFKA_WEST}"


def regional(start_worker: Callable[..., Worker], unique: str, region: str, **env: str) -> Worker:
    """A worker of ``region``'s fleet (one app id across regions, as one deployment)."""
    return start_worker(
        app_id=f"ws-{unique}",
        WALSTREAM_REGION=region,
        WALSTREAM_BROKER=KAFKA if region == "east" else KAFKA_WEST,
        WALSTREAM_REGION_BROKERS=BROKERS,
        WALSTREAM_REGION_SYNC_S="2",
        **env,
    )


def keyspace(cassandra: Session, name: str) -> str:
    cassandra.execute(
        f"CREATE KEYSPACE {name} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    cassandra.execute(f"CREATE TABLE {name}.movies (id text PRIMARY KEY, title text, year int)")
    return name


def targets(ks: str, index_prefix: str) -> list[dict[str, Any]]:
    return [{"type": "cassandra", "keyspace": ks, "consistency": "ONE"},
            {"type": "elasticsearch", "index_prefix": index_prefix}]


def replicated(east: Worker, west: Worker, name: str, cassandra: Session) -> tuple[str, str]:
    """The namespace ``name`` applied in east, which makes it west's too, each region with its
    own keyspace and indices; returns the two keyspaces (the indices are ``<name>_e_movies``
    and ``<name>_w_movies``)."""
    ks_e, ks_w = keyspace(cassandra, f"ks_{name}_e"), keyspace(cassandra, f"ks_{name}_w")
    replication = {"regions": {"east": {}, "west": {"targets": targets(ks_w, f"{name}_w_")}}}
    doc = put_namespace(east, name, targets(ks_e, f"{name}_e_"), replication=replication)
    assert doc["regions"] == {"west": "applied"}, doc
    consuming(west, name)
    return ks_e, ks_w


def consuming(w: Worker, name: str) -> None:
    wait_until(lambda: any(t.startswith(f"wal.{name}:") for t in httpx.get(f"{w.url}/v1/health", timeout=10)
                           .json()["assigned"]), timeout_s=60, what=f"{w.url} to consume wal.{name}")


def write(w: Worker, ns: str, entry_id: str, payload: dict[str, Any], **extra: Any) -> dict[str, Any]:
    r = httpx.post(f"{w.url}/v1/log", json={"namespace": ns, "id": entry_id, "payload": payload, **extra}, timeout=30)
    assert r.status_code == 200 and r.json()["durable"] == "SUCCESS", r.text
    answer: dict[str, Any] = r.json()
    return answer


def wal_ids(bootstrap: str, topic: str) -> Counter[str]:
    """How many records of each entry id ``topic`` holds on ``bootstrap``."""
    import orjson

    async def run() -> Counter[str]:
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
        await c.start()
        try:
            tps = [TopicPartition(topic, p) for p in (await c._client.fetch_all_metadata()).partitions_for_topic(topic)
                   or set()]
            ends = await c.end_offsets(tps)
            c.assign(tps)
            await c.seek_to_beginning(*tps)
            seen: Counter[str] = Counter()
            deadline = time.monotonic() + 60

            async def behind() -> bool:
                return any([await c.position(tp) < ends[tp] for tp in tps])

            while await behind() and time.monotonic() < deadline:
                for records in (await c.getmany(timeout_ms=500)).values():
                    for r in records:
                        seen[orjson.loads(r.value)["id"]] += 1
            return seen
        finally:
            await c.stop()

    return asyncio.run(run())


def status(w: Worker, ns: str, entry_id: str) -> dict[str, Any]:
    r = httpx.get(f"{w.url}/v1/log/{ns}/{entry_id}", timeout=30)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def lag_s(w: Worker, ns: str, peer: str) -> float | None:
    for line in httpx.get(f"{w.url}/metrics", timeout=10).text.splitlines():
        if line.startswith("walstream_replication_lag_seconds{") and f'namespace="{ns}"' in line \
                and f'peer="{peer}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.timeout(600)
def test_writes_in_both_regions_converge_and_each_entry_is_once_in_each_regions_wal(
    start_worker: Callable[..., Worker], kafka_west: str, cassandra: Session, es: Elasticsearch, unique: str,
) -> None:
    east, west = regional(start_worker, unique, "east"), regional(start_worker, unique, "west")
    ks_e, ks_w = replicated(east, west, unique, cassandra)

    # Given writes in both regions, alternating, to 40 overlapping keys (puts and deletes),
    # one after the other: the last one of each key (by write time) is the expected row
    expected: dict[str, tuple[str, int]] = {}
    written: dict[str, str] = {}
    for i in range(240):
        region, w = ("east", east) if i % 2 else ("west", west)
        key = f"m{i * 7 % 40}"
        if i % 5 == 0:
            write(w, unique, f"{region}-{i}", delete_movie(key))
            expected.pop(key, None)
        else:
            write(w, unique, f"{region}-{i}", put_movie(key, f"{region}-{i}", 1900 + i))
            expected[key] = (f"{region}-{i}", 1900 + i)
        written[f"{region}-{i}"] = region
    # and a delayed put written in east, due in 4 s, and another that west cancels
    due_at = time.time() + 4
    write(east, unique, "late", put_movie("late", "late", 2000), lifecycle={"delay_ms": 4000})
    expected["late"] = ("late", 2000)
    written["late"] = "east"
    doomed_due = time.time() + 6
    write(east, unique, "doomed", put_movie("doomed", "doomed", 2001), lifecycle={"delay_ms": 6000})
    written["doomed"] = "east"
    wait_until(lambda: status(west, unique, "doomed")["state"] == "DELAYED", timeout_s=30,
               what="west to hold the entry to cancel")
    r = httpx.delete(f"{west.url}/v1/log/{unique}/doomed", timeout=30)
    assert r.status_code == 200 and r.json()["peers"] == {"east": "sent"}, r.text
    wait_until(lambda: status(east, unique, "doomed")["state"] == "CANCELLED", timeout_s=30,
               what="east to cancel it too")

    # Then west holds the delayed entry at once (it was forwarded when read), due then too
    doc = wait_until(lambda: (d := status(west, unique, "late"))["state"] == "DELAYED" and d, timeout_s=30,
                     what="west to hold the delayed entry")
    assert doc["origin"] == "east" and time.time() < due_at
    assert abs(datetime.fromisoformat(doc["due_at"]).timestamp() - due_at) < 1  # the same due time

    # Then both regions' tables and indices converge to the same state: the last write per key
    for ks in (ks_e, ks_w):
        wait_until(lambda ks=ks: cassandra_movies(cassandra, ks) == expected, timeout_s=120,
                   what=f"{ks} to converge")
    for prefix in (f"{unique}_e_", f"{unique}_w_"):
        wait_until(lambda prefix=prefix: es_movies(es, f"{prefix}movies") == expected, timeout_s=120,
                   what=f"{prefix}movies to converge")
    # (the cancelled one was applied in neither, its due time past)
    time.sleep(max(0.0, doomed_due + 2 - time.time()))
    assert "doomed" not in cassandra_movies(cassandra, ks_e) and "doomed" not in cassandra_movies(cassandra, ks_w)
    # and each entry is in each region's WAL exactly once (and east's has west's cancellation)
    for bootstrap in (KAFKA, KAFKA_WEST):
        ids = wal_ids(bootstrap, wal_topic(unique))
        if bootstrap == KAFKA:
            ids["doomed"] -= 1
        assert set(ids) == set(written), bootstrap
        assert max(ids.values()) == 1, {i: n for i, n in ids.items() if n > 1}
    # and each region's status names the entry's origin; the writing region forwarded it
    here, there = status(east, unique, "east-1"), status(west, unique, "east-1")
    assert here["origin"] == there["origin"] == "east"
    assert here["state"] == there["state"] == "DELIVERED"
    assert "region:west" in {t["type"] for t in here["targets"]}
    assert "region:east" not in {t["type"] for t in there["targets"]}  # never forwarded back


@pytest.mark.timeout(900)
def test_the_peers_kafka_down_for_60_s_holds_nothing_up_and_loses_nothing(
    start_worker: Callable[..., Worker], kafka_west: str, cassandra: Session, unique: str,
) -> None:
    east, west = regional(start_worker, unique, "east"), regional(start_worker, unique, "west")
    ks_e, ks_w = replicated(east, west, unique, cassandra)
    west_kafka = runners([SECOND_REGION])[0]
    expected: dict[str, tuple[str, int]] = {}
    n = 0

    def write_some(count: int) -> None:
        nonlocal n
        for _ in range(count):
            write(east, unique, f"e{n}", put_movie(f"m{n % 50}", f"t{n}", n))
            expected[f"m{n % 50}"] = (f"t{n}", n)
            n += 1

    write_some(20)
    wait_until(lambda: cassandra_movies(cassandra, ks_w) == expected, timeout_s=60, what="west to have the first")

    # When west's Kafka is stopped for 60 s while east keeps writing
    west_kafka.kill()
    stopped = time.monotonic()
    while time.monotonic() - stopped < 60:
        write_some(5)  # every write answers SUCCESS (write() asserts it)
        time.sleep(1)
    # east applied its writes meanwhile, and its metrics show west falling behind
    wait_until(lambda: cassandra_movies(cassandra, ks_e) == expected, timeout_s=60, what="east to apply its writes")
    lag = lag_s(east, unique, "west")
    assert lag is not None and lag > 30, lag
    # and a change of the namespace in east meanwhile does not reach west (said so) ...
    r = httpx.get(f"{east.url}/v1/namespaces/{unique}", timeout=10).json()
    changed = {k: v for k, v in r.items() if k != "version"} | {"description": "changed while west was down"}
    r = httpx.put(f"{east.url}/v1/namespaces/{unique}", json=changed, timeout=60)
    assert r.status_code == 200 and r.json()["regions"]["west"].startswith("not reached"), r.text
    west_kafka.up()
    back = time.monotonic()
    # ... until west is back, and gets it
    wait_until(lambda: httpx.get(f"{west.url}/v1/namespaces/{unique}", timeout=10).json().get("description")
               == "changed while west was down", timeout_s=120, what="west to get the changed config")

    # Then west catches up: every write there, nothing lost
    wait_until(lambda: cassandra_movies(cassandra, ks_w) == expected, timeout_s=300, what="west to catch up")
    caught_up = time.monotonic()
    assert set(wal_ids(KAFKA_WEST, wal_topic(unique))) == {f"e{i}" for i in range(n)}
    wait_until(lambda: lag_s(east, unique, "west") == 0, timeout_s=60, what="the lag to fall to 0")
    print(f"\nwest stopped at 0 s, back at {back - stopped:.1f} s, caught up at {caught_up - stopped:.1f} s "
          f"({n} entries written in east, {caught_up - back:.1f} s after it was back)")


@pytest.mark.timeout(900)
def test_a_worker_sigkilled_while_forwarding_forwards_everything_once_in_effect(
    start_worker: Callable[..., Worker], kafka_west: str, cassandra: Session, unique: str,
) -> None:
    east, west = regional(start_worker, unique, "east"), regional(start_worker, unique, "west")
    ks_e, ks_w = replicated(east, west, unique, cassandra)

    # Given 3,000 entries written in east (batches), 100 keys updated over and over
    total = 3000
    expected: dict[str, tuple[str, int]] = {}
    for start in range(0, total, 500):
        entries = []
        for i in range(start, start + 500):
            entries.append({"namespace": unique, "id": f"e{i}", "payload": put_movie(f"m{i % 100}", f"t{i}", i)})
            expected[f"m{i % 100}"] = (f"t{i}", i)
        r = httpx.post(f"{east.url}/v1/log/batch", json={"entries": entries}, timeout=60)
        assert r.status_code == 200 and {x["durable"] for x in r.json()["results"]} == {"SUCCESS"}, r.text[:500]

    # When east's worker is SIGKILLed while it forwards them, and started again
    wait_until(lambda: 0 < sum(wal_ids(KAFKA_WEST, wal_topic(unique)).values()) or None, timeout_s=60, interval_s=0.1,
               what="forwarding to start")
    east.kill()
    forwarded_before = len(wal_ids(KAFKA_WEST, wal_topic(unique)))
    assert forwarded_before < total, "killed after forwarding was over: the test tested nothing"
    east.start()

    # Then every entry reaches west (some perhaps twice), and both regions end the same
    wait_until(lambda: len(wal_ids(KAFKA_WEST, wal_topic(unique))) == total, timeout_s=300,
               what="every entry forwarded")
    for ks in (ks_e, ks_w):
        wait_until(lambda ks=ks: cassandra_movies(cassandra, ks) == expected, timeout_s=180, what=f"{ks} to converge")
    print(f"\n{forwarded_before} of {total} forwarded when east was killed; records in west's WAL: "
          f"{sum(wal_ids(KAFKA_WEST, wal_topic(unique)).values())}")
