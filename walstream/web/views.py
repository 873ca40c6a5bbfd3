"""The HTTP API (user-facing contract): write API, namespaces, health, metrics.

Every error is JSON with a ``message`` naming the problem; a failed write answers
``{"durable": "FAILED", "id": ..., "message": ...}`` and wrote nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson
from aiohttp.web_exceptions import HTTPRequestEntityTooLarge
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tables import ordered
from tables.entry_state import FINAL, EntryState, best
from walstream import strict_json
from walstream.delivery import commands
from walstream.delivery.dead_letters import iso
from walstream.entry import Entry
from walstream.kafka_admin import unconsumed
from walstream.namespaces.model import NamespaceError, parse_namespace, wal_topic
from walstream.requests import RequestError, parse_log_request
from walstream.targets.base import ErrorClass
from walstream.writer import Durable, Remembered

if TYPE_CHECKING:
    from walstream.app import WalApp

log = logging.getLogger(__name__)


#: the slowest redrive pace accepted (one per 50 s): below, a request would sleep for hours
MIN_REDRIVE_RATE = 0.02

#: what a redrive request may say
REDRIVE_FIELDS = frozenset({"ids", "error_class", "since", "until", "limit", "dry_run", "rate", "wait_s"})


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class BodyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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


def register_views(wal: WalApp) -> None:
    app = wal.faust
    settings = wal.settings

    def respond(view: View, status: int, doc: Any) -> Response:
        return view.bytes(orjson.dumps(doc), content_type="application/json", status=status)

    async def read_json(request: Request, limit: int, *, batch_of: str | None = None) -> Any:
        """The body, read strictly (:mod:`walstream.strict_json`: no duplicate keys, no number
        that would change, bounded nesting); a problem is a :class:`BodyError` naming it.
        ``batch_of``: the body is ``{batch_of: [item, ...]}`` whose items are answered one by
        one, so an item's problem does not refuse the body (the item becomes a ``Refused``)."""
        try:
            body = await request.read()
        except HTTPRequestEntityTooLarge:
            raise BodyError(413, f"request body is larger than {settings.max_request_bytes} bytes") from None
        if len(body) > limit:
            raise BodyError(413, f"request body is {len(body)} bytes; the limit is {limit} bytes")
        if not body:
            raise BodyError(400, "request body is empty; expected JSON")
        try:
            return strict_json.loads(body) if batch_of is None else strict_json.loads_batch(body, field=batch_of)
        except strict_json.StrictJSONError as exc:
            raise BodyError(400, f"malformed JSON: {exc}" if exc.malformed else str(exc)) from None

    def failed(entry_id: Any, message: str) -> dict[str, Any]:
        return {
            "durable": Durable.FAILED.value,
            "id": entry_id if isinstance(entry_id, str) else None,
            "message": message,
        }

    def validate(doc: Any) -> tuple[Entry, bytes]:
        return parse_log_request(
            doc, lookup=wal.registry.get, clock=wal.clock, max_entry_bytes=wal.entry_limit_bytes
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
        held = ordered.partitions(wal.states.table)
        state = best(wal.states.find(namespace, entry_id, held))
        hit = wal.writer.recent(namespace, entry_id)
        if (state is None or state.get("state") not in FINAL) and wal.writer.was_cancelled(namespace, entry_id):
            offset = state.get("offset") if state is not None else (hit.result.offset if hit is not None else None)
            state = {"state": EntryState.CANCELLED.value, "offset": offset}
        return repeat_answer(entry_id, entry.digest, state, hit)

    async def write_all(items: list[Any]) -> list[dict[str, Any]]:
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
        for i, item in enumerate(items):
            try:
                entry, value = validate(item)
            except RequestError as exc:
                item_id = item.get("id") if isinstance(item, dict) else None
                results[i] = {**failed(item_id, exc.message), "status": exc.status}
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
            written = await wal.writer.write(valid)
            wal.metrics.write_latency.observe(time.perf_counter() - started)
            outcomes: Counter[tuple[str, str]] = Counter()  # metrics once per batch, not per entry
            for (entry, _), pos, res in zip(valid, positions, written, strict=True):
                outcomes[(entry.namespace, res.durable.value)] += 1
                results[pos] = {**res.to_dict(), "status": res.status}
            for (ns_name, durable), n in outcomes.items():
                wal.metrics.writes.labels(ns_name, durable).inc(n)
        for i, first in repeats:
            answer = dict(results[first] or {})
            if answer.get("durable") == Durable.SUCCESS.value:
                answer["duplicate"] = True
            results[i] = answer
        answers = [r or {} for r in results]
        try:
            orjson.dumps(answers)
        except orjson.JSONEncodeError:
            # one answer holds text UTF-8 cannot encode (strict reading keeps such text out;
            # this guards against a path that echoes it): escape it, so that one entry's
            # answer stays that entry's and never turns the whole answer into a 500
            answers = [sendable(a) for a in answers]
        return answers

    def sendable(v: Any) -> Any:
        """``v`` with every string (keys too) that UTF-8 cannot encode escaped."""
        if isinstance(v, str):
            return strict_json.printable(v)
        if isinstance(v, dict):
            return {sendable(k): sendable(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [sendable(x) for x in v]
        return v

    @app.page("/v1/log")
    class LogView(View):
        async def post(self, request: Request) -> Response:
            try:
                doc = await read_json(request, settings.max_entry_bytes + 64 * 1024)
            except BodyError as exc:
                return respond(self, exc.status, failed(None, exc.message))
            [result] = await write_all([doc])
            status = result.pop("status")
            return respond(self, status, result)

    @app.page("/v1/log/batch")
    class LogBatchView(View):
        async def post(self, request: Request) -> Response:
            try:
                doc = await read_json(request, settings.max_request_bytes, batch_of="entries")
            except BodyError as exc:
                return respond(self, exc.status, {"message": exc.message})
            if not isinstance(doc, dict) or set(doc) != {"entries"} or not isinstance(doc["entries"], list):
                return respond(self, 400, {"message": 'expected {"entries": [ ... ]}'})
            items = doc["entries"]
            if len(items) > settings.max_batch_entries:
                return respond(
                    self, 413, {"message": f"{len(items)} entries; at most {settings.max_batch_entries} per batch"}
                )
            return respond(self, 200, {"results": await write_all(items)})

    settling = wal.settling

    def local_states(namespace: str, entry_id: str) -> list[dict[str, Any]]:
        actives = ordered.partitions(wal.states.table, set(wal.active_partitions()))
        return wal.states.find(namespace, entry_id, actives)

    async def find_state(namespace: str, entry_id: str) -> tuple[dict[str, Any] | None, list[str]]:
        """The entry's state document from the fleet's tables (each worker's active partitions),
        and the workers that could not say (down, or recovering their tables): while that
        list is not empty, "not found" means "not known now", never "never written"."""
        # a table being recovered may still hold an older state (seen: entries delivered
        # before a restart answered DELAYED from the worker's own RocksDB while it recovered):
        # meanwhile only final states are taken from it
        unknown = [settings.web_url] if settling() else []
        docs = [d for d in local_states(namespace, entry_id) if not unknown or d.get("state") in FINAL]
        path = f"/v1/log/{quote(namespace, safe='')}/{quote(entry_id, safe='')}"
        for a in await wal.fleet.ask_peers(path, {"local": "1"}):
            if a.ok:
                docs.append(a.body["_doc"])
            elif a.status != 404:
                unknown.append(a.peer)
        return best(docs), unknown

    def unknown_for_now(entry_id: str, namespace: str, unknown: list[str]) -> dict[str, Any]:
        return {
            "id": entry_id,
            "state": "UNKNOWN",
            "message": f"the state of {entry_id!r} in namespace {namespace!r} is not known now: "
            f"{', '.join(unknown)} did not answer or is recovering its tables; retry shortly",
        }

    def public(doc: dict[str, Any]) -> dict[str, Any]:
        def at(ms: int | None) -> str | None:
            return None if ms is None else iso(ms / 1000)

        return {
            "id": doc["id"],
            "namespace": doc["ns"],
            "key": doc.get("key"),
            "state": doc["state"],
            "partition": doc.get("partition"),
            "offset": doc.get("offset"),
            "written_at": at(doc["written_at_us"] // 1000) if doc.get("written_at_us") else None,
            "due_at": at(doc.get("due_ms")),
            "updated_at": at(doc.get("updated_ms")),
            "last_error": doc.get("last_error"),
            "targets": [
                {
                    "target": tid,
                    "type": t.get("type"),
                    "state": t["state"],
                    "attempts": t.get("attempts", 0),
                    "last_error": t.get("last_error"),
                    "next_attempt_at": at(t.get("next_attempt_ms")),
                    "held_behind": t.get("held_behind"),
                }
                for tid, t in sorted(doc.get("targets", {}).items())
            ],
        }

    @app.page("/v1/log/{namespace}/{entry_id}")
    class EntryView(View):
        async def get(self, request: Request, namespace: str, entry_id: str) -> Response:
            local_only = request.query.get("local") == "1"
            if local_only:  # a peer asks what this worker's active partitions hold
                doc = best(local_states(namespace, entry_id))
                if settling() and (doc is None or doc.get("state") not in FINAL):
                    # its tables may be behind their changelogs: only a final state is known now
                    return respond(self, 503, {"message": "recovering tables"})
                unknown: list[str] = []
            else:
                doc, unknown = await find_state(namespace, entry_id)
            if (doc is None or doc.get("offset") is None) and unknown:
                # the worker holding the entry may be the one that did not answer
                return respond(self, 503, unknown_for_now(entry_id, namespace, unknown))
            if doc is None:
                return respond(
                    self,
                    404,
                    {
                        "message": f"no entry {entry_id!r} in namespace {namespace!r} "
                        "(never written, not yet consumed, or past retention)"
                    },
                )
            body = public(doc)
            if local_only:
                body["_doc"] = doc
            return respond(self, 200, body)

        async def delete(self, request: Request, namespace: str, entry_id: str) -> Response:
            if wal.registry.get(namespace) is None:
                return respond(self, 404, {"message": f"unknown namespace {namespace!r}"})
            key = request.query.get("key") or entry_id
            known, unknown = await find_state(namespace, entry_id)
            if known is not None and known.get("offset") is not None:
                # a written entry: its own partition decides (nothing else is touched)
                if known["state"] in FINAL:
                    body = public(known)
                    if known["state"] == EntryState.CANCELLED:
                        return respond(self, 200, body)
                    return respond(self, 409, {**body, "message": f"entry is already {known['state']}"})
                partitions = [int(known["partition"])]
                command = commands.cancel(namespace, entry_id, partitions[0])
            elif unknown:
                # cancelling in advance while part of the fleet cannot say whether the entry
                # exists could mark a delivered entry cancelled: refuse rather than guess
                return respond(self, 503, unknown_for_now(entry_id, namespace, unknown))
            else:
                # not seen yet: every partition is asked, and the key's own partition marks
                # the entry cancelled in advance (with ``?key=`` when the key is not the id)
                partitions = list(range(settings.partitions))
                command = commands.cancel(namespace, entry_id, wal.partition_for(key))
            try:
                futures = [
                    await wal.producer.send(wal.command_topic, command, key=commands.COMMAND_KEY, partition=p)
                    for p in partitions
                ]
                await asyncio.wait_for(asyncio.gather(*futures), timeout=settings.produce_timeout_s)
            except Exception as exc:
                return respond(self, 503, {"message": f"could not send the cancellation: {exc}"})
            # a later write of this id through this worker is refused at once (409)
            wal.writer.cancelled(namespace, entry_id)
            deadline = time.monotonic() + 5.0
            doc = None
            while time.monotonic() < deadline:
                doc, _ = await find_state(namespace, entry_id)
                if doc is not None and doc["state"] in FINAL:
                    break
                await asyncio.sleep(0.1)
            if doc is None:
                return respond(
                    self,
                    202,
                    {"id": entry_id, "state": "CANCELLING", "message": "cancellation sent; state not visible yet"},
                )
            body = public(doc)
            if doc["state"] == EntryState.CANCELLED:
                return respond(self, 200, body)
            if doc["state"] in FINAL:
                return respond(self, 409, {**body, "message": f"entry is already {doc['state']}"})
            return respond(self, 202, {**body, "message": "cancellation sent; not applied yet"})

    def dlq_row(row: dict[str, Any]) -> dict[str, Any]:
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

    def parse_time(value: str | None, name: str) -> float | None:
        if not value:
            return None
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise BodyError(400, f"{name}: not an ISO-8601 time: {value!r}") from None
        if dt.tzinfo is None:
            raise BodyError(400, f"{name}: needs a timezone (e.g. 2026-11-26T12:00:00Z)")
        return dt.timestamp()

    async def dead_letter_rows(ns: str, query: dict[str, str], local_only: bool) -> list[dict[str, Any]]:
        """Index rows of ``ns`` matching ``query`` (id, error_class, since, until, limit),
        from this worker's active partitions and, unless ``local_only``, the fleet's."""
        unknown = sorted(set(query) - {"id", "error_class", "since", "until", "limit", "local"})
        if unknown:
            raise BodyError(400, f"unknown filter(s) {unknown}; expected id, error_class, since, until, limit")
        since, until = parse_time(query.get("since"), "since"), parse_time(query.get("until"), "until")
        raw_limit = query.get("limit") or "1000"
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 100_000:
            raise BodyError(400, f"limit: expected a whole number from 1 to 100000, not {raw_limit!r}")
        limit = int(raw_limit)
        classes = {c.value for c in ErrorClass}
        if query.get("error_class") and query["error_class"] not in classes:
            raise BodyError(400, f"error_class: expected one of {sorted(classes)}, not {query['error_class']!r}")
        actives = set(wal.active_partitions())
        rows = []
        for row in wal.dlq_index.rows(ns, ordered.partitions(wal.dlq_index.table, actives), query.get("id")):
            if query.get("error_class") and row["error_class"] != query["error_class"]:
                continue
            if since is not None and row["last_failure_s"] < since:
                continue
            if until is not None and row["last_failure_s"] >= until:
                continue
            rows.append(row)
        if not local_only:
            params = {k: v for k, v in query.items() if v} | {"local": "1"}
            for a in await wal.fleet.ask_peers(f"/v1/dlq/{quote(ns, safe='')}", params, timeout_s=10.0):
                if not a.ok:
                    raise BodyError(503, f"worker {a.peer} did not answer; the list would be incomplete")
                rows.extend(a.body["_rows"])
        rows.sort(key=lambda r: (r["last_failure_s"], r["id"]))
        return rows[:limit]

    @app.page("/v1/dlq/{namespace}")
    class DeadLettersView(View):
        async def get(self, request: Request, namespace: str) -> Response:
            local_only = request.query.get("local") == "1"
            try:
                rows = await dead_letter_rows(namespace, dict(request.query), local_only)
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
            try:
                body = await read_json(request, settings.max_request_bytes)
                if not isinstance(body, dict):
                    raise BodyError(400, "expected a JSON object")
                unknown = sorted(set(body) - REDRIVE_FIELDS)
                if unknown:
                    # a misspelt filter ("id" for "ids") must not widen a redrive to every letter
                    raise BodyError(400, f"unknown field(s) {unknown}; expected {sorted(REDRIVE_FIELDS)}")
                ids = body.get("ids")
                if ids is not None and not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
                    raise BodyError(400, "ids: expected a list of entry ids")
                rate = body.get("rate")
                if rate is not None and not (_is_number(rate) and MIN_REDRIVE_RATE <= rate <= 1e6):
                    # a rate of 1e-300 slept for ever between two redrives, holding the request
                    raise BodyError(400, f"rate: expected redrives per second from {MIN_REDRIVE_RATE} to 1000000")
                dry_run = body.get("dry_run", True)
                if not isinstance(dry_run, bool):
                    raise BodyError(400, "dry_run: expected true or false")
                wait_s = body.get("wait_s", 10)
                if not (_is_number(wait_s) and 0 <= wait_s <= 120):
                    raise BodyError(400, "wait_s: expected seconds from 0 to 120")
                query = {k: str(body[k]) for k in ("error_class", "since", "until", "limit") if body.get(k) is not None}
                if ids is not None and len(ids) == 1:
                    query["id"] = ids[0]
                rows = await dead_letter_rows(namespace, query, local_only=False)
            except (BodyError, ValueError) as exc:
                return respond(self, getattr(exc, "status", 400), {"message": str(exc)})
            if ids is not None:
                wanted = set(ids)
                rows = [r for r in rows if r["id"] in wanted]
            if dry_run:
                return respond(self, 200, {"dry_run": True, "would_redrive": [dlq_row(r) for r in rows]})
            sent = 0
            sent_ms = int(time.time() * 1000)
            for row in rows:
                cmd = orjson.dumps({"op": "redrive", "ns": row["ns"], "id": row["id"], "target_id": row["target_id"]})
                fut = await wal.producer.send(
                    wal.command_topic, cmd, key=commands.COMMAND_KEY, partition=row["source"][1]
                )
                await fut
                sent += 1
                if rate and sent < len(rows):
                    await asyncio.sleep(1.0 / float(rate))
            results = await redrive_outcomes(rows, sent_ms, float(wait_s))
            counts = {o: sum(1 for r in results if r["outcome"] == o) for o in ("DELIVERED", "DEAD", "PENDING")}
            return respond(self, 200, {"dry_run": False, "redriven": sent, "sent_at_ms": sent_ms,
                                       **{k.lower(): v for k, v in counts.items()}, "results": results})

    async def redrive_outcomes(rows: list[dict[str, Any]], sent_ms: int, wait_s: float) -> list[dict[str, Any]]:
        """What became of each redriven dead letter: its target's state (the whole entry's for a
        letter without a target) once it was updated after ``sent_ms`` and is final, else
        PENDING when ``wait_s`` runs out."""
        results: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + wait_s
        while True:
            for n, row in enumerate(rows):
                if n in results:
                    continue
                doc, _ = await find_state(row["ns"], row["id"])
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

    @app.page("/v1/namespaces")
    class NamespacesView(View):
        async def get(self, request: Request) -> Response:
            return respond(self, 200, {"namespaces": [c.model_dump(mode="json") for c in wal.registry.all()]})

    @app.page("/v1/namespaces/{name}")
    class NamespaceView(View):
        async def get(self, request: Request, name: str) -> Response:
            cfg = wal.registry.get(name)
            if cfg is None:
                return respond(self, 404, {"message": f"unknown namespace {name!r}"})
            return respond(self, 200, cfg.model_dump(mode="json"))

        async def put(self, request: Request, name: str) -> Response:
            try:
                body = await request.read()
            except HTTPRequestEntityTooLarge:
                return respond(self, 413, {"message": "namespace document too large"})
            try:
                cfg = parse_namespace(body, name=name)
            except NamespaceError as exc:
                return respond(self, 400, {"message": str(exc)})
            try:
                applied = await wal.registry.apply(cfg)
            except TimeoutError:
                return respond(self, 503, {"message": "namespace written but not yet visible; retry GET"})
            except Exception as exc:
                log.exception("namespace apply failed")
                return respond(self, 503, {"message": f"could not store namespace: {exc}"})
            return respond(self, 200, applied.model_dump(mode="json"))

        async def delete(self, request: Request, name: str) -> Response:
            """``?force=true`` deletes a namespace with pending entries, dead-lettering them;
            without it such a deletion is refused (409) with the count."""
            force = request.query.get("force", "false")
            if force not in ("true", "false") or set(request.query) - {"force"}:
                return respond(self, 400, {"message": "expected at most ?force=true or ?force=false"})
            if wal.registry.get(name) is None:
                return respond(self, 404, {"message": f"unknown namespace {name!r}"})
            try:
                pending = await pending_entries(name)
                backlog = await unconsumed(settings.broker, settings.app_id, wal_topic(name))
            except BodyError as exc:
                return respond(self, exc.status, {"message": exc.message})
            except Exception as exc:
                return respond(self, 503, {"message": f"cannot count the namespace's pending entries: {exc}"})
            if (pending or backlog) and force != "true":
                return respond(self, 409, {
                    "message": f"namespace {name!r} has {len(pending)} pending entries (delayed, retrying or "
                    f"held) and {backlog} not yet consumed; deleting with force (?force=true, CLI --force) "
                    "dead-letters the pending "
                    "ones (the unconsumed ones stay in its WAL topic, delivered if it is created again)",
                    "pending": len(pending),
                    "unconsumed": backlog,
                })
            try:
                existed = await wal.registry.delete(name)
                if existed and pending:
                    futures = [
                        await wal.producer.send(wal.command_topic, commands.purge(name), key=commands.COMMAND_KEY,
                                                partition=p)
                        for p in range(settings.partitions)
                    ]
                    await asyncio.wait_for(asyncio.gather(*futures), timeout=settings.produce_timeout_s)
            except Exception as exc:
                return respond(self, 503, {"message": f"could not delete namespace: {exc}"})
            if not existed:
                return respond(self, 404, {"message": f"unknown namespace {name!r}"})
            return respond(self, 200, {"deleted": name, "dead_lettered": len(pending), "unconsumed": backlog})

    def local_pending(ns: str) -> set[str]:
        """Ids of ``ns``'s entries waiting in this worker's active partitions: timers, held
        entries, and state documents not final."""
        actives = set(wal.active_partitions())
        ids: set[str] = set()
        for p in ordered.partitions(wal.schedule.table, actives):
            ids.update(str(t.entry.get("id")) for _, t in wal.schedule.of_namespace(p, ns))
        for p in ordered.partitions(wal.key_order.held, actives):
            ids.update(str(item["entry"].get("id")) for _, item in wal.key_order.of_namespace(p, ns))
        for p in ordered.partitions(wal.states.table, actives):
            ids.update(d["id"] for d in wal.states.of_namespace(p, ns) if d["state"] not in FINAL)
        return ids

    async def pending_entries(ns: str) -> set[str]:
        """Ids of ``ns``'s pending entries across the fleet; 503 when a worker cannot say."""
        if settling():
            raise BodyError(503, "this worker is recovering its tables; retry shortly")
        ids = local_pending(ns)
        for a in await wal.fleet.ask_peers(f"/v1/internal/pending/{quote(ns, safe='')}", timeout_s=10.0):
            if not a.ok:
                raise BodyError(503, f"worker {a.peer} did not say which entries it holds; retry shortly")
            ids.update(a.body["ids"])
        return ids

    @app.page("/v1/internal/pending/{namespace}")
    class PendingView(View):
        """Fleet-internal: the ids of a namespace's pending entries this worker holds."""

        async def get(self, request: Request, namespace: str) -> Response:
            if settling():
                return respond(self, 503, {"message": "recovering tables"})
            return respond(self, 200, {"ids": sorted(local_pending(namespace))})

    @app.page("/v1/health")
    class HealthView(View):
        async def get(self, request: Request) -> Response:
            assignment = (
                sorted(f"{tp.topic}:{tp.partition}" for tp in app.consumer.assignment())
                if app.consumer is not None
                else []
            )
            return respond(
                self,
                200,
                {
                    "status": "ok",
                    "shard": settings.shard,
                    "consumed_topics": wal.consumed_topics,
                    "assigned": assignment,
                    "namespaces": len(wal.registry.all()),
                    "circuits": {
                        tid: {
                            "target": b.label,
                            "open": b.is_open,
                            "transitions": [{"at": t, "to": what} for t, what in b.transitions],
                        }
                        for tid, b in wal.breakers.all().items()
                    },
                },
            )

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(generate_latest(wal.metrics.registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])
