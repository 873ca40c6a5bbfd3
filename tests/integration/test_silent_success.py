"""Issue 7, "silent success": an operation reports what really happened.

Given dead letters of which one can now be delivered and one cannot, when they are redriven,
then each one's outcome is reported (DELIVERED; DEAD with the reason) and the CLI exits 1.
Given a namespace with a pending (delayed) entry, when it is deleted, then it is refused
without force, and with force the entry is dead-lettered and the answer counts it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from elasticsearch import Elasticsearch

from tests.integration.conftest import Worker, put_movie, put_namespace, wait_until
from tests.integration.test_outages import dead_letters

pytestmark = pytest.mark.timeout(300)


def cli(w: Worker, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "walstream.cli", "--url", w.url, *args],
                          capture_output=True, text=True, timeout=120)


def test_redrive_reports_each_outcome(start_worker: Callable[..., Worker], unique: str, es: Elasticsearch) -> None:
    index = f"{unique}_movies"
    es.indices.create(index=index, mappings={"properties": {"title": {"type": "integer"}, "year": {"type": "integer"}}})
    w = start_worker()
    put_namespace(w, unique, [{"type": "elasticsearch", "index_prefix": f"{unique}_"}])
    bad_forever: dict[str, Any] = {"mutations": [{"table": "movies", "op": "put", "key": {"id": "3"},
                                                  "value": {"title": "x", "year": "not a year"}}]}
    with w.client() as c:
        r = c.post("/v1/log/batch", json={"entries": [
            {"namespace": unique, "id": "fixable", "key": "2", "payload": put_movie("2", "Heat", 1995)},
            {"namespace": unique, "id": "hopeless", "key": "3", "payload": bad_forever},
        ]})
        assert {x["durable"] for x in r.json()["results"]} == {"SUCCESS"}
        wait_until(lambda: len(c.get(f"/v1/dlq/{unique}").json()["dead_letters"]) == 2, timeout_s=60,
                   what="both entries dead-lettered")
    # ids asked for by name are found whatever the listing's limit: with limit 1 the oldest
    # letter alone would be listed, and filtering that by the ids found nothing
    with w.client() as c:
        listed = [d["id"] for d in c.get(f"/v1/dlq/{unique}").json()["dead_letters"]]
        newest = listed[-1]
        body = c.post(f"/v1/dlq/{unique}/redrive", json={"ids": [newest, "no-such-id"], "limit": 1}).json()
        assert [d["id"] for d in body["would_redrive"]] == [newest], body
    # an id that matches nothing is an error on the command line, and nothing is redriven
    nothing = cli(w, "dlq", "redrive", unique, "--id", "no-such-id", "--execute")
    assert nothing.returncode == 1 and "no dead letter matches id(s) 'no-such-id'" in nothing.stderr, nothing
    # When the mapping is fixed for titles only and both are redriven
    es.indices.delete(index=index)
    es.indices.create(index=index, mappings={"properties": {"title": {"type": "keyword"}, "year": {"type": "integer"}}})
    done = cli(w, "dlq", "redrive", unique, "--execute", "--wait", "60")
    # Then each outcome is reported, and the exit code says not all were delivered
    assert done.returncode == 1, done
    assert "fixable (elasticsearch): DELIVERED" in done.stdout, done.stdout
    assert "hopeless (elasticsearch): DEAD" in done.stdout and "year" in done.stdout, done.stdout
    assert "1 delivered, 1 dead-lettered again" in done.stderr, done.stderr
    # A misspelt filter or a bad query is refused, never widened to every dead letter
    with w.client() as c:
        r = c.post(f"/v1/dlq/{unique}/redrive", json={"id": "hopeless", "dry_run": False})
        assert r.status_code == 400 and "unknown field" in r.json()["message"], r.text
        for query in ({"limit": "-1"}, {"error_class": "bogus"}, {"ids": "x"}):
            assert c.get(f"/v1/dlq/{unique}", params=query).status_code == 400, query
        assert len(c.get(f"/v1/dlq/{unique}").json()["dead_letters"]) == 1
    # And the HTTP answer carries the same per-entry results
    with w.client() as c:
        body = c.post(f"/v1/dlq/{unique}/redrive", json={"dry_run": False, "wait_s": 60}).json()
    assert (body["redriven"], body["dead"], body["delivered"]) == (1, 1, 0), body
    assert body["results"][0]["id"] == "hopeless" and body["results"][0]["outcome"] == "DEAD"


def test_deleting_a_namespace_with_pending_entries_needs_force(
    start_worker: Callable[..., Worker], unique: str
) -> None:
    w = start_worker()
    put_namespace(w, unique, [{"type": "noop"}])
    with w.client() as c:
        r = c.post("/v1/log", json={"namespace": unique, "id": "later", "payload": 1,
                                    "lifecycle": {"delay_ms": 600_000}})
        assert r.status_code == 200
        wait_until(lambda: c.get(f"/v1/log/{unique}/later").json().get("state") == "DELAYED", what="DELAYED")
    # When it is deleted without force: refused, counting the pending entry
    refused = cli(w, "namespace", "delete", unique)
    assert refused.returncode == 1 and "1 pending" in refused.stderr and "--force" in refused.stderr, refused
    assert httpx.get(f"{w.url}/v1/namespaces/{unique}").status_code == 200
    assert httpx.delete(f"{w.url}/v1/namespaces/{unique}", params={"forse": "true"}).status_code == 400
    # With force: deleted, and the entry dead-lettered now (not in ten minutes)
    forced = cli(w, "namespace", "delete", unique, "--force")
    assert forced.returncode == 0 and "1 pending entry dead-lettered" in forced.stdout, forced
    letters = wait_until(lambda: dead_letters(f"wal.{unique}.dlq"), timeout_s=30, what="the dead letter")
    assert [(dl["entry"]["id"], dl["error_class"]) for dl in letters] == [("later", "no_namespace")]  # type: ignore[index]
    with w.client() as c:
        wait_until(lambda: c.get(f"/v1/log/{unique}/later").json().get("state") == "DEAD", timeout_s=30,
                   what="the entry's state DEAD")
