"""JSON → CQL coercion (walstream/targets/cql_types.py), for every CQL type, without Cassandra.

Each accepted value is coerced, then encoded by the driver's own serializer for the type and
decoded again: the assertion is on the value Cassandra would store, not on an intermediate.
Each refused value raises CqlValueError with a message naming the problem.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pytest
from cassandra.cqltypes import UserType, lookup_casstype
from cassandra.util import Duration, Time

from walstream.targets.cql_types import CqlValueError, coercer_for, cql_name

U1 = "123e4567-e89b-12d3-a456-426614174000"  # version 1
U4 = "9b2f0f4e-3b0a-4c35-9a4e-0c1f4e1b2a3c"  # version 4
PROTO = 5


def t(spec: str) -> Any:
    return lookup_casstype(spec)


ADDRESS = UserType.make_udt_class(
    "ks", "address", ("street", "zip", "geo", "tags"),
    (t("UTF8Type"), t("Int32Type"), t("TupleType(DoubleType, DoubleType)"), t("SetType(UTF8Type)")),
)
#: a UDT nesting another UDT and a map
PERSON = UserType.make_udt_class(
    "ks", "person", ("name", "home", "scores"),
    (t("UTF8Type"), ADDRESS, t("MapType(Int32Type, DoubleType)")),
)


def stored(cqltype: Any, value: Any) -> Any:
    """What Cassandra would hold: coerce, encode with the driver, decode."""
    coerced = coercer_for(cqltype)(value)
    return cqltype.from_binary(cqltype.to_binary(coerced, PROTO), PROTO)


GOOD: list[tuple[Any, Any, Any]] = [
    # text and friends
    (t("UTF8Type"), "héllo", "héllo"),
    (t("VarcharType"), "", ""),
    (t("AsciiType"), "plain", "plain"),
    (t("BooleanType"), True, True),
    (t("BooleanType"), "FALSE", False),
    # integers: numbers, integer strings, exact floats, at the edges of their ranges
    (t("ByteType"), -128, -128),
    (t("ByteType"), "127", 127),
    (t("ShortType"), 32767, 32767),
    (t("Int32Type"), "-2147483648", -(2**31)),
    (t("Int32Type"), 7.0, 7),
    # an integral float of any size is its literal's integer (the JSON reader refuses a literal
    # a double cannot hold, so the float's shortest repr is what the client wrote)
    (t("Int32Type"), 2147483647.0, 2**31 - 1),
    (t("LongType"), 1e18, 10**18),
    (t("IntegerType"), 1e23, 10**23),  # its double is 99999999999999991611392
    (t("IntegerType"), 1e300, 10**300),
    (t("DateType"), 1.7e12, datetime(2023, 11, 14, 22, 13, 20)),
    (t("LongType"), 2**63 - 1, 2**63 - 1),
    (t("LongType"), "-9223372036854775808", -(2**63)),
    (t("IntegerType"), 18446744073709551617, 18446744073709551617),
    (t("IntegerType"), "-123456789012345678901234567890", -123456789012345678901234567890),
    # floating point
    (t("DoubleType"), 1.5, 1.5),
    (t("DoubleType"), 3, 3.0),
    (t("DoubleType"), "-2.5e3", -2500.0),
    (t("FloatType"), 0.5, 0.5),
    (t("FloatType"), "Infinity", float("inf")),
    # decimal: exact, trailing zeros kept
    (t("DecimalType"), "12.50", Decimal("12.50")),
    (t("DecimalType"), 0.1, Decimal("0.1")),
    (t("DecimalType"), 42, Decimal(42)),
    (t("DecimalType"), "-1.5E+3", Decimal("-1.5E+3")),
    # identifiers
    (t("UUIDType"), U4, uuid.UUID(U4)),
    (t("UUIDType"), U4.upper(), uuid.UUID(U4)),
    (t("TimeUUIDType"), U1, uuid.UUID(U1)),
    # times
    (t("DateType"), "2024-03-01T12:30:45.123Z", datetime(2024, 3, 1, 12, 30, 45, 123000)),
    (t("DateType"), "2024-03-01T14:30:45+02:00", datetime(2024, 3, 1, 12, 30, 45)),
    (t("DateType"), "2024-03-01 12:30", datetime(2024, 3, 1, 12, 30)),  # no offset: UTC
    (t("DateType"), 1709296245123, datetime(2024, 3, 1, 12, 30, 45, 123000)),
    (t("DateType"), "1709296245123", datetime(2024, 3, 1, 12, 30, 45, 123000)),
    (t("SimpleDateType"), "2024-02-29", date(2024, 2, 29)),
    (t("TimeType"), "12:30:45.123456789", Time(45045123456789)),
    (t("TimeType"), "00:00:01", Time(10**9)),
    (t("TimeType"), 5, Time(5)),
    (t("DurationType"), "P1Y2M3DT4H5M6.5S", Duration(14, 3, (4 * 3600 + 5 * 60 + 6) * 10**9 + 500_000_000)),
    (t("DurationType"), "P2W", Duration(0, 14, 0)),
    (t("DurationType"), "-PT90M", Duration(0, 0, -90 * 60 * 10**9)),
    (t("DurationType"), "1y2mo3w4d5h6m7s8ms9us10ns",
     Duration(14, 25, ((5 * 60 + 6) * 60 + 7) * 10**9 + 8_000_000 + 9_000 + 10)),
    (t("DurationType"), "-3d", Duration(0, -3, 0)),
    (t("DurationType"), {"months": 1, "days": 2, "nanoseconds": 3}, Duration(1, 2, 3)),
    (t("DurationType"), {"days": 2}, Duration(0, 2, 0)),
    # addresses and bytes
    (t("InetAddressType"), "192.168.0.1", "192.168.0.1"),
    (t("InetAddressType"), "2001:DB8::1", "2001:db8::1"),
    (t("BytesType"), "aGVsbG8=", b"hello"),
    (t("BytesType"), "", b""),
    # collections, recursively
    (t("ListType(Int32Type)"), [1, "2", 3.0], [1, 2, 3]),
    (t("SetType(UUIDType)"), [U4, U1], {uuid.UUID(U4), uuid.UUID(U1)}),
    (t("MapType(Int32Type, UTF8Type)"), {"1": "one", "-2": "minus two"}, {1: "one", -2: "minus two"}),
    (t("MapType(UUIDType, DateType)"), {U4: 0}, {uuid.UUID(U4): datetime(1970, 1, 1)}),
    (t("MapType(DateType, BooleanType)"), {"2024-01-01T00:00:00Z": "true"}, {datetime(2024, 1, 1): True}),
    (t("MapType(SimpleDateType, DecimalType)"), {"2024-01-01": "1.10"}, {date(2024, 1, 1): Decimal("1.10")}),
    (t("MapType(BooleanType, DoubleType)"), {"true": 1}, {True: 1.0}),
    # a collection key given as JSON text in an object key, or as a pair
    (t("MapType(FrozenType(ListType(Int32Type)), UTF8Type)"), {"[1, 2]": "a"}, {(1, 2): "a"}),
    (t("MapType(FrozenType(ListType(Int32Type)), UTF8Type)"), [[[1, 2], "a"], [[3], "b"]], {(1, 2): "a", (3,): "b"}),
    (t("MapType(TupleType(Int32Type, UTF8Type), Int32Type)"), {'[1, "x"]': 5}, {(1, "x"): 5}),
    (t("ListType(FrozenType(MapType(UTF8Type, Int32Type)))"), [{"a": 1}, {"b": "2"}], [{"a": 1}, {"b": 2}]),
    (t("MapType(UTF8Type, FrozenType(SetType(Int32Type)))"), {"k": [3, 1]}, {"k": {1, 3}}),
    (t("TupleType(UTF8Type, Int32Type, BooleanType)"), ["a", "1", None], ("a", 1, None)),
    (t("FrozenType(TupleType(DateType, InetAddressType))"), ["1970-01-01T00:00:00Z", "::1"],
     (datetime(1970, 1, 1), "::1")),
    (t("VectorType(FloatType, 3)"), [1, 0.5, "-2"], [1.0, 0.5, -2.0]),
    # structures also as their JSON text, as Cassandra's JSON reads them (a frozen collection
    # in a mutation key, whose values are scalars, can only be given so)
    (t("FrozenType(ListType(Int32Type))"), "[1, 2]", [1, 2]),
    (t("VectorType(FloatType, 2)"), "[0.5, 1]", [0.5, 1.0]),
    (t("TupleType(UTF8Type, Int32Type)"), '["a", 1]', ("a", 1)),
    (t("VectorType(Int32Type, 2)"), [1, "2"], [1, 2]),
]


@pytest.mark.parametrize(("cqltype", "value", "expected"), GOOD, ids=[f"{cql_name(c)}={v!r}"[:60] for c, v, _ in GOOD])
def test_each_type_coerces_its_json_forms(cqltype: Any, value: Any, expected: Any) -> None:
    got = stored(cqltype, value)
    if isinstance(expected, dict):  # the driver decodes maps into its own ordered map
        assert [(tuple(k) if isinstance(k, list) else k, v) for k, v in got.items()] == list(expected.items())
    elif isinstance(expected, set):
        assert set(got) == expected
    elif isinstance(expected, tuple) and not isinstance(got, tuple):
        assert tuple(got) == expected
    else:
        assert got == expected


def test_udt_from_an_object_with_nested_types() -> None:
    # Given a UDT value as a JSON object (the "KeyError: 0" of issue 7), nesting a UDT, a
    # tuple, a set and a map with integer keys given as JSON strings; a field left out
    value = {"name": "Ada", "home": {"street": "Main", "zip": "12345", "geo": [1.5, -2], "tags": ["a", "b"]},
             "scores": {"1": 9.5, "2": "8"}}
    # When it is coerced and encoded
    got = stored(PERSON, value)
    # Then each field holds its typed value, and the missing one is null
    assert got.name == "Ada"
    assert got.home.street == "Main" and got.home.zip == 12345
    assert tuple(got.home.geo) == (1.5, -2.0) and set(got.home.tags) == {"a", "b"}
    assert dict(got.scores) == {1: 9.5, 2: 8.0}
    partial = stored(ADDRESS, {"zip": 1})
    assert partial.street is None and partial.zip == 1 and partial.geo is None
    assert stored(ADDRESS, '{"zip": "2"}').zip == 2  # as JSON text too


def test_frozen_and_reversed_are_their_inner_type() -> None:
    assert stored(t("FrozenType(ListType(Int32Type))"), ["1"]) == [1]
    assert stored(t("ReversedType(Int32Type)"), "4") == 4
    assert cql_name(t("FrozenType(MapType(Int32Type, UTF8Type))")) == "frozen<map<int, text>>"
    assert cql_name(t("VectorType(FloatType, 3)")) == "vector<float, 3>"
    assert cql_name(ADDRESS) == "address"


BAD: list[tuple[Any, Any, str]] = [
    (t("UTF8Type"), 5, "expected a string, got a number 5"),
    (t("UTF8Type"), "\ud800", "not valid UTF-8"),
    (t("AsciiType"), "é", "non-ASCII"),
    (t("BooleanType"), 1, "expected true, false"),
    (t("BooleanType"), "yes", "expected true, false"),
    (t("Int32Type"), "abc", "expected an integer, got a string 'abc'"),
    (t("Int32Type"), True, "expected an integer, got a boolean"),
    (t("Int32Type"), 1.5, "1.5 is not an exact integer"),
    (t("Int32Type"), 2**31, "out of range [-2147483648, 2147483647]"),
    (t("Int32Type"), " 1", "expected an integer"),
    (t("ByteType"), 128, "out of range [-128, 127]"),
    (t("ShortType"), "-32769", "out of range"),
    (t("LongType"), 2**63, "out of range"),
    (t("LongType"), 1.8446744073709552e19, "18446744073709552000 is out of range"),
    (t("LongType"), 1e19, "10000000000000000000 is out of range"),
    # the double is -2**63, but the literal's value (-9223372036854776000) is out of range
    (t("LongType"), -9.223372036854776e18, "-9223372036854776000 is out of range"),
    (t("Int32Type"), 2147483648.0, "out of range [-2147483648, 2147483647]"),
    (t("Int32Type"), 1e-7, "1e-07 is not an exact integer"),
    (t("LongType"), float("nan"), "is not an exact integer"),
    (t("IntegerType"), float("inf"), "is not an exact integer"),
    (t("IntegerType"), "1e3", "expected an integer"),
    (t("FloatType"), 1e39, "beyond the range of a float"),
    (t("DoubleType"), "1e400", "beyond the range of a double"),
    (t("DoubleType"), 10**400, "too large"),
    (t("DoubleType"), "inf", "expected a number"),
    (t("DoubleType"), [1], "expected a number"),
    (t("DecimalType"), "12,50", "'12,50' is not a decimal number"),
    (t("DecimalType"), "NaN", "not a decimal number"),
    (t("DecimalType"), float("nan"), "not a finite decimal"),
    (t("DecimalType"), "1e3000000000", "exponent beyond"),
    (t("DecimalType"), {"v": 1}, "expected a number or a numeric string, got an object"),
    (t("UUIDType"), "not-a-uuid", "'not-a-uuid' is not a UUID"),
    (t("UUIDType"), 42, "expected a UUID string"),
    (t("TimeUUIDType"), U4, "version-4 UUID; timeuuid needs version 1"),
    (t("DateType"), "yesterday", "not an ISO-8601 timestamp"),
    (t("DateType"), "2024-03-01T12:30:45.123456Z", "sub-millisecond"),
    (t("DateType"), 1.5, "not an exact integer"),
    (t("DateType"), 2**63, "out of the 64-bit range"),
    (t("SimpleDateType"), "2024-02-30", "not a calendar date"),
    (t("SimpleDateType"), "20240201", "ISO date string"),
    (t("SimpleDateType"), 19000, "ISO date string"),
    (t("TimeType"), "24:00:00", "not a time of day"),
    (t("TimeType"), "12:30", "HH:MM:SS"),
    (t("TimeType"), 86_400 * 10**9, "not a time of day"),
    (t("DurationType"), "P", "not a duration"),
    (t("DurationType"), "P1DT", "not a duration"),
    (t("DurationType"), "1h1h", "repeats the unit"),
    (t("DurationType"), "forever", "not a duration"),
    (t("DurationType"), {"months": 1, "days": -1}, "same sign"),
    (t("DurationType"), {"weeks": 1}, "unknown duration fields"),
    (t("DurationType"), f"P{2**31}M", "out of range"),
    (t("InetAddressType"), "300.1.1.1", "not an IPv4 or IPv6 address"),
    (t("InetAddressType"), "fe80::1%eth0", "scope id"),
    (t("BytesType"), "not base64!", "not standard base64"),
    (t("BytesType"), [1, 2], "expected a base64 string"),
    (t("CounterColumnType"), 1, "counter columns cannot be written"),
    (t("ListType(Int32Type)"), {"a": 1}, "expected an array for a list"),
    (t("ListType(Int32Type)"), [1, None], "at [1]: null inside a list"),
    (t("ListType(Int32Type)"), [1, "x"], "at [1]: expected an integer"),
    (t("SetType(UUIDType)"), [U4, "nope"], "at [1]: 'nope' is not a UUID"),
    (t("SetType(UUIDType)"), U4, "a string for a set<uuid> must be its JSON text"),
    (t("SetType(UUIDType)"), '"x"', "expected an array for a set, got a string 'x'"),
    (t("MapType(Int32Type, UTF8Type)"), {"1x": "a"}, "at [key '1x']: expected an integer"),
    (t("MapType(Int32Type, UTF8Type)"), {"1": "a", "01": "b"}, "duplicate map key"),
    (t("MapType(Int32Type, UTF8Type)"), {"1": None}, "null inside a map"),
    (t("MapType(Int32Type, UTF8Type)"), {"1": 2}, "at ['1']: expected a string"),
    (t("MapType(Int32Type, UTF8Type)"), [1, 2], "expected an object"),
    (t("MapType(FrozenType(ListType(Int32Type)), UTF8Type)"), {"[1,": "a"},
     "at [key '[1,']: a string for a list<int> must be its JSON text"),
    (t("ListType(FrozenType(MapType(UTF8Type, Int32Type)))"), [{"a": "x"}], "at [0]['a']: expected an integer"),
    (t("TupleType(UTF8Type, Int32Type)"), ["a"], "an array of 2 elements for a tuple"),
    (t("TupleType(UTF8Type, Int32Type)"), ["a", "b"], "at [1]: expected an integer"),
    (t("VectorType(FloatType, 3)"), [1, 2], "exactly 3 elements"),
    (t("VectorType(FloatType, 3)"), [1, 2, None], "at [2]: null inside a vector"),
    (t("VectorType(FloatType, 3)"), [1, 2, "x"], "at [2]: expected a number"),
    (ADDRESS, ["Main", 1], "expected an object for the type address"),
    (ADDRESS, {"street": "Main", "city": "X"}, "unknown field(s) ['city']"),
    (PERSON, {"home": {"zip": "x"}}, "at .home.zip: expected an integer"),
    (PERSON, {"scores": {"a": 1}}, "at .scores[key 'a']: expected an integer"),
]


@pytest.mark.parametrize(("cqltype", "value", "fragment"), BAD, ids=[f"{cql_name(c)}={v!r}"[:60] for c, v, _ in BAD])
def test_each_type_refuses_what_it_cannot_hold(cqltype: Any, value: Any, fragment: str) -> None:
    with pytest.raises(CqlValueError) as info:
        coercer_for(cqltype)(value)
    assert fragment in str(info.value)


def test_error_messages_quote_values_briefly() -> None:
    with pytest.raises(CqlValueError) as info:
        coercer_for(t("DecimalType"))("9" * 10_000 + ",")
    assert len(str(info.value)) < 200
