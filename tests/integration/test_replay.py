"""Point-in-time replay on the real services: the recovery story end to end (entries written,
a bad entry corrupts rows, the table is truncated as a restored empty backup, a replay from
the start skipping the bad entry leaves the table as if it had never been written), a dry
run that applies nothing, the retention bound as a clear error, and a job cancelled midway."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from cassandra.cluster import Session
from elasticsearch import Elasticsearch

from tests.integration.conftest import (
    KAFKA,
    Worker,
    both_targets,
    cassandra_movies,
    delete_movie,
    es_movies,
    put_movie,
    put_namespace,
    wait_until,
)
from tests.integration.test_cli_live import cli

pytestmark = pytest.mark.timeout(300)


def iso(t_s: float) -> str:
    return datetime.fromtimestamp(t_s, tz=UTC).isoformat().replace("+00:00", "Z")


def write(c: httpx.Client, ns: str, eid: str, key: str, payload: dict[str, Any], **extra: Any) -> None:
    r = c.post("/v1/log", json={"namespace": ns, "id": eid, "key": key, "payload": payload, **extra})
    assert r.status_code == 200 and r.json()["durable"] == "SUCCESS", r.text


def writetimes(session: Session, ks: str) -> dict[str, int]:
    return {r.id: r.wt for r in session.execute(f"SELECT id, WRITETIME(title) AS wt FROM {ks}.movies")}


ADMIN = "replay-admin-token-7d41c9e2"


def cli_token(w: Worker, *args: str) -> Any:
    """``walstream`` against ``w`` with the admin token."""
    return cli(w, "--token", ADMIN, *args)


def job_json(out: Any) -> dict[str, Any]:
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def test_replay_rebuilds_a_truncated_table_without_the_bad_entry(
    start_worker: Callable[..., Worker], cassandra: Session, es: Elasticsearch, movies_keyspace: str, unique: str,
) -> None:
    ks = movies_keyspace
    w = start_worker()
    put_namespace(w, unique, both_targets(ks, f"{unique}_"))
    start_s = time.time() - 1.0
    expected: dict[str, tuple[str, int]] = {}
    with w.client() as c:
        for i in range(20):
            write(c, unique, f"put-{i}", f"m{i}", put_movie(f"m{i}", f"T{i}", 2000 + i))
            expected[f"m{i}"] = (f"T{i}", 2000 + i)
        for i in range(5):
            write(c, unique, f"update-{i}", f"m{i}", put_movie(f"m{i}", f"U{i}", 2000 + i))
            expected[f"m{i}"] = (f"U{i}", 2000 + i)
        write(c, unique, "delete-19", "m19", delete_movie("m19"))
        del expected["m19"]
        # the bad entry: three rows corrupted in one entry
        corrupt = {"mutations": [{"table": "movies", "op": "put", "key": {"id": f"m{i}"},
                                  "value": {"title": "CORRUPT", "year": 0}} for i in (1, 2, 3)]}
        write(c, unique, "bad-1", "bad", corrupt)
        write(c, unique, "after-2", "m2", put_movie("m2", "AFTER", 2002))
        expected["m2"] = ("AFTER", 2002)
        # cancelled before it was due: never applied, so never replayed
        write(c, unique, "cancelled-5", "m5", put_movie("m5", "CANCELLED", 0), lifecycle={"delay_ms": 3000})
        assert c.delete(f"/v1/log/{unique}/cancelled-5", params={"key": "m5"}).status_code in (200, 202)
        wait_until(lambda: c.get(f"/v1/log/{unique}/cancelled-5").json().get("state") == "CANCELLED",
                   timeout_s=30, what="the entry cancelled")
        # still delayed: the schedule delivers it, not the replay
        write(c, unique, "future-6", "m6", put_movie("m6", "FUTURE", 0), lifecycle={"delay_ms": 600_000})
    delivered = {**expected, "m1": ("CORRUPT", 0), "m3": ("CORRUPT", 0)}
    wait_until(lambda: cassandra_movies(cassandra, ks) == delivered, timeout_s=60, what="everything delivered")
    wait_until(lambda: es_movies(es, f"{unique}_movies") == delivered, timeout_s=60, what="the index")
    time.sleep(3.5)  # the cancelled entry's due time passes
    assert cassandra_movies(cassandra, ks) == delivered, "the cancelled entry was applied"

    written = writetimes(cassandra, ks)
    # the restored backup: an empty table
    cassandra.execute(f"TRUNCATE {ks}.movies")
    assert cassandra_movies(cassandra, ks) == {}

    # a dry run counts and lists, and applies nothing
    dry = job_json(cli(w, "replay", unique, "--from", iso(start_s), "--skip", "bad-1", "--dry-run", "-o", "json"))
    assert dry["state"] == "SUCCEEDED", dry
    assert dry["counts"]["read"] == 30 and dry["counts"]["skipped"] == 1, dry["counts"]
    assert dry["counts"]["cancelled"] == 1 and dry["counts"]["not_due"] == 1, dry["counts"]
    assert dry["counts"]["would_apply"] == 27 and "applied" not in dry["counts"], dry["counts"]
    assert {s["id"] for s in dry["samples"]["would_apply"]} >= {"put-0", "after-2"}
    assert "bad-1" not in {s["id"] for s in dry["samples"]["would_apply"]}
    time.sleep(1.0)
    assert cassandra_movies(cassandra, ks) == {}, "a dry run applied something"

    # the replay, to Cassandra only (named by its label)
    done = job_json(cli(w, "replay", unique, "--from", iso(start_s), "--skip", "bad-1",
                        "--target", f"cassandra:{ks}", "-o", "json"))
    assert done["state"] == "SUCCEEDED" and done["counts"]["applied"] == 27, done
    assert done["counts"].get("failed", 0) == 0 and done["progress"] == 1.0
    assert cassandra_movies(cassandra, ks) == expected
    # with the entries' own write times
    replayed = writetimes(cassandra, ks)
    assert {k: v for k, v in replayed.items() if k not in ("m1", "m3")} == {
        k: v for k, v in written.items() if k not in ("m1", "m3")}
    assert replayed["m1"] < written["m1"]  # update-1's, written before the bad entry
    # the index was not replayed to: it still shows the bad entry
    assert es_movies(es, f"{unique}_movies")["m1"] == ("CORRUPT", 0)

    # again, from a later time: idempotent, and older writes never win over newer ones
    again = job_json(cli(w, "replay", unique, "--from", iso(start_s), "--skip", "bad-1", "-o", "json"))
    assert again["state"] == "SUCCEEDED" and again["counts"]["applied"] == 27 * 2, again
    assert cassandra_movies(cassandra, ks) == expected
    # the index got the same replay (both targets this time): older writes never overwrite
    # newer ones, so the bad entry's rows keep it there, except where a later write came
    index = es_movies(es, f"{unique}_movies")
    assert index["m1"] == ("CORRUPT", 0) and index["m2"] == ("AFTER", 2002) and index["m4"] == ("U4", 2004)

    # the jobs are listed, newest first, and readable by id
    with w.client() as c:
        listed = c.get("/v1/jobs").json()["jobs"]
        assert [j["id"] for j in listed[:3]] == [again["id"], done["id"], dry["id"]]
        assert c.get(f"/v1/jobs/{done['id']}").json()["counts"] == done["counts"]
        # bad input: a clear 4xx that names the problem, and no job
        r = c.post(f"/v1/replay/{unique}", json={"from": iso(start_s), "target": "cassandra:nope"})
        assert r.status_code == 400 and f"cassandra:{ks}" in r.json()["message"], r.text
        r = c.post(f"/v1/replay/{unique}", json={"from": iso(time.time() + 3600)})
        assert r.status_code == 400 and "future" in r.json()["message"], r.text
        r = c.post("/v1/replay/no-such-ns", json={"from": iso(start_s)})
        assert r.status_code == 404, r.text
        r = c.post(f"/v1/replay/{unique}", json={"from": iso(start_s), "skips": ["bad-1"]})
        assert r.status_code == 400 and "skips" in r.json()["message"], r.text
        assert len(c.get("/v1/jobs").json()["jobs"]) == 3
        assert c.get("/v1/jobs/replay.x.nope").status_code == 404


def delete_first_records(topic: str, partition: int, upto: int) -> None:
    async def run() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
        await admin.start()
        try:
            await admin.delete_records({TopicPartition(topic, partition): RecordsToDelete(upto)}, timeout_ms=30_000)
        finally:
            await admin.close()

    asyncio.run(run())


def partition_of(c: httpx.Client, ns: str, eid: str) -> int:
    doc: dict[str, Any] = {}

    def known() -> bool:
        nonlocal doc
        doc = c.get(f"/v1/log/{ns}/{eid}").json()
        return doc.get("state") == "DELIVERED"

    wait_until(known, timeout_s=30, what=f"{eid} delivered")
    return int(doc["partition"])


def test_retention_bounds_a_replay_and_a_job_can_be_cancelled(
    start_worker: Callable[..., Worker], cassandra: Session, movies_keyspace: str, unique: str,
) -> None:
    ks = movies_keyspace
    w = start_worker()
    put_namespace(w, unique, [{"type": "cassandra", "keyspace": ks, "consistency": "ONE"}],
                  retention_ms=7 * 86_400_000)
    start_s = time.time() - 1.0
    with w.client() as c:
        write(c, unique, "first", "k-first", put_movie("m-first", "A", 1))
        p = partition_of(c, unique, "first")
        time.sleep(1.0)
        for i in range(300):  # one key: all in the partition of the record deleted below
            write(c, unique, f"e{i}", "k-first", put_movie(f"m{i}", "B", i))
    # the first record is deleted, as retention would
    delete_first_records(f"wal.{unique}", p, 1)
    out = cli(w, "replay", unique, "--from", iso(start_s), "--dry-run")
    assert out.returncode == 1 and "keeps records from" in out.stderr, out
    assert "retention.ms=604800000" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    # from the earliest time it names: accepted, and every entry kept is there
    earliest = re.search(r"Replay from (\S+) or later", out.stderr)
    assert earliest is not None, out.stderr
    boundary = earliest.group(1)
    ok = job_json(cli(w, "replay", unique, "--from", boundary, "--dry-run", "-o", "json"))
    assert ok["state"] == "SUCCEEDED" and ok["counts"]["would_apply"] == 300, ok

    # a slow replay, cancelled: it stops, and what it applied stays applied
    cassandra.execute(f"TRUNCATE {ks}.movies")
    started = job_json(cli(w, "replay", unique, "--from", boundary, "--rate", "20", "--detach",
                           "-o", "json"))
    time.sleep(3.0)
    cancelled = job_json(cli(w, "job", "cancel", started["id"], "-o", "json"))
    assert cancelled["id"] == started["id"]

    def ended() -> bool:
        return bool(job_json(cli(w, "job", "show", started["id"], "-o", "json"))["state"] == "CANCELLED")

    wait_until(ended, timeout_s=30, what="the job to stop")
    rows = len(cassandra_movies(cassandra, ks))
    assert 0 < rows < 300, rows
    time.sleep(2.0)
    assert len(cassandra_movies(cassandra, ks)) == rows, "the cancelled job went on applying"


def test_in_a_fleet_cancellations_come_from_every_worker_and_any_worker_follows_a_job(
    start_worker: Callable[..., Worker], cassandra: Session, movies_keyspace: str, unique: str,
) -> None:
    ks = movies_keyspace
    # with admin tokens: a worker asking its peers about jobs passes the caller's on
    a = start_worker(WALSTREAM_ADMIN_TOKENS=ADMIN)
    b = start_worker(app_id=a.app_id, WALSTREAM_ADMIN_TOKENS=ADMIN)
    auth = {"Authorization": f"Bearer {ADMIN}"}

    def client(w: Worker) -> httpx.Client:
        return httpx.Client(base_url=w.url, timeout=60, headers=auth)

    with client(a) as c:
        r = c.put(f"/v1/namespaces/{unique}", json={"targets": [{"type": "cassandra", "keyspace": ks,
                                                                  "consistency": "ONE"}]})
        assert r.status_code == 200, r.text

    def partitions_of(w: Worker) -> set[int]:
        with w.client() as c:
            assigned = c.get("/v1/health").json()["assigned"]
        return {int(t.rsplit(":", 1)[1]) for t in assigned if t.startswith(f"wal.{unique}:")}

    wait_until(lambda: bool(partitions_of(a)) and bool(partitions_of(b)), timeout_s=90,
               what="both workers to own partitions of the namespace")
    time.sleep(1.0)
    start_s = time.time() - 1.0
    with client(a) as c:
        for i in range(8):  # keys over all 4 partitions: both workers hold some of them
            write(c, unique, f"cancel-{i}", f"c{i}", put_movie(f"c{i}", "X", i), lifecycle={"delay_ms": 10_000})
            last_due_s = time.time() + 10.0

            def cancelled(i: int = i) -> bool:  # 503 while the fleet settles: asked again
                status = c.delete(f"/v1/log/{unique}/cancel-{i}", params={"key": f"c{i}"}).status_code
                assert status in (200, 202, 503), status
                return status != 503

            wait_until(cancelled, timeout_s=30, what=f"cancel-{i} cancelled")
        for i in range(100):
            write(c, unique, f"e{i}", f"m{i}", put_movie(f"m{i}", "Y", i))
        wait_until(lambda: all(c.get(f"/v1/log/{unique}/cancel-{i}").json().get("state") == "CANCELLED"
                               for i in range(8)), timeout_s=30, what="the cancellations")
        homes = {c.get(f"/v1/log/{unique}/cancel-{i}").json()["partition"] for i in range(8)}
    assert homes & partitions_of(a) and homes & partitions_of(b), "the cancelled entries are not on both workers"
    time.sleep(max(0.0, last_due_s + 1.0 - time.time()))  # their due times pass

    dry = job_json(cli_token(a, "replay", unique, "--from", iso(start_s), "--dry-run", "-o", "json"))
    assert dry["counts"]["cancelled"] == 8 and dry["counts"]["would_apply"] == 100, dry["counts"]

    # a slow replay started on a, followed and cancelled through b
    started = job_json(cli_token(a, "replay", unique, "--from", iso(start_s), "--rate", "10", "--detach",
                                 "-o", "json"))
    assert started["worker"] == a.url
    seen = job_json(cli_token(b, "job", "show", started["id"], "-o", "json"))
    assert seen["id"] == started["id"] and seen["state"] == "RUNNING" and seen["worker"] == a.url, seen
    assert started["id"] in {j["id"] for j in job_json(cli_token(b, "job", "list", "-o", "json"))["jobs"]}
    with b.client() as anonymous:
        assert anonymous.get("/v1/jobs").status_code == 401
    job_json(cli_token(b, "job", "cancel", started["id"], "-o", "json"))
    wait_until(lambda: job_json(cli_token(a, "job", "show", started["id"], "-o", "json"))["state"] == "CANCELLED",
               timeout_s=30, what="the job cancelled through the other worker")
    assert len(cassandra_movies(cassandra, ks)) == 100  # delivered; the cancelled ones never
    assert not {f"c{i}" for i in range(8)} & set(cassandra_movies(cassandra, ks))
