"""Namespaces: ``GET /v1/namespaces``, ``GET``/``PUT``/``DELETE /v1/namespaces/{name}``, and
the fleet-internal ``GET /v1/internal/pending/{ns}``."""

from __future__ import annotations

import logging

from faust.web import Request, Response, View

from walstream.api import NamespaceBusy, NamespaceDeleted, NamespaceList, PendingIds
from walstream.context import WebContext
from walstream.delivery import commands
from walstream.kafka_admin import unconsumed
from walstream.namespaces.model import (
    NAME_RE,
    NamespaceConfig,
    NamespaceDocument,
    NamespaceError,
    parse_namespace,
    wal_topic,
)
from walstream.replication import region_problem
from walstream.shards import group_id
from walstream.status import FleetIncomplete
from walstream.web.common import BodyError, read_body, respond
from walstream.web.openapi import NAMESPACE, Operation, Param
from walstream.wording import counted

log = logging.getLogger(__name__)

NAME = Param("name", "path", "the namespace's name", {"type": "string", "pattern": NAME_RE.pattern}, required=True)

OPERATIONS = (
    Operation("get", "/v1/namespaces", "Every namespace's config", "namespaces", answers={200: NamespaceList}),
    Operation("get", "/v1/namespaces/{name}", "A namespace's config", "namespaces", params=(NAME,),
              answers={200: NamespaceConfig, 404: None}),
    Operation(
        "put", "/v1/namespaces/{name}", "Create or change a namespace", "namespaces", params=(NAME,),
        body=NamespaceDocument, answers={200: NamespaceConfig, 400: None, 409: None, 413: None, 503: None},
        auth="admin",
        description="The body is the namespace document as JSON (YAML is read too); `name` may be "
        "left out, else it must equal the path's. Its WAL topic is created. 409: its shard cannot change.",
    ),
    Operation(
        "delete", "/v1/namespaces/{name}", "Delete a namespace", "namespaces",
        params=(NAME, Param("force", "query", "`true` dead-letters its pending entries",
                            {"type": "string", "enum": ["true", "false"]})),
        answers={200: NamespaceDeleted, 400: None, 404: None, 409: NamespaceBusy, 503: None}, auth="admin",
        action="deleting a namespace",
    ),
    Operation(
        "get", "/v1/internal/pending/{namespace}", "The ids of the pending entries this worker holds",
        "internal", params=(NAMESPACE,), answers={200: PendingIds, 503: None}, internal=True,
    ),
)
#: DELETE /v1/namespaces/{name}, as the view and a forwarding worker check it
DELETE_NAMESPACE = next(op for op in OPERATIONS if (op.method, op.path) == ("delete", "/v1/namespaces/{name}"))


def register(ctx: WebContext) -> None:
    app = ctx.faust
    settings = ctx.settings
    registry = ctx.registry

    @app.page("/v1/namespaces")
    class NamespacesView(View):
        async def get(self, request: Request) -> Response:
            return respond(self, 200, {"namespaces": [c.model_dump(mode="json") for c in registry.all()]})

    @app.page("/v1/namespaces/{name}")
    class NamespaceView(View):
        async def get(self, request: Request, name: str) -> Response:
            cfg = registry.get(name)
            if cfg is None:
                return respond(self, 404, {"message": f"unknown namespace {name!r}"})
            return respond(self, 200, cfg.model_dump(mode="json"))

        async def put(self, request: Request, name: str) -> Response:
            if (denied := ctx.auth.admin(request.headers, "changing a namespace")) is not None:
                return respond(self, denied.status, {"message": denied.message})
            try:
                body = await read_body(request, settings.max_request_bytes)
            except BodyError as exc:
                return respond(self, exc.status, {"message": exc.message}, close=exc.close)
            try:
                cfg = parse_namespace(body, name=name)
            except NamespaceError as exc:
                return respond(self, 400, {"message": str(exc)})
            if (problem := region_problem(cfg, settings)) is not None:
                return respond(self, 400, {"message": problem})
            existing = registry.get(name)
            if existing is not None and existing.shard != cfg.shard:
                # its pending entries, timers, states and dead letters are in the old shard's
                # tables: status and cancellation would go to the new shard, which has none
                return respond(self, 409, {"message": (
                    f"namespace {name!r} is delivered by shard {existing.shard!r} and cannot move to shard "
                    f"{cfg.shard!r}: its pending entries and dead letters live in shard {existing.shard!r}'s "
                    f"tables. Create another namespace in shard {cfg.shard!r} for new entries, or delete this "
                    "one once it has nothing pending and create it again")})
            try:
                applied = await registry.apply(cfg)
            except TimeoutError:
                return respond(self, 503, {"message": "namespace written but not yet visible; retry GET"})
            except Exception as exc:
                log.exception("namespace apply failed")
                return respond(self, 503, {"message": f"could not store namespace: {exc}"})
            answer = applied.model_dump(mode="json")
            # and in every other region it lists, or listed: one dropped learns it is no
            # longer replicated (walstream.replication)
            peers = sorted(set(ctx.peers.of(applied)) | set(ctx.peers.of(existing) if existing else ()))
            if peers:
                answer["regions"] = await ctx.peers.push_namespace(applied, registry.written_ms(name), peers)
            return respond(self, 200, answer)

        async def delete(self, request: Request, name: str) -> Response:
            """``?force=true`` deletes a namespace with pending entries, dead-lettering them;
            without it such a deletion is refused (409) with the count."""
            if (denied := ctx.auth.admin(request.headers, DELETE_NAMESPACE.action)) is not None:
                return respond(self, denied.status, {"message": denied.message})
            force = request.query.get("force", "false")  # checked: walstream.web.query
            if (cfg := registry.get(name)) is None:
                return respond(self, 404, {"message": f"unknown namespace {name!r}"})
            try:
                pending = await ctx.status.pending(name)
                backlog = await unconsumed(settings.broker, group_id(settings.app_id, cfg.shard), wal_topic(name))
            except FleetIncomplete as exc:
                return respond(self, 503, {"message": str(exc)})
            except Exception as exc:
                return respond(self, 503, {"message": f"cannot count the namespace's pending entries: {exc}"})
            if (pending or backlog) and force != "true":
                return respond(self, 409, {
                    "message": f"namespace {name!r} has {counted(len(pending), 'pending entry', 'pending entries')} "
                    f"(delayed, retrying or held) and {backlog} not yet consumed; deleting with force "
                    "(?force=true, CLI --force) dead-letters the pending ones (the unconsumed ones stay in "
                    "its WAL topic, delivered if it is created again)",
                    "pending": len(pending),
                    "unconsumed": backlog,
                })
            try:
                existed = await registry.delete(name)
                if existed and pending:
                    await ctx.commands.send(commands.purge(name), range(settings.partitions))
            except Exception as exc:
                return respond(self, 503, {"message": f"could not delete namespace: {exc}"})
            if not existed:
                return respond(self, 404, {"message": f"unknown namespace {name!r}"})
            return respond(self, 200, {"deleted": name, "dead_lettered": len(pending), "unconsumed": backlog})

    @app.page("/v1/internal/pending/{namespace}")
    class PendingView(View):
        """Fleet-internal: the ids of a namespace's pending entries this worker holds."""

        async def get(self, request: Request, namespace: str) -> Response:
            if ctx.settling():
                return respond(self, 503, {"message": "recovering tables"})
            return respond(self, 200, {"ids": sorted(ctx.status.local_pending(namespace))})
