"""The write path's answers when Kafka does not answer (UNKNOWN) or refuses up front."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

from walstream.entry import Entry, WriteClock
from walstream.writer import Durable, LogWriter


class StubProducer:
    """Kafka stand-in: ``mode`` says what happens to each send."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    async def send(self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None) -> Any:
        if self.mode == "too_large":
            raise MessageSizeTooLargeError("too large")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.mode == "fails":
            fut.set_exception(KafkaTimeoutError("request timed out"))
        elif self.mode == "ok":
            fut.set_result(type("Md", (), {"partition": 1, "offset": 7})())
        return fut  # "silent": never resolves


def entries(n: int = 2, digest: str | None = None) -> list[tuple[Entry, bytes]]:
    clock = WriteClock()
    out = []
    for i in range(n):
        e = Entry(id=f"e{i}", namespace="ns", key="k", payload=i, written_at_us=clock.now_us(), digest=digest)
        out.append((e, e.encode()))
    return out


async def test_success_only_with_an_acknowledgement() -> None:
    results = await LogWriter(StubProducer("ok"), timeout_s=1).write(entries())  # type: ignore[arg-type]
    assert [(r.durable, r.partition, r.offset, r.status) for r in results] == [(Durable.SUCCESS, 1, 7, 200)] * 2


async def test_no_answer_in_time_is_unknown_503() -> None:
    results = await LogWriter(StubProducer("silent"), timeout_s=0.1).write(entries())  # type: ignore[arg-type]
    assert {(r.durable, r.status) for r in results} == {(Durable.UNKNOWN, 503)}
    assert all(r.id for r in results)


async def test_a_failed_send_is_unknown_not_failed() -> None:
    # the broker may have written it before the error: only the client's retry with the same id is safe
    results = await LogWriter(StubProducer("fails"), timeout_s=1).write(entries(1))  # type: ignore[arg-type]
    assert (results[0].durable, results[0].status) == (Durable.UNKNOWN, 503)


async def test_refused_before_sending_is_failed_413() -> None:
    results = await LogWriter(StubProducer("too_large"), timeout_s=1).write(entries(1))  # type: ignore[arg-type]
    assert (results[0].durable, results[0].status) == (Durable.FAILED, 413)


async def test_a_client_chosen_id_is_remembered_a_generated_one_is_not() -> None:
    w = LogWriter(StubProducer("ok"), timeout_s=1)  # type: ignore[arg-type]
    await w.write(entries(1, digest="d" * 64))  # a client-chosen id: written with its request digest
    hit = w.recent("ns", "e0")
    assert hit is not None and hit.result.offset == 7
    other = LogWriter(StubProducer("ok"), timeout_s=1)  # type: ignore[arg-type]
    await other.write(entries(1))  # a generated id (no digest) cannot be written again
    assert other.recent("ns", "e0") is None


class LateProducer:
    """Kafka stand-in whose futures stay pending until the test settles them."""

    def __init__(self, expect: int) -> None:
        self.futures: list[asyncio.Future[Any]] = []
        self.expect = expect
        self.all_sent = asyncio.Event()

    async def send(self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.futures.append(fut)
        if len(self.futures) == self.expect:
            self.all_sent.set()
        return fut

    async def sent(self) -> None:
        await asyncio.wait_for(self.all_sent.wait(), 5)


async def test_acknowledgements_in_any_order_each_answer_their_own_entry() -> None:
    producer = LateProducer(5)
    task = asyncio.create_task(LogWriter(producer, timeout_s=5).write(entries(5)))  # type: ignore[arg-type]
    await producer.sent()
    for offset in (4, 2, 0, 3, 1):  # the last record's acknowledgement first
        producer.futures[offset].set_result(type("Md", (), {"partition": 0, "offset": 100 + offset})())
        await asyncio.sleep(0)
    results = await asyncio.wait_for(task, 5)
    assert [(r.id, r.durable, r.offset) for r in results] == [(f"e{i}", Durable.SUCCESS, 100 + i) for i in range(5)]


async def test_a_mix_of_answers_after_a_wait_keeps_each_entry_s_own() -> None:
    producer = LateProducer(3)
    task = asyncio.create_task(LogWriter(producer, timeout_s=1).write(entries(3)))  # type: ignore[arg-type]
    await producer.sent()
    producer.futures[2].set_result(type("Md", (), {"partition": 0, "offset": 9})())
    producer.futures[0].set_exception(KafkaTimeoutError("request timed out"))
    results = await asyncio.wait_for(task, 5)  # the second never answers: the timeout ends the wait
    assert [(r.durable, r.status) for r in results] == [
        (Durable.UNKNOWN, 503), (Durable.UNKNOWN, 503), (Durable.SUCCESS, 200)]
    assert results[2].offset == 9 and "KafkaTimeoutError" in (results[0].message or "")
    assert "no acknowledgement" in (results[1].message or "")


async def test_a_send_failing_after_the_writer_stopped_waiting_is_observed_not_logged_at_gc() -> None:
    """A write timed out or cancelled leaves futures that fail later: their exceptions are
    read, so asyncio never logs "Future exception was never retrieved" for them."""
    import gc

    loop = asyncio.get_running_loop()
    unobserved: list[dict[str, Any]] = []
    old_handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: unobserved.append(ctx))
    try:
        for how in ("timeout", "cancel"):
            producer = LateProducer(2)
            writer = LogWriter(producer, timeout_s=0.05 if how == "timeout" else 5)  # type: ignore[arg-type]
            task = asyncio.create_task(writer.write(entries(2)))
            await producer.sent()
            if how == "cancel":
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 5)
            for fut in producer.futures:
                fut.set_exception(KafkaTimeoutError("late failure"))
            await asyncio.sleep(0.01)  # the futures' callbacks run
            producer.futures.clear()
            del task
            gc.collect()
        assert unobserved == []
    finally:
        loop.set_exception_handler(old_handler)
