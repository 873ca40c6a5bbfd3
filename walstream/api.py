"""The HTTP API's bodies as pydantic models: what each endpoint takes and answers.

One copy, shared by the worker (request validation, answers, ``GET /openapi.json`` — see
walstream.web.openapi) and the Python client (walstream.client, which parses answers with
these models). Answers may grow fields (``extra="ignore"``): a client keeps working against a
newer worker. Times are ISO-8601 with a timezone; durations carry their unit (``_ms``, ``_s``).

The write request (``LogRequest``) and the namespace document
(walstream.namespaces.model.NamespaceConfig) live next to their validation and are part of
the same contract.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, StrictStr, model_validator

from walstream.namespaces.model import NamespaceConfig
from walstream.requests import LogRequest, time_text
from walstream.targets.base import ErrorClass

__all__ = [
    "DeadLetter",
    "DeadLetterList",
    "EntryStatus",
    "ErrorAnswer",
    "Health",
    "IndexCheckRequest",
    "JobList",
    "JobStatus",
    "LogBatchAnswer",
    "LogBatchRequest",
    "LogRequest",
    "NamespaceBusy",
    "NamespaceDeleted",
    "NamespaceList",
    "PendingIds",
    "RedriveOutcome",
    "RedriveRequest",
    "RedriveResult",
    "ReplayRequest",
    "SourceRecord",
    "TargetStatus",
    "WriteResult",
]


class Answer(BaseModel):
    # answers may grow fields: a client must keep working against a newer worker
    model_config = ConfigDict(extra="ignore", frozen=True)


class ErrorAnswer(Answer):
    """Every refusal (4xx) and failure (5xx) that is not a write's answer."""

    message: str = Field(description="the problem, and what to do about it")


# -- writes ----------------------------------------------------------------------------------


class LogBatchRequest(BaseModel):
    """``POST /v1/log/batch``: entries answered one by one (one refused entry does not
    refuse the others); at most ``WALSTREAM_MAX_BATCH_ENTRIES`` of them."""

    model_config = ConfigDict(extra="forbid")

    entries: list[LogRequest]


class WriteResult(Answer):
    """What became of one write. ``durable``: SUCCESS (in the log: ``partition`` and
    ``offset`` of its record; ``duplicate`` when the id was written before and this is the
    original answer), FAILED (refused, nothing written: ``message`` says why, ``status`` is
    the HTTP status it got), UNKNOWN (may or may not be in the log; write again with the
    same id to find out)."""

    durable: Literal["SUCCESS", "FAILED", "UNKNOWN"]
    id: str | None = None
    partition: int | None = None
    offset: int | None = None
    duplicate: bool = False
    message: str | None = None
    #: the HTTP status of this item's answer (each item of a batch has its own; a single
    #: write's is the response's status)
    status: int = 200
    #: the entry's state when the answer names one (a 409 for a cancelled id)
    state: str | None = None


class LogBatchAnswer(Answer):
    results: list[WriteResult] = Field(description="one per entry, in the request's order")


# -- entries ---------------------------------------------------------------------------------


class TargetStatus(Answer):
    target: str = Field(description="the target's id within the namespace")
    type: str | None = None
    state: str
    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    held_behind: str | None = Field(default=None, description="the id of the entry of the same key it waits for")


class EntryStatus(Answer):
    """An entry's state (DELAYED, PENDING, RETRYING, DELIVERED, DEAD, CANCELLED), and each
    target's. A cancellation not visible yet is CANCELLING; a state the fleet cannot tell
    now is UNKNOWN (503)."""

    id: str
    namespace: str | None = None
    key: str | None = None
    state: str
    partition: int | None = None
    offset: int | None = None
    written_at: datetime | None = None
    due_at: datetime | None = None
    updated_at: datetime | None = None
    last_error: str | None = None
    targets: list[TargetStatus] = Field(default_factory=list)
    message: str | None = Field(default=None, description="why the state is not final yet, or not known")
    group: dict[str, Any] | None = Field(
        default=None, description="a mutation group's member (`{id, seq}`) or commit marker (`{id, commit, size}`)"
    )
    origin: str | None = Field(
        default=None, description="the region the entry was written in (replicated namespaces only)"
    )
    peers: dict[str, str] | None = Field(
        default=None, description="a cancellation of a replicated namespace's entry: per other region, `sent` "
        "(its Kafka has it) or why it was not reached (ask again once it is back)"
    )


class GroupStatus(Answer):
    """A mutation group's state: PENDING (no commit marker yet), COMMITTED (the marker is
    here; waiting for ``missing`` members, or being applied), APPLIED (every member at every
    target), ABORTED (no marker or members missing by the namespace's ``group_timeout_s``;
    none of it applied), DEAD_LETTERED (a member could not be applied: it and the members
    after it are dead letters at that target)."""

    id: str
    namespace: str
    state: str
    partition: int
    size: int | None = Field(default=None, description="the number of members the commit marker gives")
    members: int = Field(description="members received so far (distinct seqs)")
    missing: list[int] = Field(default_factory=list, description="seqs below size not received (at most 1000)")
    marker: str | None = Field(default=None, description="the commit marker's entry id")
    first_at: datetime | None = None
    deadline: datetime | None = Field(default=None, description="aborted if not released by then")
    committed_at: datetime | None = Field(default=None, description="the commit marker's write time")
    released_at: datetime | None = None
    applied_at: datetime | None = None
    targets: dict[str, str] = Field(default_factory=dict, description="target id → COMMITTED, APPLIED or DEAD_LETTERED")
    error: str | None = None


# -- dead letters ----------------------------------------------------------------------------


class SourceRecord(Answer):
    topic: str
    partition: int
    offset: int


class DeadLetter(Answer):
    id: str
    namespace: str
    key: str | None = None
    target: dict[str, Any] | None = Field(default=None, description="the target it failed at (null: the whole entry)")
    target_id: str
    error_class: str
    message: str
    attempts: int
    first_failure_at: datetime
    last_failure_at: datetime
    source: SourceRecord = Field(description="the entry's record in its WAL topic")


class DeadLetterList(Answer):
    dead_letters: list[DeadLetter] = Field(description="oldest last failure first")


#: the longest a redrive's commands may take to send at its rate, in seconds (the request is
#: held open meanwhile, and then for up to ``wait_s``, at most MAX_REDRIVE_WAIT_S)
MAX_SEND_S = 600.0
MAX_REDRIVE_WAIT_S = 120.0


class RedriveRequest(BaseModel):
    """``POST /v1/dlq/{namespace}/redrive``: which dead letters (``ids`` and/or the
    filters; none: all of them, up to ``limit``), and how."""

    model_config = ConfigDict(extra="forbid")

    # strict where lax parsing would change the request's meaning ("false" is not false)
    ids: list[Annotated[StrictStr, Field(min_length=1)]] | None = None
    error_class: ErrorClass | None = None
    since: Annotated[AwareDatetime, BeforeValidator(time_text)] | None = Field(
        default=None, description="last failure at or after")
    until: Annotated[AwareDatetime, BeforeValidator(time_text)] | None = Field(
        default=None, description="last failure before")
    limit: int | None = Field(default=None, ge=1, le=100_000, strict=True)
    dry_run: bool = Field(default=True, strict=True, description="only list what would be redriven")
    #: the slowest pace accepted is one per 50 s: below, a request would sleep for hours
    rate: float | None = Field(default=None, ge=0.02, le=1e6, strict=True, description="redrives per second")
    wait_s: float = Field(default=10, ge=0, le=MAX_REDRIVE_WAIT_S, strict=True,
                          description="seconds to wait for the outcomes")


class RedriveOutcome(Answer):
    id: str
    target_id: str
    outcome: Literal["DELIVERED", "DEAD", "PENDING", "CANCELLED"]
    message: str | None = None


class RedriveResult(Answer):
    """A dry run lists ``would_redrive``; an executed redrive counts and lists outcomes."""

    dry_run: bool
    would_redrive: list[DeadLetter] = Field(default_factory=list)
    redriven: int = 0
    sent_at_ms: int | None = None
    delivered: int = 0
    dead: int = 0
    pending: int = 0
    results: list[RedriveOutcome] = Field(default_factory=list)


# -- namespaces ------------------------------------------------------------------------------


class NamespaceApplied(NamespaceConfig):
    """200 to ``PUT /v1/namespaces/{name}``: the config as stored (with its new version)."""

    regions: dict[str, str] | None = Field(
        default=None, description="a replicated namespace: per other region it lists, `applied` (its fleet has "
        "the config) or why it was not reached (it gets the config once it is back)",
    )


class NamespaceList(Answer):
    namespaces: list[NamespaceConfig]


class NamespaceDeleted(Answer):
    deleted: str
    dead_lettered: int = Field(description="pending entries dead-lettered (a forced deletion)")
    unconsumed: int = Field(description="records left unconsumed in its WAL topic")


class NamespaceBusy(Answer):
    """409 to a deletion without ``force`` of a namespace with pending entries."""

    message: str
    pending: int
    unconsumed: int


# -- operations ------------------------------------------------------------------------------


class CircuitTransition(Answer):
    at: float = Field(description="epoch seconds")
    to: str


class Circuit(Answer):
    target: str
    open: bool
    transitions: list[CircuitTransition]


class Health(Answer):
    status: Literal["ok"]
    shard: str | None = None
    consumed_topics: list[str]
    assigned: list[str] = Field(description="topic:partition held by this worker")
    namespaces: int
    circuits: dict[str, Circuit]


class Probe(Answer):
    """A readiness or liveness probe's answer (200 or 503); see walstream.health."""

    status: Literal["ready", "not ready", "live", "stuck"]
    reasons: list[str] = Field(description="why not ready, or which loop is stuck; empty when 200")


class PendingIds(Answer):
    """Fleet-internal: the ids of a namespace's pending entries one worker holds."""

    ids: list[str]


class CancelledIds(Answer):
    """Fleet-internal: the entries of a namespace one worker knows as cancelled, each with
    the targets it was cancelled for."""

    cancelled: dict[str, list[str]]


# -- replay and jobs -------------------------------------------------------------------------

#: most ids one replay may skip (a file of them: ``walstream replay --skip-file``)
MAX_REPLAY_SKIPS = 100_000


class ReplayRequest(BaseModel):
    """``POST /v1/replay/{namespace}``: re-apply the entries of ``wal.<namespace>`` written
    from ``from`` (inclusive) to ``to`` (exclusive; default: what the topic holds when the
    job starts), with their original write times, to the namespace's targets (``target``:
    only these, by target id or label), except the ``skip`` ids."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: Annotated[AwareDatetime, BeforeValidator(time_text)] = Field(alias="from",
                                                                       description="first write time replayed")
    to: Annotated[AwareDatetime, BeforeValidator(time_text)] | None = Field(
        default=None, description="replay stops before this write time (default: the end of the topic now)")
    target: list[Annotated[StrictStr, Field(min_length=1, max_length=200)]] | None = Field(
        default=None, min_length=1, max_length=16,
        description="target ids (as entry status shows them) or labels (cassandra:KEYSPACE); default: all")
    skip: list[Annotated[StrictStr, Field(min_length=1, max_length=512)]] = Field(
        default_factory=list, max_length=MAX_REPLAY_SKIPS, description="entry ids not replayed")
    #: the slowest pace accepted is one entry per 100 s
    rate: float | None = Field(default=None, ge=0.01, le=1e6, strict=True, description="entries per second, at most")
    dry_run: bool = Field(default=False, strict=True, description="only count and list what would be applied")

    @model_validator(mode="before")
    @classmethod
    def _one_target(cls, data: Any) -> Any:
        # a single target is given as a string (the CLI's --target ID)
        if isinstance(data, dict) and isinstance(data.get("target"), str):
            return {**data, "target": [data["target"]]}
        return data

    @model_validator(mode="after")
    def _ordered(self) -> ReplayRequest:
        if self.to is not None and self.to <= self.from_:
            raise ValueError("to: must be later than from")
        return self


class IndexCheckRequest(BaseModel):
    """``POST /v1/index/{namespace}/{table}/check``: compare the namespace's Cassandra table
    with its Elasticsearch index (walstream.index_check)."""

    model_config = ConfigDict(extra="forbid")

    repair: bool = Field(default=False, strict=True, description="fix the drift through the WAL")
    rate: float | None = Field(default=None, ge=1, le=1e6, strict=True,
                               description="rows and documents read per second, at most")


class JobState(StrEnum):
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class JobStatus(Answer):
    """A background job (a replay): ``GET /v1/jobs/{id}``. ``progress`` is 0..1 of the work
    known at the start (for a replay: the offsets to read); ``counts`` say what was done
    (for a replay: read, applied, skipped, cancelled, not_due, undecodable, failed,
    groups_applied, groups_incomplete, would_apply); ``samples`` list some entries of each
    kind (a dry run's: what would be applied)."""

    id: str
    kind: Literal["replay", "index"]
    namespace: str
    state: JobState
    worker: str = Field(description="the worker running it")
    request: dict[str, Any]
    progress: float
    counts: dict[str, int]
    rate_per_s: float | None = Field(description="entries read per second, over the job's run")
    started_at: datetime
    ended_at: datetime | None = None
    error: str | None = None
    plan: dict[str, Any] = Field(default_factory=dict, description="what the job set out to do")
    samples: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)


class JobList(Answer):
    jobs: list[JobStatus]
    #: workers that did not answer (their jobs are missing from the list)
    unknown: list[str] = Field(default_factory=list)
