"""Integration fixtures: the real Kafka, Cassandra and Elasticsearch of ``walstream stack``,
and walstream workers run as real processes (so they can be SIGKILLed).

Every test gets its own namespace, keyspace and index names, and every worker its own
consumer group (app id), web port and data dir, so tests never see each other's state.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cassandra.cluster import Cluster, Session
from cassandra.policies import DCAwareRoundRobinPolicy, ExponentialReconnectionPolicy
from elasticsearch import Elasticsearch

from tests.integration import leftovers
from walstream.stack.stack import SECOND_REGION, runners

KAFKA = "127.0.0.1:9092"
KAFKA_WEST = "127.0.0.1:9192"
ES_URL = "http://127.0.0.1:9200"

_HERE = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)  # before pytest's own hook deselects by ``-m``
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration ``integration``, so ``-m integration`` selects
    exactly these and ``-m "not integration"`` exactly the others. (A ``pytestmark`` in a
    conftest marks nothing; and this hook sees every collected item, not only this folder's.)"""
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def stack() -> None:
    """Start (or find running) the local services; ``make test`` has usually done it.

    In CI the run owns the stack: what killed runs left behind is removed first (see
    :mod:`tests.integration.leftovers`). Elsewhere other runs may share it, so only each
    test's own names are removed, after it."""
    for r in runners(["kafka", "cassandra", "elasticsearch"]):
        r.up()
    if os.environ.get("CI"):
        cluster = Cluster(["127.0.0.1"], port=9042, protocol_version=5, load_balancing_policy=DCAwareRoundRobinPolicy())
        try:
            leftovers.remove_stale(kafkas(), cluster.connect(), ES_URL)
        finally:
            cluster.shutdown()


def kafkas() -> list[str]:
    """The stack's Kafka clusters that run: the first region's, and the second's when it runs."""
    west = runners([SECOND_REGION])[0]
    return [KAFKA, KAFKA_WEST] if west.running() else [KAFKA]


@pytest.fixture(scope="session")
def kafka_west() -> str:
    """The second region's Kafka (``walstream stack up --second-region``), started if needed."""
    runners([SECOND_REGION])[0].up()
    return KAFKA_WEST


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], timeout_s: float = 60.0, interval_s: float = 0.25, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:  # a service still coming back counts as "not yet"
            last = exc
        else:
            if last:
                return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})")


class Worker:
    """A ``walstream worker`` process."""

    def __init__(self, app_id: str, datadir: Path, log_path: Path, **env: str) -> None:
        self.app_id = app_id
        self.datadir = datadir
        # a port given (WALSTREAM_WEB_PORT) lets workers be told each other's URL before they start
        self.port = int(env.get("WALSTREAM_WEB_PORT") or free_port())
        self.log_path = log_path
        self.env = {
            **os.environ,
            "WALSTREAM_APP_ID": app_id,
            "WALSTREAM_WEB_PORT": str(self.port),
            "WALSTREAM_DATADIR": str(datadir),
            "WALSTREAM_PARTITIONS": "4",
            "WALSTREAM_BROKER": KAFKA,
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 90.0) -> Worker:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "walstream.cli", "worker", "--loglevel", "info"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(self._healthy, timeout_s, what=f"worker {self.app_id} to serve (log: {self.log_path})")
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited with {self.proc.returncode}; log: {self.tail()}")
        try:
            r = httpx.get(f"{self.url}/v1/health", timeout=2)
            return r.status_code == 200 and bool(r.json()["assigned"])
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, no commit."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def notable(self, n: int = 40) -> str:
        """The log's last ``n`` warnings and errors (a tail alone misses what went wrong
        minutes before the test gave up)."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join([line for line in lines if "[WARNING]" in line or "[ERROR]" in line][-n:])

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)


@pytest.fixture
def unique() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture(autouse=True)
def leave_nothing_behind(unique: str, cassandra: Session) -> Iterator[None]:
    """After the test (and after its workers stopped), delete the topics, keyspaces and
    indices named with its token. A failure to do so is a warning: it does not undo the test."""
    yield
    try:
        leftovers.remove(unique, kafkas(), cassandra, ES_URL)
    except Exception as exc:  # e.g. a service a test stopped is still coming back
        warnings.warn(f"could not remove the leftovers of {unique}: {exc!r}", stacklevel=1)


@pytest.fixture
def start_worker(tmp_path: Path, unique: str) -> Iterator[Callable[..., Worker]]:
    workers: list[Worker] = []

    def start(app_id: str | None = None, datadir: Path | None = None, **env: str) -> Worker:
        n = len(workers)
        w = Worker(app_id or f"ws-{unique}", datadir or tmp_path / f"worker{n}", tmp_path / f"worker{n}.log", **env)
        workers.append(w)
        return w.start()

    yield start
    for w in workers:
        w.stop()
        # pytest shows captured output only for failing tests: the worker's last words
        print(f"--- {w.log_path} (last warnings and errors)\n{w.notable()}")
        print(f"--- {w.log_path} (last lines)\n{w.tail(40)}")


@pytest.fixture(scope="session")
def cassandra() -> Iterator[Session]:
    cluster = Cluster(
        ["127.0.0.1"],
        port=9042,
        protocol_version=5,
        load_balancing_policy=DCAwareRoundRobinPolicy(),
        reconnection_policy=ExponentialReconnectionPolicy(0.5, 2.0),  # tests stop and start Cassandra
    )
    session = cluster.connect()
    yield session
    cluster.shutdown()


@pytest.fixture(scope="session")
def es() -> Iterator[Elasticsearch]:
    client = Elasticsearch(ES_URL, request_timeout=30)
    yield client
    client.close()


@pytest.fixture
def movies_keyspace(cassandra: Session, unique: str) -> Iterator[str]:
    """A fresh keyspace with ``movies (id text PRIMARY KEY, title text, year int)``."""
    ks = f"ks_{unique}"
    cassandra.execute(f"CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    cassandra.execute(f"CREATE TABLE {ks}.movies (id text PRIMARY KEY, title text, year int)")
    yield ks
    cassandra.execute(f"DROP KEYSPACE IF EXISTS {ks}")


def put_namespace(worker: Worker, name: str, targets: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    with worker.client() as c:
        r = c.put(f"/v1/namespaces/{name}", json={"name": name, "targets": targets, **extra})
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    # Wait until the worker consumes the new topic, so that timings measured by a test do not
    # include the subscription's rebalance (test_rebalance.py writes during rebalances).
    with worker.client() as c:
        wait_until(
            lambda: any(t.startswith(f"wal.{name}:") for t in c.get("/v1/health").json()["assigned"]),
            timeout_s=60,
            what=f"the worker to consume wal.{name}",
        )
    time.sleep(1.0)  # the rebalance's recovery completes after the assignment is visible
    return doc


def both_targets(ks: str, index_prefix: str) -> list[dict[str, Any]]:
    return [
        {"type": "cassandra", "keyspace": ks, "consistency": "ONE"},
        {"type": "elasticsearch", "index_prefix": index_prefix},
    ]


def put_movie(mid: str, title: str, year: int) -> dict[str, Any]:
    return {
        "mutations": [{"table": "movies", "op": "put", "key": {"id": mid}, "value": {"title": title, "year": year}}]
    }


def delete_movie(mid: str) -> dict[str, Any]:
    return {"mutations": [{"table": "movies", "op": "delete", "key": {"id": mid}}]}


def cassandra_movies(session: Session, ks: str) -> dict[str, tuple[str, int]]:
    return {r.id: (r.title, r.year) for r in session.execute(f"SELECT id, title, year FROM {ks}.movies")}


def es_movies(es: Elasticsearch, index: str) -> dict[str, tuple[str, int]]:
    if not es.indices.exists(index=index):
        return {}
    es.indices.refresh(index=index)
    out: dict[str, tuple[str, int]] = {}
    resp = es.search(index=index, size=10_000, query={"match_all": {}})
    for hit in resp["hits"]["hits"]:
        out[hit["_id"]] = (hit["_source"]["title"], hit["_source"]["year"])
    return out


def kafka_target(topic: str) -> dict[str, Any]:
    return {"type": "kafka", "topic": topic}


def create_topic(topic: str, partitions: int = 4) -> None:
    import asyncio

    from walstream.kafka_admin import TopicSpec, ensure_topics

    asyncio.run(ensure_topics(KAFKA, [TopicSpec(topic, partitions, 1)]))


def read_deliveries(topic: str, expect: int, timeout_s: float, wanted: set[str] | None = None) -> dict[str, int]:
    """Consume ``topic`` until ``expect`` distinct entry ids arrived, or with ``wanted`` until
    every one of those ids did (or the timeout); returns entry id → earliest record timestamp
    (ms): when the kafka target produced it. Give ``wanted`` when entries may be delivered
    that were not acknowledged (a write whose answer was lost): they would fill the count
    while an acknowledged one is still on its way."""
    import asyncio

    from aiokafka import AIOKafkaConsumer

    async def run() -> dict[str, int]:
        c = AIOKafkaConsumer(topic, bootstrap_servers=KAFKA, auto_offset_reset="earliest", group_id=None)
        await c.start()
        seen: dict[str, int] = {}
        deadline = time.monotonic() + timeout_s
        try:
            while (len(seen) < expect if wanted is None else not wanted <= seen.keys()) and time.monotonic() < deadline:
                batch = await c.getmany(timeout_ms=500)
                for records in batch.values():
                    for r in records:
                        entry_id = dict(r.headers)["walstream-id"].decode()
                        seen[entry_id] = min(seen.get(entry_id, r.timestamp), r.timestamp)
        finally:
            await c.stop()
        return seen

    return asyncio.run(run())
