"""Records read from WAL topics (other producers write them too): a record whose value orjson
would change silently is refused (then dead-lettered), as the write API refuses it; an
undecodable record is named as such; ordinary records read as orjson reads them."""

from __future__ import annotations

import random
import uuid
from decimal import Decimal

import orjson
import pytest

from tests.unit.conftest import random_float_literals
from walstream.entry import Entry, EntryDecodeError, parse_record

pytestmark = pytest.mark.timeout(30)


def record(payload_json: bytes) -> bytes:
    """A valid envelope around a payload given as JSON text (so any literal can be tested)."""
    return b'{"v": 1, "id": "e1", "ns": "orders", "key": "k1", "ts": 1764158400000000, "payload": ' + (
        payload_json + b"}"
    )


@pytest.mark.parametrize(
    "literal",
    [
        b"9007199254740993.0",
        b"2147483647.0000001",
        b"12345678901234567890.123",
        b"1234567890123456789e-3",  # no dot
        b"9007199254740993e0",  # 16 digits, no dot: 2**53 + 1
        b"1e-400",  # becomes 0.0
        b"-2.4703282292062328e-324",
        b"0." + b"0" * 400 + b"1",  # becomes 0.0, no exponent
    ],
)
def test_a_float_literal_a_double_cannot_hold_is_refused(literal: bytes) -> None:
    with pytest.raises(EntryDecodeError) as err:
        parse_record(record(b'{"price": ' + literal + b"}"))
    assert str(err.value).startswith("invalid entry: payload.price: ")
    assert "cannot be held exactly by a JSON reader's double; send it as a string" in str(err.value)


def test_an_integer_beyond_64_bits_is_still_refused() -> None:
    with pytest.raises(EntryDecodeError, match=r"payload\.id: integer 18446744073709551617 is outside"):
        parse_record(record(b'{"id": 18446744073709551617}'))


@pytest.mark.parametrize(
    "payload", [b'{"price": 0.1, "r": 1.5e-7, "pi": 3.14159, "x": 0.30000000000000004, "big": 1e300}', b"[5e-324]"]
)
def test_floats_that_round_trip_read_as_orjson_reads_them(payload: bytes) -> None:
    data = record(payload)
    assert parse_record(data) == orjson.loads(data)


def test_every_literal_orjson_would_change_is_caught_by_the_cheap_trigger() -> None:
    # Given random float literals (1-20 significant digits, some with exponents up to 3 digits)
    # and uuid-like text around them, the record is refused exactly when the literal does
    # not round-trip through a double: the trigger missed none.
    rng = random.Random(11)
    for literal in random_float_literals(11):
        f = float(literal)
        holds = f - f == 0.0 and Decimal(literal) == Decimal(repr(f))
        text_id = str(uuid.UUID(int=rng.getrandbits(128))).encode()
        data = record(b'{"id": "' + text_id + b'", "n": ' + literal.encode() + b"}")
        try:
            doc = parse_record(data)
        except EntryDecodeError:
            assert not holds, literal
        else:
            assert holds and doc["payload"]["n"] == f, literal


@pytest.mark.parametrize("data", [b"\xff", b'{"v": 1, "id": "\xff"}', b'{"v": 1, "id": "\xed\xa0\x80"}'])
def test_a_record_that_is_not_utf8_says_so(data: bytes) -> None:
    with pytest.raises(EntryDecodeError) as err:
        Entry.decode(data)
    assert str(err.value).startswith("not a walstream entry: the record is not valid UTF-8 JSON (")
    assert "surrogates" not in str(err.value)


def test_a_record_that_is_not_json_says_why() -> None:
    with pytest.raises(EntryDecodeError, match=r"not a walstream entry: .*line 1 column 1"):
        Entry.decode(b"not json")
