"""An entry's status and its cancellation: ``GET`` and ``DELETE /v1/log/{ns}/{id}``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from faust.web import Request, Response, View

from walstream.api import EntryStatus
from walstream.auth import bearer
from walstream.context import WebContext
from walstream.delivery import commands
from walstream.delivery.dead_letters import iso
from walstream.tables.entry_state import FINAL, EntryState
from walstream.web.common import respond
from walstream.web.openapi import ENTRY_ID, LOCAL, NAMESPACE, Operation, Param

OPERATIONS = (
    Operation(
        "get", "/v1/log/{namespace}/{entry_id}", "An entry's state, and each target's", "entries",
        params=(NAMESPACE, ENTRY_ID, LOCAL), answers={200: EntryStatus, 404: None, 503: EntryStatus},
        description="Asked of any worker: the one holding the entry's partition answers through it. "
        "503 (state UNKNOWN) when a worker that may hold it cannot answer now.",
    ),
    Operation(
        "delete", "/v1/log/{namespace}/{entry_id}", "Cancel what of an entry is not delivered yet", "entries",
        params=(NAMESPACE, ENTRY_ID, Param("key", "query", "the entry's key when it is not its id "
                                             "(an entry not written yet)")),
        answers={200: EntryStatus, 202: EntryStatus, 404: None, 409: EntryStatus, 503: EntryStatus}, auth="write",
        description="200: CANCELLED. 202: sent, not applied yet. 409: already DELIVERED or DEAD.",
    ),
)


#: why a group's member or marker, once consumed, cannot be cancelled
GROUP_MEMBER_NOT_ALONE = (
    "a member of a mutation group is applied or aborted with its group; it cannot be cancelled alone "
    "(cancelled before it was consumed, it aborts its group)"
)


def public_status(doc: dict[str, Any]) -> dict[str, Any]:
    """An entry's state document as ``GET /v1/log/{ns}/{id}`` answers it (walstream.api):
    times as ISO-8601, one item per target."""
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
        **({"group": doc["group"]} if doc.get("group") is not None else {}),
        **({"origin": doc["origin"]} if doc.get("origin") is not None else {}),
    }


def replicated_refusal(known: dict[str, Any] | None, entry_id: str) -> dict[str, Any] | None:
    """Why an entry of a replicated namespace cannot be cancelled (a 409 body), or None.

    Only an entry waiting for its due time can be: until then no region applies it (each
    holds it in its own schedule), so every region can still cancel it. One being delivered
    may be applied in another region already; one not seen here may be on its way from the
    region it was written in (cancelled in advance here, it would be applied there only)."""
    if known is None or (known.get("offset") is None and known["state"] != EntryState.CANCELLED):
        return {"id": entry_id, "state": "UNKNOWN", "message": (
            f"entry {entry_id!r} is not in this region yet; in a replicated namespace an entry is cancelled once "
            "it is here (it may be on its way from the region it was written in, and cancelling in advance "
            "is not possible): retry shortly")}
    if known["state"] not in FINAL and not not_due(known):
        return {**public_status(known), "message": (
            "the entry is due: in a replicated namespace an entry can be cancelled only before its due time "
            "(it may be applied in another region already)")}
    return None


def not_due(doc: dict[str, Any], now_ms: int | None = None) -> bool:
    """Whether the entry of state ``doc`` is not due yet (then no region has applied it: a
    forward retrying to a peer does not make it due)."""
    due = doc.get("due_ms")
    return due is not None and due > (now_ms if now_ms is not None else int(time.time() * 1000))


def register(ctx: WebContext) -> None:
    app = ctx.faust
    status = ctx.status

    def unknown_for_now(entry_id: str, namespace: str, unknown: list[str]) -> dict[str, Any]:
        return {
            "id": entry_id,
            "state": "UNKNOWN",
            "message": f"the state of {entry_id!r} in namespace {namespace!r} is not known now: "
            f"{', '.join(unknown)} did not answer or is recovering its tables; retry shortly",
        }

    @app.page("/v1/log/{namespace}/{entry_id}")
    class EntryView(View):
        async def get(self, request: Request, namespace: str, entry_id: str) -> Response:
            local_only = request.query.get("local") == "1"
            if local_only:  # a peer asks what this worker's active partitions hold
                doc, known = status.local_answer(namespace, entry_id)
                if not known:
                    # its tables may be behind their changelogs: only a final state is known now
                    return respond(self, 503, {"message": "recovering tables"})
                unknown: list[str] = []
            else:
                doc, unknown = await status.find(namespace, entry_id)
            if (doc is None or doc.get("offset") is None) and unknown:
                # the worker holding the entry may be the one that did not answer
                return respond(self, 503, unknown_for_now(entry_id, namespace, unknown))
            if doc is None:
                why = ("there is no such namespace" if ctx.registry.get(namespace) is None
                       else "never written, not yet consumed, or past retention")
                return respond(self, 404, {"message": f"no entry {entry_id!r} in namespace {namespace!r} ({why})"})
            body = public_status(doc)
            if local_only:
                body["_doc"] = doc
            return respond(self, 200, body)

        async def delete(self, request: Request, namespace: str, entry_id: str) -> Response:
            ns = ctx.registry.get(namespace)
            if ns is None:
                return respond(self, 404, {"message": f"unknown namespace {namespace!r}"})
            if (denied := ctx.auth.writer(namespace, ns.write_tokens, bearer(request.headers))) is not None:
                return respond(self, denied.status, {"message": denied.message})
            key = request.query.get("key") or entry_id
            known, unknown = await status.find(namespace, entry_id)
            replicated = bool(ctx.peers.of(ns))
            if replicated and not unknown:
                if known is not None and known["state"] == EntryState.CANCELLED:
                    # cancelled here: the other regions are told (again: one may have been down)
                    sent = await ctx.peers.cancel(ns, entry_id, str(known.get("key") or key), ctx.clock.now_us())
                    return respond(self, 200, {**public_status(known), "peers": sent})
                if (refusal := replicated_refusal(known, entry_id)) is not None:
                    return respond(self, 409, refusal)
            if known is not None and known.get("offset") is not None:
                # a written entry: its own partition decides (nothing else is touched)
                if known["state"] in FINAL:
                    body = public_status(known)
                    if known["state"] == EntryState.CANCELLED:
                        return respond(self, 200, body)
                    return respond(self, 409, {**body, "message": f"entry is already {known['state']}"})
                if known.get("group") is not None:
                    return respond(self, 409, {**public_status(known), "message": GROUP_MEMBER_NOT_ALONE})
                partitions = [int(known["partition"])]
                command = commands.cancel(namespace, entry_id, partitions[0])
            elif unknown:
                # cancelling in advance while part of the fleet cannot say whether the entry
                # exists could mark a delivered entry cancelled: refuse rather than guess
                return respond(self, 503, unknown_for_now(entry_id, namespace, unknown))
            else:
                # not seen yet: every partition is asked, and the key's own partition marks
                # the entry cancelled in advance (with ``?key=`` when the key is not the id)
                partitions = list(range(ctx.settings.partitions))
                command = commands.cancel(namespace, entry_id, ctx.partition_for(key))
            try:
                await ctx.commands.send(command, partitions)
            except Exception as exc:
                return respond(self, 503, {"message": f"could not send the cancellation: {exc}"})
            # a later write of this id through this worker is refused at once (409)
            ctx.writer.cancelled(namespace, entry_id)
            deadline = time.monotonic() + 5.0
            doc = None
            while time.monotonic() < deadline:
                doc, _ = await status.find(namespace, entry_id)
                if doc is not None and doc["state"] in FINAL:
                    break
                await asyncio.sleep(0.1)
            # once cancelled here, the other regions holding the namespace cancel it too
            # (walstream.replication); not before: delivered here, it must stay so everywhere
            peers: dict[str, Any] = {}
            if replicated and doc is not None and doc["state"] == EntryState.CANCELLED:
                entry_key = str(doc.get("key") or key)
                peers = {"peers": await ctx.peers.cancel(ns, entry_id, entry_key, ctx.clock.now_us())}
            if doc is None:
                return respond(
                    self,
                    202,
                    {"id": entry_id, "state": "CANCELLING", "message": "cancellation sent; state not visible yet",
                     **peers},
                )
            body = {**public_status(doc), **peers}
            if doc["state"] == EntryState.CANCELLED:
                return respond(self, 200, body)
            if doc["state"] in FINAL:
                return respond(self, 409, {**body, "message": f"entry is already {doc['state']}"})
            if doc.get("group") is not None:  # consumed meanwhile: its group decides
                return respond(self, 409, {**body, "message": GROUP_MEMBER_NOT_ALONE})
            return respond(self, 202, {**body, "message": "cancellation sent; not applied yet"})
