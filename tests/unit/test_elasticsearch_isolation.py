"""The Elasticsearch target isolates bad items: whatever makes Elasticsearch refuse a whole
``_bulk`` request fails only the operation that causes it (validated before sending, or
found by splitting the request), and requests are cut to a bounded size.

These tests drive :meth:`ElasticsearchTarget.bulk_isolated` with a stand-in client that
refuses requests the way Elasticsearch does; tests/integration/test_es_isolation.py does
the same against the real cluster.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig
from elasticsearch import ApiError, BadRequestError

from walstream.mutations import MAX_ES_DOC_ID_BYTES, MutationError, parse_mutations
from walstream.namespaces.model import ElasticsearchTargetConfig
from walstream.targets import elasticsearch as es_target
from walstream.targets.base import PermanentError, TargetDownError
from walstream.targets.elasticsearch import ElasticsearchTarget, index_name_problem


def _meta(status: int) -> ApiResponseMeta:
    return ApiResponseMeta(status=status, http_version="1.1", headers=HttpHeaders(), duration=0.0,
                           node=NodeConfig("http", "localhost", 9200))


class FakeBulkClient:
    """Answers ``bulk`` like Elasticsearch: the whole request is refused (400) when any
    action carries a poisoned id, or with ``status_for_all`` when set; else every item is
    created."""

    def __init__(self, status_for_all: int | None = None) -> None:
        self.requests: list[list[bytes]] = []
        self.status_for_all = status_for_all

    async def bulk(self, operations: list[bytes], refresh: str) -> dict[str, Any]:
        self.requests.append(operations)
        if self.status_for_all is not None:
            raise ApiError("refused", _meta(self.status_for_all), {"error": {"type": "x", "reason": "down"}})
        actions = [orjson.loads(line) for line in operations if b'"_index"' in line]
        for a in actions:
            meta = next(iter(a.values()))
            if meta["_id"].startswith("poison"):
                raise BadRequestError("refused", _meta(400), {"error": {
                    "type": "action_request_validation_exception", "reason": f"id [{meta['_id']}] is too long"}})
        return {"items": [{next(iter(a)): {"status": 201}} for a in actions]}

    async def mget(self, docs: list[dict[str, Any]], realtime: bool) -> dict[str, Any]:
        return {"docs": [{**d, "found": False} for d in docs]}

    @property
    def indices(self) -> FakeBulkClient:
        return self

    async def create(self, **_: Any) -> dict[str, Any]:
        return {"acknowledged": True}

    async def close(self) -> None:
        pass


def _target(client: FakeBulkClient) -> ElasticsearchTarget:
    cfg = ElasticsearchTargetConfig(type="elasticsearch", index_prefix="p_")
    t = ElasticsearchTarget(cfg, "http://127.0.0.1:1", 1.0)
    asyncio.run(t.close())
    t._client = client  # type: ignore[assignment]
    return t


def _op(doc_id: str, size: int = 10) -> list[bytes]:
    return [orjson.dumps({"index": {"_index": "p_t", "_id": doc_id}}), orjson.dumps({"v": "x" * size})]


def test_a_request_refused_as_a_whole_is_split_until_the_bad_operation_is_alone() -> None:
    # Given 16 operations, one of which makes Elasticsearch refuse any request containing it
    client = FakeBulkClient()
    target = _target(client)
    ops = [_op(f"ok{i}") for i in range(16)]
    ops[11] = _op("poison")
    # When they are sent
    results = asyncio.run(target.bulk_isolated(ops))
    # Then only that one fails, with Elasticsearch's reason, and every other one is applied
    assert [i for i, r in enumerate(results) if not isinstance(r, dict)] == [11]
    bad = results[11]
    assert isinstance(bad, PermanentError) and "id [poison] is too long" in bad.message
    assert all(r == {"status": 201} for i, r in enumerate(results) if i != 11)
    # ... having halved the requests (not one request per operation)
    assert len(client.requests) <= 1 + 2 * 4


def test_several_bad_operations_each_fail_alone() -> None:
    client = FakeBulkClient()
    ops = [_op("poison-a" if i in (0, 7) else f"ok{i}") for i in range(8)]
    results = asyncio.run(_target(client).bulk_isolated(ops))
    assert [i for i, r in enumerate(results) if isinstance(r, PermanentError)] == [0, 7]


def test_a_cluster_that_does_not_serve_fails_everything_transiently_without_splitting() -> None:
    for status in (429, 503):
        client = FakeBulkClient(status_for_all=status)
        results = asyncio.run(_target(client).bulk_isolated([_op(f"ok{i}") for i in range(8)]))
        assert all(isinstance(r, TargetDownError) for r in results)
        assert len(client.requests) == 1


def test_requests_are_cut_at_the_byte_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a bound of 1,000 bytes and ten operations of ~300 bytes
    monkeypatch.setattr(es_target, "MAX_BULK_BYTES", 1000)
    client = FakeBulkClient()
    results = asyncio.run(_target(client).bulk_isolated([_op(f"ok{i}", size=250) for i in range(10)]))
    # Then every request stays under it and all are applied
    assert all(r == {"status": 201} for r in results)
    assert len(client.requests) >= 4
    assert all(sum(len(line) + 1 for line in req) <= 1000 for req in client.requests)


@pytest.mark.parametrize("name,fragment", [
    ("a" * 256, "at most 255"),
    ("Movies", "lower case"),
    ("_movies", "must not start"),
    ("-movies", "must not start"),
    ("+movies", "must not start"),
    ("mo*vies", "forbids"),
    ("mo vies", "forbids"),
    ("mo#vies", "forbids"),
    ("..", "not allowed"),
])
def test_index_names_elasticsearch_refuses_are_named(name: str, fragment: str) -> None:
    problem = index_name_problem(name)
    assert problem is not None and fragment in problem


def test_valid_index_name_passes() -> None:
    assert index_name_problem("catalog_movies.v2-x") is None


def test_an_entry_elasticsearch_cannot_take_fails_alone_before_any_request() -> None:
    # Given a batch of valid entries and one whose document id is over 512 bytes (a record
    # from another producer: the write API refuses such payloads)
    from walstream.entry import Entry

    def entry(i: int, key: str) -> Entry:
        return Entry(id=f"e{i}", namespace="n", key=key, written_at_us=1_000 + i, payload={"mutations": [
            {"table": "t", "op": "put", "key": {"id": key}, "value": {"v": i}}]})

    client = FakeBulkClient()
    target = _target(client)
    outcomes = asyncio.run(target.apply([entry(0, "a"), entry(1, "é" * 300), entry(2, "b")]))
    # Then only that one fails, naming the limit
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], PermanentError) and "at most 512" in outcomes[1].message


def test_write_time_refuses_ids_elasticsearch_can_never_take() -> None:
    def payload(v: str) -> dict[str, Any]:
        return {"mutations": [{"table": "t", "op": "delete", "key": {"id": v}}]}

    # 512 bytes of UTF-8 pass; 513 (or 2-byte characters past the limit) and empty ids do not
    parse_mutations(payload("x" * MAX_ES_DOC_ID_BYTES), for_elasticsearch=True)
    for bad, fragment in [("x" * 513, "513 bytes"), ("é" * 257, "514 bytes"), ("", "empty")]:
        with pytest.raises(MutationError, match=fragment):
            parse_mutations(payload(bad), for_elasticsearch=True)
    # ... only for elasticsearch targets: Cassandra takes long keys
    parse_mutations(payload("x" * 600))
    # a composite key's id counts its separators
    with pytest.raises(MutationError, match=r"mutations\.0\.key"):
        parse_mutations({"mutations": [{"table": "t", "op": "delete", "key": {"a": "x" * 300, "b": "y" * 300}}]},
                        for_elasticsearch=True)
