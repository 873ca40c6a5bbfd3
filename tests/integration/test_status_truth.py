"""Issue 7, "status that lies": what GET /v1/log/{ns}/{id} says is what happened, on every
worker of a fleet — after a cancel of a delivered entry, and while a worker is down.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.conftest import Worker, create_topic, kafka_target, put_namespace, read_deliveries, wait_until

pytestmark = pytest.mark.timeout(300)


def status(w: Worker, ns: str, entry_id: str, **params: str) -> dict[str, Any]:
    with w.client() as c:
        r = c.get(f"/v1/log/{ns}/{entry_id}", params=params)
    return {"http": r.status_code, **r.json()}


def test_cancel_of_a_delivered_entry_and_a_dead_owner_never_make_status_lie(
    start_worker: Callable[..., Worker], unique: str
) -> None:
    # Given a fleet of two workers and entries spread over their partitions (key != id)
    a = start_worker()
    b = start_worker(app_id=a.app_id)
    out = f"{unique}.out"
    create_topic(out)
    put_namespace(a, unique, [kafka_target(out)])
    wait_until(lambda: all(
        any(t.startswith(f"wal.{unique}:") for t in w.client().get("/v1/health").json()["assigned"]) for w in (a, b)
    ), timeout_s=90, what="both workers to own partitions of the namespace")
    ids = [f"e{i}" for i in range(8)]
    with a.client() as c:
        written = {x["id"]: x for x in c.post("/v1/log/batch", json={"entries": [
            {"namespace": unique, "id": i, "key": f"key-of-{i}", "payload": i} for i in ids
        ]}).json()["results"]}
    assert set(read_deliveries(out, expect=len(ids), timeout_s=60)) == set(ids)
    for i in ids:
        wait_until(lambda i=i: status(a, unique, i).get("state") == "DELIVERED", timeout_s=30, what=f"{i} DELIVERED")

    # When each is cancelled without ?key= (through either worker)
    for n, i in enumerate(ids):
        with (a if n % 2 else b).client() as c:
            r = c.delete(f"/v1/log/{unique}/{i}")
        # Then the answer is 409 and the entry stays DELIVERED where it was, on every worker
        assert r.status_code == 409, r.text
    for w in (a, b):
        for i in ids:
            s = status(w, unique, i)
            assert (s["http"], s["state"], s["partition"], s["offset"]) == (
                200, "DELIVERED", written[i]["partition"], written[i]["offset"]
            ), s

    # When the worker holding an entry's partition is SIGKILLed
    owner = {i: (a if status(a, unique, i, local="1")["http"] == 200 else b) for i in ids}
    victim = owner[ids[0]]
    survivor = b if victim is a else a
    on_victim = [i for i in ids if owner[i] is victim]
    victim.kill()
    # Then the survivor never says "never written" (404) for them: 503 until it holds them, then 200
    answers: list[int] = []

    def known_again() -> bool:
        codes = [status(survivor, unique, i)["http"] for i in on_victim]
        answers.extend(codes)
        return codes == [200] * len(on_victim)

    wait_until(known_again, timeout_s=120, interval_s=0.2, what="the survivor to take over the entries")
    assert 404 not in answers, answers
    assert 503 in answers  # the window existed and was answered as "unknown for now"
    for i in on_victim:
        s = status(survivor, unique, i)
        assert (s["state"], s["offset"]) == ("DELIVERED", written[i]["offset"])
