"""Answers a client reads for what it got wrong, on a worker's own web app: an Allow header
that names only what the route takes (HEAD only beside GET), and a 404 that says when the
namespace itself does not exist."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.unit.conftest import add_namespace, build_wal, hold_every_partition

pytestmark = pytest.mark.timeout(60)


def run(tmp_path: Path, check: Callable[[TestClient[Any, Any]], Awaitable[None]], held: bool = True) -> None:
    async def main() -> None:
        wal = build_wal("memory://", tmp_path)
        add_namespace(wal, {"name": "orders", "targets": [{"type": "noop"}]})
        if held:
            hold_every_partition(wal)
        async with TestClient(TestServer(cast(Any, wal.faust.web).web_app)) as client:
            await check(client)

    asyncio.run(main())


def test_allow_names_head_only_where_get_is_allowed(tmp_path: Path) -> None:
    async def check(c: TestClient[Any, Any]) -> None:
        for method in ("GET", "HEAD", "PUT"):
            r = await c.request(method, "/v1/log")
            assert (r.status, r.headers["Allow"]) == (405, "POST"), method
        r = await c.request("PUT", "/v1/health")
        assert (r.status, r.headers["Allow"]) == (405, "GET, HEAD")
        assert (await c.request("HEAD", "/v1/health")).status == 200

    run(tmp_path, check)


def test_a_404_says_when_the_namespace_does_not_exist(tmp_path: Path) -> None:
    async def check(c: TestClient[Any, Any]) -> None:
        r = await c.get("/v1/log/nosuch/x")
        assert r.status == 404 and "there is no such namespace" in (await r.json())["message"]
        r = await c.get("/v1/log/orders/x")
        assert r.status == 404 and "never written" in (await r.json())["message"]
        r = await c.get("/v1/dlq/nosuch")
        assert r.status == 404 and "there is no namespace 'nosuch'" in (await r.json())["message"]
        r = await c.get("/v1/dlq/orders")
        assert r.status == 200 and (await r.json()) == {"dead_letters": []}

    run(tmp_path, check)


def test_before_every_partition_is_held_fleet_wide_answers_say_they_are_incomplete(tmp_path: Path) -> None:
    """A worker that knows no assignment yet (it just started) must not answer "no such
    entry" or "no dead letters" for partitions another worker may hold."""
    async def check(c: TestClient[Any, Any]) -> None:
        r = await c.get("/v1/log/orders/x")
        assert r.status == 503 and "held by no worker yet" in (await r.json())["message"]
        r = await c.get("/v1/dlq/orders")
        assert r.status == 503 and "held by no worker yet" in (await r.json())["message"]
        r = await c.get("/ui/dlq.json?namespace=orders")
        assert r.status == 503
        r = await c.delete("/v1/namespaces/orders")
        assert r.status == 503 and "held by no worker yet" in (await r.json())["message"]

    run(tmp_path, check, held=False)
