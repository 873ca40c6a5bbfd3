"""A long target outage, through Faust's ``agent.test_context()`` on memory:// and rocksdb://.

Given a target that does not answer at all (``TargetDownError``) for longer than eight of its
circuit breaker's probe cycles (the default retry policy allows eight attempts), when it comes
back, then every entry is delivered exactly once and nothing is dead-lettered: attempts are
spent only while the breaker still lets calls through as a closed circuit, never while it is
open or probing.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.conftest import Harness, add_namespace, build_wal
from tests.unit.test_delivery_agent import agent, entry, letters, send, tick, timers
from walstream.app import WalApp
from walstream.entry import Entry, WriteClock
from walstream.targets.base import TargetDownError

pytestmark = pytest.mark.timeout(60)

THRESHOLD = 3
#: probe calls that fail before the target is back: more than eight cycles
PROBES = 10


@pytest.fixture
def wal(store: str, tmp_path: Path) -> Iterator[WalApp]:
    """A worker whose breakers open after 3 down calls and probe every 20-50 ms."""
    yield build_wal(
        store, tmp_path, breaker_threshold=THRESHOLD, breaker_cooldown_s=0.02, breaker_cooldown_max_s=0.05
    )


async def test_an_outage_longer_than_eight_probe_cycles_dead_letters_nothing(harness: Harness) -> None:
    wal, target, producer = harness
    # the default retry policy (8 attempts), with short delays
    add_namespace(wal, {"name": "orders", "targets": [{"type": "noop"}],
                        "retry": {"initial_delay_ms": 1, "max_delay_ms": 5, "jitter": 0}})
    clock = WriteClock()
    target.down_for_calls = THRESHOLD + PROBES
    first = [entry(i, clock, f"k{i}") for i in range(THRESHOLD)]
    async with agent(wal).test_context() as ctx:
        # Given the target down: three calls fail and open its circuit
        for e in first:
            await send(ctx, e)
        [breaker] = wal.breakers.all().values()
        assert breaker.is_open and target.calls == THRESHOLD
        # an entry arriving while the circuit is open is not sent
        late = entry(9, clock, "k9")
        await send(ctx, late)
        assert target.calls == THRESHOLD
        # When the outage lasts PROBES probe cycles, ticking as the scheduler would
        attempts_seen: list[int] = []
        deadline = time.monotonic() + 30
        while target.calls <= target.down_for_calls and timers(wal) and time.monotonic() < deadline:
            await tick(ctx, after_s=0.01)
            attempts_seen += [t["attempt"] for t in timers(wal)]
        # Then no attempt was spent while the circuit was open or probing: the first three
        # entries spent one each while it was closed, the late one none
        assert max(attempts_seen) <= 1, (
            f"attempts spent during the outage: {Counter(attempts_seen)}; "
            f"dead-lettered: {sorted(letters(producer))} after {target.calls - THRESHOLD} probes"
        )
        assert target.calls > target.down_for_calls, "the outage did not run its course"
        # and once the target answers, everything is delivered
        while len(target.applied) < len(first) + 1 and time.monotonic() < deadline:
            await tick(ctx, after_s=0.01)
    assert producer.sent == [], "an entry was dead-lettered during a transient outage"
    assert Counter(e.id for e in target.applied) == Counter(e.id for e in [*first, late])
    assert timers(wal) == []
    assert not breaker.is_open
    moves = [s for _, s in breaker.transitions]
    assert moves[0] == "opened" and moves[-1] == "closed"


async def test_a_target_down_dead_letters_nothing_even_with_one_attempt(harness: Harness) -> None:
    """max_attempts below the breaker's threshold: the calls before the circuit opens must not
    spend the entry's only attempt on a target that is merely down."""
    wal, target, producer = harness
    add_namespace(wal, {"name": "orders", "targets": [{"type": "noop"}],
                        "retry": {"initial_delay_ms": 1, "max_delay_ms": 5, "max_attempts": 1, "jitter": 0}})
    clock = WriteClock()
    e = Entry(id="d1", namespace="orders", key="k", payload=1, written_at_us=clock.now_us())
    target.script[e.id] = [TargetDownError("connection refused")] * 5
    async with agent(wal).test_context() as ctx:
        await send(ctx, e)
        for _ in range(40):
            if target.applied:
                break
            await tick(ctx, after_s=0.03)
    assert [x.id for x in target.applied] == ["d1"]
    assert producer.sent == []
