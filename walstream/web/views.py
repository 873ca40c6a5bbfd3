"""The HTTP API (user-facing contract): write API, namespaces, health, metrics.

Every error is JSON with a ``message`` naming the problem; a failed write answers
``{"durable": "FAILED", "id": ..., "message": ...}`` and wrote nothing.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp.web_exceptions import HTTPRequestEntityTooLarge
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from walstream.entry import Entry
from walstream.namespaces.model import NamespaceError, parse_namespace
from walstream.requests import RequestError, parse_log_request
from walstream.writer import Durable, WriteResult

if TYPE_CHECKING:
    from walstream.app import WalApp

log = logging.getLogger(__name__)


class BodyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def register_views(wal: WalApp) -> None:
    app = wal.faust
    settings = wal.settings

    def respond(view: View, status: int, doc: Any) -> Response:
        return view.bytes(orjson.dumps(doc), content_type="application/json", status=status)

    async def read_json(request: Request, limit: int) -> Any:
        try:
            body = await request.read()
        except HTTPRequestEntityTooLarge:
            raise BodyError(413, f"request body is larger than {settings.max_request_bytes} bytes") from None
        if len(body) > limit:
            raise BodyError(413, f"request body is {len(body)} bytes; the limit is {limit} bytes")
        if not body:
            raise BodyError(400, "request body is empty; expected JSON")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BodyError(400, f"malformed JSON: {exc}") from None

    def failed(entry_id: Any, message: str) -> dict[str, Any]:
        return {
            "durable": Durable.FAILED.value,
            "id": entry_id if isinstance(entry_id, str) else None,
            "message": message,
        }

    def validate(doc: Any) -> tuple[Entry, bytes]:
        return parse_log_request(
            doc, lookup=wal.registry.get, clock=wal.clock, max_entry_bytes=settings.max_entry_bytes
        )

    def count(results: list[WriteResult], namespaces: list[str]) -> None:
        for r, ns in zip(results, namespaces, strict=False):
            wal.metrics.writes.labels(ns, r.durable.value).inc()

    @app.page("/v1/log")
    class LogView(View):
        async def post(self, request: Request) -> Response:
            try:
                doc = await read_json(request, settings.max_entry_bytes + 64 * 1024)
            except BodyError as exc:
                return respond(self, exc.status, failed(None, exc.message))
            try:
                entry, value = validate(doc)
            except RequestError as exc:
                return respond(self, exc.status, failed(doc.get("id") if isinstance(doc, dict) else None, exc.message))
            started = time.perf_counter()
            [result] = await wal.writer.write([(entry, value)])
            wal.metrics.write_latency.observe(time.perf_counter() - started)
            count([result], [entry.namespace])
            return respond(self, result.status, result.to_dict())

    @app.page("/v1/log/batch")
    class LogBatchView(View):
        async def post(self, request: Request) -> Response:
            try:
                doc = await read_json(request, settings.max_request_bytes)
            except BodyError as exc:
                return respond(self, exc.status, {"message": exc.message})
            if not isinstance(doc, dict) or set(doc) != {"entries"} or not isinstance(doc["entries"], list):
                return respond(self, 400, {"message": 'expected {"entries": [ ... ]}'})
            items = doc["entries"]
            if len(items) > settings.max_batch_entries:
                return respond(
                    self, 413, {"message": f"{len(items)} entries; at most {settings.max_batch_entries} per batch"}
                )
            results: list[dict[str, Any] | None] = [None] * len(items)
            valid: list[tuple[Entry, bytes]] = []
            positions: list[int] = []
            for i, item in enumerate(items):
                try:
                    valid.append(validate(item))
                    positions.append(i)
                except RequestError as exc:
                    results[i] = {
                        **failed(item.get("id") if isinstance(item, dict) else None, exc.message),
                        "status": exc.status,
                    }
            if valid:
                started = time.perf_counter()
                written = await wal.writer.write(valid)
                wal.metrics.write_latency.observe(time.perf_counter() - started)
                count(written, [e.namespace for e, _ in valid])
                for pos, res in zip(positions, written, strict=False):
                    results[pos] = {**res.to_dict(), "status": res.status}
            return respond(self, 200, {"results": results})

    @app.page("/v1/log/{namespace}/{entry_id}")
    class EntryView(View):
        async def get(self, request: Request, namespace: str, entry_id: str) -> Response:
            return respond(self, 501, {"message": "entry status is not available yet"})

        async def delete(self, request: Request, namespace: str, entry_id: str) -> Response:
            return respond(self, 501, {"message": "cancelling entries is not available yet"})

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
            try:
                existed = await wal.registry.delete(name)
            except Exception as exc:
                return respond(self, 503, {"message": f"could not delete namespace: {exc}"})
            if not existed:
                return respond(self, 404, {"message": f"unknown namespace {name!r}"})
            return respond(self, 200, {"deleted": name})

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
