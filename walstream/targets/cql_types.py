"""JSON values → values the Cassandra driver serializes, by CQL column type.

A mutation's values arrive as JSON. :func:`coercer_for` builds, once per prepared
statement column, a function that turns the JSON form of a value into what the driver's
serializer for that column's type expects, recursively through collections, tuples, UDTs
and vectors. It raises :class:`CqlValueError` for a value that can never be written (it
names the problem and where inside the value it is); the Cassandra target reports that as
a permanent failure, so the entry is dead-lettered on its first attempt instead of being
retried and holding its key. Nothing is changed silently: a value is accepted only if its
meaning is exact in the column's type (the only rounding left is the one ``float``/
``double`` columns imply).

Accepted JSON forms (``null`` writes a null at the top level and inside tuples and UDTs;
collections and vectors cannot hold nulls — Cassandra refuses them):

=========================== =============================================================
CQL type                    JSON forms
=========================== =============================================================
text, varchar               string (valid UTF-8)
ascii                       string of ASCII characters
boolean                     true/false, or the strings "true"/"false" (any case)
tinyint, smallint, int,     integer, integer string ("-42"), or an integral float (1e18,
bigint, varint              the value of its literal); range-checked (8/16/32/64 bits,
                            varint unbounded)
float, double               number, numeric string, "NaN", "Infinity", "-Infinity";
                            a float beyond ±3.4e38 is refused
decimal                     number or numeric string ("12.50"; not "12,50", NaN, Infinity)
uuid                        UUID string (any form Python's ``uuid.UUID`` reads)
timeuuid                    UUID string of a version-1 UUID
timestamp                   ISO-8601 string (no offset = UTC) with at most millisecond
                            precision, or integer epoch milliseconds (also as a digit
                            string, as Cassandra reads it)
date                        ISO date string "YYYY-MM-DD" (years 1-9999)
time                        "HH:MM:SS[.fffffffff]" or integer nanoseconds since midnight
duration                    ISO-8601 duration ("P1Y2M3DT4H5M6.5S", "P2W", "-PT90M"),
                            Cassandra's form ("1y2mo3w4d5h6m7s8ms9us10ns"), or
                            {"months": m, "days": d, "nanoseconds": n} (same signs)
inet                        IPv4 or IPv6 address string (no scope id)
blob                        standard base64 string
list<T>, set<T>             array of T
map<K, V>                   object (keys are JSON strings: each is read as a K — "42" for
                            an int, a UUID string, JSON text for a collection/tuple/UDT
                            key), or an array of [key, value] pairs with keys as JSON values
tuple<...>                  array with exactly one element per component
UDT                         object of field → value; missing fields are null, unknown
                            fields are refused
vector<T, n>                array of exactly n T (Cassandra 5)
(each of the six above)     also a string of its JSON text, as Cassandra's JSON support
                            reads it (how a frozen collection in a mutation key, which
                            must be a scalar, is given)
frozen<T>                   as T
counter                     refused: counters cannot be written with ``USING TIMESTAMP``
                            (Cassandra refuses INSERT into counter tables and custom
                            timestamps on counter updates), which walstream relies on
other (custom) types        standard base64 string of the value's serialized bytes
=========================== =============================================================
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import re
import struct
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, DecimalException
from typing import Any

import orjson
from cassandra.cqltypes import (
    FrozenType,
    ListType,
    MapType,
    ReversedType,
    SetType,
    TupleType,
    UserType,
    VectorType,
)
from cassandra.util import Duration

Coercer = Callable[[Any], Any]

#: longest excerpt of a bad value quoted in an error message (DLQ records stay small)
_QUOTE_CHARS = 60

_INT_BITS = {"tinyint": 8, "smallint": 16, "int": 32, "bigint": 64}
_INT_RE = re.compile(r"[+-]?\d+")
_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_FLOAT_WORDS = {"nan": math.nan, "infinity": math.inf, "+infinity": math.inf, "-infinity": -math.inf}
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_TIME_RE = re.compile(r"(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?")
_ISO_DURATION_RE = re.compile(
    r"(?P<sign>-)?P(?:(?P<y>\d+)Y)?(?:(?P<mo>\d+)M)?(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?:(?P<h>\d+)H)?(?:(?P<mi>\d+)M)?(?:(?P<s>\d+)(?:[.,](?P<f>\d{1,9}))?S)?)?"
)
_CQL_DURATION_RE = re.compile(r"-?(?:\d+(?:y|mo|w|d|h|ms|us|µs|ns|m|s))+", re.IGNORECASE)
_CQL_DURATION_PART = re.compile(r"(\d+)(y|mo|w|d|h|ms|us|µs|ns|m|s)", re.IGNORECASE)
_NS = {"h": 3_600_000_000_000, "m": 60_000_000_000, "s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "µs": 1_000,
       "ns": 1}
_DAY_NS = 86_400 * 10**9
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


class CqlValueError(ValueError):
    """A JSON value that can never be written to its column, whatever is retried.

    ``problem`` says what is wrong; ``path`` where inside the column's value (``[2]``,
    ``.zip``, ``[key '7']``), empty for the value itself.
    """

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path = ""

    def inside(self, step: str) -> CqlValueError:
        """Prefix the location of this error with one step of the enclosing value."""
        self.path = step + self.path
        return self

    def __str__(self) -> str:
        return f"at {self.path}: {self.problem}" if self.path else self.problem


def quote(value: Any) -> str:
    """A short, bounded rendering of a value for error messages."""
    text = repr(value)
    return text if len(text) <= _QUOTE_CHARS else text[: _QUOTE_CHARS - 3] + "..."


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _expected(what: str, value: Any) -> CqlValueError:
    return CqlValueError(f"expected {what}, got {_kind(value)} {quote(value)}")


def cql_name(cqltype: Any) -> str:
    """The CQL spelling of a driver type class, e.g. ``map<int, text>``, ``vector<float, 3>``."""
    if issubclass(cqltype, UserType):
        return str(cqltype.typename)
    if issubclass(cqltype, VectorType):
        return f"vector<{cql_name(cqltype.subtype)}, {cqltype.vector_size}>"
    if issubclass(cqltype, ReversedType):
        return cql_name(cqltype.subtypes[0])
    subtypes = getattr(cqltype, "subtypes", ())
    if subtypes:
        return f"{cqltype.typename}<{', '.join(cql_name(s) for s in subtypes)}>"
    return str(cqltype.typename)


# --- scalars -------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise _expected("a string", value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise CqlValueError(f"string is not valid UTF-8 (a lone surrogate?): {quote(value)}") from None
    return value


def _ascii(value: Any) -> str:
    if not isinstance(value, str):
        raise _expected("a string", value)
    if not value.isascii():
        raise CqlValueError(f"string has non-ASCII characters: {quote(value)}")
    return value


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _expected('true, false, "true" or "false"', value)


def _integer(value: Any) -> int:
    """An exact integer from an int, an integer string or an integral float."""
    if isinstance(value, bool):
        raise _expected("an integer", value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        # Any size: the JSON reader (walstream.strict_json) admits a float only when its
        # literal round-trips, so the float's shortest repr is the number the client wrote
        # (1e18, or 1e23 whose double is 99999999999999991611392); its range is the column's.
        if value.is_integer():  # false for nan and ±inf
            return int(Decimal(repr(value)))
        raise CqlValueError(f"{quote(value)} is not an exact integer")
    if isinstance(value, str) and _INT_RE.fullmatch(value):
        try:
            return int(value)
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            raise CqlValueError(f"integer string too long ({len(value)} digits)") from None
    raise _expected("an integer", value)


def _bounded_int(bits: int) -> Coercer:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def coerce(value: Any) -> int:
        n = _integer(value)
        if not low <= n <= high:
            raise CqlValueError(f"{n} is out of range [{low}, {high}]")
        return n

    return coerce


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise _expected("a number", value)
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:
            raise CqlValueError(f"{quote(value)} is too large for a floating-point column") from None
    if isinstance(value, str):
        word = _FLOAT_WORDS.get(value.lower())
        if word is not None:
            return word
        if _NUMBER_RE.fullmatch(value):
            return float(value)  # a decimal string beyond ±1.8e308 becomes ±inf: refused below
    raise _expected('a number, a numeric string, "NaN" or "Infinity"', value)


def _double(value: Any) -> float:
    f = _to_float(value)
    if math.isinf(f) and not (isinstance(value, str) and value.lower() in _FLOAT_WORDS):
        raise CqlValueError(f"{quote(value)} is beyond the range of a double")
    return f


def _single(value: Any) -> float:
    f = _double(value)
    try:
        struct.pack(">f", f)  # rounds to single precision; refuses what rounds to infinity
    except OverflowError:
        raise CqlValueError(f"{quote(value)} is beyond the range of a float (±3.4e38)") from None
    return f


def _decimal(value: Any) -> Decimal:
    if isinstance(value, bool):
        raise _expected("a number", value)
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CqlValueError(f"{quote(value)} is not a finite decimal")
        return Decimal(repr(value))  # the shortest repr: 0.1 stays 0.1
    if isinstance(value, str):
        if not _NUMBER_RE.fullmatch(value):
            raise CqlValueError(f"{quote(value)} is not a decimal number (digits, one '.', optional exponent)")
        try:
            dec = Decimal(value)
        except DecimalException:  # not a ValueError: decimal errors are ArithmeticErrors
            raise CqlValueError(f"{quote(value)} is not a decimal number") from None
        exponent = dec.as_tuple().exponent
        assert isinstance(exponent, int)  # finite: the regex admits no NaN/Infinity
        if not _INT32[0] <= -exponent <= _INT32[1]:
            raise CqlValueError(f"{quote(value)}: exponent beyond Cassandra's 32-bit scale")
        return dec
    raise _expected("a number or a numeric string", value)


def _uuid(value: Any) -> uuid.UUID:
    if not isinstance(value, str):
        raise _expected("a UUID string", value)
    try:
        return uuid.UUID(value)
    except ValueError:
        raise CqlValueError(f"{quote(value)} is not a UUID") from None


def _timeuuid(value: Any) -> uuid.UUID:
    u = _uuid(value)
    if u.version != 1:
        raise CqlValueError(f"{quote(value)} is a version-{u.version} UUID; timeuuid needs version 1")
    return u


def _timestamp(value: Any) -> int:
    """Epoch milliseconds, exactly (the driver's own datetime path goes through a float)."""
    if isinstance(value, str) and _INT_RE.fullmatch(value):
        value = int(value)  # Cassandra reads a digit string as epoch milliseconds, so do we
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        ms = _integer(value)
        if not _INT64[0] <= ms <= _INT64[1]:
            raise CqlValueError(f"{ms} epoch milliseconds is out of the 64-bit range")
        return ms
    if not isinstance(value, str):
        raise _expected("an ISO-8601 string or epoch milliseconds", value)
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise CqlValueError(f"{quote(value)} is not an ISO-8601 timestamp") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    if dt.microsecond % 1000:
        raise CqlValueError(f"{quote(value)} has sub-millisecond digits; a timestamp keeps milliseconds")
    return (dt - _EPOCH) // timedelta(milliseconds=1)


def _date(value: Any) -> date:
    if not isinstance(value, str) or not _DATE_RE.fullmatch(value):
        raise _expected('an ISO date string "YYYY-MM-DD"', value)
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CqlValueError(f"{quote(value)} is not a calendar date") from None


def _time(value: Any) -> int:
    """Nanoseconds since midnight."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < _DAY_NS:
            raise CqlValueError(f"{value} nanoseconds is not a time of day [0, {_DAY_NS})")
        return value
    m = _TIME_RE.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise _expected('"HH:MM:SS[.fffffffff]" or nanoseconds since midnight', value)
    h, mi, s = int(m[1]), int(m[2]), int(m[3])
    if h > 23 or mi > 59 or s > 59:
        raise CqlValueError(f"{quote(value)} is not a time of day")
    return ((h * 60 + mi) * 60 + s) * 10**9 + int((m[4] or "").ljust(9, "0"))


def _duration_parts(months: int, days: int, nanos: int, value: Any) -> Duration:
    if not (months <= 0 and days <= 0 and nanos <= 0) and not (months >= 0 and days >= 0 and nanos >= 0):
        raise CqlValueError(f"{quote(value)}: months, days and nanoseconds must have the same sign")
    if not (_INT32[0] <= months <= _INT32[1] and _INT32[0] <= days <= _INT32[1] and _INT64[0] <= nanos <= _INT64[1]):
        raise CqlValueError(f"{quote(value)} is out of range (32-bit months and days, 64-bit nanoseconds)")
    return Duration(months, days, nanos)


def _duration(value: Any) -> Duration:
    if isinstance(value, dict):
        unknown = set(value) - {"months", "days", "nanoseconds"}
        if unknown:
            raise CqlValueError(f"unknown duration fields {sorted(unknown)} (months, days, nanoseconds)")
        parts: dict[str, int] = {}
        for name in ("months", "days", "nanoseconds"):
            part = value.get(name, 0)
            if isinstance(part, bool) or not isinstance(part, int):
                raise CqlValueError(f"duration {name} must be an integer, got {quote(part)}")
            parts[name] = part
        return _duration_parts(parts["months"], parts["days"], parts["nanoseconds"], value)
    if not isinstance(value, str):
        raise _expected("an ISO-8601 duration string, a CQL duration string or an object", value)
    m = _ISO_DURATION_RE.fullmatch(value)
    if m is not None:
        n = {k: int(m[k] or 0) for k in ("y", "mo", "w", "d", "h", "mi", "s")}
        has_date = any(m[k] for k in ("y", "mo", "w", "d"))
        has_time = any(m[k] for k in ("h", "mi", "s"))
        # "P", "PT" and "P1DT" match the pattern but are not durations
        if (has_date or has_time) and ("T" not in value or has_time):
            sign = -1 if m["sign"] else 1
            months = n["y"] * 12 + n["mo"]
            days = n["w"] * 7 + n["d"]
            nanos = (n["h"] * 3600 + n["mi"] * 60 + n["s"]) * 10**9 + int((m["f"] or "").ljust(9, "0"))
            return _duration_parts(sign * months, sign * days, sign * nanos, value)
    if _CQL_DURATION_RE.fullmatch(value):
        sign = -1 if value.startswith("-") else 1
        months = days = nanos = 0
        seen: set[str] = set()
        for amount_text, unit_text in _CQL_DURATION_PART.findall(value):
            unit = unit_text.lower()
            if unit in seen:
                raise CqlValueError(f"{quote(value)} repeats the unit {unit!r}")
            seen.add(unit)
            amount = int(amount_text)
            if unit == "y":
                months += amount * 12
            elif unit == "mo":
                months += amount
            elif unit == "w":
                days += amount * 7
            elif unit == "d":
                days += amount
            else:
                nanos += amount * _NS[unit]
        return _duration_parts(sign * months, sign * days, sign * nanos, value)
    raise CqlValueError(f"{quote(value)} is not a duration (ISO-8601 like 'P1DT2H' or CQL like '1d2h')")


def _inet(value: Any) -> str:
    if not isinstance(value, str):
        raise _expected("an IP address string", value)
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise CqlValueError(f"{quote(value)} is not an IPv4 or IPv6 address") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id:
        raise CqlValueError(f"{quote(value)} has a scope id, which inet cannot store")
    return str(addr)


def _blob(value: Any) -> bytes:
    if not isinstance(value, str):
        raise _expected("a base64 string", value)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise CqlValueError(f"{quote(value)} is not standard base64") from None


def _counter(value: Any) -> Any:
    raise CqlValueError(
        "counter columns cannot be written by walstream: it writes every value USING TIMESTAMP, "
        "which Cassandra refuses for counters"
    )


_SCALARS: dict[str, Coercer] = {
    "text": _text,
    "varchar": _text,
    "ascii": _ascii,
    "boolean": _boolean,
    **{name: _bounded_int(bits) for name, bits in _INT_BITS.items()},
    "varint": _integer,
    "float": _single,
    "double": _double,
    "decimal": _decimal,
    "uuid": _uuid,
    "timeuuid": _timeuuid,
    "timestamp": _timestamp,
    "date": _date,
    "time": _time,
    "duration": _duration,
    "inet": _inet,
    "blob": _blob,
    "counter": _counter,
}


# --- structures ----------------------------------------------------------------------------


class MapPairs(list[tuple[Any, Any]]):
    """A coerced map as ``(key, value)`` pairs: keys may be unhashable (frozen collections),
    and the driver's map serializer needs only ``len`` and ``items``."""

    def items(self) -> list[tuple[Any, Any]]:
        return list(self)


def _elements(sub: Coercer, what: str) -> Coercer:
    def coerce(value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise _expected(f"an array for a {what}", value)
        out = []
        for i, item in enumerate(value):
            if item is None:
                raise CqlValueError(f"null inside a {what}").inside(f"[{i}]")
            try:
                out.append(sub(item))
            except CqlValueError as err:
                raise err.inside(f"[{i}]") from None
        return out

    return coerce


def _map(cqltype: Any) -> Coercer:
    key_type, value_type = cqltype.subtypes
    # a JSON object's keys are strings: every coercion reads its type's string form (numbers,
    # booleans, UUIDs, times; JSON text for a collection, tuple or UDT)
    key_of = coercer_for(key_type)
    value_of = coercer_for(value_type)

    def coerce(value: Any) -> MapPairs:
        if isinstance(value, dict):
            raw = list(value.items())
        elif isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 for p in value):
            raw = [(p[0], p[1]) for p in value]
        else:
            raise _expected("an object (or an array of [key, value] pairs) for a map", value)
        out = MapPairs()
        seen: set[bytes] = set()
        for k, v in raw:
            step = f"[key {quote(k)}]"
            if k is None:
                raise CqlValueError("null map key").inside(step)
            try:
                key = key_of(k)
            except CqlValueError as err:
                raise err.inside(step) from None
            if v is None:
                raise CqlValueError("null inside a map").inside(f"[{quote(k)}]")
            try:
                val = value_of(v)
            except CqlValueError as err:
                raise err.inside(f"[{quote(k)}]") from None
            # Cassandra keeps one value per key: two JSON keys naming the same key ("1", "01")
            # would silently lose one
            ident = key_type.to_binary(key, 4)
            if ident in seen:
                raise CqlValueError("duplicate map key once read as its CQL type").inside(step)
            seen.add(ident)
            out.append((key, val))
        return out

    return coerce


def _tuple(cqltype: Any) -> Coercer:
    subs = [coercer_for(t) for t in cqltype.subtypes]

    def coerce(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list) or len(value) != len(subs):
            raise _expected(f"an array of {len(subs)} elements for a tuple", value)
        out = []
        for i, (sub, item) in enumerate(zip(subs, value, strict=True)):
            try:
                out.append(None if item is None else sub(item))
            except CqlValueError as err:
                raise err.inside(f"[{i}]") from None
        return tuple(out)

    return coerce


def _udt(cqltype: Any) -> Coercer:
    fields = list(zip(cqltype.fieldnames, (coercer_for(t) for t in cqltype.subtypes), strict=True))
    names = set(cqltype.fieldnames)

    def coerce(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, dict):
            raise _expected(f"an object for the type {cqltype.typename}", value)
        unknown = [k for k in value if k not in names]
        if unknown:
            raise CqlValueError(f"unknown field(s) {quote(unknown)}; {cqltype.typename} has {list(cqltype.fieldnames)}")
        out = []
        for name, sub in fields:
            item = value.get(name)
            try:
                out.append(None if item is None else sub(item))
            except CqlValueError as err:
                raise err.inside(f".{name}") from None
        # positional, in field order: the driver serializes a UDT from a sequence (a dict
        # made it look up val[0], the "KeyError: 0" of issue 7)
        return tuple(out)

    return coerce


def _vector(cqltype: Any) -> Coercer:
    size = cqltype.vector_size
    elements = _elements(coercer_for(cqltype.subtype), "vector")

    def coerce(value: Any) -> list[Any]:
        if not isinstance(value, list) or len(value) != size:
            raise _expected(f"an array of exactly {size} elements for a vector", value)
        out: list[Any] = elements(value)
        return out

    return coerce


def _unwrap(cqltype: Any) -> Any:
    while issubclass(cqltype, (FrozenType, ReversedType)):
        cqltype = cqltype.subtypes[0]
    return cqltype


def coercer_for(cqltype: Any) -> Coercer:
    """The coercion of a (non-null) JSON value into a value of the driver type class
    ``cqltype`` (from ``PreparedStatement.column_metadata[i].type``). Raises
    :class:`CqlValueError` for a value that type can never hold."""
    cqltype = _unwrap(cqltype)
    if issubclass(cqltype, UserType):
        structure = _udt(cqltype)
    elif issubclass(cqltype, TupleType):
        structure = _tuple(cqltype)
    elif issubclass(cqltype, VectorType):
        structure = _vector(cqltype)
    elif issubclass(cqltype, MapType):
        structure = _map(cqltype)
    elif issubclass(cqltype, ListType):
        structure = _elements(coercer_for(cqltype.subtypes[0]), "list")
    elif issubclass(cqltype, SetType):
        structure = _elements(coercer_for(cqltype.subtypes[0]), "set")
    else:
        # a custom type's driver class serializes bytes as they are: its natural JSON form is
        # the base64 of its serialized value (anything else would reach the wire unencoded)
        return _SCALARS.get(cqltype.typename, _blob)
    return _or_json_text(structure, cql_name(cqltype))


def _or_json_text(structure: Coercer, name: str) -> Coercer:
    """A structured value may also be given as a string of its JSON text, as Cassandra's own
    JSON support reads it: the only way to give a map key of a collection type in a JSON
    object, or a frozen collection in a mutation key (whose values are scalars)."""

    def coerce(value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = orjson.loads(value)
            except orjson.JSONDecodeError:
                raise CqlValueError(f"a string for a {name} must be its JSON text, got {quote(value)}") from None
        return structure(value)

    return coerce
