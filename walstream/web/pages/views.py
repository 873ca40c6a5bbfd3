"""The operator's pages, under ``/ui`` (each also as JSON: walstream.web.pages.render):

- ``/ui`` — overview: namespaces with lag, delayed/pending/retrying/held counts, dead letters,
  per target its entries not final and its circuit; writes and deliveries per second;
- ``/ui/fleet`` — workers, their partitions (active and standby), loops, version;
- ``/ui/tables`` — a walstream table's rows in one partition, paged and filtered, read on the
  worker that holds the partition actively;
- ``/ui/entry`` — an entry's state and per-target history, by namespace and id;
- ``/ui/dlq`` — a namespace's dead letters with payload, error and attempts, and a redrive
  form (``POST /ui/dlq/redrive``: dry run first, a rate);
- ``/ui/login`` — with ``WALSTREAM_ADMIN_TOKENS`` set, every page needs an admin token: a
  Bearer header, or the cookie this form sets (HttpOnly, SameSite=Strict, so another site's
  form cannot redrive with it); ``POST /ui/logout`` clears it.

``GET /v1/internal/report`` is each worker's own report (walstream.worker_report), which the
overview and fleet pages add up.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections import OrderedDict
from typing import Any, cast
from urllib.parse import quote, unquote, urlencode

from aiohttp import web
from faust.web import Request, Response, View
from pydantic import BaseModel

from walstream.auth import Auth, bearer
from walstream.context import WebContext
from walstream.namespaces.model import NAME_RE
from walstream.targets.base import ErrorClass
from walstream.web.common import BodyError, respond
from walstream.web.dead_letters import DeadLetterQueue, dlq_row, parse_redrive
from walstream.web.entries import public_status
from walstream.web.openapi import LOCAL, Operation, Param
from walstream.web.pages import gather
from walstream.web.pages.render import COOKIE, aio, error, html_page, page, wants_json
from walstream.web.pages.table_rows import PAGE_LIMIT, browse

#: executed redrives a worker remembers by the form they came from (see RedrivePage)
FORMS_KEPT = 1_000
#: where the login form may send the browser on: a page of the worker's (visible ASCII only)
_NEXT = re.compile(r"/ui(?:[/.?][\x21-\x7e]*)?")

_NS = Param("namespace", "query", "the namespace's name", {"type": "string", "pattern": NAME_RE.pattern})
_TABLE_PARAMS = (
    Param("table", "query", "the table's name (leave out: the list of tables)",
          {"type": "string", "minLength": 1}),
    Param("partition", "query", "the partition (default 0)", {"type": "integer", "minimum": 0, "maximum": 100_000}),
    Param("after", "query", "show rows after this key (hex, from the page's `next`)",
          {"type": "string", "pattern": "^([0-9a-f]{2})+$"}),
    Param("contains", "query", "only rows whose key contains this text", {"type": "string"}),
    Param("limit", "query", f"rows per page (default 100, at most {PAGE_LIMIT})",
          {"type": "integer", "minimum": 1, "maximum": PAGE_LIMIT}),
    LOCAL,
)
_ENTRY_PARAMS = (_NS, Param("id", "query", "the entry's id", {"type": "string"}))
_DLQ_PARAMS = (
    _NS,
    Param("error_class", "query", "only letters of this class",
          {"type": "string", "enum": [c.value for c in ErrorClass]}),
    # at most 500: each is a field of the redrive form, and a form takes at most 1,000
    Param("limit", "query", "at most this many (default 100)", {"type": "integer", "minimum": 1, "maximum": 500}),
)


def _both(
    path: str, summary: str, params: tuple[Param, ...] = (), refusals: tuple[int, ...] = ()
) -> tuple[Operation, Operation]:
    """A page and its JSON twin. ``refusals``: the statuses it may refuse with besides the
    admin guard's (a page without a token is sent to the sign-in form: 303)."""
    errors: dict[int, type[BaseModel] | None] = {status: None for status in refusals}
    return (
        Operation("get", path, summary, "pages", params=params, answers={200: None, 303: None, **errors},
                  content_type="text/html", auth="admin"),
        Operation("get", f"{path}.json", f"{summary} (as JSON)", "pages", params=params,
                  answers={200: None, **errors}, auth="admin"),
    )


OPERATIONS = (
    *_both("/ui", "Overview: namespaces, backlog, dead letters, circuits, rates"),
    *_both("/ui/fleet", "The fleet: workers and their partitions"),
    *_both("/ui/tables", "A table's rows in one partition", _TABLE_PARAMS, (400, 404, 409, 503)),
    *_both("/ui/entry", "An entry's state and history", _ENTRY_PARAMS, (400,)),
    *_both("/ui/dlq", "A namespace's dead letters", _DLQ_PARAMS, (400, 404, 503)),
    Operation("post", "/ui/dlq/redrive", "Redrive dead letters (a form: namespace, id..., dry_run, rate, "
              "form_id: a form sent again is answered with its first redrive's outcome, not redriven twice)",
              "pages", answers={200: None, 400: None, 404: None, 503: None}, content_type="text/html",
              auth="admin"),
    Operation("get", "/ui/login", "The admin token form", "pages", answers={200: None}, content_type="text/html",
              params=(Param("next", "query", "the page to go to after", {"type": "string", "pattern": "^/ui"}),)),
    Operation("post", "/ui/login", "Keep the admin token in a cookie for the pages (a form: token, next)",
              "pages", answers={303: None, 403: None}, content_type="text/html"),
    Operation("post", "/ui/logout", "Forget the admin token's cookie", "pages", answers={303: None},
              content_type="text/html"),
    Operation("get", gather.REPORT_PATH, "This worker's report (for the overview and fleet pages)", "internal",
              answers={200: None}, internal=True),
)


def token_of(request: web.Request) -> str | None:
    """The admin token a page request carries: a Bearer header, else the login cookie."""
    return bearer(request.headers) or unquote(request.cookies.get(COOKIE, "")) or None


def page_refusal(auth: Auth, request: web.Request) -> web.Response | None:
    """None when ``request`` may see the pages; else a 401/403 (JSON, or a page for a form
    post) or, for a page asked by a browser, the way to the login form (303)."""
    refused = auth.admin_token(token_of(request), "reading the operator's pages")
    if refused is None:
        return None
    if request.method != "GET" and not wants_json(cast(Request, request)):
        return html_page(request, "error.html", {"message": refused.message, "status": refused.status},
                         refused.status, json_link=False)
    if wants_json(cast(Request, request)) or request.method != "GET":
        return web.json_response({"message": refused.message}, status=refused.status)
    return web.Response(status=303, content_type="text/html",
                        headers={"Location": f"/ui/login?{urlencode({'next': request.path_qs})}"})


def register(ctx: WebContext) -> None:
    app = ctx.faust
    queue = DeadLetterQueue(ctx)
    tables = ctx.tables
    #: executed redrives by form id, oldest first (see RedrivePage)
    executed: OrderedDict[str, asyncio.Future[dict[str, Any]]] = OrderedDict()

    def denied(view: View, request: Request) -> Response | None:
        """None when the request may see the pages; else a 401/403 (JSON) or, for a page,
        the way to the login form."""
        return cast(Response, page_refusal(ctx.auth, aio(request)))

    def pages(path: str) -> Any:
        """Declare a page at ``path`` and at ``path.json``."""
        def wrap(cls: type[View]) -> type[View]:
            app.page(path)(cls)
            app.page(f"{path}.json")(type(f"{cls.__name__}Json", (cls,), {}))
            return cls
        return wrap

    @pages("/ui")
    class OverviewPage(View):
        async def get(self, request: Request) -> Response:
            if (refusal := denied(self, request)) is not None:
                return refusal
            return page(self, request, "overview.html", await gather.overview(ctx))

    @pages("/ui/fleet")
    class FleetPage(View):
        async def get(self, request: Request) -> Response:
            if (refusal := denied(self, request)) is not None:
                return refusal
            return page(self, request, "fleet.html", await gather.fleet(ctx))

    @pages("/ui/tables")
    class TablesPage(View):
        async def get(self, request: Request) -> Response:
            if (refusal := denied(self, request)) is not None:
                return refusal
            q = request.query
            name = q.get("table")
            if name is None:
                listing = {t: [{"partition": p, "owner": ctx.fleet.owner(tables[t].changelog_name, p)}
                               for p in range(ctx.settings.partitions)] for t in sorted(tables)}
                return page(self, request, "tables.html", {"tables": listing})
            if name not in tables:
                return error(self, request, 404, f"no table {name!r}; the tables are {', '.join(sorted(tables))}")
            partition = int(q.get("partition", "0"))
            if partition >= ctx.settings.partitions:
                return error(self, request, 404, f"table {name!r} has partitions 0 to {ctx.settings.partitions - 1}")
            limit = int(q.get("limit", "100"))
            if partition not in ctx.active_partitions():
                if q.get("local") == "1":
                    return error(self, request, 409, f"this worker does not hold partition {partition} actively")
                owner = ctx.fleet.owner(tables[name].changelog_name, partition)
                if owner is None or owner == ctx.fleet.self_url:
                    return error(self, request, 503, f"no worker holds partition {partition} actively yet "
                                 "(a rebalance is under way); retry shortly")
                token = token_of(aio(request))
                a = await ctx.fleet.ask(owner, "/ui/tables.json", {**q, "local": "1"}, timeout_s=10.0,
                                        headers={"Authorization": f"Bearer {token}"} if token else None)
                if not a.ok:
                    message = a.body.get("message") if isinstance(a.body, dict) else a.error
                    return error(self, request, 503 if a.status is None else a.status,
                                 f"worker {owner} holds partition {partition}: {message}")
                return page(self, request, "table.html", a.body)
            rows = browse(tables[name], partition, after=bytes.fromhex(q.get("after", "")),
                          contains=q.get("contains"), limit=limit)
            return page(self, request, "table.html", {
                "table": name, "partition": partition, "worker": ctx.fleet.self_url,
                "contains": q.get("contains"), "limit": limit, **rows,
            })

    @pages("/ui/entry")
    class EntryPage(View):
        async def get(self, request: Request) -> Response:
            if (refusal := denied(self, request)) is not None:
                return refusal
            ns, entry_id = request.query.get("namespace"), request.query.get("id")
            data: dict[str, Any] = {"namespace": ns, "id": entry_id, "entry": None, "unknown": []}
            if ns and entry_id:
                doc, unknown = await ctx.status.find(ns, entry_id)
                data |= {"entry": None if doc is None else public_status(doc), "unknown": unknown}
                if doc is None and not unknown:
                    data["message"] = f"no entry {entry_id!r} in namespace {ns!r}" + (
                        "" if ctx.registry.get(ns) is not None else f" (there is no namespace {ns!r})")
            return page(self, request, "entry.html", data)

    @pages("/ui/dlq")
    class DeadLettersPage(View):
        async def get(self, request: Request) -> Response:
            if (refusal := denied(self, request)) is not None:
                return refusal
            ns = request.query.get("namespace")
            namespaces = sorted(c.name for c in ctx.registry.all())
            # names this rendering of the redrive form (see RedrivePage)
            data: dict[str, Any] = {"namespace": ns, "namespaces": namespaces, "dead_letters": [],
                                    "form_id": secrets.token_urlsafe(16)}
            if ns:
                query = {k: v for k, v in request.query.items() if k in ("error_class", "limit")}
                query.setdefault("limit", "100")
                try:
                    rows = await queue.rows(ns, query, None, local_only=False)
                except BodyError as exc:
                    return error(self, request, exc.status, exc.message)
                # the payload comes with the letter: the index row keeps the entry
                data["dead_letters"] = [dlq_row(r) | {"entry": r.get("entry")} for r in rows]
            return page(self, request, "dlq.html", data)

    @app.page("/ui/dlq/redrive")
    class RedrivePage(View):
        async def post(self, request: Request) -> Response:
            if (refusal := denied(self, request)) is not None:
                return refusal
            form = await aio(request).post()
            ns = str(form.get("namespace", ""))
            if NAME_RE.fullmatch(ns) is None:
                return error(self, request, 400, "namespace: give the namespace's name")
            ids = [str(i) for i in form.getall("id", [])]
            if not ids:
                return error(self, request, 400, "choose at least one dead letter to redrive")
            body: dict[str, Any] = {"ids": ids, "dry_run": form.get("dry_run") == "on"}
            if form.get("rate"):
                try:
                    body["rate"] = float(str(form["rate"]))
                except ValueError:
                    return error(self, request, 400, f"rate: not a number of redrives per second: {form['rate']!r}")
            try:
                req = parse_redrive(body)
            except BodyError as exc:
                return error(self, request, exc.status, exc.message)
            # the same form sent again asks for the same redrive: other letters or another
            # namespace under a reused id are another redrive
            form_id = "|".join([str(form.get("form_id", ""))[:64], ns, *sorted(ids), str(form.get("rate", ""))])
            if not form.get("form_id"):
                form_id = ""
            run: asyncio.Future[dict[str, Any]]
            if req.dry_run or not form_id:
                run, repeated = asyncio.ensure_future(queue.redrive(ns, req)), False
            else:
                # a form sent twice (a double click, a reload, a retry after a lost answer)
                # waits for and shows its first redrive rather than sending every letter again
                prior = executed.get(form_id)
                run, repeated = prior or asyncio.ensure_future(queue.redrive(ns, req)), prior is not None
                executed[form_id] = run
                while len(executed) > FORMS_KEPT:
                    executed.popitem(last=False)
            try:
                # shielded: a browser that goes away does not stop a redrive half sent
                result = await asyncio.shield(run)
            except BodyError as exc:
                executed.pop(form_id, None)  # refused before anything was sent: it may be sent again
                return error(self, request, exc.status, exc.message)
            return page(self, request, "redrive.html", {"namespace": ns, "repeated": repeated, **result},
                        json_link=False)

    @app.page("/ui/login")
    class LoginPage(View):
        async def get(self, request: Request) -> Response:
            return page(self, request, "login.html", {"next": request.query.get("next", "/ui"), "message": None},
                        json_link=False)

        async def post(self, request: Request) -> Response:
            form = await aio(request).post()
            token, target = str(form.get("token", "")), str(form.get("next", "/ui"))
            if _NEXT.fullmatch(target) is None:
                target = "/ui"  # never a redirect off the worker's pages, nor a broken header
            if ctx.auth.admin_token(token or None, "reading the operator's pages") is not None:
                return page(self, request, "login.html", {"next": target, "message": "that is not an admin token"},
                        status=403, json_link=False)
            # Path=/ so that it covers /ui.json too; only the pages read it
            cookie = f"{COOKIE}={quote(token, safe='')}; Path=/; HttpOnly; SameSite=Strict"
            return self.bytes(b"", content_type="text/html", status=303,
                              headers={"Location": target, "Set-Cookie": cookie})

    @app.page("/ui/logout")
    class LogoutPage(View):
        async def post(self, request: Request) -> Response:
            cookie = f"{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"
            return self.bytes(b"", content_type="text/html", status=303,
                              headers={"Location": "/ui/login", "Set-Cookie": cookie})

    @app.page(gather.REPORT_PATH)
    class ReportView(View):
        async def get(self, request: Request) -> Response:
            return respond(self, 200, await ctx.report.report())
