"""Replay, index checks and jobs: ``POST /v1/replay/{namespace}``,
``POST /v1/index/{namespace}/{table}/check``, ``GET /v1/jobs``, ``GET``/``DELETE
/v1/jobs/{job_id}``, and the fleet-internal ``GET /v1/internal/cancelled/{namespace}``.

A job runs in the worker that accepted it (walstream.jobs); any other worker of the fleet
asked about it finds it by asking its peers (walstream.fleet), so a client may poll any
worker behind a load balancer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from faust.web import Request, Response, View

from walstream.api import CancelledIds, IndexCheckRequest, JobList, JobStatus, ReplayRequest
from walstream.context import WebContext
from walstream.fleet import PeerAnswer
from walstream.index_check import CheckRefused
from walstream.jobs import Job
from walstream.replay import ReplayRefused
from walstream.status import FleetIncomplete
from walstream.targets.base import TransientError
from walstream.web.common import BodyError, parse_model, read_json, respond
from walstream.web.openapi import LOCAL, NAMESPACE, Operation, path_param

log = logging.getLogger(__name__)

JOB_ID = path_param("job_id", "the job's id, as its start answered it")

OPERATIONS = (
    Operation(
        "post", "/v1/replay/{namespace}", "Replay the WAL from a time: re-apply entries with their write times",
        "replay", params=(NAMESPACE,), body=ReplayRequest,
        answers={202: JobStatus, 400: None, 404: None, 503: None}, auth="admin", action="replaying a namespace",
        description="Starts a job (follow it with GET /v1/jobs/{job_id}). 400 names the problem: a time "
        "before what the topic keeps (the answer gives the earliest time), an unknown target, a bad field.",
    ),
    Operation(
        "post", "/v1/index/{namespace}/{table}/check", "Compare a Cassandra table with its Elasticsearch index",
        "replay", params=(NAMESPACE, path_param("table", "the table (and the index's suffix)")),
        body=IndexCheckRequest, answers={202: JobStatus, 400: None, 404: None, 503: None}, auth="admin",
        action="checking an index",
        description="Starts a job (follow it with GET /v1/jobs/{job_id}): counts rows, documents and drift "
        "(missing, stale, extra, index_newer) with samples; with repair, the entries written to fix it. 400 "
        "names the problem: a namespace without one cassandra and one elasticsearch target, no such table.",
    ),
    Operation(
        "get", "/v1/jobs", "The fleet's jobs (replays, index checks)", "replay",
        answers={200: JobList}, auth="admin", action="listing jobs", params=(LOCAL,),
    ),
    Operation(
        "get", "/v1/jobs/{job_id}", "A job's state, progress and counts", "replay",
        params=(JOB_ID, LOCAL), answers={200: JobStatus, 404: None, 503: None}, auth="admin",
        action="reading a job",
        description="Asked of any worker: the one running the job answers through it. 503 when a worker that "
        "may run it did not answer.",
    ),
    Operation(
        "delete", "/v1/jobs/{job_id}", "Cancel a job", "replay",
        params=(JOB_ID,), answers={202: JobStatus, 200: JobStatus, 404: None, 503: None}, auth="admin",
        action="cancelling a job",
        description="202: the job stops at its next step (what it applied stays applied). 200: it had ended.",
    ),
    Operation(
        "get", "/v1/internal/cancelled/{namespace}", "The entries this worker knows as cancelled", "internal",
        params=(NAMESPACE,), answers={200: CancelledIds, 503: None}, internal=True,
    ),
)


def started(view: View, job: Job) -> Response:
    """202 with the job, and where to follow it."""
    answer = respond(view, 202, job.public())
    answer.headers["Location"] = f"/v1/jobs/{quote(job.id, safe='')}"
    return answer


def register(ctx: WebContext) -> None:
    app = ctx.faust
    settings = ctx.settings
    jobs = ctx.jobs

    def denied(view: View, request: Request, action: str) -> Response | None:
        refusal = ctx.auth.admin(request.headers, action)
        return None if refusal is None else respond(view, refusal.status, {"message": refusal.message})

    def passed(request: Request) -> dict[str, str]:
        return {"Authorization": request.headers["Authorization"]} if "Authorization" in request.headers else {}

    async def find(request: Request, job_id: str) -> tuple[PeerAnswer | None, list[str]]:
        """The peer running ``job_id`` and its answer, or None and the peers that did not say."""
        path = f"/v1/jobs/{quote(job_id, safe='')}"
        unknown = []
        for peer in ctx.fleet.peers():
            a = await ctx.fleet.ask(peer, path, {"local": "1"}, headers=passed(request))
            if a.ok:
                return a, []
            if a.status != 404:
                unknown.append(peer)
        return None, unknown

    def unknown_job(view: View, job_id: str, unknown: list[str]) -> Response:
        if unknown:
            return respond(view, 503, {"message": f"job {job_id!r} is not on this worker, and {', '.join(unknown)} "
                                                  "did not answer; retry shortly"})
        return respond(view, 404, {"message": f"no job {job_id!r} in this fleet (a job ends with the worker that "
                                              "ran it, and only the last 100 ended jobs of a worker are kept)"})

    async def start_job(view: View, request: Request, action: str, start: Callable[[Any], Awaitable[Job]],
                        unavailable: Callable[[Exception], str | None]) -> Response:
        """A job started from the request's body (202), or the refusal: 401/403, 400 naming
        the problem, 404 for an unknown namespace, 503 when ``unavailable`` says why."""
        if (refused := denied(view, request, action)) is not None:
            return refused
        try:
            body = await read_json(request, settings.max_request_bytes, server_limit=settings.max_request_bytes)
            return started(view, await start(body))
        except BodyError as exc:
            return respond(view, exc.status, {"message": exc.message}, close=exc.close)
        except LookupError as exc:
            return respond(view, 404, {"message": str(exc.args[0])})
        except (ReplayRefused, CheckRefused) as exc:
            return respond(view, 400, {"message": str(exc)})
        except Exception as exc:
            if (why := unavailable(exc)) is None:
                raise
            return respond(view, 503, {"message": why})

    def replay_unavailable(exc: Exception) -> str:
        if isinstance(exc, FleetIncomplete):
            return f"cannot tell which entries were cancelled: {exc}"
        # Kafka did not answer the plan's questions
        log.error("a replay could not start", exc_info=exc)
        return f"could not plan the replay: {type(exc).__name__}: {exc}; retry shortly"

    def table_unavailable(exc: Exception) -> str | None:
        return f"cannot read the table now: {exc.message}; retry shortly" if isinstance(exc, TransientError) else None

    @app.page("/v1/replay/{namespace}")
    class ReplayView(View):
        async def post(self, request: Request, namespace: str) -> Response:
            return await start_job(self, request, "replaying a namespace",
                                   lambda body: ctx.replays.start(namespace, parse_model(ReplayRequest, body)),
                                   replay_unavailable)

    @app.page("/v1/index/{namespace}/{table}/check")
    class IndexCheckView(View):
        async def post(self, request: Request, namespace: str, table: str) -> Response:
            return await start_job(
                self, request, "checking an index",
                lambda body: ctx.index_checks.start(namespace, table, parse_model(IndexCheckRequest, body)),
                table_unavailable)

    @app.page("/v1/jobs")
    class JobsView(View):
        async def get(self, request: Request) -> Response:
            if (refused := denied(self, request, "listing jobs")) is not None:
                return refused
            found = [j.public() for j in jobs.all()]
            unknown: list[str] = []
            if request.query.get("local") != "1":
                for a in await ctx.fleet.ask_peers("/v1/jobs", {"local": "1"}, headers=passed(request)):
                    if a.ok and isinstance(a.body, dict):
                        found.extend(a.body["jobs"])
                    else:
                        unknown.append(a.peer)
            found.sort(key=lambda j: j["started_at"], reverse=True)
            return respond(self, 200, {"jobs": found, "unknown": unknown})

    @app.page("/v1/jobs/{job_id}")
    class JobView(View):
        async def get(self, request: Request, job_id: str) -> Response:
            if (refused := denied(self, request, "reading a job")) is not None:
                return refused
            job = jobs.get(job_id)
            if job is not None:
                return respond(self, 200, job.public())
            if request.query.get("local") == "1":
                return respond(self, 404, {"message": f"no job {job_id!r} on this worker"})
            a, unknown = await find(request, job_id)
            return respond(self, 200, a.body) if a is not None else unknown_job(self, job_id, unknown)

        async def delete(self, request: Request, job_id: str) -> Response:
            if (refused := denied(self, request, "cancelling a job")) is not None:
                return refused
            job = jobs.cancel(job_id)
            if job is not None:
                return respond(self, 200 if job.finished else 202, job.public())
            a, unknown = await find(request, job_id)
            if a is None:
                return unknown_job(self, job_id, unknown)
            done = await ctx.fleet.ask(a.peer, f"/v1/jobs/{quote(job_id, safe='')}", headers=passed(request),
                                       method="DELETE")
            if done.status in (200, 202) and done.body is not None:
                return respond(self, done.status, done.body)
            return respond(self, 503, {"message": f"worker {a.peer} runs job {job_id!r} and did not answer its "
                                                  f"cancellation: {done.error or done.status}; retry"})

    @app.page("/v1/internal/cancelled/{namespace}")
    class CancelledView(View):
        async def get(self, request: Request, namespace: str) -> Response:
            if ctx.settling():
                return respond(self, 503, {"message": "recovering tables"})
            return respond(self, 200, {"cancelled": ctx.status.local_cancelled(namespace)})
