"""Shard isolation on real Kafka: two workers of one app id, one serving shard ``a`` and one
shard ``b``, each shard with a namespace delivered to its own Kafka target topic.

- Each worker consumes only its own shard's WAL topics (its consumer group's assignment),
  while either accepts writes to both namespaces.
- A status request about shard b's namespace, asked of shard a's worker, is answered by
  shard b (forwarded to its ``WALSTREAM_SHARD_URLS`` entry).
- Shard b's worker stalled (SIGSTOP) well past its session timeout: shard a keeps
  accepting and delivering, its assignment never changes (no rebalance reaches it), and
  shard b's status is answered 503 UNKNOWN rather than hang; writes to shard b's namespace
  keep being acknowledged (they only go to its WAL topic). Continued (SIGCONT), shard b
  delivers what was written meanwhile; nothing acknowledged is lost.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import httpx
import pytest

from tests.integration.conftest import Worker, create_topic, free_port, kafka_target, put_namespace, read_deliveries

pytestmark = pytest.mark.timeout(420)


def write(w: Worker, ns: str, prefix: str, n: int) -> dict[str, float]:
    """``n`` entries through worker ``w``; all must be acknowledged. Returns id → write time (s)."""
    entries = [{"namespace": ns, "id": f"{prefix}{i}", "payload": {"i": i}} for i in range(n)]
    at = time.time()
    with w.client() as c:
        r = c.post("/v1/log/batch", json={"entries": entries})
    assert r.status_code == 200 and {x["durable"] for x in r.json()["results"]} == {"SUCCESS"}, r.text
    return {e["id"]: at for e in entries}


def assignment(w: Worker) -> list[str]:
    """The worker's consumer assignment, ``topic:partition`` each."""
    with w.client() as c:
        return sorted(c.get("/v1/health").json()["assigned"])


def topics(assigned: list[str]) -> set[str]:
    return {t.rsplit(":", 1)[0] for t in assigned}


def test_a_shard_consumes_only_its_namespaces_and_a_stalled_shard_never_slows_another(
    start_worker: Callable[..., Worker], unique: str
) -> None:
    ns_a, ns_b = f"{unique}_a", f"{unique}_b"
    out_a, out_b = f"{unique}-out-a", f"{unique}-out-b"
    create_topic(out_a)
    create_topic(out_b)
    port_a, port_b = free_port(), free_port()
    common = {"WALSTREAM_SESSION_TIMEOUT_S": "6", "WALSTREAM_STANDBY_REPLICAS": "0"}
    a = start_worker(WALSTREAM_SHARD="a", WALSTREAM_WEB_PORT=str(port_a),
                     WALSTREAM_SHARD_URLS=f"b=http://127.0.0.1:{port_b}", **common)
    b = start_worker(app_id=a.app_id, WALSTREAM_SHARD="b", WALSTREAM_WEB_PORT=str(port_b),
                     WALSTREAM_SHARD_URLS=f"a=http://127.0.0.1:{port_a}", **common)
    put_namespace(a, ns_a, [kafka_target(out_a)], shard="a")
    put_namespace(b, ns_b, [kafka_target(out_b)], shard="b")

    # both namespaces written through shard a's worker, each delivered by its own shard
    written_a = write(a, ns_a, "a1-", 20)
    written_b = write(a, ns_b, "b1-", 20)
    assert read_deliveries(out_a, 0, 60, wanted=set(written_a)).keys() >= written_a.keys()
    assert read_deliveries(out_b, 0, 60, wanted=set(written_b)).keys() >= written_b.keys()
    before_a, before_b = assignment(a), assignment(b)
    assert f"wal.{ns_a}" in topics(before_a) and f"wal.{ns_b}" not in topics(before_a), before_a
    assert f"wal.{ns_b}" in topics(before_b) and f"wal.{ns_a}" not in topics(before_b), before_b

    # shard a's worker answers for shard b's entry by asking shard b
    with a.client() as c:
        r = c.get(f"/v1/log/{ns_b}/b1-0")
    assert r.status_code == 200 and r.json()["state"] == "DELIVERED", r.text
    assert r.headers["X-Walstream-Shard"] == "b"

    assert b.proc is not None
    os.killpg(b.proc.pid, signal.SIGSTOP)
    stalled_at = time.time()
    try:
        during_b = write(a, ns_b, "b2-", 20)  # acknowledged: a write only needs the WAL topic
        during_a = write(a, ns_a, "a2-", 20)
        # well past shard b's session timeout: its group rebalances, shard a's must not
        time.sleep(10)
        during_a |= write(a, ns_a, "a3-", 20)
        delivered = read_deliveries(out_a, 0, 60, wanted=set(during_a))
        missing = set(during_a) - delivered.keys()
        assert not missing, f"shard a did not deliver {len(missing)} entries while shard b was stalled"
        # not a partition moved: shard b's members leaving or joining is no rebalance of shard a
        assert assignment(a) == before_a, "shard a's assignment changed while shard b stalled"
        waits = sorted(delivered[i] / 1000 - during_a[i] for i in during_a)
        print(f"shard a while shard b stalled: {len(waits)} delivered, write to delivery "
              f"max {waits[-1] * 1000:.0f} ms, median {waits[len(waits) // 2] * 1000:.0f} ms")
        # shard b's state cannot be known now: a bounded 503, not a hang or a guess
        with a.client() as c:
            asked = time.monotonic()
            r = c.get(f"/v1/log/{ns_b}/b2-0")
        assert r.status_code == 503 and r.json()["state"] == "UNKNOWN", r.text
        print(f"status of a stalled shard's entry: 503 after {time.monotonic() - asked:.1f} s")
        assert time.time() - stalled_at < 60  # the stall covered everything above
    finally:
        os.killpg(b.proc.pid, signal.SIGCONT)

    # shard b catches up on what was acknowledged while it was stalled
    wanted_b = set(written_b) | set(during_b)
    got_b = read_deliveries(out_b, 0, 120, wanted=wanted_b)
    assert wanted_b <= got_b.keys(), f"{len(wanted_b - got_b.keys())} of shard b's entries never delivered"
    assert not any(i.startswith("a") for i in got_b) and not any(
        i.startswith("b") for i in read_deliveries(out_a, 60, 10)), "an entry reached the other shard's target"
    assert f"wal.{ns_a}" not in topics(assignment(b))
    with httpx.Client(timeout=30) as c:
        r = c.get(f"{a.url}/v1/log/{ns_b}/b2-0")
    assert r.status_code == 200 and r.json()["state"] == "DELIVERED", r.text
