"""How the Cassandra target classifies failures (walstream/targets/cassandra.py), without Cassandra.

A value that can never be written is permanent (dead-lettered on its first attempt, naming the
column, its CQL type and the problem), whatever exception class the failure has; a failure of
the cluster stays transient. Statements are real driver PreparedStatements built offline, so
binding runs the driver's own serializers.
"""

from __future__ import annotations

import binascii
import decimal
import io
import struct
from typing import Any

import pytest
from cassandra import (
    ConsistencyLevel,
    InvalidRequest,
    OperationTimedOut,
    ReadTimeout,
    Unavailable,
    WriteTimeout,
)
from cassandra.cluster import NoHostAvailable
from cassandra.connection import ConnectionException
from cassandra.cqltypes import lookup_casstype
from cassandra.protocol import ColumnMetadata, OverloadedErrorMessage, ServerError
from cassandra.query import PreparedStatement

from walstream.entry import Entry
from walstream.namespaces.model import CassandraTargetConfig
from walstream.targets.base import PermanentError, TargetDownError, TransientError
from walstream.targets.cassandra import CassandraTarget, _Statement, classify
from walstream.targets.cql_types import CqlValueError

PERMANENT: list[BaseException] = [
    InvalidRequest("Undefined column name x"),
    CqlValueError("'12,50' is not a decimal number"),
    decimal.InvalidOperation([decimal.ConversionSyntax]),  # an ArithmeticError, not a ValueError
    struct.error("'i' format requires -2147483648 <= number <= 2147483647"),
    OverflowError("float too large to pack with f format"),
    UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
    binascii.Error("Incorrect padding"),
    KeyError(0),
    IndexError("tuple index out of range"),
    TypeError("Received an argument of invalid type"),
    ValueError("can't interpret 'x' as an inet address"),
]
TRANSIENT: list[BaseException] = [
    Unavailable("not enough replicas", consistency=ConsistencyLevel.QUORUM, required_replicas=2, alive_replicas=1),
    WriteTimeout("write timed out", consistency=ConsistencyLevel.QUORUM, write_type=0),
    ReadTimeout("read timed out", consistency=ConsistencyLevel.QUORUM),
    OverloadedErrorMessage(0x1001, "overloaded", {}),
    ServerError(0x0000, "server error", {}),
    RuntimeError("something nobody foresaw"),  # unknown: retried, not dead-lettered on sight
]
DOWN: list[BaseException] = [
    NoHostAvailable("no host", {}),
    ConnectionException("connection reset"),
    OperationTimedOut("timed out"),
    TimeoutError(),  # asyncio.TimeoutError
    ConnectionRefusedError(111, "refused"),
    io.UnsupportedOperation("both an OSError and a ValueError: the network kind wins"),
]


@pytest.mark.parametrize("exc", PERMANENT, ids=lambda e: type(e).__name__)
def test_value_failures_are_permanent(exc: BaseException) -> None:
    err = classify(exc)
    assert type(err) is PermanentError
    assert type(exc).__name__ in err.message


@pytest.mark.parametrize("exc", TRANSIENT, ids=lambda e: type(e).__name__)
def test_cluster_failures_are_transient(exc: BaseException) -> None:
    assert type(classify(exc)) is TransientError


@pytest.mark.parametrize("exc", DOWN, ids=lambda e: type(e).__name__)
def test_an_unanswering_cluster_is_down(exc: BaseException) -> None:
    assert type(classify(exc)) is TargetDownError


def prepared(table: str, columns: list[tuple[str, str]], delete: bool = False) -> PreparedStatement:
    """A driver PreparedStatement as ``session.prepare`` would return for a put (or a delete)."""
    meta = [ColumnMetadata("ks", table, name, lookup_casstype(spec)) for name, spec in columns]
    stamp = ColumnMetadata("ks", table, "[timestamp]", lookup_casstype("LongType"))
    meta = [stamp, *meta] if delete else [*meta, stamp]
    return PreparedStatement(meta, b"id", [0], "INSERT ...", "ks", 5, [], None)


ORDERS = [("id", "UUIDType"), ("price", "DecimalType"), ("qty", "Int32Type"), ("ratio", "FloatType"),
          ("tags", "MapType(Int32Type, UTF8Type)"), ("blob", "CustomType")]
U4 = "9b2f0f4e-3b0a-4c35-9a4e-0c1f4e1b2a3c"


@pytest.mark.parametrize(("column", "value", "fragment"), [
    ("price", "12,50", "column orders.price (decimal): '12,50' is not a decimal number"),
    ("qty", "abc", "column orders.qty (int): expected an integer, got a string 'abc'"),
    ("qty", 2**40, "column orders.qty (int): 1099511627776 is out of range"),
    ("id", "not-a-uuid", "column orders.id (uuid): 'not-a-uuid' is not a UUID"),
    ("tags", [1, 2], "column orders.tags (map<int, text>): expected an object"),
    ("tags", {"x": "a"}, "column orders.tags (map<int, text>): at [key 'x']: expected an integer"),
    ("ratio", 1e39, "column orders.ratio (float):"),
    # a custom type takes the base64 of its serialized bytes
    ("blob", "text for a custom type", "column orders.blob ('CustomType'): 'text for a custom type' is not standard"),
])
def test_a_bad_value_is_permanent_and_names_column_type_and_problem(column: str, value: Any, fragment: str) -> None:
    stmt = _Statement(prepared("orders", ORDERS), "orders")
    row: dict[str, Any] = {"id": U4, "price": "1.5", "qty": 1, "ratio": 0.5, "tags": {"1": "a"}, "blob": None}
    row[column] = value
    with pytest.raises(PermanentError) as info:
        stmt.bind([*row.values(), 1])
    assert fragment in info.value.message


def test_good_values_bind_to_the_drivers_encoding() -> None:
    stmt = _Statement(prepared("orders", ORDERS), "orders")
    bound = stmt.bind([U4, "12.50", "7", 0.5, {"1": "a"}, None, 1_700_000_000_000_000])
    cols = [c.type for c in bound.prepared_statement.column_metadata]
    decoded = [None if b is None else t.from_binary(b, 5) for t, b in zip(cols, bound.values, strict=True)]
    assert str(decoded[1]) == "12.50" and decoded[2] == 7 and dict(decoded[4]) == {1: "a"}
    assert decoded[-1] == 1_700_000_000_000_000


class RecordingSession:
    """Stands in for a connected driver session: records what would be sent."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def execute_async(self, bound: Any, timeout: float) -> Any:  # pragma: no cover - must not run
        self.sent.append(bound)
        raise AssertionError("nothing may be sent for an entry with a bad value")


async def test_an_entry_with_one_bad_value_writes_nothing_and_is_permanent() -> None:
    # Given a target with prepared statements for two tables
    target = CassandraTarget(CassandraTargetConfig(type="cassandra", keyspace="ks"), ["127.0.0.1"], 9042, 5.0)
    session = RecordingSession()
    target._session = session  # type: ignore[assignment]
    target._statements[("a", "put", ("id", "n"))] = _Statement(
        prepared("a", [("id", "UTF8Type"), ("n", "Int32Type")]), "a")
    target._statements[("b", "put", ("id", "price"))] = _Statement(
        prepared("b", [("id", "UTF8Type"), ("price", "DecimalType")]), "b")
    # When an entry puts a good row and a row with a bad decimal
    entry = Entry(id="e", namespace="ns", key="k", written_at_us=1, payload={"mutations": [
        {"table": "a", "op": "put", "key": {"id": "1"}, "value": {"n": 5}},
        {"table": "b", "op": "put", "key": {"id": "1"}, "value": {"price": "12,50"}},
    ]})
    [outcome] = await target.apply([entry])
    # Then the entry fails permanently, naming the column, and not even the good row was sent
    assert isinstance(outcome, PermanentError)
    assert "column b.price (decimal): '12,50' is not a decimal number" in outcome.message
    assert session.sent == []


def raw_decimal(value: Any) -> Any:
    return decimal.Decimal(value)  # raises decimal.InvalidOperation, an ArithmeticError, for "12,50"


@pytest.mark.parametrize(("coerce", "column", "value", "fragment"), [
    # what the old coercion did: an ArithmeticError escaping the coercer
    (raw_decimal, "price", "12,50", "column orders.price (decimal): '12,50': InvalidOperation"),
    # a value no coercer checked, refused by the driver's serializer (struct.error → TypeError)
    (lambda v: v, "qty", 2**40, "column orders.qty (int): cannot encode 1099511627776"),
    # the driver's UTF-8 serializer raising AttributeError for a non-string
    (lambda v: v, "tags", {1: 5}, "column orders.tags (map<int, text>): cannot encode {1: 5}: AttributeError"),
])
def test_failures_the_coercion_did_not_foresee_are_permanent_too(
    coerce: Any, column: str, value: Any, fragment: str,
) -> None:
    # Given a statement whose coercion for one column lets a bad value through
    stmt = _Statement(prepared("orders", ORDERS), "orders")
    i = [name for name, _ in ORDERS].index(column)
    name, cql, _ = stmt.columns[i]
    stmt.columns[i] = (name, cql, coerce)
    row: list[Any] = [U4, "1.5", 1, 0.5, {"1": "a"}, None, 1]
    row[i] = value
    # When it is bound, Then the failure is permanent and names the column
    with pytest.raises(PermanentError) as info:
        stmt.bind(row)
    assert fragment in info.value.message
