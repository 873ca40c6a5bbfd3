"""Readiness and liveness of one worker, as an orchestrator probes them.

* **Ready** (``GET /v1/health/ready``): the worker may take traffic. It is not ready until
  Faust has recovered its tables and sought its partitions once (before that an entry's
  status may answer from incomplete tables), nor once it is stopping. A later rebalance does
  not make it unready: every worker of a fleet rebalances at once, and taking them all out of
  service together would refuse every write while Kafka would take them.
* **Live** (``GET /v1/health/live``): the worker's loops make progress. The delivery agent is
  stuck when it has held one batch longer than ``stuck_after_s`` (each target call has its own
  timeout and an outage opens a circuit, so a healthy batch takes seconds); the scheduler is
  stuck when it has not run for that long after its first run. A restart is what helps then.
  A target or Kafka outage is not a liveness failure: a restart would not end it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: the loops whose progress :class:`Liveness` follows
DELIVERY = "delivery"
SCHEDULER = "scheduler"


class Liveness:
    """Progress marks of the worker's loops (monotonic seconds), and which of them are stuck.

    ``busy``/``done`` bracket a unit of work (a delivery batch); ``beat`` marks a periodic
    loop's run (the scheduler). Called from the event loop only.
    """

    def __init__(self, stuck_after_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stuck_after_s = stuck_after_s
        self._clock = clock
        self._busy_since: dict[str, float] = {}
        self._last_beat: dict[str, float] = {}

    def busy(self, loop: str) -> None:
        self._busy_since[loop] = self._clock()

    def done(self, loop: str) -> None:
        self._busy_since.pop(loop, None)

    def beat(self, loop: str) -> None:
        self._last_beat[loop] = self._clock()

    def ages_s(self) -> dict[str, float]:
        """Per loop, seconds since its last beat (the scheduler), or how long it has held its
        batch in hand (the delivery agent; absent while it holds none)."""
        now = self._clock()
        ages = {loop: now - at for loop, at in self._last_beat.items()}
        for loop, since in self._busy_since.items():
            ages[loop] = now - since
        return dict(sorted(ages.items()))

    def stuck(self) -> list[str]:
        """One line per stuck loop, naming it and for how long (empty: all make progress)."""
        now = self._clock()
        lines = [
            f"{loop}: one batch in hand for {now - since:.0f} s"
            for loop, since in sorted(self._busy_since.items())
            if now - since > self.stuck_after_s
        ]
        lines += [
            f"{loop}: last ran {now - at:.0f} s ago"
            for loop, at in sorted(self._last_beat.items())
            if now - at > self.stuck_after_s
        ]
        return lines
