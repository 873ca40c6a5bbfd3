"""``walstream demo`` (what ``make run`` ends with): a worker in the foreground, a demo
namespace delivering to Cassandra and Elasticsearch, a few entries, and the commands to
write more and look at the results."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.parse

import httpx

from walstream.settings import Settings

NAMESPACE = "demo"
KEYSPACE = "walstream_demo"
INDEX_PREFIX = "walstream_demo_"

DEMO_NAMESPACE = {
    "name": NAMESPACE,
    "description": "movies, applied to Cassandra and Elasticsearch",
    "targets": [
        {"type": "cassandra", "keyspace": KEYSPACE, "consistency": "ONE"},
        {"type": "elasticsearch", "index_prefix": INDEX_PREFIX, "refresh": True},
    ],
    "retry": {"initial_delay_ms": 100, "multiplier": 2.0, "max_delay_ms": 5000, "max_attempts": 5},
}

MOVIES = [
    ("1", "Heat", 1995),
    ("2", "Alien", 1979),
    ("3", "Amelie", 2001),
    ("4", "Parasite", 2019),
]


def create_schema(settings: Settings) -> None:
    """The demo's Cassandra keyspace and table (walstream never creates user schema)."""
    from cassandra.cluster import Cluster
    from cassandra.policies import DCAwareRoundRobinPolicy

    cluster = Cluster(settings.cassandra_hosts.split(","), port=settings.cassandra_port, protocol_version=5,
                      load_balancing_policy=DCAwareRoundRobinPolicy())
    try:
        session = cluster.connect()
        session.execute(
            f"CREATE KEYSPACE IF NOT EXISTS {KEYSPACE} WITH replication = "
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        )
        session.execute(
            f"CREATE TABLE IF NOT EXISTS {KEYSPACE}.movies (id text PRIMARY KEY, title text, year int)"
        )
    finally:
        cluster.shutdown()


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"worker exited with status {proc.returncode}")
        try:
            if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"worker did not answer at {url} within {timeout_s:.0f}s")


def run_demo(settings: Settings, url: str | None = None) -> int:
    url = url or settings.web_url
    print(f"demo: creating Cassandra schema {KEYSPACE}.movies")
    create_schema(settings)
    print("demo: starting a worker (logs below)")
    proc = subprocess.Popen([sys.executable, "-m", "walstream.cli", "worker"])
    try:
        wait_healthy(url, proc)
        with httpx.Client(base_url=url, timeout=30) as c:
            r = c.put(f"/v1/namespaces/{NAMESPACE}", json=DEMO_NAMESPACE)
            r.raise_for_status()
            entries = [
                {"namespace": NAMESPACE, "key": f"movie:{mid}", "payload": {"mutations": [
                    {"table": "movies", "op": "put", "key": {"id": mid}, "value": {"title": t, "year": y}}]}}
                for mid, t, y in MOVIES
            ]
            entries.append({"namespace": NAMESPACE, "key": "movie:2", "payload": {"mutations": [
                {"table": "movies", "op": "delete", "key": {"id": "2"}}]}})
            r = c.post("/v1/log/batch", json={"entries": entries})
            r.raise_for_status()
            for res in r.json()["results"]:
                print(f"demo: wrote {res}")
        _print_help(settings, url)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _print_help(settings: Settings, url: str) -> None:
    es = settings.elasticsearch_url
    body = ('{"namespace": "demo", "key": "movie:5", "payload": {"mutations": [{"table": "movies", '
            '"op": "put", "key": {"id": "5"}, "value": {"title": "Ran", "year": 1985}}]}}')
    q = urllib.parse.quote(f"SELECT * FROM {KEYSPACE}.movies;")
    print(f"""
walstream demo is running (Ctrl-C stops it). Try:

  # write an entry (answers once Kafka holds it durably)
  curl -s -XPOST {url}/v1/log -H 'content-type: application/json' -d '{body}'

  # a delayed entry: delivered no earlier than 10 s from now
  curl -s -XPOST {url}/v1/log -H 'content-type: application/json' \\
       -d '{{"namespace": "demo", "key": "movie:6", "lifecycle": {{"delay_ms": 10000}}, "payload": {{"mutations": [{{"table": "movies", "op": "put", "key": {{"id": "6"}}, "value": {{"title": "Stalker", "year": 1979}}}}]}}}}'

  # see the results
  curl -s '{es}/{INDEX_PREFIX}movies/_search?pretty'
  .venv/bin/python -c "from cassandra.cluster import Cluster; [print(r) for r in Cluster(['{settings.cassandra_hosts}']).connect().execute('SELECT * FROM {KEYSPACE}.movies')]"
  # (cqlsh equivalent: {urllib.parse.unquote(q)})

  # namespaces, health, metrics
  .venv/bin/walstream namespace list
  curl -s {url}/v1/health
  curl -s {url}/metrics | grep walstream_
""", flush=True)
