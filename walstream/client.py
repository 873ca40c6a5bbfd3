"""An async Python client for a walstream worker's HTTP API (httpx).

    async with WalstreamClient("http://127.0.0.1:6066") as wal:
        result = await wal.write("catalog", {"mutations": [...]}, key="movie:42", delay_ms=60_000)
        status = await wal.status("catalog", result.id)

Every write carries an id: the caller's, or one the client makes (a UUID4). A write answered
UNKNOWN (the worker could not tell whether Kafka took it), or whose answer never came (the
connection broke, the request timed out), is sent again with the *same* id, up to
``retries`` more times with backoff: the worker answers a repeated id with the original
answer (``duplicate`` true), so the retry resolves the doubt and the entry is delivered
once. After the last retry the result stays UNKNOWN: the caller knows the entry may or may
not be in the log, and can ask :meth:`WalstreamClient.status`.

Refusals are exceptions: :class:`Refused` (a 4xx: ``status`` and the worker's ``message``
naming the problem; nothing was written), :class:`Unavailable` (a 5xx, or no answer, to a
call other than a write; such calls are not retried). A write that got a 5xx or no answer is
no exception but an UNKNOWN result after the retries, and a FAILED item of a batch is a
result too (the others may have been written). Two kinds of :class:`Unavailable` say
more: :class:`NoAnswer` (no answer came: ``reason`` says why, e.g. ``refused`` when
nothing listens at the address) and :class:`UnexpectedAnswer` (a 2xx that is not a
walstream answer: something else listens there). An error that came with an answer keeps it in ``response``.
"""

from __future__ import annotations

import asyncio
import random
import socket
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote

import httpx

from walstream.api import (
    DeadLetter,
    EntryStatus,
    GroupStatus,
    JobList,
    JobStatus,
    RedriveOutcome,
    RedriveResult,
    TargetStatus,
    WriteResult,
)

__all__ = [
    "DeadLetter",
    "EntryStatus",
    "GroupStatus",
    "JobList",
    "JobStatus",
    "NotFound",
    "RedriveOutcome",
    "RedriveResult",
    "Refused",
    "TargetStatus",
    "Unavailable",
    "WalstreamClient",
    "WalstreamError",
    "WriteResult",
]

#: seconds before the first retry of an UNKNOWN write; doubled each time, with jitter
RETRY_BACKOFF_S = 0.2


class WalstreamError(Exception):
    """An answer the call cannot return: ``status`` (None when none came) and ``message``;
    ``response`` is the HTTP answer when there was one (its reason phrase, content type, and
    the request it answers)."""

    def __init__(
        self, status: int | None, message: str, body: Any = None, *, response: httpx.Response | None = None
    ) -> None:
        super().__init__(f"{status}: {message}" if status is not None else message)
        self.status = status
        self.message = message
        self.body = body
        self.response = response


class Refused(WalstreamError):
    """A 4xx: the request was refused (nothing written); ``message`` names the problem."""


class NotFound(Refused):
    """A 404: no such namespace or entry (for an entry: never written, not consumed yet, or
    past retention)."""


class Unavailable(WalstreamError):
    """A 503 (a worker of the fleet cannot say now; retry shortly), a 5xx, or no answer."""


#: why no answer came: nothing listens at the address (``refused``), the host name does not
#: resolve (``unresolved``), no connection within the connect timeout (``connect_timeout``),
#: connected but no answer in time (``timeout``), the connection broke off or what answered
#: does not speak HTTP (``broken``), another failure to connect (``connect``), or else (``other``)
NoAnswerReason = Literal["refused", "unresolved", "connect_timeout", "timeout", "broken", "connect", "other"]
#: the reasons for which no connection was made, so the request was not sent at all
NOT_SENT: frozenset[NoAnswerReason] = frozenset({"refused", "unresolved", "connect_timeout", "connect"})


class NoAnswer(Unavailable):
    """No answer came to ``request`` (``"GET /v1/namespaces"``) sent to ``url``: ``reason``
    says why, ``cause`` is httpx's error. ``status`` is None."""

    def __init__(self, url: str, request: str, cause: httpx.HTTPError) -> None:
        self.url = url
        self.request = request
        self.cause = cause
        self.reason: NoAnswerReason = no_answer_reason(cause)
        #: what the innermost error said, on one line (``Name or service not known``)
        self.detail = _detail(self.reason, cause)
        super().__init__(None, f"no answer from {url} to {request}: {_REASONS[self.reason]} ({self.detail})")


class UnexpectedAnswer(Unavailable):
    """A 2xx answer that is not a walstream answer (not a JSON object): something other than
    a walstream worker answers at the address. ``body`` is its JSON, None when not JSON."""


class WalstreamClient:
    """Talks to one worker (any worker of the fleet answers every call).

    ``timeout_s`` bounds each request (``connect_timeout_s``, when given, the connection:
    a host that does not answer at all is found out sooner); ``retries`` is how many times an
    UNKNOWN write (or one whose answer did not come) is sent again with its id. ``token`` is
    sent as ``Authorization: Bearer``. ``transport`` is passed to httpx (tests)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 30.0,
        retries: int = 3,
        token: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        connect_timeout_s: float | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        timeout = httpx.Timeout(timeout_s, connect=timeout_s if connect_timeout_s is None else connect_timeout_s)
        self._url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self._url, timeout=timeout, headers=headers, transport=transport)
        self.retries = retries

    async def __aenter__(self) -> WalstreamClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    # -- writes ----------------------------------------------------------------------------

    @staticmethod
    def entry(
        namespace: str,
        payload: Any,
        *,
        key: str | None = None,
        id: str | None = None,
        delay_ms: int | None = None,
        deliver_at: datetime | str | None = None,
        target: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        retry: Mapping[str, Any] | None = None,
        group: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One write request (the body of ``POST /v1/log``, an item of a batch), with an id.
        ``group``: ``{"id": G, "seq": N}`` for a member of a mutation group (no ``key``), and
        see :meth:`commit_group` for its marker (docs/groups.md)."""
        doc: dict[str, Any] = {"namespace": namespace, "id": id or str(uuid.uuid4()), "payload": payload}
        if key is not None:
            doc["key"] = key
        if delay_ms is not None or deliver_at is not None:
            lifecycle: dict[str, Any] = {}
            if delay_ms is not None:
                lifecycle["delay_ms"] = delay_ms
            if deliver_at is not None:
                lifecycle["deliver_at"] = deliver_at.isoformat() if isinstance(deliver_at, datetime) else deliver_at
            doc["lifecycle"] = lifecycle
        if target is not None:
            doc["target"] = dict(target) if isinstance(target, Mapping) else [dict(t) for t in target]
        if retry is not None:
            doc["retry"] = dict(retry)
        if group is not None:
            doc["group"] = dict(group)
        return doc

    async def commit_group(self, namespace: str, group_id: str, size: int, *, id: str | None = None) -> WriteResult:
        """Write the commit marker of a mutation group of ``size`` members (seq 0 .. size-1):
        the group is applied once every member is there. Raises as :meth:`write`."""
        doc = {"namespace": namespace, "id": id or str(uuid.uuid4()),
               "group": {"id": group_id, "commit": True, "size": size}}
        return await self._write_one(doc)

    async def group(self, namespace: str, group_id: str) -> GroupStatus:
        """A mutation group's state (walstream.api.GroupStatus). Raises :class:`NotFound`
        (never written, not consumed yet, or past retention) and :class:`Unavailable`."""
        return GroupStatus.model_validate(await self._call("GET", f"/v1/groups/{_seg(namespace)}/{_seg(group_id)}"))

    async def write(self, namespace: str, payload: Any, **options: Any) -> WriteResult:
        """Write one entry (options as :meth:`entry`). Returns SUCCESS (maybe ``duplicate``)
        or UNKNOWN (a 5xx or no answer, after every retry); raises :class:`Refused` (or
        :class:`NotFound`) for a 4xx (FAILED, nothing written), :class:`NoAnswer` when no
        attempt connected (nothing written) and :class:`UnexpectedAnswer` for an answer that
        is not walstream's."""
        return await self._write_one(self.entry(namespace, payload, **options))

    async def _write_one(self, doc: dict[str, Any]) -> WriteResult:
        [result] = await self.write_batch([doc], single=True)
        if result.durable == "FAILED":
            error = NotFound if result.status == 404 else Refused
            raise error(result.status, result.message or "refused", result)
        return result

    async def write_batch(self, entries: Sequence[Mapping[str, Any]], *, single: bool = False) -> list[WriteResult]:
        """Write entries (each as :meth:`entry` makes them; one without an id gets one) in one
        request; one result per entry, in order. Items answered UNKNOWN are sent again, with
        their ids, until they are known or the retries are spent. ``single``: through
        ``POST /v1/log`` (one entry). Raises :class:`NoAnswer` when no attempt could even
        connect (refused, unresolved, no connection in time): then nothing was written."""
        docs = [dict(e) if e.get("id") else {**e, "id": str(uuid.uuid4())} for e in entries]
        results: dict[int, WriteResult] = {}
        todo = list(range(len(docs)))
        sent = False  # some attempt reached the worker (items still in todo were in it)
        unsent: NoAnswer | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(RETRY_BACKOFF_S * 2 ** (attempt - 1) * (0.5 + random.random()))
            try:
                answers = await self._send_writes([docs[i] for i in todo], single)
                sent = True
            except NoAnswer as exc:  # no connection: this attempt sent nothing
                unsent = exc
                answers = [WriteResult(durable="UNKNOWN", id=docs[i]["id"], message=exc.message, status=0)
                           for i in todo]
            results.update(zip(todo, answers, strict=True))
            todo = [i for i in todo if results[i].durable == "UNKNOWN"]
            if not todo:
                break
        if not sent and unsent is not None:
            raise unsent  # not one attempt connected: nothing was written
        return [results[i] for i in range(len(docs))]

    async def _send_writes(self, docs: list[dict[str, Any]], single: bool) -> list[WriteResult]:
        """One request; an answer that did not come makes every item UNKNOWN."""
        try:
            if single:
                r = await self._http.post("/v1/log", json=docs[0])
            else:
                r = await self._http.post("/v1/log/batch", json={"entries": docs})
        except httpx.HTTPError as exc:
            lost = NoAnswer(self._url, "POST /v1/log" + ("" if single else "/batch"), exc)
            if lost.reason in NOT_SENT:
                raise lost from exc
            return [WriteResult(durable="UNKNOWN", id=d["id"], message=lost.message, status=0) for d in docs]
        body = _json(r)
        if single:
            if isinstance(body, dict) and "durable" in body:
                return [WriteResult.model_validate({**body, "status": r.status_code})]
        elif r.status_code == 200 and isinstance(body, dict) and isinstance(body.get("results"), list):
            return [WriteResult.model_validate(x) for x in body["results"]]
        if r.status_code >= 500:
            # the whole request answered 5xx without per-item answers: nothing is known
            message = _message(body, r)
            return [WriteResult(durable="UNKNOWN", id=d["id"], message=message, status=r.status_code) for d in docs]
        raise _error(r, body)

    # -- entries ---------------------------------------------------------------------------

    async def status(self, namespace: str, entry_id: str, *, wait_s: float = 0.0) -> EntryStatus:
        """The entry's state. An entry just written has none until its worker consumed it
        (milliseconds; seconds while the fleet rebalances, e.g. right after a namespace was
        created): ``wait_s`` asks again every 0.1 s for that long while the answer is 404,
        or 503 (a worker that may hold it is recovering its tables). Raises
        :class:`NotFound` (404 after ``wait_s``: never written, not consumed yet, or past
        retention) and :class:`Unavailable` (503 after ``wait_s``: a worker that may hold it
        cannot say now)."""
        path = f"/v1/log/{_seg(namespace)}/{_seg(entry_id)}"
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            try:
                return EntryStatus.model_validate(await self._call("GET", path))
            except (NotFound, Unavailable) as exc:
                if exc.status not in (404, 503) or asyncio.get_running_loop().time() >= deadline:
                    raise
                await asyncio.sleep(0.1)

    async def cancel(self, namespace: str, entry_id: str, *, key: str | None = None) -> EntryStatus:
        """Cancel what of an entry is not delivered yet (``key``: the entry's key when it is
        not its id, for an entry not written yet). Returns its state (CANCELLED, or still
        moving with a ``message`` when not applied yet); raises :class:`Refused` (409) when
        it is already DELIVERED or DEAD."""
        params = {"key": key} if key is not None else None
        body = await self._call("DELETE", f"/v1/log/{_seg(namespace)}/{_seg(entry_id)}", params=params)
        if body.get("state") == "CANCELLING":  # sent; the state is not visible yet
            return EntryStatus.model_validate({"namespace": namespace, **body})
        return EntryStatus.model_validate(body)

    # -- namespaces ------------------------------------------------------------------------

    async def namespaces(self) -> list[dict[str, Any]]:
        return list((await self._call("GET", "/v1/namespaces"))["namespaces"])

    async def namespace(self, name: str) -> dict[str, Any]:
        return await self._call("GET", f"/v1/namespaces/{_seg(name)}")

    async def put_namespace(self, name: str, config: Mapping[str, Any]) -> dict[str, Any]:
        """Create or change a namespace (the config as in ``walstream namespace apply``)."""
        return await self._call("PUT", f"/v1/namespaces/{_seg(name)}", json=dict(config))

    async def delete_namespace(self, name: str, *, force: bool = False) -> dict[str, Any]:
        """Delete a namespace; one with pending entries only with ``force`` (they are
        dead-lettered), else :class:`Refused` (409) with the counts."""
        params = {"force": "true"} if force else None
        return await self._call("DELETE", f"/v1/namespaces/{_seg(name)}", params=params)

    # -- dead letters ----------------------------------------------------------------------

    async def dead_letters(
        self,
        namespace: str,
        *,
        id: str | None = None,
        error_class: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        limit: int | None = None,
    ) -> list[DeadLetter]:
        params = _filters(id=id, error_class=error_class, since=since, until=until, limit=limit)
        body = await self._call("GET", f"/v1/dlq/{_seg(namespace)}", params=params)
        return [DeadLetter.model_validate(x) for x in body["dead_letters"]]

    async def redrive(
        self,
        namespace: str,
        *,
        ids: Sequence[str] | None = None,
        error_class: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        limit: int | None = None,
        dry_run: bool = True,
        rate: float | None = None,
        wait_s: float = 10.0,
    ) -> RedriveResult:
        """Deliver dead letters again (a dry run, the default, only lists them)."""
        doc: dict[str, Any] = {
            **_filters(error_class=error_class, since=since, until=until, limit=limit),
            "dry_run": dry_run,
            "wait_s": wait_s,
        }
        if ids is not None:
            doc["ids"] = list(ids)
        if rate is not None:
            doc["rate"] = rate
        return RedriveResult.model_validate(await self._call("POST", f"/v1/dlq/{_seg(namespace)}/redrive", json=doc))

    # -- replay and jobs ---------------------------------------------------------------------

    async def replay(
        self,
        namespace: str,
        *,
        from_: datetime | str,
        to: datetime | str | None = None,
        target: Sequence[str] | None = None,
        skip: Sequence[str] = (),
        rate: float | None = None,
        dry_run: bool = False,
    ) -> JobStatus:
        """Start a point-in-time replay of ``namespace`` (walstream.replay); follow it with
        :meth:`job`. Raises :class:`Refused` naming the problem (e.g. a ``from_`` earlier than
        the topic keeps: the message names the earliest time)."""
        doc: dict[str, Any] = {**_filters(**{"from": from_, "to": to}), "skip": list(skip), "dry_run": dry_run}
        if target is not None:
            doc["target"] = list(target)
        if rate is not None:
            doc["rate"] = rate
        return JobStatus.model_validate(await self._call("POST", f"/v1/replay/{_seg(namespace)}", json=doc))

    async def index_check(
        self, namespace: str, table: str, *, repair: bool = False, rate: float | None = None
    ) -> JobStatus:
        """Start comparing ``namespace``'s Cassandra table with its Elasticsearch index
        (walstream.index_check); follow it with :meth:`job`."""
        doc: dict[str, Any] = {"repair": repair}
        if rate is not None:
            doc["rate"] = rate
        body = await self._call("POST", f"/v1/index/{_seg(namespace)}/{_seg(table)}/check", json=doc)
        return JobStatus.model_validate(body)

    async def job(self, job_id: str) -> JobStatus:
        return JobStatus.model_validate(await self._call("GET", f"/v1/jobs/{_seg(job_id)}"))

    async def jobs(self) -> JobList:
        return JobList.model_validate(await self._call("GET", "/v1/jobs"))

    async def cancel_job(self, job_id: str) -> JobStatus:
        """Stop a job at its next step (what it did stays done)."""
        return JobStatus.model_validate(await self._call("DELETE", f"/v1/jobs/{_seg(job_id)}"))

    # -- plumbing --------------------------------------------------------------------------

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            r = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise NoAnswer(self._url, f"{method} {path}", exc) from exc
        body = _json(r)
        if r.status_code < 300 and isinstance(body, dict):
            return body
        raise _error(r, body)


def _seg(value: str) -> str:
    """One URL path segment: a name or id with ``/``, ``?`` or ``%`` must not change the route."""
    return quote(value, safe="")


def _filters(**values: Any) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in values.items() if v is not None}


def _json(r: httpx.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        return None


def _message(body: Any, r: httpx.Response) -> str:
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return f"{r.status_code} {r.reason_phrase}: {r.text[:200]}"


def _error(r: httpx.Response, body: Any) -> WalstreamError:
    message = _message(body, r)
    if r.status_code == 404:
        return NotFound(404, message, body, response=r)
    if 400 <= r.status_code < 500:
        return Refused(r.status_code, message, body, response=r)
    if r.status_code < 400:
        kind = r.headers.get("content-type", "no content-type")
        what = "not JSON" if body is None else "JSON, but not a JSON object"
        return UnexpectedAnswer(
            r.status_code, f"not a walstream answer ({what}; {kind}): {r.text[:200]}", body, response=r
        )
    return Unavailable(r.status_code, message, body, response=r)


def no_answer_reason(exc: httpx.HTTPError) -> NoAnswerReason:
    """Why ``exc`` (raised by httpx instead of an answer) means no answer came."""
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect_timeout"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    cause = _root_cause(exc)
    if isinstance(cause, ConnectionRefusedError):
        return "refused"
    if isinstance(cause, socket.gaierror):
        return "unresolved"
    if isinstance(exc, httpx.ConnectError):
        return "connect"
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return "broken"
    return "other"


_REASONS: dict[NoAnswerReason, str] = {
    "refused": "connection refused",
    "unresolved": "cannot resolve the host",
    "connect_timeout": "no connection in time (host unreachable or firewalled?)",
    "timeout": "no answer in time",
    "broken": "the connection broke off",
    "connect": "cannot connect",
    "other": "the request failed",
}


def _detail(reason: NoAnswerReason, exc: httpx.HTTPError) -> str:
    cause = _root_cause(exc) if reason in ("refused", "unresolved", "connect") else exc
    text = getattr(cause, "strerror", None) if reason == "unresolved" else None
    return " ".join(str(text or cause).split()) or type(cause).__name__


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception httpx/httpcore wrapped (a ConnectionRefusedError, a gaierror...)."""
    seen: set[int] = set()
    cur: BaseException = exc
    while id(cur) not in seen:
        seen.add(id(cur))
        nxt = cur.__cause__ or cur.__context__
        if nxt is None and cur.args and isinstance(cur.args[0], BaseException):
            nxt = cur.args[0]
        if nxt is None:
            break
        cur = nxt
    return cur
