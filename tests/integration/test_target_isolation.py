"""One broken target never holds up other namespaces (issue 7, item 9), against the real Kafka.

Namespace A's kafka target names a topic that does not exist (the broker does not create
topics on demand); namespace B's works. B's entries are delivered promptly while A's wait
behind A's open circuit without spending attempts; once A's topic is created, every one of
A's entries arrives, none lost, none dead-lettered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
from aiokafka import AIOKafkaConsumer

from tests.integration.conftest import (
    KAFKA,
    Worker,
    create_topic,
    kafka_target,
    put_namespace,
    read_deliveries,
    wait_until,
)

N = 50


def records_in(topic: str) -> int:
    """Records in ``topic`` (0 when it does not exist): counted at the topic, not the API."""

    async def run() -> int:
        c = AIOKafkaConsumer(bootstrap_servers=KAFKA, group_id=None)
        await c.start()
        try:
            partitions = c.partitions_for_topic(topic) or set()
            if not partitions:
                await c._client.force_metadata_update()  # a topic created since start
                partitions = c.partitions_for_topic(topic) or set()
            from aiokafka import TopicPartition

            tps = [TopicPartition(topic, p) for p in partitions]
            if not tps:
                return 0
            begin, end = await c.beginning_offsets(tps), await c.end_offsets(tps)
            return sum(end[tp] - begin[tp] for tp in tps)
        finally:
            await c.stop()

    return asyncio.run(run())


def test_a_missing_kafka_topic_holds_up_no_other_namespace_and_loses_nothing(
    start_worker: Callable[..., Worker], unique: str
) -> None:
    # Given: short cool-downs (the probe after the topic appears comes within seconds)
    w = start_worker(WALSTREAM_BREAKER_COOLDOWN_MAX_S="2")
    ns_a, ns_b = f"{unique}a", f"{unique}b"
    topic_a, topic_b = f"{unique}-missing", f"{unique}-ok"
    create_topic(topic_b)
    with w.client() as c:  # both namespaces in one rebalance
        r = c.put(f"/v1/namespaces/{ns_a}", json={"name": ns_a, "targets": [kafka_target(topic_a)]})
        assert r.status_code == 200, r.text
    put_namespace(w, ns_b, [kafka_target(topic_b)])
    with w.client() as c:
        wait_until(
            lambda: any(t.startswith(f"wal.{ns_a}:") for t in c.get("/v1/health").json()["assigned"]),
            timeout_s=60,
            what=f"the worker to consume wal.{ns_a}",
        )

    # When: both namespaces are written at once, A's entries first in every batch
    entries = [
        {"namespace": ns, "id": f"{ns}-{i}", "key": f"k{i}", "payload": {"i": i}}
        for i in range(N)
        for ns in (ns_a, ns_b)
    ]
    with w.client() as c:
        for start in range(0, len(entries), 20):
            r = c.post("/v1/log/batch", json={"entries": entries[start : start + 20]})
            assert r.status_code == 200, r.text
            assert {x["durable"] for x in r.json()["results"]} == {"SUCCESS"}

    # Then: B's entries arrive while A's target is broken (the old code stalled every
    # namespace for 30 s per call to A)
    # (25 s: B's entries take ~2 s here, but a clean-clone CI run once saw none within 10 s
    # on a loaded machine; the old code needed 30 s per batch of A, 150 s for all of B)
    delivered_b = read_deliveries(topic_b, N, timeout_s=25)
    assert len(delivered_b) == N, f"only {len(delivered_b)} of B's {N} entries delivered within 25 s"

    # and A's circuit opens; A's entries wait for it, attempts not spent, nothing dead-lettered
    label = f"kafka:{topic_a}"
    with w.client() as c:
        wait_until(
            lambda: any(x["target"] == label and x["open"] for x in c.get("/v1/health").json()["circuits"].values()),
            timeout_s=30,
            what="A's circuit to open",
        )
        status = c.get(f"/v1/log/{ns_a}/{ns_a}-0").json()
    assert status["state"] == "RETRYING", status
    [target_status] = status["targets"]
    assert target_status["attempts"] < 8, target_status  # far from the default max_attempts
    assert "does not exist" in (target_status.get("last_error") or ""), target_status

    # When the topic is created, every one of A's entries arrives
    create_topic(topic_a)
    delivered_a = read_deliveries(topic_a, N, timeout_s=60)
    assert set(delivered_a) == {f"{ns_a}-{i}" for i in range(N)}
    with httpx.Client(base_url=w.url, timeout=10) as c:
        def all_delivered() -> bool:
            return all(c.get(f"/v1/log/{ns_a}/{ns_a}-{i}").json()["state"] == "DELIVERED" for i in range(N))

        wait_until(all_delivered, timeout_s=30, what="A's entries to be DELIVERED")
        circuits = c.get("/v1/health").json()["circuits"].values()
    [circuit] = [x for x in circuits if x["target"] == label]
    assert [t["to"] for t in circuit["transitions"]][-1] == "closed"
    time.sleep(1.0)  # a dead letter written by mistake would be acknowledged by now
    assert records_in(f"wal.{ns_a}.dlq") == 0 and records_in(f"wal.{ns_b}.dlq") == 0
