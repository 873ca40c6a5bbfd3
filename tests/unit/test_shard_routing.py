"""Shards (walstream.shards, walstream.shard_router): each shard its own consumer group,
tables and command topic; requests about another shard's namespace forwarded to it, answered
503 naming the shard when it cannot be, and never forwarded twice. Two workers' web apps
(shards ``a`` and ``b``) talk over real loopback HTTP; their tables are in memory. The fleet
test against Kafka is tests/integration/test_shards.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from aiohttp import FormData, web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import ValidationError

from tests.unit.conftest import FakeChangelog, MemoryConsumer, add_namespace, free_port, hold_every_partition
from walstream import shard_router
from walstream.app import WalApp, build_app
from walstream.settings import Settings
from walstream.shard_router import ANSWERED_BY, FORWARDED_BY
from walstream.shards import group_id, parse_shard_urls
from walstream.tables.entry_state import state_key

pytestmark = pytest.mark.timeout(60)

ADMIN = "admin-token-0123456789"
Check = Callable[[WalApp, TestClient[Any, Any], WalApp, TestClient[Any, Any]], Awaitable[None]]


def worker(tmp_path: Path, shard: str, **settings: Any) -> WalApp:
    s = Settings(store="memory://", datadir=tmp_path / shard, app_id="unit-shards", shard=shard, **settings)
    wal = build_app(s, offsets_port=MemoryConsumer())
    wal.changelogs.send_batch = FakeChangelog().send_batch  # type: ignore[method-assign]
    for name, of in (("na", "a"), ("nb", "b")):
        add_namespace(wal, {"name": name, "shard": of, "targets": [{"type": "noop"}]})
    hold_every_partition(wal)

    async def consumed(shard: str, namespace: str) -> bool:
        return True  # every shard has consumed its namespaces (unless a test says otherwise)

    wal.shard_router.consumed = consumed
    return wal


def put_state(wal: WalApp, ns: str, entry_id: str, state: str) -> None:
    doc = {"ns": ns, "id": entry_id, "state": state, "offset": 7, "partition": 0, "updated_ms": 1, "targets": {}}
    wal.states.table.data.data[state_key(ns, entry_id)] = orjson.dumps(doc)


def run(tmp_path: Path, check: Check, a_only: dict[str, Any] | None = None, **settings: Any) -> None:
    """Worker ``a`` (its router pointing shard ``b`` at worker ``b``'s server) and worker ``b``;
    ``a_only``: settings of worker ``a`` alone."""

    async def main() -> None:
        a, b = worker(tmp_path, "a", **settings, **(a_only or {})), worker(tmp_path, "b", **settings)
        server_b = TestServer(cast(Any, b.faust.web).web_app)
        async with TestClient(server_b) as cb, TestClient(TestServer(cast(Any, a.faust.web).web_app)) as ca:
            a.shard_router.urls = {"b": str(server_b.make_url("")).rstrip("/")}
            try:
                await check(a, ca, b, cb)
            finally:
                await a.shard_router.close()

    asyncio.run(main())


def test_each_shard_is_its_own_consumer_group_with_its_own_tables_and_commands(tmp_path: Path) -> None:
    a, default = worker(tmp_path, "a"), Settings(app_id="unit-shards")
    assert a.faust.conf.id == "unit-shards.shard-a" == group_id("unit-shards", "a")
    assert a.command_topic == "unit-shards.shard-a.commands"
    assert str(a.schedule.table.changelog_topic.get_topic_name()).startswith("unit-shards.shard-a-")
    assert a.settings.group_instance_id is not None and a.settings.group_instance_id.startswith("unit-shards.shard-a-")
    # the default shard keeps the app id (existing deployments' groups and tables)
    assert default.group_id == "unit-shards"
    # every shard shares the registry
    assert a.settings.namespaces_topic == default.namespaces_topic == "unit-shards.namespaces"


def test_a_request_about_another_shards_namespace_is_answered_by_that_shard(tmp_path: Path) -> None:
    async def check(a: WalApp, ca: TestClient[Any, Any], b: WalApp, cb: TestClient[Any, Any]) -> None:
        put_state(b, "nb", "e1", "DELIVERED")
        put_state(a, "na", "e2", "DELAYED")
        direct = await cb.get("/v1/log/nb/e1")
        forwarded = await ca.get("/v1/log/nb/e1")
        assert forwarded.status == direct.status == 200
        assert forwarded.headers[ANSWERED_BY] == "b"
        assert await forwarded.json() == await direct.json()
        # the worker's own shard is answered from its own tables, not forwarded
        own = await ca.get("/v1/log/na/e2")
        assert own.status == 200 and ANSWERED_BY not in own.headers and (await own.json())["state"] == "DELAYED"
        # an unknown namespace is this worker's 404, not a guess at a shard
        unknown = await ca.get("/v1/log/nx/e1")
        assert unknown.status == 404 and "no such namespace" in (await unknown.json())["message"]
        # the pages too: an entry, dead letters (HTML and JSON)
        page = await ca.get("/ui/entry", params={"namespace": "nb", "id": "e1"})
        assert page.status == 200 and page.headers[ANSWERED_BY] == "b" and page.content_type == "text/html"
        assert "DELIVERED" in await page.text()
        letters = await ca.get("/ui/dlq.json", params={"namespace": "nb"})
        assert letters.status == 200 and letters.headers[ANSWERED_BY] == "b"
        assert (await ca.get("/v1/dlq/nb")).headers[ANSWERED_BY] == "b"

    run(tmp_path, check)


def test_the_answering_shard_checks_the_callers_token(tmp_path: Path) -> None:
    """The caller's Authorization and cookie go along: the shard holding the data checks
    them too."""

    async def check(a: WalApp, ca: TestClient[Any, Any], b: WalApp, cb: TestClient[Any, Any]) -> None:
        put_state(b, "nb", "e1", "DELIVERED")
        refused = await ca.get("/ui/entry.json", params={"namespace": "nb", "id": "e1"})
        assert refused.status == 401  # by a itself: it checks before forwarding (and b after)
        bearer = await ca.get("/ui/entry.json", params={"namespace": "nb", "id": "e1"},
                              headers={"Authorization": f"Bearer {ADMIN}"})
        assert bearer.status == 200 and (await bearer.json())["entry"]["state"] == "DELIVERED"
        cookie = await ca.get("/ui/entry.json", params={"namespace": "nb", "id": "e1"},
                              headers={"Cookie": f"walstream_admin={ADMIN}"})
        assert cookie.status == 200
        # a form post (the redrive button) goes along with its body
        redrive = await ca.post("/ui/dlq/redrive", data={"namespace": "nb", "id": "e1", "dry_run": "on"},
                                headers={"Authorization": f"Bearer {ADMIN}", "Accept": "application/json"})
        assert redrive.headers[ANSWERED_BY] == "b" and redrive.status == 200, await redrive.text()
        assert redrive.status == 200 and (await redrive.json())["dry_run"] is True

    run(tmp_path, check, admin_tokens=ADMIN)


def test_a_shard_without_an_url_is_named_with_the_setting(tmp_path: Path) -> None:
    async def check(a: WalApp, ca: TestClient[Any, Any], b: WalApp, cb: TestClient[Any, Any]) -> None:
        a.shard_router.urls = {}
        r = await ca.get("/v1/log/nb/e1")
        body = await r.json()
        assert r.status == 503 and body["state"] == "UNKNOWN" and body["id"] == "e1"
        assert "shard 'b'" in body["message"] and "WALSTREAM_SHARD_URLS=b=" in body["message"]
        r = await ca.get("/v1/dlq/nb")
        assert r.status == 503 and "WALSTREAM_SHARD_URLS" in (await r.json())["message"]

    run(tmp_path, check)


def test_a_namespace_no_worker_of_its_shard_ever_consumed_is_answered_here(tmp_path: Path) -> None:
    asked: list[tuple[str, str]] = []

    async def check(a: WalApp, ca: TestClient[Any, Any], b: WalApp, cb: TestClient[Any, Any]) -> None:
        async def never(shard: str, namespace: str) -> bool:
            asked.append((shard, namespace))
            return False

        a.shard_router.urls = {}
        a.shard_router.consumed = never
        r = await ca.get("/v1/log/nb/e1")
        assert r.status == 404 and "never written, not yet consumed" in (await r.json())["message"]
        r = await ca.get("/v1/dlq/nb")
        assert r.status == 200 and (await r.json())["dead_letters"] == []
        assert asked == [("b", "nb")]  # Kafka is asked once for both: the answer is reused a moment
        # once consumed, always asked of the shard (the answer is remembered)
        async def yes(shard: str, namespace: str) -> bool:
            return True

        a.shard_router.consumed = yes
        a.shard_router._unconsumed_until.clear()  # the moment is over
        assert (await ca.get("/v1/log/nb/e1")).status == 503
        a.shard_router.consumed = never
        assert (await ca.get("/v1/log/nb/e1")).status == 503

    run(tmp_path, check)


def test_a_shard_that_does_not_answer_is_a_503_and_a_write_may_have_happened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shard_router, "READ_TIMEOUT_S", 0.3)
    monkeypatch.setattr(shard_router, "WRITE_TIMEOUT_S", 0.3)
    monkeypatch.setattr(shard_router, "REDRIVE_TIMEOUT_S", 20.0)

    async def check(a: WalApp, ca: TestClient[Any, Any], b: WalApp, cb: TestClient[Any, Any]) -> None:
        a.shard_router.urls = {"b": f"http://127.0.0.1:{free_port()}"}  # nothing listens
        r = await ca.get("/v1/log/nb/e1")
        body = await r.json()
        assert r.status == 503 and body["state"] == "UNKNOWN" and "did not answer" in body["message"]
        r = await ca.delete("/v1/log/nb/e1")
        message = (await r.json())["message"]
        assert r.status == 503 and "may have been applied" not in message, message  # refused: nothing sent
        # a stalled shard: it took the request and never answers
        stalled = web.Application()

        async def hang(request: web.Request) -> web.Response:
            await asyncio.sleep(60)
            return web.Response()

        stalled.router.add_route("*", "/{tail:.*}", hang)
        async with TestServer(stalled) as server:
            a.shard_router.urls = {"b": str(server.make_url("")).rstrip("/")}
            r = await ca.delete("/v1/log/nb/e1")
            assert r.status == 503 and "may have been applied" in (await r.json())["message"]
            # a dry-run redrive is a read: bounded as one, not as a redrive's sending
            started = time.monotonic()
            r = await ca.post("/v1/dlq/nb/redrive", json={"ids": ["e1"]})
            assert r.status == 503 and time.monotonic() - started < 5
            r = await ca.post("/ui/dlq/redrive", data={"namespace": "nb", "id": "e1", "dry_run": "on"})
            assert r.status == 503 and r.content_type == "text/html"  # a page says it as a page
            assert time.monotonic() - started < 10

    run(tmp_path, check)


def test_a_worker_never_forwards_what_it_would_refuse_itself(tmp_path: Path) -> None:
    """Worker a has admin tokens, worker b has none: a caller without a token gets through a
    nothing it could not do to a's own namespaces."""

    async def check(a: WalApp, ca: TestClient[Any, Any], b: WalApp, cb: TestClient[Any, Any]) -> None:
        put_state(b, "nb", "e1", "DELIVERED")
        for method, path, kwargs in (
            ("DELETE", "/v1/namespaces/nb", {}),
            ("POST", "/v1/dlq/nb/redrive", {"json": {"dry_run": True}}),
            ("GET", "/ui/dlq.json?namespace=nb", {}),
            ("GET", "/ui/entry.json?namespace=nb&id=e1", {}),
        ):
            r = await ca.request(method, path, allow_redirects=False, **kwargs)
            assert r.status == 401 and ANSWERED_BY not in r.headers, (method, path, r.status)
        page = await ca.get("/ui/dlq?namespace=nb", allow_redirects=False)
        assert page.status == 303 and page.headers["Location"].startswith("/ui/login")
        # with the token, the same requests go to shard b
        auth = {"Authorization": f"Bearer {ADMIN}"}
        r = await ca.post("/v1/dlq/nb/redrive", json={"dry_run": True}, headers=auth)
        assert r.headers.get(ANSWERED_BY) == "b" and r.status in (200, 404)
        assert (await ca.get("/ui/entry.json?namespace=nb&id=e1", headers=auth)).headers[ANSWERED_BY] == "b"

    run(tmp_path, check, a_only={"admin_tokens": ADMIN})


def test_head_goes_where_get_goes(tmp_path: Path) -> None:
    async def check(a: WalApp, ca: TestClient[Any, Any], b: WalApp, cb: TestClient[Any, Any]) -> None:
        put_state(b, "nb", "e1", "DELIVERED")
        r = await ca.head("/v1/log/nb/e1")
        assert r.status == 200 and r.headers[ANSWERED_BY] == "b"
        assert (await ca.head("/v1/dlq/nb")).headers[ANSWERED_BY] == "b"

    run(tmp_path, check)


def test_a_form_a_page_cannot_read_is_refused_before_it_is_read_or_forwarded(tmp_path: Path) -> None:
    async def check(a: WalApp, ca: TestClient[Any, Any], b: WalApp, cb: TestClient[Any, Any]) -> None:
        form = FormData()
        form.add_field("namespace", "nb")
        form.add_field("id", "e1")
        form.add_field("upload", b"x", filename="x.bin")  # makes it multipart
        r = await ca.post("/ui/dlq/redrive", data=form)
        assert r.status == 415 and ANSWERED_BY not in r.headers and "x-www-form-urlencoded" in await r.text()
        for path in ("/ui/dlq/redrive", "/ui/login"):
            r = await ca.post(path, data=b"namespace=n\xffb&id=e1&token=\xff",
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
            assert r.status == 400 and "not UTF-8" in await r.text(), path
        r = await ca.post("/ui/dlq/redrive", data=b"namespace=nb&id=e1",
                          headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-16le"})
        assert r.status == 415 and "UTF-8" in await r.text()

    run(tmp_path, check)


def test_a_body_over_the_limit_is_refused_in_json(tmp_path: Path) -> None:
    async def check(a: WalApp, ca: TestClient[Any, Any], b: WalApp, cb: TestClient[Any, Any]) -> None:
        r = await ca.post("/v1/dlq/nb/redrive", data=b"x" * 4096, headers={"Content-Type": "application/json"})
        assert r.status == 413 and "message" in await r.json()

    run(tmp_path, check, max_request_bytes=1024)


def test_a_namespace_cannot_move_to_another_shard(tmp_path: Path) -> None:
    async def check(a: WalApp, ca: TestClient[Any, Any], b: WalApp, cb: TestClient[Any, Any]) -> None:
        r = await ca.put("/v1/namespaces/na", json={"name": "na", "shard": "b", "targets": [{"type": "noop"}]})
        message = (await r.json())["message"]
        assert r.status == 409 and "cannot move to shard 'b'" in message and "Create another namespace" in message
        assert a.registry.get("na") is not None and a.registry.get("na").shard == "a"  # type: ignore[union-attr]

    run(tmp_path, check)


def test_a_forwarded_request_is_never_forwarded_again(tmp_path: Path) -> None:
    """A wrong URL (shard b's pointing at shard a's workers) ends in a 503, not a loop."""

    async def check(a: WalApp, ca: TestClient[Any, Any], b: WalApp, cb: TestClient[Any, Any]) -> None:
        b.shard_router.urls = {"a": str(cb.make_url("")).rstrip("/")}  # b's "shard a" is b itself
        r = await cb.get("/v1/log/na/e1")
        message = (await r.json())["message"]
        assert r.status == 503 and "forwarded here by shard 'b'" in message, message
        r = await cb.get("/v1/log/na/e1", headers={FORWARDED_BY: "c"})
        assert r.status == 503 and "shard 'c'" in (await r.json())["message"]

    run(tmp_path, check)


def test_the_overview_counts_its_own_shard_and_names_the_others(tmp_path: Path) -> None:
    async def check(a: WalApp, ca: TestClient[Any, Any], b: WalApp, cb: TestClient[Any, Any]) -> None:
        overview = await (await ca.get("/ui.json")).json()
        assert [ns["name"] for ns in overview["namespaces"]] == ["na"]
        assert overview["shard"] == "a"
        assert overview["other_shards"] == [{"shard": "b", "namespaces": ["nb"], "url": None}]
        assert 'data-shard="b"' in await (await ca.get("/ui")).text()

    run(tmp_path, check)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("b", "give shard=URL"),
        ("B=http://x:1", "give shard=URL"),
        ("b=ftp://x", "must be http(s)://host[:port]"),
        ("b=http://x:1/path", "must be http(s)://host[:port]"),
        ("b=http://x:1,b=http://y:1", "given twice"),
    ],
)
def test_shard_urls_that_cannot_be_used_are_refused_at_start(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse_shard_urls(text)
    with pytest.raises(ValidationError):
        Settings(shard_urls=text)


def test_shard_names_are_checked_like_a_namespaces(tmp_path: Path) -> None:
    assert parse_shard_urls(" b=http://h:1/ , c=https://h ") == {"b": "http://h:1", "c": "https://h"}
    for bad in ("Shard A", "-a", "a.b", ""):
        with pytest.raises(ValidationError):
            Settings(shard=bad)
