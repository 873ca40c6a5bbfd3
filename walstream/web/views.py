"""The HTTP API (user-facing contract), one module per resource:

- walstream.web.write — ``POST /v1/log``, ``POST /v1/log/batch``;
- walstream.web.entries — ``GET``/``DELETE /v1/log/{ns}/{id}``;
- walstream.web.dead_letters — ``GET /v1/dlq/{ns}``, ``POST /v1/dlq/{ns}/redrive``;
- walstream.web.namespaces — ``/v1/namespaces[/{name}]``, ``/v1/internal/pending/{ns}``;
- walstream.web.ops — ``GET /v1/health``, ``GET /metrics``.

Every error is JSON with a ``message`` naming the problem; a failed write answers
``{"durable": "FAILED", "id": ..., "message": ...}`` and wrote nothing (walstream.web.common).
Views get a :class:`walstream.context.WebContext`, never the worker itself.
"""

from __future__ import annotations

from walstream.context import WebContext
from walstream.web import dead_letters, entries, namespaces, ops, write
from walstream.web.write import repeat_answer

__all__ = ["register_views", "repeat_answer"]


def register_views(ctx: WebContext) -> None:
    for module in (write, entries, dead_letters, namespaces, ops):
        module.register(ctx)
