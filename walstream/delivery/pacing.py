"""Pacing: at most ``max_per_s`` entries per second to one target (flattened bursts).

Each worker paces its share of the fleet's rate, ``max_per_s`` times the fraction of the
partitions it holds actively, with one schedule of send slots per target (GCRA, the
"virtual scheduling" form of a token bucket): the next free slot is ``next_free_s``; an
entry takes the slot ``max(now, next_free_s)`` and moves it on by ``1 / rate``. An entry
whose slot is now (within :data:`TOLERANCE_S`) is sent; a later one waits durably for its
slot as a timer in the schedule table and is sent when it fires, without taking a slot again
(the timer carries ``paced``). So a burst of 20,000 deletes is spread over 40 s at 500/s,
every entry is sent at or after its due time, and none is lost: the waiting is the same
durable timer a retry uses, and it holds the entry's key like one. Every send also takes a
token from a bucket refilled at the rate and holding :data:`BURST_S` of it, so slots that
come due together (a scheduler running late) still go out at the rate: an entry without a
token waits a little longer, keeping its slot.

``adaptive`` (AIMD, as TCP congestion control): a call that took longer than ``slow_ms``, or
whose entries failed for want of capacity (a transient or down answer), halves the rate
(not below a 64th of ``max_per_s``); every other call adds a twentieth of ``max_per_s``
back, up to it. Slots reserved at one rate would keep it after a change, so an adaptive lane
reserves at most :data:`ADAPTIVE_HORIZON_S` ahead: entries beyond wait that long without a
slot and try again (a timer write each time: adaptive pacing suits modest backlogs; a large
burst is cheaper under a fixed rate, which reserves each entry's slot once).

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
#: the most a target gets at once, in seconds of its rate (at 500/s: 50 entries; never fewer
#: than :data:`MIN_BURST`): any one second sees at most the rate and this much more
BURST_S = 0.1
#: a bucket of one token would refuse a slot that came a little early after one that came a
#: little late (the scheduler's ticks are not exact), and the refused entry waits at the end
MIN_BURST = 3.0
#: how far ahead an adaptive lane gives slots: entries beyond wait this long, unreserved, and
#: try again (a rate change applies to them then; each such wait is one timer write)
ADAPTIVE_HORIZON_S = 2.0
#: the adaptive rate never falls below max_per_s divided by this
MIN_FRACTION = 64
#: what a good call adds back, as a fraction of max_per_s
GROWTH_FRACTION = 20


@dataclass
class _Lane:
    next_free_s: float = 0.0
    #: the adaptive rate's fraction of max_per_s (1.0: the configured rate)
    fraction: float = 1.0
    #: the token bucket every send passes (see Pacer.take)
    tokens: float = -1.0  # full at first use
    filled_s: float = 0.0


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
        """Slots (epoch s) for up to ``n`` entries to ``target_id``, in order, taken from its
        schedule; a slot within :data:`TOLERANCE_S` of ``now_s`` means "send now". With
        ``adaptive``, only slots up to :data:`ADAPTIVE_HORIZON_S` ahead are given (fewer than
        ``n``: the rest try again then), so that a rate change applies within that time."""
        lane = self._lanes.setdefault(target_id, _Lane())
        step = 1.0 / self.rate(target_id, pacing)
        horizon = now_s + ADAPTIVE_HORIZON_S if pacing.adaptive else float("inf")
        out: list[float] = []
        t = max(now_s, lane.next_free_s)
        while len(out) < n and t <= horizon:
            out.append(t)
            t += step
        lane.next_free_s = t
        return out

    def take(self, target_id: str, pacing: PacingConfig, n: int, now_s: float) -> int:
        """How many of ``n`` entries may be sent to ``target_id`` now: a token bucket refilled
        at the rate, holding at most :data:`BURST_S` of it. Every send passes it, those with a
        reserved slot too: when the scheduler runs late, the slots that came due together
        would otherwise go out at once, above the rate."""
        lane = self._lanes.setdefault(target_id, _Lane())
        rate = self.rate(target_id, pacing)
        capacity = max(MIN_BURST, rate * BURST_S)
        if lane.tokens < 0:
            lane.tokens = capacity
        else:
            lane.tokens = min(capacity, lane.tokens + max(0.0, now_s - lane.filled_s) * rate)
        lane.filled_s = now_s
        k = min(n, int(lane.tokens))
        lane.tokens -= k
        return k

    def feedback(self, target_id: str, pacing: PacingConfig, *, overloaded: bool, took_s: float) -> None:
        """After a call to ``target_id``: adapt its rate (``adaptive`` only)."""
        if not pacing.adaptive:
            return
        lane = self._lanes.setdefault(target_id, _Lane())
        if overloaded or took_s * 1000 > pacing.slow_ms:
            lane.fraction = max(1.0 / MIN_FRACTION, lane.fraction / 2)
        else:
            lane.fraction = min(1.0, lane.fraction + 1.0 / GROWTH_FRACTION)
