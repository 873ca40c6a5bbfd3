"""Bounded, isolated calls to targets: one slow or broken target never holds up the others.

Contract (what :meth:`Deliverer._call <walstream.delivery.deliverer.Deliverer._call>` relies on):

- Every call is bounded: it is cancelled after ``timeout_s`` (``WALSTREAM_TARGET_CALL_TIMEOUT_S``),
  connecting and DNS included, and then reports :class:`TargetDownError` for each of its
  entries (the target did not answer), which counts towards the target's circuit breaker.
- The delivery agent waits for a call at most ``wait_s`` (``WALSTREAM_TARGET_WAIT_S``). A call
  still running then carries on in the background, up to its deadline; :meth:`call` returns
  ``None`` at once and the target's breaker is *stalled*: no other call goes to the target
  until this one ends, so a target that does not answer receives one call at a time.
  The caller reschedules the call's entries (durably, without spending an attempt).
- When a background call ends, its outcomes are kept here per (target, entry) and handed
  out once by :meth:`take` when those entries come back: an entry applied by a call the
  agent stopped waiting for is recorded as delivered without being applied again, and a
  failure counts as the attempt it was. Outcomes not collected within ``keep_s`` (the
  partition moved to another worker) are forgotten; the entry is then simply applied
  again, which targets tolerate (they are idempotent).
- A call cancelled at its deadline may still take effect at the target afterwards (a
  statement already sent, a record already in the producer's buffer). That is harmless:
  the entry stays due and is applied again, and targets converge on the newest write
  (Cassandra ``USING TIMESTAMP``, Elasticsearch external versions; the Kafka target's one
  producer keeps a partition's records in the order they were sent).
- Errors are logged at most once per ``log_every_s`` per target and kind, with a count of
  those left out; the breaker logs each state change once.

Outcomes live in memory, in the event loop; nothing here writes tables (the done callback
of a background call runs outside any Faust event).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Hashable, Sequence

from walstream.delivery.breaker import Breaker
from walstream.entry import Entry
from walstream.targets.base import Outcomes, Target, TargetDownError, TargetError, TransientError

log = logging.getLogger(__name__)

#: identifies one entry at one target, e.g. (target id, namespace, entry id, offset)
CallKey = Hashable


class RateLimitedLog:
    """Logs a kind of message at most once per ``every_s``; counts what it leaves out."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def warning(self, who: str, kind: str, msg: str, *args: object, exc_info: bool = False) -> None:
        now = time.monotonic()
        last, skipped = self._last.get((who, kind), (-self.every_s, 0))
        if now - last < self.every_s:
            self._last[(who, kind)] = (last, skipped + 1)
            return
        self._last[(who, kind)] = (now, 0)
        suffix = f" ({skipped} more like it in the last {now - last:.0f}s)" if skipped else ""
        log.warning(msg + suffix, *args, exc_info=exc_info)


class TargetCalls:
    """Runs calls to targets with a deadline, and lets the agent move on from slow ones."""

    def __init__(self, wait_s: float, timeout_s: float, keep_s: float = 600.0, log_every_s: float = 30.0) -> None:
        self.wait_s = wait_s
        self.timeout_s = timeout_s
        self.keep_s = max(keep_s, 2 * timeout_s)
        self.logs = RateLimitedLog(log_every_s)
        #: outcomes of background calls not collected yet: key → (outcome, when it ended)
        self._outcomes: dict[CallKey, tuple[TargetError | None, float]] = {}
        #: background calls still running (referenced so they are not garbage-collected)
        self._running: set[asyncio.Task[Outcomes]] = set()

    def take(self, key: CallKey) -> tuple[bool, TargetError | None]:
        """The outcome of ``key`` from a call that ended after the agent moved on:
        ``(True, outcome)`` once, else ``(False, None)``."""
        if not self._outcomes:
            return False, None
        found = self._outcomes.pop(key, None)
        if found is None:
            return False, None
        return True, found[0]

    @property
    def running(self) -> int:
        """Background calls still running (for tests and status)."""
        return len(self._running)

    async def call(
        self, breaker: Breaker, target: Target, entries: Sequence[Entry], keys: Sequence[CallKey]
    ) -> Outcomes | None:
        """Apply ``entries`` at ``target`` within the deadline, recording the call in
        ``breaker``. Returns one outcome per entry, or ``None`` when the call is still
        running after ``wait_s`` (its outcomes are then collected through :meth:`take`)."""
        started_s = time.time()
        task = asyncio.ensure_future(self._bounded(target, entries))
        try:
            done, _ = await asyncio.wait({task}, timeout=self.wait_s)
        except asyncio.CancelledError:  # the agent is stopping: so is its call
            task.cancel()
            raise
        if task in done:
            outcomes = task.result()
            self._record(breaker, outcomes)
            return outcomes
        # Still running: the agent moves on; the call finishes (or is cancelled at its
        # deadline) in the background and the target gets no other call meanwhile.
        breaker.stall(started_s, started_s + self.timeout_s + 1.0, poll_s=self.wait_s)
        self._running.add(task)
        task.add_done_callback(lambda t: self._ended(t, breaker, list(keys)))
        self.logs.warning(
            target.label,
            "slow",
            "target %s has not answered within %.1fs: its %d entries wait for the call (bounded to %.1fs), "
            "other targets carry on",
            target.label,
            self.wait_s,
            len(entries),
            self.timeout_s,
        )
        return None

    async def _bounded(self, target: Target, entries: Sequence[Entry]) -> Outcomes:
        """The call itself: never raises (except when cancelled), always within the deadline."""
        try:
            outcomes = await asyncio.wait_for(target.apply(entries), self.timeout_s)
            if len(outcomes) != len(entries):
                raise RuntimeError(f"{target.label} returned {len(outcomes)} outcomes for {len(entries)} entries")
            return outcomes
        except TimeoutError:
            msg = f"{target.label} did not answer within {self.timeout_s:g}s"
            self.logs.warning(target.label, "timeout", "target %s", msg)
            return [TargetDownError(msg)] * len(entries)
        except Exception as exc:  # a target bug fails the call, transiently
            self.logs.warning(target.label, "raised", "target %s raised", target.label, exc_info=True)
            return [TransientError(f"{type(exc).__name__}: {exc}")] * len(entries)

    def _record(self, breaker: Breaker, outcomes: Outcomes) -> None:
        down = bool(outcomes) and all(isinstance(o, TargetDownError) for o in outcomes)
        reason = outcomes[0].message if down and outcomes[0] is not None else None
        breaker.record(down=down, reason=reason)

    def _ended(self, task: asyncio.Task[Outcomes], breaker: Breaker, keys: list[CallKey]) -> None:
        self._running.discard(task)
        if task.cancelled():  # the worker is stopping; nothing learnt about the target
            breaker.unstall()
            return
        outcomes = task.result()  # _bounded never raises
        self._record(breaker, outcomes)
        now_s = time.time()
        if self._outcomes:  # forget what nobody came back for (the partition moved away)
            stale = [k for k, (_, at) in self._outcomes.items() if now_s - at > self.keep_s]
            for k in stale:
                del self._outcomes[k]
        for key, outcome in zip(keys, outcomes, strict=True):
            self._outcomes[key] = (outcome, now_s)

    async def close(self) -> None:
        """Cancel background calls (the worker is stopping; their entries are due again)."""
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
