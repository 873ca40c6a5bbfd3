"""The Cassandra target: mutation payloads applied with ``USING TIMESTAMP <write time>``.

Every put is ``INSERT INTO <keyspace>.<table> (...) VALUES (...) USING TIMESTAMP t`` and every
delete ``DELETE FROM <keyspace>.<table> USING TIMESTAMP t WHERE ...``, where ``t`` is the
entry's original write time in microseconds. Cassandra keeps, per cell, the write with the
greatest timestamp, so replays, duplicates and out-of-order deliveries converge to the last
write. Mutations are sent concurrently (no CQL batches: an unlogged batch across partitions
only moves the fan-out to the coordinator).

The keyspace and tables are the user's (walstream never creates schema). Values are coerced
from JSON by column type, recursively, as :mod:`walstream.targets.cql_types` documents (its
table lists every CQL type and the JSON forms it accepts); the coercion is built once per
prepared statement from the statement's column metadata.

Failures are classified by where they happen. Reading a value (coercion and the driver's
serialization, both local and deterministic) can never succeed on a retry, so every failure
there — whatever its exception class — is a :class:`PermanentError` naming the column, its
CQL type and the value's problem, and the entry goes to the dead-letter queue on its first
attempt instead of holding its key through every retry. All values of an entry are read
before any of its mutations is sent, so an entry with a bad value writes nothing. Failures
of preparing or executing a statement are classified by :func:`classify`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

from cassandra import (
    AuthenticationFailed,
    ConsistencyLevel,
    CoordinationFailure,
    InvalidRequest,
    OperationTimedOut,
    Timeout,
    Unauthorized,
    Unavailable,
)
from cassandra.cluster import Cluster, NoHostAvailable, Session
from cassandra.connection import ConnectionException
from cassandra.policies import DCAwareRoundRobinPolicy, ExponentialReconnectionPolicy
from cassandra.protocol import (
    ConfigurationException,
    IsBootstrappingErrorMessage,
    OverloadedErrorMessage,
    ServerError,
    SyntaxException,
)
from cassandra.query import BoundStatement, PreparedStatement, SimpleStatement, tuple_factory

from walstream.entry import Entry
from walstream.mutations import Mutation, MutationError, parse_mutations
from walstream.namespaces.model import CassandraTargetConfig
from walstream.targets.base import (
    Outcomes,
    PermanentError,
    Target,
    TargetDownError,
    TargetError,
    TransientError,
    combine,
)
from walstream.targets.cql_types import Coercer, CqlValueError, coercer_for, cql_name, quote

log = logging.getLogger(__name__)

#: most statements in flight per target; bounds memory and the coordinator's queue
MAX_IN_FLIGHT = 256

_TRANSIENT = (
    Unavailable,
    Timeout,
    OperationTimedOut,
    CoordinationFailure,
    NoHostAvailable,
    ConnectionException,
    OverloadedErrorMessage,
    IsBootstrappingErrorMessage,
    ServerError,
    asyncio.TimeoutError,
    OSError,
)
#: the cluster did not answer at all (as opposed to one statement timing out)
_DOWN = (NoHostAvailable, ConnectionException, OperationTimedOut, OSError)
_PERMANENT = (
    InvalidRequest,
    SyntaxException,
    ConfigurationException,
    Unauthorized,
    AuthenticationFailed,
    # a value that cannot be read or encoded (normally caught earlier, in _Statement.bind)
    TypeError,
    ValueError,  # includes CqlValueError, UnicodeError, binascii.Error
    LookupError,  # KeyError, IndexError
    ArithmeticError,  # OverflowError, decimal.InvalidOperation (not a ValueError)
    struct.error,
)


def classify(exc: BaseException) -> TargetError:
    """Map an exception from preparing or executing a statement to a typed target error.

    The transient kinds are checked first only for exceptions that are both (e.g.
    ``io.UnsupportedOperation`` is an OSError and a ValueError): a network failure is worth
    retrying. Unknown errors count as transient, so they are retried rather than
    dead-lettered on first sight. Failures of reading a value never get here: they are
    permanent by where they happen (:meth:`_Statement.bind`).
    """
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, _PERMANENT) and not isinstance(exc, _TRANSIENT):
        return PermanentError(text)
    if isinstance(exc, _DOWN):
        return TargetDownError(text)
    return TransientError(text)


class _Statement:
    """A prepared statement plus the per-column coercions its bind values need."""

    def __init__(self, prepared: PreparedStatement, table: str) -> None:
        self.prepared = prepared
        self.columns: list[tuple[str, str, Coercer]] = [
            (f"{table}.{col.name}", cql_name(col.type), coercer_for(col.type)) for col in prepared.column_metadata
        ]

    def bind(self, values: list[Any]) -> BoundStatement:
        """Coerce ``values`` (JSON, in column order) and serialize them.

        Raises :class:`PermanentError` naming the column, its CQL type and the problem for
        any value that cannot be written: nothing in here depends on the cluster, so a retry
        could only fail the same way.
        """
        out: list[Any] = []
        for (column, cql, coerce), value in zip(self.columns, values, strict=True):
            if value is None:
                out.append(None)
                continue
            try:
                out.append(coerce(value))
            except CqlValueError as err:
                raise PermanentError(f"column {column} ({cql}): {err}") from err
            except Exception as exc:  # a kind the coercion did not foresee is as final
                raise PermanentError(f"column {column} ({cql}): {quote(value)}: {type(exc).__name__}: {exc}") from exc
        try:
            return self.prepared.bind(out)
        except Exception as exc:
            raise PermanentError(self._serialization_failure(out, exc)) from exc

    def _serialization_failure(self, values: list[Any], exc: Exception) -> str:
        """Which column the driver could not serialize (found again, on this rare path only)."""
        version = self.prepared.protocol_version
        for col, (column, cql, _), value in zip(self.prepared.column_metadata, self.columns, values, strict=True):
            if value is None:
                continue
            try:
                col.type.serialize(value, version)
            except Exception as col_exc:
                return f"column {column} ({cql}): cannot encode {quote(value)}: {type(col_exc).__name__}: {col_exc}"
        return f"cannot encode the values: {type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class TableColumns:
    """A table's columns: ``keys`` (the primary key, partition key first), ``partition``
    (the partition key), ``timed`` (others with a write time to read), ``untimed`` (the
    others: non-frozen collections and counters)."""

    keys: list[str]
    partition: list[str]
    timed: list[str]
    untimed: list[str]
    #: every column's CQL type, as the schema names it
    types: dict[str, str]
    #: static columns (one value per partition)
    static: list[str]


@dataclass(frozen=True)
class ScannedRow:
    """A row as a table scan reads it: its key, each timed column's write time in µs (None:
    no live cell), and its partition's token."""

    key: dict[str, Any]
    written: dict[str, int | None]
    token: int


#: attempts at one read of a table scan before it fails
READ_ATTEMPTS = 5
#: the largest integer a JSON number keeps exactly in every reader (a double's 53 bits)
EXACT_INT = 2**53


T = TypeVar("T")


async def read_retrying(read: Callable[[], Awaitable[T]]) -> T:
    """``read()``, tried :data:`READ_ATTEMPTS` times with backoff while it fails transiently;
    raises the :class:`TargetError` of a permanent or the last failure."""
    for attempt in range(1, READ_ATTEMPTS + 1):
        try:
            return await read()
        except Exception as exc:
            err = exc if isinstance(exc, TargetError) else classify(exc)
            if isinstance(err, PermanentError) or attempt == READ_ATTEMPTS:
                raise err from exc
            await asyncio.sleep(min(0.5 * 2 ** (attempt - 1), 5.0))
    raise AssertionError("unreachable")


def json_values(text: str, types: dict[str, str]) -> dict[str, Any]:
    """A row as ``SELECT JSON`` gives it, as the JSON a client would write: numbers a double
    cannot hold exactly (varint, decimal) as their text, timestamps in ISO-8601 with a ``T``
    (Cassandra writes ``2026-01-01 00:00:00.000Z``, which Elasticsearch's dates refuse)."""
    def number(literal: str) -> Any:
        as_float = float(literal)
        # kept as a number when the double says the same number ("1.0E20" is 1e20; "0.1" is 0.1)
        exact = math.isfinite(as_float) and Decimal(repr(as_float)) == Decimal(literal)
        return as_float if exact else literal

    def whole(literal: str) -> Any:
        n = int(literal)
        return n if -EXACT_INT <= n <= EXACT_INT else literal

    row = dict(json.loads(text, parse_float=number, parse_int=whole))
    for column, kind in types.items():
        if column in row and kind not in ("text", "varchar", "ascii"):
            # timestamps nested in collections, tuples and user types too
            row[column] = _iso_timestamps(row[column])
    return row


#: a timestamp as Cassandra's JSON writes it
_CQL_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d+)?Z$")


def _iso_timestamps(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(" ", "T", 1) if _CQL_TIMESTAMP.match(value) else value
    if isinstance(value, list):
        return [_iso_timestamps(v) for v in value]
    if isinstance(value, dict):
        return {_iso_timestamps(k): _iso_timestamps(v) for k, v in value.items()}
    return value


class CassandraTarget(Target):
    """Applies mutation payloads to one keyspace of one Cassandra cluster."""

    def __init__(self, cfg: CassandraTargetConfig, hosts: list[str], port: int, timeout_s: float) -> None:
        self.cfg = cfg
        self.hosts = hosts
        self.port = port
        self.timeout_s = timeout_s
        self.label = f"cassandra:{cfg.keyspace}"
        self._cluster: Cluster | None = None
        self._session: Session | None = None
        self._statements: dict[tuple[str, str, tuple[str, ...]], _Statement] = {}
        self._connect_lock = asyncio.Lock()
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        #: per table, the statement that reads whether a key has a row (walstream.index_check)
        self._selects: dict[str, _Statement] = {}
        self._json_selects: dict[str, PreparedStatement] = {}

    async def start(self) -> None:
        await self._ensure_session()

    async def _ensure_session(self) -> Session:
        if self._session is not None:
            return self._session
        async with self._connect_lock:
            if self._session is None:
                cluster = Cluster(
                    contact_points=self.hosts,
                    port=self.port,
                    protocol_version=self.cfg.protocol_version,
                    load_balancing_policy=DCAwareRoundRobinPolicy(),
                    connect_timeout=5,
                    control_connection_timeout=5,
                    # after an outage, find the node again within seconds, not minutes
                    reconnection_policy=ExponentialReconnectionPolicy(0.5, 5.0),
                )
                try:
                    session = await asyncio.to_thread(cluster.connect)
                except Exception as exc:
                    cluster.shutdown()
                    raise classify(exc) from exc
                # rows as plain tuples: the default makes a namedtuple class per result, which
                # cost an index check (one read per key) 15 % of its time
                session.row_factory = tuple_factory
                self._session = session
                self._cluster = cluster
            return self._session

    async def close(self) -> None:
        if self._cluster is not None:
            await asyncio.to_thread(self._cluster.shutdown)
        self._cluster = self._session = None

    async def _statement(self, table: str, op: str, cols: tuple[str, ...]) -> _Statement:
        cache_key = (table, op, cols)
        stmt = self._statements.get(cache_key)
        if stmt is not None:
            return stmt
        session = await self._ensure_session()
        ks = self.cfg.keyspace
        if op == "put":
            names = ", ".join(cols)
            marks = ", ".join("?" for _ in cols)
            cql = f"INSERT INTO {ks}.{table} ({names}) VALUES ({marks}) USING TIMESTAMP ?"
        else:
            where = " AND ".join(f"{c} = ?" for c in cols)
            cql = f"DELETE FROM {ks}.{table} USING TIMESTAMP ? WHERE {where}"
        prepared = await asyncio.to_thread(session.prepare, cql)
        prepared.consistency_level = getattr(ConsistencyLevel, self.cfg.consistency)
        stmt = _Statement(prepared, table)
        self._statements[cache_key] = stmt
        return stmt

    async def _bind(self, m: Mutation, ts_us: int) -> BoundStatement | TargetError:
        try:
            if m.op == "put":
                cols = tuple(m.key) + tuple(m.value or {})
                values = [*m.key.values(), *(m.value or {}).values(), ts_us]
            else:
                cols = tuple(m.key)
                values = [ts_us, *m.key.values()]
            stmt = await self._statement(m.table, m.op, cols)
            return stmt.bind(values)
        except TargetError as err:
            return err
        except Exception as exc:
            return classify(exc)

    async def _send(self, bound: BoundStatement) -> TargetError | None:
        try:
            async with self._in_flight:
                await self._execute(bound)
            return None
        except TargetError as err:
            return err
        except Exception as exc:
            return classify(exc)

    async def _execute(self, bound: Any) -> None:
        session = await self._ensure_session()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def settle(exc: BaseException | None) -> None:
            if fut.done():
                return
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)

        rf = session.execute_async(bound, timeout=self.timeout_s)
        # callbacks run on the driver's I/O thread: hop back onto our loop
        rf.add_callbacks(
            lambda _rows: loop.call_soon_threadsafe(settle, None),
            lambda exc: loop.call_soon_threadsafe(settle, exc),
        )
        await fut

    # -- reading a table (walstream.index_check) --------------------------------------------

    async def table_columns(self, table: str) -> TableColumns:
        """``table``'s key columns (partition key first) and the other columns whose write
        time CQL can read (``WRITETIME`` refuses non-frozen collections and counters).
        Raises :class:`PermanentError` when the table does not exist."""
        session = await self._ensure_session()
        meta = session.cluster.metadata.keyspaces.get(self.cfg.keyspace)
        tmeta = None if meta is None else meta.tables.get(table)
        if tmeta is None:
            # the driver learns of schema changes by events, a moment later: ask, to be sure
            try:
                await asyncio.to_thread(session.cluster.refresh_table_metadata, self.cfg.keyspace, table)
            except Exception:  # no such keyspace or table
                log.debug("refreshing %s.%s failed", self.cfg.keyspace, table, exc_info=True)
            meta = session.cluster.metadata.keyspaces.get(self.cfg.keyspace)
            tmeta = None if meta is None else meta.tables.get(table)
        if tmeta is None or meta is None:
            raise PermanentError(f"there is no table {self.cfg.keyspace}.{table}")
        keys = [c.name for c in tmeta.primary_key]
        partition = [c.name for c in tmeta.partition_key]
        timed: list[str] = []
        untimed: list[str] = []
        for name, col in tmeta.columns.items():
            if name in keys:
                continue
            kind = str(col.cql_type)
            # a non-frozen collection or user type has one write time per element (CQL gives
            # a list, or refuses); a counter has none
            multi = kind.split("<", 1)[0] in ("list", "set", "map") or kind in meta.user_types
            (untimed if kind == "counter" or multi else timed).append(name)
        types = {c.name: str(c.cql_type) for c in tmeta.columns.values()}
        static = [c.name for c in tmeta.columns.values() if getattr(c, "is_static", False)]
        return TableColumns(keys, partition, timed, untimed, types, static)

    async def scan(self, table: str, cols: TableColumns, page: int) -> AsyncIterator[list[ScannedRow]]:
        """Every row of ``table``: its key, each timed column's write time (None: no live
        cell) and its partition's token, ``page`` rows at a time in token order (the
        driver's paging: memory is one page, however large the table)."""
        session = await self._ensure_session()
        token = f"token({', '.join(cols.partition)})"
        timed = [f"writetime({c})" for c in cols.timed]
        cql = f"SELECT {', '.join([*cols.keys, token, *timed])} FROM {self.cfg.keyspace}.{table}"
        statement = SimpleStatement(cql, fetch_size=page,
                                    consistency_level=getattr(ConsistencyLevel, self.cfg.consistency))
        state: bytes | None = None
        while True:
            result = await self._paged(session, statement, state)
            rows = []
            n = len(cols.keys)
            for values in result.current_rows:
                key = dict(zip(cols.keys, values[:n], strict=True))
                # a write time that is not one number (a column of elements) is no write time
                times = zip(cols.timed, values[n + 1:], strict=True)
                written = {c: (t if isinstance(t, int) else None) for c, t in times}
                rows.append(ScannedRow(key, written, int(values[n])))
            if rows:
                yield rows
            state = result.paging_state
            if state is None:
                return

    async def _paged(self, session: Session, statement: SimpleStatement, state: bytes | None) -> Any:
        """One page of a scan, tried again on transient failures (:func:`read_retrying`)."""
        return await read_retrying(
            lambda: asyncio.to_thread(session.execute, statement, paging_state=state, timeout=self.timeout_s))

    async def existing(
        self, table: str, cols: TableColumns, keys: Sequence[dict[str, Any]]
    ) -> list[bool | TargetError]:
        """Whether ``table`` has a row for each of these keys (JSON values, coerced as a
        write's are); a key that cannot be one, or a failed read, is its error."""
        where = " AND ".join(f"{c} = ?" for c in cols.keys)
        stmt = self._selects.get(table)
        if stmt is None:
            session = await self._ensure_session()
            prepared = await asyncio.to_thread(
                session.prepare, f"SELECT {cols.keys[0]} FROM {self.cfg.keyspace}.{table} WHERE {where}")
            prepared.consistency_level = getattr(ConsistencyLevel, self.cfg.consistency)
            stmt = self._selects[table] = _Statement(prepared, table)

        async def one(key: dict[str, Any]) -> bool | TargetError:
            try:
                if set(key) != set(cols.keys):
                    return PermanentError(f"key columns {sorted(key)} are not {cols.keys}")
                bound = stmt.bind([key[c] for c in cols.keys])
                async with self._in_flight:
                    return bool(await self._rows(bound))
            except TargetError as err:
                return err
            except Exception as exc:
                return classify(exc)

        return list(await asyncio.gather(*(one(k) for k in keys)))

    async def values(
        self, table: str, cols: TableColumns, keys: Sequence[dict[str, Any]]
    ) -> list[dict[str, Any] | None]:
        """Each row's columns as JSON values (Cassandra's ``SELECT JSON``; None: no such row),
        for keys as :meth:`scan` gives them. Raises what the reads raise."""
        session = await self._ensure_session()
        cached = self._json_selects.get(table)
        if cached is None:
            where = " AND ".join(f"{c} = ?" for c in cols.keys)
            cql = f"SELECT JSON * FROM {self.cfg.keyspace}.{table} WHERE {where}"
            prepared: PreparedStatement = await asyncio.to_thread(session.prepare, cql)
            prepared.consistency_level = getattr(ConsistencyLevel, self.cfg.consistency)
            cached = self._json_selects[table] = prepared
        stmt: PreparedStatement = cached

        async def read(key: dict[str, Any]) -> list[Any]:
            async with self._in_flight:
                return await self._rows(stmt.bind([key[c] for c in cols.keys]))

        async def one(key: dict[str, Any]) -> dict[str, Any] | None:
            rows = await read_retrying(lambda: read(key))
            return json_values(rows[0][0], cols.types) if rows else None

        return list(await asyncio.gather(*(one(k) for k in keys)))

    async def _rows(self, bound: Any) -> list[Any]:
        session = await self._ensure_session()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Any]] = loop.create_future()

        def settle(rows: list[Any] | None, exc: BaseException | None) -> None:
            if fut.done():
                return
            if exc is None:
                fut.set_result(list(rows or []))
            else:
                fut.set_exception(exc)

        rf = session.execute_async(bound, timeout=self.timeout_s)
        rf.add_callbacks(
            lambda rows: loop.call_soon_threadsafe(settle, rows, None),
            lambda exc: loop.call_soon_threadsafe(settle, None, exc),
        )
        return await fut

    async def _apply_entry(self, entry: Entry) -> TargetError | None:
        try:
            payload = parse_mutations(entry.payload)
        except MutationError as exc:
            return PermanentError(str(exc))
        ts_us = entry.written_at_us
        # every value is read before anything is sent: an entry with a bad value writes nothing
        bound = await asyncio.gather(*(self._bind(m, ts_us) for m in payload.mutations))
        failed = combine([b for b in bound if isinstance(b, TargetError)])
        if failed is not None:
            return failed
        results = await asyncio.gather(*(self._send(b) for b in bound if isinstance(b, BoundStatement)))
        return combine(results)

    async def apply(self, entries: Sequence[Entry]) -> Outcomes:
        try:
            await self._ensure_session()
        except TargetError as err:
            return [err] * len(entries)
        return list(await asyncio.gather(*(self._apply_entry(e) for e in entries)))
