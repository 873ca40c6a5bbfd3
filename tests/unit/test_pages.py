"""The operator's pages (walstream.web.pages) on a worker's own web app: every page as HTML
and as JSON, the admin guard (Bearer header or the login form's cookie), the counts a
worker reports from its tables, the table browser's paging and filter, and escaping of
user data. Chromium drives them against a real worker in tests/integration/test_pages.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.unit.conftest import add_namespace, build_wal
from walstream import worker_report
from walstream.app import WalApp
from walstream.tables.entry_state import state_key
from walstream.web.pages.render import render_html
from walstream.web.pages.table_rows import browse

pytestmark = pytest.mark.timeout(60)

ADMIN = "admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
PAGES = ["/ui", "/ui/fleet", "/ui/tables", "/ui/entry?namespace=orders&id=o1", "/ui/dlq?namespace=orders"]


def run(tmp_path: Path, check: Callable[[WalApp, TestClient[Any, Any]], Awaitable[None]], **settings: Any) -> None:
    async def main() -> None:
        wal = build_wal("memory://", tmp_path, **settings)
        add_namespace(wal, {"name": "orders", "targets": [{"type": "noop"}]})
        async with TestClient(TestServer(cast(Any, wal.faust.web).web_app)) as client:
            await check(wal, client)

    asyncio.run(main())


def put_state(wal: WalApp, entry_id: str, state: str, targets: dict[str, Any] | None = None) -> None:
    doc = {"ns": "orders", "id": entry_id, "state": state, "offset": 1, "updated_ms": 1, "targets": targets or {}}
    wal.states.table.data.data[state_key("orders", entry_id)] = orjson.dumps(doc)


def test_every_page_answers_html_and_the_same_data_as_json(tmp_path: Path) -> None:
    async def check(wal: WalApp, c: TestClient[Any, Any]) -> None:
        for path in PAGES:
            html = await c.get(path)
            assert html.status == 200, (path, await html.text())
            assert html.content_type == "text/html" and "<nav>" in await html.text()
            base, _, query = path.partition("?")
            as_json = await c.get(f"{base}.json" + (f"?{query}" if query else ""))
            accepted = await c.get(path, headers={"Accept": "application/json"})
            assert as_json.status == accepted.status == 200
            assert as_json.content_type == "application/json"
            assert await as_json.json() == await accepted.json() or base in ("/ui", "/ui/fleet")  # times move
        overview = await (await c.get("/ui.json")).json()
        assert [ns["name"] for ns in overview["namespaces"]] == ["orders"]

    run(tmp_path, check)


def test_the_pages_need_an_admin_token_when_tokens_are_set(tmp_path: Path) -> None:
    async def check(wal: WalApp, c: TestClient[Any, Any]) -> None:
        for path in PAGES:
            page = await c.get(path, allow_redirects=False)
            assert page.status == 303 and page.headers["Location"].startswith("/ui/login?next=%2Fui"), path
            base, _, query = path.partition("?")
            as_json = await c.get(f"{base}.json" + (f"?{query}" if query else ""))
            assert as_json.status == 401 and "admin token" in (await as_json.json())["message"]
            wrong = await c.get(path, headers={"Authorization": "Bearer not-the-token-at-all"}, allow_redirects=False)
            assert wrong.status == 303
            assert (await c.get(path, headers=AUTH)).status == 200
        refused = await c.post("/ui/dlq/redrive", data={"namespace": "orders", "id": "x"})
        assert refused.status == 401
        # the login form: a wrong token is refused, the right one kept in a strict cookie
        bad = await c.post("/ui/login", data={"token": "guess-guess-guess", "next": "/ui/fleet"},
                           allow_redirects=False)
        assert bad.status == 403 and "not an admin token" in await bad.text()
        good = await c.post("/ui/login", data={"token": ADMIN, "next": "/ui/fleet"}, allow_redirects=False)
        assert good.status == 303 and good.headers["Location"] == "/ui/fleet"
        cookie = good.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert (await c.get("/ui/fleet", allow_redirects=False)).status == 200  # the cookie is sent back
        # never a redirect off the worker's pages
        away = await c.post("/ui/login", data={"token": ADMIN, "next": "//elsewhere.example/"}, allow_redirects=False)
        assert away.headers["Location"] == "/ui"

    run(tmp_path, check, admin_tokens=ADMIN)


def test_the_report_counts_what_waits_in_the_tables(tmp_path: Path) -> None:
    async def check(wal: WalApp, c: TestClient[Any, Any]) -> None:
        put_state(wal, "d1", "DELAYED", {"t1": {"state": "DELAYED"}})
        put_state(wal, "d2", "DELAYED", {"t1": {"state": "DELAYED"}})
        put_state(wal, "r1", "RETRYING", {"t1": {"state": "RETRYING"}, "t2": {"state": "DELIVERED"}})
        put_state(wal, "ok", "DELIVERED", {"t1": {"state": "DELIVERED"}})
        mine = (await (await c.get("/v1/internal/report")).json())["namespaces"]["orders"]
        assert (mine["delayed"], mine["retrying"], mine["pending"], mine["held"]) == (2, 1, 0, 0)
        assert mine["targets_pending"] == {"t1": 3}
        overview = await (await c.get("/ui.json")).json()
        [ns] = overview["namespaces"]
        assert (ns["delayed"], ns["retrying"], ns["dead_letters"]) == (2, 1, 0)
        html = await (await c.get("/ui")).text()
        assert '<tr data-namespace="orders">' in html

    run(tmp_path, check)


def test_rates_come_from_two_samples(tmp_path: Path) -> None:
    wal = build_wal("memory://", tmp_path)
    assert wal.report.rates() == {"writes_per_s": None, "delivered_per_s": None}
    wal.report.sample()
    wal.metrics.delivered.labels("orders", "noop").inc(10)
    wal.report._samples.append((wal.report._samples[0][0] + 2.0, 0.0, 10.0))
    assert wal.report.rates() == {"writes_per_s": 0.0, "delivered_per_s": 5.0}


def test_browse_pages_through_a_partition_in_key_order(tmp_path: Path) -> None:
    wal = build_wal("memory://", tmp_path)
    table = wal.states.table
    for n in range(25):
        table.data.data[b"k%02d" % n] = orjson.dumps({"n": n})
    table.data.data[b"not-json"] = b"\xff raw"
    first = browse(table, 0, limit=10)
    assert [r["key"] for r in first["rows"]] == [f"k{n:02d}" for n in range(10)]
    second = browse(table, 0, after=bytes.fromhex(first["next"]), limit=10)
    assert [r["value"]["n"] for r in second["rows"]] == list(range(10, 20))
    last = browse(table, 0, after=bytes.fromhex(second["next"]), limit=10)
    assert [r["key"] for r in last["rows"]][-1] == "not-json" and last["next"] is None
    assert last["rows"][-1]["value"] == "\\xff raw"
    assert [r["key"] for r in browse(table, 0, contains="k1")["rows"]] == [f"k{n}" for n in range(10, 20)]


def test_user_data_is_escaped(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    html = render_html("table.html", {"table": "walstream-entries", "partition": 0, "worker": "w", "contains": evil,
                                      "limit": 10, "next": None, "scanned": 1,
                                      "rows": [{"key": evil, "value": {"x": evil}, "key_hex": "00"}]}, "/ui/tables")
    assert evil not in html and "&lt;script&gt;" in html



def test_a_count_stops_at_its_limit_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_report, "COUNT_LIMIT", 2)

    async def check(wal: WalApp, c: TestClient[Any, Any]) -> None:
        for n in range(3):
            put_state(wal, f"d{n}", "DELAYED")
        mine = (await (await c.get("/v1/internal/report")).json())["namespaces"]["orders"]
        assert (mine["delayed"], mine["cut_short"]) == (2, True)
        overview = await (await c.get("/ui")).text()
        assert "counts cut short" in overview

    run(tmp_path, check)
