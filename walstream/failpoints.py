"""Failpoints: named places in the delivery path where a test can make the worker die.

A crash can fall between any two writes; the tests that prove walstream survives that need
to put it exactly there. ``WALSTREAM_FAILPOINTS=deliverer.after_timer_deletes`` arms a
failpoint: the first time the worker reaches it, it waits until every table write made so
far is durable (so the crash cannot hide behind an unsent buffer), then SIGKILLs itself.
Unarmed failpoints cost one set lookup. Production workers leave the setting empty.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

#: every failpoint walstream has (an unknown name in the setting is a configuration error)
KNOWN = frozenset({
    # targets have applied a batch; nothing of it is recorded yet (states, timers, letters)
    "deliverer.after_delivery",
    # a batch's successors and states are durable; its spent timers are not removed yet
    "deliverer.before_timer_deletes",
    # ... and they are removed
    "deliverer.after_timer_deletes",
})


class Failpoints:
    def __init__(self, armed: str, flush: Callable[[], Awaitable[None]]) -> None:
        names = {n.strip() for n in armed.split(",") if n.strip()}
        unknown = names - KNOWN
        if unknown:
            raise ValueError(f"unknown failpoint(s) {sorted(unknown)}; known: {sorted(KNOWN)}")
        self._armed = names
        self._flush = flush

    async def hit(self, name: str) -> None:
        """Die here if ``name`` is armed (once): flush table writes, then SIGKILL."""
        if name not in self._armed:
            return
        self._armed.discard(name)
        await self._flush()
        log.warning("failpoint %s: killing the worker", name)
        os.kill(os.getpid(), signal.SIGKILL)
