"""How an index check judges one row against its document (walstream.index_check.compare), and
the document id it looks for, without services."""

from __future__ import annotations

import uuid

import pytest

from walstream.index_check import compare, doc_id
from walstream.targets.cassandra import ScannedRow, json_values
from walstream.targets.elasticsearch import IndexedRow

pytestmark = pytest.mark.timeout(10)


def row(**written: int | None) -> ScannedRow:
    return ScannedRow({"id": "1"}, dict(written), 0)


@pytest.mark.parametrize("table_row, held, verdict", [
    (row(title=10, year=10), IndexedRow(True, {"title": 10, "year": 10}, 0), None),
    (row(title=10, year=None), IndexedRow(True, {"title": 10, "year": 5}, 0), None),  # a null cell: no time
    (row(title=10), IndexedRow(False, {}, 0), "missing"),
    (row(title=10), IndexedRow(False, {}, 10), "index_newer"),  # deleted there at the same time or later
    (row(title=10), IndexedRow(False, {}, 9), "missing"),
    (row(title=10, year=12), IndexedRow(True, {"title": 10, "year": 11}, 0), "stale"),
    (row(title=10, year=12), IndexedRow(True, {"title": 10}, 0), "stale"),  # a column never written there
    (row(title=10), IndexedRow(True, {"title": 11}, 0), "index_newer"),
    (row(title=None), IndexedRow(False, {}, 0), "missing"),  # a row of key columns only
    # the index deleted the row after the table's write, then wrote one column again: the
    # table is behind on both
    (row(title=10, year=10), IndexedRow(True, {"title": 20}, 15), "index_newer"),
    (row(title=10, year=16), IndexedRow(True, {"title": 20}, 15), "stale"),  # year newer in the table
])
def test_a_row_is_judged_by_its_columns_write_times(
    table_row: ScannedRow, held: IndexedRow, verdict: str | None
) -> None:
    found = compare(table_row, held)
    assert (found[0] if found else None) == verdict


def test_the_document_id_is_the_targets() -> None:
    assert doc_id("movies", {"id": "42"}) == "42"
    assert doc_id("t", {"b": "x|y", "a": 1}) == "1|x\\|y"  # columns in name order, | escaped
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert doc_id("t", {"id": u}) == str(u)


def test_row_values_come_back_as_a_client_would_write_them() -> None:
    text = ('{"id": "1", "d": 12345678901234567890.123456789, "small": 1.5, "vi": 123456789012345678901234567890, '
            '"n": 42, "ts": "2026-01-01 00:00:00.000Z", "s": "a b"}')
    types = {"id": "text", "d": "decimal", "small": "double", "vi": "varint", "n": "int", "ts": "timestamp",
             "s": "text"}
    assert json_values(text, types) == {
        "id": "1", "d": "12345678901234567890.123456789", "small": 1.5, "vi": "123456789012345678901234567890",
        "n": 42, "ts": "2026-01-01T00:00:00.000Z", "s": "a b"}


def test_numbers_a_double_holds_stay_numbers_and_nested_timestamps_become_iso() -> None:
    text = ('{"big": 1.0E20, "tenth": 0.1, "lts": ["2026-01-01 00:00:00.000Z"], '
            '"addr": {"street": "a b", "since": "2026-01-02 03:04:05Z"}, "note": "2026-01-01 00:00:00.000Z"}')
    types = {"big": "double", "tenth": "double", "lts": "frozen<list<timestamp>>", "addr": "frozen<addr>",
             "note": "text"}
    assert json_values(text, types) == {
        "big": 1e20, "tenth": 0.1, "lts": ["2026-01-01T00:00:00.000Z"],
        "addr": {"street": "a b", "since": "2026-01-02T03:04:05Z"},
        "note": "2026-01-01 00:00:00.000Z"}  # text is the client's own
