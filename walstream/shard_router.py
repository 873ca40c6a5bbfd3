"""Requests about a namespace of another shard go to that shard (walstream.shards).

An entry's status and cancellation, a namespace's dead letters and redrive, its deletion
(which counts and dead-letters its pending entries), its replays (which read its cancelled
entries) and their jobs, and the entry and dead-letter pages read the tables of the shard
that delivers the namespace. A worker of another shard has none of
them, so it forwards such a request as it came (method, path, query, body, the caller's
``Authorization``, ``Cookie``, ``Accept`` and ``Content-Type``) to the URL configured for the
namespace's shard (``WALSTREAM_SHARD_URLS``), and relays the answer with
``X-Walstream-Shard`` naming the shard that answered.

- No URL for the shard: 503 naming the shard and the setting.
- The shard did not answer (refused, timed out): 503 naming it; a request that writes
  (``DELETE``, ``POST``) may then have been applied: its answer says so.
- A forwarded request that reaches a worker of yet another shard (a wrong URL, or the
  registry changed in between) is not forwarded again: 503 naming both shards.

Writes (``POST /v1/log``) are never forwarded: any worker produces to any WAL topic.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import httpx
import orjson
from aiohttp import web

from walstream.api import MAX_REDRIVE_WAIT_S, MAX_SEND_S
from walstream.namespaces.registry import NamespaceRegistry

log = logging.getLogger(__name__)

#: set on a forwarded request (to the forwarding worker's shard) and on its relayed answer
#: (to the answering shard)
FORWARDED_BY = "X-Walstream-Forwarded-By"
ANSWERED_BY = "X-Walstream-Shard"
#: how long a forwarded request may take: reads, writes, and redrives (which may pace their
#: sending for up to MAX_SEND_S, then wait for outcomes)
READ_TIMEOUT_S = 15.0
WRITE_TIMEOUT_S = 30.0
REDRIVE_TIMEOUT_S = MAX_SEND_S + MAX_REDRIVE_WAIT_S + 30.0
#: how long a shard's "never consumed this namespace" answer is reused (a shard that starts
#: consuming it is forwarded to at most this much later)
UNCONSUMED_KNOWN_S = 2.0
#: request headers passed on, and answer headers relayed
_PASSED = ("Authorization", "Cookie", "Accept", "Content-Type")
_RELAYED = ("Content-Type", "Location", "Allow", "Retry-After", "Cache-Control")
#: routes (aiohttp's canonical path) whose ``{namespace}`` is the shard's, with their methods
_PATH_ROUTES = {
    "/v1/log/{namespace}/{entry_id}": {"GET", "HEAD", "DELETE"},
    "/v1/groups/{namespace}/{group_id}": {"GET", "HEAD"},
    "/v1/dlq/{namespace}": {"GET", "HEAD"},
    "/v1/dlq/{namespace}/redrive": {"POST"},
    "/v1/namespaces/{name}": {"DELETE"},
    # a replay reads the entry states of its shard (cancelled entries), and runs there
    "/v1/replay/{namespace}": {"POST"},
    # and so do index checks (their jobs are found in the namespace's shard)
    "/v1/index/{namespace}/{table}/check": {"POST"},
}
#: routes whose ``{job_id}`` names the namespace (``<kind>.<namespace>.<random>``: walstream.jobs)
_JOB_ROUTES = {"/v1/jobs/{job_id}": {"GET", "HEAD", "DELETE"}}
#: pages whose ``namespace`` query parameter (or form field) is the shard's
_QUERY_ROUTES = {"/ui/entry", "/ui/entry.json", "/ui/dlq", "/ui/dlq.json"}
_FORM_ROUTES = {"/ui/dlq/redrive"}
_FORM = "application/x-www-form-urlencoded"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: this worker's own refusal of a request about ``namespace`` (auth), or None
Guard = Callable[[web.Request, str], web.StreamResponse | None]
#: a page's answer for (request, status, message), or None for the JSON answer
Refusal = Callable[[web.Request, int, str], web.StreamResponse | None]


def _no_page(request: web.Request, status: int, message: str) -> web.StreamResponse | None:
    return None


class ShardRouter:
    """Forwards requests about other shards' namespaces (see the module's description).

    ``own_shard``: this worker's; ``urls``: {shard: base URL}."""

    def __init__(
        self,
        own_shard: str,
        urls: dict[str, str],
        registry: NamespaceRegistry,
        consumed: Callable[[str, str], Awaitable[bool]] | None = None,
    ) -> None:
        self.own_shard = own_shard
        self.urls = urls
        self.registry = registry
        #: (shard, namespace) → whether a worker of the shard ever consumed the namespace's
        #: WAL topic (its consumer group committed an offset of it); None: assume it did
        self.consumed = consumed
        #: (shard, namespace) known consumed: that never changes back
        self._consumed: set[tuple[str, str]] = set()
        #: (shard, namespace) → monotonic time until which "never consumed" is taken as known
        #: (asking Kafka costs an admin client: not once per request)
        self._unconsumed_until: dict[tuple[str, str], float] = {}
        self._client: httpx.AsyncClient | None = None

    async def _never_consumed(self, shard: str, namespace: str) -> bool:
        """No worker of ``shard`` has consumed ``namespace``: none of it is in any table (a
        namespace put on a shard before its workers run, or on one nobody runs)."""
        if self.consumed is None or (shard, namespace) in self._consumed:
            return False
        if self._unconsumed_until.get((shard, namespace), 0.0) > time.monotonic():
            return True
        try:
            done = await self.consumed(shard, namespace)
        except Exception:  # cannot tell: the shard is asked, as for any namespace of it
            log.warning("could not tell whether shard %s consumed %s", shard, namespace, exc_info=True)
            return False
        if done:
            self._consumed.add((shard, namespace))
            self._unconsumed_until.pop((shard, namespace), None)
        else:
            self._unconsumed_until[(shard, namespace)] = time.monotonic() + UNCONSUMED_KNOWN_S
        return not done

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def namespace_of(self, request: web.Request) -> str | None:
        """The namespace a shard-bound request is about, or None (not such a request)."""
        route = request.match_info.route.resource
        canonical = route.canonical if route is not None else request.path
        if request.method in _PATH_ROUTES.get(canonical, ()):
            info = request.match_info
            return info.get("namespace") or info.get("name")
        if request.method in _JOB_ROUTES.get(canonical, ()):
            parts = request.match_info.get("job_id", "").split(".")
            return parts[1] if len(parts) == 3 and parts[1] else None
        if canonical in _QUERY_ROUTES and request.method in ("GET", "HEAD"):
            return request.query.get("namespace") or None
        if canonical in _FORM_ROUTES and request.method == "POST":
            # read whole (aiohttp keeps it: the view or the forward reads it again); the pages'
            # form check (walstream.web.pages.render.checked_forms) let only UTF-8 url-encoded
            # forms through
            fields = parse_qs((await request.read()).decode("utf-8", "replace"))
            return next(iter(fields.get("namespace", [])), None) or None
        return None

    def shard_of(self, namespace: str) -> str | None:
        """The shard delivering ``namespace`` when it is another than this worker's."""
        cfg = self.registry.get(namespace)
        if cfg is None or cfg.shard == self.own_shard:
            return None  # unknown namespaces are answered here (404)
        return cfg.shard

    def middleware(self, guard: Guard = lambda request, namespace: None, refusal: Refusal = _no_page) -> Any:
        """The aiohttp middleware. ``guard``: this worker's own refusal of a request (its auth
        checks) or None, applied before forwarding, so a shard with weaker tokens is never
        reached through a stricter one; ``refusal``: how a page says a 503 (None: JSON)."""

        @web.middleware
        async def route_to_shard(request: web.Request, handler: Handler) -> web.StreamResponse:
            namespace = await self.namespace_of(request)
            shard = None if namespace is None else self.shard_of(namespace)
            if namespace is None or shard is None:
                return await handler(request)
            if shard not in self.urls and await self._never_consumed(shard, namespace):
                # nothing of it is in any shard's tables: this worker's answer (nothing known
                # of its entries, a deletion that checks its Kafka backlog) is the answer
                return await handler(request)
            if (refused := guard(request, namespace)) is not None:
                return refused
            answer = await self.forward(request, namespace, shard)
            if answer.status == 503 and ANSWERED_BY not in answer.headers:
                message = _body(answer).get("message", "")
                if "entry_id" in request.match_info:
                    # an entry's status or cancellation keeps its shape: its state is not known now
                    body = {"id": request.match_info["entry_id"], "state": "UNKNOWN", "message": message}
                    return web.json_response(body, status=503, headers={"Retry-After": "1"})
                return refusal(request, 503, message) or answer
            return answer

        return route_to_shard

    async def forward(self, request: web.Request, namespace: str, shard: str) -> web.Response:
        via = request.headers.get(FORWARDED_BY)
        if via is not None:
            return _refuse(
                f"namespace {namespace!r} is delivered by shard {shard!r}, but this worker serves shard "
                f"{self.own_shard!r} and the request was forwarded here by shard {via!r}: WALSTREAM_SHARD_URLS "
                f"of shard {via!r} points at the wrong shard, or the namespace moved meanwhile; retry shortly"
            )
        url = self.urls.get(shard)
        if url is None:
            return _refuse(
                f"namespace {namespace!r} is delivered by shard {shard!r}; this worker serves shard "
                f"{self.own_shard!r}. Ask a worker of shard {shard!r}, or set WALSTREAM_SHARD_URLS="
                f"{shard}=http://HOST:PORT on this one"
            )
        timeout = await self._timeout_s(request)
        headers = {h: request.headers[h] for h in _PASSED if h in request.headers}
        headers[FORWARDED_BY] = self.own_shard
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=5.0))
        try:
            answer = await self._client.request(
                request.method,
                url + request.path_qs,
                content=await request.read() if request.body_exists else None,
                headers=headers,
                timeout=httpx.Timeout(timeout, connect=5.0),
            )
        except httpx.HTTPError as exc:
            reason = str(exc) or type(exc).__name__
            sent = not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))  # else nothing reached it
            writes = request.method not in ("GET", "HEAD")
            maybe = " (the request may have been applied there)" if sent and writes else ""
            log.warning("shard %s (%s) did not answer %s %s: %s", shard, url, request.method, request.path, reason)
            return _refuse(f"namespace {namespace!r} is delivered by shard {shard!r}, whose worker at {url} did "
                           f"not answer{maybe}: {reason}; retry shortly")
        relayed = {h: answer.headers[h] for h in _RELAYED if h in answer.headers}
        relayed[ANSWERED_BY] = shard
        return web.Response(status=answer.status_code, body=answer.content, headers=relayed)


    async def _timeout_s(self, request: web.Request) -> float:
        """How long the forwarded request may take: a read, a change, or an executed redrive
        (a dry run is a read)."""
        if request.path.endswith("/redrive"):
            raw = await request.read()
            if request.content_type == _FORM:
                dry = parse_qs(raw.decode("utf-8", "replace")).get("dry_run") == ["on"]
            else:
                try:
                    doc = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    doc = None  # refused there at once
                dry = not isinstance(doc, dict) or doc.get("dry_run", True) is not False
            return READ_TIMEOUT_S if dry else REDRIVE_TIMEOUT_S
        return READ_TIMEOUT_S if request.method in ("GET", "HEAD") else WRITE_TIMEOUT_S


def _body(answer: web.Response) -> dict[str, Any]:
    try:
        doc = orjson.loads(answer.body) if isinstance(answer.body, bytes) else {}
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _refuse(message: str) -> web.Response:
    return web.json_response({"message": message}, status=503, headers={"Retry-After": "1"})
