"""The fleet router: which worker holds which partition, and asking the other workers.

Faust's partition assignor publishes, after every rebalance, each worker's web address
with the changelog partitions it holds actively (``tables_metadata()``, the map Faust's own
router uses). Views that need the whole fleet's answer (an entry's state, dead letters,
pending entries) ask every other worker through one :class:`Fleet`:

- one pooled HTTP client per worker process (connections are kept between questions);
- every peer asked at once, each answer bounded by ``timeout_s``;
- a peer that did not answer (refused, reset, timed out) is *suspect* for ``suspect_s``:
  questions in that window skip it at once and report it as not answering, so a dead
  worker costs one timeout, not one per request, until the next rebalance removes it.

An answer that did not come is never read as "nothing there": callers get the peers that
did not answer and decide (the status view answers 503 UNKNOWN, a listing refuses to be
incomplete).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

#: {worker web address: {topic: [partition, ...]}}, as Faust's assignor gives it
Distribution = Mapping[str, Mapping[str, list[int]]]


@dataclass(frozen=True, slots=True)
class PeerAnswer:
    """One peer's answer: its ``status`` and JSON ``body`` (None when the body is not JSON),
    or ``status`` None and ``error`` saying why there is none (refused, reset, timed out,
    skipped as suspect)."""

    peer: str
    status: int | None
    body: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """A 200 with a JSON body."""
        return self.status == 200 and self.body is not None


class Fleet:
    """Routes questions to the other workers of this worker's fleet.

    ``distribution`` returns the current assignment (Faust's
    ``app.assignor.tables_metadata()``); ``self_url`` is this worker's own address, never
    asked. ``timeout_s`` bounds each peer's answer; ``suspect_s`` is how long a peer that
    did not answer is skipped."""

    def __init__(
        self,
        self_url: str,
        distribution: Callable[[], Distribution],
        *,
        timeout_s: float = 3.0,
        suspect_s: float = 5.0,
    ) -> None:
        self.self_url = self_url.rstrip("/")
        self._distribution = distribution
        self.timeout_s = timeout_s
        self.suspect_s = suspect_s
        #: peer → monotonic time until which it is skipped
        self._suspect_until: dict[str, float] = {}
        self._client: httpx.AsyncClient | None = None

    # -- who holds what ------------------------------------------------------------------

    def workers(self) -> dict[str, set[tuple[str, int]]]:
        """Every worker of the last rebalance (this one included) with the (topic, partition)
        pairs it holds actively."""
        out: dict[str, set[tuple[str, int]]] = {}
        for url, topics in self._distribution().items():
            held = out.setdefault(str(url).rstrip("/"), set())
            for topic, partitions in topics.items():
                held.update((topic, p) for p in partitions)
        return out

    def peers(self) -> list[str]:
        """The addresses of the other workers that hold partitions (from the last
        rebalance), sorted: a worker holding none has nothing to answer."""
        return sorted(url for url, held in self.workers().items() if held and url != self.self_url)

    def owner(self, topic: str, partition: int) -> str | None:
        """The address of the worker holding ``topic``'s ``partition`` actively, if known."""
        for url, held in self.workers().items():
            if (topic, partition) in held:
                return url
        return None

    def unheld(self, topic: str, partitions: int) -> list[int]:
        """The partitions of ``topic`` (numbered below ``partitions``) that no worker holds
        actively as of the last rebalance: while there are any, no answer from the fleet
        covers them (a worker that just started knows no assignment yet)."""
        held = {p for worker in self.workers().values() for t, p in worker if t == topic}
        return [p for p in range(partitions) if p not in held]

    # -- asking --------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            # created on first use, inside the worker's running loop
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_s),
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            )
        return self._client

    async def ask(
        self,
        peer: str,
        path: str,
        params: Mapping[str, str | list[str]] | None = None,
        timeout_s: float | None = None,
        headers: Mapping[str, str] | None = None,
        method: str = "GET",
    ) -> PeerAnswer:
        """``method`` (default GET) ``peer + path`` within ``timeout_s`` (default :attr:`timeout_s`), with
        ``headers`` (e.g. the caller's Authorization, passed on); never raises for a peer
        that does not answer (the answer says so)."""
        now = time.monotonic()
        if self._suspect_until.get(peer, 0.0) > now:
            return PeerAnswer(peer, None, error="did not answer a moment ago; skipped")
        try:
            r = await self._http().request(
                method, peer + path, params=dict(params or {}), headers=dict(headers or {}),
                timeout=timeout_s if timeout_s is not None else self.timeout_s,
            )
        except httpx.HTTPError as exc:
            self._suspect_until[peer] = time.monotonic() + self.suspect_s
            return PeerAnswer(peer, None, error=f"{type(exc).__name__}: {exc}".rstrip(": "))
        self._suspect_until.pop(peer, None)
        try:
            return PeerAnswer(peer, r.status_code, r.json())
        except ValueError:
            return PeerAnswer(peer, r.status_code, error=f"answered {r.status_code} without a JSON body")

    async def ask_peers(
        self,
        path: str,
        params: Mapping[str, str | list[str]] | None = None,
        timeout_s: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> list[PeerAnswer]:
        """:meth:`ask` every peer at once (with ``headers``: a caller's Authorization, for a
        question the peers check as they would the caller's); one answer per peer, in
        :meth:`peers` order."""
        peers = self.peers()
        if not peers:
            return []
        return list(await asyncio.gather(*(self.ask(p, path, params, timeout_s, headers) for p in peers)))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
