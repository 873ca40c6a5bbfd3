"""The Elasticsearch target: mutation payloads applied with external versions.

A put indexes ``{**key, **value}`` as document ``<doc id>`` of index ``<index_prefix><table>``
with ``version=<write time µs>, version_type=external``; a delete deletes it with the same
version. Elasticsearch rejects a version that is not greater than the stored one with 409,
which here means "a newer or the same write is already applied" and counts as success: so
replays and out-of-order deliveries converge to the last write.

One bad item fails alone. What Elasticsearch would refuse as a whole request is checked per
entry first (document ids over 512 bytes or empty, index names it forbids, documents that
cannot be serialized) and fails that entry with a :class:`PermanentError`; requests are cut
at :data:`MAX_BULK_BYTES`; and a request still refused as a whole with a non-transient 4xx
is split in halves until the operation at fault is alone (:meth:`bulk_isolated`).

Known limit: Elasticsearch forgets the version of a deleted document after the index's
``index.gc_deletes`` (60 s by default); a put older than the delete that arrives later than
that would recreate the document. Raise ``index.gc_deletes`` on indices that may see long
replays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from elastic_transport import ConnectionError as EsConnectionError
from elastic_transport import ConnectionTimeout
from elasticsearch import ApiError, AsyncElasticsearch

from walstream.entry import Entry
from walstream.mutations import MutationError, es_doc_id_problem, parse_mutations
from walstream.namespaces.model import ElasticsearchTargetConfig
from walstream.targets.base import (
    Outcomes,
    PermanentError,
    Target,
    TargetDownError,
    TargetError,
    TransientError,
    combine,
)

#: statuses that mean "retry later": throttled, or the cluster is not (yet) able to serve
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

#: most bytes of NDJSON in one ``_bulk`` request. Elasticsearch refuses a larger request than
#: ``http.max_content_length`` (100 MB by default) as a whole (413); staying far below it
#: also bounds the worker's memory and the cluster's per-request work.
MAX_BULK_BYTES = 8 * 1024 * 1024

#: Elasticsearch's limit on an index name, in bytes of UTF-8
MAX_INDEX_NAME_BYTES = 255
_INDEX_FORBIDDEN = frozenset('\\/*?"<>| ,#:')


def index_name_problem(name: str) -> str | None:
    """Why Elasticsearch would refuse ``name`` as an index name, or ``None``.

    Table names and index prefixes are validated to safe names when a namespace is applied;
    this check is for records that reach the WAL from other producers, and it fails the
    entry alone instead of the request it would be part of.
    """
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_INDEX_NAME_BYTES:
        return f"index name is {size} bytes; Elasticsearch accepts at most {MAX_INDEX_NAME_BYTES}"
    if name in ("", ".", ".."):
        return f"index name {name!r} is not allowed"
    if name != name.lower():
        return f"index name {name!r} must be lower case"
    if name[0] in "_-+":
        return f"index name {name!r} must not start with '_', '-' or '+'"
    bad = sorted(set(name) & _INDEX_FORBIDDEN)
    if bad:
        return f"index name {name!r} contains characters Elasticsearch forbids: {''.join(bad)!r}"
    return None


class _Down(Exception):
    """The cluster did not serve a request: every operation not yet answered fails with it."""

    def __init__(self, error: TargetError) -> None:
        super().__init__(error.message)
        self.error = error


#: one bulk operation: its NDJSON lines (action, and the source for index/create)
Op = list[bytes]
#: per operation: the bulk item's result object, or the error that kept it from being applied
OpResult = dict[str, Any] | TargetError


def _item_error(op: str, item: dict[str, Any]) -> TargetError | None:
    status = int(item.get("status", 500))
    if status < 300 or status == 409 or (op == "delete" and status == 404):
        return None
    err = item.get("error") or {}
    reason = f"{status} {err.get('type', '')}: {err.get('reason', '')}".strip()
    if status in TRANSIENT_STATUSES:
        return TransientError(reason)
    return PermanentError(reason)


class ElasticsearchTarget(Target):
    """Applies mutation payloads to indices ``<index_prefix><table>`` through the bulk API."""

    def __init__(self, cfg: ElasticsearchTargetConfig, url: str, timeout_s: float) -> None:
        self.cfg = cfg
        self.url = url
        self.label = f"elasticsearch:{cfg.index_prefix or '*'}"
        self._client = AsyncElasticsearch(url, request_timeout=timeout_s, max_retries=0)

    async def close(self) -> None:
        await self._client.close()

    async def bulk_isolated(self, ops: Sequence[Op]) -> list[OpResult]:
        """Send ``ops`` through ``_bulk`` so that each gets its own outcome.

        Requests are cut at :data:`MAX_BULK_BYTES`. A request Elasticsearch refuses as a
        whole with a 4xx that is not transient (an id or index it cannot take, a body too
        large or unparsable) is split in halves and each half sent again, until the
        operation at fault is alone and gets the refusal as its :class:`PermanentError`;
        its neighbours are applied. A cluster that does not answer (connection error,
        timeout, 5xx, 429 for the whole request) fails every operation not yet applied
        with a :class:`TargetDownError`, without further requests.
        """
        results: list[OpResult | None] = [None] * len(ops)
        try:
            for chunk in _chunks(ops):
                await self._send(ops, chunk, results)
        except _Down as down:
            results = [down.error if r is None else r for r in results]
        return [r if r is not None else TransientError("no answer for this operation") for r in results]

    async def _send(self, ops: Sequence[Op], idx: list[int], results: list[OpResult | None]) -> None:
        # already NDJSON lines: the client's serializer passes bytes through unchanged
        body: Any = [line for i in idx for line in ops[i]]
        try:
            resp = await self._client.bulk(operations=body, refresh="true" if self.cfg.refresh else "false")
        except (EsConnectionError, ConnectionTimeout) as exc:
            raise _Down(TargetDownError(f"{type(exc).__name__}: {exc}")) from None
        except ApiError as exc:
            status = int(getattr(exc.meta, "status", 0) or 0)
            if status in TRANSIENT_STATUSES or status < 400:
                raise _Down(TargetDownError(f"bulk request failed: {status} {exc}")) from None
            if len(idx) == 1:
                results[idx[0]] = PermanentError(f"refused by Elasticsearch: {status} {_reason(exc)}")
                return
            # Refused as a whole because of some operation in it: find which by halves.
            mid = len(idx) // 2
            await self._send(ops, idx[:mid], results)
            await self._send(ops, idx[mid:], results)
            return
        except Exception as exc:  # unknown: retry rather than dead-letter on first sight
            raise _Down(TransientError(f"{type(exc).__name__}: {exc}")) from None
        items = resp["items"]
        if len(items) != len(idx):
            raise _Down(TransientError(f"bulk answered {len(items)} items for {len(idx)} operations"))
        for i, item in zip(idx, items, strict=True):
            results[i] = next(iter(item.values()))

    async def apply(self, entries: Sequence[Entry]) -> Outcomes:
        ops: list[Op] = []
        #: per bulk operation, the index of the entry it belongs to
        owners: list[int] = []
        errors: list[list[TargetError | None]] = [[] for _ in entries]
        for i, entry in enumerate(entries):
            try:
                payload = parse_mutations(entry.payload)
            except MutationError as exc:
                errors[i].append(PermanentError(str(exc)))
                continue
            entry_ops: list[Op] = []
            try:
                for m in payload.mutations:
                    index = f"{self.cfg.index_prefix}{m.table}"
                    doc_id = m.doc_id()
                    problem = index_name_problem(index) or es_doc_id_problem(doc_id)
                    if problem is not None:
                        raise _EntryRefused(f"{m.table} {doc_id[:64]!r}: {problem}")
                    meta = {"_index": index, "_id": doc_id, "version": entry.written_at_us,
                            "version_type": "external"}
                    if m.op == "put":
                        entry_ops.append([_dumps({"index": meta}), _dumps({**m.key, **(m.value or {})})])
                    else:
                        entry_ops.append([_dumps({"delete": meta})])
            except _EntryRefused as exc:
                errors[i].append(PermanentError(str(exc)))
                continue
            ops.extend(entry_ops)
            owners.extend([i] * len(entry_ops))
        if ops:
            for owner, (op, result) in zip(owners, zip(ops, await self.bulk_isolated(ops), strict=True), strict=True):
                if isinstance(result, TargetError):
                    errors[owner].append(result)
                else:
                    errors[owner].append(_item_error(_op_name(op), result))
        return [combine(errs) for errs in errors]


class _EntryRefused(Exception):
    """An entry holds something Elasticsearch can never accept; it fails alone."""


def _dumps(doc: Any) -> bytes:
    try:
        return orjson.dumps(doc)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise _EntryRefused(f"cannot be serialized as JSON: {exc}") from None


def _op_name(op: Op) -> str:
    action: dict[str, Any] = orjson.loads(op[0])
    return next(iter(action))


def _reason(exc: ApiError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    err = body.get("error")
    if isinstance(err, dict):
        return f"{err.get('type', '')}: {err.get('reason', '')}"[:1000]
    return str(exc)[:1000]


def _chunks(ops: Sequence[Op]) -> list[list[int]]:
    """Consecutive runs of operation indices of at most :data:`MAX_BULK_BYTES` each (an
    operation larger than that is a run of its own)."""
    out: list[list[int]] = []
    run: list[int] = []
    size = 0
    for i, op in enumerate(ops):
        n = sum(len(line) + 1 for line in op)
        if run and size + n > MAX_BULK_BYTES:
            out.append(run)
            run, size = [], 0
        run.append(i)
        size += n
    if run:
        out.append(run)
    return out
