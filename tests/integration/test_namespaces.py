"""Namespaces live in a compacted topic: every worker sees every change, without restarts."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.integration.conftest import Worker, put_namespace, wait_until


def test_every_worker_sees_changes_and_new_namespaces_are_consumed_live(
    start_worker: Callable[..., Worker], unique: str, tmp_path: Path,
) -> None:
    # Given two workers of one fleet
    a = start_worker()
    b = start_worker(app_id=a.app_id)
    # When a namespace is applied through the CLI against worker a
    f = tmp_path / "ns.yaml"
    f.write_text(f"name: {unique}\ntargets:\n  - type: noop\nretry: {{max_attempts: 3}}\n")
    out = subprocess.run([sys.executable, "-m", "walstream.cli", "namespace", "apply", str(f), "--url", a.url],
                         capture_output=True, text=True, check=True)
    assert "version 1" in out.stdout
    # Then worker b knows it, and accepts writes for it
    with b.client() as c:
        wait_until(lambda: c.get(f"/v1/namespaces/{unique}").status_code == 200, what="b to see the namespace")
        assert c.get(f"/v1/namespaces/{unique}").json()["retry"]["max_attempts"] == 3
        r = c.post("/v1/log", json={"namespace": unique, "payload": {"any": "json"}})
        assert r.json()["durable"] == "SUCCESS"
    # and some worker of the fleet consumes the new topic
    def consumed() -> bool:
        topics = set()
        for w in (a, b):
            with w.client() as c:
                topics |= {t.split(":")[0] for t in c.get("/v1/health").json()["assigned"]}
        return f"wal.{unique}" in topics

    wait_until(consumed, timeout_s=90, what="the new namespace's topic to be assigned")

    # When it is updated, both see the new version
    put_namespace(a, unique, [{"type": "noop"}], retry={"max_attempts": 5})
    with b.client() as c:
        wait_until(lambda: c.get(f"/v1/namespaces/{unique}").json()["version"] == 2, what="version 2 on b")
    # When it is deleted (once its entry is delivered: deleting a namespace with pending or
    # unconsumed entries is refused without force), writes to it are refused with 404 everywhere
    with a.client() as c:
        wait_until(lambda: c.delete(f"/v1/namespaces/{unique}").status_code == 200, timeout_s=60,
                   what="the namespace to be deletable")
        assert c.delete(f"/v1/namespaces/{unique}").status_code == 404
    with b.client() as c:
        wait_until(lambda: c.get(f"/v1/namespaces/{unique}").status_code == 404, what="b to see the deletion")
        assert c.post("/v1/log", json={"namespace": unique, "payload": 1}).status_code == 404


def test_cli_reports_invalid_files(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("name: ok\ntargets:\n  - type: carrier-pigeon\n")
    out = subprocess.run([sys.executable, "-m", "walstream.cli", "namespace", "apply", str(f)],
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert "unknown target type 'carrier-pigeon'" in out.stderr
