"""The HTTP API fuzzed from its own description (``GET /openapi.json``) with schemathesis,
against a real worker on the real Kafka: requests that fit the description (positive) and
requests that break it (negative), for every operation.

What must hold over every request:
- no 5xx, and every answer is one the description allows (status, content type, body schema);
- a request that breaks the description is refused (4xx) — for a batch, each entry that breaks
  it is answered FAILED on its own;
- nothing is written but what was answered SUCCESS: each namespace's WAL topic holds exactly
  as many records as writes were answered SUCCESS without ``duplicate`` (so no refused
  request, and no repeated id, wrote anything);
- the worker is still alive and healthy at the end.

The figures (requests, statuses seen) are printed at the end (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import schemathesis
from aiokafka import AIOKafkaConsumer, TopicPartition
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.conftest import KAFKA, Worker, put_namespace
from tests.integration.leftovers import delete_topics
from walstream.namespaces.model import dlq_topic, wal_topic

#: examples per operation and mode (positive, negative); operations with few possible inputs
#: (no parameters) give fewer. The total is asserted to be at least MIN_REQUESTS.
EXAMPLES = {
    ("post", "/v1/log"): (500, 300),
    ("post", "/v1/log/batch"): (250, 150),
    ("get", "/v1/log/{namespace}/{entry_id}"): (100, 60),
    ("delete", "/v1/log/{namespace}/{entry_id}"): (60, 40),
    ("get", "/v1/dlq/{namespace}"): (100, 80),
    ("post", "/v1/dlq/{namespace}/redrive"): (100, 100),
    ("get", "/v1/namespaces/{name}"): (50, 30),
    ("put", "/v1/namespaces/{name}"): (80, 80),
    ("delete", "/v1/namespaces/{name}"): (40, 30),
    ("get", "/v1/internal/pending/{namespace}"): (30, 20),
}
DEFAULT_EXAMPLES = (10, 10)
MIN_REQUESTS = 2_000

POSITIVE_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
NEGATIVE_CHECKS = [*POSITIVE_CHECKS, negative_data_rejection]


def wal_records(topic: str) -> int:
    async def run() -> int:
        c = AIOKafkaConsumer(bootstrap_servers=KAFKA)
        await c.start()
        try:
            await c._client.force_metadata_update()
            tps = [TopicPartition(topic, p) for p in (c.partitions_for_topic(topic) or set())]
            return sum((await c.end_offsets(tps)).values()) if tps else 0
        finally:
            await c.stop()

    return asyncio.run(run())


class Tally:
    """What was sent and answered: statuses per operation, and writes answered SUCCESS (not
    ``duplicate``) per namespace."""

    def __init__(self) -> None:
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.written: Counter[str] = Counter()
        self.requests = 0

    def record(self, label: str, body: Any, response: Any) -> None:
        self.requests += 1
        self.statuses[(label, response.status_code)] += 1
        if label.startswith("POST /v1/log"):
            try:
                answer = response.json()
            except ValueError:
                return
            if not isinstance(answer, dict):
                return
            items = answer.get("results") if label.endswith("/batch") else [answer]
            entries = body.get("entries") if label.endswith("/batch") else [body]
            if not isinstance(items, list) or not isinstance(entries, list):
                return
            for item, entry in zip(items, entries, strict=False):
                if item.get("durable") == "SUCCESS" and not item.get("duplicate"):
                    self.written[entry["namespace"]] += 1


def steer(case: Any, draw: Callable[[Any], Any], real: list[str]) -> None:
    """Point most generated requests at namespaces that exist (random names are all 404).
    Entries' own target overrides stay: the namespaces allow none, so each is refused (403)
    and no generated host is ever called."""
    def entry(doc: Any) -> None:
        if isinstance(doc, dict):
            if "namespace" in doc and draw(st.integers(0, 9)) < 8:
                doc["namespace"] = draw(st.sampled_from(real))
            if isinstance(doc.get("group"), dict) and draw(st.integers(0, 9)) < 8:
                # what a group's records may not carry (refused with 400 by design): left out
                # mostly, so that group writes get through too
                for name in ("key", "lifecycle", "target"):
                    doc.pop(name, None)
            if "payload" not in doc and draw(st.integers(0, 9)) < 8:
                # optional in the description only for a group's commit marker
                doc["payload"] = draw(st.sampled_from([None, 1, "text", {"n": 1}]))

    if case.method.upper() == "POST" and case.path == "/v1/log":
        entry(case.body)
    elif case.path == "/v1/log/batch" and isinstance(case.body, dict) and isinstance(case.body.get("entries"), list):
        for e in case.body["entries"]:
            entry(e)
    params = case.path_parameters or {}
    if case.method.upper() == "PUT" and isinstance(case.body, dict) and "name" in params:
        case.body["name"] = params["name"]  # the document's name must be the path's (or left out)
        # a shard no worker consumes: each new namespace would otherwise change the worker's
        # subscription (a rebalance per request)
        case.body["shard"] = "fuzz"
    # a namespace is not changed or deleted by name here: the writes need them to stay
    if "namespace" in params or (case.method.upper() == "GET" and "name" in params):
        key = "namespace" if "namespace" in params else "name"
        if draw(st.booleans()):
            params[key] = draw(st.sampled_from(real))


@pytest.mark.timeout(1500)
def test_fuzzing_the_api_from_its_description(start_worker: Callable[..., Worker], unique: str) -> None:
    worker = start_worker()
    real = [unique, f"{unique}k"]
    put_namespace(worker, real[0], [{"type": "noop"}])
    put_namespace(worker, real[1], [{"type": "kafka", "topic": f"{unique}-out"}])
    schema = schemathesis.openapi.from_url(f"{worker.url}/openapi.json")
    tally = Tally()
    created: set[str] = set()  # namespaces named by the fuzzer: their topics lack the test's token
    unbreakable: list[str] = []
    started = time.monotonic()

    def fuzz(op: Any, mode: GenerationMode, n: int, checks: list[Any]) -> None:
        label = f"{op.method.upper()} {op.path}"

        @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy(generation_mode=mode), data=st.data())
        def call(case: Any, data: st.DataObject) -> None:
            if mode is GenerationMode.POSITIVE:  # steering a negative request could make it valid
                steer(case, data.draw, real)
            response = case.call(base_url=worker.url, timeout=60)
            if label == "PUT /v1/namespaces/{name}" and response.status_code == 200:
                created.add(str((case.path_parameters or {}).get("name")))
            tally.record(label, case.body if isinstance(case.body, dict) else {}, response)
            case.validate_response(response, checks=checks)

        try:
            call()
        except Unsatisfiable:
            if mode is GenerationMode.POSITIVE:
                raise
            unbreakable.append(label)  # every input it has is a plain string: none breaks it

    try:
        for result in schema.get_all_operations():
            op = result.ok()
            positive, negative = EXAMPLES.get((op.method.lower(), op.path), DEFAULT_EXAMPLES)
            fuzz(op, GenerationMode.POSITIVE, positive, POSITIVE_CHECKS)
            if op.path_parameters or op.query or op.body:  # else there is nothing to break
                # a batch answers 200 with one FAILED item per refused entry (an entry refuses
                # only itself); that nothing of a refused item is written is checked at the WAL
                checks = POSITIVE_CHECKS if op.path == "/v1/log/batch" else NEGATIVE_CHECKS
                fuzz(op, GenerationMode.NEGATIVE, negative, checks)
        elapsed = time.monotonic() - started
        check(worker, tally, real, elapsed, unbreakable)
    finally:
        topics = {t for name in created - set(real) for t in (wal_topic(name), dlq_topic(name))}
        asyncio.run(delete_topics(KAFKA, topics.__contains__))


def check(worker: Worker, tally: Tally, real: list[str], elapsed: float, unbreakable: list[str]) -> None:
    """What must hold after the fuzzing (the module's docstring)."""

    assert worker.proc is not None and worker.proc.poll() is None, "the worker died"
    assert httpx.get(f"{worker.url}/v1/health", timeout=10).status_code == 200
    assert tally.requests >= MIN_REQUESTS, tally.requests
    assert tally.written[real[0]] > 50 and tally.written[real[1]] > 50  # the fuzzing wrote something
    assert tally.statuses[("PUT /v1/namespaces/{name}", 200)] > 0  # and created namespaces
    # every record in a WAL topic was answered SUCCESS, and every SUCCESS is a record
    for ns in set(real) | set(tally.written):
        assert wal_records(wal_topic(ns)) == tally.written[ns], ns

    by_status = Counter[int]()
    for (_, status), n in tally.statuses.items():
        by_status[status] += n
    print(f"\nfuzzed {tally.requests} requests in {elapsed:.0f} s; statuses {dict(sorted(by_status.items()))}; "
          f"writes answered SUCCESS {sum(tally.written.values())}; no negative request possible for {unbreakable}")
    for (label, status), n in sorted(tally.statuses.items()):
        print(f"  {label}  {status}: {n}")
