"""The auth contract against a real worker: admin tokens guard namespace changes and redrive,
a namespace's write tokens guard its writes and cancellations, per-entry target overrides
only as the namespace allows; 401 without a token, 403 with a wrong one; a refused request
writes nothing (counted at the WAL topic and at the target); no token ever reaches the log."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Worker, create_topic, read_deliveries, wait_until
from tests.integration.test_api_fuzz import wal_records
from walstream.auth import token_digest
from walstream.namespaces.model import wal_topic

pytestmark = pytest.mark.timeout(300)

ADMIN = "admin-token-4f0c2a9e7b1d"
OTHER_ADMIN = "second-admin-token-93ce1b"
WRITER = "writer-token-5d8e3f71aa02"
WRONG = "not-a-token-of-anyone-at-all"
TOKENS = (ADMIN, OTHER_ADMIN, WRITER, WRONG)


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def test_tokens_guard_what_the_contract_says(start_worker: Callable[..., Worker], unique: str) -> None:
    worker = start_worker(WALSTREAM_ADMIN_TOKENS=f"{ADMIN}, {OTHER_ADMIN}")
    out = f"{unique}-out"
    create_topic(out)
    allowed = {"type": "kafka", "topic": f"{unique}-allowed"}
    config = {"name": unique, "targets": [{"type": "kafka", "topic": out}], "write_tokens": [WRITER],
              "allowed_target_overrides": [allowed]}
    c = httpx.Client(base_url=worker.url, timeout=60)

    # namespace changes: admin only
    assert c.put(f"/v1/namespaces/{unique}", json=config).status_code == 401
    r = c.put(f"/v1/namespaces/{unique}", json=config, headers=bearer(WRONG))
    assert r.status_code == 403 and "admin token" in r.json()["message"]
    assert c.put(f"/v1/namespaces/{unique}", json=config, headers=bearer(WRITER)).status_code == 403
    assert c.get(f"/v1/namespaces/{unique}").status_code == 404  # nothing was applied
    r = c.put(f"/v1/namespaces/{unique}", json=config, headers=bearer(OTHER_ADMIN))
    assert r.status_code == 200, r.text
    # kept as a digest: the token itself is not stored or shown
    assert r.json()["write_tokens"] == [token_digest(WRITER)]
    wait_until(lambda: any(t.startswith(f"wal.{unique}:") for t in c.get("/v1/health").json()["assigned"]),
               timeout_s=60, what="the worker to consume the namespace")
    time.sleep(1.0)

    # writes: the namespace's write token (or an admin token)
    def write(token: str | None, **extra: Any) -> httpx.Response:
        return c.post("/v1/log", json={"namespace": unique, "payload": {"n": 1}, **extra}, headers=bearer(token))

    r = write(None)
    assert r.status_code == 401 and r.json()["durable"] == "FAILED" and "write token" in r.json()["message"]
    assert write(WRONG).status_code == 403
    ok = [write(WRITER, id=f"w{i}") for i in range(3)] + [write(ADMIN, id="w-admin")]
    assert [r.status_code for r in ok] == [200] * 4, [r.text for r in ok]
    batch = c.post("/v1/log/batch", json={"entries": [{"namespace": unique, "payload": i} for i in range(5)]},
                   headers=bearer(WRONG)).json()["results"]
    assert [b["status"] for b in batch] == [403] * 5
    # the verdict is per namespace: in one batch without a token, an open namespace's item passes
    open_ns = f"{unique}open"
    r = c.put(f"/v1/namespaces/{open_ns}", json={"name": open_ns, "targets": [{"type": "noop"}]}, headers=bearer(ADMIN))
    assert r.status_code == 200, r.text
    mixed = c.post("/v1/log/batch", json={"entries": [{"namespace": unique, "payload": 1},
                                                      {"namespace": open_ns, "payload": 2}]}).json()["results"]
    assert mixed[0]["status"] == 401 and mixed[1]["status"] not in (401, 403), mixed
    # a target override only as listed: another topic is refused even with the right token
    r = write(WRITER, target={"type": "kafka", "topic": "somewhere-else"})
    assert r.status_code == 403 and "allowed_target_overrides" in r.json()["message"]
    assert write(WRITER, id="w-allowed", target=allowed).status_code == 200

    # cancellation: a write token too
    delayed = write(WRITER, id="later", lifecycle={"delay_ms": 3_600_000})
    assert delayed.status_code == 200
    assert c.delete(f"/v1/log/{unique}/later").status_code == 401
    assert c.delete(f"/v1/log/{unique}/later", headers=bearer(WRONG)).status_code == 403
    # 503 says "not now" (the tables settle after a namespace's rebalance): a client asks again
    cancelled = wait_until(lambda: (x := c.delete(f"/v1/log/{unique}/later", headers=bearer(WRITER))).status_code
                           != 503 and x, timeout_s=60, what="the cancellation to be taken")
    assert cancelled.status_code in (200, 202), cancelled.text

    # redrive and deletion: admin only
    assert c.post(f"/v1/dlq/{unique}/redrive", json={}).status_code == 401
    assert c.post(f"/v1/dlq/{unique}/redrive", json={}, headers=bearer(WRITER)).status_code == 403
    assert c.post(f"/v1/dlq/{unique}/redrive", json={}, headers=bearer(ADMIN)).status_code == 200
    assert c.delete(f"/v1/namespaces/{unique}").status_code == 401
    assert c.delete(f"/v1/namespaces/{unique}", headers=bearer(WRONG)).status_code == 403
    # reads stay open
    assert c.get(f"/v1/log/{unique}/w0").status_code == 200
    assert c.get(f"/v1/dlq/{unique}").status_code == 200

    # exactly the 6 accepted writes are in the log, and the 4 immediate ones reach the target
    assert wal_records(wal_topic(unique)) == 6
    delivered = read_deliveries(out, expect=4, timeout_s=60)
    assert set(delivered) == {"w0", "w1", "w2", "w-admin"}
    c.close()

    # requests aiohttp cannot parse are logged by it with their headers: the token must not be
    for header in (f"Authorization: Bearer {WRITER}\x01", f"Authorization : Bearer {ADMIN}",
                   f"Authorization: Bearer {OTHER_ADMIN}" + "x" * 9000):
        with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as s:
            s.sendall(b"POST /v1/log HTTP/1.1\r\nHost: x\r\n" + header.encode() + b"\r\nContent-Length: 2\r\n\r\n{}")
            status_line = s.recv(65536).split(b"\r\n")[0]
            assert re.match(rb"HTTP/1\.[01] 4\d\d ", status_line), status_line  # refused, not a 5xx
    assert httpx.get(f"{worker.url}/v1/health", timeout=10).status_code == 200

    worker.stop()
    log = worker.log_path.read_text(errors="replace")
    assert log, "the worker wrote no log at all: the check below would see nothing"
    for token in TOKENS:
        assert token not in log
