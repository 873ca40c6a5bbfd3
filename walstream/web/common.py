"""What every HTTP view shares: JSON answers, strict body reading, and errors that name
the problem (``{"message": ...}``; a failed write ``{"durable": "FAILED", "id", "message"}``)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, TypeVar

import orjson
from aiohttp import web
from aiohttp.web_exceptions import HTTPRequestEntityTooLarge
from aiohttp.web_protocol import RequestPayloadError
from faust.web import Request, Response, View
from pydantic import BaseModel, ValidationError

from walstream import strict_json
from walstream.namespaces.model import format_validation_error
from walstream.writer import Durable


class BodyError(Exception):
    """A request the view refuses: ``status`` (4xx, or 503) and a message naming the problem.
    ``close``: the rest of the body cannot be read, so the connection is not kept alive."""

    def __init__(self, status: int, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close


def respond(view: View, status: int, doc: Any, *, close: bool = False) -> Response:
    """``doc`` as JSON with ``status``; ``close``: tell the client not to reuse the connection."""
    headers = {"Connection": "close"} if close else None
    return view.bytes(orjson.dumps(doc), content_type="application/json", status=status, headers=headers)


async def read_body(request: Request, server_limit: int) -> bytes:
    """The body's bytes; :class:`BodyError` 413 past the web server's limit, 400 for a body
    that cannot be read as sent (a ``Content-Encoding`` it is not in, a broken chunk)."""
    try:
        return await request.read()
    except HTTPRequestEntityTooLarge:
        raise BodyError(413, f"request body is larger than {server_limit} bytes") from None
    except RequestPayloadError as exc:
        reason = str(exc).replace("\n", " ").strip()
        # aiohttp drops the connection after the answer (it cannot read past the bad part)
        raise BodyError(400, f"request body cannot be read as sent ({reason}); send it as plain JSON",
                        close=True) from None


async def read_json(request: Request, limit: int, *, server_limit: int, batch_of: str | None = None) -> Any:
    """The body, read strictly (:mod:`walstream.strict_json`: no duplicate keys, no number
    that would change, bounded nesting); a problem is a :class:`BodyError` naming it.
    ``limit``: the largest body this view takes, in bytes; ``server_limit``: the web server's
    own (``WALSTREAM_MAX_REQUEST_BYTES``). ``batch_of``: the body is ``{batch_of: [item,
    ...]}`` whose items are answered one by one, so an item's problem does not refuse the
    body (the item becomes a ``Refused``)."""
    body = await read_body(request, server_limit)
    if len(body) > limit:
        raise BodyError(413, f"request body is {len(body)} bytes; the limit is {limit} bytes")
    if not body:
        raise BodyError(400, "request body is empty; expected JSON")
    try:
        return strict_json.loads(body) if batch_of is None else strict_json.loads_batch(body, field=batch_of)
    except strict_json.StrictJSONError as exc:
        raise BodyError(400, f"malformed JSON: {exc}" if exc.malformed else str(exc)) from None


ModelT = TypeVar("ModelT", bound=BaseModel)


def parse_model(model: type[ModelT], body: Any) -> ModelT:
    """A request body (already read as JSON) as ``model``; :class:`BodyError` 400 naming each
    problem's field. Unknown fields are refused by the models (``extra="forbid"``): a
    misspelt field must not widen or change what the request does."""
    if not isinstance(body, dict):
        raise BodyError(400, "expected a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise BodyError(400, format_validation_error(exc)) from None


def failed(entry_id: Any, message: str) -> dict[str, Any]:
    return {
        "durable": Durable.FAILED.value,
        "id": entry_id if isinstance(entry_id, str) else None,
        "message": message,
    }


def parse_time(value: str | None, name: str) -> float | None:
    """An ISO-8601 time with a timezone as epoch seconds (None when absent); 400 otherwise."""
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BodyError(400, f"{name}: not an ISO-8601 time: {value!r}") from None
    if dt.tzinfo is None:
        raise BodyError(400, f"{name}: needs a timezone (e.g. 2026-11-26T12:00:00Z)")
    return dt.timestamp()


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Unknown routes (404), methods (405) and aiohttp's other refusals (a body over the
    limit: 413) answered as every other refusal is: JSON with a ``message`` (aiohttp's own
    are plain text), the ``Allow`` header of a 405 kept."""
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPNotFound:
        message = f"no such endpoint: {request.method} {request.path}; GET /openapi.json lists them"
        return web.json_response({"message": message}, status=404)
    except web.HTTPMethodNotAllowed as exc:
        allowed = _allow(exc.allowed_methods)
        message = f"{request.method} is not allowed on {request.path}; allowed: {allowed}"
        return web.json_response({"message": message}, status=405, headers={"Allow": allowed})
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # a redirect (a trailing slash) is an answer, not a refusal
        # aiohttp's own refusals raised while a body is read (413) are plain text
        return web.json_response({"message": exc.text or exc.reason}, status=exc.status)
    if response.status == 405 and request.method == "HEAD":
        # Faust routes HEAD to every view and answers it 405 where there is no GET, without
        # an Allow header: say what the route takes
        resource = request.match_info.route.resource
        methods = {route.method for route in resource} if resource is not None else set()
        return web.Response(status=405, headers={"Allow": _allow(methods)})
    return response


def _allow(methods: Iterable[str]) -> str:
    """An Allow header's value: HEAD only where GET is allowed (Faust lists HEAD everywhere)."""
    given = set(methods)
    return ", ".join(sorted(m for m in given if m != "HEAD" or "GET" in given))
