"""Issue 7: table changes that belong together survive a crash together.

Given a worker that SIGKILLs itself at a chosen moment of a scheduler tick (a failpoint, with
every table write up to there durable): right after the targets applied the due entries
(nothing recorded yet), after their new states and successors are written but before the
spent timers are removed, or right after they are removed — when a fresh worker with an empty
data dir takes over (recovering the tables from their changelogs), then every delayed entry
is delivered and every status says DELIVERED: none answers DELAYED forever because its
timer's removal survived the crash and its state did not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Worker, create_topic, kafka_target, put_namespace, read_deliveries, wait_until

pytestmark = pytest.mark.timeout(300)

N = 60
#: the entries' delay: the failpoints are in the scheduler's tick, so the worker must take the
#: entries in as timers before they fall due (an entry already due when it is read is delivered
#: at once, and no tick would reach the failpoint). Up to 6 s from a write to its intake was
#: seen on this 2-core machine right after the namespace's WAL topic was created.
DELAY_MS = 12_000


@pytest.mark.parametrize(
    "failpoint", ["deliverer.after_delivery", "deliverer.before_timer_deletes", "deliverer.after_timer_deletes"]
)
def test_killed_at_a_chosen_moment_of_a_tick(
    start_worker: Callable[..., Worker], unique: str, tmp_path: Path, failpoint: str
) -> None:
    app_id = f"ws-{unique}"
    out = f"out-{unique}"
    create_topic(out)
    doomed = start_worker(app_id=app_id, WALSTREAM_FAILPOINTS=failpoint)
    put_namespace(doomed, unique, [kafka_target(out)])
    with doomed.client() as c:
        r = c.post("/v1/log/batch", json={"entries": [
            {"namespace": unique, "id": f"d{i}", "key": f"k{i}", "payload": i, "lifecycle": {"delay_ms": DELAY_MS}}
            for i in range(N)
        ]})
        assert {x["durable"] for x in r.json()["results"]} == {"SUCCESS"}, r.text
        # the premise: every entry waits in the schedule before any falls due
        wait_until(lambda: len(c.get(f"/v1/internal/pending/{unique}").json().get("ids", [])) == N,
                   timeout_s=DELAY_MS / 1000 - 1, what="the worker to take every entry in as a timer")
    # the first tick that reaches the failpoint kills the worker
    assert doomed.proc is not None
    doomed.proc.wait(timeout=120)
    assert f"failpoint {failpoint}" in doomed.log_path.read_text(errors="replace")

    heir = start_worker(app_id=app_id, datadir=tmp_path / "heir")
    assert set(read_deliveries(out, expect=N, timeout_s=90)) == {f"d{i}" for i in range(N)}

    def states() -> dict[str, int]:
        counts: dict[str, int] = {}
        with heir.client() as c:
            for i in range(N):
                state = c.get(f"/v1/log/{unique}/d{i}").json().get("state", "?")
                counts[state] = counts.get(state, 0) + 1
        return counts

    time.sleep(1.0)
    final = wait_until(lambda: (s := states()) == {"DELIVERED": N} and s, timeout_s=30,
                       what="every entry's status to be DELIVERED")
    assert final == {"DELIVERED": N}
