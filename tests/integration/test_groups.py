"""Mutation groups on the real services: members are durable when answered and invisible
until the commit marker; a worker SIGKILLed between the members and the marker loses
nothing; a member failing transiently at Cassandra holds the group until it is back; a group
with no marker is aborted with nothing visible; a group of 10,000 members lands whole and in
seq order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
from cassandra.cluster import Session

from tests.integration.conftest import (
    KAFKA,
    Worker,
    cassandra_movies,
    create_topic,
    kafka_target,
    put_movie,
    put_namespace,
    wait_until,
)
from tests.integration.test_cli_live import cli
from walstream.client import WalstreamClient


def rate(mid: str, stars: int) -> dict[str, Any]:
    return {"mutations": [{"table": "ratings", "op": "put", "key": {"id": mid}, "value": {"stars": stars}}]}


def ratings(session: Session, ks: str) -> dict[str, int]:
    return {r.id: r.stars for r in session.execute(f"SELECT id, stars FROM {ks}.ratings")}


def write(c: httpx.Client, doc: dict[str, Any]) -> None:
    r = c.post("/v1/log", json=doc)
    assert r.status_code == 200 and r.json()["durable"] == "SUCCESS", r.text


def group_state(w: Worker, ns: str, gid: str) -> dict[str, Any]:
    with w.client() as c:
        r = c.get(f"/v1/groups/{ns}/{gid}")
    assert r.status_code in (200, 503), r.text
    body: dict[str, Any] = r.json()
    return body


def test_a_group_survives_a_sigkill_between_its_members_and_its_marker(
    start_worker: Callable[..., Worker], cassandra: Session, movies_keyspace: str, unique: str,
) -> None:
    ks = movies_keyspace
    cassandra.execute(f"CREATE TABLE {ks}.ratings (id text PRIMARY KEY, stars int)")
    w = start_worker()
    put_namespace(w, unique, [{"type": "cassandra", "keyspace": ks, "consistency": "ONE"}])
    t0 = time.monotonic()
    timeline: list[str] = []

    def mark(what: str) -> None:
        timeline.append(f"{time.monotonic() - t0:6.1f}s {what}")

    members = [put_movie("m1", "Heat", 1995), rate("m1", 5), put_movie("m2", "Ronin", 1998)]
    with w.client() as c:
        for seq in (0, 1):
            write(c, {"namespace": unique, "id": f"o1-{seq}", "group": {"id": "o1", "seq": seq},
                      "payload": members[seq]})
        mark("members 0 and 1 acknowledged")
    wait_until(lambda: group_state(w, unique, "o1").get("members") == 2, what="the members to be staged")
    time.sleep(2.0)
    assert cassandra_movies(cassandra, ks) == {} and ratings(cassandra, ks) == {}, "applied before the marker"
    mark("2 s later: nothing in Cassandra; worker SIGKILLed")
    w.kill()
    # its data dir is lost too: the staged members come back from the groups table's changelog
    w = start_worker(app_id=w.app_id, datadir=w.datadir.with_name("fresh-datadir"))
    mark("a worker started on an empty data dir")
    # the rest through the CLI
    out = cli(w, "write", unique, orjson.dumps(members[2]).decode(), "--group", "o1", "--seq", "2", "--id", "o1-2")
    assert out.returncode == 0 and out.stdout.startswith("SUCCESS"), out
    mark("member 2 acknowledged")
    time.sleep(1.0)
    assert cassandra_movies(cassandra, ks) == {} and ratings(cassandra, ks) == {}, "applied before the marker"
    out = cli(w, "entry", "commit", unique, "o1", "--size", "3", "--id", "o1-commit")
    assert out.returncode == 0 and out.stdout.startswith("SUCCESS"), out
    mark("commit marker acknowledged")
    wait_until(lambda: cassandra_movies(cassandra, ks) == {"m1": ("Heat", 1995), "m2": ("Ronin", 1998)}
               and ratings(cassandra, ks) == {"m1": 5}, timeout_s=60, what="the whole group in Cassandra")
    mark("all 3 members in Cassandra (2 tables)")
    wait_until(lambda: group_state(w, unique, "o1").get("state") == "APPLIED", timeout_s=30, what="APPLIED")
    status = group_state(w, unique, "o1")
    assert (status["size"], status["members"], status["missing"]) == (3, 3, [])
    print("group timeline:\n  " + "\n  ".join(timeline))


def test_a_member_failing_transiently_at_cassandra_holds_the_group_until_it_is_back(
    start_worker: Callable[..., Worker], cassandra: Session, unique: str,
) -> None:
    # a keyspace asking for 3 replicas on a 1-node cluster: QUORUM writes fail (Unavailable,
    # transient) until it is altered to 1
    ks = f"ks_{unique}"
    cassandra.execute(f"CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 3}}")
    try:
        cassandra.execute(f"CREATE TABLE {ks}.movies (id text PRIMARY KEY, title text, year int)")
        w = start_worker()
        put_namespace(w, unique, [{"type": "cassandra", "keyspace": ks, "consistency": "QUORUM"}],
                      retry={"initial_delay_ms": 200, "multiplier": 1.5, "max_delay_ms": 1000, "max_attempts": 1000})
        with w.client() as c:
            for seq in range(3):
                write(c, {"namespace": unique, "id": f"g-{seq}", "group": {"id": "g", "seq": seq},
                          "payload": put_movie(f"m{seq}", "t", seq)})
            write(c, {"namespace": unique, "group": {"id": "g", "commit": True, "size": 3}})

            def retrying() -> bool:
                doc = c.get(f"/v1/log/{unique}/g-0").json()
                # Unavailable reaches the driver as NoHostAvailable: "the target is down", so it
                # waits for the target's circuit without spending attempts
                return bool(doc["state"] == "RETRYING" and "QUORUM" in (doc["targets"][0]["last_error"] or ""))

            wait_until(retrying, timeout_s=60, what="member 0 to be retried")
            time.sleep(3.0)  # a few more retries
            held = c.get(f"/v1/log/{unique}/g-2").json()
            assert held["state"] == "PENDING" and held["targets"][0]["held_behind"], held
        assert group_state(w, unique, "g")["state"] == "COMMITTED"
        assert cassandra_movies(cassandra, ks) == {}
        cassandra.execute(f"ALTER KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', "
                          "'replication_factor': 1}")
        wait_until(lambda: set(cassandra_movies(cassandra, ks)) == {"m0", "m1", "m2"}, timeout_s=60,
                   what="the group once Cassandra accepts the writes")
        wait_until(lambda: group_state(w, unique, "g").get("state") == "APPLIED", timeout_s=30, what="APPLIED")
        with w.client() as c:
            assert c.get(f"/v1/dlq/{unique}").json()["dead_letters"] == []
    finally:
        cassandra.execute(f"DROP KEYSPACE IF EXISTS {ks}")


def test_a_group_without_a_marker_is_aborted_and_nothing_of_it_is_visible(
    start_worker: Callable[..., Worker], cassandra: Session, movies_keyspace: str, unique: str,
) -> None:
    ks = movies_keyspace
    w = start_worker(WALSTREAM_SWEEP_INTERVAL_S="0.5")
    put_namespace(w, unique, [{"type": "cassandra", "keyspace": ks, "consistency": "ONE"}], group_timeout_s=3)
    with w.client() as c:
        for seq in range(2):
            write(c, {"namespace": unique, "id": f"a-{seq}", "group": {"id": "a", "seq": seq},
                      "payload": put_movie(f"m{seq}", "t", seq)})
    wait_until(lambda: group_state(w, unique, "a").get("state") == "ABORTED", timeout_s=30, what="ABORTED")
    status = group_state(w, unique, "a")
    assert "no commit marker" in status["error"]
    with w.client() as c:
        assert c.get(f"/v1/log/{unique}/a-0").json()["state"] == "CANCELLED"
        # the marker, late (through the Python client): nothing is applied
        async def commit_late() -> tuple[str, str]:
            async with WalstreamClient(w.url) as client:
                result = await client.commit_group(unique, "a", 2, id="a-commit")
                return result.durable, (await client.group(unique, "a")).state

        assert asyncio.run(commit_late()) == ("SUCCESS", "ABORTED")
        wait_until(lambda: c.get(f"/v1/log/{unique}/a-commit").json().get("state") == "CANCELLED", what="marker")
    time.sleep(1.0)
    assert cassandra_movies(cassandra, ks) == {}
    shown = cli(w, "entry", "group", unique, "a")
    assert shown.returncode == 0 and shown.stdout.startswith("a\tABORTED\tmembers=2/?"), shown
    assert "no commit marker" in shown.stdout
    missing = cli(w, "entry", "group", unique, "never-written")
    assert missing.returncode == 1 and "no group 'never-written'" in missing.stderr, missing
    # conflicts one request shows are refused there (409), not written to be dead-lettered
    with w.client() as c:
        r = c.post("/v1/log/batch", json={"entries": [
            {"namespace": unique, "id": "b-0", "group": {"id": "b", "seq": 0}, "payload": put_movie("b0", "t", 1)},
            {"namespace": unique, "id": "b-0x", "group": {"id": "b", "seq": 0}, "payload": put_movie("b0", "t", 2)},
            {"namespace": unique, "id": "b-c1", "group": {"id": "b", "commit": True, "size": 1}},
            {"namespace": unique, "id": "b-c2", "group": {"id": "b", "commit": True, "size": 2}},
        ]})
        results = r.json()["results"]
        assert [x["durable"] for x in results] == ["SUCCESS", "FAILED", "SUCCESS", "FAILED"], results
        assert "seq 0 of group 'b' is item 0" in results[1]["message"]
        assert "item 2 of this request commits group 'b' with size 1" in results[3]["message"]
    wait_until(lambda: cassandra_movies(cassandra, ks) == {"b0": ("t", 1)}, what="group b applied")
    with w.client() as c:
        assert c.get(f"/v1/log/{unique}/b-0x").status_code == 404  # never written


def test_a_group_of_10000_members_is_applied_whole_and_in_seq_order(
    start_worker: Callable[..., Worker], unique: str,
) -> None:
    topic, w, size = f"{unique}-out", start_worker(), 10_000
    t0 = time.monotonic()
    stage_group(w, unique, topic, "big", size)
    written_s = time.monotonic() - t0
    assert read_seqs(topic, 0, 2.0) == [], "applied before the marker"
    with w.client() as c:
        write(c, {"namespace": unique, "group": {"id": "big", "commit": True, "size": size}})
    committed_s = time.monotonic() - t0
    wait_until(lambda: group_state(w, unique, "big").get("state") == "APPLIED", timeout_s=300, interval_s=1.0,
               what="the group APPLIED")
    applied_s = time.monotonic() - t0
    seqs = read_seqs(topic, size, 60.0)
    firsts = list(dict.fromkeys(seqs))
    assert firsts == list(range(size)), "not every member, or not in seq order"
    print(f"10,000 members written in {written_s:.1f} s; marker at {committed_s:.1f} s; "
          f"APPLIED at {applied_s:.1f} s ({len(seqs)} records at the target)")


def stage_group(w: Worker, ns: str, topic: str, gid: str, size: int) -> None:
    """Namespace ``ns`` delivering to the Kafka topic ``topic``; the members of group ``gid``
    (payload ``{"seq": N}``) written in batches of 2,000 and staged, no marker yet."""
    create_topic(topic, partitions=4)
    put_namespace(w, ns, [kafka_target(topic)])
    with w.client() as c:
        for start in range(0, size, 2000):
            batch = [{"namespace": ns, "id": f"{gid}-{s}", "group": {"id": gid, "seq": s}, "payload": {"seq": s}}
                     for s in range(start, min(size, start + 2000))]
            r = c.post("/v1/log/batch", json={"entries": batch})
            assert {x["durable"] for x in r.json()["results"]} == {"SUCCESS"}
    wait_until(lambda: group_state(w, ns, gid).get("members") == size, timeout_s=60, what="all members staged")


def read_seqs(topic: str, expect: int, timeout_s: float) -> list[int]:
    """The ``seq`` payload field of every record of ``topic``, in each partition's order
    (a group's records share a key: one partition)."""
    from aiokafka import AIOKafkaConsumer

    async def run() -> list[int]:
        c = AIOKafkaConsumer(topic, bootstrap_servers=KAFKA, auto_offset_reset="earliest", group_id=None)
        await c.start()
        seqs: list[int] = []
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline and (expect == 0 or len(set(seqs)) < expect):
                for records in (await c.getmany(timeout_ms=500)).values():
                    seqs.extend(orjson.loads(r.value)["seq"] for r in records)
        finally:
            await c.stop()
        return seqs

    return asyncio.run(run())


def test_a_worker_sigkilled_while_applying_a_large_group_applies_all_of_it_after_restart(
    start_worker: Callable[..., Worker], unique: str,
) -> None:
    topic, w, size = f"{unique}-out", start_worker(), 6000
    stage_group(w, unique, topic, "k", size)
    with w.client() as c:
        write(c, {"namespace": unique, "group": {"id": "k", "commit": True, "size": size}})
    wait_until(lambda: len(read_seqs(topic, 0, 0.5)) >= 500, timeout_s=60, what="the group being applied")
    w.kill()
    applied_before = len(set(read_seqs(topic, 0, 1.0)))
    w.start()
    wait_until(lambda: group_state(w, unique, "k").get("state") == "APPLIED", timeout_s=300, interval_s=1.0,
               what="the group APPLIED after the restart")
    seqs = read_seqs(topic, size, 60.0)
    assert set(seqs) == set(range(size))
    last = {s: i for i, s in enumerate(seqs)}
    assert sorted(range(size), key=last.__getitem__) == list(range(size)), "the last pass is not in seq order"
    print(f"SIGKILL with {applied_before} of {size} members applied; all {size} after the restart "
          f"({len(seqs)} records at the target)")
