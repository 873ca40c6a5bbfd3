"""Binding Faust's "current event" for table writes made on behalf of a batch.

Faust routes a table write to the changelog partition of the *current event* and refuses
writes when there is none — which is the case inside ``stream.take_events()`` batches. The
delivery agent processes a batch one partition at a time; for each it binds one event of
that partition, so every write for the partition lands in the partition it belongs to.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from faust.streams import _current_event


@contextmanager
def bound_event(event: Any) -> Iterator[None]:
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)
