"""The garbage collector's settings for a worker process.

CPython's cyclic collector visits every tracked object of a generation each time it runs,
and a worker holds hundreds of thousands of long-lived objects built before it serves
anything: imported modules, pydantic's validators, Faust's app, the namespace configs. With
the default thresholds (700, 10, 10) the collections that walk them ran all the time under
load. Measured with ``bench.run``'s L3 noop load on one worker (200,000 entries per run, two
runs): 157 / 161 µs of worker CPU per delivered entry with the defaults, 138 / 147 µs after
:func:`gc.freeze` alone, 133 / 137 µs with the thresholds below as well; resident memory
was no higher.
"""

from __future__ import annotations

import gc

#: allocations before a young collection, and young (then middle) collections before the
#: next older one: cyclic garbage is still collected, in fewer, larger passes
THRESHOLDS = (50_000, 20, 100)


def tune_for_worker() -> None:
    """Move every object alive now (the built app) out of the collector's sight for good
    (:func:`gc.freeze`: such objects are never collected, so call it once, after the app is
    built and before it serves), and set :data:`THRESHOLDS`. No collection first: it would
    cost a restarted worker ~0.1 s, and the little garbage left by the imports stays."""
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
