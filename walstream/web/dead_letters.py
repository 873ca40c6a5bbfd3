"""The dead-letter queue: ``GET /v1/dlq/{ns}`` (this worker's and the fleet's letters) and
``POST /v1/dlq/{ns}/redrive``."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any
from urllib.parse import quote

from faust.web import Request, Response, View

from walstream.api import MAX_SEND_S, DeadLetterList, RedriveRequest, RedriveResult
from walstream.context import WebContext
from walstream.delivery import commands
from walstream.delivery.dead_letters import iso
from walstream.tables import ordered
from walstream.tables.entry_state import EntryState
from walstream.targets.base import ErrorClass
from walstream.web.common import BodyError, parse_model, parse_time, read_json, respond
from walstream.web.openapi import LOCAL, NAMESPACE, Operation, Param

#: most ids a listing names in its questions to the other workers; past it, they are asked
#: for every letter and the ids are picked from their answers
IDS_IN_QUERY = 50
#: most letters one listing returns
MAX_LISTED = 100_000

_FILTERS = (
    Param("id", "query", "only these entries' letters (repeat it for several)",
          {"type": "array", "items": {"type": "string", "minLength": 1}}),
    Param("error_class", "query", "only letters of this class",
          {"type": "string", "enum": [c.value for c in ErrorClass]}),
    Param("since", "query", "last failure at or after (ISO-8601 with a timezone)",
          {"type": "string", "format": "date-time"}),
    Param("until", "query", "last failure before (ISO-8601 with a timezone)",
          {"type": "string", "format": "date-time"}),
    Param("limit", "query", "at most this many (default 1000)", {"type": "integer", "minimum": 1, "maximum": 100_000}),
)

OPERATIONS = (
    Operation(
        "get", "/v1/dlq/{namespace}", "The namespace's dead letters, across the fleet", "dead letters",
        params=(NAMESPACE, *_FILTERS, LOCAL), answers={200: DeadLetterList, 400: None, 404: None, 503: None},
    ),
    Operation(
        "post", "/v1/dlq/{namespace}/redrive", "Deliver dead letters again (a dry run by default)",
        "dead letters", params=(NAMESPACE,), body=RedriveRequest,
        answers={200: RedriveResult, 400: None, 404: None, 503: None}, auth="admin", action="redriving dead letters",
        description="Executed, each letter's outcome: DELIVERED, DEAD (failed again; back in the "
        "dead-letter queue) or PENDING (not settled within `wait_s`).",
    ),
)
#: POST /v1/dlq/{namespace}/redrive, as the view and a forwarding worker check it
REDRIVE = next(op for op in OPERATIONS if (op.method, op.path) == ("post", "/v1/dlq/{namespace}/redrive"))


def dlq_row(row: dict[str, Any]) -> dict[str, Any]:
    """An index row as ``GET /v1/dlq/{ns}`` shows it (walstream.api.DeadLetter)."""
    return {
        "id": row["id"],
        "namespace": row["ns"],
        "key": row.get("key"),
        "target": row.get("target"),
        "target_id": row["target_id"],
        "error_class": row["error_class"],
        "message": row["message"],
        "attempts": row["attempts"],
        "first_failure_at": iso(row["first_failure_s"]),
        "last_failure_at": iso(row["last_failure_s"]),
        "source": {"topic": row["source"][0], "partition": row["source"][1], "offset": row["source"][2]},
    }


class DeadLetterQueue:
    """Listing and redriving a namespace's dead letters across the fleet; the API views
    here and the operator's pages (walstream.web.pages) share it."""

    def __init__(self, ctx: WebContext) -> None:
        self._ctx = ctx

    async def rows(
        self, ns: str, query: dict[str, str], ids: list[str] | None, local_only: bool
    ) -> list[dict[str, Any]]:
        """Index rows of ``ns`` matching ``query`` (error_class, since, until, limit) and, when
        given, of the entries ``ids`` only; from this worker's active partitions and, unless
        ``local_only``, the fleet's (one request per worker). Oldest failure first; ``limit``
        applies to what matches. Raises :class:`BodyError` (400 for a bad time, 404 when there
        is neither such a namespace nor letters of it, 503 when a worker does not answer: the
        list would be incomplete)."""
        ctx = self._ctx
        if ctx.settling():
            raise BodyError(503, "this worker is recovering its tables; the list would be incomplete; retry shortly")
        table = ctx.dlq_index.table
        if not local_only and (unheld := ctx.fleet.unheld(table.changelog_name, table.partitions)):
            raise BodyError(503, f"partitions {unheld} are held by no worker yet; the list would be incomplete; "
                            "retry shortly")
        # names, repeats, emptiness, limit's bounds and error_class's values are checked
        # before the view runs (walstream.web.query), or by RedriveRequest's model
        since, until = parse_time(query.get("since"), "since"), parse_time(query.get("until"), "until")
        limit = int(query.get("limit") or 1000)
        actives = set(ctx.active_partitions())
        rows = []
        partitions = ordered.partitions(ctx.dlq_index.table, actives)
        wanted: list[str | None] = list(ids) if ids else [None]  # None: every entry
        found = (row for entry_id in wanted for row in ctx.dlq_index.rows(ns, partitions, entry_id))
        for row in found:
            if query.get("error_class") and row["error_class"] != query["error_class"]:
                continue
            if since is not None and row["last_failure_s"] < since:
                continue
            if until is not None and row["last_failure_s"] >= until:
                continue
            rows.append(row)
        if not local_only:
            params: dict[str, Any] = {k: v for k, v in query.items() if v} | {"local": "1"}
            by_name = bool(ids) and len(ids or ()) <= IDS_IN_QUERY
            if by_name:
                params["id"] = ids  # repeated in the query string
            elif ids:
                # too many to name in a URL (a peer refuses a request line over 8 KiB): every
                # matching letter is asked for, and the ids picked here
                params["limit"] = str(MAX_LISTED)
            wanted_ids = None if by_name or not ids else set(ids)
            for a in await ctx.fleet.ask_peers(f"/v1/dlq/{quote(ns, safe='')}", params, timeout_s=10.0):
                if not a.ok:
                    said = a.body.get("message") if isinstance(a.body, dict) else a.error
                    raise BodyError(503, f"worker {a.peer} did not list its letters ({a.status or 'no answer'}: "
                                    f"{said}); the list would be incomplete")
                rows.extend(r for r in a.body["_rows"] if wanted_ids is None or r["id"] in wanted_ids)
        if not rows and not local_only and ctx.registry.get(ns) is None:
            # a deleted namespace's letters stay listed (and redrivable); a name never created
            # is a mistake, not an empty list or an empty redrive
            raise BodyError(404, f"there is no namespace {ns!r} (nor dead letters of it)")
        rows.sort(key=lambda r: (r["last_failure_s"], r["id"]))
        return rows[:limit]

    async def redrive(self, ns: str, req: RedriveRequest) -> dict[str, Any]:
        """What ``POST /v1/dlq/{ns}/redrive`` answers for ``req`` (walstream.api.RedriveResult):
        a dry run lists the letters; else each is sent to its record's partition, at most
        ``req.rate`` per second, and its outcome awaited for ``req.wait_s``."""
        query = {
            k: (v.isoformat() if isinstance(v, datetime) else str(v))
            for k, v in (("error_class", req.error_class), ("since", req.since), ("until", req.until),
                         ("limit", req.limit))
            if v is not None
        }
        # ids asked for by name: the limit (oldest first) applies to what matches
        rows = await self.rows(ns, query, sorted(set(req.ids)) if req.ids else None, local_only=False)
        if not req.dry_run and req.rate and len(rows) > 1 and (len(rows) - 1) / req.rate > MAX_SEND_S:
            raise BodyError(400, f"at {req.rate:g} per second, {len(rows)} letters take "
                            f"{(len(rows) - 1) / req.rate:.0f} s to send, and the request stays open meanwhile; "
                            f"the most is {MAX_SEND_S:.0f} s: raise the rate or redrive fewer at a time")
        if req.dry_run:
            return {"dry_run": True, "would_redrive": [dlq_row(r) for r in rows]}
        sent = 0
        sent_ms = int(time.time() * 1000)
        for row in rows:
            # to the partition the entry's record is in, where its state and timers live
            await self._ctx.commands.send(commands.redrive(row["ns"], row["id"], row["target_id"]), [row["source"][1]])
            sent += 1
            if req.rate and sent < len(rows):
                await asyncio.sleep(1.0 / float(req.rate))
        results = await self._outcomes(rows, sent_ms, float(req.wait_s))
        counts = {o: sum(1 for r in results if r["outcome"] == o) for o in ("DELIVERED", "DEAD", "PENDING")}
        return {"dry_run": False, "redriven": sent, "sent_at_ms": sent_ms,
                **{k.lower(): v for k, v in counts.items()}, "results": results}

    async def _outcomes(self, rows: list[dict[str, Any]], sent_ms: int, wait_s: float) -> list[dict[str, Any]]:
        """What became of each redriven dead letter: its target's state (the whole entry's for a
        letter without a target) once it was updated after ``sent_ms`` and is final, else
        PENDING when ``wait_s`` runs out."""
        results: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + wait_s
        while wait_s > 0:  # not waiting: every letter is PENDING, no status asked for
            for n, row in enumerate(rows):
                if n in results:
                    continue
                doc, _ = await self._ctx.status.find(row["ns"], row["id"])
                if doc is None or (doc.get("updated_ms") or 0) < sent_ms:
                    continue
                # a target the namespace no longer has is redriven whole: the entry's state tells
                whole = row["target_id"] == "*" or row["target_id"] not in doc.get("targets", {})
                t = doc["state"] if whole else doc["targets"][row["target_id"]].get("state")
                if t in (EntryState.DELIVERED, EntryState.DEAD, EntryState.CANCELLED):
                    last_error = doc.get("targets", {}).get(row["target_id"], {}).get("last_error") or doc.get(
                        "last_error")
                    results[n] = {"id": row["id"], "target_id": row["target_id"], "outcome": t,
                                  "message": last_error if t == EntryState.DEAD else None}
            if len(results) == len(rows) or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.25)
        return [
            results.get(n) or {"id": r["id"], "target_id": r["target_id"], "outcome": "PENDING",
                               "message": f"not settled within {wait_s:g} s; see GET /v1/log/{r['ns']}/{r['id']}"}
            for n, r in enumerate(rows)
        ]


def parse_redrive(body: Any) -> RedriveRequest:
    """A redrive request's body as :class:`RedriveRequest`; :class:`BodyError` 400 naming
    the problem. Unknown fields are refused: a misspelt filter ("id" for "ids") must not
    widen a redrive to every letter."""
    return parse_model(RedriveRequest, body)


def register(ctx: WebContext) -> None:
    app = ctx.faust
    settings = ctx.settings
    queue = DeadLetterQueue(ctx)

    @app.page("/v1/dlq/{namespace}")
    class DeadLettersView(View):
        async def get(self, request: Request, namespace: str) -> Response:
            local_only = request.query.get("local") == "1"
            try:
                query = {k: v for k, v in request.query.items() if k != "id"}
                ids = request.query.getall("id", None)  # type: ignore[attr-defined]  # a MultiDict
                rows = await queue.rows(namespace, query, ids, local_only)
            except (BodyError, ValueError) as exc:
                return respond(self, getattr(exc, "status", 400), {"message": str(exc)})
            body: dict[str, Any] = {"dead_letters": [dlq_row(r) for r in rows]}
            if local_only:
                body["_rows"] = rows
            return respond(self, 200, body)

    @app.page("/v1/dlq/{namespace}/redrive")
    class RedriveView(View):
        async def post(self, request: Request, namespace: str) -> Response:
            """Body: ``{"ids": [...]}`` and/or ``error_class``, ``since``, ``until``, ``limit``;
            ``dry_run`` (default true) only lists; ``rate`` caps commands per second;
            ``wait_s`` (default 10, at most 120) is how long to wait for the outcomes.

            Executed, the answer has one result per dead letter: ``outcome`` DELIVERED, DEAD
            (failed again: ``message`` says why; it is back in the dead-letter queue) or
            PENDING (not settled within ``wait_s``: retrying, delayed, or not yet processed),
            and the counts of each."""
            if (denied := ctx.auth.admin(request.headers, REDRIVE.action)) is not None:
                return respond(self, denied.status, {"message": denied.message})
            try:
                body = await read_json(request, settings.max_request_bytes, server_limit=settings.max_request_bytes)
                result = await queue.redrive(namespace, parse_redrive(body))
            except (BodyError, ValueError) as exc:
                return respond(self, getattr(exc, "status", 400), {"message": str(exc)},
                               close=getattr(exc, "close", False))
            return respond(self, 200, result)
