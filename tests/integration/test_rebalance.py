"""Invariant 1 across rebalances of live workers: entries written while the fleet's consumer
group rebalances (namespaces created, workers joining and leaving) are all delivered.

Every rebalance revokes and re-assigns partitions while records are fetched, buffered and in
the agent's hands; a record dropped in that window must not count as processed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest

from tests.integration.conftest import Worker, create_topic, kafka_target, put_namespace, read_deliveries, wait_until


class Writer(threading.Thread):
    """Posts batches of 20 entries (every other one delayed 2-4 s) to one worker until stopped;
    keeps the ids answered SUCCESS."""

    def __init__(self, worker: Worker, ns: str) -> None:
        super().__init__(daemon=True)
        self.worker, self.ns = worker, ns
        self.acknowledged: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        with httpx.Client(timeout=30) as c:
            while not self.stopping.is_set():
                time.sleep(0.03)
                now = time.time()
                batch = []
                for i in range(n, n + 20):
                    entry = {"namespace": self.ns, "id": f"e{i}", "key": f"k{i % 101}", "payload": {"i": i}}
                    if i % 2:
                        due = datetime.fromtimestamp(now + 2 + (i % 3), tz=UTC)
                        entry["lifecycle"] = {"deliver_at": due.isoformat(timespec="milliseconds")}
                    batch.append(entry)
                n += 20
                try:
                    r = c.post(f"{self.worker.url}/v1/log/batch", json={"entries": batch})
                except httpx.HTTPError:
                    continue  # not acknowledged: the client may retry or not, either is allowed
                if r.status_code == 200:
                    self.acknowledged += [
                        e["id"] for e, res in zip(batch, r.json()["results"], strict=True)
                        if res["durable"] == "SUCCESS"
                    ]


# several rebalances (~25 s of them), a second worker's start, then up to 120 s to read back
@pytest.mark.timeout(600)
def test_entries_written_across_rebalances_are_all_delivered(
    start_worker: Callable[..., Worker], unique: str,
) -> None:
    a = start_worker()
    out = f"{unique}.out"
    create_topic(out)
    put_namespace(a, unique, [kafka_target(out)])
    writer = Writer(a, unique)
    writer.start()
    try:
        wait_until(lambda: len(writer.acknowledged) >= 1000, what="entries to flow")
        # When namespaces are created while entries flow (each one resubscribes the group) ...
        with a.client() as c:
            for i in range(3):
                name = f"{unique}x{i}"
                r = c.put(f"/v1/namespaces/{name}", json={"name": name, "targets": [{"type": "noop"}]})
                assert r.status_code == 200, r.text
                time.sleep(2.5)
        # ... and a second worker joins the group, then leaves it
        b = start_worker(app_id=a.app_id)
        time.sleep(8)
        b.stop()
        time.sleep(5)
    finally:
        writer.stopping.set()
        writer.join()
    acknowledged = set(writer.acknowledged)
    # Then every acknowledged entry is delivered
    delivered = read_deliveries(out, expect=len(acknowledged), timeout_s=120, wanted=acknowledged)
    missing = acknowledged - set(delivered)
    print(f"{len(acknowledged)} acknowledged, {len(delivered)} delivered, {len(missing)} missing")
    assert not missing, f"{len(missing)} acknowledged entries never delivered, e.g. {sorted(missing)[:5]}"
