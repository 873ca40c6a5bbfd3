"""The WAL entry: what the write API makes durable and the delivery agents apply.

An entry is encoded once, at write time, as an orjson document (the Kafka record value);
its Kafka key is the entry's ``key`` so that every entry of one key lands in one partition,
in write order.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import orjson
from pydantic import TypeAdapter, ValidationError

from walstream import strict_json
from walstream.namespaces.model import RetryPolicy, TargetConfig, format_validation_error
from walstream.settings import REGION_RE
from walstream.tables.schedule import MAX_DUE_MS

ENVELOPE_VERSION = 1

#: What a record derived from an entry adds to the entry it embeds: a timer or held row
#: (table keys holding the namespace, id and key, the target config, the last error, the
#: source), a dead letter or dead-letter index row (error class, message, times). Error
#: texts are cut to walstream.targets.base.MAX_ERROR_CHARS, so this bound holds.
DERIVED_OVERHEAD_BYTES = 64 * 1024

#: write times and due times are Kafka-style signed 64-bit numbers (Cassandra's USING
#: TIMESTAMP and Elasticsearch's external versions are both signed 64-bit)
INT64_MAX = 2**63 - 1
#: write times are shown as dates: they must be ones (0001-01-01 .. 9999-12-31, in µs / ms)
MAX_WRITE_TIME_US = 253_402_300_799_999_999
MIN_DUE_MS = -62_135_596_800_000


_TARGETS: TypeAdapter[list[TargetConfig]] = TypeAdapter(list[TargetConfig])

#: the longest ``digest`` an envelope may carry (the write API's are 64 hex characters); it
#: is copied into the entry's state document, so it must stay small
MAX_DIGEST_CHARS = 128


class EntryDecodeError(ValueError):
    """A record on a WAL topic is not a walstream entry (it is dead-lettered, never dropped)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One durable intent.

    ``written_at_us`` is the original write time in microseconds since the epoch, assigned
    by the worker that accepted the write; targets use it as the write timestamp / external
    version, so that the last write per key wins whatever the delivery order.
    ``due_at_ms`` is the earliest delivery time (epoch milliseconds), ``None`` for "now".
    ``targets`` is an optional per-entry override of the namespace's targets (raw config
    dicts, validated at write time).
    """

    id: str
    namespace: str
    key: str
    payload: Any
    written_at_us: int
    due_at_ms: int | None = None
    targets: list[dict[str, Any]] | None = field(default=None)
    #: per-entry override of the namespace's retry policy (validated at write time)
    retry: dict[str, Any] | None = None
    #: the digest of the write request that made this entry
    #: (:func:`walstream.requests.request_digest`): a later write of the same id with
    #: another digest asks for a different entry and is refused. None in entries written
    #: before digests existed, and in records from other producers.
    digest: str | None = None
    #: a member of a mutation group (``{"id": G, "seq": N}``) or its commit marker
    #: (``{"id": G, "commit": True, "size": S}``); see walstream.delivery.groups
    group: dict[str, Any] | None = None
    #: the region the entry was written in (walstream.replication); None outside replication.
    #: Only that region forwards it to the others.
    origin: str | None = None

    @property
    def order_key(self) -> str:
        """The key per-key order follows: the entry's key, or for a group's members one no
        client key can equal (a NUL first), so that only the group's own members queue there."""
        if self.group is not None:
            return "\x00group\x00" + str(self.group["id"])
        return self.key

    @property
    def group_seq(self) -> int | None:
        """The member's place in its group (None: not a member)."""
        return None if self.group is None or self.group.get("commit") else int(self.group["seq"])

    def encode(self) -> bytes:
        doc: dict[str, Any] = {
            "v": ENVELOPE_VERSION,
            "id": self.id,
            "ns": self.namespace,
            "key": self.key,
            "ts": self.written_at_us,
            "payload": self.payload,
        }
        if self.due_at_ms is not None:
            doc["due"] = self.due_at_ms
        if self.targets is not None:
            doc["targets"] = self.targets
        if self.retry is not None:
            doc["retry"] = self.retry
        if self.digest is not None:
            doc["digest"] = self.digest
        if self.group is not None:
            doc["group"] = self.group
        if self.origin is not None:
            doc["origin"] = self.origin
        return orjson.dumps(doc)

    @classmethod
    def decode(cls, data: bytes | None) -> Entry:
        return cls.from_doc(parse_record(data))

    @classmethod
    def from_doc(cls, doc: Any) -> Entry:
        """The entry of an already parsed envelope document.

        Records reach WAL topics from other producers too, so every field is checked here,
        once, at admission: a record that passes can be scheduled, retried and delivered
        without any later step failing on its shape. Raises :class:`EntryDecodeError`
        naming the field otherwise (the record is dead-lettered, never dropped).
        """
        if not isinstance(doc, dict):
            raise EntryDecodeError("not a walstream entry: the record is not a JSON object")
        if doc.get("v") != ENVELOPE_VERSION:
            raise EntryDecodeError(f"unsupported envelope version {doc.get('v')!r}")
        for name in ("id", "ns", "key"):
            if not isinstance(doc.get(name), str) or not doc[name]:
                raise EntryDecodeError(f"invalid entry: {name!r} must be a non-empty string")
        if "payload" not in doc:
            raise EntryDecodeError("invalid entry: 'payload' is missing")
        ts = doc.get("ts")
        if not _is_int(ts) or not 0 <= ts <= MAX_WRITE_TIME_US:
            raise EntryDecodeError(
                f"invalid entry: 'ts' must be a write time in µs from 0 to {MAX_WRITE_TIME_US} (9999-12-31)"
            )
        due = doc.get("due")
        if due is not None and (not _is_int(due) or not MIN_DUE_MS <= due <= MAX_DUE_MS):
            raise EntryDecodeError(
                f"invalid entry: 'due' must be epoch milliseconds no later than {MAX_DUE_MS} (2286-11-20)"
            )
        targets = doc.get("targets")
        if targets is not None and not (
            isinstance(targets, list) and targets and all(isinstance(t, dict) for t in targets)
        ):
            raise EntryDecodeError("invalid entry: 'targets' must be a non-empty list of target configs")
        if targets is not None:
            try:
                _TARGETS.validate_python(targets)
            except ValidationError as exc:
                raise EntryDecodeError(f"invalid entry: {format_validation_error(exc, prefix='targets.')}") from None
        retry = doc.get("retry")
        if retry is not None:
            try:
                RetryPolicy.model_validate(retry)
            except ValidationError as exc:
                raise EntryDecodeError(f"invalid entry: {format_validation_error(exc, prefix='retry.')}") from None
        digest = doc.get("digest")
        if digest is not None and not (isinstance(digest, str) and 0 < len(digest) <= MAX_DIGEST_CHARS):
            raise EntryDecodeError(
                f"invalid entry: 'digest' must be a non-empty string of at most {MAX_DIGEST_CHARS} characters"
            )
        group = doc.get("group")
        if group is not None:
            _check_group(doc, group)
        origin = doc.get("origin")
        if origin is not None and not (isinstance(origin, str) and REGION_RE.match(origin)):
            raise EntryDecodeError("invalid entry: 'origin' must be a region name (a-z, 0-9, '-'; at most 32)")
        return cls(
            id=doc["id"],
            namespace=doc["ns"],
            key=doc["key"],
            payload=doc["payload"],
            written_at_us=ts,
            due_at_ms=due,
            targets=targets,
            retry=retry,
            digest=digest,
            group=group,
            origin=origin,
        )

    @property
    def key_bytes(self) -> bytes:
        return self.key.encode()

    def derived_record_bytes(self, value_bytes: int) -> int:
        """An upper bound of the size of any table row or dead letter derived from this entry,
        whose encoded record is ``value_bytes`` long."""
        return value_bytes + len(self.id.encode()) + len(self.key.encode()) + len(self.namespace) + (
            DERIVED_OVERHEAD_BYTES
        )


def cancellation_record(namespace: str, entry_id: str, key: str, origin: str, at_us: int) -> bytes:
    """A WAL record that cancels entry ``entry_id`` (walstream.replication): what a region
    sends to ``wal.<namespace>`` of its peers when an entry is cancelled there. Keyed by the
    entry's key, it lands in the entry's partition, after the entry if it was forwarded
    before. It has no ``payload``: a worker that does not know it refuses it as an entry
    (dead-lettered, never applied)."""
    return orjson.dumps({"v": ENVELOPE_VERSION, "cancel": True, "id": entry_id, "ns": namespace, "key": key,
                         "ts": at_us, "origin": origin})


def cancelled_by(doc: Any) -> tuple[str, str] | None:
    """``(namespace, entry id)`` when ``doc`` is a :func:`cancellation_record`, else None.
    Raises :class:`EntryDecodeError` for one that is malformed."""
    if not isinstance(doc, dict) or doc.get("cancel") is not True:
        return None
    if doc.get("v") != ENVELOPE_VERSION or "payload" in doc:
        raise EntryDecodeError("invalid cancellation: it has a payload, or an unsupported envelope version")
    for name in ("id", "ns", "key"):
        if not isinstance(doc.get(name), str) or not doc[name]:
            raise EntryDecodeError(f"invalid cancellation: {name!r} must be a non-empty string")
    return doc["ns"], doc["id"]


#: Number literals orjson may read differently from walstream.strict_json, as classes of
#: bytes: digits and '.' become '0', 'e'/'E' become 'e', '+'/'-' become '-'. Such a literal
#: always shows one of :data:`_SUSPECT_RUNS` (a superset: a string may show one too):
#: - 17 digits/dots: an integer of 19+ digits (beyond 64 bits orjson makes it a float), or a
#:   fraction with 16+ significant digits (more than a double keeps);
#: - 16 digits then an exponent: a mantissa of 16+ digits without a '.';
#: - a digit, an exponent of 3+ digits: a value that may be beyond a double's normal range
#:   (with a shorter exponent that takes a mantissa of 200+ digits: the first run).
#: Measured on a ~1 KB record: translate + these checks ~3.6 µs, orjson.loads ~3 µs, a
#: regex for the same runs ~48 µs, strict_json.loads ~16 µs (a shared machine: rough).
_NUMBER_CLASSES = bytes.maketrans(b"0123456789.Ee+-", b"00000000000ee--")
_SUSPECT_RUNS = (b"0" * 17, b"0" * 16 + b"e", b"0e000", b"0e-000")


def parse_record(data: bytes | None) -> Any:
    """The JSON document of a WAL record. Records reach WAL topics from other producers too:
    a value orjson would change silently (an integer beyond 64 bits becomes a float, a float
    literal a double cannot hold exactly is rounded) is refused, as the write API refuses it.
    The strict reading (walstream.strict_json, which also refuses duplicate keys) runs only
    for records holding such a number literal (see :data:`_SUSPECT_RUNS`), where orjson's may
    differ. Raises :class:`EntryDecodeError` naming the problem."""
    if data is None:
        raise EntryDecodeError("record has no value")
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as bad:
            # orjson calls every undecodable byte "surrogates not allowed": say what it is
            raise EntryDecodeError(
                f"not a walstream entry: the record is not valid UTF-8 JSON ({bad.reason} at byte {bad.start})"
            ) from None
        raise EntryDecodeError(f"not a walstream entry: {exc}") from None
    classes = data.translate(_NUMBER_CLASSES)
    if any(run in classes for run in _SUSPECT_RUNS):
        try:
            doc = strict_json.loads(data, max_depth=STRICT_RECORD_DEPTH)
        except strict_json.StrictJSONError as exc:
            raise EntryDecodeError(f"invalid entry: {exc}") from None
    return doc


#: nesting accepted in records from other producers (orjson's own limit is 1024)
STRICT_RECORD_DEPTH = 1000


#: the most members a mutation group may have (and the highest ``seq`` + 1)
MAX_GROUP_SIZE = 100_000
#: the longest group id
MAX_GROUP_ID_CHARS = 256


def _check_group(doc: dict[str, Any], group: Any) -> None:
    """A group member or marker as walstream writes it (another producer's may be anything)."""
    if not isinstance(group, dict) or not isinstance(group.get("id"), str) or not group["id"]:
        raise EntryDecodeError("invalid entry: 'group' must be an object with a non-empty string 'id'")
    if len(group["id"]) > MAX_GROUP_ID_CHARS:
        raise EntryDecodeError(f"invalid entry: group.id is longer than {MAX_GROUP_ID_CHARS} characters")
    if doc["key"] != group["id"]:
        raise EntryDecodeError("invalid entry: a group's entries are keyed by the group id")
    if doc.get("due") is not None or doc.get("targets") is not None:
        raise EntryDecodeError("invalid entry: a group's entries cannot be delayed or name their own targets")
    if set(group) == {"id", "seq"}:
        if not _is_int(group["seq"]) or not 0 <= group["seq"] < MAX_GROUP_SIZE:
            raise EntryDecodeError(f"invalid entry: group.seq must be an integer from 0 to {MAX_GROUP_SIZE - 1}")
    elif set(group) == {"id", "commit", "size"}:
        if group["commit"] is not True or not _is_int(group["size"]) or not 1 <= group["size"] <= MAX_GROUP_SIZE:
            raise EntryDecodeError(
                f"invalid entry: a commit marker has commit true and a size from 1 to {MAX_GROUP_SIZE}"
            )
        if doc.get("payload") is not None:
            raise EntryDecodeError("invalid entry: a commit marker carries no payload")
    else:
        raise EntryDecodeError("invalid entry: 'group' must be {id, seq} (a member) or {id, commit, size} (its marker)")


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


class WriteClock:
    """Strictly increasing microsecond timestamps for one worker process.

    Two writes in the same microsecond (common within one batch) must still order, because
    targets resolve conflicts by this value: a put followed by a delete of the same key in
    one batch must end deleted.
    """

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def now_us(self) -> int:
        with self._lock:
            now = time.time_ns() // 1000
            self._last = now if now > self._last else self._last + 1
            return self._last

    def skip(self, span_us: int) -> None:
        """Later timestamps are past the next ``span_us`` µs (a mutation group's members are
        written at its marker's time plus their seq: no later write of this worker falls
        among them)."""
        with self._lock:
            self._last += span_us
