"""Strict JSON reading: every value that would change, or that some reader would read
differently, is refused with a message naming where it is; valid JSON reads as usual."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest

from tests.unit.conftest import random_float_literals
from walstream.strict_json import MAX_DEPTH, Refused, StrictJSONError, loads, loads_batch

pytestmark = pytest.mark.timeout(30)


def nested(levels: int, leaf: bytes = b"1") -> bytes:
    """``levels`` arrays inside one another around ``leaf``."""
    return b"[" * levels + leaf + b"]" * levels


def refused(body: bytes) -> StrictJSONError:
    with pytest.raises(StrictJSONError) as err:
        loads(body)
    return err.value


VALID = [
    b'{"namespace": "catalog", "payload": {"mutations": [{"table": "t", "op": "put", "key": {"id": "1"}}]}}',
    b'[1, -2, 3.5, -0.25, 1e300, 1E-5, true, false, null, "text", "\\u00e9\\ud83d\\ude00", {}, []]',
    b'{"max": 18446744073709551615, "min": -9223372036854775808, "zero": 0}',
    b'{"a": {"b": 1}, "c": {"b": 2}}',  # the same key in different objects is no duplicate
    b'"just a string"',
    nested(MAX_DEPTH + 1),  # the root array and 128 levels below it
]


@pytest.mark.parametrize("body", VALID)
def test_valid_json_reads_as_any_reader_would(body: bytes) -> None:
    assert loads(body) == orjson.loads(body)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
        (b'{"x": {"y": [1, {"k": 1, "j": 2, "k": 3}]}}', "x.y.1: duplicate key 'k'"),
        (b'[{"ok": 1}, {"\\u0061": 1, "a": 2}]', "1: duplicate key 'a'"),  # equal once unescaped
        (b'{"id": 18446744073709551616}', "id: integer 18446744073709551616 is outside the 64-bit range"),
        (b'{"id": -9223372036854775809}', "id: integer -9223372036854775809 is outside the 64-bit range"),
        (b'[1, 123456789012345678901234567890]', "1: integer 123456789012345678901234567890 is outside"),
        (b'{"n": 1' + b"0" * 6000 + b"}", "n: integer 100000000000…(6001 characters) is outside the 64-bit"),
        (b'{"f": 1e400}', "f: number is beyond the range of a 64-bit float"),
        (b'{"f": -1.5e309}', "f: number is beyond the range of a 64-bit float"),
        (b'{"f": NaN}', "f: NaN is not a JSON number"),
        (b'{"f": [Infinity]}', "f.0: Infinity is not a JSON number"),
        (b'{"f": -Infinity}', "f: -Infinity is not a JSON number"),
        (b'{"s": "\\ud800"}', "s: string is not valid Unicode (a lone surrogate)"),
        (b'{"payload": ' + nested(MAX_DEPTH + 1) + b"}", "payload: nested deeper than 128 levels"),
        (b'{"payload": ' + nested(300) + b"}", "payload: nested deeper than 128 levels"),
        (nested(MAX_DEPTH + 2), "0: nested deeper than 128 levels"),  # 129 levels below the root
        (nested(5000), "nested deeper than 128 levels"),  # deeper than any parser goes
    ],
)
def test_each_problem_is_refused_naming_where(body: bytes, message: str) -> None:
    err = refused(body)
    assert str(err).startswith(message), str(err)
    assert not err.malformed


def test_the_64_bit_message_says_what_to_do() -> None:
    assert str(refused(b'{"key": {"id": 18446744073709551617}}')) == (
        "key.id: integer 18446744073709551617 is outside the 64-bit range; send it as a string"
    )


@pytest.mark.parametrize("body", [b'{"a": ', b"{'a': 1}", b'{"a": 1,}', b"[1] [2]", b"\xff\xfe", b"01"])
def test_malformed_bodies_are_malformed(body: bytes) -> None:
    assert refused(body).malformed


def test_a_problem_is_found_whichever_path_reads_it() -> None:
    # A duplicate sends the body to the slow path; the big integer next to it must still be
    # found there (a marker), as the fast path finds it alone.
    fast = refused(b'{"a": [18446744073709551616]}')
    slow = refused(b'{"a": [18446744073709551616], "b": {"c": 1, "c": 1}}')
    assert str(fast) == str(slow) == (
        "a.0: integer 18446744073709551616 is outside the 64-bit range; send it as a string"
    )


def entry(payload: Any, **fields: Any) -> bytes:
    return orjson.dumps({"namespace": "ns", "payload": payload, **fields})


def test_a_batch_refuses_bad_items_one_by_one() -> None:
    items = [
        entry({"ok": 1}, id="good-1"),
        b'{"namespace": "ns", "id": "deep", "payload": ' + nested(300) + b"}",
        b'{"namespace": "ns", "id": "big", "payload": {"key": {"id": 18446744073709551617}}}',
        b'{"namespace": "ns", "id": "dup", "payload": {"a": 1, "a": 2}}',
        b'{"namespace": "ns", "id": "dup-id", "id": "other", "payload": 1}',
        b'{"namespace": "ns", "id": "nan", "payload": [NaN]}',
        entry({"ok": 2}, id="good-2"),
    ]
    doc = loads_batch(b'{"entries": [' + b", ".join(items) + b"]}")
    got = doc["entries"]
    assert got[0] == orjson.loads(items[0]) and got[6] == orjson.loads(items[6])
    refused_items = got[1:6]
    assert all(isinstance(r, Refused) for r in refused_items)
    assert [str(r.error) for r in refused_items] == [
        "payload: nested deeper than 128 levels",
        "payload.key.id: integer 18446744073709551617 is outside the 64-bit range; send it as a string",
        "payload: duplicate key 'a'",
        "duplicate key 'id'",
        "payload.0: NaN is not a JSON number",
    ]
    # each refused item keeps its id when that is unambiguous, and nothing else
    assert [dict(r) for r in refused_items] == [{"id": "deep"}, {"id": "big"}, {"id": "dup"}, {}, {"id": "nan"}]


def test_a_batch_counts_depth_from_each_item() -> None:
    ok = b'{"namespace": "ns", "payload": ' + nested(MAX_DEPTH) + b"}"  # 128 levels below the item
    doc = loads_batch(b'{"entries": [' + ok + b"]}")
    assert not isinstance(doc["entries"][0], Refused)
    assert loads(ok) == doc["entries"][0]  # the same entry alone is accepted too


def test_a_batch_refuses_problems_outside_its_items_whole() -> None:
    with pytest.raises(StrictJSONError, match="duplicate key 'entries'"):
        loads_batch(b'{"entries": [], "entries": [1]}')
    with pytest.raises(StrictJSONError, match="other: integer"):
        loads_batch(b'{"entries": [], "other": 18446744073709551617}')
    with pytest.raises(StrictJSONError) as err:
        loads_batch(b'{"entries": [1,')
    assert err.value.malformed
    # a body of another shape reads as any body (the caller refuses the shape)
    assert loads_batch(b'{"items": [1]}') == {"items": [1]}


def test_text_is_read_as_bytes_are() -> None:
    assert loads('{"a": "\u00e9"}') == {"a": "\u00e9"}
    with pytest.raises(StrictJSONError, match="a: string is not valid Unicode"):
        loads('{"a": "\ud800"}')  # a str holding a lone surrogate


# --- numbers that a double cannot hold exactly (issue 7, item 4) ----------------------------

LOSSY = [
    "9007199254740993.0",  # 2**53 + 1: the double is 2**53
    "2147483647.0000001",  # a double keeps ~16 significant digits
    "12345678901234567890.123",
    "0.1000000000000000055511151231257827",  # 0.1's exact binary value, cut: not 0.1 either
    "1e-400",  # would become 0.0
    "2.4703282292062328e-324",  # rounds to the smallest subnormal, 5e-324
    "-123456789.123456789",
    "1234567890123456789e-3",  # no dot: still 19 significant digits
    "9007199254740993e0",
]

EXACT = [
    "0.1", "1.5e-7", "3.14159", "-0.0", "1.50", "1E+2", "8.3", "1e300", "5e-324", "1e22",
    "0.30000000000000004",  # 0.1 + 0.2 as every language prints it: the repr of a double
    "9007199254740992.0", "1.7976931348623157e308", "0.000001",
]


@pytest.mark.parametrize("literal", LOSSY)
def test_a_float_literal_a_double_cannot_hold_is_refused_naming_where(literal: str) -> None:
    body = b'{"payload": {"mutations": [{"value": {"price": ' + literal.encode() + b"}}]}}"
    err = refused(body)
    assert str(err) == (
        f"payload.mutations.0.value.price: {literal} cannot be held exactly by a JSON reader's double;"
        " send it as a string"
    )
    assert err.path == ("payload", "mutations", 0, "value", "price") and not err.malformed


@pytest.mark.parametrize("literal", EXACT)
def test_a_float_literal_that_round_trips_reads_as_its_double(literal: str) -> None:
    got = loads(b'{"a": [' + literal.encode() + b'], "b": ' + literal.encode() + b"}")
    assert got == {"a": [float(literal)], "b": float(literal)}
    assert type(got["a"][0]) is float and type(got["b"]) is float  # no parser type leaks out
    assert type(loads(literal.encode())) is float


def test_a_lossy_float_is_found_whichever_path_reads_it() -> None:
    # a duplicate key elsewhere sends the body to the slow (stdlib) path
    fast = refused(b'{"a": [9007199254740993.0]}')
    slow = refused(b'{"a": [9007199254740993.0], "b": {"c": 1, "c": 1}}')
    assert str(fast) == str(slow) == (
        "a.0: 9007199254740993.0 cannot be held exactly by a JSON reader's double; send it as a string"
    )


def test_the_round_trip_rule_over_random_literals() -> None:
    # Given literals of 1 to 20 significant digits, with and without fraction and exponent
    for literal in random_float_literals(7):
        f = float(literal)
        # Then exactly those whose value equals their double's shortest repr are accepted
        holds = f - f == 0.0 and Decimal(literal) == Decimal(repr(f))
        try:
            assert loads(literal.encode()) == f and holds, literal
        except StrictJSONError:
            assert not holds, literal


def test_a_batch_refuses_a_lossy_float_alone() -> None:
    good = entry({"price": 12.5}, id="good")
    bad = b'{"namespace": "ns", "id": "lossy", "payload": {"price": 9007199254740993.0}}'
    got = loads_batch(b'{"entries": [' + good + b", " + bad + b", 2.5]}")["entries"]
    assert got[0] == orjson.loads(good) and type(got[0]["payload"]["price"]) is float
    assert isinstance(got[1], Refused) and dict(got[1]) == {"id": "lossy"}
    assert str(got[1].error) == (
        "payload.price: 9007199254740993.0 cannot be held exactly by a JSON reader's double; send it as a string"
    )
    assert got[2] == 2.5 and type(got[2]) is float


# --- strings UTF-8 cannot encode, anywhere (issue 7, item 5) --------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"payload": {"\\udc00": 1}}', "payload.\\udc00: key is not valid Unicode (a lone surrogate)"),
        (b'{"\\ud800": 1}', "\\ud800: key is not valid Unicode (a lone surrogate)"),
        (b'{"a": [{"b": {"x\\udfffy": null}}]}', "a.0.b.x\\udfffy: key is not valid Unicode (a lone surrogate)"),
        (b'{"a": [1, "\\udc00"]}', "a.1: string is not valid Unicode (a lone surrogate)"),
        (b'{"a": {"b": "ok \\ud83d"}}', "a.b: string is not valid Unicode (a lone surrogate)"),
        (b'["\\ud800"]', "0: string is not valid Unicode (a lone surrogate)"),
    ],
)
def test_a_string_utf8_cannot_encode_is_refused_anywhere(body: bytes, message: str) -> None:
    err = refused(body)
    assert str(err) == message
    str(err).encode("utf-8")  # the message itself can be sent (it names the key escaped)


def test_a_batch_refuses_a_surrogate_key_alone_and_its_answer_encodes() -> None:
    bad_key = b'{"namespace": "ns", "id": "bad", "payload": {"\\udc00": 1}}'
    bad_id = b'{"namespace": "ns", "id": "x\\udc00", "payload": {"k": "\\ud800"}}'
    good = entry({"k": "v"}, id="good")
    got = loads_batch(b'{"entries": [' + b", ".join([bad_key, good, bad_id]) + b"]}")["entries"]
    assert got[1] == orjson.loads(good)
    assert isinstance(got[0], Refused) and dict(got[0]) == {"id": "bad"}
    assert str(got[0].error) == "payload.\\udc00: key is not valid Unicode (a lone surrogate)"
    # an id that cannot be encoded is not repeated in the answer
    assert isinstance(got[2], Refused) and dict(got[2]) == {}
    orjson.dumps([{**r, "message": str(r.error)} for r in (got[0], got[2])])
