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
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    LeaderNotAvailableError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)

from walstream.entry import Entry
from walstream.namespaces.model import KafkaTargetConfig
from walstream.producer import key_partitioner
from walstream.targets.base import PermanentError, TargetDownError, TransientError
from walstream.targets.kafka import MAX_REQUEST_BYTES, KafkaTarget

pytestmark = pytest.mark.timeout(30)


class StubBatch:
    """Stands in for aiokafka's ``BatchBuilder``: holds up to ``capacity`` records."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.keys: list[bytes] = []
        self.closed = False

    def append(self, *, timestamp: Any, key: bytes, value: bytes, headers: Any) -> object | None:
        if self.closed or (self.keys and len(self.keys) >= self.capacity):
            return None
        self.keys.append(key)
        return object()

    def close(self) -> None:
        self.closed = True


class StubProducer:
    """Stands in for ``AIOKafkaProducer``. ``fail_from``: the index of the first batch whose
    delivery fails with ``error`` (all later ones fail too, as a broken sequence does);
    ``raise_error``: ``send_batch`` itself raises it. ``hold``: deliveries stay pending until
    :meth:`settle`. Batches hold ``per_batch`` records; the topic has ``partitions``."""

    def __init__(
        self,
        fail_from: int | None = None,
        error: BaseException | None = None,
        raise_error: BaseException | None = None,
        hold: bool = False,
        per_batch: int = 1,
        partitions: int = 1,
        fail_keys: frozenset[bytes] = frozenset(),
    ) -> None:
        self.fail_from = fail_from
        self.error = error
        self.raise_error = raise_error
        self.hold = hold
        self.per_batch = per_batch
        #: a batch holding one of these keys fails with ``error`` (the others are unaffected)
        self.fail_keys = fail_keys
        self.started = False
        self.stopped = False
        #: keys delivered, in order; and per partition
        self.delivered: list[bytes] = []
        self.by_partition: dict[int, list[bytes]] = {}
        self.batches_settled = 0
        self.pending: list[tuple[asyncio.Future[object], StubBatch, int]] = []
        self.sends = 0
        parts = set(range(partitions))
        self.client = SimpleNamespace(cluster=SimpleNamespace(
            partitions_for_topic=lambda _t: parts, available_partitions_for_topic=lambda _t: parts))

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    def create_batch(self) -> StubBatch:
        return StubBatch(self.per_batch)

    async def send_batch(self, batch: StubBatch, topic: str, *, partition: int) -> asyncio.Future[object]:
        assert batch.closed, "a batch is closed before it is sent (no send() joins it)"
        if self.raise_error is not None:
            raise self.raise_error
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.pending.append((fut, batch, partition))
        self.sends += 1
        if not self.hold:
            self.settle()
        return fut

    def settle(self) -> None:
        """Complete every pending delivery (from batch ``fail_from`` on: with ``error``)."""
        pending, self.pending = self.pending, []
        for fut, batch, partition in pending:
            if fut.done():  # cancelled with its caller (as aiokafka, which skips those)
                continue
            sticky = self.fail_from is not None and self.batches_settled >= self.fail_from
            if sticky or self.fail_keys.intersection(batch.keys):
                assert self.error is not None
                fut.set_exception(self.error)
            else:
                self.batches_settled += 1
                self.delivered += batch.keys
                self.by_partition.setdefault(partition, []).extend(batch.keys)
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


async def test_a_record_too_large_fails_alone_and_keeps_the_producer(producers: Producers) -> None:
    """A record refused before it is sent says nothing about the producer, nor about the
    other entries of its call."""
    t = target()
    big = Entry(id="big", namespace="ns", key="k1", payload={"pad": "x" * (MAX_REQUEST_BYTES + 1)},
                written_at_us=1)
    out = await t.apply([entry(0), big, entry(2)])
    assert out[0] is None and out[2] is None, out
    assert isinstance(out[1], PermanentError) and "MessageSizeTooLarge" in out[1].message
    assert len(producers) == 1 and not producers[0].stopped
    assert producers[0].delivered == [b"k0", b"k2"]
    await t.close()


async def test_a_send_refused_for_a_full_buffer_keeps_the_producer(producers: Producers) -> None:
    busy = StubProducer(raise_error=KafkaTimeoutError("buffer full"))
    producers.queue.append(busy)
    t = target()
    out = await t.apply([entry(1)])
    assert isinstance(out[0], TransientError)
    assert len(producers) == 1 and not busy.stopped
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
        # one batch of the partition in flight: the next is sent once it is acknowledged
        await settled(lambda: held.sends == 1)
        assert held.sends == 1 and not call.done()
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


def keyed(i: int, key: str) -> Entry:
    return Entry(id=f"e{i}", namespace="ns", key=key, payload={"n": i}, written_at_us=1_000 + i)


async def test_a_partitions_batches_go_one_after_the_other(producers: Producers) -> None:
    """A key's entries in one call (KeyRuns.IN_ORDER): a batch of a partition is sent only
    once the one before it was acknowledged."""
    held = StubProducer(hold=True, per_batch=2)
    producers.queue.append(held)
    t = target()
    call = asyncio.ensure_future(t.apply([keyed(i, "k") for i in range(5)]))
    for sent in (1, 2, 3):
        await settled(lambda n=sent: held.sends == n)  # type: ignore[misc]
        assert held.sends == sent and not call.done()
        await settled(lambda: False, rounds=5)
        assert held.sends == sent, "the next batch waits for this one's acknowledgement"
        held.settle()
    assert await call == [None] * 5
    assert held.delivered == [b"k"] * 5
    await t.close()


@pytest.mark.parametrize("error, later_class", [
    (LeaderNotAvailableError(), TransientError),
    (KafkaConnectionError("no broker"), TargetDownError),
], ids=["transient", "down"])
async def test_after_a_failed_batch_none_of_its_partitions_later_records_is_sent(
    producers: Producers, error: BaseException, later_class: type[TransientError]
) -> None:
    bad = StubProducer(per_batch=1, partitions=2, error=error, fail_keys=frozenset({b"b"}))
    producers.queue.append(bad)
    t = target()
    keys = ["a", "b", "c", "a", "d", "b", "e", "f"]
    partition = key_partitioner(bad, "t")  # type: ignore[arg-type]
    p_of = {k: partition(k.encode()) for k in keys}
    assert len(set(p_of.values())) == 2, "the keys span both partitions"
    out = await t.apply([keyed(i, k) for i, k in enumerate(keys)])
    failed_at = keys.index("b")
    for i, k in enumerate(keys):
        if p_of[k] != p_of["b"] or i < failed_at:
            assert out[i] is None, (i, k, out[i])  # other partition, or before the failure
        else:
            assert isinstance(out[i], later_class), (i, k, out[i])
    lane = [k.encode() for k in keys if p_of[k] == p_of["b"]]
    assert bad.by_partition.get(p_of["b"], []) == lane[:lane.index(b"b")], "nothing after the failure"
    assert bad.by_partition[1 - p_of["b"]] == [k.encode() for k in keys if p_of[k] != p_of["b"]]
    await t.close()
