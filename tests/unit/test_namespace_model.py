"""Namespace validation: every invalid config is refused with a message naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from walstream.namespaces.model import ElasticsearchTargetConfig, NamespaceError, parse_namespace

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


# --- strict reading: no "last wins", no YAML 1.1 surprises, no coercion ----------------------

YAML_BASE = "name: orders\ntargets:\n  - type: elasticsearch\n    index_prefix: orders_\n"


def yaml_with(extra: str) -> bytes:
    return (YAML_BASE + extra).encode()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        # YAML 1.1 booleans are strings in YAML 1.2, and a string is not an integer
        ("retry: {max_attempts: yes}\n", "retry.max_attempts: Input should be a valid integer"),
        ("retry: {max_attempts: on}\n", "retry.max_attempts: Input should be a valid integer"),
        ("retry: {max_attempts: No}\n", "retry.max_attempts: Input should be a valid integer"),
        ("retry: {max_attempts: y}\n", "retry.max_attempts: Input should be a valid integer"),
        # ... nor are booleans integers (pydantic would coerce true to 1)
        ("retry: {max_attempts: true}\n", "retry.max_attempts: Input should be a valid integer"),
        ("retry: {multiplier: false}\n", "retry.multiplier: Input should be a valid number"),
        # sexagesimal 1:30 (90 in YAML 1.1) is a string
        ("retry: {max_delay_ms: 1:30}\n", "retry.max_delay_ms: Input should be a valid integer"),
        # 010 is octal 8 in YAML 1.1 and decimal 10 in 1.2: ambiguous, refused
        ("retry: {max_attempts: 010}\n", "010 is ambiguous (octal in YAML 1.1, decimal in YAML 1.2)"),
        ("retry: {max_attempts: 8.0}\n", "retry.max_attempts: Input should be a valid integer"),
        ("retry: {max_attempts: '8'}\n", "retry.max_attempts: Input should be a valid integer"),
        ("retry: {max_attempts: 18446744073709551617}\n", "integer 18446744073709551617 is outside the 64-bit range"),
        ("retry: {multiplier: 1e400}\n", "number 1e400 is beyond the range of a 64-bit float"),
        ("retry: {multiplier: .inf}\n", "retry.multiplier: Input should be a finite number"),
        ("retry: {jitter: .nan}\n", "retry.jitter: Input should be a finite number"),
        # a YAML 1.1 boolean where a boolean is expected is still a string: write true/false
        ("    refresh: yes\n", "targets.0.refresh: Input should be a valid boolean"),
        ("shard: 1.0\n", "shard: Input should be a valid string"),
        ("description: [a]\n", "description: Input should be a valid string"),
        # duplicate keys at any depth
        ("name: other\n", "duplicate key 'name' (line 5, column 1)"),
        ("retry: {max_attempts: 3, max_attempts: 4}\n", "duplicate key 'max_attempts' (line 5, column 26)"),
        ("    index_prefix: again_\n", "duplicate key 'index_prefix' (line 5, column 5)"),
        # nesting beyond the limit is a 400, not a RecursionError
        ("description: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper than 128 levels"),
    ],
)
def test_yaml_is_read_strictly(extra: str, expected: str) -> None:
    with pytest.raises(NamespaceError) as err:
        parse_namespace(yaml_with(extra))
    assert expected in str(err.value), str(err.value)


def test_yaml_core_schema_values_are_accepted() -> None:
    cfg = parse_namespace(
        yaml_with(
            "    refresh: true\n"
            "retry: {max_attempts: 0o10, initial_delay_ms: 0x64, multiplier: 3, jitter: 5e-1, max_delay_ms: 1000}\n"
            "description: on\n"
        )
    )
    target = cfg.targets[0]
    assert isinstance(target, ElasticsearchTargetConfig) and target.refresh is True
    r = cfg.retry
    assert (r.max_attempts, r.initial_delay_ms, r.multiplier, r.jitter) == (8, 100, 3, 0.5)
    assert cfg.description == "on"  # a YAML 1.1 boolean is text in YAML 1.2
    assert parse_namespace(yaml_with("description: 2026-01-01\n")).description == "2026-01-01"  # no 1.1 date
    target = parse_namespace(yaml_with("    refresh: False\n")).targets[0]
    assert isinstance(target, ElasticsearchTargetConfig) and target.refresh is False
    # a YAML flow mapping that looks like JSON but is not
    assert parse_namespace(b"{name: orders, targets: [{type: noop}]}").name == "orders"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b'{"name": "orders", "targets": [{"type": "noop"}], "name": "other"}', "duplicate key 'name'"),
        (b'{"name": "orders", "targets": [{"type": "noop", "type": "kafka"}]}', "targets.0: duplicate key 'type'"),
        (b'{"name": "orders", "targets": [{"type": "noop"}], "retry": {"max_attempts": 18446744073709551617}}',
         "retry.max_attempts: integer 18446744073709551617 is outside the 64-bit range"),
        (b'{"name": "orders", "targets": [{"type": "noop"}], "retry": {"multiplier": 1e400}}',
         "retry.multiplier: number is beyond the range of a 64-bit float"),
        (b'{"name": "orders", "targets": [{"type": "noop"}], "retry": {"multiplier": NaN}}',
         "retry.multiplier: NaN is not a JSON number"),
        (b'{"name": "orders", "targets": [{"type": "noop"}], "retry": {"max_attempts": true}}',
         "retry.max_attempts: Input should be a valid integer"),
    ],
)
def test_json_documents_are_read_strictly(text: bytes, expected: str) -> None:
    with pytest.raises(NamespaceError) as err:
        parse_namespace(text)
    assert expected in str(err.value), str(err.value)


@pytest.mark.parametrize(
    ("retry", "field"),
    [
        ({"max_attempts": True}, "retry.max_attempts"),
        ({"max_attempts": "8"}, "retry.max_attempts"),
        ({"max_attempts": 8.0}, "retry.max_attempts"),
        ({"initial_delay_ms": False}, "retry.initial_delay_ms"),
        ({"multiplier": True}, "retry.multiplier"),
        ({"multiplier": "2"}, "retry.multiplier"),
        ({"multiplier": float("inf")}, "retry.multiplier"),
        ({"jitter": float("nan")}, "retry.jitter"),
    ],
)
def test_numbers_are_not_coerced(retry: dict[str, object], field: str) -> None:
    with pytest.raises(NamespaceError) as err:
        parse_namespace({**VALID, "retry": retry})
    assert field in str(err.value)
    for target, fragment in [
        ({"type": "cassandra", "keyspace": "k", "port": True}, "targets.0.port"),
        ({"type": "cassandra", "keyspace": "k", "protocol_version": "4"}, "targets.0.protocol_version"),
        ({"type": "elasticsearch", "refresh": "yes"}, "targets.0.refresh"),
        ({"type": "elasticsearch", "refresh": 1}, "targets.0.refresh"),
    ]:
        with pytest.raises(NamespaceError, match=fragment):
            parse_namespace({**VALID, "targets": [target]})


def test_an_int_is_a_valid_float() -> None:
    assert parse_namespace({**VALID, "retry": {"multiplier": 3, "jitter": 0}}).retry.multiplier == 3.0


@pytest.mark.parametrize(
    "target",
    [
        {"type": "elasticsearch", "url": "file:///etc/passwd"},
        {"type": "elasticsearch", "url": "gopher://127.0.0.1:70/"},
        {"type": "elasticsearch", "url": "http://"},
        {"type": "cassandra", "keyspace": "ks", "hosts": [""]},
        {"type": "cassandra", "keyspace": "ks", "hosts": []},
        {"type": "cassandra", "keyspace": "ks", "hosts": ["a b"]},
    ],
)
def test_target_addresses_are_hosts_and_http_urls(target: dict[str, Any]) -> None:
    with pytest.raises(NamespaceError):
        parse_namespace({"name": "ns", "targets": [target]})


def test_ordinary_target_addresses_are_accepted() -> None:
    cfg = parse_namespace({"name": "ns", "targets": [
        {"type": "elasticsearch", "url": "https://es.internal:9200/prefix"},
        {"type": "cassandra", "keyspace": "ks", "hosts": ["10.0.0.1", "cass-2.internal"]},
    ]})
    assert len(cfg.targets) == 2


def test_a_validators_message_is_given_without_pydantics_prefix() -> None:
    with pytest.raises(NamespaceError) as exc:
        parse_namespace({"name": "Bad!", "targets": [{"type": "noop"}]})
    assert str(exc.value).startswith("name: name must start with a lower-case letter"), str(exc.value)
    assert "Value error" not in str(exc.value)


def test_the_put_body_may_leave_the_name_out() -> None:
    """The description of ``PUT /v1/namespaces/{name}`` says what the view takes: a document
    without ``name`` (the path names it), so a fuzzer does not call accepting it a bug."""
    from walstream.namespaces.model import NamespaceDocument

    schema = NamespaceDocument.model_json_schema(mode="validation")
    assert "name" not in schema.get("required", []) and "targets" in schema["required"]
    assert parse_namespace({"targets": [{"type": "noop"}]}, name="orders").name == "orders"
    with pytest.raises(ValidationError):
        NamespaceDocument.model_validate({"name": "Bad!", "targets": [{"type": "noop"}]})


@pytest.mark.parametrize(
    "target",
    [
        {"type": "http", "url": "http://h:99999/hook"},
        {"type": "http", "url": "http://h:0/hook"},
        {"type": "elasticsearch", "url": "http://h:70000"},
        {"type": "kafka", "topic": "t", "bootstrap": "h:9092,g:99999"},
    ],
)
def test_a_target_port_outside_1_to_65535_is_refused(target: dict[str, Any]) -> None:
    with pytest.raises(NamespaceError, match="65535"):
        parse_namespace({"name": "ports", "targets": [target]})


def test_target_ports_in_range_and_bootstraps_without_ports_are_kept() -> None:
    for target in ({"type": "elasticsearch", "url": "http://h:9200"}, {"type": "kafka", "topic": "t", "bootstrap": "h"},
                   {"type": "kafka", "topic": "t", "bootstrap": "h:9092,g:9093"}):
        parse_namespace({"name": "ports", "targets": [target]})
