"""The Cassandra target: mutation payloads applied with ``USING TIMESTAMP <write time>``.

Every put is ``INSERT INTO <keyspace>.<table> (...) VALUES (...) USING TIMESTAMP t`` and every
delete ``DELETE FROM <keyspace>.<table> USING TIMESTAMP t WHERE ...``, where ``t`` is the
entry's original write time in microseconds. Cassandra keeps, per cell, the write with the
greatest timestamp, so replays, duplicates and out-of-order deliveries converge to the last
write. Mutations are sent concurrently (no CQL batches: an unlogged batch across partitions
only moves the fan-out to the coordinator).

The keyspace and tables are the user's (walstream never creates schema). Values are coerced
from JSON by column type where JSON has no native form: ``uuid``/``timeuuid`` from strings,
``timestamp`` from ISO-8601 strings or epoch milliseconds, ``date`` from ISO dates,
``decimal`` from numbers or strings, ``blob`` from base64 strings.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

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
from cassandra.query import PreparedStatement

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
    TypeError,
    ValueError,
    KeyError,
    OverflowError,
)


def classify(exc: BaseException) -> TargetError:
    """Map a driver exception to a typed target error (unknown errors count as transient,
    so they are retried rather than dead-lettered on first sight)."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, _PERMANENT) and not isinstance(exc, _TRANSIENT):
        return PermanentError(text)
    if isinstance(exc, _DOWN):
        return TargetDownError(text)
    return TransientError(text)


def _to_timestamp(v: Any) -> Any:
    if isinstance(v, str):
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
        return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return datetime.fromtimestamp(v / 1000, tz=UTC)
    return v


_COERCE: dict[str, Callable[[Any], Any]] = {
    "uuid": lambda v: uuid.UUID(v) if isinstance(v, str) else v,
    "timeuuid": lambda v: uuid.UUID(v) if isinstance(v, str) else v,
    "timestamp": _to_timestamp,
    "date": lambda v: date.fromisoformat(v) if isinstance(v, str) else v,
    "decimal": lambda v: Decimal(str(v)) if isinstance(v, (int, float, str)) else v,
    "blob": lambda v: base64.b64decode(v, validate=True) if isinstance(v, str) else v,
}


class _Statement:
    """A prepared statement plus the per-column coercions its bind values need."""

    def __init__(self, prepared: PreparedStatement) -> None:
        self.prepared = prepared
        coercers: list[Callable[[Any], Any] | None] = []
        for col in prepared.column_metadata:
            coercers.append(_COERCE.get(col.type.typename))
        self.coercers = coercers

    def bind(self, values: list[Any]) -> Any:
        out = [c(v) if (c is not None and v is not None) else v for c, v in zip(self.coercers, values, strict=False)]
        return self.prepared.bind(out)


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
                    self._session = await asyncio.to_thread(cluster.connect)
                except Exception as exc:
                    cluster.shutdown()
                    raise classify(exc) from exc
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
        stmt = _Statement(prepared)
        self._statements[cache_key] = stmt
        return stmt

    async def _apply_mutation(self, m: Mutation, ts_us: int) -> TargetError | None:
        try:
            if m.op == "put":
                cols = tuple(m.key) + tuple(m.value or {})
                values = [*m.key.values(), *(m.value or {}).values(), ts_us]
            else:
                cols = tuple(m.key)
                values = [ts_us, *m.key.values()]
            stmt = await self._statement(m.table, m.op, cols)
            bound = stmt.bind(values)
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

    async def _apply_entry(self, entry: Entry) -> TargetError | None:
        try:
            payload = parse_mutations(entry.payload)
        except MutationError as exc:
            return PermanentError(str(exc))
        results = await asyncio.gather(
            *(self._apply_mutation(m, entry.written_at_us) for m in payload.mutations)
        )
        return combine(results)

    async def apply(self, entries: Sequence[Entry]) -> Outcomes:
        try:
            await self._ensure_session()
        except TargetError as err:
            return [err] * len(entries)
        return list(await asyncio.gather(*(self._apply_entry(e) for e in entries)))
