"""The API's description (GET /openapi.json) against the routes the worker serves: every
route is described, nothing described is missing, and the document is a loadable OpenAPI 3.1
description whose models are walstream.api's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis

from tests.unit.conftest import build_wal
from walstream.web.openapi import Operation, spec
from walstream.web.views import OPERATIONS

pytestmark = pytest.mark.timeout(60)


def served(tmp_path: Path) -> set[tuple[str, str]]:
    wal = build_wal("memory://", tmp_path)
    return {
        (method.lower(), path)
        for path, view in wal.faust.web.views.items()
        for method in view.get_methods() - {"HEAD", "OPTIONS"}
    }


def described(operations: tuple[Operation, ...] = OPERATIONS) -> set[tuple[str, str]]:
    return {(method, path) for path, ops in spec(operations)["paths"].items() for method in ops}


def test_every_route_is_described_and_every_description_is_a_route(tmp_path: Path) -> None:
    routes = served(tmp_path)
    assert ("post", "/v1/log") in routes and ("get", "/openapi.json") in routes  # the check sees routes
    assert routes == described()


def test_a_route_missing_from_the_description_is_seen(tmp_path: Path) -> None:
    assert served(tmp_path) != described(OPERATIONS[1:])


def test_the_document_loads_as_openapi_3_1_with_every_model() -> None:
    doc: dict[str, Any] = spec(OPERATIONS)
    assert doc["openapi"].startswith("3.1")
    schema = schemathesis.openapi.from_dict(doc)
    operations = [op.ok() for op in schema.get_all_operations()]
    assert {(op.method.lower(), op.path) for op in operations} == described()
    schemas = doc["components"]["schemas"]
    for name in ("LogRequest", "LogBatchRequest", "WriteResult", "EntryStatus", "DeadLetterList",
                 "RedriveRequest", "RedriveResult", "NamespaceConfig", "Health", "ErrorAnswer"):
        assert name in schemas
    write = doc["paths"]["/v1/log"]["post"]
    assert write["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/LogRequest"}
    assert set(write["responses"]) >= {"200", "400", "404", "409", "413", "503", "default"}


def test_auth_refusals_are_described_where_they_are_answered() -> None:
    doc = spec(OPERATIONS)
    assert {"401", "403"} <= set(doc["paths"]["/v1/log"]["post"]["responses"])
    assert {"401", "403"} <= set(doc["paths"]["/v1/namespaces/{name}"]["put"]["responses"])
    # a batch answers every refusal inside its 200, item by item
    batch = doc["paths"]["/v1/log/batch"]["post"]
    assert not {"401", "403"} & set(batch["responses"]) and batch["security"] == [{"bearer": []}, {}]
