"""Invariant 3: an entry is never delivered before its due time — including across a SIGKILL."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from tests.integration.conftest import (
    Worker,
    create_topic,
    kafka_target,
    put_namespace,
    read_deliveries,
)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def write_delayed(w: Worker, ns: str, n: int, min_s: float, max_s: float, seed: int) -> dict[str, int]:
    """Write ``n`` entries due ``min_s``..``max_s`` from now; returns id → due ms."""
    rng = random.Random(seed)
    due: dict[str, int] = {}
    entries = []
    now_ms = int(time.time() * 1000)
    for i in range(n):
        due_ms = now_ms + int(rng.uniform(min_s, max_s) * 1000)
        due[f"d{i}"] = due_ms
        entries.append({"namespace": ns, "id": f"d{i}", "key": f"k{i % 97}", "payload": {"i": i},
                        "lifecycle": {"deliver_at": iso(due_ms)}})
    with w.client() as c:
        for start in range(0, n, 500):
            r = c.post("/v1/log/batch", json={"entries": entries[start:start + 500]})
            assert {x["durable"] for x in r.json()["results"]} == {"SUCCESS"}, r.text
    return due


def report(due: dict[str, int], delivered: dict[str, int]) -> list[int]:
    lateness = sorted(delivered[i] - due[i] for i in due)
    p50 = statistics.median(lateness)
    p99 = lateness[int(0.99 * (len(lateness) - 1))]
    print(f"lateness over {len(lateness)} entries: min {lateness[0]} ms, p50 {p50:.0f} ms, p99 {p99} ms, "
          f"max {lateness[-1]} ms")
    return lateness


def test_2000_delayed_entries_none_early(start_worker: Callable[..., Worker], unique: str) -> None:
    # Given a namespace delivering to a Kafka topic (record timestamps = delivery times)
    w = start_worker()
    out = f"{unique}.out"
    create_topic(out)
    put_namespace(w, unique, [kafka_target(out)])
    # When 2,000 entries are written with delays of 1-20 s
    due = write_delayed(w, unique, 2000, 1.0, 20.0, seed=3)
    # Then all are delivered, none before its due time
    delivered = read_deliveries(out, expect=2000, timeout_s=90)
    assert set(delivered) == set(due)
    lateness = report(due, delivered)
    assert lateness[0] >= 0, "an entry was delivered early"


# 10,000 writes, a restart, due 25-35 s later, up to 150 s to read them all back
@pytest.mark.timeout(600)
def test_10000_pending_delays_survive_sigkill(start_worker: Callable[..., Worker], unique: str) -> None:
    w = start_worker()
    out = f"{unique}.out"
    create_topic(out)
    put_namespace(w, unique, [kafka_target(out)])
    # Given 10,000 entries due 25-35 s from now, accepted and taken into the delay table
    due = write_delayed(w, unique, 10_000, 25.0, 35.0, seed=5)
    time.sleep(3)
    # When the worker is SIGKILLed and started again
    w.kill()
    w.start()
    # Then every entry is delivered, none early, none lost
    delivered = read_deliveries(out, expect=10_000, timeout_s=150)
    missing = set(due) - set(delivered)
    assert not missing, f"{len(missing)} entries lost, e.g. {sorted(missing)[:5]}"
    lateness = report(due, delivered)
    assert lateness[0] >= 0, "an entry was delivered early"
