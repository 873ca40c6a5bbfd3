"""The HTTP API (user-facing contract), one module per resource:

- walstream.web.write — ``POST /v1/log``, ``POST /v1/log/batch``;
- walstream.web.entries — ``GET``/``DELETE /v1/log/{ns}/{id}``;
- walstream.web.dead_letters — ``GET /v1/dlq/{ns}``, ``POST /v1/dlq/{ns}/redrive``;
- walstream.web.jobs — ``POST /v1/replay/{ns}``, ``GET /v1/jobs``, ``GET``/``DELETE /v1/jobs/{id}``;
- walstream.web.namespaces — ``/v1/namespaces[/{name}]``, ``/v1/internal/pending/{ns}``;
- walstream.web.ops — ``GET /v1/health``, ``GET /metrics``;
- walstream.web.pages.views — the operator's pages under ``/ui`` (HTML, and JSON);
- walstream.web.docs — ``GET /openapi.json`` (from every module's ``OPERATIONS``), ``GET /docs``.

Every error is JSON with a ``message`` naming the problem; a failed write answers
``{"durable": "FAILED", "id": ..., "message": ...}`` and wrote nothing (walstream.web.common).
Views get a :class:`walstream.context.WebContext`, never the worker itself.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from aiohttp.web import normalize_path_middleware
from faust.web.drivers.aiohttp import Web as AiohttpWeb

from walstream.auth import bearer
from walstream.context import WebContext
from walstream.web import dead_letters, docs, entries, groups, jobs, namespaces, ops, write
from walstream.web.common import json_errors
from walstream.web.openapi import Operation
from walstream.web.pages import views as pages
from walstream.web.pages.render import checked_forms, query_refusal
from walstream.web.pages.views import page_refusal
from walstream.web.query import checked_queries
from walstream.web.write import repeat_answer

__all__ = ["OPERATIONS", "register_views", "repeat_answer"]

#: the resources, each a module with ``OPERATIONS`` and ``register(ctx)``
RESOURCES = (write, entries, groups, dead_letters, jobs, namespaces, ops, pages)
#: every operation of the API, as ``GET /openapi.json`` describes it
OPERATIONS: tuple[Operation, ...] = (*(op for m in RESOURCES for op in m.OPERATIONS), *docs.OPERATIONS)


def register_views(ctx: WebContext) -> None:
    driver = ctx.faust.web
    if not isinstance(driver, AiohttpWeb):  # the only web driver walstream configures
        raise TypeError(f"walstream's views need Faust's aiohttp web driver, not {type(driver).__name__}")
    driver.web_app.middlewares.append(json_errors)
    # /ui/ and /v1/namespaces/ are /ui and /v1/namespaces (308: the method and body are kept)
    driver.web_app.middlewares.append(normalize_path_middleware(append_slash=False, remove_slash=True,
                                                                merge_slashes=False))
    driver.web_app.middlewares.append(checked_queries(OPERATIONS, refusal=query_refusal))
    # a form a page cannot read is refused before anything reads it (or forwards it)
    driver.web_app.middlewares.append(checked_forms)
    # after the query check: a request with a bad query is refused here, not forwarded
    driver.web_app.middlewares.append(ctx.shard_router.middleware(guard=_shard_guard(ctx), refusal=query_refusal))
    for module in RESOURCES:
        module.register(ctx)
    docs.register(ctx, OPERATIONS)


def _shard_guard(ctx: WebContext) -> Callable[[web.Request, str], web.StreamResponse | None]:
    """This worker's own auth checks of a request it would forward to another shard
    (walstream.shard_router): those its views make, read from the operations' ``auth`` and
    ``action``, so a caller gets through a worker only what that worker would allow itself."""
    guarded = {(op.method.upper(), op.path): op for op in OPERATIONS if op.auth is not None}

    def guard(request: web.Request, namespace: str) -> web.StreamResponse | None:
        if request.path == "/ui" or request.path.startswith("/ui/"):
            return page_refusal(ctx.auth, request)
        resource = request.match_info.route.resource
        op = guarded.get((request.method, resource.canonical if resource is not None else request.path))
        if op is None:
            return None
        if op.auth == "admin":
            denied = ctx.auth.admin(request.headers, op.action or op.summary)
        else:  # the namespace's writers
            cfg = ctx.registry.get(namespace)
            denied = ctx.auth.writer(namespace, cfg.write_tokens if cfg else (), bearer(request.headers))
        return None if denied is None else web.json_response({"message": denied.message}, status=denied.status)

    return guard
