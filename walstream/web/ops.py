"""Operations: ``GET /v1/health``, the probes ``GET /v1/health/ready`` and ``/v1/health/live``
(walstream.health), and ``GET /metrics`` (Prometheus)."""

from __future__ import annotations

from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from walstream.api import Health, Probe
from walstream.context import WebContext
from walstream.faust_consumer import assignment_of
from walstream.web.common import respond
from walstream.web.openapi import Operation

OPERATIONS = (
    Operation("get", "/v1/health", "This worker's assignment, namespaces and circuit breakers", "operations",
              answers={200: Health}),
    Operation("get", "/v1/health/ready", "Readiness: tables recovered and partitions sought once, not stopping",
              "operations", answers={200: Probe, 503: Probe}),
    Operation("get", "/v1/health/live", "Liveness: the delivery agent and the scheduler make progress",
              "operations", answers={200: Probe, 503: Probe}),
    Operation("get", "/metrics", "Prometheus metrics", "operations", answers={200: None},
              content_type="text/plain"),
)


def register(ctx: WebContext) -> None:
    app = ctx.faust
    settings = ctx.settings

    @app.page("/v1/health")
    class HealthView(View):
        async def get(self, request: Request) -> Response:
            assignment = sorted(f"{tp.topic}:{tp.partition}" for tp in assignment_of(app))
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

    @app.page("/v1/health/ready")
    class ReadyView(View):
        async def get(self, request: Request) -> Response:
            reasons = ctx.not_ready()
            return respond(self, 503 if reasons else 200, {"status": "not ready" if reasons else "ready",
                                                             "reasons": reasons})

    @app.page("/v1/health/live")
    class LiveView(View):
        async def get(self, request: Request) -> Response:
            stuck = ctx.liveness.stuck()
            return respond(self, 503 if stuck else 200, {"status": "stuck" if stuck else "live", "reasons": stuck})

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(generate_latest(ctx.metrics.registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])
