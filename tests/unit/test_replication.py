"""Cross-region replication's rules (walstream.replication), through Faust's
``agent.test_context()`` on memory:// and rocksdb://: what a region forwards, what it never
forwards again, delayed entries forwarded at once, and the settings and configs that make a
region. The forwarding itself on two real Kafka clusters: tests/integration/test_replication.py.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.unit.conftest import RecordingTarget, add_namespace, build_wal
from tests.unit.test_delivery_agent import agent, send, tick
from walstream.app import WalApp
from walstream.entry import Entry, EntryDecodeError, WriteClock, cancellation_record, cancelled_by
from walstream.namespaces.model import NamespaceError, RegionTargetConfig, parse_namespace
from walstream.replication import region_problem
from walstream.requests import RequestError, parse_log_request
from walstream.settings import Settings, parse_region_brokers
from walstream.targets.base import TransientError
from walstream.targets.pool import TargetPool
from walstream.targets.region import RegionTarget
from walstream.web.entries import replicated_refusal

pytestmark = pytest.mark.timeout(60)

BROKERS = "east=127.0.0.1:1,west=127.0.0.1:2;127.0.0.1:3,south=127.0.0.1:4"
NS = {
    "name": "profiles",
    "targets": [{"type": "noop"}],
    "retry": {"initial_delay_ms": 1, "max_delay_ms": 5, "max_attempts": 3, "jitter": 0},
    "replication": {"regions": {"east": {}, "west": {"targets": [{"type": "kafka", "topic": "west-out"}]}}},
}


class Targets:
    """Every target of the worker, by what it is: ``local`` (this region's own), or one per
    peer region, as the deliverer asks the pool for them."""

    def __init__(self, wal: WalApp) -> None:
        self.local = RecordingTarget("local")
        self.peers: dict[str, RecordingTarget] = {}
        wal.targets.get = self.get  # type: ignore[method-assign]

    def get(self, cfg: Any) -> RecordingTarget:
        doc = cfg if isinstance(cfg, dict) else cfg.model_dump(mode="json")
        if doc["type"] == "region":
            return self.peers.setdefault(doc["region"], RecordingTarget(f"region:{doc['region']}"))
        return self.local

    def forwarded(self, region: str) -> list[str]:
        return [e.id for e in self.peers[region].applied] if region in self.peers else []


@pytest.fixture
def east(store: str, tmp_path: Path) -> tuple[WalApp, Targets]:
    wal = build_wal(store, tmp_path, region="east", region_brokers=BROKERS)
    add_namespace(wal, NS)
    from tests.unit.conftest import FakeProducer

    wal.dead_letters._producer = FakeProducer()  # type: ignore[assignment]
    return wal, Targets(wal)


def written(i: int, clock: WriteClock, origin: str | None = "east", **kw: Any) -> Entry:
    return Entry(id=f"e{i}", namespace="profiles", key=f"k{i % 2}", payload={"n": i},
                 written_at_us=clock.now_us(), origin=origin, **kw)


def state(wal: WalApp, entry_id: str) -> dict[str, Any]:
    doc = wal.states.get("profiles", entry_id)
    assert doc is not None
    return doc


async def test_an_entry_written_here_is_applied_here_and_forwarded_to_each_peer(east: tuple[WalApp, Targets]) -> None:
    wal, targets = east
    clock = WriteClock()
    async with agent(wal).test_context() as ctx:
        await send(ctx, written(1, clock), written(2, clock))
        await tick(ctx)
    assert [e.id for e in targets.local.applied] == ["e1", "e2"]
    # west is the only other region the namespace lists (south is known but does not hold it)
    assert sorted(targets.peers) == ["west"]
    assert targets.forwarded("west") == ["e1", "e2"]
    # forwarded as written: same id, key, write time and origin
    assert targets.peers["west"].applied[0].origin == "east"
    doc = state(wal, "e1")
    assert doc["state"] == "DELIVERED" and doc["origin"] == "east"
    assert sorted(t["type"] for t in doc["targets"].values()) == ["noop", "region:west"]


async def test_an_entry_from_another_region_is_applied_and_never_forwarded_again(
    east: tuple[WalApp, Targets],
) -> None:
    wal, targets = east
    clock = WriteClock()
    async with agent(wal).test_context() as ctx:
        await send(ctx, written(1, clock, origin="west"), written(2, clock, origin=None))
        await tick(ctx)
    assert [e.id for e in targets.local.applied] == ["e1", "e2"]
    assert targets.peers == {}  # neither a forwarded entry nor one written outside replication


async def test_an_entry_naming_its_own_targets_is_not_forwarded(east: tuple[WalApp, Targets]) -> None:
    wal, targets = east
    async with agent(wal).test_context() as ctx:
        await send(ctx, written(1, WriteClock(), targets=[{"type": "noop"}]))
        await tick(ctx)
    assert [e.id for e in targets.local.applied] == ["e1"]
    assert targets.peers == {}


async def test_a_delayed_entry_is_forwarded_at_once_and_applied_here_when_due(east: tuple[WalApp, Targets]) -> None:
    wal, targets = east
    clock = WriteClock()
    due_ms = int(time.time() * 1000) + 400
    async with agent(wal).test_context() as ctx:
        await send(ctx, written(1, clock, due_at_ms=due_ms))
        await tick(ctx)
        # forwarded before it is due (the peer holds it in its own schedule) ...
        assert targets.forwarded("west") == ["e1"]
        assert targets.peers["west"].applied_at[0] * 1000 < due_ms
        # ... and waiting here
        assert targets.local.applied == []
        doc = state(wal, "e1")
        assert doc["state"] == "DELAYED"
        assert sorted(t["state"] for t in doc["targets"].values()) == ["DELAYED", "DELIVERED"]
        while time.time() * 1000 < due_ms + 50:
            await tick(ctx, after_s=0.05)
    assert [e.id for e in targets.local.applied] == ["e1"]
    assert targets.local.applied_at[0] * 1000 >= due_ms  # never early
    assert targets.forwarded("west") == ["e1"]  # not forwarded again when due
    assert state(wal, "e1")["state"] == "DELIVERED"


async def test_a_peer_that_is_down_holds_only_its_own_forwarding(east: tuple[WalApp, Targets]) -> None:
    wal, targets = east
    west = targets.get({"type": "region", "region": "west", "namespace": "profiles"})
    west.down_for_calls = 1000

    def lag() -> float | None:
        return wal.metrics.registry.get_sample_value(
            "walstream_replication_lag_seconds", {"namespace": "profiles", "peer": "west"})

    clock = WriteClock()
    async with agent(wal).test_context() as ctx:
        await send(ctx, written(1, clock), written(2, clock))
        await tick(ctx)
        assert [e.id for e in targets.local.applied] == ["e1", "e2"]  # not held by the peer
        await asyncio.sleep(0.05)
        assert (lag() or 0) >= 0.05  # west falls behind
        west.down_for_calls = 0  # west is back
        deadline = time.monotonic() + 10
        while len(targets.forwarded("west")) < 2 and time.monotonic() < deadline:
            await tick(ctx, after_s=0.05)
    assert targets.forwarded("west") == ["e1", "e2"]  # in their write order, once each
    assert state(wal, "e2")["state"] == "DELIVERED"
    assert lag() == 0  # nothing waits for west any more


# -- configs and settings -------------------------------------------------------------------


def test_a_region_holds_its_own_targets_or_the_namespaces() -> None:
    cfg = parse_namespace(NS)
    assert [t.type for t in cfg.targets_in("east")] == ["noop"]
    assert [t.type for t in cfg.targets_in("west")] == ["kafka"]
    assert [t.type for t in cfg.targets_in(None)] == ["noop"]
    assert cfg.peers_of("east") == ["west"] and cfg.peers_of("west") == ["east"]
    assert cfg.peers_of("south") == [] and cfg.peers_of(None) == []
    assert [t.type for t in cfg.all_targets] == ["noop", "kafka"]


@pytest.mark.parametrize(("replication", "problem"), [
    ({"regions": {"east": {}}}, "at least 2"),
    ({"regions": {"East": {}, "west": {}}}, "pattern"),
    ({"regions": {"east": {"targets": []}, "west": {}}}, "at least 1"),
    ({"regions": {"east": {"targets": [{"type": "region", "region": "west", "namespace": "x"}]}, "west": {}}},
     "unknown target type"),
    ({"regions": {"east": {}, "west": {}}, "lag": 1}, "unknown field"),
])
def test_bad_replication_configs_are_refused_naming_the_field(replication: dict[str, Any], problem: str) -> None:
    with pytest.raises(NamespaceError, match=problem) as err:
        parse_namespace({**NS, "replication": replication})
    assert "replication" in str(err.value)


def test_a_region_target_is_never_a_namespace_target() -> None:
    with pytest.raises(NamespaceError, match="unknown target type 'region'"):
        parse_namespace({"name": "x", "targets": [{"type": "region", "region": "west"}]})


def test_a_fleet_holds_only_namespaces_that_list_its_region_and_known_regions() -> None:
    east = Settings(region="east", region_brokers=BROKERS)
    assert region_problem(parse_namespace(NS), east) is None
    assert region_problem(parse_namespace({"name": "x", "targets": [{"type": "noop"}]}), east) is None
    away = parse_namespace({**NS, "replication": {"regions": {"west": {}, "south": {}}}})
    assert "not this fleet's region 'east'" in (region_problem(away, east) or "")
    unknown = parse_namespace({**NS, "replication": {"regions": {"east": {}, "north": {}}}})
    assert "'north' not in this fleet's WALSTREAM_REGION_BROKERS" in (region_problem(unknown, east) or "")
    # a worker outside replication takes it as a namespace of its own
    assert region_problem(unknown, Settings()) is None


def test_region_brokers_are_read_and_checked() -> None:
    assert parse_region_brokers(BROKERS) == {
        "east": "127.0.0.1:1", "west": "127.0.0.1:2,127.0.0.1:3", "south": "127.0.0.1:4"}
    assert parse_region_brokers("") == {}
    for bad, says in [("east", "not region=host:port"), ("east=", "not region=host:port"),
                      ("East=h:1", "not region=host:port"), ("east=h", "port from 1 to 65535"),
                      ("east=h:0", "port from 1 to 65535"), ("east=h:1,east=h:2", "named twice")]:
        with pytest.raises(ValueError, match=says):
            parse_region_brokers(bad)


@pytest.mark.parametrize(("env", "says"), [
    ({"region": "east"}, "does not name it"),
    ({"region": "north", "region_brokers": BROKERS}, "does not name it"),
    ({"region_brokers": BROKERS}, "WALSTREAM_REGION is not"),
])
def test_a_region_must_be_among_the_region_brokers(env: dict[str, str], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        Settings(**env)


# -- the entry and the write --------------------------------------------------------------


def test_the_origin_travels_in_the_envelope() -> None:
    e = written(1, WriteClock(), due_at_ms=123)
    assert Entry.decode(e.encode()) == e
    assert "origin" not in orjson.loads(written(2, WriteClock(), origin=None).encode())
    for bad in ("", "East", 7, "a" * 33):
        doc = {**orjson.loads(e.encode()), "origin": bad}
        with pytest.raises(EntryDecodeError, match="'origin' must be a region name"):
            Entry.from_doc(doc)


def test_a_write_to_a_replicated_namespace_carries_this_regions_origin() -> None:
    cfg = parse_namespace(NS)
    plain = parse_namespace({"name": "plain", "targets": [{"type": "noop"}]})
    lookup = {"profiles": cfg, "plain": plain}.get

    def write(doc: dict[str, Any], region: str | None) -> Entry:
        return parse_log_request(doc, lookup=lookup, clock=WriteClock(), max_entry_bytes=1 << 20, region=region)[0]

    assert write({"namespace": "profiles", "payload": 1}, "east").origin == "east"
    assert write({"namespace": "profiles", "payload": 1}, "south").origin is None  # it does not hold it
    assert write({"namespace": "profiles", "payload": 1}, None).origin is None
    assert write({"namespace": "plain", "payload": 1}, "east").origin is None
    with pytest.raises(RequestError, match="mutation groups are not replicated") as err:
        write({"namespace": "profiles", "group": {"id": "g", "seq": 0}, "payload": 1}, "east")
    assert err.value.status == 400


def test_a_write_must_suit_the_targets_of_every_region() -> None:
    cfg = parse_namespace({**NS, "replication": {"regions": {
        "east": {}, "west": {"targets": [{"type": "cassandra", "keyspace": "k"}]}}}})
    with pytest.raises(RequestError) as err:
        parse_log_request({"namespace": "profiles", "payload": {"not": "mutations"}}, lookup={"profiles": cfg}.get,
                          clock=WriteClock(), max_entry_bytes=1 << 20, region="east")
    assert err.value.status == 400 and "mutations" in str(err.value)


async def test_the_region_target_forwards_the_entry_as_written_to_the_peers_wal_topic() -> None:
    target = RegionTarget(RegionTargetConfig(type="region", region="west", namespace="profiles"), "127.0.0.1:2", 5.0)
    try:
        e = written(1, WriteClock(), due_at_ms=99)
        assert target.label == "region:west"
        assert target.topic_of(e) == "wal.profiles"
        value, headers = target.record_of(e)
        assert Entry.decode(value) == e and headers == []
    finally:
        await target.close()


# -- cancellations ------------------------------------------------------------------------


async def send_raw(ctx: Any, key: str, value: bytes) -> None:
    await ctx.put(key=key.encode(), value=value, wait=True)


async def test_a_peers_cancellation_cancels_a_delayed_entry_here(east: tuple[WalApp, Targets]) -> None:
    wal, targets = east
    clock = WriteClock()
    late = written(1, clock, origin="west", due_at_ms=int(time.time() * 1000) + 300)
    async with agent(wal).test_context() as ctx:
        await send(ctx, late)
        await tick(ctx)
        assert state(wal, "e1")["state"] == "DELAYED"
        await send_raw(ctx, late.key, cancellation_record("profiles", "e1", late.key, "west", clock.now_us()))
        await tick(ctx)
        assert state(wal, "e1")["state"] == "CANCELLED"
        while time.time() * 1000 < late.due_at_ms + 100:  # type: ignore[operator]
            await tick(ctx, after_s=0.05)
    assert targets.local.applied == [] and targets.peers == {}  # not applied, and not sent on


async def test_a_cancellation_that_arrives_before_its_entry_cancels_it_in_advance(
    east: tuple[WalApp, Targets],
) -> None:
    wal, targets = east
    clock = WriteClock()
    e = written(1, clock, origin="west")
    async with agent(wal).test_context() as ctx:
        await send_raw(ctx, e.key, cancellation_record("profiles", "e1", e.key, "west", clock.now_us()))
        await send(ctx, e, written(2, clock, origin="west"))
        await tick(ctx)
    assert [x.id for x in targets.local.applied] == ["e2"]
    assert state(wal, "e1")["state"] == "CANCELLED"


async def test_a_peers_cancellation_cancels_an_entry_whose_own_forward_still_retries(
    east: tuple[WalApp, Targets],
) -> None:
    wal, targets = east
    peer_of(targets).down_for_calls = 1000  # its forward to west retries: the entry reads RETRYING
    clock = WriteClock()
    late = written(1, clock, due_at_ms=int(time.time() * 1000) + 400)
    async with agent(wal).test_context() as ctx:
        await send(ctx, late)
        await tick(ctx)
        assert state(wal, "e1")["state"] == "RETRYING"
        await send_raw(ctx, late.key, cancellation_record("profiles", "e1", late.key, "west", clock.now_us()))
        await tick(ctx)
        assert state(wal, "e1")["state"] == "CANCELLED"
        while time.time() * 1000 < late.due_at_ms + 100:  # type: ignore[operator]
            await tick(ctx, after_s=0.05)
    assert targets.local.applied == []


def test_a_cancellation_record_is_never_read_as_an_entry() -> None:
    value = cancellation_record("profiles", "e1", "k", "east", 1)
    with pytest.raises(EntryDecodeError, match="payload"):  # (what a worker without replication does)
        Entry.decode(value)
    assert cancelled_by(orjson.loads(value)) == ("profiles", "e1")
    assert cancelled_by(orjson.loads(written(1, WriteClock()).encode())) is None
    for bad in ({"payload": 1}, {"id": ""}, {"v": 2}):
        with pytest.raises(EntryDecodeError, match="invalid cancellation"):
            cancelled_by({**orjson.loads(value), **bad})


# -- what review found: the invariants under config changes and races ---------------------


def peer_of(targets: Targets, region: str = "west") -> RecordingTarget:
    return targets.get({"type": "region", "region": region, "namespace": "profiles"})


def without_replication(version: int) -> dict[str, Any]:
    return {**{k: v for k, v in NS.items() if k != "replication"}, "version": version}


async def test_a_delayed_entry_is_not_applied_early_when_its_peer_is_dropped_while_forwarding(
    east: tuple[WalApp, Targets],
) -> None:
    wal, targets = east
    peer_of(targets).down_for_calls = 1000
    due_ms = int(time.time() * 1000) + 1500
    async with agent(wal).test_context() as ctx:
        await send(ctx, written(1, WriteClock(), due_at_ms=due_ms))
        await tick(ctx)
        # the namespace drops replication while the forward waits for west: the forward's retry
        # timer finds its target gone and hands the entry to the namespace's targets as they are
        add_namespace(wal, without_replication(2))
        while time.time() * 1000 < due_ms + 300:
            await tick(ctx, after_s=0.05)
            assert all(at * 1000 >= due_ms for at in targets.local.applied_at), "applied before its due time"
    assert [e.id for e in targets.local.applied] == ["e1"]  # once, when due


async def test_a_region_this_fleet_does_not_know_holds_only_its_own_forwarding(
    east: tuple[WalApp, Targets],
) -> None:
    wal, _ = east
    wal.targets.get = TargetPool(wal.settings).get  # type: ignore[method-assign]  # the real pool
    # a config pushed from a region whose fleet knows "north" (this one does not)
    add_namespace(wal, {**NS, "targets": [{"type": "noop"}], "version": 5,
                        "replication": {"regions": {"east": {}, "north": {}}}})
    async with agent(wal).test_context() as ctx:
        await send(ctx, written(1, WriteClock()))
        await tick(ctx)
    doc = state(wal, "e1")
    by_type = {t["type"]: t for t in doc["targets"].values()}
    assert by_type["noop"]["state"] == "DELIVERED"  # applied here
    assert by_type["region:north"]["state"] == "RETRYING"  # and waits for north, not dead
    assert "WALSTREAM_REGION_BROKERS" in by_type["region:north"]["last_error"]


async def test_a_peers_cancellation_of_an_entry_being_delivered_here_is_not_applied(
    east: tuple[WalApp, Targets],
) -> None:
    wal, targets = east
    targets.local.script["e1"] = [TransientError("busy")]
    clock = WriteClock()
    e = written(1, clock, origin="west")
    async with agent(wal).test_context() as ctx:
        await send(ctx, e)  # due now: being delivered (its first try failed)
        assert state(wal, "e1")["state"] == "RETRYING"
        await send_raw(ctx, e.key, cancellation_record("profiles", "e1", e.key, "west", clock.now_us()))
        deadline = time.monotonic() + 5
        while not targets.local.applied and time.monotonic() < deadline:
            await tick(ctx, after_s=0.05)
    assert [x.id for x in targets.local.applied] == ["e1"]  # west cancelled it too late: applied here too
    assert state(wal, "e1")["state"] == "DELIVERED"


def test_only_an_entry_not_due_yet_of_a_replicated_namespace_can_be_cancelled() -> None:
    later, earlier = int(time.time() * 1000) + 60_000, int(time.time() * 1000) - 1

    def doc(state: str, due_ms: int | None, offset: int | None = 3) -> dict[str, Any]:
        return {"id": "e1", "ns": "profiles", "state": state, "offset": offset, "due_ms": due_ms, "targets": {}}

    assert replicated_refusal(doc("DELAYED", later), "e1") is None
    # its forward to a peer retries (the entry reads RETRYING): still not due, still cancellable
    assert replicated_refusal(doc("RETRYING", later), "e1") is None
    assert replicated_refusal(doc("CANCELLED", None, offset=None), "e1") is None
    for state, due in (("PENDING", None), ("RETRYING", None), ("RETRYING", earlier), ("DELAYED", earlier)):
        refusal = replicated_refusal(doc(state, due), "e1")
        assert refusal is not None and "only before its due time" in refusal["message"], (state, due)
    assert "not in this region yet" in replicated_refusal(None, "e1")["message"]  # type: ignore[index]


def test_the_lag_is_the_age_of_the_oldest_entry_waiting_for_the_peer() -> None:
    from prometheus_client import CollectorRegistry

    from walstream.metrics import ReplicationLag

    registry = CollectorRegistry()
    lag = ReplicationLag(registry, stale_s=60)

    def value() -> float:
        v = registry.get_sample_value("walstream_replication_lag_seconds", {"namespace": "n", "peer": "west"})
        assert v is not None
        return v

    now = time.time()
    lag.observe("n", "west", "a", int((now - 30) * 1e6), True, now)
    lag.observe("n", "west", "b", int((now - 10) * 1e6), True, now)
    assert 29 < value() < 35  # the oldest waiting
    lag.observe("n", "west", "a", int((now - 30) * 1e6), False, now)  # forwarded
    assert 9 < value() < 15
    lag.observe("n", "west", "b", int((now - 10) * 1e6), False, now)
    assert value() == 0  # none waits
    lag.observe("n", "west", "c", int((now - 500) * 1e6), True, now - 120)  # not tried again since: gone
    assert value() == 0


async def test_configs_converge_to_the_one_written_last_and_a_deletion_is_not_undone(
    east: tuple[WalApp, Targets], monkeypatch: pytest.MonkeyPatch,
) -> None:
    import walstream.replication as replication

    wal, _ = east
    cfg = wal.registry.get("profiles")
    assert cfg is not None
    wal.registry._apply_record(b"profiles", cfg.to_json(), 5000)
    other = cfg.model_copy(update={"description": "changed there", "version": 9})
    theirs: dict[str, Any] = {}
    pushed: list[str] = []

    async def read_configs(bootstrap: str, topic: str) -> dict[str, Any]:
        return theirs

    async def push(self: Any, peer: str, c: Any, written_ms: Any) -> None:
        pushed.append(f"{peer}:{c.name}@{written_ms}")

    monkeypatch.setattr(replication, "read_configs", read_configs)
    monkeypatch.setattr(replication.Peers, "_push", push)
    cases = [
        ({}, ["west:profiles@5000"]),  # missing there
        ({"profiles": (cfg.model_copy(update={"version": 1}), 1000)}, []),  # the same, versions aside
        ({"profiles": (other, 1000)}, ["west:profiles@5000"]),  # older there
        ({"profiles": (other, 9000)}, []),  # newer there: it comes here instead
        ({"profiles": (None, 9000)}, []),  # deleted there after: not brought back
        ({"profiles": (None, 1000)}, ["west:profiles@5000"]),  # written here after its deletion there
    ]
    for there, expect in cases:
        theirs.clear()
        theirs.update(there)
        pushed.clear()
        await wal.peers.reconcile(wal.registry)
        assert pushed == expect, there
    # at the same millisecond, both regions pick the same one
    mine_first = replication.newer(cfg, 5000, other, 5000)
    assert mine_first != replication.newer(other, 5000, cfg, 5000)
