"""The write API: ``POST /v1/log`` and ``POST /v1/log/batch`` (and what a repeated id is
answered)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import orjson
from faust.web import Request, Response, View

from walstream import strict_json
from walstream.api import ErrorAnswer, LogBatchAnswer, LogBatchRequest, LogRequest, WriteResult
from walstream.auth import Denied, bearer
from walstream.context import WebContext
from walstream.entry import Entry
from walstream.requests import RequestError, parse_log_request
from walstream.tables.entry_state import FINAL, EntryState, best
from walstream.web.common import BodyError, failed, read_json, respond
from walstream.web.openapi import Operation
from walstream.writer import Durable, Remembered


def repeat_answer(
    entry_id: str, digest: str | None, state: dict[str, Any] | None, hit: Remembered | None
) -> dict[str, Any] | None:
    """The answer (with ``status``) to a write of an id already known from its state
    document and/or this worker's recent writes; None when neither knows it.

    - cancelled (before or after it was written): 409 with the state; nothing is written,
      since a write answered SUCCESS must be delivered and this one never would be;
    - written from a request with another digest (:func:`walstream.requests.request_digest`):
      409, the id names a different entry; an entry without a digest (written before
      digests existed) matches any request;
    - otherwise the original answer, ``"duplicate": true`` — whatever the entry's state
      (pending, delivered, or dead-lettered: it was written, as the original answer said).
    """

    def refused(message: str) -> dict[str, Any]:
        return {"durable": Durable.FAILED.value, "id": entry_id, "message": message, "status": 409}

    if state is not None and state.get("state") == EntryState.CANCELLED:
        if state.get("offset") is None:
            message = "entry was cancelled before it was written"
        else:
            message = f"entry {entry_id!r} was cancelled; it will not be delivered: use a new id"
        return {**refused(message), "state": EntryState.CANCELLED.value}
    if state is not None and state.get("offset") is not None:
        original: dict[str, Any] = {
            "durable": Durable.SUCCESS.value,
            "id": entry_id,
            "partition": state["partition"],
            "offset": state["offset"],
        }
        known_digest = state.get("digest") or (hit.digest if hit is not None else None)
    elif hit is not None:
        original, known_digest = hit.result.to_dict(), hit.digest
    else:
        return None
    if digest is not None and known_digest is not None and digest != known_digest:
        message = (
            f"id {entry_id!r} was already used for a different entry (written at partition "
            f"{original['partition']}, offset {original['offset']}, from a request with another "
            "key, payload, lifecycle, target or retry); use a new id"
        )
        return refused(message)
    return {**original, "status": 200, "duplicate": True}

OPERATIONS = (
    Operation(
        "post", "/v1/log", "Write one entry", "log", body=LogRequest,
        answers={200: WriteResult, 400: WriteResult, 401: WriteResult, 403: WriteResult, 404: WriteResult,
                 409: WriteResult, 413: WriteResult, 503: WriteResult},
        auth="write",
        description="SUCCESS once the entry is in its namespace's WAL topic (acks=all). A client-chosen "
        "`id` written again is answered with the original answer (`duplicate`: true), or 409 when it "
        "names another entry or was cancelled. UNKNOWN (503): write again with the same id.",
    ),
    Operation(
        "post", "/v1/log/batch", "Write entries, each answered on its own", "log", body=LogBatchRequest, auth="write",
        refused_per_item=True,
        answers={200: LogBatchAnswer, 400: ErrorAnswer, 413: ErrorAnswer},
        description="One result per entry, in order, each with its own `status`; a refused entry "
        "refuses only itself.",
    ),
)


def register(ctx: WebContext) -> None:
    app = ctx.faust
    settings = ctx.settings

    def validate(doc: Any) -> tuple[Entry, bytes]:
        return parse_log_request(
            doc, lookup=ctx.registry.get, clock=ctx.clock, max_entry_bytes=ctx.entry_limit_bytes(),
            region=settings.region,
        )

    def known_write(entry: Entry) -> dict[str, Any] | None:
        """:func:`repeat_answer` from what this worker knows, without asking another worker:
        its recent writes and cancellations, and the entries table of every partition it
        holds, active or standby (a standby copy may lag: then the original answer is given
        for an entry cancelled a moment ago). None: not known here; the write goes ahead and
        the delivery agent recognises the id (see docs/architecture.md, "Duplicates")."""
        namespace, entry_id = entry.namespace, entry.id
        # every held partition, not only the entry's: the same id written again with another
        # key (a different entry, to be refused) has its document under the first key's
        # partition (one RocksDB get per partition, ~1 µs each)
        state = best(ctx.status.held_here(namespace, entry_id))
        hit = ctx.writer.recent(namespace, entry_id)
        if (state is None or state.get("state") not in FINAL) and ctx.writer.was_cancelled(namespace, entry_id):
            offset = state.get("offset") if state is not None else (hit.result.offset if hit is not None else None)
            state = {"state": EntryState.CANCELLED.value, "offset": offset}
        return repeat_answer(entry_id, entry.digest, state, hit)

    async def write_all(items: list[Any], token: str | None) -> list[dict[str, Any]]:
        """Validate, de-duplicate by id, and write; one answer (with ``status``) per item.

        An id written before is answered as :func:`repeat_answer` says, from this worker's
        knowledge only (:func:`known_write`): a write never waits on another worker. An id
        this worker does not know is written; the delivery agent then skips it if its id was
        delivered or cancelled before, or dead-letters it if the id names a different
        entry, so a repeated id is still delivered once. An id repeated
        within the request gets the first item's answer if it asks for the same entry, else a
        409 of its own; either way it is written once."""
        results: list[dict[str, Any] | None] = [None] * len(items)
        candidates: list[tuple[int, Entry, bytes, bool]] = []  # position, entry, value, client id?
        first_of: dict[tuple[str, str], tuple[int, str | None]] = {}  # position and digest of an id's first item
        repeats: list[tuple[int, int]] = []
        verdicts: dict[str, Denied | None] = {}  # namespace -> may this token write to it
        #: (namespace, group id, seq or -size for a marker) → the item that took it: what
        #: delivery would dead-letter is refused here when the request itself shows it
        group_places: dict[tuple[str, str, int], int] = {}
        items_seen: dict[int, Entry] = {}  # group items of this request by position
        for i, item in enumerate(items):
            try:
                entry, value = validate(item)
            except RequestError as exc:
                item_id = item.get("id") if isinstance(item, dict) else None
                results[i] = {**failed(item_id, exc.message), "status": exc.status}
                continue
            if entry.namespace not in verdicts:  # once per namespace, not per entry
                ns = ctx.registry.get(entry.namespace)
                verdicts[entry.namespace] = ctx.auth.writer(entry.namespace, ns.write_tokens if ns else (), token)
            denied = verdicts[entry.namespace]
            if denied is not None:
                results[i] = {**failed(item.get("id"), denied.message), "status": denied.status}
                continue
            client_id = "id" in item  # only a client-chosen id can repeat
            if client_id:
                key = (entry.namespace, entry.id)
                if key in first_of:
                    first, first_digest = first_of[key]
                    if first_digest != entry.digest:
                        message = (
                            f"id {entry.id!r} was already used for a different entry (item {first} of this "
                            "request, with another key, payload, lifecycle, target or retry); use a new id"
                        )
                        results[i] = {**failed(entry.id, message), "status": 409}
                    else:
                        repeats.append((i, first))
                    continue
                first_of[key] = (i, entry.digest)
            if entry.group is not None:
                items_seen[i] = entry
            if entry.group is not None and (conflict := group_conflict(entry, i, group_places, items_seen)) is not None:
                results[i] = {**failed(entry.id, conflict), "status": 409}
                continue
            candidates.append((i, entry, value, client_id))
        # ids written before, as far as this worker knows (no other worker is asked)
        known = [known_write(e) if cid else None for _, e, _, cid in candidates]
        valid: list[tuple[Entry, bytes]] = []
        positions: list[int] = []
        for (i, entry, value, _), hit in zip(candidates, known, strict=True):
            if hit is not None:
                results[i] = hit
            else:
                valid.append((entry, value))
                positions.append(i)
        if valid:
            started = time.perf_counter()
            written = await ctx.writer.write(valid)
            ctx.metrics.write_latency.observe(time.perf_counter() - started)
            outcomes: Counter[tuple[str, str]] = Counter()  # metrics once per batch, not per entry
            for (entry, _), pos, res in zip(valid, positions, written, strict=True):
                outcomes[(entry.namespace, res.durable.value)] += 1
                results[pos] = {**res.to_dict(), "status": res.status}
            for (ns_name, durable), n in outcomes.items():
                ctx.metrics.writes.labels(ns_name, durable).inc(n)
        for i, first in repeats:
            answer = dict(results[first] or {})
            if answer.get("durable") == Durable.SUCCESS.value:
                answer["duplicate"] = True
            results[i] = answer
        answers = [r or {} for r in results]
        refused = Counter(a["status"] for a in answers if a.get("durable") == Durable.FAILED.value)
        count_refused(refused)
        try:
            orjson.dumps(answers)
        except orjson.JSONEncodeError:
            # one answer holds text UTF-8 cannot encode (strict reading keeps such text out;
            # this guards against a path that echoes it): escape it, so that one entry's
            # answer stays that entry's and never turns the whole answer into a 500
            answers = [sendable(a) for a in answers]
        return answers

    def group_conflict(
        entry: Entry, i: int, places: dict[tuple[str, str, int], int], items_seen: dict[int, Entry]
    ) -> str | None:
        """Why item ``i``, a group's member or marker, conflicts with an earlier item of the
        same request (a second member for one seq, a marker of another size), or None."""
        assert entry.group is not None
        gid = str(entry.group["id"])
        seq = entry.group_seq
        if seq is not None:
            first = places.setdefault((entry.namespace, gid, seq), i)
            if first != i:
                return f"seq {seq} of group {gid!r} is item {first} of this request; write each member once"
            return None
        size = int(entry.group["size"])
        first = places.setdefault((entry.namespace, gid, -1), i)  # the group's first marker
        if first != i:
            first_size = int(items_seen[first].group["size"])  # type: ignore[index]
            if first_size != size:
                return f"item {first} of this request commits group {gid!r} with size {first_size}, this one {size}"
        return None

    def sendable(v: Any) -> Any:
        """``v`` with every string (keys too) that UTF-8 cannot encode escaped."""
        if isinstance(v, str):
            return strict_json.printable(v)
        if isinstance(v, dict):
            return {sendable(k): sendable(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [sendable(x) for x in v]
        return v

    def count_refused(statuses: Counter[int]) -> None:
        for status, n in statuses.items():
            ctx.metrics.writes_refused.labels(str(status)).inc(n)

    def refuse(view: View, status: int, doc: dict[str, Any], close: bool = False) -> Response:
        """A whole write request refused (nothing of it written), counted once."""
        count_refused(Counter([status]))
        return respond(view, status, doc, close=close)

    @app.page("/v1/log")
    class LogView(View):
        async def post(self, request: Request) -> Response:
            try:
                doc = await read_json(
                    request, settings.max_entry_bytes + 64 * 1024, server_limit=settings.max_request_bytes
                )
            except BodyError as exc:
                return refuse(self, exc.status, failed(None, exc.message), close=exc.close)
            [result] = await write_all([doc], bearer(request.headers))
            status = result.pop("status")
            return respond(self, status, result)

    @app.page("/v1/log/batch")
    class LogBatchView(View):
        async def post(self, request: Request) -> Response:
            try:
                doc = await read_json(
                    request, settings.max_request_bytes, server_limit=settings.max_request_bytes, batch_of="entries"
                )
            except BodyError as exc:
                return refuse(self, exc.status, {"message": exc.message}, close=exc.close)
            if not isinstance(doc, dict) or set(doc) != {"entries"} or not isinstance(doc["entries"], list):
                return refuse(self, 400, {"message": 'expected {"entries": [ ... ]}'})
            items = doc["entries"]
            if len(items) > settings.max_batch_entries:
                return refuse(
                    self, 413, {"message": f"{len(items)} entries; at most {settings.max_batch_entries} per batch"}
                )
            return respond(self, 200, {"results": await write_all(items, bearer(request.headers))})
