"""Cassandra values end to end: every CQL type written through the HTTP API lands with the
right value (read back from Cassandra), and a value that can never be written is dead-lettered
on its first attempt without holding back later entries of its key."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pytest
from cassandra.cluster import Session
from cassandra.util import Duration, Time

from tests.integration.conftest import Worker, put_namespace, wait_until
from tests.integration.test_outages import dead_letters

U1 = "123e4567-e89b-12d3-a456-426614174000"  # a version-1 (time) UUID
U4 = "9b2f0f4e-3b0a-4c35-9a4e-0c1f4e1b2a3c"


@pytest.fixture
def typed_keyspace(cassandra: Session, unique: str) -> Iterator[str]:
    """A keyspace with a UDT and a table with a column of (almost) every CQL type."""
    ks = f"ks_{unique}"
    cassandra.execute(f"CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    try:
        yield from _typed_tables(cassandra, ks)
    finally:
        cassandra.execute(f"DROP KEYSPACE IF EXISTS {ks}")


def _typed_tables(cassandra: Session, ks: str) -> Iterator[str]:
    cassandra.execute(
        f"CREATE TYPE {ks}.address (street text, zip int, geo frozen<tuple<double, double>>, tags frozen<set<text>>)")
    cassandra.execute(f"""
        CREATE TABLE {ks}.things (
            id text PRIMARY KEY,
            addr address, faddr frozen<address>,
            names map<int, text>, ids set<uuid>, history list<frozen<map<text, int>>>,
            pair tuple<text, int, boolean>, coords map<frozen<tuple<int, int>>, text>,
            by_day map<date, decimal>,
            wait duration, ip inet, at time, day date, seen timestamp, tu timeuuid,
            price decimal, big varint, small smallint, tiny tinyint, ratio double, flag boolean,
            raw blob, emb vector<float, 3>)""")
    cassandra.execute(f"CREATE TABLE {ks}.orders (id text PRIMARY KEY, price decimal, qty int)")
    yield ks


def put(table: str, row_id: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"mutations": [{"table": table, "op": "put", "key": {"id": row_id}, "value": value}]}


ROW_A = {
    "addr": {"street": "Main St", "zip": "12345", "geo": [52.5, 13.4], "tags": ["home", "work"]},
    "faddr": {"street": "Side St"},
    "names": {"1": "one", "-2": "minus two"},
    "ids": [U4, U1],
    "history": [{"a": 1}, {"b": "2"}],
    "pair": ["x", "7", True],
    "coords": {"[1, 2]": "a"},
    "by_day": {"2024-02-29": "1.10"},
    "wait": "P1Y2M3DT4H5M6.5S",
    "ip": "2001:db8::1",
    "at": "12:30:45.123456789",
    "day": "2024-02-29",
    "seen": "2024-03-01T14:30:45.123+02:00",
    "tu": U1,
    "price": "12.50",
    "big": "123456789012345678901234567890",
    "small": -32768,
    "tiny": "127",
    "ratio": "NaN",
    "flag": "false",
    "raw": "aGVsbG8=",
    "emb": [1, 0.5, "-2"],
}
#: the same kinds of values in their other accepted forms
ROW_B = {
    "names": [[3, "three"]],
    "coords": [[[5, 6], "b"]],
    "wait": "1y2mo3w4d5h6m7s8ms9us10ns",
    "at": 5_000_000_000,
    "seen": 1709296245123,
    "price": 0.1,
    "big": 42,
    "ratio": 2.5,
}


def test_every_cql_type_lands_with_the_right_value(
    start_worker: Callable[..., Worker], cassandra: Session, typed_keyspace: str, unique: str,
) -> None:
    # Given a namespace writing to a table with UDT, collection, tuple, time and vector columns
    w = start_worker()
    put_namespace(w, unique, [{"type": "cassandra", "keyspace": typed_keyspace, "consistency": "ONE"}])
    # When rows are written through the HTTP API with values in their JSON forms
    with w.client() as c:
        for row_id, value in (("a", ROW_A), ("b", ROW_B),
                              ("c", {"wait": {"months": -1, "days": -2, "nanoseconds": -3}})):
            r = c.post("/v1/log", json={"namespace": unique, "key": row_id, "payload": put("things", row_id, value)})
            assert r.status_code == 200 and r.json()["durable"] == "SUCCESS", r.text

    def rows() -> dict[str, Any]:
        return {r.id: r for r in cassandra.execute(f"SELECT * FROM {typed_keyspace}.things")}

    got = wait_until(lambda: (lambda rs: rs if set(rs) == {"a", "b", "c"} else None)(rows()), timeout_s=60,
                     what="the three rows in Cassandra")
    # Then Cassandra holds each value as its CQL type
    a, b = got["a"], got["b"]
    assert (a.addr.street, a.addr.zip, tuple(a.addr.geo), set(a.addr.tags)) == ("Main St", 12345, (52.5, 13.4),
                                                                                  {"home", "work"})
    assert (a.faddr.street, a.faddr.zip, a.faddr.geo, a.faddr.tags) == ("Side St", None, None, None)
    assert dict(a.names) == {1: "one", -2: "minus two"}
    assert set(a.ids) == {uuid.UUID(U4), uuid.UUID(U1)}
    assert [dict(m) for m in a.history] == [{"a": 1}, {"b": 2}]
    assert tuple(a.pair) == ("x", 7, True)
    assert dict(a.coords) == {(1, 2): "a"}
    assert [(k.date(), v) for k, v in a.by_day.items()] == [(date(2024, 2, 29), Decimal("1.10"))]
    assert a.wait == Duration(14, 3, (4 * 3600 + 5 * 60 + 6) * 10**9 + 500_000_000)
    assert a.ip == "2001:db8::1"
    assert a.at == Time(45045123456789)
    assert a.day == date(2024, 2, 29)
    assert a.seen == datetime(2024, 3, 1, 12, 30, 45, 123000)
    assert a.tu == uuid.UUID(U1)
    assert a.price == Decimal("12.50") and str(a.price) == "12.50"
    assert a.big == 123456789012345678901234567890
    assert (a.small, a.tiny, a.flag) == (-32768, 127, False)
    assert a.ratio != a.ratio  # NaN
    assert a.raw == b"hello"
    assert a.emb == [1.0, 0.5, -2.0]
    assert dict(b.names) == {3: "three"} and dict(b.coords) == {(5, 6): "b"}
    assert b.wait == Duration(14, 25, ((5 * 60 + 6) * 60 + 7) * 10**9 + 8_000_000 + 9_000 + 10)
    assert b.at == Time(5_000_000_000)
    assert b.seen == datetime(2024, 3, 1, 12, 30, 45, 123000)
    assert str(b.price) == "0.1" and b.big == 42 and b.ratio == 2.5
    assert got["c"].wait == Duration(-1, -2, -3)


def test_a_bad_value_is_dead_lettered_at_once_and_its_key_moves_on(
    start_worker: Callable[..., Worker], cassandra: Session, typed_keyspace: str, unique: str,
) -> None:
    # Given a namespace whose retries are a minute apart: were a bad value retried, it would
    # hold its key for minutes
    w = start_worker(WALSTREAM_LOG_FORMAT="json")
    put_namespace(w, unique, [{"type": "cassandra", "keyspace": typed_keyspace, "consistency": "ONE"}],
                  retry={"initial_delay_ms": 60_000, "max_delay_ms": 60_000, "max_attempts": 8})
    # When an entry with a decimal written "12,50" is followed by a good entry of the same key
    with w.client() as c:
        for entry_id, price in (("bad", "12,50"), ("good", "12.50")):
            payload = {"mutations": [{"table": "orders", "op": "put", "key": {"id": entry_id},
                                      "value": {"qty": 1, "price": price}}]}
            r = c.post("/v1/log", json={"namespace": unique, "id": entry_id, "key": "k", "payload": payload})
            assert r.status_code == 200 and r.json()["durable"] == "SUCCESS", r.text
    # Then the good entry is delivered (not held behind the bad one's retries)...
    wait_until(lambda: cassandra.execute(f"SELECT price FROM {typed_keyspace}.orders WHERE id = 'good'").one(),
               timeout_s=30, what="the later entry of the key in Cassandra")
    # ...the bad one is in the DLQ once, after exactly one attempt, with a message naming the
    # column, its CQL type and the problem, and none of it was written
    [dl] = wait_until(lambda: dead_letters(f"wal.{unique}.dlq"), timeout_s=30, what="the dead letter")
    assert dl["entry"]["id"] == "bad"  # type: ignore[index]
    assert dl["error_class"] == "permanent" and dl["attempts"] == 1
    assert "column orders.price (decimal): '12,50' is not a decimal number" in str(dl["message"])
    assert cassandra.execute(f"SELECT * FROM {typed_keyspace}.orders WHERE id = 'bad'").one() is None
    with w.client() as c:
        status = c.get(f"/v1/log/{unique}/bad").json()
    assert status["state"] == "DEAD" and [t["attempts"] for t in status["targets"]] == [1]
    # ...and the worker's JSON log has one line for it, without the payload's values
    w.stop()
    text = w.log_path.read_text(errors="replace")
    events = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is JSON
    [line] = [e for e in events if e.get("event") == "dead_letter"]
    assert (line["namespace"], line["entry_id"], line["error_class"], line["attempts"]) == (
        unique, "bad", "permanent", 1)
    assert "12,50" not in text
