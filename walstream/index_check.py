"""Secondary index check: compare a namespace's Cassandra table with its Elasticsearch index
(both targets of the namespace, describing the same rows), by primary key and write time.

Two passes, each one page in memory at a time, however large the table:

1. **Rows to documents.** The table is read in token order (the driver's paging), each
   row's key and the write time of each column that has one (``WRITETIME``). For every page
   the index is asked how it holds those rows, as the Elasticsearch target itself reads them
   (walstream.targets.elasticsearch: per-column write times in ``_walstream``, tombstones):
   - ``missing``: the row has live cells and the index has no document (and no newer delete);
   - ``stale``: the document holds an older write time than the row for some column;
   - ``index_newer``: the index holds newer writes than the table (the table is behind:
     a write still being delivered to it, or lost there); reported, not index drift.
2. **Documents to rows.** The index is read over a point in time; for every page of
   documents the table is asked whether their keys have rows: ``extra`` when not.

Rows written while the check runs may show as drift that is only delivery in flight: check
again (drift that stays is drift).

**Repair** (``repair: true``) fixes drift through the WAL itself, with entries whose target
is the index only (the table is the truth):

- a missing or stale row: a put of the row's values (Cassandra's ``SELECT JSON``) at each
  column's own write time, one entry per distinct write time;
- an extra document: a delete at the document's own newest write time (a delete wins a tie
  in the index, as a Cassandra tombstone does).

Original write times make repair idempotent and unable to overwrite newer data: a write
that reached the index after the check read it is newer and wins. The entries are
delivered like any other (retried, dead-lettered), so the index is repaired once they are:
a second check says so. Not repaired: columns without a write time (non-frozen collections,
counters), rows of key columns only, documents without walstream's write times
(``unrepairable``); and ``index_newer`` (the table is behind, not the index).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from walstream.api import IndexCheckRequest
from walstream.entry import Entry
from walstream.jobs import Job, Jobs
from walstream.mutations import IDENT_RE, Mutation
from walstream.namespaces.model import CassandraTargetConfig, ElasticsearchTargetConfig, NamespaceConfig
from walstream.namespaces.registry import NamespaceRegistry
from walstream.targets.base import PermanentError, TargetError, TransientError
from walstream.targets.cassandra import CassandraTarget, ScannedRow, TableColumns
from walstream.targets.elasticsearch import META_FIELD, ElasticsearchTarget, IndexedRow
from walstream.targets.pool import TargetPool
from walstream.writer import LogWriter

log = logging.getLogger(__name__)

#: rows (documents) read per page
PAGE = 500
#: attempts at one page's read before the check fails
READ_ATTEMPTS = 5
#: the token range Cassandra's Murmur3 partitioner spreads rows over
TOKEN_MIN, TOKEN_SPAN = -(2**63), 2**64


#: key column types whose JSON value has one text form, the one Cassandra gives back
CANONICAL_KEY_TYPES = frozenset({"text", "varchar", "ascii", "int", "bigint", "smallint", "tinyint"})
#: of those, the integers: a client may write them as text ("01", "+3"), which names another
#: document than the table's form does
INTEGER_KEY_TYPES = frozenset({"int", "bigint", "smallint", "tinyint"})


class CheckRefused(ValueError):
    """A check that cannot be done as asked (400: the message names the problem)."""


@dataclass(frozen=True)
class CheckPlan:
    namespace: NamespaceConfig
    table: str
    cassandra: CassandraTarget
    index: ElasticsearchTarget
    columns: TableColumns

    def public(self) -> dict[str, Any]:
        return {
            "table": f"{self.cassandra.cfg.keyspace}.{self.table}",
            "index": self.index.index_of(self.table),
            "key_columns": self.columns.keys,
            "compared_columns": self.columns.timed,
            "not_compared": self.columns.untimed,
        }


async def plan_check(ns: NamespaceConfig, table: str, pool: TargetPool) -> CheckPlan:
    """The table and index a check compares. Raises :class:`CheckRefused` when the
    namespace has not exactly one target of each kind, or the table does not exist."""
    if not IDENT_RE.match(table):
        raise CheckRefused(f"table: {table!r} is not a table name (a-z, 0-9 and _, a letter first)")
    own = ns.targets_in(pool.settings.region)  # this region's (walstream.replication)
    cassandras = [t for t in own if isinstance(t, CassandraTargetConfig)]
    indexes = [t for t in own if isinstance(t, ElasticsearchTargetConfig)]
    if len(cassandras) != 1 or len(indexes) != 1:
        raise CheckRefused(
            f"namespace {ns.name!r} has {len(cassandras)} cassandra and {len(indexes)} elasticsearch targets; "
            "an index check compares one of each"
        )
    cassandra, index = pool.get(cassandras[0]), pool.get(indexes[0])
    assert isinstance(cassandra, CassandraTarget) and isinstance(index, ElasticsearchTarget)
    try:
        columns = await cassandra.table_columns(table)
    except PermanentError as err:
        raise CheckRefused(f"table: {err.message}") from None
    odd = {c: columns.types[c] for c in columns.keys if columns.types[c] not in CANONICAL_KEY_TYPES}
    if odd:
        said = ", ".join(f"{c} ({t})" for c, t in odd.items())
        raise CheckRefused(
            f"table: key column(s) {said}: the index's document ids are the key's values as the client wrote "
            f"them, and several texts name one such value (case, format), so rows cannot be paired with their "
            f"documents; keys of {', '.join(sorted(CANONICAL_KEY_TYPES))} can"
        )
    return CheckPlan(ns, table, cassandra, index, columns)


def doc_id(table: str, key: dict[str, Any]) -> str:
    """The document id the Elasticsearch target gives the row with this key."""
    return Mutation(table=table, op="delete", key={c: _scalar(v) for c, v in key.items()}).doc_id()


def _scalar(v: Any) -> Any:
    # what a client writes for such a key in a mutation payload (JSON): Cassandra gives
    # uuid.UUID for uuid keys, which a payload carries as text
    if isinstance(v, (str, int, float, bool)):
        return v
    if isinstance(v, uuid.UUID):
        return str(v)
    return str(v)


def compare(row: ScannedRow, held: IndexedRow) -> tuple[str, dict[str, Any]] | None:
    """How the index holds ``row``: None (the same), or the kind of drift and its detail."""
    written = {c: t for c, t in row.written.items() if t is not None}
    if not held.found:
        if written and held.deleted_at >= max(written.values()):
            return "index_newer", {"deleted_at": held.deleted_at}
        return "missing", {}
    # what the index holds of a column: its cell, or a newer delete of it
    def at(c: str) -> int:
        return max(held.cells.get(c, 0), held.deleted_at)

    behind = {c: {"table_ts": t, "index_ts": held.cells.get(c)} for c, t in written.items() if at(c) < t}
    if behind:
        return "stale", {"columns": behind}
    ahead = {c: {"table_ts": t, "index_ts": held.cells.get(c), "index_deleted_at": held.deleted_at}
             for c, t in written.items() if at(c) > t}
    if ahead:
        return "index_newer", {"columns": ahead}
    return None


Sleep = Callable[[float], Awaitable[None]]


class IndexChecker:
    """Runs one check (:meth:`run`) as a job's work: counts ``rows``, ``documents`` and each
    kind of drift, with samples of each."""

    def __init__(self, plan: CheckPlan, *, rate: float | None, writer: LogWriter | None = None,
                 sleep: Sleep = asyncio.sleep) -> None:
        self.plan = plan
        self.rate = rate
        #: repairs through the WAL when given
        self.writer = writer
        self.sleep = sleep
        self._started = time.monotonic()
        self._done = 0

    async def run(self, job: Job) -> None:
        plan = self.plan
        for name in ("rows", "documents", "missing", "stale", "extra", "index_newer"):
            job.counts.setdefault(name, 0)
        job.total = 1000
        async for rows in plan.cassandra.scan(plan.table, plan.columns, PAGE):
            job.check()
            ids = [doc_id(plan.table, r.key) for r in rows]
            held = await self._read(job, partial(plan.index.read_rows, plan.table, ids))
            drifted: list[tuple[ScannedRow, str]] = []
            for row, rid, h in zip(rows, ids, held, strict=True):
                job.count("rows")
                if isinstance(h, TargetError):
                    raise h
                found = compare(row, h)
                if found is not None:
                    kind, detail = found
                    job.count(kind)
                    job.sample(kind, {"id": rid, "key": _jsonable(row.key), **detail})
                    if kind in ("missing", "stale"):
                        drifted.append((row, rid))
            if self.writer is not None and drifted:
                await self._repair_rows(job, drifted)
            job.done = int((rows[-1].token - TOKEN_MIN) / TOKEN_SPAN * 500)
            await self._pace(job, len(rows))
        job.done = 500
        total_docs = max(1, await self._count())
        seen = 0
        # the point in time outlives the longest wait between two pages at the rate
        keep_alive_s = 300 if self.rate is None else max(300, int(4 * PAGE / self.rate))
        async for docs in plan.index.scan_keys(plan.table, plan.columns.keys, PAGE, keep_alive_s=keep_alive_s):
            job.check()
            keys = [{c: src.get(c) for c in plan.columns.keys} for _, src in docs]
            exists = await self._read(job, partial(plan.cassandra.existing, plan.table, plan.columns, keys))
            extras: list[tuple[dict[str, Any], Any]] = []
            for key, (did, src), there in zip(keys, docs, exists, strict=True):
                job.count("documents")
                if isinstance(there, TransientError):
                    raise there
                own = _safe_doc_id(plan.table, key)
                if not self._canonical(key):  # "01" for 1: the row's document is "1"
                    job.count("extra")
                    job.sample("extra", {"id": did, "key": key, "why": "its key is not in the table's form"})
                    job.count("unrepairable")
                    job.sample("unrepairable", {"id": did, "key": key, "why": "its key is not in the form the table "
                                                "gives back (e.g. '01' for 1): delete it by hand"})
                elif own != did:  # not where the target puts that key's row: no row is its row
                    job.count("extra")
                    job.sample("extra", {"id": did, "key": key, "why": "its id is not the one of its key's row"})
                    job.count("unrepairable")
                    job.sample("unrepairable", {"id": did, "key": key, "why": "its id is not the one of its key's "
                                                "row: a delete through the WAL cannot reach it; delete it by hand"})
                elif there is not True:  # no row, or a key no row of the table can have
                    job.count("extra")
                    reason = {"error": there.message} if isinstance(there, TargetError) else {}
                    job.sample("extra", {"id": did, "key": key, **reason})
                    extras.append((key, src.get(META_FIELD)))
            if self.writer is not None and extras:
                await self._repair_extras(job, extras)
            seen += len(docs)
            job.done = 500 + min(499, int(seen / total_docs * 500))
            await self._pace(job, len(docs))
        job.done = job.total

    def _canonical(self, key: dict[str, Any]) -> bool:
        """Whether a document's key is written as the table gives it back (integers as
        integers, or as their plain decimal text)."""
        for column, value in key.items():
            if self.plan.columns.types.get(column) in INTEGER_KEY_TYPES:
                if isinstance(value, bool) or not isinstance(value, (int, str)):
                    return False
                if isinstance(value, str):
                    try:
                        if str(int(value)) != value:
                            return False
                    except ValueError:
                        return False
        return True

    # -- repair through the WAL ---------------------------------------------------------------

    async def _repair_rows(self, job: Job, drifted: list[tuple[ScannedRow, str]]) -> None:
        """Puts of these rows' values, to the index only, each at its columns' own write time
        (one entry per distinct write time): the index takes what it lacks or holds older,
        and a newer write there is never overwritten."""
        plan = self.plan
        values = await plan.cassandra.values(plan.table, plan.columns, [row.key for row, _ in drifted])
        entries: list[Entry] = []
        for (row, rid), vals in zip(drifted, values, strict=True):
            if vals is None:
                continue  # deleted since it was read
            by_time: dict[int, list[str]] = {}
            for column, t in row.written.items():
                if t is not None:
                    by_time.setdefault(t, []).append(column)
            if not by_time:
                job.count("unrepairable")
                job.sample("unrepairable", {"id": rid, "why": "no column with a write time (only its key)"})
                continue
            unput = [c for c in plan.columns.untimed if vals.get(c) is not None]
            if unput:
                job.count("unrepairable")
                job.sample("unrepairable", {"id": rid, "why": f"columns without a write time not repaired: {unput}"})
            key = {c: vals.get(c) for c in plan.columns.keys}
            for t, columns in sorted(by_time.items()):
                put = {"table": plan.table, "op": "put", "key": key, "value": {c: vals.get(c) for c in columns}}
                entries.append(self._entry(rid, put, t))
        await self._write(job, entries)

    async def _repair_extras(self, job: Job, extras: list[tuple[dict[str, Any], Any]]) -> None:
        """Deletes of these documents, to the index only, at their own newest write time (a
        delete wins a tie there): the document goes, and a newer write never does."""
        entries: list[Entry] = []
        for key, meta in extras:
            times = [int(t) for t in (meta or {}).get("ts", {}).values()] if isinstance(meta, dict) else []
            newest = max([*times, int(meta.get("row_ts", 0)) if isinstance(meta, dict) else 0])
            rid = _safe_doc_id(self.plan.table, key)
            if rid is None or newest <= 0:
                job.count("unrepairable")
                job.sample("unrepairable", {"id": rid, "key": key, "why": "no walstream write times to delete at"})
                continue
            entries.append(self._entry(rid, {"table": self.plan.table, "op": "delete", "key": key}, newest))
        await self._write(job, entries)

    def _entry(self, key: str, mutation: dict[str, Any], written_at_us: int) -> Entry:
        return Entry(f"repair-{uuid.uuid4().hex}", self.plan.namespace.name, key, {"mutations": [mutation]},
                     written_at_us, targets=[self.plan.index.cfg.model_dump(mode="json")])

    async def _write(self, job: Job, entries: list[Entry]) -> None:
        if not entries:
            return
        assert self.writer is not None
        for entry, result in zip(entries, await self.writer.write([(e, e.encode()) for e in entries]), strict=True):
            if result.durable == "SUCCESS":
                job.count("repairs_written")
            else:
                job.count("repairs_failed")
                job.sample("repairs_failed", {"entry": entry.id, "key": entry.key, "durable": str(result.durable),
                                              "error": result.message})

    async def _count(self) -> int:
        try:
            return await self.plan.index.count(self.plan.table)
        except TargetError:
            return 0

    async def _read(self, job: Job, read: Callable[[], Awaitable[list[Any]]]) -> list[Any]:
        """One page's read, tried again on transient failures (a page failing
        :data:`READ_ATTEMPTS` times fails the check)."""
        for attempt in range(1, READ_ATTEMPTS + 1):
            out = await read()
            if not any(isinstance(o, TransientError) for o in out) or attempt == READ_ATTEMPTS:
                return out
            job.check()
            await self.sleep(min(0.5 * 2 ** (attempt - 1), 5.0))
        return out  # unreachable

    async def _pace(self, job: Job, n: int) -> None:
        self._done += n
        if self.rate is None:
            return
        ahead = self._done / self.rate - (time.monotonic() - self._started)
        while ahead > 0:
            job.check()
            await self.sleep(min(ahead, 0.25))
            ahead = self._done / self.rate - (time.monotonic() - self._started)


def _jsonable(key: dict[str, Any]) -> dict[str, Any]:
    return {c: _scalar(v) for c, v in key.items()}


def _safe_doc_id(table: str, key: dict[str, Any]) -> str | None:
    try:
        return doc_id(table, key)
    except ValueError:  # not a key a mutation could carry
        return None


class IndexChecks:
    """Starts index checks as jobs of this worker (``POST /v1/index/{ns}/{table}/check``)."""

    def __init__(self, registry: NamespaceRegistry, pool: TargetPool, jobs: Jobs, writer: LogWriter) -> None:
        self.registry = registry
        self.writer = writer
        self.pool = pool
        self.jobs = jobs

    async def start(self, namespace: str, table: str, request: IndexCheckRequest) -> Job:
        """Raises :class:`LookupError` for an unknown namespace, :class:`CheckRefused` for a
        check that cannot be done as asked, and walstream.targets.base.TransientError when
        Cassandra cannot be asked about the table now."""
        ns = self.registry.get(namespace)
        if ns is None:
            raise LookupError(f"unknown namespace {namespace!r}")
        plan = await plan_check(ns, table, self.pool)
        checker = IndexChecker(plan, rate=request.rate, writer=self.writer if request.repair else None)
        asked = {"table": table, **request.model_dump(mode="json")}
        return self.jobs.start("index", namespace, asked, checker.run, plan=plan.public(), total=1000)
