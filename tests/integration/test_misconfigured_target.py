"""Issue 7, item 9 and "silent success": a target whose config is wrong is a target down.

Given a namespace whose Elasticsearch url points at something that does not answer as
Elasticsearch (a path: 405) and whose retry policy allows one attempt, when entries are
written, then none is dead-lettered (they wait, spending no attempt), and once the namespace
is applied with the right url they are delivered to it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from elasticsearch import Elasticsearch

from tests.integration.conftest import ES_URL, Worker, es_movies, put_movie, put_namespace, wait_until

pytestmark = pytest.mark.timeout(240)


def test_a_wrong_elasticsearch_url_dead_letters_nothing_and_the_fixed_one_gets_the_entries(
    start_worker: Callable[..., Worker], unique: str, es: Elasticsearch
) -> None:
    w = start_worker()
    retry = {"initial_delay_ms": 100, "max_delay_ms": 500, "max_attempts": 1}
    wrong = {"type": "elasticsearch", "index_prefix": f"{unique}_", "url": f"{ES_URL}/nothere", "refresh": True}
    put_namespace(w, unique, [wrong], retry=retry)
    with w.client() as c:
        r = c.post("/v1/log", json={"namespace": unique, "id": "m1", "key": "1",
                                    "payload": put_movie("1", "Heat", 1995)})
        assert r.status_code == 200, r.text
        # (several attempts' time: with max_attempts 1 a counted failure would dead-letter it)
        s = wait_until(lambda: (d := c.get(f"/v1/log/{unique}/m1").json()).get("state") == "RETRYING" and d,
                       timeout_s=30, what="m1 RETRYING")
        time.sleep(6)
        # Then nothing is dead-lettered: the entry waits for the target
        assert c.get(f"/v1/dlq/{unique}").json()["dead_letters"] == []
        s = c.get(f"/v1/log/{unique}/m1").json()
        assert s["state"] == "RETRYING" and s["targets"][0]["attempts"] == 0, s
    # When the namespace gets the right url
    put_namespace(w, unique, [{**wrong, "url": ES_URL}], retry=retry)
    # Then the entry is delivered to it
    wait_until(lambda: es_movies(es, f"{unique}_movies").get("1") == ("Heat", 1995), timeout_s=60,
               what="the entry in Elasticsearch")
    with w.client() as c:
        wait_until(lambda: c.get(f"/v1/log/{unique}/m1").json()["state"] == "DELIVERED", timeout_s=30,
                   what="DELIVERED")
        assert c.get(f"/v1/dlq/{unique}").json()["dead_letters"] == []
