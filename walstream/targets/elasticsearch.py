"""The Elasticsearch target: mutation payloads applied with Cassandra's merge semantics.

**A put merges, in every target.** A put at write time ``t`` sets the columns it names and
leaves the others as they are; a delete at ``t`` removes every column written at or before
``t``; per column the write with the greatest ``t`` wins (a delete wins a tie, as a
Cassandra tombstone does). A put older than a delete never resurrects the row; a put newer
than a delete recreates it with only its own columns. This is exactly what Cassandra's cell
timestamps do with ``INSERT ... USING TIMESTAMP t`` / ``DELETE ... USING TIMESTAMP t``, so
the two targets of a namespace hold the same columns per row, whatever order deliveries,
replays and duplicates come in.

How (the integration-test distribution has no painless, so no scripted updates, and a
partial ``_update`` cannot carry an external version):

- Each document keeps its write times in a reserved field, ``_walstream``:
  ``{"ts": {column: t}, "row_ts": t, "deleted_at": t}`` (a column written as ``null`` keeps
  its ``t`` and is absent from the document). Column names start with a letter, so the field
  never collides with one; it is mapped ``enabled: false`` (stored, not indexed, no mapping
  fields used). Users see it in ``_source``; exclude it with ``_source_excludes=_walstream``.
- A row that is deleted (every cell older than its newest delete) has no document in the
  index, so searches never see it. Its delete time is kept as a *tombstone*, document
  ``<id>`` ``{"deleted_at": t}`` of the hidden index ``.walstream-tombstones-<index>``
  (hidden: excluded from wildcard searches), so that a late older put stays shadowed for
  as long as the tombstone exists — tombstones are never purged by walstream (unlike
  ``index.gc_deletes``, which used to bound this to 60 s).
- Per batch: one ``_mget`` reads each touched document and its tombstone; the batch's
  mutations are folded into that state in memory (the fold is commutative and idempotent);
  one ``_bulk`` writes the documents that changed, conditioned on what was read
  (``if_seq_no``/``if_primary_term``, or ``op_type=create`` when absent); a second ``_bulk``
  then removes the document or tombstone the new state no longer needs (only after its
  replacement is written, so nothing is lost if a worker dies between the two), and a last
  ``_mget`` checks that the partner document of a newly written one did not change
  meanwhile (two workers may briefly process one key during a rebalance). A conflict (409)
  re-reads and folds again, at most :data:`MAX_CONFLICTS` times, then reports a transient
  error (the entry is retried).
- Documents written before this scheme (no ``_walstream``) count as written at their
  ``_version`` (the external version, i.e. the write time, the old scheme used).

Limits: ties between two different values of one column at the same microsecond resolve by
the greater JSON encoding (Cassandra compares serialized cell values; both are deterministic
but may differ for non-text columns). Tombstones accumulate, one small hidden document per
deleted row. A document's ``_version`` is now internal, not the write time: read write times
from ``_walstream``.

One bad item fails alone. What Elasticsearch would refuse as a whole request is checked per
entry first (document ids over 512 bytes or empty, index names it forbids) and fails that
entry with a :class:`PermanentError`; requests are cut at :data:`MAX_BULK_BYTES`; a request
still refused as a whole with a non-transient 4xx is split in halves until the operation at
fault is alone (:meth:`ElasticsearchTarget.bulk_isolated`); and when the merged document of
several entries is refused (a value the mapping rejects, a value that cannot be serialized),
those entries are applied in halves again until the one at fault fails alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import orjson
from elastic_transport import ConnectionError as EsConnectionError
from elastic_transport import ConnectionTimeout
from elasticsearch import ApiError, AsyncElasticsearch

from walstream.entry import Entry
from walstream.mutations import Mutation, MutationError, es_doc_id_problem, parse_mutations
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

log = logging.getLogger(__name__)

#: the reserved document field holding per-column write times (see the module docstring)
META_FIELD = "_walstream"
#: tombstones of index ``I`` live in this hidden index
TOMBSTONE_PREFIX = ".walstream-tombstones-"
#: attempts at one read of an index scan before it fails
READ_ATTEMPTS = 5
#: how many times one document is re-read after a conflicting concurrent write, per batch
MAX_CONFLICTS = 8
#: most documents per ``_mget`` request
MGET_CHUNK = 1000

_LIVE_INDEX_MAPPING: dict[str, Any] = {"properties": {META_FIELD: {"type": "object", "enabled": False}}}
_TOMB_INDEX_MAPPING: dict[str, Any] = {"dynamic": False, "properties": {"deleted_at": {"type": "long"}}}

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

    def __init__(self, error: TargetError, *, answered: bool = False) -> None:
        super().__init__(error.message)
        self.error = error
        #: the cluster answered (with a transient status) rather than not at all
        self.answered = answered


class _Refused(Exception):
    """Elasticsearch refused a whole request with a non-transient 4xx."""

    def __init__(self, error: PermanentError) -> None:
        super().__init__(error.message)
        self.error = error


class _EntryRefused(Exception):
    """Something Elasticsearch can never accept; the entry (or merged document) fails alone."""


#: one bulk operation: its NDJSON lines (action, and the source for index/create)
Op = list[bytes]
#: per operation: the bulk item's result object, or the error that kept it from being applied
OpResult = dict[str, Any] | TargetError

_T = TypeVar("_T")
_R = TypeVar("_R")


async def _isolated(
    items: Sequence[_T], size: Callable[[_T], int], limit: int, send: Callable[[list[_T]], Awaitable[list[_R]]]
) -> list[_R | TargetError]:
    """Send ``items`` in consecutive chunks of total ``size`` at most ``limit``; each item gets
    its answer or an error. A chunk refused as a whole (:class:`_Refused`) is split in halves
    and sent again until the item at fault is alone and gets the refusal; a request the
    cluster did not serve (:class:`_Down`) fails every item not yet answered, without
    further requests."""
    results: list[_R | TargetError | None] = [None] * len(items)

    async def go(idx: list[int]) -> None:
        try:
            answers = await send([items[i] for i in idx])
        except _Refused as refused:
            if len(idx) == 1:
                results[idx[0]] = refused.error
                return
            mid = len(idx) // 2
            await go(idx[:mid])
            await go(idx[mid:])
            return
        if len(answers) != len(idx):
            raise _Down(TransientError(f"Elasticsearch answered {len(answers)} items for {len(idx)}"))
        for i, answer in zip(idx, answers, strict=True):
            results[i] = answer

    try:
        for chunk in _chunks([size(x) for x in items], limit):
            await go(chunk)
    except _Down as down:
        results = [down.error if r is None else r for r in results]
    return [r if r is not None else TransientError("no answer") for r in results]


def _chunks(sizes: Sequence[int], limit: int) -> list[list[int]]:
    """Consecutive runs of indices whose sizes sum to at most ``limit`` (an item larger than
    that is a run of its own)."""
    out: list[list[int]] = []
    run: list[int] = []
    total = 0
    for i, n in enumerate(sizes):
        if run and total + n > limit:
            out.append(run)
            run, total = [], 0
        run.append(i)
        total += n
    if run:
        out.append(run)
    return out


def _op_size(op: Op) -> int:
    return sum(len(line) + 1 for line in op)


def _dumps(doc: Any) -> bytes:
    try:
        return orjson.dumps(doc)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise _EntryRefused(f"cannot be serialized as JSON: {exc}") from None


def _reason(exc: ApiError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    err = body.get("error")
    if isinstance(err, dict):
        return f"{err.get('type', '')}: {err.get('reason', '')}"[:1000]
    return str(exc)[:1000]


def _error_type(exc: ApiError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    err = body.get("error")
    return str(err.get("type", "")) if isinstance(err, dict) else ""


def _item_error(item: dict[str, Any]) -> TargetError | None:
    status = int(item.get("status", 500))
    if status < 300:
        return None
    err = item.get("error") or {}
    reason = f"{status} {err.get('type', '')}: {err.get('reason', '')}".strip()
    if status in TRANSIENT_STATUSES:
        return TransientError(reason)
    return PermanentError(reason)


def _is_conflict(item: dict[str, Any]) -> bool:
    # a conditional write lost a race (409), or the document it was to delete is gone (404)
    return int(item.get("status", 0)) in (404, 409)


@dataclass(frozen=True)
class IndexedRow:
    """A row as the index holds it: ``found`` (a document exists), each column's write time
    (µs; a column written as null keeps its time), the newest delete's time (0: none)."""

    found: bool
    cells: dict[str, int]
    deleted_at: int


@dataclass(frozen=True)
class _Read:
    """One document as read: absent when ``seq_no`` is ``None``."""

    seq_no: int | None = None
    primary_term: int | None = None
    source: dict[str, Any] | None = None
    version: int = 0

    @property
    def exists(self) -> bool:
        return self.seq_no is not None


def _rank(v: Any) -> tuple[int, bytes]:
    """Tie-break between two values of one column written at the same microsecond: null
    (Cassandra's cell tombstone) wins, then the greater JSON encoding."""
    if v is None:
        return (1, b"")
    try:
        return (0, orjson.dumps(v, option=orjson.OPT_SORT_KEYS))
    except (TypeError, orjson.JSONEncodeError):
        return (0, repr(v).encode())


@dataclass
class _Row:
    """One row as Cassandra holds it: per column its value and write time (µs), the newest
    put (the row marker an ``INSERT`` writes) and the newest delete. A row exists while its
    newest put is newer than its newest delete. :meth:`put` and :meth:`delete` commute and
    are idempotent, so any order of any repetition of writes gives the same row."""

    key: dict[str, Any]
    cells: dict[str, tuple[Any, int]] = field(default_factory=dict)
    row_ts: int = 0
    deleted_at: int = 0

    @classmethod
    def read(cls, live: _Read, tomb: _Read, key: dict[str, Any]) -> _Row:
        row = cls(key=dict(key))
        if live.source is not None:
            src = dict(live.source)
            meta = src.pop(META_FIELD, None)
            for col in key:
                if col in src:
                    row.key[col] = src.pop(col)
            if isinstance(meta, dict):
                raw_ts = meta.get("ts")
                ts: dict[str, Any] = raw_ts if isinstance(raw_ts, dict) else {}
                row.cells = {c: (src.get(c), int(t)) for c, t in ts.items()}
                # fields someone else added count as written at time 0: any write replaces them
                row.cells.update({c: (v, 0) for c, v in src.items() if c not in row.cells})
                row.row_ts = int(meta.get("row_ts", 0))
                row.deleted_at = int(meta.get("deleted_at", 0))
            else:
                # written by the former scheme: its external version was the write time
                row.cells = {c: (v, live.version) for c, v in src.items()}
                row.row_ts = live.version
        if tomb.source is not None:
            row.delete(int(tomb.source.get("deleted_at", 0)))
        return row

    @property
    def live(self) -> bool:
        return self.row_ts > self.deleted_at

    def put(self, key: dict[str, Any], value: dict[str, Any], t: int) -> None:
        if t <= self.deleted_at:  # a delete wins a tie, as a Cassandra tombstone does
            return
        if t >= self.row_ts:
            self.row_ts = t
            self.key = dict(key)
        for col, v in value.items():
            cur = self.cells.get(col)
            if cur is None or t > cur[1] or (t == cur[1] and _rank(v) > _rank(cur[0])):
                self.cells[col] = (v, t)

    def delete(self, t: int) -> None:
        if t <= self.deleted_at:
            return
        self.deleted_at = t
        self.cells = {c: vt for c, vt in self.cells.items() if vt[1] > t}

    def source(self) -> dict[str, Any]:
        doc: dict[str, Any] = dict(self.key)
        doc.update({c: v for c, (v, _) in self.cells.items() if v is not None})
        doc[META_FIELD] = {
            "ts": {c: t for c, (_, t) in self.cells.items()},
            "row_ts": self.row_ts,
            "deleted_at": self.deleted_at,
        }
        return doc


#: one mutation of one entry: (entry's position in the batch, mutation, write time µs)
_Part = tuple[int, Mutation, int]


@dataclass
class _Doc:
    """One document touched by a batch, and the work left on it: groups of parts applied
    together (one group at first; a group whose merged document is refused is halved)."""

    index: str
    doc_id: str
    groups: deque[list[_Part]]
    conflicts: int = 0
    live: _Read = field(default_factory=_Read)
    tomb: _Read = field(default_factory=_Read)
    #: this round's plan: the write, the clean-up after it, whether to re-check the partner
    write: tuple[str, Op] | None = None
    cleanup: Op | None = None
    verify: bool = False

    @property
    def tomb_index(self) -> str:
        return TOMBSTONE_PREFIX + self.index

    def plan(self, row: _Row) -> None:
        """Decide the writes that turn what was read into ``row``. Raises
        :class:`_EntryRefused` when the merged document cannot be serialized."""
        self.write = self.cleanup = None
        if row.live:
            src = row.source()
            if self.live.source != src:
                self.write = (self.index, _write_op(self.index, self.doc_id, self.live, _dumps(src)))
            if self.tomb.exists:  # its delete time is in the document now
                self.cleanup = _delete_op(self.tomb_index, self.doc_id, self.tomb)
        else:
            if row.deleted_at and (self.tomb.source or {}).get("deleted_at") != row.deleted_at:
                body = _dumps({"deleted_at": row.deleted_at})
                self.write = (self.tomb_index, _write_op(self.tomb_index, self.doc_id, self.tomb, body))
            if self.live.exists:
                self.cleanup = _delete_op(self.index, self.doc_id, self.live)
        # A write that assumed its partner absent must check it still is: a concurrent writer
        # of the partner (a rebalance) assumed the same of ours. A clean-up is conditional
        # on the partner as read, so it checks by itself.
        self.verify = self.write is not None and self.cleanup is None


def _occ(index: str, doc_id: str, read: _Read) -> dict[str, Any]:
    meta: dict[str, Any] = {"_index": index, "_id": doc_id}
    if read.exists:
        meta["if_seq_no"] = read.seq_no
        meta["if_primary_term"] = read.primary_term
    return meta


def _write_op(index: str, doc_id: str, read: _Read, source: bytes) -> Op:
    action = "index" if read.exists else "create"
    return [orjson.dumps({action: _occ(index, doc_id, read)}), source]


def _delete_op(index: str, doc_id: str, read: _Read) -> Op:
    return [orjson.dumps({"delete": _occ(index, doc_id, read)})]


class ElasticsearchTarget(Target):
    """Applies mutation payloads to indices ``<index_prefix><table>`` with merge semantics."""

    def __init__(self, cfg: ElasticsearchTargetConfig, url: str, timeout_s: float) -> None:
        self.cfg = cfg
        self.url = url
        self.label = f"elasticsearch:{cfg.index_prefix or '*'}"
        self._client = AsyncElasticsearch(url, request_timeout=timeout_s, max_retries=0)
        #: indices known to exist with the reserved field's mapping
        self._ready: set[str] = set()

    async def close(self) -> None:
        await self._client.close()

    # -- reading the index as the target sees it (walstream.index_check) -------------------

    def index_of(self, table: str) -> str:
        """The index holding ``table``'s rows."""
        return f"{self.cfg.index_prefix}{table}"

    async def read_rows(self, table: str, doc_ids: Sequence[str]) -> list[IndexedRow | TargetError]:
        """How the index holds each of these rows (by document id): its cells' write times,
        whether it is live, its newest delete, read as the next write would read them (the
        document and its tombstone)."""
        index = self.index_of(table)
        reads = await self._mget([(index, d) for d in doc_ids] + [(TOMBSTONE_PREFIX + index, d) for d in doc_ids])
        out: list[IndexedRow | TargetError] = []
        for live, tomb in zip(reads[: len(doc_ids)], reads[len(doc_ids):], strict=True):
            if isinstance(live, TargetError):
                out.append(live)
                continue
            if isinstance(tomb, TargetError):
                out.append(tomb)
                continue
            row = _Row.read(live, tomb, {})
            out.append(IndexedRow(live.exists, {c: t for c, (_, t) in row.cells.items()}, row.deleted_at))
        return out

    async def count(self, table: str) -> int:
        """How many documents the table's index holds (0: no index)."""
        index = self.index_of(table)
        if not await self._read_request(lambda: self._client.indices.exists(index=index)):
            return 0
        resp = await self._read_request(lambda: self._client.count(index=index))
        return int(resp["count"])

    async def _read_request(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """:meth:`_request` for reads, tried :data:`READ_ATTEMPTS` times while the cluster
        does not serve it; raises the :class:`TargetError` of the last failure."""
        for attempt in range(1, READ_ATTEMPTS + 1):
            try:
                return await self._request(call)
            except _Refused as exc:
                raise exc.error from None
            except _Down as exc:
                if attempt == READ_ATTEMPTS:
                    raise exc.error from None
                await asyncio.sleep(min(0.5 * 2 ** (attempt - 1), 5.0))
        raise AssertionError("unreachable")

    async def scan_keys(
        self, table: str, key_columns: Sequence[str], page: int, *, keep_alive_s: int = 300
    ) -> AsyncIterator[list[tuple[str, dict[str, Any]]]]:
        """Every document's id, with its key columns and its write times (:data:`META_FIELD`),
        ``page`` documents at a time, over a point in time of the index (a consistent view
        however long the scan; memory: one page). Nothing when the index does not exist.
        Raises the :class:`TargetError` of a read still failing after :data:`READ_ATTEMPTS`."""
        index = self.index_of(table)
        if not await self._read_request(lambda: self._client.indices.exists(index=index)):
            return
        keep_alive = f"{keep_alive_s}s"  # between two pages: a paced caller waits that long at most
        pit = await self._read_request(lambda: self._client.open_point_in_time(index=index, keep_alive=keep_alive))
        pit_id = pit["id"]
        after: list[Any] | None = None
        try:
            while True:
                query: dict[str, Any] = {
                    "pit": {"id": pit_id, "keep_alive": keep_alive}, "size": page, "sort": ["_shard_doc"],
                    "source_includes": [*key_columns, META_FIELD], "track_total_hits": False,
                }
                if after is not None:
                    query["search_after"] = after
                resp = await self._read_request(partial(self._client.search, **query))
                hits = resp["hits"]["hits"]
                if not hits:
                    return
                pit_id = resp.get("pit_id", pit_id)
                after = hits[-1]["sort"]
                yield [(str(h["_id"]), dict(h.get("_source") or {})) for h in hits]
        finally:
            try:
                await self._client.close_point_in_time(id=pit_id)
            except Exception:  # it expires by itself
                log.debug("closing a point in time of %s failed", index, exc_info=True)

    async def _request(self, call: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await call()
        except (EsConnectionError, ConnectionTimeout) as exc:
            raise _Down(TargetDownError(f"{type(exc).__name__}: {exc}")) from None
        except ApiError as exc:
            status = int(getattr(exc.meta, "status", 0) or 0)
            if status in TRANSIENT_STATUSES or status < 400:
                raise _Down(TargetDownError(f"request failed: {status} {_reason(exc)}"), answered=True) from None
            if status in (401, 403, 405) or (status == 404 and not _error_type(exc)):
                # Not the entries' fault: the target's url or credentials are wrong (a 404
                # without an Elasticsearch error body is not Elasticsearch answering). Its
                # entries wait for the config to be fixed, spending no attempts.
                # (not "answered": no index of a real cluster is refusing; the target is wrong)
                raise _Down(
                    TargetDownError(f"the target does not answer as Elasticsearch: {status} {_reason(exc)}")
                ) from None
            raise _Refused(PermanentError(f"refused by Elasticsearch: {status} {_reason(exc)}")) from None
        except Exception as exc:  # unknown: retry rather than dead-letter on first sight
            raise _Down(TransientError(f"{type(exc).__name__}: {exc}")) from None

    async def bulk_isolated(self, ops: Sequence[Op]) -> list[OpResult]:
        """Send ``ops`` through ``_bulk`` so that each gets its own outcome: requests are cut
        at :data:`MAX_BULK_BYTES`; one refused as a whole with a 4xx that is not transient (an
        id or index it cannot take, a body too large or unparsable) is split in halves until
        the operation at fault is alone and gets the refusal as its :class:`PermanentError`;
        a cluster that does not answer (connection error, timeout, 5xx, 429) fails every
        operation not yet applied with a :class:`TargetDownError`."""
        refresh = "true" if self.cfg.refresh else "false"

        async def send(chunk: list[Op]) -> list[dict[str, Any]]:
            # already NDJSON lines: the client's serializer passes bytes through unchanged
            body: Any = [line for op in chunk for line in op]
            resp = await self._request(lambda: self._client.bulk(operations=body, refresh=refresh))
            return [next(iter(item.values())) for item in resp["items"]]

        return await _isolated(ops, _op_size, MAX_BULK_BYTES, send)

    async def _mget(self, pairs: Sequence[tuple[str, str]]) -> list[_Read | TargetError]:
        async def send(chunk: list[tuple[str, str]]) -> list[_Read | TargetError]:
            docs = [{"_index": i, "_id": d} for i, d in chunk]
            resp = await self._request(lambda: self._client.mget(docs=docs, realtime=True))
            out: list[_Read | TargetError] = []
            for d in resp["docs"]:
                err = d.get("error")
                if err is not None:
                    kind = err.get("type", "") if isinstance(err, dict) else str(err)
                    if kind == "index_not_found_exception":
                        self._ready.discard(str(d.get("_index")))
                        out.append(_Read())
                    else:
                        out.append(TransientError(f"reading {d.get('_index')}/{d.get('_id')} failed: {err}"))
                elif d.get("found"):
                    out.append(_Read(d["_seq_no"], d["_primary_term"], d.get("_source") or {}, d.get("_version", 0)))
                else:
                    out.append(_Read())
            return out

        return await _isolated(pairs, lambda _: 1, MGET_CHUNK, send)

    async def _ensure_index(self, index: str) -> TargetError | None:
        """Create ``index`` (or add to it) with the reserved field's mapping, once per process."""
        if index in self._ready:
            return None
        tomb = index.startswith(TOMBSTONE_PREFIX)
        try:
            try:
                if tomb:
                    await self._request(lambda: self._client.indices.create(
                        index=index, settings={"index": {"hidden": True}}, mappings=_TOMB_INDEX_MAPPING))
                else:
                    await self._request(lambda: self._client.indices.create(index=index, mappings=_LIVE_INDEX_MAPPING))
            except _Refused as refused:
                if "resource_already_exists_exception" not in refused.error.message:
                    return refused.error
                if not tomb:
                    try:
                        await self._request(lambda: self._client.indices.put_mapping(
                            index=index, properties=_LIVE_INDEX_MAPPING["properties"]))
                    except _Refused as exc:
                        # e.g. the field was mapped dynamically before: merging works all the
                        # same, the write times are only indexed
                        log.warning("%s: could not map %s as not indexed: %s", index, META_FIELD, exc.error.message)
                    except _Down as down:
                        if not down.answered:
                            raise
                        # e.g. a write block: the writes will tell; map it next time
                        return None
        except _Down as down:
            # one index refusing (a block, throttling) is not the whole target down
            return TransientError(down.error.message) if down.answered else down.error
        self._ready.add(index)
        return None

    async def apply(self, entries: Sequence[Entry]) -> Outcomes:
        errors: list[list[TargetError | None]] = [[] for _ in entries]
        docs: dict[tuple[str, str], _Doc] = {}
        for i, entry in enumerate(entries):
            try:
                payload = parse_mutations(entry.payload)
                parts: list[tuple[str, str, Mutation]] = []
                for m in payload.mutations:
                    index = f"{self.cfg.index_prefix}{m.table}"
                    doc_id = m.doc_id()
                    problem = index_name_problem(index) or es_doc_id_problem(doc_id)
                    if problem is not None:
                        raise _EntryRefused(f"{m.table} {doc_id[:64]!r}: {problem}")
                    parts.append((index, doc_id, m))
            except (MutationError, _EntryRefused) as exc:
                errors[i].append(PermanentError(str(exc)))
                continue
            for index, doc_id, m in parts:
                doc = docs.setdefault((index, doc_id), _Doc(index, doc_id, deque([[]])))
                doc.groups[0].append((i, m, entry.written_at_us))
        while active := [d for d in docs.values() if d.groups]:
            await self._round(active, errors)
        return [combine(errs) for errs in errors]

    async def _round(self, active: list[_Doc], errors: list[list[TargetError | None]]) -> None:
        """Read, fold, write and check each document's first group once; each document ends
        the round with that group done, failed, halved, or (after a conflict) to do again."""

        def fail(doc: _Doc, err: TargetError) -> None:
            group = doc.groups.popleft()
            if isinstance(err, PermanentError) and len(group) > 1:
                # refused because of some entry's values: find which by halves
                mid = len(group) // 2
                doc.groups.extendleft([group[mid:], group[:mid]])
                return
            for i, _, _ in group:
                errors[i].append(err)

        def conflict(doc: _Doc) -> None:
            doc.conflicts += 1
            if doc.conflicts > MAX_CONFLICTS:
                fail(doc, TransientError(
                    f"{doc.index}/{doc.doc_id[:64]}: changed by concurrent writers {MAX_CONFLICTS} times"))

        n = len(active)
        reads = await self._mget([(d.index, d.doc_id) for d in active] + [(d.tomb_index, d.doc_id) for d in active])
        planned: list[_Doc] = []
        for k, doc in enumerate(active):
            live, tomb = reads[k], reads[n + k]
            if isinstance(live, TargetError) or isinstance(tomb, TargetError):
                fail(doc, live if isinstance(live, TargetError) else tomb)  # type: ignore[arg-type]
                continue
            doc.live, doc.tomb = live, tomb
            group = doc.groups[0]
            row = _Row.read(live, tomb, dict(group[0][1].key))
            for _, m, t in group:
                if m.op == "put":
                    row.put(m.key, m.value or {}, t)
                else:
                    row.delete(t)
            try:
                doc.plan(row)
            except _EntryRefused as exc:
                fail(doc, PermanentError(f"{doc.index}/{doc.doc_id[:64]}: {exc}"))
                continue
            planned.append(doc)

        # Phase 1: the writes (indices created with the reserved field's mapping first)
        ensured: dict[str, TargetError | None] = {}
        for doc in planned:
            if doc.write is not None and doc.write[0] not in ensured:
                ensured[doc.write[0]] = await self._ensure_index(doc.write[0])
        writers: list[_Doc] = []
        after_write: list[_Doc] = []
        for doc in planned:
            if doc.write is None:
                after_write.append(doc)
                continue
            err = ensured[doc.write[0]]
            if err is not None:
                fail(doc, err)
            else:
                writers.append(doc)
        for doc, result in zip(writers, await self.bulk_isolated([d.write[1] for d in writers]), strict=True):  # type: ignore[index]
            if isinstance(result, TargetError):
                fail(doc, result)
            elif _is_conflict(result):
                conflict(doc)
            elif (err := _item_error(result)) is not None:
                fail(doc, err)
            else:
                after_write.append(doc)

        # Phase 2: remove what the new state no longer needs, now that its replacement is durable
        cleaners = [d for d in after_write if d.cleanup is not None]
        to_verify = [d for d in after_write if d.cleanup is None and d.verify]
        for doc in after_write:
            if doc.cleanup is None and not doc.verify:
                doc.groups.popleft()
        for doc, result in zip(cleaners, await self.bulk_isolated([d.cleanup for d in cleaners]), strict=True):  # type: ignore[misc]
            if isinstance(result, TargetError):
                fail(doc, result)
            elif _is_conflict(result):
                conflict(doc)
            elif (err := _item_error(result)) is not None:
                fail(doc, err)
            else:
                doc.groups.popleft()

        # Phase 3: a write that assumed its partner absent checks that it still is
        if to_verify:
            partners = [
                (d.tomb_index if d.write and d.write[0] == d.index else d.index, d.doc_id) for d in to_verify
            ]
            for doc, read in zip(to_verify, await self._mget(partners), strict=True):
                if isinstance(read, TargetError):
                    fail(doc, read)
                elif read.exists:
                    conflict(doc)
                else:
                    doc.groups.popleft()
