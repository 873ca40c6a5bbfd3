"""The namespace config (user-facing contract) and its validation.

A namespace names a use case: its WAL topic ``wal.<name>``, its dead-letter topic
``wal.<name>.dlq``, the worker shard that consumes it, its targets, and its retry policy.
Validation is strict (unknown fields are errors) so that a typo never silently changes how
entries are delivered.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
#: CQL identifiers: walstream quotes nothing, so only plain lower-case names are accepted.
CQL_IDENT_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


class NamespaceError(ValueError):
    """A namespace config is invalid; the message names every problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryPolicy(_Strict):
    """Backoff for failed deliveries: ``initial_delay_ms * multiplier**(attempt-1)``,
    capped at ``max_delay_ms``, spread by ``±jitter``; after ``max_attempts`` the entry is
    dead-lettered."""

    initial_delay_ms: int = Field(default=100, ge=1, le=86_400_000)
    multiplier: float = Field(default=2.0, ge=1.0, le=100.0)
    max_delay_ms: int = Field(default=30_000, ge=1, le=7 * 86_400_000)
    max_attempts: int = Field(default=8, ge=1, le=1000)
    jitter: float = Field(default=0.2, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> RetryPolicy:
        if self.max_delay_ms < self.initial_delay_ms:
            raise ValueError("retry.max_delay_ms must be >= retry.initial_delay_ms")
        return self


class CassandraTargetConfig(_Strict):
    """Apply mutation payloads to tables of ``keyspace`` with ``USING TIMESTAMP``."""

    type: Literal["cassandra"]
    keyspace: str
    #: overrides the worker's default cluster (``WALSTREAM_CASSANDRA_HOSTS``), e.g. ``["10.0.0.1"]``
    hosts: list[str] | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    consistency: Literal["ONE", "LOCAL_ONE", "QUORUM", "LOCAL_QUORUM", "ALL"] = "LOCAL_QUORUM"
    #: native protocol version (5 for Cassandra 4.0+, 4 for 3.x)
    protocol_version: int = Field(default=5, ge=3, le=5)

    @field_validator("keyspace")
    @classmethod
    def _keyspace_ident(cls, v: str) -> str:
        if not CQL_IDENT_RE.match(v):
            raise ValueError("keyspace must match [a-z][a-z0-9_]{0,47}")
        return v


class ElasticsearchTargetConfig(_Strict):
    """Apply mutation payloads to indices ``<index_prefix><table>`` with external versions."""

    type: Literal["elasticsearch"]
    index_prefix: str = ""
    #: overrides the worker's default cluster (``WALSTREAM_ELASTICSEARCH_URL``)
    url: str | None = None
    refresh: bool = False

    @field_validator("index_prefix")
    @classmethod
    def _prefix_ok(cls, v: str) -> str:
        if v and not re.match(r"^[a-z0-9][a-z0-9_.-]{0,100}$", v):
            raise ValueError("index_prefix must be lower case letters, digits, '_', '.', '-'")
        return v


class KafkaTargetConfig(_Strict):
    """Produce the payload as-is to ``topic`` (same cluster unless ``bootstrap`` is set)."""

    type: Literal["kafka"]
    topic: str = Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")
    bootstrap: str | None = None


class NoopTargetConfig(_Strict):
    """Accepts every entry and does nothing: for benchmarks and pipeline tests."""

    type: Literal["noop"]


TargetConfig = Annotated[
    CassandraTargetConfig | ElasticsearchTargetConfig | KafkaTargetConfig | NoopTargetConfig,
    Field(discriminator="type"),
]

#: target types whose payloads must be mutation payloads (checked at write time)
MUTATION_TARGET_TYPES = frozenset({"cassandra", "elasticsearch"})


class NamespaceConfig(_Strict):
    """One namespace. ``version`` is assigned by walstream on every accepted change."""

    name: str
    shard: str = Field(default="default", pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    targets: list[TargetConfig] = Field(min_length=1, max_length=16)
    retry: RetryPolicy = RetryPolicy()
    ordering: Literal["key", "none"] = "key"
    description: str = Field(default="", max_length=2000)
    version: int = Field(default=0, ge=0)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(
                "name must start with a lower-case letter and contain only a-z, 0-9, '_' "
                "and '-' (at most 63 characters)"
            )
        return v

    @property
    def topic(self) -> str:
        return wal_topic(self.name)

    @property
    def dlq_topic(self) -> str:
        return dlq_topic(self.name)

    @property
    def needs_mutations(self) -> bool:
        return any(t.type in MUTATION_TARGET_TYPES for t in self.targets)

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))


def wal_topic(namespace: str) -> str:
    return f"wal.{namespace}"


def dlq_topic(namespace: str) -> str:
    return f"wal.{namespace}.dlq"


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line per problem, each naming the field: ``retry.max_attempts: ...``."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
        msg = err["msg"]
        if err["type"] == "union_tag_invalid":
            ctx = err.get("ctx") or {}
            msg = f"unknown target type {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
        elif err["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"{prefix}{loc}: {msg}" if loc else f"{prefix}{msg}")
    return "; ".join(lines)


_UNION_TAGS = {"cassandra", "elasticsearch", "kafka", "noop"}


def parse_namespace(data: Any, *, name: str | None = None) -> NamespaceConfig:
    """Validate a namespace document (a mapping, or JSON/YAML text).

    ``name``, when given (the URL's ``{name}``), must agree with the document's ``name`` or
    fill it in. Raises :class:`NamespaceError` with every problem found.
    """
    if isinstance(data, (bytes, str)):
        try:
            data = yaml.safe_load(data)  # YAML is a superset of JSON
        except yaml.YAMLError as exc:
            raise NamespaceError(f"not valid YAML or JSON: {exc}") from None
    if not isinstance(data, dict):
        raise NamespaceError("a namespace must be a mapping (JSON object)")
    if name is not None:
        doc_name = data.get("name", name)
        if doc_name != name:
            raise NamespaceError(f"name {doc_name!r} in the body differs from {name!r} in the URL")
        data = {**data, "name": name}
    # the version is walstream's to assign, never the client's
    data = {k: v for k, v in data.items() if k != "version"}
    try:
        return NamespaceConfig.model_validate(data)
    except ValidationError as exc:
        raise NamespaceError(format_validation_error(exc)) from None
