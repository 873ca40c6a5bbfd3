"""The target interface and the typed errors through which targets report failure.

A target is small: ``start``, ``apply`` a batch, ``close``. It never retries, delays or
dead-letters; the delivery runtime does, based on the error class a target reports:

- :class:`TransientError` — may succeed later (timeout, unavailable, overloaded);
  :class:`TargetDownError`, a kind of it, when the whole target did not answer;
- :class:`PermanentError` — will never succeed as it is (invalid mutation, mapping conflict,
  unknown table); the entry goes to the dead-letter queue.

Every target must be idempotent: applying an entry twice, or an older entry after a newer
one for the same key, leaves the state implied by the newest write time.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Sequence

from walstream.entry import Entry


class ErrorClass(enum.StrEnum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    #: the record on the WAL topic is not a readable walstream entry
    UNDECODABLE = "undecodable"
    #: the entry's namespace no longer exists
    NO_NAMESPACE = "no_namespace"


#: Error texts are kept in entry states, timers and dead letters: a target's error can echo
#: a whole document back, so it is cut to this many characters (the rows must fit Kafka).
MAX_ERROR_CHARS = 4000


def shorten(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


#: the longest wait a target may ask for before a retry (``Retry-After``), in seconds
MAX_RETRY_AFTER_S = 3600.0


class TargetError(Exception):
    """``retry_after_s``: the target asked not to be tried again sooner (an HTTP
    ``Retry-After``); the retry waits at least this long, at most :data:`MAX_RETRY_AFTER_S`."""

    error_class: ErrorClass = ErrorClass.PERMANENT

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        message = shorten(message)
        super().__init__(message)
        self.message = message
        self.retry_after_s = None if retry_after_s is None else min(max(0.0, retry_after_s), MAX_RETRY_AFTER_S)


class TransientError(TargetError):
    error_class = ErrorClass.TRANSIENT


class TargetDownError(TransientError):
    """The target as a whole did not answer (connection refused, no host, request timeout,
    a 5xx for the whole request). Consecutive calls failing like this open its circuit
    breaker; a transient failure of single entries (a throttled index, a row timeout) is
    retried without suggesting the target is down."""


class NotSent(TransientError):
    """The target did not send this entry at all: an earlier one of its call failed first
    (:attr:`KeyRuns.IN_ORDER`). No attempt is spent: delivery sends it again, in order, once
    nothing earlier of its key waits."""


class PermanentError(TargetError):
    error_class = ErrorClass.PERMANENT


#: one outcome per entry of a batch, in order: ``None`` means applied
Outcomes = list[TargetError | None]


class KeyRuns(enum.Enum):
    """Whether one call may carry several entries of one key, for namespaces ordered by key.

    ``ordering: key`` promises the order of application itself: an entry of a key is applied
    only after the earlier ones were, and waits while an earlier one is retried. A target
    that takes a key's entries in one call must keep that promise inside the call.
    """

    #: one entry of a key per call: the next goes in a later call, once the one before it
    #: succeeded (one target round trip per entry of a busy key). Cassandra's concurrent
    #: statements and an Elasticsearch bulk request may apply a later entry although an
    #: earlier one of its key failed: last writer wins would end at the same state, but
    #: meanwhile the later entry would be visible first.
    ONE_PER_CALL = "one_per_call"
    #: a call applies a key's entries in its order, and none after one that failed (Kafka:
    #: a partition's records, one batch after the other, none after a failed batch)
    IN_ORDER = "in_order"


class Target(ABC):
    """One configured destination. Instances are shared by every namespace with the same
    target config and live as long as the worker."""

    #: short, stable description for logs and DLQ records, e.g. ``cassandra:catalog``
    label: str
    #: how a call may carry several entries of one key (see :class:`KeyRuns`)
    key_runs: KeyRuns = KeyRuns.ONE_PER_CALL

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect. May raise :class:`TransientError` (it is retried before first use)."""

    @abstractmethod
    async def apply(self, entries: Sequence[Entry]) -> Outcomes:
        """Apply ``entries`` (in write order). Never raises: every failure is an outcome."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def combine(errors: Sequence[TargetError | None]) -> TargetError | None:
    """The outcome of an entry whose parts had these outcomes: permanent beats transient."""
    worst: TargetError | None = None
    for err in errors:
        if err is None:
            continue
        if isinstance(err, PermanentError):
            return err
        worst = worst or err
    return worst
