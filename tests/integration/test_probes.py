"""Readiness and liveness probes on a real worker (walstream.health).

Given a worker, it answers ready once its tables are recovered and its partitions sought,
and live while its loops run. Given a worker whose scheduler runs only every 10 s and a
liveness limit of 1 s, the liveness probe names the silent scheduler (503), and the worker
reports live again after the scheduler's next run.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.integration.conftest import Worker, wait_until

pytestmark = pytest.mark.timeout(180)


def test_a_started_worker_is_ready_and_live(start_worker: Callable[..., Worker]) -> None:
    w = start_worker()
    with w.client() as c:
        ready = wait_until(lambda: (r := c.get("/v1/health/ready")).status_code == 200 and r, timeout_s=90,
                           what="the worker to answer ready")
        assert ready.json() == {"status": "ready", "reasons": []}
        live = c.get("/v1/health/live")
        assert (live.status_code, live.json()) == (200, {"status": "live", "reasons": []})


def test_a_silent_scheduler_fails_liveness_until_it_runs(start_worker: Callable[..., Worker]) -> None:
    w = start_worker(WALSTREAM_SCHEDULER_INTERVAL_S="10", WALSTREAM_STUCK_AFTER_S="1")
    with w.client() as c:
        stuck = wait_until(lambda: (r := c.get("/v1/health/live")).status_code == 503 and r, timeout_s=60,
                           what="the liveness probe to name the silent scheduler")
        assert stuck.json()["status"] == "stuck"
        assert [line.split(":")[0] for line in stuck.json()["reasons"]] == ["scheduler"], stuck.json()
        wait_until(lambda: c.get("/v1/health/live").status_code == 200, timeout_s=30,
                   what="the liveness probe to recover after the scheduler's next run")
