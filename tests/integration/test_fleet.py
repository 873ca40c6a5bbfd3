"""Two workers of one fleet: delays survive a rebalance, and any worker answers for any entry."""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.integration.conftest import Worker, create_topic, kafka_target, put_namespace, read_deliveries, wait_until
from tests.integration.test_delays import report, write_delayed


def test_delays_survive_a_rebalance_and_any_worker_answers(start_worker: Callable[..., Worker], unique: str) -> None:
    a = start_worker()
    b = start_worker(app_id=a.app_id)
    out = f"{unique}.out"
    create_topic(out)
    put_namespace(a, unique, [kafka_target(out)])

    def both_assigned() -> bool:
        topics = []
        for w in (a, b):
            with w.client() as c:
                topics.append({t for t in c.get("/v1/health").json()["assigned"] if t.startswith(f"wal.{unique}:")})
        return all(topics)

    wait_until(both_assigned, timeout_s=90, what="both workers to own partitions of the namespace")
    # Given 2,000 entries due 15-25 s from now, spread over both workers' partitions
    due = write_delayed(a, unique, 2000, 15.0, 25.0, seed=11)
    # any worker answers for any entry (entries live on both workers)
    for w in (a, b):
        with w.client() as c:
            def sampled_states(c: object = c) -> set[str | None]:
                return {c.get(f"/v1/log/{unique}/d{i}").json().get("state") for i in range(0, 40, 3)}  # type: ignore[attr-defined]

            wait_until(lambda: sampled_states() == {"DELAYED"}, timeout_s=30, what=f"states via {w.url}")
    time.sleep(1)
    # When worker b stops and its partitions move to a
    time.sleep(2)
    b.stop()
    # Then every entry is delivered, none early
    delivered = read_deliveries(out, expect=2000, timeout_s=120)
    assert set(delivered) == set(due)
    assert report(due, delivered)[0] >= 0
