"""walstream.client against a real worker, Kafka and a kafka target: what it returns, what it
raises, and that a write whose answer was lost is resolved by retrying its id (delivered once,
counted at the target)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from tests.integration.conftest import KAFKA, Worker, create_topic, kafka_target, put_namespace, wait_until
from walstream.client import NotFound, Refused, WalstreamClient

pytestmark = pytest.mark.timeout(240)


class LoseAnswers(httpx.AsyncBaseTransport):
    """Sends every request to the worker, and throws away the answers to the writes numbered
    in ``lost`` (1 = the first write request): the write happened, the client never heard
    (as a connection that broke after the request went out)."""

    def __init__(self, lost: set[int]) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.lost = lost
        self.writes_sent = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if request.method == "POST" and request.url.path.startswith("/v1/log"):
            self.writes_sent += 1
            if self.writes_sent in self.lost:
                await response.aread()
                await response.aclose()
                raise httpx.ReadError("answer lost on the way back", request=request)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def records_per_id(topic: str, expect: int, timeout_s: float, quiet_s: float = 3.0) -> Counter[str]:
    """Records per entry id on ``topic`` (the kafka target's ``walstream-id`` header), read
    until ``expect`` ids arrived and nothing more came for ``quiet_s``."""

    async def run() -> Counter[str]:
        c = AIOKafkaConsumer(topic, bootstrap_servers=KAFKA, auto_offset_reset="earliest", group_id=None)
        await c.start()
        counts: Counter[str] = Counter()
        deadline = time.monotonic() + timeout_s
        last = time.monotonic()
        try:
            while time.monotonic() < deadline and (len(counts) < expect or time.monotonic() - last < quiet_s):
                for records in (await c.getmany(timeout_ms=500)).values():
                    for r in records:
                        counts[dict(r.headers)["walstream-id"].decode()] += 1
                        last = time.monotonic()
        finally:
            await c.stop()
        return counts

    return asyncio.run(run())


def test_writes_status_cancel_and_refusals(start_worker: Callable[..., Worker], unique: str) -> None:
    # Given a worker with a namespace delivering to a kafka topic
    w = start_worker()
    out = f"{unique}.out"
    create_topic(out)
    put_namespace(w, unique, [kafka_target(out)])

    async def scenario() -> dict[str, Any]:
        async with WalstreamClient(w.url, timeout_s=10) as wal:
            # When an entry is written (the client gives it an id) and another with a delay
            now = await wal.write(unique, {"n": 1}, key="k1")
            later = await wal.write(unique, {"n": 2}, key="k2", delay_ms=600_000, id=f"{unique}-later")
            # and a batch with one bad item
            batch = await wal.write_batch([
                wal.entry(unique, {"n": 3}, key="k3"),
                {"namespace": unique, "id": "bad", "payload": {"n": 4}, "lifecycle": {"delay_ms": -1}},
            ])
            # and the same id is written again
            again = await wal.write(unique, {"n": 2}, key="k2", delay_ms=600_000, id=f"{unique}-later")
            # Then the refusals are exceptions naming the problem, and write nothing
            with pytest.raises(NotFound, match="unknown namespace"):
                await wal.write(f"{unique}-none", {"n": 5})
            with pytest.raises(Refused) as refused:
                await wal.write(unique, {"n": 6}, id="x" * 300)
            assert refused.value.status == 400 and "id" in refused.value.message

            async def until(entry_id: str, state: str) -> Any:
                for _ in range(150):
                    try:
                        found = await wal.status(unique, entry_id)
                    except NotFound:  # not consumed yet
                        await asyncio.sleep(0.2)
                        continue
                    if found.state == state:
                        return found
                    await asyncio.sleep(0.2)
                raise AssertionError(f"{entry_id} never {state}")

            status = await until(now.id or "", "DELIVERED")
            delayed = await wal.status(unique, later.id or "", wait_s=30)  # 404 until consumed
            sent = await wal.cancel(unique, later.id or "")
            cancelled = await until(later.id or "", "CANCELLED")
            with pytest.raises(NotFound):
                await wal.status(unique, "never-written")
            names = [n["name"] for n in await wal.namespaces()]
            letters = await wal.dead_letters(unique)
            return {"now": now, "later": later, "batch": batch, "again": again, "status": status,
                    "delayed": delayed, "sent": sent, "cancelled": cancelled, "names": names, "letters": letters}

    r = asyncio.run(scenario())
    assert r["now"].durable == "SUCCESS" and r["now"].id and r["now"].offset is not None
    assert [x.durable for x in r["batch"]] == ["SUCCESS", "FAILED"]
    assert r["batch"][1].status == 400 and r["batch"][1].id == "bad" and "delay_ms" in (r["batch"][1].message or "")
    assert (r["again"].duplicate, r["again"].offset) == (True, r["later"].offset)
    assert r["status"].state == "DELIVERED" and r["status"].targets[0].state == "DELIVERED"
    assert r["delayed"].state == "DELAYED" and r["delayed"].due_at is not None
    assert r["sent"].id == r["later"].id and r["sent"].state in ("CANCELLED", "CANCELLING", "DELAYED")
    assert r["cancelled"].state == "CANCELLED"
    assert unique in r["names"] and r["letters"] == []
    # and at the target: the two delivered entries once each, nothing of the refused or cancelled
    counts = records_per_id(out, expect=2, timeout_s=30)
    assert counts == Counter({r["now"].id: 1, r["batch"][0].id: 1})


def test_a_write_whose_answer_was_lost_is_retried_with_its_id_and_delivered_once(
    start_worker: Callable[..., Worker], unique: str
) -> None:
    # Given a worker, and a client that loses the answers to the first write of one entry and
    # to the first write of a batch, after the worker wrote them
    w = start_worker()
    out = f"{unique}.out"
    create_topic(out)
    put_namespace(w, unique, [kafka_target(out)])
    transport = LoseAnswers({1, 3})

    async def scenario() -> tuple[Any, list[Any]]:
        async with WalstreamClient(w.url, timeout_s=10, retries=3, transport=transport) as wal:
            one = await wal.write(unique, {"n": 1}, key="a")  # answer lost once, then known
            many = await wal.write_batch([wal.entry(unique, {"n": i}, key=f"b{i}") for i in range(50)])
            return one, many

    one, many = asyncio.run(scenario())
    # Then every write is SUCCESS, the retries carried the same ids (the worker knew them)
    assert one.durable == "SUCCESS" and one.duplicate
    assert [x.durable for x in many] == ["SUCCESS"] * 50 and all(x.duplicate for x in many)
    assert transport.writes_sent == 4  # 2 lost + their 2 retries
    # and each entry reached the target exactly once
    ids = {one.id, *(x.id for x in many)}
    counts = records_per_id(out, expect=len(ids), timeout_s=60)
    assert set(counts) == ids and set(counts.values()) == {1}, counts
    wait_until(lambda: w.client().get(f"/v1/log/{unique}/{one.id}").json().get("state") == "DELIVERED",
               timeout_s=30, what="the retried entry DELIVERED")
