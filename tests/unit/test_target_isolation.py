"""One slow or broken target never holds up other targets or namespaces (issue 7, item 9).

Through the delivery agent's ``test_context()`` on memory:// and rocksdb://, with targets
that hang, answer slowly, or stay down: every call is bounded, the agent moves on while a
call runs, the breaker counts timeouts and then costs nothing, a down target's entries
spend no attempts, and nothing is lost, applied twice, or applied out of key order.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.unit.conftest import FakeChangelog, FakeProducer, MemoryConsumer, RecordingTarget, add_namespace
from tests.unit.test_delivery_agent import agent, letters, send, tick, timers
from walstream.app import WalApp, build_app
from walstream.delivery.breaker import Breaker
from walstream.entry import Entry, WriteClock
from walstream.settings import Settings
from walstream.targets.base import Outcomes, Target, TargetDownError

RETRY = {"initial_delay_ms": 1, "max_delay_ms": 5, "max_attempts": 3, "jitter": 0}
#: "orders" writes to the broken target (configured as kafka) and a healthy one (noop);
#: "other" writes only to another healthy one (elasticsearch): both must keep flowing
ORDERS = {"name": "orders", "targets": [{"type": "kafka", "topic": "missing"}, {"type": "noop"}], "retry": RETRY}
OTHER = {"name": "other", "targets": [{"type": "elasticsearch"}], "retry": RETRY}

#: the agent waits this long for a call; a call is cancelled after TIMEOUT_S
WAIT_S = 0.05
TIMEOUT_S = 0.5
#: every wait in these tests is bounded by this (no pytest-timeout here)
TEST_DEADLINE_S = 20.0


class HangingTarget(Target):
    """Never answers until ``release`` is set; then applies what it is given."""

    def __init__(self, delay_s: float | None = None) -> None:
        self.label = "hanging"
        self.delay_s = delay_s
        self.release = asyncio.Event()
        self.calls = 0
        self.in_flight = 0
        self.cancelled = 0
        self.applied: list[Entry] = []

    async def apply(self, entries: Sequence[Entry]) -> Outcomes:
        self.calls += 1
        self.in_flight += 1
        try:
            if self.delay_s is not None:
                await asyncio.sleep(self.delay_s)
            else:
                await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        self.applied.extend(entries)
        return [None] * len(entries)


Harness = tuple[WalApp, Target, RecordingTarget, RecordingTarget, FakeProducer]


@pytest.fixture
def make_harness(store: str, tmp_path: Path) -> Iterator[Callable[[Target], Harness]]:
    apps: list[WalApp] = []

    def make(broken: Target) -> Harness:
        settings = Settings(
            store=store,
            datadir=tmp_path / "worker",
            app_id=f"unit-{tmp_path.name}",
            target_wait_s=WAIT_S,
            target_call_timeout_s=TIMEOUT_S,
            breaker_threshold=2,
            breaker_cooldown_s=0.5,
            breaker_cooldown_max_s=0.5,
        )
        wal = build_app(settings, offsets_port=MemoryConsumer())
        wal.changelogs.send_batch = FakeChangelog().send_batch  # type: ignore[method-assign]
        add_namespace(wal, ORDERS)
        add_namespace(wal, OTHER)
        healthy, other = RecordingTarget("healthy"), RecordingTarget("other")
        by_type = {"kafka": broken, "noop": healthy, "elasticsearch": other}
        wal.targets.get = lambda cfg: by_type[cfg["type"] if isinstance(cfg, dict) else cfg.type]  # type: ignore[method-assign]
        producer = FakeProducer()
        wal.dead_letters._producer = producer  # type: ignore[assignment]
        wal.dead_letters._retry_s = 0.01
        apps.append(wal)
        return wal, broken, healthy, other, producer

    yield make


def orders(i: int, clock: WriteClock, key: str) -> Entry:
    return Entry(id=f"o{i}", namespace="orders", key=key, payload={"n": i}, written_at_us=clock.now_us())


def others(i: int, clock: WriteClock) -> Entry:
    return Entry(id=f"x{i}", namespace="other", key=f"x{i}", payload={"n": i}, written_at_us=clock.now_us())


def broken_breaker(wal: WalApp) -> Breaker:
    [breaker] = [b for b in wal.breakers.all().values() if b.label == "hanging"]
    return breaker


def state(wal: WalApp, entry_id: str, ns: str = "orders") -> dict[str, Any]:
    doc = wal.states.get(ns, entry_id)
    assert doc is not None
    return doc


async def tick_until(ctx: Any, predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TEST_DEADLINE_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await tick(ctx, after_s=0.02)


async def finish(wal: WalApp) -> None:
    await wal.deliverer._target_calls.close()


async def test_a_hanging_target_is_bounded_counts_for_its_breaker_and_holds_up_nothing(
    make_harness: Callable[[Target], Harness],
) -> None:
    hanging = HangingTarget()
    wal, _, healthy, other, producer = make_harness(hanging)
    clock = WriteClock()
    first, second = orders(1, clock, "K"), orders(2, clock, "K")  # same key: order must hold
    rest = [others(i, clock) for i in range(5)]
    async with agent(wal).test_context() as ctx:
        # When: an entry for the hanging target arrives
        await send(ctx, first)
        # Then: the agent moved on while the call runs; the namespace's other target has it
        assert hanging.in_flight == 1
        assert [e.id for e in healthy.applied] == ["o1"]
        # and other namespaces keep flowing, with no second call to the hanging target
        await send(ctx, second, *rest)
        assert [e.id for e in other.applied] == [e.id for e in rest]
        assert [e.id for e in healthy.applied] == ["o1", "o2"]
        assert hanging.calls == 1

        # The call is cancelled at its deadline and counts as "down"; the second one opens it
        breaker = broken_breaker(wal)
        await tick_until(ctx, lambda: breaker.is_open, "the circuit to open")
        assert hanging.calls == 2 and hanging.cancelled == 2
        assert [what for _, what in breaker.transitions] == ["opened"]
        # a target that does not answer is down: no attempt is spent, before or after the
        # circuit opened (an outage must not dead-letter entries whatever max_attempts)
        t = state(wal, "o1")["targets"]
        [broken_state] = [v for v in t.values() if v["type"] == "kafka"]
        assert broken_state["state"] == "RETRYING" and broken_state["attempts"] == 0

        # While the circuit is open, calls cost nothing: the target is not called
        if breaker.allows():  # (the cool-down passed while we looked: let it probe first)
            await tick_until(ctx, lambda: not breaker.allows(), "the circuit to re-open")
        calls = hanging.calls
        await tick(ctx)
        await tick(ctx)
        assert hanging.calls == calls

        # When the target answers again, the probe succeeds and the key's entries follow in order
        hanging.release.set()
        await tick_until(ctx, lambda: len(hanging.applied) == 2, "the held entries to be applied")
    await finish(wal)
    assert [e.id for e in hanging.applied] == ["o1", "o2"]
    assert [what for _, what in breaker.transitions] == ["opened", "closed"]
    assert producer.sent == [] and letters(producer) == {}
    assert timers(wal) == []


async def test_a_slow_call_the_agent_stopped_waiting_for_is_applied_once(
    make_harness: Callable[[Target], Harness],
) -> None:
    slow = HangingTarget(delay_s=4 * WAIT_S)  # slower than the agent waits, within the deadline
    wal, _, healthy, _, producer = make_harness(slow)
    clock = WriteClock()
    entries = [orders(i, clock, f"k{i}") for i in range(3)]
    async with agent(wal).test_context() as ctx:
        await send(ctx, *entries)
        assert [e.id for e in healthy.applied] == ["o0", "o1", "o2"]
        assert slow.applied == []  # still on its way
        await tick_until(
            ctx,
            lambda: all(state(wal, e.id)["state"] == "DELIVERED" for e in entries),
            "the slow target's entries to be delivered",
        )
    await finish(wal)
    # the call that outlived the agent's wait delivered its entry: it is not applied again
    assert Counter(e.id for e in slow.applied) == {"o0": 1, "o1": 1, "o2": 1}
    for e in entries:
        [t] = [v for v in state(wal, e.id)["targets"].values() if v["type"] == "kafka"]
        assert t["attempts"] == 0  # a slow answer is no failure
    assert broken_breaker(wal).transitions == []
    assert producer.sent == [] and timers(wal) == []


async def test_a_down_target_spends_no_attempts_while_its_circuit_is_open(
    make_harness: Callable[[Target], Harness],
) -> None:
    # Given a target down for far longer than the entry has attempts (3)
    down = RecordingTarget("hanging")
    wal, _, _, _, producer = make_harness(down)
    wal.breakers._initial = wal.breakers._max = 0.02  # many probe cycles, quickly
    e = orders(1, WriteClock(), "K")
    down.script[e.id] = [TargetDownError("no host available")] * 12
    async with agent(wal).test_context() as ctx:
        await send(ctx, e)
        await tick_until(ctx, lambda: bool(down.applied), "the target to come back")
    await finish(wal)
    # Then: probed a dozen times, never dead-lettered, delivered once it answered
    assert down.calls == 13
    assert [x.id for x in down.applied] == ["o1"]
    assert producer.sent == []
    [t] = [v for v in state(wal, "o1")["targets"].values() if v["type"] == "kafka"]
    assert t["state"] == "DELIVERED" and t["attempts"] < 3
