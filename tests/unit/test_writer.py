"""The write path's answers when Kafka does not answer (UNKNOWN) or refuses up front."""

from __future__ import annotations

import asyncio
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
