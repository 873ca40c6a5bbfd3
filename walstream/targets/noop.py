"""A target that accepts everything and keeps nothing: for benchmarks and pipeline tests."""

from __future__ import annotations

from collections.abc import Sequence

from walstream.entry import Entry
from walstream.targets.base import KeyRuns, Outcomes, Target


class NoopTarget(Target):
    label = "noop"
    key_runs = KeyRuns.IN_ORDER  # never fails: applied in any call's order

    def __init__(self) -> None:
        self.applied = 0

    async def apply(self, entries: Sequence[Entry]) -> Outcomes:
        self.applied += len(entries)
        return [None] * len(entries)
