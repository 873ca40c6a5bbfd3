"""A mutation group's status: ``GET /v1/groups/{namespace}/{group_id}``.

Every record of a group is keyed by the group id, so one partition holds the group; the
worker holding it actively answers, any other asks it (walstream.fleet).
"""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import islice
from typing import Any
from urllib.parse import quote

from faust.web import Request, Response, View

from walstream.api import GroupStatus
from walstream.context import WebContext
from walstream.tables.groups import TABLE_NAME, Groups
from walstream.web.common import respond
from walstream.web.openapi import LOCAL, NAMESPACE, Operation, path_param

#: most missing seqs an answer lists
MISSING_LISTED = 1000

OPERATIONS = (
    Operation(
        "get", "/v1/groups/{namespace}/{group_id}", "A mutation group's state, size and missing members", "groups",
        params=(NAMESPACE, path_param("group_id", "the group's id"), LOCAL),
        answers={200: GroupStatus, 404: None, 503: None},
        description="Asked of any worker: the one holding the group's partition answers through it. 503 while "
        "no worker holds it or its tables are recovering.",
    ),
)


def public_group(header: dict[str, Any], missing: list[int]) -> dict[str, Any]:
    """A group header as ``GET /v1/groups/...`` answers it (walstream.api.GroupStatus)."""
    def at(ms: int | None) -> str | None:
        return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")

    return {
        "id": header["id"],
        "namespace": header["ns"],
        "state": header["state"],
        "partition": header["partition"],
        "size": header["size"],
        "members": header["size"] if header["released_ms"] is not None else header["count"],
        "missing": missing,
        "marker": header["marker"],
        "first_at": at(header["first_ms"]),
        "deadline": at(header["deadline_ms"]),
        "committed_at": at(header["commit_ts"] // 1000 if header["commit_ts"] is not None else None),
        "released_at": at(header["released_ms"]),
        "applied_at": at(header.get("applied_ms")),
        "targets": header["targets"],
        "error": header["error"],
    }


def local_group(groups: Groups, partition: int, ns: str, group_id: str) -> dict[str, Any] | None:
    """The group's public status from this worker's copy of ``partition`` (None: unknown)."""
    header = groups.header(ns, group_id)
    if header is None:
        return None
    missing: list[int] = []
    if header["released_ms"] is None and header["size"] is not None and header["state"] in ("PENDING", "COMMITTED"):
        present = {seq for _, seq, _ in groups.members(partition, ns, group_id)}
        missing = list(islice((s for s in range(header["size"]) if s not in present), MISSING_LISTED))
    return public_group(header, missing)


def register(ctx: WebContext) -> None:
    groups = Groups(ctx.tables[TABLE_NAME])

    @ctx.faust.page("/v1/groups/{namespace}/{group_id}")
    class GroupView(View):
        async def get(self, request: Request, namespace: str, group_id: str) -> Response:
            partition = ctx.partition_for(group_id)
            local_only = request.query.get("local") == "1"
            if partition in ctx.active_partitions() and not ctx.settling():
                body = local_group(groups, partition, namespace, group_id)
            elif local_only:
                return respond(self, 503, {"message": f"this worker does not hold partition {partition} "
                                                      "actively now, or is recovering its tables"})
            else:
                owner = ctx.fleet.owner(groups.table.changelog_name, partition)
                if owner is None or owner == ctx.fleet.self_url:
                    return respond(self, 503, {"message": f"partition {partition} of group {group_id!r} is held by "
                                                          "no worker now (a rebalance or recovery); retry shortly"})
                path = f"/v1/groups/{quote(namespace, safe='')}/{quote(group_id, safe='')}"
                a = await ctx.fleet.ask(owner, path, {"local": "1"})
                if a.status == 404 or (a.ok and isinstance(a.body, dict)):
                    return respond(self, a.status or 503, a.body)
                return respond(self, 503, {"message": f"worker {owner} holds group {group_id!r} and did not answer: "
                                                      f"{a.error or a.status}; retry shortly"})
            if body is None:
                why = ("there is no such namespace" if ctx.registry.get(namespace) is None
                       else "never written, not yet consumed, or past retention")
                return respond(self, 404, {"message": f"no group {group_id!r} in namespace {namespace!r} ({why})"})
            return respond(self, 200, body)
