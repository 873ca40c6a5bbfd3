"""The http target (walstream.targets.http) against a real HTTP server on loopback: what it
sends, and how each kind of answer (or none) is classed; and that the delivery runtime waits
at least as long as a ``Retry-After`` asks. The worker delivering to such a server is
tests/integration/test_http_target.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from email.utils import formatdate
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.unit.conftest import free_port
from walstream.entry import Entry, WriteClock
from walstream.namespaces.model import HttpTargetConfig, NamespaceError, parse_namespace
from walstream.targets.base import MAX_RETRY_AFTER_S, PermanentError, TargetDownError, TransientError
from walstream.targets.http import MAX_IN_FLIGHT, HttpTarget, retry_after_s

pytestmark = pytest.mark.timeout(60)


class Upstream:
    """Answers each entry (by its ``walstream-id``) as scripted: (status, headers, body, delay_s);
    200 when not scripted. Keeps every request and the most requests in flight at once."""

    def __init__(self) -> None:
        self.script: dict[str, tuple[int, dict[str, str], str, float]] = {}
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            body = await request.read()
            self.requests.append({"method": request.method, "path": request.path, "headers": dict(request.headers),
                                  "body": body})
            status, headers, text, delay_s = self.script.get(request.headers.get("walstream-id", ""),
                                                             (200, {}, "ok", 0.01))
            await asyncio.sleep(delay_s)
            return web.Response(status=status, headers=headers, text=text)
        finally:
            self.in_flight -= 1


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, str]]:
    up = Upstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", up.handle)
    server = TestServer(app)
    await server.start_server()
    try:
        yield up, str(server.make_url("/hook"))
    finally:
        await server.close()


def target(url: str, **cfg: Any) -> HttpTarget:
    return HttpTarget(HttpTargetConfig.model_validate({"type": "http", "url": url, **cfg}))


def entry(entry_id: str, payload: Any = None) -> Entry:
    return Entry(id=entry_id, namespace="orders", key=entry_id, payload=payload if payload is not None else {"n": 1},
                 written_at_us=WriteClock().now_us())


async def test_the_payload_goes_as_json_with_the_entrys_id_write_time_and_namespace(
    upstream: tuple[Upstream, str]
) -> None:
    up, url = upstream
    t = target(url, method="PUT", headers={"X-Tenant": "blue"})
    e = entry("e1", {"title": "Heat", "year": 1995, "tags": ["a", "ü"]})
    try:
        assert await t.apply([e]) == [None]
    finally:
        await t.close()
    [req] = up.requests
    assert req["method"] == "PUT" and req["path"] == "/hook"
    assert orjson.loads(req["body"]) == e.payload
    h = req["headers"]
    assert (h["walstream-id"], h["walstream-ts"], h["walstream-namespace"]) == ("e1", str(e.written_at_us), "orders")
    assert h["Content-Type"] == "application/json" and h["X-Tenant"] == "blue"


async def test_each_answer_is_classed_as_the_contract_says(upstream: tuple[Upstream, str]) -> None:
    up, url = upstream
    http_date = formatdate(time.time() + 30, usegmt=True)
    up.script = {
        "throttled": (429, {"Retry-After": "7"}, "slow down", 0),
        "unavailable": (503, {"Retry-After": http_date}, "maintenance", 0),
        "gateway": (502, {}, "bad gateway", 0),
        "broken": (500, {}, "NullPointerException", 0),
        "slow": (408, {}, "request timeout", 0),
        "bad": (400, {}, '{"error": "title missing"}', 0),
        "gone": (404, {}, "no such hook", 0),
        "moved": (301, {"Location": "https://elsewhere/hook"}, "", 0),
        "forever": (429, {"Retry-After": "99999999"}, "", 0),
        "huge": (400, {}, "x" * 5_000_000, 0),  # only the start is read
    }
    t = target(url)
    names = ["fine", *up.script]
    try:
        outcomes = dict(zip(names, await t.apply([entry(n) for n in names]), strict=True))
    finally:
        await t.close()
    assert outcomes["fine"] is None
    for name in ("throttled", "unavailable", "gateway"):  # the service as a whole: no attempt spent
        assert isinstance(outcomes[name], TargetDownError), name
    for name in ("broken", "slow"):  # the entry's attempt, retried
        err = outcomes[name]
        assert isinstance(err, TransientError) and not isinstance(err, TargetDownError), name
    for name in ("bad", "gone", "moved"):
        assert isinstance(outcomes[name], PermanentError), name
    assert outcomes["throttled"].retry_after_s == 7
    unavailable = outcomes["unavailable"].retry_after_s
    assert unavailable is not None and 25 <= unavailable <= 30
    assert outcomes["forever"].retry_after_s == MAX_RETRY_AFTER_S
    assert outcomes["gateway"].retry_after_s is None
    bad = outcomes["bad"]
    assert bad is not None and "400 Bad Request" in bad.message and "title missing" in bad.message
    moved = outcomes["moved"]
    assert moved is not None and "https://elsewhere/hook" in moved.message and "set the target's url" in moved.message
    assert "NullPointerException" in str(outcomes["broken"])
    huge = outcomes["huge"]
    assert isinstance(huge, PermanentError) and len(huge.message) < 1000


async def test_no_answer_means_the_target_is_down() -> None:
    refused = target(f"http://127.0.0.1:{free_port()}/hook")
    try:
        [err] = await refused.apply([entry("e1")])
    finally:
        await refused.close()
    assert isinstance(err, TargetDownError) and "ConnectError" in err.message


async def test_a_request_past_its_timeout_is_the_target_down(upstream: tuple[Upstream, str]) -> None:
    up, url = upstream
    up.script["late"] = (200, {}, "too late", 2.0)
    t = target(url, timeout_ms=200)
    try:
        started = time.monotonic()
        late, fine = await t.apply([entry("late"), entry("fine")])
        took = time.monotonic() - started
    finally:
        await t.close()
    assert isinstance(late, TargetDownError) and "no answer within 200 ms" in late.message
    assert fine is None and took < 1.5  # sent together: the slow one does not hold up the other


async def test_a_call_keeps_a_bounded_number_of_requests_in_flight(upstream: tuple[Upstream, str]) -> None:
    up, url = upstream
    for i in range(100):
        up.script[f"e{i}"] = (200, {}, "ok", 0.02)
    t = target(url)
    try:
        assert await t.apply([entry(f"e{i}") for i in range(100)]) == [None] * 100
    finally:
        await t.close()
    assert 1 < up.most_in_flight <= MAX_IN_FLIGHT


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_s("120") == 120
    assert retry_after_s(formatdate(1_000_060, usegmt=True), now_s=1_000_000) == 60
    assert retry_after_s(formatdate(1_000_000, usegmt=True), now_s=1_000_060) == 0  # in the past: now
    for unreadable in (None, "", "soon", "-5", "1.5"):
        assert retry_after_s(unreadable) is None, unreadable


@pytest.mark.parametrize(
    ("cfg", "problem"),
    [
        ({"url": "ftp://h/x"}, "url"),
        ({"url": "http://user:secret@h/x"}, "url"),
        ({"url": "http://h/x", "method": "GET"}, "method"),
        ({"url": "http://h/x", "headers": {"walstream-id": "x"}}, "header walstream-id is set by walstream"),
        ({"url": "http://h/x", "headers": {"Host": "x", "Content-Length": "1"}}, "headers Content-Length, Host are"),
        ({"url": "http://h/x", "headers": {"X-A": "line\r\nX-Evil: 1"}}, "headers.X-A"),
        ({"url": "http://h/x", "headers": {"bad name": "v"}}, "headers.bad name"),
        ({"url": "http://h/x", "headers": {"x-a": "1", "X-A": "2"}}, "given twice"),
        ({"url": "http://h/x", "timeout_ms": 0}, "timeout_ms"),
        ({"url": "http://127.0.0.1:99999/hook"}, "url"),
        ({"url": "http://h/x", "pacing": {"max_per_s": 0.001}}, "max_per_s"),
    ],
)
def test_a_config_that_cannot_be_sent_is_refused(cfg: dict[str, Any], problem: str) -> None:
    with pytest.raises(NamespaceError, match=problem.replace(".", r"\.")):
        parse_namespace({"name": "hooks", "targets": [{"type": "http", **cfg}]})


async def test_a_retry_waits_at_least_as_long_as_the_target_asked(harness: Any) -> None:
    """The namespace's backoff is 1-5 ms (the harness's); a Retry-After of 30 s (an entry's
    attempt) or 20 s (the service down, no attempt spent) puts the retry that far out."""
    from tests.unit.test_delivery_agent import agent, send, timers
    from tests.unit.test_delivery_agent import entry as agent_entry

    wal, target, _ = harness
    target.script["e1"] = [TransientError("429 Too Many Requests", retry_after_s=30)]
    target.script["e2"] = [TargetDownError("503 Service Unavailable", retry_after_s=20)]
    clock = WriteClock()
    before_ms = time.time() * 1000
    async with agent(wal).test_context() as ctx:
        await send(ctx, agent_entry(1, clock), agent_entry(2, clock))
    due = {t["entry"]["id"]: t["due_ms"] for t in timers(wal) if t["kind"] == "retry"}
    assert due["e1"] >= before_ms + 30_000 and due["e2"] >= before_ms + 20_000, due
    assert target.applied == []
