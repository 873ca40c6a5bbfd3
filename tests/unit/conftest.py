"""Unit fixtures: a worker built without Kafka, on both table stores."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from walstream.app import WalApp, build_app
from walstream.entry import Entry
from walstream.namespaces.model import NamespaceConfig, parse_namespace
from walstream.settings import Settings
from walstream.targets.base import KeyRuns, NotSent, Outcomes, Target, TargetDownError, TargetError


class RecordingTarget(Target):
    """A stub target: records what it was given; fails entries as scripted by id. Set
    ``key_runs`` to ``IN_ORDER`` to take several entries of a key per call: the entries of a
    key after one that failed in a call are then not applied (reported transient), unless
    ``breaks_order`` (a target that breaks that promise)."""

    def __init__(self, label: str = "recording", clock: Callable[[], float] = time.time) -> None:
        self.label = label
        self.applied: list[Entry] = []
        #: ``clock()`` (seconds) when each entry of ``applied`` was applied, same order
        self.applied_at: list[float] = []
        #: the entry ids of every call, in call order (what went out together)
        self.batches: list[list[str]] = []
        self.calls = 0
        #: entry id -> errors to report on successive attempts (then success)
        self.script: dict[str, list[TargetError]] = {}
        #: the first this-many calls fail as a whole: the target is down (an outage)
        self.down_for_calls = 0
        self.clock = clock
        self.breaks_order = False

    async def apply(self, entries: Sequence[Entry]) -> Outcomes:
        self.calls += 1
        self.batches.append([e.id for e in entries])
        if self.calls <= self.down_for_calls:
            return [TargetDownError("no host available")] * len(entries)
        out: Outcomes = []
        stopped: set[str] = set()  # keys with a failed entry in this call (KeyRuns.IN_ORDER)
        for e in entries:
            errors = self.script.get(e.id)
            if e.key in stopped:
                out.append(NotSent("not sent: an earlier entry of its key failed in this call"))
            elif errors:
                out.append(errors.pop(0))
                if self.key_runs is KeyRuns.IN_ORDER and not self.breaks_order:
                    stopped.add(e.key)
            else:
                self.applied.append(e)
                self.applied_at.append(self.clock())
                out.append(None)
        return out


class FakeProducer:
    """Stands in for the Kafka producer of the dead-letter writer (unit tests only)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> Any:
        import asyncio

        self.sent.append((topic, value, key))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


class FakeChangelog:
    """Stands in for the producer of table changelogs (unit tests only): records every
    record it is given, each call's records in one batch, acknowledged at once with offsets
    counted per partition."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None, int]] = []
        self._next: dict[tuple[str, int], int] = {}

    async def send_batch(
        self, topic: str, partition: int, records: Sequence[tuple[bytes, bytes | None]]
    ) -> tuple[int, Any]:
        import asyncio
        from types import SimpleNamespace

        self.sent += [(topic, key, value, partition) for key, value in records]
        offset = self._next.get((topic, partition), 0)
        self._next[(topic, partition)] = offset + len(records)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(SimpleNamespace(topic=topic, partition=partition, offset=offset))
        return len(records), fut


class MemoryConsumer:
    """The offset ledger's consumer without Kafka: one generation, nothing committed, logs
    starting at 0 (Faust's test context numbers its records from 0); records what it is told."""

    def __init__(self) -> None:
        self.gen = 0
        self.committed_offsets: dict[Any, int] = {}
        self.earliest_offset = 0
        self.positions: dict[Any, int] = {}
        self.assigned: set[Any] = set()
        self.is_settled = True
        self.seeks: list[tuple[Any, int]] = []
        self.commits: list[dict[Any, int]] = []
        self.flushes = 0
        self.released: list[Any] = []
        self.refuse_commits = False

    def generation(self) -> int:
        return self.gen

    def settled(self) -> bool:
        return self.is_settled

    def assignment(self) -> set[Any]:
        return set(self.assigned)

    def position(self, tp: Any) -> int | None:
        return self.positions.get(tp)

    async def committed(self, tp: Any) -> int | None:
        return self.committed_offsets.get(tp)

    async def earliest(self, tp: Any) -> int:
        return self.earliest_offset

    async def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append((tp, offset))

    async def flush(self) -> None:
        self.flushes += 1

    async def commit(self, offsets: dict[Any, int]) -> bool:
        if self.refuse_commits:
            return False
        self.commits.append(dict(offsets))
        self.committed_offsets.update(offsets)
        return True

    def release(self, message: Any) -> None:
        self.released.append(message)


@pytest.fixture(params=["memory://", "rocksdb://"])
def store(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def build_wal(store: str, tmp_path: Path, **settings: Any) -> WalApp:
    """A worker on ``store`` in its own data dir, with ``settings`` overriding the defaults."""
    s = Settings(store=store, datadir=tmp_path / "worker", app_id=f"unit-{tmp_path.name}", **settings)
    app = build_app(s, offsets_port=MemoryConsumer())
    app.changelogs.send_batch = FakeChangelog().send_batch  # type: ignore[method-assign]
    return app


@pytest.fixture
def wal(store: str, tmp_path: Path) -> Iterator[WalApp]:
    yield build_wal(store, tmp_path)


def add_namespace(wal: WalApp, doc: dict[str, Any]) -> NamespaceConfig:
    cfg = parse_namespace(doc)
    wal.registry._apply_record(cfg.name.encode(), cfg.to_json())
    return cfg


Harness = tuple[WalApp, RecordingTarget, FakeProducer]


@pytest.fixture
def harness(wal: WalApp) -> Harness:
    """A worker with the ``orders`` namespace of test_delivery_agent.py (retries 1-5 ms, 3
    attempts, no jitter), every target a :class:`RecordingTarget`, dead letters to a
    :class:`FakeProducer` retried every 10 ms."""
    add_namespace(
        wal,
        {"name": "orders", "targets": [{"type": "noop"}],
         "retry": {"initial_delay_ms": 1, "max_delay_ms": 5, "max_attempts": 3, "jitter": 0}},
    )
    target = RecordingTarget()
    wal.targets.get = lambda cfg: target  # type: ignore[method-assign]
    producer = FakeProducer()
    wal.dead_letters._producer = producer  # type: ignore[assignment]
    wal.dead_letters._retry_s = 0.01
    return wal, target, producer


def random_float_literals(seed: int, n: int = 3000) -> list[str]:
    """JSON float literals of 1 to 20 significant digits, with and without fraction and
    exponent (up to 3 digits): what the strict float rule is checked over."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 20))).lstrip("0") or "0"
        dot = rng.randint(0, len(digits))
        literal = (digits[:dot] or "0") + "." + (digits[dot:] or "0")
        if rng.random() < 0.5:
            literal = (digits if rng.random() < 0.5 else literal) + f"e{rng.randint(-330, 310)}"
        out.append(literal)
    return out


def free_port() -> int:
    """A port nothing listens on (bound, read, released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hold_every_partition(wal: WalApp) -> None:
    """Make the worker's fleet router see this worker holding every partition of every table
    actively, as the first rebalance would (the unit harness has no consumer group): until
    then fleet-wide answers are incomplete and say so."""
    url = wal.fleet.self_url
    tables = (wal.schedule.table, wal.key_order.blocked, wal.key_order.held, wal.states.table, wal.dlq_index.table)
    held = {t.changelog_name: list(range(wal.settings.partitions)) for t in tables}
    wal.fleet._distribution = lambda: {url: held}
