"""CPU seconds used by the processes a benchmark involves, sampled from outside.

A worker (any child by pid): utime + stime of ``/proc/<pid>/stat`` (every thread, not its
children), in ticks of ``os.sysconf("SC_CLK_TCK")``, so a resolution of 10 ms at the usual 100 Hz.
This process: ``resource.getrusage(RUSAGE_SELF)`` (every thread). The Kafka broker: the pid in
the pid file ``walstream stack`` keeps (``<state>/kafka/pid``), read the same way as a worker;
``None`` when that broker is not running (e.g. a broker the stack did not start).
"""

from __future__ import annotations

import os
import resource
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")

#: the processes a :class:`CpuWindow` reports, in print order
PROCESSES = ("worker", "bench", "kafka")


def proc_cpu_s(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # fields after "(comm)": comm may hold spaces and parentheses, so split after the last ")"
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def self_cpu_s() -> float:
    """User + system CPU seconds of this process so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def kafka_broker_pid() -> int | None:
    """Pid of the Kafka broker ``walstream stack`` runs, or ``None`` when it runs none."""
    from walstream.stack.stack import runners

    return runners(["kafka"])[0].pid()


def _sample(pids: Sequence[int]) -> float | None:
    try:
        return sum(proc_cpu_s(p) for p in pids) if pids else None
    except (FileNotFoundError, ProcessLookupError):  # exited: no honest figure
        return None


@dataclass
class CpuWindow:
    """CPU used by each process from construction to :meth:`per_1000`.

    ``worker_pids`` are summed into one figure (a fleet's workers together); empty means no
    worker takes part and its figure is ``None``, as is the broker's when ``broker_pid`` is.
    """

    worker_pids: Sequence[int]
    broker_pid: int | None

    def __post_init__(self) -> None:
        self._start = self._now()

    def _now(self) -> dict[str, float | None]:
        return {
            "worker": _sample(self.worker_pids),
            "bench": self_cpu_s(),
            "kafka": _sample([self.broker_pid] if self.broker_pid is not None else []),
        }

    def per_1000(self, entries: int) -> dict[str, float | None]:
        """CPU seconds per 1,000 entries since construction, for each of :data:`PROCESSES`."""
        end = self._now()
        out: dict[str, float | None] = {}
        for name in PROCESSES:
            a, b = self._start[name], end[name]
            out[name] = None if a is None or b is None or entries <= 0 else (b - a) / entries * 1000
        return out
