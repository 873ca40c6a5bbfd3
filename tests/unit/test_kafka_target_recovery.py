"""The Kafka target recovers from a producer whose state broke (issue 8, stuck partitions).

aiokafka's idempotent producer never repairs its per-partition sequence numbers: after one
failed batch (``LeaderNotAvailableError`` while a broker restarts), every later batch of that
partition is refused with ``OutOfOrderSequenceNumber`` for good. The stub producer here
behaves the same ("sticky"): once a delivery failed, all its later deliveries fail too. The
target must discard such a producer, report the entries transient (retried, never
dead-lettered), and deliver them on a fresh producer at the next call; and no delivery future
may be left with an unobserved exception.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    LeaderNotAvailableError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)

from walstream.entry import Entry
from walstream.namespaces.model import KafkaTargetConfig
from walstream.targets.base import PermanentError, TransientError
from walstream.targets.kafka import KafkaTarget

pytestmark = pytest.mark.timeout(30)


class StubProducer:
    """Stands in for ``AIOKafkaProducer``. ``fail_from``: the index of the first send whose
    delivery fails with ``error`` (all later ones fail too, as a broken sequence does);
    ``raise_error``: ``send`` itself raises it. ``hold``: deliveries stay pending until
    :meth:`settle`."""

    def __init__(
        self,
        fail_from: int | None = None,
        error: BaseException | None = None,
        raise_error: BaseException | None = None,
        hold: bool = False,
    ) -> None:
        self.fail_from = fail_from
        self.error = error
        self.raise_error = raise_error
        self.hold = hold
        self.started = False
        self.stopped = False
        self.delivered: list[bytes] = []
        self.pending: list[tuple[asyncio.Future[object], bytes]] = []
        self.sends = 0
        self.client = SimpleNamespace(cluster=SimpleNamespace(partitions_for_topic=lambda _t: {0}))

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def send(self, topic: str, *, value: bytes, key: bytes, headers: Any) -> asyncio.Future[object]:
        if self.raise_error is not None:
            raise self.raise_error
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.pending.append((fut, key))
        self.sends += 1
        if not self.hold:
            self.settle()
        return fut

    def settle(self) -> None:
        """Complete every pending delivery (from ``fail_from`` on: with ``error``)."""
        pending, self.pending = self.pending, []
        for fut, key in pending:
            if fut.done():  # cancelled with its caller (as aiokafka, which skips those)
                continue
            if self.fail_from is not None and len(self.delivered) >= self.fail_from:
                assert self.error is not None
                fut.set_exception(self.error)
            else:
                self.delivered.append(key)
                fut.set_result(None)


async def settled(cond: Callable[[], bool], rounds: int = 50) -> None:
    """Let the event loop run callbacks and background tasks: until ``cond`` holds, for at
    most ``rounds`` iterations (no wall-clock wait)."""
    for _ in range(rounds):
        if cond():
            return
        await asyncio.sleep(0)


def entry(i: int) -> Entry:
    return Entry(id=f"e{i}", namespace="ns", key=f"k{i}", payload={"n": i}, written_at_us=1_000 + i)


class Producers(list[StubProducer]):
    """The producers a target made, in order: first the ones the test queued, then healthy
    ones."""

    def __init__(self) -> None:
        super().__init__()
        self.queue: list[StubProducer] = []

    def make(self) -> StubProducer:
        p = self.queue.pop(0) if self.queue else StubProducer()
        self.append(p)
        return p


@pytest.fixture
def producers(monkeypatch: pytest.MonkeyPatch) -> Iterator[Producers]:
    made = Producers()
    monkeypatch.setattr(KafkaTarget, "_new_producer", lambda self: made.make())
    yield made


def target() -> KafkaTarget:
    return KafkaTarget(KafkaTargetConfig(type="kafka", topic="t"), "127.0.0.1:1", timeout_s=5.0)


STATE_ERRORS = [
    OutOfOrderSequenceNumber(),
    UnknownProducerId(),
    InvalidProducerEpoch(),
    ProducerFenced(),
    # the trigger of the stuck partitions: a numbered batch expired without a leader
    LeaderNotAvailableError(),
]


@pytest.mark.parametrize("error", STATE_ERRORS, ids=lambda e: type(e).__name__)
async def test_failed_delivery_replaces_the_producer_and_the_retry_succeeds(
    producers: Producers, error: BaseException
) -> None:
    producers.queue.append(StubProducer(fail_from=1, error=error))
    t = target()
    batch = [entry(i) for i in range(4)]
    out = await t.apply(batch)
    assert out[0] is None
    # transient (retried in key order), never permanent (dead-lettered)
    assert all(isinstance(o, TransientError) for o in out[1:]), out
    first = producers[0]
    assert first.delivered == [b"k0"]
    await settled(lambda: first.stopped)
    assert first.stopped, "the broken producer is stopped"

    retry = await t.apply(batch[1:])
    assert retry == [None, None, None], retry
    assert len(producers) == 2 and producers[1].started
    assert producers[1].delivered == [b"k1", b"k2", b"k3"]
    # and it stays the producer while it works
    assert await t.apply([entry(9)]) == [None]
    assert len(producers) == 2
    await t.close()


async def test_send_refused_by_a_dead_producer_replaces_it(producers: Producers) -> None:
    # a dead sender task makes every send raise its fatal error
    dead = StubProducer(raise_error=KafkaError("Unexpected error during batch delivery"))
    producers.queue.append(dead)
    t = target()
    out = await t.apply([entry(1), entry(2)])
    assert all(isinstance(o, TransientError) for o in out), out
    assert await t.apply([entry(1), entry(2)]) == [None, None]
    assert producers[1].delivered == [b"k1", b"k2"]
    await t.close()
    assert dead.stopped


async def test_a_record_error_keeps_the_producer(producers: Producers) -> None:
    """A record refused before it got a sequence number says nothing about the producer."""
    big = StubProducer(raise_error=MessageSizeTooLargeError("too big"))
    producers.queue.append(big)
    t = target()
    out = await t.apply([entry(1)])
    assert isinstance(out[0], PermanentError)
    assert len(producers) == 1 and not big.stopped
    await t.close()


async def test_deliveries_left_behind_by_a_cancelled_call_are_observed(producers: Producers) -> None:
    """The runtime cancels a call at its deadline; deliveries still pending then may fail
    later: their errors are retrieved (no "Future exception was never retrieved") and the
    producer is discarded all the same."""
    held = StubProducer(fail_from=0, error=LeaderNotAvailableError(), hold=True)
    producers.queue.append(held)
    unobserved: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: unobserved.append(ctx))
    try:
        t = target()
        call = asyncio.ensure_future(t.apply([entry(i) for i in range(3)]))
        await settled(lambda: held.sends == 3)
        assert held.sends == 3 and not call.done()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        del call
        held.settle()  # the broker gives up on them after the call is gone
        await settled(lambda: held.stopped)
        gc.collect()
        await settled(lambda: bool(unobserved))  # the loop reports them from a callback
        assert not unobserved, [c.get("message") for c in unobserved]
        assert held.stopped, "a failed delivery nobody awaited still discards the producer"
        assert await t.apply([entry(1)]) == [None]
        assert producers[1].delivered == [b"k1"]
        await t.close()
    finally:
        loop.set_exception_handler(previous)
