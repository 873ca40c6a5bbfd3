"""Pacing: at most ``max_per_s`` entries per second to one target (flattened bursts).

Each worker paces its share of the fleet's rate, ``max_per_s`` times the fraction of the
partitions it holds actively, with one schedule of send slots per target (GCRA, the
"virtual scheduling" form of a token bucket): the next free slot is ``next_free_s``; an
entry takes the slot ``max(now, next_free_s)`` and moves it on by ``1 / rate``. An entry
whose slot is now (within :data:`TOLERANCE_S`) is sent; a later one waits durably for its
slot as a timer in the schedule table and is sent when it fires, without taking a slot again
(the timer carries ``paced``). So a burst of 20,000 deletes is spread over 40 s at 500/s,
every entry is sent at or after its due time, and none is lost: the waiting is the same
durable timer a retry uses, and it holds the entry's key like one.

``adaptive`` (AIMD, as TCP congestion control): a call that took longer than ``slow_ms``, or
whose entries failed for want of capacity (a transient or down answer), halves the rate
(not below a 64th of ``max_per_s``); every other call adds a twentieth of ``max_per_s``
back, up to it.

The slots are in memory: a restarted worker starts with a free schedule (one tolerance's
burst more than the rate), and entries already waiting keep their slots.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from walstream.namespaces.model import PacingConfig

#: an entry whose slot is at most this far ahead is sent now rather than scheduled: the
#: scheduler's own granularity (a timer fires within tens of ms of its due time)
TOLERANCE_S = 0.02
#: the adaptive rate never falls below max_per_s divided by this
MIN_FRACTION = 64
#: what a good call adds back, as a fraction of max_per_s
GROWTH_FRACTION = 20


@dataclass
class _Lane:
    next_free_s: float = 0.0
    #: the adaptive rate's fraction of max_per_s (1.0: the configured rate)
    fraction: float = 1.0


class Pacer:
    """Send slots per target id; ``share()`` is this worker's fraction of the fleet's partitions."""

    def __init__(self, share: Callable[[], float] = lambda: 1.0) -> None:
        self._share = share
        self._lanes: dict[str, _Lane] = {}

    def rate(self, target_id: str, pacing: PacingConfig) -> float:
        """Entries per second this worker may send ``target_id`` now."""
        lane = self._lanes.get(target_id)
        fraction = lane.fraction if lane is not None else 1.0
        return max(1e-6, pacing.max_per_s * fraction * max(1e-6, min(1.0, self._share())))

    def slots(self, target_id: str, pacing: PacingConfig, n: int, now_s: float) -> list[float]:
        """Slots (epoch s) for ``n`` entries to ``target_id``, in order, taken from its
        schedule; a slot within :data:`TOLERANCE_S` of ``now_s`` means "send now"."""
        lane = self._lanes.setdefault(target_id, _Lane())
        step = 1.0 / self.rate(target_id, pacing)
        out = []
        t = max(now_s, lane.next_free_s)
        for _ in range(n):
            out.append(t)
            t += step
        lane.next_free_s = t
        return out

    def feedback(self, target_id: str, pacing: PacingConfig, *, overloaded: bool, took_s: float) -> None:
        """After a call to ``target_id``: adapt its rate (``adaptive`` only)."""
        if not pacing.adaptive:
            return
        lane = self._lanes.setdefault(target_id, _Lane())
        if overloaded or took_s * 1000 > pacing.slow_ms:
            lane.fraction = max(1.0 / MIN_FRACTION, lane.fraction / 2)
        else:
            lane.fraction = min(1.0, lane.fraction + 1.0 / GROWTH_FRACTION)
