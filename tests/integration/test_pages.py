"""The operator's pages in headless Chromium (Debian's package, driven by Playwright) against
a real worker with admin tokens set, Kafka and Elasticsearch.

Given a namespace with one delayed entry and one entry dead-lettered by Elasticsearch (its
title does not fit the index's mapping), an operator signs in through the login form, and:
the overview counts the delayed entry and the dead letter; the fleet page lists the worker
with all 4 partitions active; the table browser finds the delayed entry's timer in the
schedule table; the entry page says DELAYED; the dead-letter page shows the letter's payload
and error. The redrive button's dry run redrives nothing (no document at Elasticsearch);
once the mapping is fixed, a real redrive delivers it (the document is counted at
Elasticsearch). Each page's screenshot is saved under ``var/artefacts/pages/``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from elasticsearch import Elasticsearch
from playwright.sync_api import Browser, Page, sync_playwright

from tests.integration.conftest import Worker, put_movie, wait_until

pytestmark = pytest.mark.timeout(300)

ADMIN = "pages-admin-token-0123456789"
CHROMIUM = Path("/usr/bin/chromium")
ARTEFACTS = Path(__file__).resolve().parents[2] / "var" / "artefacts" / "pages"
#: headless, as root, on a machine without network: no sandbox, no background traffic
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser() -> Iterator[Browser]:
    assert CHROMIUM.exists(), "Debian's chromium is missing: `make browser` installs it"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        yield b
        b.close()


def shot(page: Page, name: str) -> None:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTEFACTS / f"{name}.png"), full_page=True)


def es_doc(es: Elasticsearch, index: str, doc_id: str) -> bool:
    es.indices.refresh(index=index)
    return bool(es.exists(index=index, id=doc_id))


def test_an_operator_reads_the_pages_and_redrives_a_dead_letter(
    start_worker: Callable[..., Worker], unique: str, es: Elasticsearch, browser: Browser
) -> None:
    index = f"{unique}_movies"
    es.indices.create(index=index, mappings={"properties": {"title": {"type": "integer"}, "year": {"type": "integer"}}})
    w = start_worker(WALSTREAM_ADMIN_TOKENS=ADMIN)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    with w.client() as c:
        r = c.put(f"/v1/namespaces/{unique}", headers=admin,
                  json={"name": unique, "targets": [{"type": "elasticsearch", "index_prefix": f"{unique}_"}]})
        assert r.status_code == 200, r.text
    wait_until(lambda: any(t.startswith(f"wal.{unique}:") for t in httpx.get(f"{w.url}/v1/health").json()["assigned"]),
               timeout_s=60, what="the worker to consume the namespace")
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    with w.client() as c:
        r = c.post("/v1/log/batch", json={"entries": [
            {"namespace": unique, "id": "heat", "key": "2", "payload": put_movie("2", "Heat", 1995)},
            {"namespace": unique, "id": "later", "key": "3", "payload": put_movie("3", "Ran", 1985),
             "lifecycle": {"deliver_at": later}},
        ]})
        assert {x["durable"] for x in r.json()["results"]} == {"SUCCESS"}, r.text
        wait_until(lambda: len(c.get(f"/v1/dlq/{unique}").json()["dead_letters"]) == 1, timeout_s=60,
                   what="the entry dead-lettered")

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(30_000)
    # the pages need the admin token: the login form keeps it
    page.goto(f"{w.url}/ui")
    assert "/ui/login" in page.url
    page.fill("input[name=token]", "a-wrong-token-0123456789")
    page.click("main button[type=submit]")
    assert "not an admin token" in page.inner_text("#message")
    page.fill("input[name=token]", ADMIN)
    page.click("main button[type=submit]")
    assert page.url.rstrip("/").endswith("/ui")

    # overview: the delayed entry and the dead letter are counted (the counts settle with the tables)
    def overview_row() -> list[str]:
        page.goto(f"{w.url}/ui")
        return [c.strip() for c in page.locator(f'tr[data-namespace="{unique}"] td').all_inner_texts()]

    row = wait_until(lambda: (r := overview_row())[2] == "1" and r[6] == "1" and r, timeout_s=30,
                     what="the overview to count the delayed entry and the dead letter")
    assert "elasticsearch" in row[7]
    shot(page, "overview")

    # fleet: this worker, every partition active
    page.goto(f"{w.url}/ui/fleet")
    worker_row = page.locator(f'tr[data-worker="{w.url}"]')
    assert worker_row.count() == 1
    assert worker_row.locator("td").nth(6).inner_text().strip() == "0, 1, 2, 3"
    assert "ready" in worker_row.locator("td").nth(4).inner_text()
    shot(page, "fleet")

    # table browser: the delayed entry's timer is in the schedule table, in one partition
    found = []
    for p in range(4):
        page.goto(f"{w.url}/ui/tables?table=walstream-schedule&partition={p}&contains=later")
        keys = page.locator("#rows code").all_inner_texts()
        if keys:
            found.append(p)
            assert all("later" in k for k in keys)
            shot(page, "table")
    assert len(found) == 1, found
    page.goto(f"{w.url}/ui/tables")
    shot(page, "tables")

    # entry lookup
    page.goto(f"{w.url}/ui/entry")
    page.fill("input[name=namespace]", unique)
    page.fill("input[name=id]", "later")
    page.click("main button[type=submit]")
    assert page.inner_text("#state") == "DELAYED"
    shot(page, "entry")

    # dead letters: the payload and the error
    page.goto(f"{w.url}/ui/dlq?namespace={unique}")
    letter = page.locator('tr[data-id="heat"]')
    assert letter.count() == 1
    assert "Heat" in letter.inner_text() and "PERMANENT" in letter.inner_text().upper()
    shot(page, "dlq")

    # a dry run redrives nothing
    page.click("#redrive-button")
    assert page.inner_text("#summary") == "1 dead letter(s) would be redriven."
    shot(page, "redrive-dry-run")
    time.sleep(3)
    assert not es_doc(es, index, "2")

    # once the mapping is fixed, the redrive delivers it
    es.indices.delete(index=index)
    es.indices.create(index=index, mappings={"properties": {"title": {"type": "keyword"}, "year": {"type": "integer"}}})
    page.goto(f"{w.url}/ui/dlq?namespace={unique}")
    page.uncheck("input[name=dry_run]")
    page.fill("input[name=rate]", "5")
    page.click("#redrive-button")
    assert "delivered 1" in page.inner_text("#summary"), page.inner_text("main")
    assert page.locator("#results .outcome").all_inner_texts() == ["DELIVERED"]
    shot(page, "redrive")
    assert wait_until(lambda: es_doc(es, index, "2"), timeout_s=30, what="the document at Elasticsearch")

    # each page as JSON too, with the token in a header; without it, 401
    with w.client() as c:
        assert c.get("/ui.json").status_code == 401
        doc = c.get("/ui.json", headers=admin).json()
    [ns] = [n for n in doc["namespaces"] if n["name"] == unique]
    assert ns["delayed"] == 1

    # signing out forgets the cookie: the pages send the browser to the form again
    page.goto(f"{w.url}/ui")
    page.click("#sign-out")
    assert page.url.startswith(f"{w.url}/ui/login")
    page.goto(f"{w.url}/ui/fleet")
    assert page.url.startswith(f"{w.url}/ui/login?next=%2Fui%2Ffleet"), page.url


def test_a_fleet_page_shows_both_workers_and_the_table_browser_reads_each_partition_on_its_owner(
    start_worker: Callable[..., Worker], unique: str
) -> None:
    """Two workers of one app, admin tokens set: the fleet page lists both, every partition
    active on one and standby on the other; a partition's rows asked of either worker are
    read on the worker holding it (the token passed on), and hold the entry written there."""
    env = {"WALSTREAM_ADMIN_TOKENS": ADMIN}
    admin = {"Authorization": f"Bearer {ADMIN}"}
    a = start_worker(**env)
    b = start_worker(**env)
    with a.client() as c:
        r = c.put(f"/v1/namespaces/{unique}", headers=admin,
                  json={"name": unique, "targets": [{"type": "noop"}]})
        assert r.status_code == 200, r.text
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()

    def settled() -> dict[str, Any] | None:
        with a.client() as c:
            fleet = c.get("/ui/fleet.json", headers=admin).json()
        held = fleet["partitions"]
        owners = {p: h["active"] for p, h in held.items()}
        if (len(fleet["workers"]) != 2 or sorted(owners) != ["0", "1", "2", "3"]
                or set(owners.values()) != {a.url, b.url}):
            return None
        return fleet if all(h["standby"] and h["standby"] != [h["active"]] for h in held.values()) else None

    fleet = wait_until(settled, timeout_s=120, what="both workers to hold partitions, each with a standby")
    with a.client() as c:
        r = c.post("/v1/log/batch", json={"entries": [
            {"namespace": unique, "id": f"e{n}", "key": f"k{n}", "payload": {"n": n},
             "lifecycle": {"deliver_at": later}}
            for n in range(40)]})
        assert {x["durable"] for x in r.json()["results"]} == {"SUCCESS"}, r.text

    def rows_everywhere() -> dict[str, set[str]] | None:
        found: dict[str, set[str]] = {}
        for w in (a, b):
            with w.client() as c:
                for p, held in fleet["partitions"].items():
                    page = c.get("/ui/tables.json", headers=admin,
                                 params={"table": "walstream-schedule", "partition": p, "limit": "1000"})
                    assert page.status_code == 200, page.text
                    doc = page.json()
                    assert doc["worker"] == held["active"], (w.url, p, doc["worker"])  # read on the owner
                    found.setdefault(p, set()).update(r["value"]["entry"]["id"] for r in doc["rows"])
        every = set().union(*found.values())
        return found if every == {f"e{n}" for n in range(40)} else None

    found = wait_until(rows_everywhere, timeout_s=60, what="every entry's timer in the schedule table")
    assert sum(len(ids) for ids in found.values()) == 40  # each in one partition only
    # without the token the pages refuse, and pass nothing on
    with b.client() as c:
        assert c.get("/ui/tables.json", params={"table": "walstream-schedule", "partition": "0"}).status_code == 401
