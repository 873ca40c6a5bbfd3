"""Entry states expire only once final (issue 7, item 10: status never lies).

Given a worker whose entry states are kept for a few seconds once final, an entry delayed for
longer than that is still DELAYED when the retention has passed (also on a worker recovering
from the changelog alone), then delivered; a delivered entry is forgotten (404) once the
retention has passed, on both workers. And an entries changelog created ``compact,delete`` by
an earlier version is switched to ``compact`` when a worker starts, its other settings kept.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.integration.conftest import (
    KAFKA,
    Worker,
    create_topic,
    kafka_target,
    put_namespace,
    read_deliveries,
    wait_until,
)
from walstream.kafka_admin import set_cleanup_policy, topic_config

RETENTION_S = 4.0
SWEEP_S = 0.5
FAST = {"WALSTREAM_ENTRY_RETENTION_S": str(RETENTION_S), "WALSTREAM_SWEEP_INTERVAL_S": str(SWEEP_S)}


def status(w: Worker, ns: str, entry_id: str) -> dict[str, Any]:
    with w.client() as c:
        r = c.get(f"/v1/log/{ns}/{entry_id}")
    return {"http": r.status_code, **r.json()}


def entries_changelog(app_id: str) -> str:
    return f"{app_id}-walstream-entries-changelog"


@pytest.mark.timeout(240)
def test_pending_entries_outlive_the_retention_final_ones_do_not(
    start_worker: Callable[..., Worker], unique: str
) -> None:
    w = start_worker(**FAST)
    out = f"{unique}.out"
    create_topic(out)
    put_namespace(w, unique, [kafka_target(out)])
    # Given an entry delivered now and one delayed for several retention periods
    written_s = time.time()
    with w.client() as c:
        for body in (
            {"namespace": unique, "id": "now", "payload": 1},
            {"namespace": unique, "id": "later", "payload": 2, "lifecycle": {"delay_ms": 30_000}},
        ):
            assert c.post("/v1/log", json=body).json()["durable"] == "SUCCESS"
    wait_until(lambda: status(w, unique, "now").get("state") == "DELIVERED", 30, what="'now' DELIVERED")
    assert status(w, unique, "later")["state"] == "DELAYED"
    # When the retention has passed (and sweeps ran: the delivered entry is forgotten)
    wait_until(lambda: status(w, unique, "now")["http"] == 404, 30, what="'now' forgotten after the retention")
    time.sleep(max(0.0, written_s + RETENTION_S + 3 * SWEEP_S - time.time()))
    # Then the delayed entry is still DELAYED
    later = status(w, unique, "later")
    assert (later["http"], later.get("state")) == (200, "DELAYED"), later
    # and so on a worker that recovers the table from its changelog alone (a fresh data dir):
    # the sweep's deletions are in the changelog, the pending state was never deleted there
    w.stop()
    w2 = start_worker(app_id=w.app_id, **FAST)
    # (503 while the new worker is still taking its partitions over)
    now = wait_until(lambda: (x := status(w2, unique, "now"))["http"] != 503 and x, 60, what="w2 to answer")
    assert now["http"] == 404, now
    later = status(w2, unique, "later")
    assert (later["http"], later.get("state")) == (200, "DELAYED"), later
    # and it is delivered when due, once (counted at the target), then forgotten in its turn
    delivered = read_deliveries(out, expect=2, timeout_s=60)
    assert set(delivered) == {"now", "later"}
    wait_until(lambda: status(w2, unique, "later").get("state") == "DELIVERED", 30, what="'later' DELIVERED")
    wait_until(lambda: status(w2, unique, "later")["http"] == 404, 30, what="'later' forgotten after the retention")


async def _create_old_style_changelog(topic: str) -> None:
    """The entries changelog as walstream created it before: ``compact,delete``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 4, 1, topic_configs={
            "cleanup.policy": "compact,delete", "retention.ms": "86400000", "max.message.bytes": "8388608",
            "min.cleanable.dirty.ratio": "0.3"})])
    finally:
        await admin.close()


def test_set_cleanup_policy_changes_only_the_policy(unique: str) -> None:
    topic = f"{unique}-policy"
    asyncio.run(_create_old_style_changelog(topic))
    assert asyncio.run(set_cleanup_policy(KAFKA, topic, "compact")) is True
    # the broker applies a committed config change asynchronously (KRaft): read until it shows
    config = wait_until(lambda: (c := asyncio.run(topic_config(KAFKA, topic))) is not None
                        and c.own.get("cleanup.policy") == "compact" and c, timeout_s=15,
                        what="the new cleanup.policy to show")
    assert config.own == {"cleanup.policy": "compact", "retention.ms": "86400000", "max.message.bytes": "8388608",
                          "min.cleanable.dirty.ratio": "0.3"}
    # already so: nothing to do; a topic that does not exist: nothing to do
    assert asyncio.run(set_cleanup_policy(KAFKA, topic, "compact")) is False
    assert asyncio.run(set_cleanup_policy(KAFKA, f"{unique}-missing", "compact")) is False


def test_an_old_compact_delete_entries_changelog_is_made_compact_at_start(
    start_worker: Callable[..., Worker], unique: str
) -> None:
    # Given the entries changelog of an earlier version (compact,delete, a day's retention)
    app_id = f"ws-{unique}"
    asyncio.run(_create_old_style_changelog(entries_changelog(app_id)))
    # When a worker of this version starts
    start_worker(app_id=app_id)
    # Then the changelog is compact only; its other settings are kept
    config = asyncio.run(topic_config(KAFKA, entries_changelog(app_id)))
    assert config is not None
    assert config.effective["cleanup.policy"] == "compact"
    assert config.own["max.message.bytes"] == "8388608" and config.own["min.cleanable.dirty.ratio"] == "0.3"
