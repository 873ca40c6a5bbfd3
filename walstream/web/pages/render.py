"""How a page answers: HTML from its template, or the same data as JSON.

A page's data is one JSON document; ``GET /ui/<page>.json``, or the page's own URL asked
with ``Accept: application/json`` (and not ``text/html``), answers it as is, and the HTML
page is its template rendered over it (Jinja2, autoescaped: table keys, payloads and error
messages are user data).
"""

from __future__ import annotations

from typing import Any, cast

import orjson
from aiohttp import web
from faust.web import Request, Response, View
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from walstream.web.common import respond

#: the cookie the login form sets (the admin token itself: the worker keeps only digests)
COOKIE = "walstream_admin"

_ENV = Environment(
    loader=PackageLoader("walstream.web.pages", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,  # a field a template misspells fails its test, not silently
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters["json"] = lambda value: orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


def aio(request: Request) -> web.Request:
    """The request as aiohttp's (the only web driver walstream configures: walstream.web.views)."""
    return cast(web.Request, request)


def wants_json(request: Request) -> bool:
    """``.json`` at the end of the path, or an Accept header that asks for JSON, not HTML."""
    if aio(request).path.endswith(".json"):
        return True
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


def page(
    view: View, request: Request, template: str, data: dict[str, Any], status: int = 200, *, json_link: bool = True
) -> Response:
    """``data`` as JSON or rendered by ``template`` (which also gets ``path``: the page's
    own path without ``.json``, for its links; ``json_link``: the page has a JSON twin)."""
    if wants_json(request):
        response = respond(view, status, data)
        response.headers["Cache-Control"] = "no-store"
        return response
    # Faust's Response type is its own protocol; under its aiohttp driver answers are aiohttp's
    return cast(Response, html_page(aio(request), template, data, status, json_link=json_link))


def html_page(
    request: web.Request, template: str, data: dict[str, Any], status: int = 200, *, json_link: bool = True
) -> web.Response:
    """``template`` rendered over ``data`` as an HTML answer (see :func:`page`)."""
    html = render_html(template, data, request.path.removesuffix(".json"), json_link=json_link,
                       query=request.query_string, signed_in=COOKIE in request.cookies)
    # the pages show payloads and tokens' effects: never kept by a browser or a proxy
    return web.Response(body=html.encode(), content_type="text/html", status=status,
                        headers={"Cache-Control": "no-store"})


def render_html(
    template: str, data: dict[str, Any], path: str, *, json_link: bool = True, query: str = "", signed_in: bool = False
) -> str:
    """``template`` rendered over ``data`` (see :func:`page`; ``query``: the page's query
    string, kept in its JSON link; ``signed_in``: the browser has the login cookie, so the
    page offers to sign out)."""
    return _ENV.get_template(template).render(data=data, path=path, json_link=json_link, query=query,
                                              signed_in=signed_in)


def error(view: View, request: Request, status: int, message: str) -> Response:
    """A refusal: ``{"message": ...}`` as JSON, or a page saying it."""
    return page(view, request, "error.html", {"message": message, "status": status}, status, json_link=False)


def query_refusal(request: web.Request, status: int, message: str) -> web.Response | None:
    """How a page refuses a request before its view runs (a bad query: walstream.web.query):
    a page saying so, for a browser asking for one; None (the API's JSON) otherwise."""
    path = request.path
    if not (path == "/ui" or path.startswith("/ui/")) or wants_json(cast(Request, request)):
        return None
    return html_page(request, "error.html", {"message": message, "status": status}, status, json_link=False)


#: the pages' forms: url-encoded UTF-8, as a browser sends the pages' own forms
_FORM_PATHS = frozenset({"/ui/login", "/ui/dlq/redrive"})
_FORM = "application/x-www-form-urlencoded"


@web.middleware
async def checked_forms(request: web.Request, handler: Any) -> web.StreamResponse:
    """Refuse a form post to a page that is not url-encoded UTF-8 (415, 400), before a view
    or the shard router reads it: the pages send nothing else, and a view reading another
    kind would miss its fields (a multipart form's namespace) or fail on its bytes."""
    if request.method == "POST" and request.path in _FORM_PATHS:
        problem: tuple[int, str] | None = None
        if request.content_type != _FORM:
            problem = (415, f"send the form as {_FORM} (as the page's own form does), not {request.content_type}")
        elif (request.charset or "utf-8").lower() not in ("utf-8", "utf8"):
            problem = (415, f"send the form in UTF-8 (as the page's own form does), not {request.charset}")
        else:
            try:
                (await request.read()).decode("utf-8")
            except UnicodeDecodeError:
                problem = (400, "the form is not UTF-8 text")
        if problem is not None:
            status, message = problem
            return query_refusal(request, status, message) or web.json_response({"message": message}, status=status)
    response: web.StreamResponse = await handler(request)
    return response
