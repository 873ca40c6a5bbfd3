"""The operator's pages (walstream.web.pages) on a worker's own web app: every page as HTML
and as JSON, the admin guard (Bearer header or the login form's cookie), the counts a
worker reports from its tables, the table browser's paging and filter, and escaping of
user data. Chromium drives them against a real worker in tests/integration/test_pages.py."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.unit.conftest import add_namespace, build_wal, hold_every_partition
from walstream import worker_report
from walstream.app import WalApp
from walstream.tables.dead_letter_index import index_key
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
        hold_every_partition(wal)
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
            def same(doc: dict[str, Any]) -> dict[str, Any]:
                return {k: v for k, v in doc.items() if k != "form_id"}  # one per rendering of a form

            assert same(await as_json.json()) == same(await accepted.json()) or base in ("/ui", "/ui/fleet")  # times
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
        assert (await c.get("/ui.json")).status == 200  # the cookie covers the JSON twins too
        # never a redirect off the worker's pages, nor a header broken by a line break
        for away in ("//elsewhere.example/", "/uievil", "/ui\r\nX-Evil: 1", "https://elsewhere.example/ui"):
            r = await c.post("/ui/login", data={"token": ADMIN, "next": away}, allow_redirects=False)
            assert (r.status, r.headers["Location"]) == (303, "/ui"), away

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


def test_the_overview_names_the_partitions_it_could_not_count(tmp_path: Path) -> None:
    """A worker that holds no partition yet (the harness has no consumer group) counts none:
    the overview says which partitions are missing from its sums rather than show them as
    the whole."""
    async def check(wal: WalApp, c: TestClient[Any, Any]) -> None:
        overview = await (await c.get("/ui.json")).json()
        every = list(range(wal.settings.partitions))
        assert overview["uncounted_partitions"] == every
        assert f"Partitions {', '.join(map(str, every))} are not counted" in await (await c.get("/ui")).text()

    run(tmp_path, check)


def test_pages_are_not_cached_and_link_their_json_with_the_same_query(tmp_path: Path) -> None:
    async def check(wal: WalApp, c: TestClient[Any, Any]) -> None:
        for path in ("/ui/dlq?namespace=orders", "/ui/dlq.json?namespace=orders"):
            assert (await c.get(path)).headers["Cache-Control"] == "no-store"
        html = await (await c.get("/ui/dlq?namespace=orders")).text()
        assert 'href="/ui/dlq.json?namespace=orders" id="json-link"' in html

    run(tmp_path, check)


def test_the_entry_page_shows_the_status_as_the_api_answers_it(tmp_path: Path) -> None:
    async def check(wal: WalApp, c: TestClient[Any, Any]) -> None:
        doc = {"ns": "orders", "id": "o1", "state": "DELAYED", "offset": 3, "updated_ms": 1,
               "due_ms": 1_800_000_000_000, "targets": {"t1": {"state": "DELAYED", "type": "noop"}}}
        wal.states.table.data.data[state_key("orders", "o1")] = orjson.dumps(doc)
        api = await (await c.get("/v1/log/orders/o1")).json()
        page = await (await c.get("/ui/entry.json?namespace=orders&id=o1")).json()
        assert page["entry"] == api and api["due_at"].startswith("2027-01-15")
        assert "2027-01-15" in await (await c.get("/ui/entry?namespace=orders&id=o1")).text()

    run(tmp_path, check)


def letter(entry_id: str) -> dict[str, Any]:
    return {"ns": "orders", "id": entry_id, "key": "k", "target": {"type": "noop"}, "target_id": "t1",
            "error_class": "permanent", "message": "no", "attempts": 1, "first_failure_s": 1.0,
            "last_failure_s": 2.0, "source": ["wal.orders", 0, 1], "entry": {"payload": {"x": 1}}}


def test_a_redrive_that_would_hold_the_request_too_long_is_refused_and_sends_nothing(tmp_path: Path) -> None:
    async def check(wal: WalApp, c: TestClient[Any, Any]) -> None:
        ids = [f"d{n:02d}" for n in range(20)]  # 19 gaps at 0.02 per second: 950 s
        for entry_id in ids:
            wal.dlq_index.table.data.data[index_key("orders", entry_id, "t1")] = orjson.dumps(letter(entry_id))
        sent: list[Any] = []

        async def send(*args: Any) -> None:
            sent.append(args)

        wal.commands.send = send  # type: ignore[method-assign]
        r = await c.post("/v1/dlq/orders/redrive", json={"dry_run": False, "rate": 0.02})
        assert r.status == 400 and "raise the rate or redrive fewer" in (await r.json())["message"]
        r = await c.post("/ui/dlq/redrive", data=[("namespace", "orders"), ("rate", "0.02"), *(("id", i) for i in ids)])
        assert r.status == 400 and "raise the rate" in await r.text()
        assert sent == []
        listed = await (await c.get("/ui/dlq.json?namespace=orders")).json()
        assert [d["id"] for d in listed["dead_letters"]] == ids
        assert listed["dead_letters"][0]["entry"] == {"payload": {"x": 1}}

    run(tmp_path, check)


def test_many_ids_are_not_named_in_the_question_to_other_workers(tmp_path: Path) -> None:
    """A peer refuses a request line over 8 KiB: past IDS_IN_QUERY ids, the other workers are
    asked for every letter and the ids picked here; up to it, they are named."""
    from walstream.fleet import PeerAnswer
    from walstream.web.dead_letters import IDS_IN_QUERY

    async def check(wal: WalApp, c: TestClient[Any, Any]) -> None:
        asked: list[dict[str, Any]] = []
        theirs = [letter(f"p{n:03d}") for n in range(200)]

        async def ask_peers(path: str, params: Any = None, timeout_s: float | None = None) -> list[PeerAnswer]:
            asked.append(dict(params))
            named = params.get("id")
            rows = [r for r in theirs if named is None or r["id"] in named]
            return [PeerAnswer("http://peer:1", 200, {"_rows": rows})]

        wal.fleet.ask_peers = ask_peers  # type: ignore[method-assign]
        few = [f"p{n:03d}" for n in range(3)]
        many = [f"p{n:03d}" for n in range(0, 2 * IDS_IN_QUERY + 20, 2)]
        for ids in (few, many):
            r = await c.post("/v1/dlq/orders/redrive", json={"ids": ids})
            assert sorted(d["id"] for d in (await r.json())["would_redrive"]) == ids
        assert asked[0]["id"] == few and "id" not in asked[1] and asked[1]["limit"] == "100000"

    run(tmp_path, check)


def test_a_redrive_form_sent_twice_redrives_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A double click, a reload or a retry after a lost answer sends the same form again: its
    letters are redriven once, and every sending is answered with that redrive's outcome."""

    async def settled_at_once(self: Any, rows: list[dict[str, Any]], sent_ms: int, wait_s: float) -> list[Any]:
        return [{"id": r["id"], "target_id": r["target_id"], "outcome": "DELIVERED", "message": None} for r in rows]

    monkeypatch.setattr("walstream.web.dead_letters.DeadLetterQueue._outcomes", settled_at_once)

    async def check(wal: WalApp, c: TestClient[Any, Any]) -> None:
        for entry_id in ("d1", "d2"):
            wal.dlq_index.table.data.data[index_key("orders", entry_id, "t1")] = orjson.dumps(letter(entry_id))
        sent: list[Any] = []

        async def send(*args: Any) -> None:
            await asyncio.sleep(0.05)  # the second sending arrives while the first is sending
            sent.append(args)

        wal.commands.send = send  # type: ignore[method-assign]
        html = await (await c.get("/ui/dlq?namespace=orders")).text()
        [form_id] = re.findall(r'name="form_id" value="([^"]+)"', html)
        form = [("namespace", "orders"), ("id", "d1"), ("id", "d2"), ("form_id", form_id)]
        # a dry run of the same form sends nothing and does not count as its sending
        dry = await c.post("/ui/dlq/redrive", data=[*form, ("dry_run", "on")])
        assert dry.status == 200 and sent == []
        first, second = await asyncio.gather(c.post("/ui/dlq/redrive", data=form),
                                             c.post("/ui/dlq/redrive", data=form))
        assert first.status == second.status == 200
        assert len(sent) == 2, sent  # d1 and d2, once each
        pages = [await first.text(), await second.text()]
        assert sum('id="repeated"' in p for p in pages) == 1 and all("Redriven 2" in p for p in pages)
        again = await c.post("/ui/dlq/redrive", data=form, headers={"Accept": "application/json"})
        assert (await again.json())["repeated"] is True and len(sent) == 2
        # a new rendering of the form is a new redrive
        [fresh] = re.findall(r'name="form_id" value="([^"]+)"', await (await c.get("/ui/dlq?namespace=orders")).text())
        assert fresh != form_id
        await c.post("/ui/dlq/redrive", data=[*form[:3], ("form_id", fresh)])
        assert len(sent) == 4

    run(tmp_path, check)


def test_sign_out_forgets_the_cookie(tmp_path: Path) -> None:
    async def check(wal: WalApp, c: TestClient[Any, Any]) -> None:
        assert 'id="sign-out"' not in await (await c.get("/ui", headers=AUTH)).text()  # no cookie: nothing to forget
        await c.post("/ui/login", data={"token": ADMIN, "next": "/ui"}, allow_redirects=False)
        assert 'id="sign-out"' in await (await c.get("/ui")).text()
        out = await c.post("/ui/logout", allow_redirects=False)
        assert out.status == 303 and out.headers["Location"] == "/ui/login"
        assert "Max-Age=0" in out.headers["Set-Cookie"]
        assert (await c.get("/ui", allow_redirects=False)).status == 303  # signed out: to the form again

    run(tmp_path, check, admin_tokens=ADMIN)


def test_a_page_refuses_a_bad_query_with_a_page_and_its_json_twin_with_json(tmp_path: Path) -> None:
    async def check(wal: WalApp, c: TestClient[Any, Any]) -> None:
        page = await c.get("/ui/tables?table=walstream-schedule&partition=x")
        assert page.status == 400 and page.content_type == "text/html"
        assert "partition" in await page.text() and "<nav>" in await page.text()
        twin = await c.get("/ui/tables.json?table=walstream-schedule&partition=x")
        assert twin.status == 400 and "partition" in (await twin.json())["message"]
        api = await c.get("/v1/dlq/orders?limit=x", headers={"Accept": "text/html"})
        assert api.status == 400 and api.content_type == "application/json"  # the API stays JSON

    run(tmp_path, check)


def test_a_trailing_slash_is_redirected_to_the_page_or_resource(tmp_path: Path) -> None:
    async def check(wal: WalApp, c: TestClient[Any, Any]) -> None:
        for path, to in (("/ui/", "/ui"), ("/ui/fleet/", "/ui/fleet"), ("/v1/namespaces/", "/v1/namespaces")):
            r = await c.get(path, allow_redirects=False)
            assert (r.status, r.headers["Location"]) == (308, to), path
        assert (await c.get("/ui/nothing-here/", allow_redirects=False)).status == 404

    run(tmp_path, check)


def test_a_namespace_that_never_existed_is_a_404_for_listing_and_redrive(tmp_path: Path) -> None:
    async def check(wal: WalApp, c: TestClient[Any, Any]) -> None:
        r = await c.post("/v1/dlq/nope/redrive", json={"dry_run": True})
        assert r.status == 404 and "there is no namespace 'nope'" in (await r.json())["message"]
        page = await c.get("/ui/dlq?namespace=nope")
        assert page.status == 404 and "there is no namespace" in await page.text()
        r = await c.post("/ui/dlq/redrive", data={"namespace": "nope", "id": "x", "dry_run": "on"})
        assert r.status == 404
        # a deleted namespace's letters stay listed
        wal.dlq_index.table.data.data[index_key("gone", "g1", "t1")] = orjson.dumps(letter("g1") | {"ns": "gone"})
        assert (await c.get("/v1/dlq/gone")).status == 200

    run(tmp_path, check)
