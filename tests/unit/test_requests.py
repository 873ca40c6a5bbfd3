"""Write-request validation: each bad input gets its status and a message; nothing else."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest

from walstream.entry import Entry, WriteClock
from walstream.namespaces.model import NamespaceConfig, parse_namespace
from walstream.requests import RequestError, parse_log_request

OUT = {"type": "kafka", "topic": "out"}
CATALOG = parse_namespace({"name": "catalog", "targets": [{"type": "cassandra", "keyspace": "catalog"}],
                           "allowed_target_overrides": [OUT, {"type": "noop"}]})
RAW = parse_namespace({"name": "raw", "targets": [{"type": "noop"}]})
PUT = {"mutations": [{"table": "movies", "op": "put", "key": {"id": "42"}, "value": {"title": "Heat"}}]}


def lookup(name: str) -> NamespaceConfig | None:
    return {"catalog": CATALOG, "raw": RAW}.get(name)


def parse(doc: Any, max_bytes: int = 1024 * 1024) -> Entry:
    entry, value = parse_log_request(doc, lookup=lookup, clock=WriteClock(), max_entry_bytes=max_bytes)
    assert Entry.decode(value) == entry
    return entry


def test_minimal_entry_gets_generated_id_and_key() -> None:
    e = parse({"namespace": "catalog", "payload": PUT})
    assert e.id and e.key == e.id
    assert e.due_at_ms is None


def test_key_and_id_kept() -> None:
    e = parse({"namespace": "catalog", "id": "evt-1", "key": "movie:42", "payload": PUT})
    assert (e.id, e.key) == ("evt-1", "movie:42")


def test_delay_sets_due_time_relative_to_write_time() -> None:
    e = parse({"namespace": "raw", "payload": 1, "lifecycle": {"delay_ms": 5000}})
    assert e.due_at_ms == -(-e.written_at_us // 1000) + 5000  # rounded up: never early


def test_deliver_at() -> None:
    e = parse({"namespace": "raw", "payload": None, "lifecycle": {"deliver_at": "2030-01-01T00:00:00Z"}})
    assert e.due_at_ms == 1893456000000


def test_any_json_payload_for_non_mutation_targets() -> None:
    assert parse({"namespace": "raw", "payload": [1, "two", {"3": None}]}).payload == [1, "two", {"3": None}]


def test_target_override_replaces_namespace_targets() -> None:
    e = parse({"namespace": "catalog", "payload": "not mutations", "target": {"type": "kafka", "topic": "out"}})
    assert e.targets == [{"type": "kafka", "topic": "out", "bootstrap": None}]


@pytest.mark.parametrize(
    ("doc", "status", "fragment"),
    [
        ([1, 2], 400, "JSON object"),
        ({"payload": 1}, 400, "namespace"),
        ({"namespace": "raw"}, 400, "payload is required"),
        ({"namespace": 7, "payload": 1}, 400, "namespace"),
        ({"namespace": "raw", "payload": 1, "id": 5}, 400, "id"),
        ({"namespace": "raw", "payload": 1, "id": ""}, 400, "id"),
        ({"namespace": "raw", "payload": 1, "colour": "red"}, 400, "colour: unknown field"),
        ({"namespace": "raw", "payload": 1, "lifecycle": {"delay_ms": -1}}, 400, "lifecycle.delay_ms"),
        ({"namespace": "raw", "payload": 1, "lifecycle": {"delay_ms": "5"}}, 400, "lifecycle.delay_ms"),
        ({"namespace": "raw", "payload": 1, "lifecycle": {"delay_ms": 1, "deliver_at": "2030-01-01T00:00:00Z"}},
         400, "either delay_ms or deliver_at"),
        ({"namespace": "raw", "payload": 1, "lifecycle": {"deliver_at": "2030-01-01T00:00:00"}}, 400, "timezone"),
        # digits are not a time, though pydantic would read them as epoch seconds
        ({"namespace": "raw", "payload": 1, "lifecycle": {"deliver_at": "1900000000"}}, 400, "ISO-8601"),
        ({"namespace": "raw", "payload": 1, "lifecycle": {"deliver_at": "tomorrow"}}, 400, "deliver_at"),
        ({"namespace": "raw", "payload": 1, "lifecycle": {"ttl": 3}}, 400, "ttl"),
        ({"namespace": "raw", "payload": 1, "target": {"type": "ftp"}}, 400, "unknown target type"),
        ({"namespace": "raw", "payload": 1, "target": []}, 400, "at least one target"),
        ({"namespace": "nope", "payload": 1}, 404, "unknown namespace 'nope'"),
        # a target override only as the namespace allows (auth contract): none allowed, or
        # another host/topic than the allowed one, or one of a list not allowed
        ({"namespace": "raw", "payload": 1, "target": OUT}, 403, "allowed_target_overrides (it lists none)"),
        ({"namespace": "catalog", "payload": 1, "target": {**OUT, "topic": "elsewhere"}}, 403,
         "target: namespace 'catalog' does not allow this target override"),
        ({"namespace": "catalog", "payload": 1,
          "target": [OUT, {"type": "kafka", "topic": "out", "bootstrap": "evil:9092"}]},
         403, "target.1: namespace 'catalog' does not allow"),
        ({"namespace": "catalog", "payload": {"title": "Heat"}}, 400, "payload.mutations"),
        ({"namespace": "catalog", "payload": [1]}, 400, "payload"),
        ({"namespace": "catalog", "payload": {"mutations": [{"table": "m", "op": "upsert", "key": {"id": 1}}]}},
         400, "op"),
        ({"namespace": "catalog", "payload": {"mutations": [{"table": "m", "op": "put", "key": {}}]}}, 400, "key"),
        ({"namespace": "catalog", "payload": {"mutations": [{"table": "m", "op": "delete", "key": {"id": 1},
                                                             "value": {"a": 1}}]}}, 400, "delete takes no value"),
        ({"namespace": "catalog", "payload": {"mutations": [{"table": "m; drop", "op": "put", "key": {"id": 1}}]}},
         400, "table must match"),
        ({"namespace": "catalog", "payload": {"mutations": [{"table": "m", "op": "put", "key": {"id": 1}},
                                                            {"table": "m", "op": "delete", "key": {"id": 1}}]}},
         400, "same row"),
    ],
)
def test_bad_requests(doc: Any, status: int, fragment: str) -> None:
    with pytest.raises(RequestError) as err:
        parse(doc)
    assert err.value.status == status
    assert fragment in err.value.message


def test_oversized_entry_is_413() -> None:
    with pytest.raises(RequestError) as err:
        parse({"namespace": "raw", "payload": "x" * 5000}, max_bytes=4096)
    assert err.value.status == 413
    assert "limit is 4096" in err.value.message


def test_write_clock_is_strictly_increasing() -> None:
    clock = WriteClock()
    stamps = [clock.now_us() for _ in range(10_000)]
    assert all(b > a for a, b in itertools.pairwise(stamps))


def test_undecodable_records_are_refused() -> None:
    from walstream.entry import EntryDecodeError

    for raw in (None, b"", b"not json", orjson.dumps({"v": 99}), orjson.dumps({"v": 1, "id": "x"})):
        with pytest.raises(EntryDecodeError):
            Entry.decode(raw)


def test_retry_policy_can_be_overridden_per_entry() -> None:
    e = parse({"namespace": "raw", "payload": 1, "retry": {"max_attempts": 2, "initial_delay_ms": 50}})
    assert e.retry is not None and e.retry["max_attempts"] == 2 and e.retry["multiplier"] == 2.0
    with pytest.raises(RequestError, match=r"retry\.max_attempts"):
        parse({"namespace": "raw", "payload": 1, "retry": {"max_attempts": 0}})


@pytest.mark.parametrize("when", ["2300-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2286-11-20T17:46:40Z"])
def test_deliver_at_past_the_schedule_limit_is_refused_naming_it(when: str) -> None:
    with pytest.raises(RequestError) as err:
        parse({"namespace": "raw", "payload": 1, "lifecycle": {"deliver_at": when}})
    assert err.value.status == 400 and "2286-11-20T17:46:40Z" in err.value.message


def test_deliver_at_just_before_the_schedule_limit_is_accepted() -> None:
    e = parse({"namespace": "raw", "payload": 1, "lifecycle": {"deliver_at": "2286-11-20T17:46:39.999Z"}})
    assert e.due_at_ms == 10**13 - 1


def test_an_item_refused_by_strict_reading_is_a_400_naming_its_problem() -> None:
    from walstream.strict_json import loads_batch

    body = (
        b'{"entries": [{"namespace": "catalog", "id": "big", "payload": {"mutations": [{"table": "movies",'
        b' "op": "put", "key": {"id": 18446744073709551617}}]}}, {"namespace": "raw", "payload": 1}]}'
    )
    bad, good = loads_batch(body)["entries"]
    with pytest.raises(RequestError) as err:
        parse(bad)
    assert err.value.status == 400
    assert err.value.message == (
        "payload.mutations.0.key.id: integer 18446744073709551617 is outside the 64-bit range; send it as a string"
    )
    assert parse(good).payload == 1


def test_a_value_the_envelope_cannot_encode_is_a_400() -> None:
    # strict reading keeps these out of the API; a caller that skips it still gets a 400,
    # never an exception that would fail a whole batch
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    for payload, fragment in [(2**70, "64-bit"), (deep, "Recursion"), ("\ud800", "surrogates")]:
        with pytest.raises(RequestError) as err:
            parse({"namespace": "raw", "payload": payload})
        assert err.value.status == 400 and "cannot be encoded" in err.value.message
        assert fragment in err.value.message, err.value.message


def test_retry_override_numbers_are_not_coerced() -> None:
    for retry in ({"max_attempts": True}, {"max_attempts": "3"}, {"max_attempts": 3.0}, {"jitter": float("inf")}):
        with pytest.raises(RequestError, match=r"retry\."):
            parse({"namespace": "raw", "payload": 1, "retry": retry})


@pytest.mark.parametrize("value", [1.0, 1.5, True, False])
def test_float_and_boolean_key_values_are_refused(value: Any) -> None:
    doc = {"mutations": [{"table": "movies", "op": "put", "key": {"id": value}, "value": {"title": "x"}}]}
    with pytest.raises(RequestError) as err:
        parse({"namespace": "catalog", "payload": doc})
    assert err.value.status == 400 and "string or an integer" in err.value.message


@pytest.mark.parametrize(
    "when, due_ms",
    [
        ("2026-11-30T10:00:00.123Z", 1_796_032_800_123),
        ("2026-11-30T10:00:00.1234Z", 1_796_032_800_124),
        ("2026-11-30T10:00:00.123000001Z", 1_796_032_800_124),
        ("2026-11-30T10:00:00.123000000Z", 1_796_032_800_123),
        ("2026-11-30T10:00:00.999999999Z", 1_796_032_801_000),
        ("2026-11-30T11:00:00.000001+01:00", 1_796_032_800_001),
    ],
)
def test_deliver_at_is_rounded_up_to_the_millisecond_never_down(when: str, due_ms: int) -> None:
    e = parse({"namespace": "raw", "payload": 1, "lifecycle": {"deliver_at": when}})
    assert e.due_at_ms == due_ms


def test_delay_is_counted_from_the_write_time_rounded_up() -> None:
    for _ in range(200):
        e = parse({"namespace": "raw", "payload": 1, "lifecycle": {"delay_ms": 5}})
        assert e.due_at_ms is not None and e.due_at_ms * 1000 >= e.written_at_us + 5000


def test_backoff_of_a_steep_policy_never_overflows() -> None:
    from walstream.delivery.retry import backoff_ms
    from walstream.namespaces.model import RetryPolicy

    policy = RetryPolicy(multiplier=100, max_attempts=1000, max_delay_ms=60_000, jitter=0)
    assert backoff_ms(policy, 999) == 60_000


def test_an_allowed_override_is_accepted_however_it_is_spelt() -> None:
    # defaults filled in: {"type": "kafka", "topic": "out"} and the same with bootstrap null match
    e = parse({"namespace": "catalog", "payload": 1, "target": [{**OUT, "bootstrap": None}, {"type": "noop"}]})
    assert e.targets is not None and len(e.targets) == 2


def test_jitter_adds_a_uniform_delay_drawn_at_write_time_never_less() -> None:
    """lifecycle.jitter_ms spreads a burst: each entry's due time gets 0..jitter_ms more, on
    top of delay_ms, deliver_at, or now; never earlier than asked."""
    extra = []
    for _ in range(400):
        e = parse({"namespace": "raw", "payload": 1, "lifecycle": {"delay_ms": 60_000, "jitter_ms": 30_000}})
        assert e.due_at_ms is not None
        extra.append(e.due_at_ms - (-(-e.written_at_us // 1000) + 60_000))
    assert min(extra) >= 0 and max(extra) <= 30_000
    assert max(extra) - min(extra) > 20_000  # spread over the range, not one value
    alone = parse({"namespace": "raw", "payload": 1, "lifecycle": {"jitter_ms": 1000}})
    assert alone.due_at_ms is not None and 0 <= alone.due_at_ms - -(-alone.written_at_us // 1000) <= 1000
    at = parse({"namespace": "raw", "payload": 1, "lifecycle": {"deliver_at": "2030-01-01T00:00:00Z", "jitter_ms": 5}})
    assert 1893456000000 <= (at.due_at_ms or 0) <= 1893456000005
    none = parse({"namespace": "raw", "payload": 1, "lifecycle": {"jitter_ms": 0}})
    assert none.due_at_ms is None


@pytest.mark.parametrize("jitter", [-1, 1.5, True, "10"])
def test_a_jitter_that_is_no_whole_number_of_ms_is_refused(jitter: Any) -> None:
    with pytest.raises(RequestError) as refused:
        parse({"namespace": "raw", "payload": 1, "lifecycle": {"jitter_ms": jitter}})
    assert refused.value.status == 400 and "jitter_ms" in str(refused.value)


def test_a_jitter_past_the_schedule_limit_is_refused() -> None:
    with pytest.raises(RequestError, match="with its jitter"):
        parse({"namespace": "raw", "payload": 1,
               "lifecycle": {"deliver_at": "2286-11-20T17:46:39.999Z", "jitter_ms": 10_000}})


def test_the_same_write_with_jitter_has_the_same_digest_whatever_was_drawn() -> None:
    """A client retrying a write answered UNKNOWN sends the same request: it must be
    recognised as the same entry, though each parse draws another jitter."""
    for lifecycle in ({"deliver_at": "2030-01-01T00:00:00Z", "jitter_ms": 600_000},
                      {"delay_ms": 1000, "jitter_ms": 600_000}, {"jitter_ms": 600_000}):
        doc = {"namespace": "raw", "id": "idem1", "payload": {"a": 1}, "lifecycle": lifecycle}
        first, again = parse(doc), parse(doc)
        assert first.digest == again.digest, lifecycle
    draws = {parse({"namespace": "raw", "payload": 1, "lifecycle": {"deliver_at": "2030-01-01T00:00:00Z",
                                                                    "jitter_ms": 600_000}}).due_at_ms
             for _ in range(20)}
    assert len(draws) > 1  # while the due times differ


def test_a_jitter_that_could_pass_the_schedule_limit_is_always_refused() -> None:
    for _ in range(20):
        with pytest.raises(RequestError, match="with its jitter"):
            parse({"namespace": "raw", "payload": 1,
                   "lifecycle": {"deliver_at": "2286-11-20T17:46:38Z", "jitter_ms": 5000}})


# -- mutation groups ---------------------------------------------------------------------------


def test_a_marker_makes_the_clock_skip_past_its_group() -> None:
    clock = WriteClock()
    marker, _ = parse_log_request({"namespace": "catalog", "group": {"id": "g", "commit": True, "size": 5000}},
                                  lookup=lookup, clock=clock, max_entry_bytes=1 << 20)
    later, _ = parse_log_request({"namespace": "raw", "payload": 1}, lookup=lookup, clock=clock,
                                 max_entry_bytes=1 << 20)
    # members are written at the marker's time + seq: a later write of this worker is later still
    assert later.written_at_us > marker.written_at_us + 4999


def test_a_group_member_is_keyed_by_its_group_and_a_marker_needs_no_payload() -> None:
    m = parse({"namespace": "catalog", "group": {"id": "g-17", "seq": 0}, "payload": PUT})
    assert (m.key, m.group, m.group_seq) == ("g-17", {"id": "g-17", "seq": 0}, 0)
    c = parse({"namespace": "catalog", "group": {"id": "g-17", "commit": True, "size": 2}})
    assert (c.key, c.payload, c.group, c.group_seq) == ("g-17", None, {"id": "g-17", "commit": True, "size": 2}, None)


@pytest.mark.parametrize(("doc", "words"), [
    ({"group": {"id": "g", "seq": 0}, "payload": PUT, "key": "k"}, "key: a group's entries are keyed by the group"),
    ({"group": {"id": "g", "seq": 0}, "payload": PUT, "lifecycle": {"delay_ms": 5}}, "cannot be delayed"),
    ({"group": {"id": "g", "seq": 0}, "payload": "x", "target": {"type": "noop"}}, "cannot name their own"),
    ({"group": {"id": "g", "commit": True, "size": 2}, "payload": PUT}, "carries no payload"),
    ({"group": {"id": "g", "commit": True, "size": 2}, "retry": {"max_attempts": 2}}, "no retry policy"),
    ({"group": {"id": "g", "seq": 0}}, "payload is required"),
    ({"group": {"id": "g"}, "payload": PUT}, "a member gives seq"),
    ({"group": {"id": "g", "seq": 0, "size": 3}, "payload": PUT}, "a member gives seq"),
    ({"group": {"id": "g", "commit": True}}, "commit: true and size"),
    ({"group": {"id": "g", "commit": False, "size": 1}}, "commit: true and size"),
    ({"group": {"id": "g", "commit": True, "size": 0}}, "group.size"),
    ({"group": {"id": "g", "seq": -1}, "payload": PUT}, "group.seq"),
    ({"group": {"id": "g", "seq": 100_000}, "payload": PUT}, "group.seq"),
    ({"group": {"id": "", "seq": 0}, "payload": PUT}, "group.id"),
    ({"group": {"id": "g", "seq": "1"}, "payload": PUT}, "group.seq"),
    ({"group": {"id": "g", "seq": 0, "extra": 1}, "payload": PUT}, "group.extra"),
    ({"group": {"id": "..", "seq": 0}, "payload": PUT}, "must not be '.' or '..'"),
    ({"group": {"id": "\x00g", "seq": 0}, "payload": PUT}, "start with a NUL"),
    ({"group": {"id": "g", "commit": None, "seq": 0}}, "payload is required"),
])
def test_bad_group_writes_are_refused_naming_the_problem(doc: dict[str, Any], words: str) -> None:
    with pytest.raises(RequestError) as err:
        parse({"namespace": "catalog", **doc})
    assert err.value.status == 400
    assert words in err.value.message


def test_a_group_record_from_another_producer_is_checked_at_admission() -> None:
    from walstream.entry import EntryDecodeError

    base = {"v": 1, "id": "x", "ns": "catalog", "key": "g", "ts": 1, "payload": PUT}
    assert Entry.from_doc({**base, "group": {"id": "g", "seq": 3}}).group_seq == 3
    for group, words in [({"id": "other", "seq": 0}, "keyed by the group id"), ({"id": "g", "seq": -1}, "group.seq"),
                         ({"id": "g", "commit": True, "size": 0}, "commit marker"), ({"id": "g"}, "'group' must be")]:
        with pytest.raises(EntryDecodeError, match=words):
            Entry.from_doc({**base, "group": group})
    with pytest.raises(EntryDecodeError, match="cannot be delayed"):
        Entry.from_doc({**base, "due": 5, "group": {"id": "g", "seq": 0}})


def test_a_changed_namespace_s_targets_decide_at_once_what_its_payload_must_be() -> None:
    """The target types are read once per namespace config: a change (a new config object,
    even of the same name) is followed by the next write, either way."""
    configs = {"shop": parse_namespace({"name": "shop", "targets": [{"type": "noop"}]})}

    def write(payload: Any) -> Entry:
        entry, _ = parse_log_request({"namespace": "shop", "payload": payload}, lookup=configs.get,
                                     clock=WriteClock(), max_entry_bytes=1 << 20)
        return entry

    assert write("anything").payload == "anything"
    configs["shop"] = parse_namespace({"name": "shop", "targets": [{"type": "cassandra", "keyspace": "shop"}]})
    with pytest.raises(RequestError) as err:
        write("anything")
    assert err.value.status == 400 and "mutations" in err.value.message
    assert write(PUT).payload == PUT
    configs["shop"] = parse_namespace({"name": "shop", "targets": [{"type": "noop"}]})
    assert write("anything again").payload == "anything again"
