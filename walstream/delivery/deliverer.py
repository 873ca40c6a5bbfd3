"""The delivery runtime: applies a batch of WAL records to every target of their namespace.

Contract (what the delivery agent relies on):
- :meth:`Deliverer.deliver` never raises (an exception escaping a Faust agent would commit
  the batch's offsets without delivering it). It returns once every entry of the batch is
  either applied to each of its targets or durably written to the dead-letter topic.
- Each target is tracked separately: an entry that fails in one target is retried or
  dead-lettered for that target only; the others are not re-applied.
- Transient failures are retried in place with the namespace's backoff, up to its
  ``max_attempts``; permanent failures go straight to the dead-letter topic.
- An entry is never applied before its due time.

Interim (until durable delay and retry tables arrive): a delayed entry and a retry hold up
the batch they belong to.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from walstream.delivery.dead_letters import DeadLetter, DeadLetterWriter, SourceRecord
from walstream.delivery.retry import backoff_ms
from walstream.entry import Entry, EntryDecodeError
from walstream.metrics import Metrics
from walstream.namespaces.model import NamespaceConfig, RetryPolicy
from walstream.namespaces.registry import NamespaceRegistry
from walstream.targets.base import ErrorClass, Target, TargetError, TransientError
from walstream.targets.pool import TargetPool

log = logging.getLogger(__name__)


@dataclass
class _Item:
    record: SourceRecord
    entry: Entry


@dataclass
class _Work:
    """Entries bound for one target, with the namespace retry policy to use."""

    target: Target
    target_cfg: dict[str, Any]
    policy: RetryPolicy
    items: list[_Item] = field(default_factory=list)


class Deliverer:
    def __init__(
        self,
        registry: NamespaceRegistry,
        targets: TargetPool,
        dead_letters: DeadLetterWriter,
        metrics: Metrics,
    ) -> None:
        self.registry = registry
        self.targets = targets
        self.dead_letters = dead_letters
        self.metrics = metrics
        self._ns_targets: dict[tuple[str, int], list[tuple[dict[str, Any], Target]]] = {}

    async def deliver(self, records: Sequence[SourceRecord]) -> None:
        while True:
            try:
                await self._deliver(records)
                return
            except Exception:
                # Last line of defence: a bug here must not ack the batch. Everything is
                # retried from the start (targets are idempotent) after a pause.
                log.exception("delivery of %d records failed; retrying the batch", len(records))
                await asyncio.sleep(1.0)

    async def _deliver(self, records: Sequence[SourceRecord]) -> None:
        now_s = time.time()
        letters: list[DeadLetter] = []
        work: dict[int, _Work] = {}
        latest_due_ms = 0
        for rec in records:
            try:
                entry = Entry.decode(rec.value)
            except EntryDecodeError as exc:
                letters.append(_letter(rec, None, None, ErrorClass.UNDECODABLE, str(exc), 0, now_s))
                continue
            ns = self.registry.get(entry.namespace)
            if ns is None:
                letters.append(_letter(rec, entry, None, ErrorClass.NO_NAMESPACE,
                                       f"namespace {entry.namespace!r} does not exist", 0, now_s))
                continue
            if entry.due_at_ms is not None:
                latest_due_ms = max(latest_due_ms, entry.due_at_ms)
            try:
                resolved = self._targets_for(ns, entry)
            except Exception as exc:  # an override that no longer validates
                letters.append(_letter(rec, entry, None, ErrorClass.PERMANENT,
                                       f"bad target config: {exc}", 0, now_s))
                continue
            for cfg, target in resolved:
                w = work.setdefault(id(target), _Work(target, cfg, ns.retry))
                w.items.append(_Item(rec, entry))

        wait_s = latest_due_ms / 1000 - time.time()
        if wait_s > 0:
            await asyncio.sleep(wait_s)

        results = await asyncio.gather(*(self._deliver_to(w) for w in work.values()))
        for dead in results:
            letters.extend(dead)
        if letters:
            await self.dead_letters.write(letters)
            for dl in letters:
                self.metrics.dead_lettered.labels(
                    _ns(dl), (dl.target or {}).get("type", "-"), dl.error_class.value
                ).inc()

    def _targets_for(self, ns: NamespaceConfig, entry: Entry) -> list[tuple[dict[str, Any], Target]]:
        """The (config, target) pairs of an entry: its override, else its namespace's
        (resolved once per namespace version: this runs for every entry)."""
        if entry.targets is not None:
            return [(cfg, self.targets.get(cfg)) for cfg in entry.targets]
        cache_key = (ns.name, ns.version)
        resolved = self._ns_targets.get(cache_key)
        if resolved is None:
            resolved = [(t.model_dump(mode="json"), self.targets.get(t)) for t in ns.targets]
            self._ns_targets[cache_key] = resolved
        return resolved

    async def _deliver_to(self, w: _Work) -> list[DeadLetter]:
        """Apply ``w.items`` to one target, retrying transient failures in place."""
        pending = w.items
        first_failure: dict[int, float] = {}
        attempt = 0
        dead: list[DeadLetter] = []
        label = w.target_cfg["type"]
        while pending:
            attempt += 1
            outcomes = await self._apply(w.target, [it.entry for it in pending])
            now_s = time.time()
            retry: list[_Item] = []
            for it, err in zip(pending, outcomes, strict=False):
                ns_name = it.entry.namespace
                if err is None:
                    self.metrics.delivered.labels(ns_name, label).inc()
                    self.metrics.delivery_lag.labels(ns_name).observe(
                        max(0.0, now_s - _ready_at_s(it.entry))
                    )
                    continue
                self.metrics.delivery_failures.labels(ns_name, label, err.error_class.value).inc()
                first = first_failure.setdefault(id(it), now_s)
                if isinstance(err, TransientError) and attempt < w.policy.max_attempts:
                    retry.append(it)
                else:
                    dead.append(_letter(it.record, it.entry, w.target_cfg, err.error_class,
                                        err.message, attempt, first, now_s))
            pending = retry
            if pending:
                delay = backoff_ms(w.policy, attempt) / 1000
                log.warning("%s: %d entries failed transiently (attempt %d); retrying in %.2fs",
                            w.target.label, len(pending), attempt, delay)
                await asyncio.sleep(delay)
        return dead

    async def _apply(self, target: Target, entries: list[Entry]) -> list[TargetError | None]:
        try:
            outcomes = await target.apply(entries)
            if len(outcomes) != len(entries):
                raise RuntimeError(f"{target.label} returned {len(outcomes)} outcomes for {len(entries)} entries")
            return outcomes
        except Exception as exc:  # a target bug is a failure of the whole batch, retried
            log.exception("target %s raised", target.label)
            return [TransientError(f"{type(exc).__name__}: {exc}")] * len(entries)


def _ready_at_s(entry: Entry) -> float:
    if entry.due_at_ms is not None:
        return max(entry.due_at_ms / 1000, entry.written_at_us / 1e6)
    return entry.written_at_us / 1e6


def _ns(dl: DeadLetter) -> str:
    if isinstance(dl.entry, dict):
        return str(dl.entry.get("ns", "-"))
    return dl.source.topic.removeprefix("wal.")


def _letter(
    rec: SourceRecord,
    entry: Entry | None,
    target: dict[str, Any] | None,
    error_class: ErrorClass,
    message: str,
    attempts: int,
    first_s: float,
    last_s: float | None = None,
) -> DeadLetter:
    doc = orjson.loads(entry.encode()) if entry is not None else None
    return DeadLetter(
        source=rec,
        entry=doc,
        target=target,
        error_class=error_class,
        message=message,
        attempts=attempts,
        first_failure_s=first_s,
        last_failure_s=last_s if last_s is not None else first_s,
    )

