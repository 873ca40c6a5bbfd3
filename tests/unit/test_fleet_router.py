"""walstream.fleet.Fleet against real HTTP peers on loopback (small aiohttp servers standing
in for the other workers): who is asked, what an answer that did not come is, and that a peer
that did not answer is skipped, not asked again, for a while."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from tests.unit.conftest import free_port
from walstream.fleet import Distribution, Fleet

pytestmark = pytest.mark.timeout(60)


class Peers:
    """Peers on loopback: ``ok`` answers 200 with JSON, ``missing`` 404, ``hung`` never
    answers, ``text`` answers 200 without JSON, ``down`` refuses connections. Counts the
    requests each one received."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.urls: dict[str, str] = {}
        self._runners: list[web.AppRunner] = []
        self.release = asyncio.Event()

    async def start(self) -> None:
        async def ok(request: web.Request) -> web.Response:
            self.hits["ok"] += 1
            return web.json_response({"q": dict(request.query)})

        async def missing(request: web.Request) -> web.Response:
            self.hits["missing"] += 1
            return web.json_response({"message": "no such entry"}, status=404)

        async def hung(request: web.Request) -> web.Response:
            self.hits["hung"] += 1
            await self.release.wait()
            return web.json_response({})

        async def text(request: web.Request) -> web.Response:
            self.hits["text"] += 1
            return web.Response(text="not json")

        for name, handler in (("ok", ok), ("missing", missing), ("hung", hung), ("text", text)):
            app = web.Application()
            app.router.add_get("/x", handler)
            runner = web.AppRunner(app)
            await runner.setup()
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            self._runners.append(runner)
            self.urls[name] = f"http://127.0.0.1:{port}"
        self.urls["down"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    async def stop(self) -> None:
        self.release.set()
        for r in self._runners:
            await r.cleanup()


@pytest.fixture
async def peers() -> AsyncIterator[Peers]:
    p = Peers()
    await p.start()
    yield p
    await p.stop()


def distribution(urls: dict[str, str], me: str) -> Callable[[], Distribution]:
    """Faust's shape: {url: {topic: [partitions]}}; this worker (``me``) is in it too."""
    holding = {me: {"t": [0]}}
    holding.update({url + "/": {"t": [i + 1]} for i, url in enumerate(urls.values())})
    return lambda: holding


async def test_every_other_worker_is_asked_once_and_each_answer_says_what_it_is(peers: Peers) -> None:
    me = "http://127.0.0.1:1"
    fleet = Fleet(me, distribution(peers.urls, me), timeout_s=1.0)
    try:
        # Given this worker and five peers, when all are asked
        answers = {a.peer: a for a in await fleet.ask_peers("/x", {"local": "1"})}
        # Then this worker is never asked, and every peer is (trailing slashes dropped)
        assert sorted(answers) == sorted(peers.urls.values())
        assert fleet.peers() == sorted(peers.urls.values())
        assert dict(peers.hits) == {"ok": 1, "missing": 1, "hung": 1, "text": 1}
        by = {name: answers[url] for name, url in peers.urls.items()}
        assert by["ok"].ok and by["ok"].body == {"q": {"local": "1"}}
        assert (by["missing"].ok, by["missing"].status) == (False, 404)
        # an answer that did not come is never "nothing there": no status, and why
        assert (by["hung"].status, by["down"].status) == (None, None)
        assert by["hung"].error and by["down"].error
        assert (by["text"].ok, by["text"].status, by["text"].body) == (False, 200, None)
    finally:
        await fleet.close()


async def test_a_peer_that_did_not_answer_is_skipped_until_its_suspect_window_ends(peers: Peers) -> None:
    me = "http://127.0.0.1:1"
    only_hung = {"hung": peers.urls["hung"], "ok": peers.urls["ok"]}
    fleet = Fleet(me, distribution(only_hung, me), timeout_s=0.5, suspect_s=30.0)
    try:
        # Given a peer that timed out once
        first = {a.peer: a for a in await fleet.ask_peers("/x")}
        assert first[peers.urls["hung"]].status is None
        # When the fleet is asked again within the suspect window
        again = {a.peer: a for a in await fleet.ask_peers("/x")}
        # Then the hung peer is not asked again (one request reached it), and is reported
        # as not answering; the healthy peer is asked every time
        assert again[peers.urls["hung"]].status is None
        assert "skipped" in (again[peers.urls["hung"]].error or "")
        assert (peers.hits["hung"], peers.hits["ok"]) == (1, 2)
        # When the window is over, it is asked again
        fleet.suspect_s = 0.0
        fleet._suspect_until.clear()
        await fleet.ask_peers("/x")
        assert peers.hits["hung"] == 2
    finally:
        await fleet.close()


async def test_owner_and_workers_follow_the_assignment(peers: Peers) -> None:
    me = "http://127.0.0.1:1"
    holding: dict[str, dict[str, list[int]]] = {me: {"a": [0, 2]}, peers.urls["ok"]: {"a": [1], "b": [0]}}
    fleet = Fleet(me + "/", lambda: holding)
    assert fleet.owner("a", 1) == peers.urls["ok"]
    assert fleet.owner("a", 2) == me
    assert fleet.owner("a", 3) is None
    assert fleet.peers() == [peers.urls["ok"]]
    # a rebalance changes the answer at once
    holding[peers.urls["ok"]] = {}
    holding[me] = {"a": [0, 1, 2]}
    assert fleet.owner("a", 1) == me
    # a worker that holds nothing is not asked
    assert fleet.peers() == []
    assert await fleet.ask_peers("/x") == []
    assert peers.hits["ok"] == 0
