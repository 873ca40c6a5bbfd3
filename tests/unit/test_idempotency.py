"""The write API's ``id`` as an idempotency key.

Given a write of an id already used, then: the same request gets the original answer
(``duplicate: true``); a request for a different entry (key, payload, lifecycle, target or
retry differ) gets a 409 and writes nothing; an id whose entry is cancelled gets a 409 with the
state. "Same request" is decided by the request digest, which the entry carries in its envelope
and its state document.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.unit.conftest import Harness
from tests.unit.test_delivery_agent import agent, send
from walstream.entry import Entry, EntryDecodeError, WriteClock
from walstream.namespaces.model import NamespaceConfig, parse_namespace
from walstream.requests import parse_log_request
from walstream.web.views import repeat_answer
from walstream.writer import Durable, Remembered, WriteResult

pytestmark = pytest.mark.timeout(60)

RAW = parse_namespace({"name": "raw", "targets": [{"type": "noop"}],
                       "allowed_target_overrides": [{"type": "kafka", "topic": "out"}]})
OTHER = parse_namespace({"name": "other", "targets": [{"type": "noop"}]})


def lookup(name: str) -> NamespaceConfig | None:
    return {"raw": RAW, "other": OTHER}.get(name)


def parse(doc: dict[str, Any]) -> Entry:
    entry, value = parse_log_request(doc, lookup=lookup, clock=WriteClock(), max_entry_bytes=1024 * 1024)
    assert Entry.decode(value) == entry  # the digest travels in the envelope
    return entry


def digest(doc: dict[str, Any]) -> str:
    d = parse(doc).digest
    assert d is not None
    return d


BASE: dict[str, Any] = {"namespace": "raw", "id": "x", "key": "k", "payload": {"a": 1, "b": [1, 2]}}


# -- the digest ---------------------------------------------------------------------------------


def test_the_same_request_has_the_same_digest_though_its_due_time_moves() -> None:
    # Given a delayed request sent twice (a client's retry, later), Then the due times differ
    # (delay_ms is relative) but the digests do not: the retry is the same request
    doc = {**BASE, "lifecycle": {"delay_ms": 5000}}
    first = parse(doc)
    again = parse_log_request(doc, lookup=lookup, clock=_LaterClock(), max_entry_bytes=1 << 20)[0]
    assert first.due_at_ms != again.due_at_ms
    assert first.digest == again.digest and len(first.digest or "") == 64


class _LaterClock(WriteClock):
    def now_us(self) -> int:
        return super().now_us() + 3_000_000


@pytest.mark.parametrize(
    "spelling",
    [
        {"payload": {"b": [1, 2], "a": 1}},  # object keys in another order
        {"id": "x2"},  # the id is what is looked up, not part of the entry
        {"lifecycle": {}},  # an empty lifecycle is none
        {"lifecycle": None},
        {"target": None, "retry": None},
    ],
)
def test_equal_requests_spelled_differently_have_one_digest(spelling: dict[str, Any]) -> None:
    assert digest({**BASE, **spelling}) == digest(BASE)


def test_an_omitted_key_is_the_id() -> None:
    assert digest({"namespace": "raw", "id": "x", "payload": 1}) == digest(
        {"namespace": "raw", "id": "x", "key": "x", "payload": 1}
    )


def test_deliver_at_is_digested_as_its_instant() -> None:
    at = {"deliver_at": "2030-01-01T00:00:00Z"}
    same = {"deliver_at": "2030-01-01T01:00:00+01:00"}
    assert digest({**BASE, "lifecycle": at}) == digest({**BASE, "lifecycle": same})


def test_target_override_and_retry_are_digested_after_validation() -> None:
    # defaults filled in by validation make the same override / policy
    kafka = {"type": "kafka", "topic": "out"}
    assert digest({**BASE, "target": kafka}) == digest({**BASE, "target": [{**kafka, "bootstrap": None}]})
    retry = {"initial_delay_ms": 10, "max_attempts": 2}
    full = parse({**BASE, "retry": retry}).retry
    assert full is not None and full != retry
    assert digest({**BASE, "retry": retry}) == digest({**BASE, "retry": full})


@pytest.mark.parametrize(
    "change",
    [
        {"namespace": "other"},
        {"key": "k2"},
        {"payload": {"a": 2, "b": [1, 2]}},
        {"payload": {"a": 1, "b": [2, 1]}},
        {"payload": None},
        {"lifecycle": {"delay_ms": 5000}},
        {"lifecycle": {"delay_ms": 0}},
        {"lifecycle": {"deliver_at": "2030-01-01T00:00:00Z"}},
        {"target": {"type": "kafka", "topic": "out"}},
        {"retry": {"max_attempts": 2}},
    ],
)
def test_a_different_entry_has_another_digest(change: dict[str, Any]) -> None:
    assert digest({**BASE, **change}) != digest(BASE)


def test_delays_differ_in_digest() -> None:
    assert digest({**BASE, "lifecycle": {"delay_ms": 5000}}) != digest({**BASE, "lifecycle": {"delay_ms": 6000}})


@pytest.mark.parametrize("bad", [5, "", "d" * 129, ["d"]])
def test_an_envelope_digest_is_validated(bad: Any) -> None:
    e = Entry(id="x", namespace="raw", key="k", payload=1, written_at_us=1, digest="d")
    doc = {**orjson.loads(e.encode()), "digest": bad}
    with pytest.raises(EntryDecodeError, match="'digest'"):
        Entry.from_doc(doc)


def test_an_envelope_without_digest_decodes() -> None:
    # records written before digests existed, or by other producers
    e = Entry(id="x", namespace="raw", key="k", payload=1, written_at_us=1)
    assert b"digest" not in e.encode() and Entry.decode(e.encode()).digest is None


# -- the answer to a repeated id ----------------------------------------------------------------


def state_doc(state: str = "DELIVERED", digest: str | None = "d1", offset: int | None = 17) -> dict[str, Any]:
    return {"id": "x", "ns": "raw", "key": "k", "state": state, "partition": 3 if offset is not None else None,
            "offset": offset, "targets": {}, "digest": digest}


def remembered(digest: str | None = "d1") -> Remembered:
    return Remembered(WriteResult(Durable.SUCCESS, "x", 200, partition=3, offset=17), digest)


@pytest.mark.parametrize("state", ["PENDING", "DELAYED", "RETRYING", "DELIVERED", "DEAD"])
def test_the_same_request_gets_the_original_answer_whatever_the_state(state: str) -> None:
    # DEAD too: the entry was written, as the original answer said; its dead letter says the rest
    answer = repeat_answer("x", "d1", state_doc(state), None)
    assert answer == {"durable": "SUCCESS", "id": "x", "partition": 3, "offset": 17, "status": 200,
                      "duplicate": True}


def test_a_remembered_write_gives_the_original_answer() -> None:
    answer = repeat_answer("x", "d1", None, remembered())
    assert answer is not None and (answer["status"], answer["offset"], answer["duplicate"]) == (200, 17, True)


@pytest.mark.parametrize(
    ("state", "hit"),
    [(state_doc(), None), (None, remembered()), (state_doc(digest=None), remembered()), (state_doc(), remembered())],
)
def test_a_different_request_under_a_used_id_is_a_409(state: dict[str, Any] | None, hit: Remembered | None) -> None:
    answer = repeat_answer("x", "d2", state, hit)
    assert answer is not None
    assert (answer["status"], answer["durable"]) == (409, "FAILED")
    assert answer["message"].startswith("id 'x' was already used for a different entry (")
    assert answer["message"].endswith("; use a new id") and "offset 17" in answer["message"]
    assert "duplicate" not in answer and "offset" not in answer


def test_an_entry_without_digest_matches_any_request() -> None:
    # written before digests existed: nothing to compare, so the original answer (documented)
    answer = repeat_answer("x", "d2", state_doc(digest=None), None)
    assert answer is not None and answer["status"] == 200 and answer["duplicate"] is True
    answer = repeat_answer("x", "d2", None, remembered(digest=None))
    assert answer is not None and answer["status"] == 200


@pytest.mark.parametrize("hit", [None, remembered()])
def test_a_cancelled_entry_is_a_409_with_its_state_even_for_the_same_request(hit: Remembered | None) -> None:
    answer = repeat_answer("x", "d1", state_doc("CANCELLED"), hit)
    assert answer is not None
    assert (answer["status"], answer["durable"], answer["state"]) == (409, "FAILED", "CANCELLED")
    assert "cancelled" in answer["message"] and "duplicate" not in answer


def test_an_entry_cancelled_before_it_was_written_is_a_409() -> None:
    answer = repeat_answer("x", "d1", state_doc("CANCELLED", digest=None, offset=None), remembered())
    assert answer is not None and (answer["status"], answer["state"]) == (409, "CANCELLED")
    assert answer["message"] == "entry was cancelled before it was written"


def test_an_unknown_id_has_no_answer() -> None:
    assert repeat_answer("x", "d1", None, None) is None


# -- the state document keeps the digest -----------------------------------------------------------


async def test_the_state_document_keeps_the_entrys_digest(harness: Harness) -> None:
    wal, _, _ = harness
    clock = WriteClock()
    with_digest = Entry(id="e1", namespace="orders", key="A", payload=1, written_at_us=clock.now_us(), digest="d1")
    without = Entry(id="e2", namespace="orders", key="B", payload=2, written_at_us=clock.now_us())
    async with agent(wal).test_context() as ctx:
        await send(ctx, with_digest, without)
    first, second = wal.states.get("orders", "e1"), wal.states.get("orders", "e2")
    assert first is not None and first["state"] == "DELIVERED" and first["digest"] == "d1"
    assert second is not None and second["digest"] is None
