"""The http target delivering from a real worker to a small HTTP server run by the test:
2xx, 429 with Retry-After, 500, 400, a request past ``timeout_ms``, connection refused, and
a key's order kept across a 503. Counted at the server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

from tests.integration.conftest import Worker, free_port, put_namespace, wait_until

pytestmark = pytest.mark.timeout(300)


class Upstream:
    """Answers requests by their ``walstream-id`` from ``script`` (a list of answers per id,
    used up in turn: status, headers, delay_s; then 200). Keeps (id, time, status, headers
    with lower-case names, body) of every request."""

    def __init__(self, port: int = 0) -> None:
        self.script: dict[str, list[tuple[int, dict[str, str], float]]] = {}
        self.seen: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        up = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                entry_id = self.headers.get("walstream-id", "")
                with up.lock:
                    answers = up.script.get(entry_id) or []
                    status, headers, delay_s = answers.pop(0) if answers else (200, {}, 0.0)
                time.sleep(delay_s)
                with up.lock:
                    up.seen.append({"id": entry_id, "at": time.time(), "status": status,
                                    "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"no" if status >= 300 else b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def applied(self) -> list[str]:
        """Ids answered 2xx, in the order the server answered them."""
        with self.lock:
            return [s["id"] for s in self.seen if s["status"] < 300]

    def tries(self, entry_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [s for s in self.seen if s["id"] == entry_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    yield up
    up.close()


def write(w: Worker, ns: str, entries: list[dict[str, Any]]) -> None:
    with w.client() as c:
        r = c.post("/v1/log/batch", json={"entries": [{"namespace": ns, **e} for e in entries]})
    assert r.status_code == 200 and {x["durable"] for x in r.json()["results"]} == {"SUCCESS"}, r.text


def test_a_worker_delivers_to_an_http_upstream_as_the_contract_says(
    start_worker: Callable[..., Worker], unique: str, upstream: Upstream
) -> None:
    w = start_worker()
    retry = {"initial_delay_ms": 200, "max_delay_ms": 1000, "max_attempts": 4, "jitter": 0}
    put_namespace(w, unique, [{"type": "http", "url": upstream.url, "timeout_ms": 1000,
                               "headers": {"X-Tenant": "blue"}}], retry=retry)
    upstream.script = {
        "throttled": [(429, {"Retry-After": "3"}, 0.0)],
        "flaky": [(500, {}, 0.0)],
        "bad": [(400, {}, 0.0)],
        "slow": [(200, {}, 2.5)],  # past timeout_ms: no answer in time, sent again
        "k-1": [(503, {}, 0.0)],  # the first of a key: the rest of the key waits for it
    }
    entries = [{"id": f"ok-{i}", "payload": {"i": i}} for i in range(10)]
    entries += [{"id": name, "payload": {"name": name}} for name in ("throttled", "flaky", "bad", "slow")]
    entries += [{"id": f"k-{i}", "key": "k", "payload": {"i": i}} for i in range(1, 6)]
    write(w, unique, entries)

    wanted = {e["id"] for e in entries} - {"bad"}
    wait_until(lambda: wanted <= set(upstream.applied()), timeout_s=90, what="every entry but 'bad' applied")

    [ok0] = upstream.tries("ok-0")
    assert orjson.loads(ok0["body"]) == {"i": 0}
    assert ok0["headers"]["walstream-namespace"] == unique and ok0["headers"]["x-tenant"] == "blue"
    assert ok0["headers"]["content-type"] == "application/json" and int(ok0["headers"]["walstream-ts"]) > 0
    # 429 with Retry-After: 3 s: not asked again sooner
    first, again = upstream.tries("throttled")[:2]
    assert (first["status"], again["status"]) == (429, 200)
    assert again["at"] - first["at"] >= 3.0, again["at"] - first["at"]
    assert [t["status"] for t in upstream.tries("flaky")] == [500, 200]
    assert len(upstream.tries("slow")) >= 2  # the late answer did not count: sent again
    # the key's order holds: k-1 applied first, then the rest in write order
    assert [i for i in upstream.applied() if i.startswith("k-")] == [f"k-{i}" for i in range(1, 6)]
    # 400: permanent, dead-lettered with the answer, asked once
    assert [t["status"] for t in upstream.tries("bad")] == [400]
    with w.client() as c:
        wait_until(lambda: c.get(f"/v1/dlq/{unique}").json()["dead_letters"], timeout_s=30, what="the dead letter")
        [letter] = c.get(f"/v1/dlq/{unique}").json()["dead_letters"]
        status = c.get(f"/v1/log/{unique}/throttled").json()
    assert letter["id"] == "bad" and letter["error_class"] == "permanent" and "400" in letter["message"]
    assert status["state"] == "DELIVERED"


def test_entries_for_an_upstream_that_refuses_connections_wait_for_it(
    start_worker: Callable[..., Worker], unique: str
) -> None:
    """Nothing listens at first: the entries wait (no attempt spent, circuit open) and are
    applied once the upstream is up; none is dead-lettered however long it takes."""
    port = free_port()
    w = start_worker()
    retry = {"initial_delay_ms": 100, "max_delay_ms": 500, "max_attempts": 2, "jitter": 0}
    put_namespace(w, unique, [{"type": "http", "url": f"http://127.0.0.1:{port}/hook", "timeout_ms": 500}],
                  retry=retry)
    write(w, unique, [{"id": f"e{i}", "payload": {"i": i}} for i in range(5)])
    time.sleep(6)  # well past max_attempts times the backoff: still waiting, not dead
    with w.client() as c:
        assert c.get(f"/v1/log/{unique}/e0").json()["state"] in ("PENDING", "RETRYING")
        assert c.get(f"/v1/dlq/{unique}").json()["dead_letters"] == []
    up = Upstream(port)
    try:
        wait_until(lambda: {f"e{i}" for i in range(5)} <= set(up.applied()), timeout_s=60,
                   what="the entries applied once the upstream is up")
    finally:
        up.close()
