"""Validation of write requests (``POST /v1/log`` and each item of ``/v1/log/batch``).

Turns one JSON object into an :class:`~walstream.entry.Entry` or raises
:class:`RequestError` carrying the HTTP status and a message naming the problem. Nothing is
written for a request that fails here.
"""

from __future__ import annotations

import hashlib
import random
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from walstream.entry import MAX_GROUP_ID_CHARS, MAX_GROUP_SIZE, MIN_DUE_MS, Entry, WriteClock
from walstream.mutations import MutationError, parse_mutations
from walstream.namespaces.model import (
    MUTATION_TARGET_TYPES,
    NamespaceConfig,
    RetryPolicy,
    TargetConfig,
    format_validation_error,
)
from walstream.strict_json import Refused
from walstream.tables.schedule import MAX_DUE_MS

#: the longest delay accepted: a year. Longer is almost certainly a unit mistake.
MAX_DELAY_MS = 366 * 86_400_000


#: the latest ``deliver_at`` the schedule can order (ISO-8601, for error messages)
LATEST_DELIVER_AT = datetime.fromtimestamp((MAX_DUE_MS + 1) / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: digits of a fraction of a second past microseconds (which datetime drops)
_SUB_MICROSECONDS = re.compile(r"[.,]\d{6}(\d+)")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _deliver_at_ms(when: datetime, text: Any) -> int:
    """``when`` in epoch milliseconds, rounded up, exactly (no float): a time given to the
    nanosecond (``...:00.123000001Z``, which datetime cuts to microseconds) is due after it."""
    us = (when - _EPOCH) // timedelta(microseconds=1)
    sub = _SUB_MICROSECONDS.search(text) if isinstance(text, str) else None
    if sub is not None and int(sub.group(1)) > 0:
        us += 1
    return _ceil_div(us, 1000)


class RequestError(ValueError):
    """A write request is rejected; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


#: what an ISO-8601 date and time starts with; pydantic would also read a string of digits
#: as epoch seconds ("1700000000"), which no one writing a time means
_ISO_START = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]")


def time_text(v: Any) -> Any:
    if not isinstance(v, str) or not _ISO_START.match(v):
        raise ValueError("expected an ISO-8601 time as a string, e.g. 2026-11-26T12:00:00Z")
    return v


#: a time given as an ISO-8601 string. Only a string: pydantic's lax parsing would read a
#: number as epoch seconds, which the API's description (``format: date-time``) does not allow
#: and no client means. The timezone is checked where it is used, with a message that says so.
TimeText = Annotated[datetime, BeforeValidator(time_text)]


class Lifecycle(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    delay_ms: int | None = Field(default=None, ge=0, le=MAX_DELAY_MS, strict=True)
    deliver_at: TimeText | None = None
    #: a uniform extra delay from 0 to this many ms, drawn at write time, on top of
    #: ``delay_ms`` or ``deliver_at`` (or of now): spreads a burst of entries due together
    jitter_ms: int | None = Field(default=None, ge=0, le=MAX_DELAY_MS, strict=True)

    @model_validator(mode="after")
    def _one_of(self) -> Lifecycle:
        if self.delay_ms is not None and self.deliver_at is not None:
            raise ValueError("give either delay_ms or deliver_at, not both")
        if self.deliver_at is not None and self.deliver_at.tzinfo is None:
            raise ValueError("deliver_at needs a timezone (e.g. 2026-11-26T12:00:00Z)")
        return self


class GroupRef(BaseModel):
    """A write's place in a mutation group: ``{id, seq}`` for a member, ``{id, commit: true,
    size}`` for the group's commit marker (walstream.delivery.groups)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=MAX_GROUP_ID_CHARS, strict=True)
    seq: int | None = Field(default=None, ge=0, lt=MAX_GROUP_SIZE, strict=True)
    commit: bool | None = Field(default=None, strict=True)
    size: int | None = Field(default=None, ge=1, le=MAX_GROUP_SIZE, strict=True)

    @model_validator(mode="after")
    def _member_or_marker(self) -> GroupRef:
        if self.id in (".", "..") or self.id.startswith("\x00"):
            # "." and ".." cannot be a path segment of GET /v1/groups/{ns}/{id}; a NUL first
            # is kept for walstream's own keys
            raise ValueError("group.id must not be '.' or '..' or start with a NUL character")
        if self.commit is None:
            if self.seq is None or self.size is not None:
                raise ValueError("a member gives seq (and no size); a commit marker gives commit: true and size")
        elif self.commit is not True or self.size is None or self.seq is not None:
            raise ValueError("a commit marker gives commit: true and size (and no seq)")
        return self

    def as_doc(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class LogRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str = Field(min_length=1, max_length=63, strict=True)
    id: str | None = Field(default=None, min_length=1, max_length=256, strict=True)
    key: str | None = Field(default=None, min_length=1, max_length=4096, strict=True)
    lifecycle: Lifecycle | None = None
    payload: Any = None  # required (see _payload_present) except on a commit marker
    target: dict[str, Any] | list[dict[str, Any]] | None = None
    #: overrides the namespace's retry policy for this entry
    retry: RetryPolicy | None = None
    #: a member of a mutation group, or its commit marker
    group: GroupRef | None = None

    @model_validator(mode="before")
    @classmethod
    def _payload_present(cls, data: Any) -> Any:
        if isinstance(data, dict) and "payload" not in data:
            marker = isinstance(data.get("group"), dict) and data["group"].get("commit") is not None
            if not marker:  # a commit marker carries none
                raise ValueError("payload is required")
        return data


_targets_adapter: TypeAdapter[list[TargetConfig]] = TypeAdapter(list[TargetConfig])


def parse_log_request(
    doc: Any,
    *,
    lookup: Callable[[str], NamespaceConfig | None],
    clock: WriteClock,
    max_entry_bytes: int,
    region: str | None = None,
) -> tuple[Entry, bytes]:
    """Validate one request; return the entry and its encoded record value.

    ``doc`` comes from :mod:`walstream.strict_json` (a batch item it refused is a
    :class:`~walstream.strict_json.Refused`). Every problem of one entry is a
    :class:`RequestError`, never another exception, so one bad entry of a batch fails alone.

    400: refused by strict JSON reading (duplicate key, number out of range, nested deeper than
    :data:`~walstream.strict_json.MAX_DEPTH` levels, ...), not an object, unknown/missing/
    mistyped fields, bad lifecycle, bad target override, payload not a mutation payload where a
    target needs one, a value the envelope cannot encode. 403: a target override the
    namespace does not list in ``allowed_target_overrides``. 404: unknown namespace.
    413: the encoded entry is larger than ``max_entry_bytes``.
    """
    if isinstance(doc, Refused):
        raise RequestError(400, str(doc.error))
    if not isinstance(doc, dict):
        raise RequestError(400, "an entry must be a JSON object")
    try:
        req = LogRequest.model_validate(doc)
    except ValidationError as exc:
        raise RequestError(400, format_validation_error(exc)) from None
    if req.key is not None and req.key.startswith("\x00"):
        raise RequestError(400, "key: must not start with a NUL character")
    if req.group is not None:
        _check_group_request(req)
    ns = lookup(req.namespace)
    if ns is None:
        raise RequestError(404, f"unknown namespace {req.namespace!r}")
    if req.group is not None and ns.peers_of(region):
        # its members and marker would be forwarded one by one, as the peer applies them
        raise RequestError(400, f"group: namespace {ns.name!r} is replicated, and mutation groups are not "
                           "replicated yet; write groups to a namespace without replication")

    targets_override: list[dict[str, Any]] | None = None
    target_types = _target_types(ns)
    if req.target is not None:
        raw = req.target if isinstance(req.target, list) else [req.target]
        try:
            parsed = _targets_adapter.validate_python(raw)
        except ValidationError as exc:
            raise RequestError(400, format_validation_error(exc, prefix="target.")) from None
        if not parsed:
            raise RequestError(400, "target: give at least one target")
        allowed = [t.model_dump(mode="json") for t in ns.allowed_target_overrides]
        for n, t in enumerate(parsed):
            if t.model_dump(mode="json") not in allowed:
                where = f"target.{n}" if isinstance(req.target, list) else "target"
                raise RequestError(
                    403,
                    f"{where}: namespace {ns.name!r} does not allow this target override; an entry may name only "
                    "a target listed in the namespace's allowed_target_overrides"
                    + ("" if allowed else " (it lists none)"),
                )
        targets_override = [t.model_dump(mode="json") for t in parsed]
        target_types = frozenset(t.type for t in parsed)

    marker = req.group is not None and req.group.commit is not None
    if target_types & MUTATION_TARGET_TYPES and not marker:
        try:
            parse_mutations(req.payload, for_elasticsearch="elasticsearch" in target_types)
        except MutationError as exc:
            raise RequestError(400, str(exc)) from None

    written_at_us = clock.now_us()
    if marker and req.group is not None and req.group.size is not None:
        clock.skip(req.group.size)  # its members are written at written_at_us + seq
    due_at_ms: int | None = None
    if req.lifecycle is not None:
        if req.lifecycle.delay_ms is not None:
            # due times are whole milliseconds, rounded up: never before the time asked for
            due_at_ms = _ceil_div(written_at_us, 1000) + req.lifecycle.delay_ms
        elif req.lifecycle.deliver_at is not None:
            due_at_ms = _deliver_at_ms(req.lifecycle.deliver_at, doc["lifecycle"]["deliver_at"])
            if due_at_ms > MAX_DUE_MS:
                raise RequestError(
                    400, f"lifecycle.deliver_at: must be before {LATEST_DELIVER_AT} (the latest schedulable time)"
                )
            # before 0001-01-01T00:00Z (+14:00 reaches there): due long ago is due now, and the
            # envelope holds no earlier time (Entry.from_doc would refuse the record at delivery)
            due_at_ms = max(due_at_ms, MIN_DUE_MS)
    asked_due_ms = due_at_ms  # before the jitter: what the request asks for (its digest)
    if req.lifecycle is not None and req.lifecycle.jitter_ms:
        base_ms = due_at_ms if due_at_ms is not None else _ceil_div(written_at_us, 1000)
        # never earlier than asked: the jitter only adds
        base_ms = max(base_ms, _ceil_div(written_at_us, 1000))
        if base_ms + req.lifecycle.jitter_ms > MAX_DUE_MS:  # refused whatever the draw
            raise RequestError(400, f"lifecycle: with its jitter the entry could be due after {LATEST_DELIVER_AT} "
                               "(the latest schedulable time)")
        due_at_ms = base_ms + random.randint(0, req.lifecycle.jitter_ms)

    entry_id = req.id or str(uuid.uuid4())
    # a group is keyed by its id: all of it lands in one partition
    key = req.group.id if req.group is not None else (req.key or entry_id)
    digest: str | None = None
    if req.id is not None:  # only a client-chosen id can be written again
        try:
            digest = request_digest(req, key=key, due_at_ms=asked_due_ms, targets=targets_override)
        except orjson.JSONEncodeError as exc:
            raise RequestError(400, f"entry cannot be encoded: {exc}") from None
    entry = Entry(
        id=entry_id,
        namespace=ns.name,
        key=key,
        payload=req.payload,
        written_at_us=written_at_us,
        due_at_ms=due_at_ms,
        targets=targets_override,
        retry=req.retry.model_dump() if req.retry is not None else None,
        digest=digest,
        group=req.group.as_doc() if req.group is not None else None,
        # only an entry of a namespace this region holds is forwarded from here
        origin=region if ns.peers_of(region) else None,
    )
    try:
        value = entry.encode()
    except orjson.JSONEncodeError as exc:
        # strict JSON reading keeps such values out; this guards callers that skip it
        raise RequestError(400, f"entry cannot be encoded: {exc}") from None
    if len(value) > max_entry_bytes:
        raise RequestError(
            413, f"entry is {len(value)} bytes encoded; the limit is {max_entry_bytes} bytes"
        )
    return entry, value


#: target types per namespace config object (configs are immutable; a changed namespace is a
#: new object): reading them per entry cost ~3 % of a worker's CPU under load
_TARGET_TYPES: dict[int, tuple[NamespaceConfig, frozenset[str]]] = {}


def _target_types(ns: NamespaceConfig) -> frozenset[str]:
    """The types of every target ``ns`` delivers to, in every region."""
    hit = _TARGET_TYPES.get(id(ns))
    if hit is not None and hit[0] is ns:  # the config is held here, so its id is not reused
        return hit[1]
    if len(_TARGET_TYPES) >= 1024:  # configs replaced by changes: start again
        _TARGET_TYPES.clear()
    types = frozenset(t.type for t in ns.all_targets)
    _TARGET_TYPES[id(ns)] = (ns, types)
    return types


def _check_group_request(req: LogRequest) -> None:
    """What a group's write may not carry (400): its own key (the group id is its key), a
    delay or target (a group is applied when committed, to its namespace's targets), and for
    the marker a payload or retry policy."""
    assert req.group is not None
    if req.key is not None:
        raise RequestError(400, "key: a group's entries are keyed by the group id; leave key out")
    if req.lifecycle is not None:
        raise RequestError(400, "lifecycle: a group's entries are applied when it commits; they cannot be delayed")
    if req.target is not None:
        raise RequestError(400, "target: a group's entries go to the namespace's targets; they cannot name their own")
    if req.group.commit is not None and (req.payload is not None or req.retry is not None):
        raise RequestError(400, "a commit marker carries no payload and no retry policy")


def request_digest(
    req: LogRequest, *, key: str, due_at_ms: int | None, targets: list[dict[str, Any]] | None
) -> str:
    """The idempotency digest of a write request: SHA-256 (64 hex characters) of everything
    that defines the entry except its id — namespace, key, payload, lifecycle, target
    override, retry policy, and any field :class:`LogRequest` gains later.

    Two requests that ask for the same entry get the same digest, however they are spelled:
    the key is the effective one (an omitted key is the id), object keys are sorted, the
    target override and retry policy are taken after validation (defaults filled in), and
    ``deliver_at`` is its instant in ms (``Z`` or ``+00:00`` alike). ``delay_ms`` is digested
    as sent, never as the due time it computes (a client retrying the same request later
    gets a later due time, and must still get the original answer). Optional fields that
    are absent or null are left out, so a field added to the request model later does not
    change the digest of requests that do not use it.

    ``key``, ``due_at_ms`` and ``targets`` are the values :func:`parse_log_request` derived
    from ``req``. Raises ``orjson.JSONEncodeError`` for a payload the envelope cannot encode.
    """
    content: dict[str, Any] = {name: getattr(req, name) for name in LogRequest.model_fields if name != "id"}
    content["key"] = key
    content["target"] = targets
    content["retry"] = req.retry.model_dump(mode="json") if req.retry is not None else None
    content["group"] = req.group.as_doc() if req.group is not None else None
    if req.lifecycle is not None:
        lifecycle = req.lifecycle.model_dump(mode="json", exclude_none=True)
        if req.lifecycle.deliver_at is not None:
            lifecycle["deliver_at"] = due_at_ms
        content["lifecycle"] = lifecycle or None
    content = {k: v for k, v in content.items() if v is not None or k == "payload"}
    return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()
