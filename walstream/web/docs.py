"""The API's description: ``GET /openapi.json`` (walstream.web.openapi) and ``GET /docs``,
a Swagger UI page over it. The page's assets come from the ``swagger-ui-py`` package and are
served by the worker itself (``/docs/static/``), so the page works without network access."""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import files

import orjson
from faust.web import Request, Response, View

from walstream.context import WebContext
from walstream.web.openapi import Operation, spec

OPERATIONS = (
    Operation("get", "/openapi.json", "This document (OpenAPI 3.1)", "operations", answers={200: None}),
    Operation("get", "/docs", "A browsable page of this document", "operations", answers={200: None},
              content_type="text/html"),
)

#: where the page's scripts and styles are served from
STATIC_PREFIX = "/docs/static"

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>walstream API</title>
<link rel="stylesheet" href="{static}/swagger-ui.css">
</head>
<body>
<div id="api"></div>
<script src="{static}/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({{url: "/openapi.json", dom_id: "#api", deepLinking: true}});
</script>
</body>
</html>
"""


def register(ctx: WebContext, operations: Sequence[Operation]) -> None:
    """Serve the description of ``operations`` (which include these two routes)."""
    app = ctx.faust
    document = orjson.dumps(spec(operations))
    page = _PAGE.format(static=STATIC_PREFIX).encode()
    app.web.add_static(STATIC_PREFIX, str(files("swagger_ui") / "static"))

    @app.page("/openapi.json")
    class OpenApiView(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(document, content_type="application/json")

    @app.page("/docs")
    class DocsView(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(page, content_type="text/html")
