"""A worker's collector settings (walstream.gc_tuning): the built app is frozen out of the
collector's sight, in the process that runs the worker, before it starts."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from walstream import cli, gc_tuning
from walstream.settings import Settings


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_tuning_freezes_what_lives_now_and_keeps_the_thresholds(restored_gc: None) -> None:
    gc.unfreeze()
    built = [object() for _ in range(10)]  # tracked containers standing for the app
    marker = [built]
    thresholds = gc.get_threshold()
    gc_tuning.tune_for_worker()
    assert gc.get_freeze_count() > 0
    # frozen: in no generation the collector visits
    assert not any(marker is o for generation in range(3) for o in gc.get_objects(generation))
    after = [[], "created after the freeze"]  # a list: always tracked
    assert any(after is o for o in gc.get_objects(0))  # later objects are collected as before
    assert gc.get_threshold() == thresholds


def test_the_worker_command_tunes_the_collector_after_building_the_app(
    restored_gc: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    class Built(Exception):
        pass

    def build_app(settings: Settings) -> Any:
        calls.append("build")
        return object()

    def tune() -> None:
        calls.append("tune")
        raise Built  # stop before anything starts

    monkeypatch.setattr("walstream.app.build_app", build_app)
    monkeypatch.setattr(gc_tuning, "tune_for_worker", tune)
    monkeypatch.setattr(cli, "_check_port_free", lambda *a: None)
    loops: list[asyncio.AbstractEventLoop] = []
    new_loop = asyncio.new_event_loop
    monkeypatch.setattr(cli.asyncio, "new_event_loop", lambda: loops.append(new_loop()) or loops[-1])
    try:
        with pytest.raises(Built):
            cli.run_worker(Settings(datadir=tmp_path / "w", app_id="gc-test"))
    finally:
        for loop in loops:
            loop.close()
        asyncio.set_event_loop(None)
    assert calls == ["build", "tune"]
