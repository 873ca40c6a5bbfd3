"""walstream.faust_topics: a topic is declared once per worker process, however often Faust's
conductor asks (it asks for every internal topic on each subscription change)."""

from __future__ import annotations

from typing import Any

import faust
import pytest

from walstream.app import WalApp
from walstream.faust_topics import OnceDeclaredTopic

pytestmark = pytest.mark.timeout(30)


async def test_each_topic_is_declared_once(wal: WalApp, monkeypatch: pytest.MonkeyPatch) -> None:
    declared: list[tuple[str, ...]] = []

    async def declare(self: Any) -> None:
        declared.append(tuple(self.topics))

    monkeypatch.setattr(faust.Topic, "declare", declare)
    changelog = wal.faust.topic("x-changelog", internal=True)
    assert isinstance(changelog, OnceDeclaredTopic)
    await changelog.maybe_declare()
    await changelog.maybe_declare()
    await changelog.clone(is_iterator=True).maybe_declare()  # what the conductor iterates
    await wal.faust.topic("y-changelog", internal=True).maybe_declare()
    assert declared == [("x-changelog",), ("y-changelog",)], declared


def test_tables_keep_a_standby_copy_by_default_and_as_configured(wal: WalApp, tmp_path: Any) -> None:
    from tests.unit.conftest import build_wal

    assert wal.faust.conf.table_standby_replicas == 1
    assert build_wal("memory://", tmp_path / "other", standby_replicas=0).faust.conf.table_standby_replicas == 0
