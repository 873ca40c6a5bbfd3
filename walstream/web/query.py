"""Query strings checked against what each route declares (its :class:`Operation`'s query
:class:`~walstream.web.openapi.Param`\\ s), for every route at once, before its view runs.

Refused with 400, naming the parameter: a name the route does not take (``?lcoal=1`` was
ignored, and the request asked the whole fleet instead of this worker), a parameter given
twice (unless it is declared an array: ``?id=a&id=b``), an empty value (an empty filter is
not "no filter": a client that meant one must hear of it), and a value outside the declared
``enum``, ``pattern`` or integer bounds. Values that need parsing beyond that (times) are
the views' to check. A route whose 400 is a :class:`~walstream.api.WriteResult` answers in
the shape of a failed write (``durable: FAILED``), as every refusal of a write does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from walstream.api import WriteResult
from walstream.web.common import failed
from walstream.web.openapi import Operation


def query_problem(op: Operation, query: MultiMapping[str]) -> str | None:
    """What is wrong with ``query`` for ``op`` (None: nothing)."""
    declared = {p.name: p for p in op.params if p.where == "query"}
    for name in dict.fromkeys(query.keys()):  # once each, in order given
        param = declared.get(name)
        if param is None:
            takes = f"it takes {', '.join(sorted(declared))}" if declared else "it takes none"
            return f"unknown query parameter {name!r} for {op.method.upper()} {op.path}; {takes}"
        values = query.getall(name)
        listed = param.schema.get("type") == "array"  # repeated: ?id=a&id=b
        if len(values) > 1 and not listed:
            return f"query parameter {name!r} is given {len(values)} times; give it once"
        for value in values:
            problem = _value_problem(param.schema["items"] if listed else param.schema, value)
            if problem is not None:
                return f"{name}: {problem}"
    return None


def _value_problem(schema: Mapping[str, Any], value: str) -> str | None:
    if value == "":
        return "empty; leave it out, or give a value"
    if "enum" in schema and value not in schema["enum"]:
        return f"expected one of {', '.join(map(str, schema['enum']))}, not {value!r}"
    if schema.get("type") == "integer":
        low, high = schema.get("minimum"), schema.get("maximum")
        if not (value.isascii() and value.isdigit()) or (low is not None and int(value) < low) or (
            high is not None and int(value) > high
        ):
            return f"expected a whole number from {low} to {high}, not {value!r}"
    if "pattern" in schema and re.search(schema["pattern"], value) is None:
        return f"does not match {schema['pattern']}: {value!r}"
    return None


def checked_queries(
    operations: Iterable[Operation],
    refusal: Callable[[web.Request, int, str], web.StreamResponse | None] = lambda request, status, message: None,
) -> Any:
    """An aiohttp middleware refusing requests whose query ``operations`` do not declare:
    400 with JSON naming the problem, or what ``refusal`` answers instead (None: the JSON)."""
    by_route: Mapping[tuple[str, str], Operation] = {(op.method.upper(), op.path): op for op in operations}

    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        resource = request.match_info.route.resource
        op = by_route.get((request.method, resource.canonical)) if resource is not None else None
        if op is not None and request.query:
            problem = query_problem(op, request.query)
            if problem is not None:
                doc = failed(None, problem) if op.answers.get(400) is WriteResult else {"message": problem}
                return refusal(request, 400, problem) or web.json_response(doc, status=400)
        response: web.StreamResponse = await handler(request)
        return response

    return check
