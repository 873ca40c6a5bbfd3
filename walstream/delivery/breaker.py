"""Per-target circuit breaker: when a target is down, stop calling it and stop spending
entries' attempts on it.

Closed → after ``threshold`` consecutive calls in which the whole target did not answer
(:class:`~walstream.targets.base.TargetDownError`) → open for a
cool-down (``initial_cooldown_s``, doubling up to ``max_cooldown_s``) → half-open: the next
call is a probe; success closes the breaker, failure re-opens it with a longer cool-down.

While the breaker is open, entries bound for the target are rescheduled for the end of the
cool-down *without* counting an attempt. Breaker state is per worker and in memory: it
describes the target's health as this worker sees it, which a restart may forget.

A breaker is also *stalled* while a call the delivery agent stopped waiting for is still
running (:mod:`walstream.delivery.target_calls`): no other call goes to the target until it
ends, and entries turned away meanwhile come back every ``poll_s`` to collect its outcome.
A stall is not "down": only how the call ends (answered, or timed out) is recorded.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class Breaker:
    label: str
    threshold: int = 3
    initial_cooldown_s: float = 1.0
    max_cooldown_s: float = 30.0
    consecutive_failures: int = 0
    open_until_s: float = 0.0
    cooldown_s: float = 0.0
    #: (time, "opened"|"closed") transitions, for status and tests
    transitions: list[tuple[float, str]] = field(default_factory=list)
    #: a call still running after the agent moved on started then, and ends by
    #: ``stalled_until_s`` at the latest (0: none running)
    stalled_since_s: float = 0.0
    stalled_until_s: float = 0.0
    #: while stalled, entries turned away come back after this long
    poll_s: float = 1.0
    #: why the last failed call failed (shown to entries the open circuit turns away)
    reason: str | None = None

    @property
    def is_open(self) -> bool:
        return self.open_until_s > 0.0

    def is_stalled(self, now_s: float | None = None) -> bool:
        now_s = time.time() if now_s is None else now_s
        return now_s < self.stalled_until_s

    def allows(self, now_s: float | None = None) -> bool:
        """May the target be called now? (closed, or half-open after the cool-down, and no
        earlier call still running)"""
        now_s = time.time() if now_s is None else now_s
        if self.is_stalled(now_s):
            return False
        return self.open_until_s == 0.0 or now_s >= self.open_until_s

    def retry_at_s(self, now_s: float | None = None) -> float:
        """When an entry turned away now should come back."""
        now_s = time.time() if now_s is None else now_s
        at = max(now_s, self.open_until_s)
        if self.is_stalled(now_s):
            wait_s = max(self.poll_s, now_s - self.stalled_since_s)
            at = max(at, min(self.stalled_until_s, now_s + wait_s))
        return at

    def stall(self, since_s: float, until_s: float, poll_s: float) -> None:
        """A call started at ``since_s`` is still running (it ends by ``until_s`` at the
        latest): no other call until :meth:`record` or :meth:`unstall`."""
        self.stalled_since_s = since_s
        self.stalled_until_s = until_s
        self.poll_s = poll_s

    def unstall(self) -> None:
        self.stalled_until_s = 0.0

    def record(self, *, down: bool, now_s: float | None = None, reason: str | None = None) -> None:
        """Record how one call ended: ``down`` when the target as a whole did not answer
        (within its deadline). Ends a stall."""
        now_s = time.time() if now_s is None else now_s
        self.stalled_until_s = 0.0
        self.reason = reason if down else None
        if not down:
            if self.is_open:
                log.warning("target %s is back: circuit closed", self.label)
                self.transitions.append((now_s, "closed"))
            self.consecutive_failures = 0
            self.open_until_s = 0.0
            self.cooldown_s = 0.0
            return
        self.consecutive_failures += 1
        if self.is_open or self.consecutive_failures >= self.threshold:
            self.cooldown_s = min(self.max_cooldown_s, max(self.initial_cooldown_s, self.cooldown_s * 2))
            if not self.is_open:
                self.transitions.append((now_s, "opened"))
                log.warning(
                    "target %s is down (%s): circuit open for %.1fs; its entries wait without spending attempts",
                    self.label,
                    reason or "did not answer",
                    self.cooldown_s,
                )
            self.open_until_s = now_s + self.cooldown_s


class Breakers:
    def __init__(self, threshold: int = 3, initial_cooldown_s: float = 1.0, max_cooldown_s: float = 30.0) -> None:
        self._threshold = threshold
        self._initial = initial_cooldown_s
        self._max = max_cooldown_s
        self._by_target: dict[str, Breaker] = {}

    def get(self, target_id: str, label: str) -> Breaker:
        b = self._by_target.get(target_id)
        if b is None:
            b = self._by_target[target_id] = Breaker(label, self._threshold, self._initial, self._max)
        return b

    def all(self) -> dict[str, Breaker]:
        return dict(self._by_target)
