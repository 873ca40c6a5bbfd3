"""The garbage collector's settings for a worker process.

CPython's cyclic collector visits every tracked object of a generation each time it runs,
and a worker holds hundreds of thousands of long-lived objects built before it serves
anything: imported modules, pydantic's validators, Faust's app and its services. Every
collection of the oldest generation walked them all, again and again under load. Measured
with ``bench.run``'s L3 noop load on one worker (200,000 entries per run, two runs): 157 /
161 µs of worker CPU per delivered entry before, 138 / 147 µs after :func:`gc.freeze`, with
resident memory no higher.

The thresholds stay CPython's: raising them as well (50,000, 20, 100) measured 133 / 137 µs,
but it lets cyclic garbage made on error and retry paths (tracebacks holding frames that
hold entries) wait far longer for a full collection, which the noop load does not exercise.
"""

from __future__ import annotations

import gc


def tune_for_worker() -> None:
    """Move every object alive now (the built app) out of the collector's sight for good
    (:func:`gc.freeze`). Such an object is still freed by reference counting, but one that
    later becomes garbage inside a reference cycle is never collected: call this once, after
    the app is built and before it starts (no table database is open yet; those are opened
    at partition assignment, collected as before). No collection first: it would cost a
    restarted worker ~0.1 s, and the little garbage the imports left stays."""
    gc.freeze()
