"""The API's description: each resource module lists its :class:`Operation`\\ s, and
:func:`spec` turns them and the pydantic models of walstream.api into an OpenAPI 3.1
document, served at ``GET /openapi.json`` with a browsable page at ``GET /docs``
(Swagger UI's assets from the ``swagger-ui-py`` package, served by the worker: no network).

A route without an operation, or an operation without a route, fails
``tests/unit/test_openapi.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from walstream import installed_version
from walstream.api import ErrorAnswer

#: the OpenAPI version written
OPENAPI_VERSION = "3.1.0"
_REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Param:
    """A path or query parameter; ``schema`` is its JSON schema."""

    name: str
    where: Literal["path", "query"]
    description: str
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False


@dataclass(frozen=True)
class Operation:
    """One method on one path. ``answers``: status → the model of its JSON body (None: no
    JSON body is described, e.g. Prometheus text). Errors without a model answer
    :class:`~walstream.api.ErrorAnswer`. ``internal``: asked by other workers, not users."""

    method: Literal["get", "post", "put", "delete"]
    path: str
    summary: str
    tag: str
    answers: Mapping[int, type[BaseModel] | None]
    body: type[BaseModel] | None = None
    params: tuple[Param, ...] = ()
    description: str = ""
    content_type: str = "application/json"
    internal: bool = False
    #: the token it needs (walstream.auth): "admin" when WALSTREAM_ADMIN_TOKENS is set,
    #: "write" when the namespace has write tokens; 401 and 403 are added to its answers
    #: unless ``refused_per_item``
    auth: Literal["admin", "write"] | None = None
    #: what the operation does, as a refusal names it ("deleting a namespace needs ..."); the
    #: view and a worker forwarding it to another shard (walstream.web.views) both use it
    action: str = ""
    #: refusals (401, 403 among them) are answered per item inside a 200, never as the status
    refused_per_item: bool = False


def path_param(name: str, description: str) -> Param:
    return Param(name, "path", description, required=True)


NAMESPACE = path_param("namespace", "the namespace's name")
ENTRY_ID = path_param("entry_id", "the entry's id")
LOCAL = Param(
    "local", "query", "fleet-internal: `1` answers from this worker's own partitions only",
    {"type": "string", "enum": ["1"]},
)


def spec(operations: Iterable[Operation]) -> dict[str, Any]:
    """The OpenAPI document of ``operations``."""
    ops = list(operations)
    models: set[tuple[type[BaseModel], Literal["validation", "serialization"]]] = {(ErrorAnswer, "serialization")}
    for op in ops:
        if op.body is not None:
            models.add((op.body, "validation"))
        models.update((m, "serialization") for m in op.answers.values() if m is not None)
    ordered = sorted(models, key=lambda m: (m[0].__name__, m[1]))
    refs, defs = models_json_schema(ordered, ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        doc: dict[str, Any] = {
            "summary": op.summary,
            "operationId": f"{op.method}_{op.path.strip('/').replace('/', '_').replace('{', '').replace('}', '')}",
            "tags": [op.tag],
            "responses": {},
        }
        if op.description:
            doc["description"] = op.description
        if op.params:
            doc["parameters"] = [
                {"name": p.name, "in": p.where, "required": p.required or p.where == "path",
                 "description": p.description, "schema": dict(p.schema)}
                for p in op.params
            ]
        if op.body is not None:
            doc["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": refs[(op.body, "validation")]}},
            }
        for status, model in sorted(op.answers.items()):
            answer: dict[str, Any] = {"description": _reason(status)}
            if model is None and status >= 400:
                model = ErrorAnswer  # every refusal is {"message": ...}
            if model is not None and status >= 400:
                answer["content"] = _error_content(op, refs[(model, "serialization")])
            elif model is not None:
                answer["content"] = {op.content_type: {"schema": refs[(model, "serialization")]}}
            elif op.content_type != "application/json":
                answer["content"] = {op.content_type: {"schema": {"type": "string"}}}
            doc["responses"][str(status)] = answer
        doc["responses"]["default"] = {
            "description": "an error: the message names the problem",
            "content": _error_content(op, refs[(ErrorAnswer, "serialization")]),
        }
        if op.auth is not None:
            # a token is needed only when configured (admin tokens, a namespace's write tokens)
            doc["security"] = [{"bearer": []}, {}]
            for status in () if op.refused_per_item else (401, 403):
                doc["responses"].setdefault(str(status), {
                    "description": _reason(status),
                    "content": _error_content(op, refs[(ErrorAnswer, "serialization")]),
                })
        if op.internal:
            doc["x-internal"] = True
        paths.setdefault(op.path, {})[op.method] = doc
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "walstream",
            "version": installed_version(),
            "description": "A write-ahead log service: durable writes, delivery to each namespace's "
            "targets with retries, delays and a dead-letter queue.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(defs.get("$defs", {}).items())),
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "an admin token (WALSTREAM_ADMIN_TOKENS) or a namespace's write token",
            }},
        },
    }


def _error_content(op: Operation, error_schema: Any) -> dict[str, Any]:
    """A refusal's content: ``{"message": ...}`` as JSON; an HTML page's own refusals are a
    page saying the same (a refusal before the view runs, e.g. a bad query, is JSON)."""
    content: dict[str, Any] = {"application/json": {"schema": error_schema}}
    if op.content_type == "text/html":
        content["text/html"] = {"schema": {"type": "string"}}
    return content


_REASONS = {
    200: "OK", 202: "accepted, not applied yet", 303: "see other: the sign-in form, or the page signed in to",
    400: "refused: the message names the problem",
    401: "a token is needed (Authorization: Bearer)", 403: "the token given is not allowed to do this",
    404: "not found", 409: "conflict", 413: "too large", 503: "not available now; retry",
}


def _reason(status: int) -> str:
    return _REASONS.get(status, str(status))
