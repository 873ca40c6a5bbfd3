"""Secondary index check on the real services: a namespace whose Cassandra table and
Elasticsearch index agree checks clean; drift made by hand (a document deleted from the
index, a stale document with an older write time, an extra document) is reported exactly,
repaired through the WAL, and a second check is clean."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

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
from tests.integration.test_cli_live import cli

pytestmark = pytest.mark.timeout(300)


def check(w: Worker, ns: str, *args: str) -> tuple[int, dict[str, Any]]:
    out = cli(w, "index", "check", ns, "--table", "movies", "-o", "json", *args)
    assert out.returncode in (0, 1), out
    doc: dict[str, Any] = json.loads(out.stdout)
    return out.returncode, doc


def test_an_index_check_finds_exactly_the_drift_made_by_hand(
    start_worker: Callable[..., Worker], cassandra: Session, es: Elasticsearch, movies_keyspace: str, unique: str,
) -> None:
    ks, index = movies_keyspace, f"{unique}_movies"
    w = start_worker()
    put_namespace(w, unique, both_targets(ks, f"{unique}_"))
    movies = {f"m{i}": (f"T{i}", 1900 + i) for i in range(200)}
    with w.client() as c:
        for start in range(0, 200, 50):
            r = c.post("/v1/log/batch", json={"entries": [
                {"namespace": unique, "key": mid, "payload": put_movie(mid, *movies[mid])}
                for mid in list(movies)[start:start + 50]]})
            assert r.status_code == 200, r.text
    wait_until(lambda: cassandra_movies(cassandra, ks) == movies, timeout_s=60, what="the table")
    wait_until(lambda: es_movies(es, index) == movies, timeout_s=60, what="the index")

    # in step: clean, exit 0
    code, clean = check(w, unique)
    assert code == 0 and clean["state"] == "SUCCEEDED", clean
    assert {k: clean["counts"][k] for k in ("rows", "documents", "missing", "stale", "extra", "index_newer")} == {
        "rows": 200, "documents": 200, "missing": 0, "stale": 0, "extra": 0, "index_newer": 0}

    # drift, by hand
    es.delete(index=index, id="m5", refresh=True)  # a row without its document
    stale = es.get(index=index, id="m7")["_source"]
    stale["title"] = "OLD"
    stale["_walstream"]["ts"]["title"] -= 1_000_000  # written a second before the row's title
    es.index(index=index, id="m7", document=stale, refresh=True)
    ghost_ts = int(time.time() * 1e6)
    es.index(index=index, id="ghost", refresh=True, document={
        "id": "ghost", "title": "Nobody", "year": 1,
        "_walstream": {"ts": {"title": ghost_ts, "year": ghost_ts}, "row_ts": ghost_ts, "deleted_at": 0}})

    code, found = check(w, unique)
    assert code == 1 and found["state"] == "SUCCEEDED", found
    counts = {k: found["counts"][k] for k in ("rows", "documents", "missing", "stale", "extra", "index_newer")}
    assert counts == {"rows": 200, "documents": 200, "missing": 1, "stale": 1, "extra": 1, "index_newer": 0}
    samples = found["samples"]
    assert [s["id"] for s in samples["missing"]] == ["m5"]
    assert [s["id"] for s in samples["stale"]] == ["m7"] and list(samples["stale"][0]["columns"]) == ["title"]
    assert [(s["id"], s["key"]) for s in samples["extra"]] == [("ghost", {"id": "ghost"})]
    assert found["progress"] == 1.0

    # the text answer names them too
    out = cli(w, "index", "check", unique, "--table", "movies")
    assert out.returncode == 1 and "1 missing, 1 stale, 1 extra" in out.stdout, out
    assert {line.split("\t")[1] for line in out.stdout.splitlines() if line.startswith("  ")} == {"m5", "m7", "ghost"}

    # refusals: one line, naming the problem, and no job
    out = cli(w, "index", "check", unique, "--table", "nope")
    assert out.returncode == 1 and f"no table {ks}.nope" in out.stderr and len(out.stderr.splitlines()) == 1, out
    cassandra.execute(f"CREATE TABLE {ks}.by_uuid (id uuid PRIMARY KEY, v text)")
    out = cli(w, "index", "check", unique, "--table", "by_uuid")
    assert out.returncode == 1 and "key column(s) id (uuid)" in out.stderr, out
    with w.client() as c:
        r = c.post(f"/v1/index/{unique}/movies/check", json={"repairs": True})
        assert r.status_code == 400 and "repairs" in r.json()["message"], r.text
        r = c.post("/v1/index/no-such-ns/movies/check", json={})
        assert r.status_code == 404, r.text
        assert len([j for j in c.get("/v1/jobs").json()["jobs"] if j["kind"] == "index"]) == 3

    # repair, through the WAL: a put for each of the two rows, a delete for the extra document
    before = cassandra_writetimes(cassandra, ks)
    code, repaired = check(w, unique, "--repair")
    assert code == 0 and repaired["counts"]["repairs_written"] == 3, repaired["counts"]
    assert repaired["counts"].get("repairs_failed", 0) == 0 and repaired["counts"].get("unrepairable", 0) == 0

    def clean() -> bool:
        code, again = check(w, unique)
        counts = again["counts"]
        # index_newer 0 too: the repairs carry the rows' own write times, not newer ones
        return code == 0 and counts["missing"] == counts["stale"] == counts["extra"] == counts["index_newer"] == 0

    wait_until(clean, timeout_s=60, what="a second check to be clean")
    assert es_movies(es, index) == movies  # m5 back, m7's title back, the ghost gone
    assert cassandra_writetimes(cassandra, ks) == before  # the table was not written to

    # again: idempotent, nothing to repair
    code, idle = check(w, unique, "--repair")
    assert code == 0 and idle["counts"].get("repairs_written", 0) == 0, idle["counts"]


    # an integer key written as other text ("01" for 1) is another document than the row's
    cassandra.execute(f"CREATE TABLE {ks}.by_int (id int PRIMARY KEY, v text)")
    with w.client() as c:
        for key in ("01", 2):
            r = c.post("/v1/log", json={"namespace": unique, "key": f"k{key}", "payload": {"mutations": [
                {"table": "by_int", "op": "put", "key": {"id": key}, "value": {"v": "x"}}]}})
            assert r.status_code == 200, r.text
    wait_until(lambda: len(list(cassandra.execute(f"SELECT id FROM {ks}.by_int"))) == 2, timeout_s=30,
               what="the by_int rows")
    wait_until(lambda: es.indices.exists(index=f"{unique}_by_int") and es.count(index=f"{unique}_by_int")["count"] == 2,
               timeout_s=30, what="the by_int documents")
    es.indices.refresh(index=f"{unique}_by_int")
    out = cli(w, "index", "check", unique, "--table", "by_int", "-o", "json")
    odd = json.loads(out.stdout)
    assert out.returncode == 1 and odd["counts"]["missing"] == 1 and odd["counts"]["extra"] == 1, odd["counts"]
    assert [s["id"] for s in odd["samples"]["extra"]] == ["01"] and odd["counts"]["unrepairable"] == 1


def cassandra_writetimes(session: Session, ks: str) -> dict[str, int]:
    return {r.id: r.wt for r in session.execute(f"SELECT id, WRITETIME(title) AS wt FROM {ks}.movies")}
