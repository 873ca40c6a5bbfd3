"""The Elasticsearch target's row model folds puts and deletes like Cassandra's cell
timestamps: any order, any duplicates, same row. Checked against a direct statement of the
rule on random histories (the real targets are compared in
tests/integration/test_put_semantics.py)."""

from __future__ import annotations

import random
from typing import Any

from walstream.targets.elasticsearch import META_FIELD, _Read, _Row

Write = tuple[int, str, dict[str, Any] | None]


def expected(writes: list[Write]) -> dict[str, Any] | None:
    """Cassandra's rule, stated directly: the newest delete removes everything at or before
    it; per column the newest write after it wins (null is no value); the row exists while
    some put is newer than the newest delete."""
    deleted_at = max((t for t, op, _ in writes if op == "delete"), default=0)
    puts = [(t, v or {}) for t, op, v in writes if op == "put" and t > deleted_at]
    if not puts:
        return None
    cols: dict[str, tuple[int, Any]] = {}
    for t, value in puts:
        for c, v in value.items():
            if c not in cols or t > cols[c][0]:
                cols[c] = (t, v)
    return {c: v for c, (_, v) in cols.items() if v is not None}


def fold(writes: list[Write], start: _Row | None = None) -> _Row:
    row = start or _Row(key={"id": "k"})
    for t, op, value in writes:
        if op == "put":
            row.put({"id": "k"}, value or {}, t)
        else:
            row.delete(t)
    return row


def visible(row: _Row) -> dict[str, Any] | None:
    if not row.live:
        return None
    src = row.source()
    src.pop(META_FIELD)
    src.pop("id")
    return src


def test_random_histories_in_random_orders_converge_to_cassandras_rule() -> None:
    rng = random.Random(11)
    for _ in range(2000):
        # distinct write times (ties are covered below), a few columns, some nulls
        times = rng.sample(range(1, 50), rng.randint(1, 7))
        writes: list[Write] = []
        for t in times:
            if rng.random() < 0.3:
                writes.append((t, "delete", None))
            else:
                cols = rng.sample(["a", "b", "c"], rng.randint(1, 3))
                writes.append((t, "put", {c: rng.choice([None, t, f"v{t}"]) for c in cols}))
        want = expected(writes)
        delivered = writes + rng.sample(writes, rng.randint(0, len(writes)))  # duplicates
        rng.shuffle(delivered)
        assert visible(fold(delivered)) == want, (writes, delivered)


def test_state_survives_a_round_trip_through_the_document() -> None:
    # Given a row folded from part of a history, stored, read back (document + tombstone)
    rng = random.Random(3)
    for _ in range(500):
        writes: list[Write] = [(t, "delete", None) if rng.random() < 0.3 else (t, "put", {"a": t, "b": None})
                               for t in rng.sample(range(1, 30), 5)]
        first = fold(writes[:3])
        live = _Read(1, 1, first.source()) if first.live else _Read()
        tomb = _Read() if first.live or not first.deleted_at else _Read(1, 1, {"deleted_at": first.deleted_at})
        # When the rest is folded onto what was read
        row = fold(writes[3:], _Row.read(live, tomb, {"id": "k"}))
        # Then the row is the one the whole history implies
        assert visible(row) == expected(writes), writes


def test_a_delete_wins_a_tie_and_null_wins_a_tie_like_cassandra_tombstones() -> None:
    assert visible(fold([(10, "put", {"a": 1}), (10, "delete", None)])) is None
    assert visible(fold([(10, "delete", None), (10, "put", {"a": 1})])) is None
    assert visible(fold([(10, "put", {"a": 1}), (10, "put", {"a": None})])) == {}
    assert visible(fold([(10, "put", {"a": None}), (10, "put", {"a": 1})])) == {}
    # two values at one microsecond: the same winner whichever comes first
    assert visible(fold([(10, "put", {"a": "x"}), (10, "put", {"a": "y"})])) == visible(
        fold([(10, "put", {"a": "y"}), (10, "put", {"a": "x"})]))


def test_documents_of_the_former_scheme_count_as_written_at_their_version() -> None:
    # a document indexed with external version 100 (the old scheme) and no write times
    row = _Row.read(_Read(5, 1, {"id": "k", "a": "old", "b": 1}, version=100), _Read(), {"id": "k"})
    row.put({"id": "k"}, {"a": "older"}, 50)
    row.put({"id": "k"}, {"b": 2}, 150)
    assert visible(row) == {"a": "old", "b": 2}
    row.delete(120)
    assert visible(row) == {"b": 2}
