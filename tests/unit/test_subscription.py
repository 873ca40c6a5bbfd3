"""The subscription check (WalApp._check_subscription): a wanted topic the conductor does not
subscribe is flagged again, but not while the conductor rebuilds its index (every topic looks
missing then, and flagging cost every new namespace a second rebalance of the fleet)."""

from __future__ import annotations

import asyncio

import pytest

from walstream.app import WalApp

pytestmark = pytest.mark.timeout(30)


async def test_a_missing_topic_is_flagged_but_not_while_the_index_is_rebuilt(wal: WalApp) -> None:
    conductor = wal.faust.topics
    conductor._subscription_changed = asyncio.Event()
    conductor._topic_name_index.clear()
    conductor._topic_name_index.update({t: set() for t in wal.consumed_topics})
    wal._services_started = True
    wal._subscribe("orders")  # wanted, not in the index

    async with conductor._tp_to_callback_lock:  # the conductor is rebuilding its index
        await wal._check_subscription()
        assert not conductor._subscription_changed.is_set()
    await wal._check_subscription()
    assert conductor._subscription_changed.is_set()


async def test_nothing_is_flagged_when_every_wanted_topic_is_subscribed(wal: WalApp) -> None:
    conductor = wal.faust.topics
    conductor._subscription_changed = asyncio.Event()
    wal._services_started = True
    wal._subscribe("orders")
    conductor._topic_name_index.update({t: set() for t in wal.consumed_topics})
    await wal._check_subscription()
    assert not conductor._subscription_changed.is_set()
