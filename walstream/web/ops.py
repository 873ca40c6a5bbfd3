"""Operations: ``GET /v1/health`` and ``GET /metrics`` (Prometheus)."""

from __future__ import annotations

from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from walstream.api import Health
from walstream.context import WebContext
from walstream.web.common import respond
from walstream.web.openapi import Operation

OPERATIONS = (
    Operation("get", "/v1/health", "This worker's assignment, namespaces and circuit breakers", "operations",
              answers={200: Health}),
    Operation("get", "/metrics", "Prometheus metrics", "operations", answers={200: None},
              content_type="text/plain"),
)


def register(ctx: WebContext) -> None:
    app = ctx.faust
    settings = ctx.settings

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
                    "consumed_topics": ctx.consumed_topics(),
                    "assigned": assignment,
                    "namespaces": len(ctx.registry.all()),
                    "circuits": {
                        tid: {
                            "target": b.label,
                            "open": b.is_open,
                            "transitions": [{"at": t, "to": what} for t, what in b.transitions],
                        }
                        for tid, b in ctx.breakers.all().items()
                    },
                },
            )

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(generate_latest(ctx.metrics.registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])
