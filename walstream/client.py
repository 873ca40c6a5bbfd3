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
naming the problem; nothing was written), :class:`Unavailable` (a 503, or no answer after
the retries). A FAILED item of a batch is a result, not an exception (the others may have
been written).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from walstream.api import DeadLetter, EntryStatus, RedriveOutcome, RedriveResult, TargetStatus, WriteResult

__all__ = [
    "DeadLetter",
    "EntryStatus",
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
    """An answer the call cannot return: ``status`` (None when none came) and ``message``."""

    def __init__(self, status: int | None, message: str, body: Any = None) -> None:
        super().__init__(f"{status}: {message}" if status is not None else message)
        self.status = status
        self.message = message
        self.body = body


class Refused(WalstreamError):
    """A 4xx: the request was refused (nothing written); ``message`` names the problem."""


class NotFound(Refused):
    """A 404: no such namespace or entry (for an entry: never written, not consumed yet, or
    past retention)."""


class Unavailable(WalstreamError):
    """A 503 (a worker of the fleet cannot say now; retry shortly), a 5xx, or no answer."""


class WalstreamClient:
    """Talks to one worker (any worker of the fleet answers every call).

    ``timeout_s`` bounds each request; ``retries`` is how many times an UNKNOWN write (or
    one whose answer did not come) is sent again with its id. ``token`` is sent as
    ``Authorization: Bearer``. ``transport`` is passed to httpx (tests)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 30.0,
        retries: int = 3,
        token: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=httpx.Timeout(timeout_s), headers=headers, transport=transport
        )
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
    ) -> dict[str, Any]:
        """One write request (the body of ``POST /v1/log``, an item of a batch), with an id."""
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
        return doc

    async def write(self, namespace: str, payload: Any, **options: Any) -> WriteResult:
        """Write one entry (options as :meth:`entry`). Returns SUCCESS (maybe ``duplicate``)
        or UNKNOWN after every retry; raises :class:`Refused` for a 4xx (FAILED, nothing
        written) and :class:`Unavailable` for another 5xx."""
        [result] = await self.write_batch([self.entry(namespace, payload, **options)], single=True)
        if result.durable == "FAILED":
            error = NotFound if result.status == 404 else Refused
            raise error(result.status, result.message or "refused", result)
        return result

    async def write_batch(self, entries: Sequence[Mapping[str, Any]], *, single: bool = False) -> list[WriteResult]:
        """Write entries (each as :meth:`entry` makes them; one without an id gets one) in one
        request; one result per entry, in order. Items answered UNKNOWN are sent again, with
        their ids, until they are known or the retries are spent. ``single``: through
        ``POST /v1/log`` (one entry)."""
        docs = [dict(e) if e.get("id") else {**e, "id": str(uuid.uuid4())} for e in entries]
        results: dict[int, WriteResult] = {}
        todo = list(range(len(docs)))
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(RETRY_BACKOFF_S * 2 ** (attempt - 1) * (0.5 + random.random()))
            answers = await self._send_writes([docs[i] for i in todo], single)
            results.update(zip(todo, answers, strict=True))
            todo = [i for i in todo if results[i].durable == "UNKNOWN"]
            if not todo:
                break
        return [results[i] for i in range(len(docs))]

    async def _send_writes(self, docs: list[dict[str, Any]], single: bool) -> list[WriteResult]:
        """One request; an answer that did not come makes every item UNKNOWN."""
        try:
            if single:
                r = await self._http.post("/v1/log", json=docs[0])
            else:
                r = await self._http.post("/v1/log/batch", json={"entries": docs})
        except httpx.HTTPError as exc:
            why = f"no answer: {type(exc).__name__}: {exc}".rstrip(": ")
            return [WriteResult(durable="UNKNOWN", id=d["id"], message=why, status=0) for d in docs]
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
        (usually milliseconds): ``wait_s`` asks again every 0.1 s for that long while the
        answer is 404. Raises :class:`NotFound` (404 after ``wait_s``: never written, not
        consumed yet, or past retention) and :class:`Unavailable` (503: a worker that may
        hold it cannot say now)."""
        path = f"/v1/log/{_seg(namespace)}/{_seg(entry_id)}"
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            try:
                return EntryStatus.model_validate(await self._call("GET", path))
            except NotFound:
                if asyncio.get_running_loop().time() >= deadline:
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

    # -- plumbing --------------------------------------------------------------------------

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            r = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise Unavailable(None, f"no answer from {self._http.base_url}: {type(exc).__name__}: {exc}") from exc
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
        return NotFound(404, message, body)
    if 400 <= r.status_code < 500:
        return Refused(r.status_code, message, body)
    return Unavailable(r.status_code, message, body)
