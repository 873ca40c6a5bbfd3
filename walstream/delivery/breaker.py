"""Per-target circuit breaker: when a target is down, stop calling it and stop spending
entries' attempts on it.

Closed → after ``threshold`` consecutive calls in which the whole target did not answer
(:class:`~walstream.targets.base.TargetDownError`) → open for a
cool-down (``initial_cooldown_s``, doubling up to ``max_cooldown_s``) → half-open: the next
call is a probe; success closes the breaker, failure re-opens it with a longer cool-down.

While the breaker is open, entries bound for the target are rescheduled for the end of the
cool-down *without* counting an attempt. Breaker state is per worker and in memory: it
describes the target's health as this worker sees it, which a restart may forget.
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

    @property
    def is_open(self) -> bool:
        return self.open_until_s > 0.0

    def allows(self, now_s: float | None = None) -> bool:
        """May the target be called now? (closed, or half-open after the cool-down)"""
        now_s = time.time() if now_s is None else now_s
        return self.open_until_s == 0.0 or now_s >= self.open_until_s

    def retry_at_s(self, now_s: float | None = None) -> float:
        """When an entry turned away now should come back."""
        now_s = time.time() if now_s is None else now_s
        return max(now_s, self.open_until_s)

    def record(self, *, down: bool, now_s: float | None = None) -> None:
        """Record one call: ``down`` when the target as a whole did not answer."""
        now_s = time.time() if now_s is None else now_s
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
                log.warning("target %s is down: circuit open for %.1fs", self.label, self.cooldown_s)
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
