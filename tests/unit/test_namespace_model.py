"""Namespace validation: every invalid config is refused with a message naming the field."""

from __future__ import annotations

import pytest

from walstream.namespaces.model import NamespaceError, parse_namespace

VALID = {
    "name": "catalog",
    "targets": [{"type": "cassandra", "keyspace": "catalog"},
                {"type": "elasticsearch", "index_prefix": "catalog_"}],
    "retry": {"initial_delay_ms": 100, "multiplier": 2.0, "max_delay_ms": 30000, "max_attempts": 8, "jitter": 0.2},
}


def test_valid_config_gets_defaults() -> None:
    cfg = parse_namespace(VALID)
    assert cfg.shard == "default"
    assert cfg.ordering == "key"
    assert cfg.topic == "wal.catalog"
    assert cfg.dlq_topic == "wal.catalog.dlq"
    assert cfg.needs_mutations


def test_yaml_document() -> None:
    cfg = parse_namespace(b"name: orders\ntargets:\n  - type: kafka\n    topic: orders-out\n")
    assert cfg.name == "orders"
    assert cfg.targets[0].type == "kafka"
    assert not cfg.needs_mutations


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"targets": [{"type": "mysql"}]}, "unknown target type 'mysql'"),
        ({"targets": []}, "targets"),
        ({"retry": {"multiplier": 0.5}}, "retry.multiplier"),
        ({"retry": {"max_attempts": 0}}, "retry.max_attempts"),
        ({"retry": {"initial_delay_ms": 500, "max_delay_ms": 100}}, "max_delay_ms must be >="),
        ({"retry": {"jitter": 2}}, "retry.jitter"),
        ({"name": "Bad Name"}, "name must start with a lower-case letter"),
        ({"name": "x" * 64}, "name"),
        ({"ordering": "random"}, "ordering"),
        ({"colour": "blue"}, "colour: unknown field"),
        ({"targets": [{"type": "cassandra"}]}, "keyspace"),
        ({"targets": [{"type": "cassandra", "keyspace": "Drop Table"}]}, "keyspace must match"),
    ],
)
def test_invalid_configs_name_the_problem(change: dict[str, object], expected: str) -> None:
    with pytest.raises(NamespaceError) as err:
        parse_namespace({**VALID, **change})
    assert expected in str(err.value)


def test_url_name_must_match_body() -> None:
    with pytest.raises(NamespaceError, match="differs"):
        parse_namespace(VALID, name="other")
    assert parse_namespace({k: v for k, v in VALID.items() if k != "name"}, name="catalog").name == "catalog"


def test_client_cannot_set_version() -> None:
    assert parse_namespace({**VALID, "version": 99}).version == 0


@pytest.mark.parametrize("text", [b"[1, 2", b"- just\n- a list\n", b"42"])
def test_not_a_mapping(text: bytes) -> None:
    with pytest.raises(NamespaceError):
        parse_namespace(text)
