"""The namespace config (user-facing contract) and its validation.

A namespace names a use case: its WAL topic ``wal.<name>``, its dead-letter topic
``wal.<name>.dlq``, the worker shard that consumes it, its targets, and its retry policy.
Validation is strict so that a typo never silently changes how entries are delivered:
unknown fields are errors, and no value is coerced (``max_attempts: true`` or ``"8"`` or
``8.0`` is not 8, ``refresh: "yes"`` is not true, ``multiplier: .inf`` is refused).

Documents are read strictly too (:func:`parse_namespace`): JSON by :mod:`walstream.strict_json`,
YAML by the YAML 1.2 core schema with duplicate keys refused (see :class:`StrictYamlLoader`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, ScalarNode

from walstream import strict_json
from walstream.auth import stored_token
from walstream.settings import REGION_RE
from walstream.shards import DEFAULT_SHARD, SHARD_PATTERN

NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
#: CQL identifiers: walstream quotes nothing, so only plain lower-case names are accepted.
CQL_IDENT_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


class NamespaceError(ValueError):
    """A namespace config is invalid; the message names every problem."""


class _Strict(BaseModel):
    # strict: no coercion (True is not 1, "8" is not 8, 8.0 is not 8; an int is a float)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


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


def _url_port_ok(url: str | None) -> str | None:
    """``url`` unchanged, or ValueError when it names a port outside 1..65535 (the URL
    patterns allow any digits there; the HTTP client fails on them only at the first call)."""
    if url is not None:
        try:
            port = urlsplit(url).port
        except ValueError:
            port = -1
        if port is not None and not 1 <= port <= 65535:
            raise ValueError("the port must be from 1 to 65535")
    return url


class PacingConfig(_Strict):
    """How fast one target may be fed (walstream.delivery.pacing): at most ``max_per_s``
    entries per second from the whole fleet (each worker takes its share of partitions).
    ``adaptive``: the rate halves when the target slows (a call over ``slow_ms``) or fails
    for want of capacity, and grows back by a twentieth of ``max_per_s`` per good call."""

    #: at least one entry per 100 s: below, an entry would wait for days for its turn
    max_per_s: float = Field(ge=0.01, le=1_000_000)
    adaptive: bool = False
    slow_ms: int = Field(default=1000, ge=1, le=600_000)


def _pacing_field() -> Any:
    # left out of the config's JSON when not given: a target's id is a hash of that JSON, and
    # the targets written before pacing existed keep theirs
    return Field(default=None, exclude_if=lambda v: v is None)


class CassandraTargetConfig(_Strict):
    """Apply mutation payloads to tables of ``keyspace`` with ``USING TIMESTAMP``."""

    type: Literal["cassandra"]
    pacing: PacingConfig | None = _pacing_field()
    keyspace: str
    #: overrides the worker's default cluster (``WALSTREAM_CASSANDRA_HOSTS``), e.g. ``["10.0.0.1"]``
    hosts: list[Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[^\s/,]+$")]] | None = Field(
        default=None, min_length=1, max_length=64
    )
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
    pacing: PacingConfig | None = _pacing_field()
    index_prefix: str = ""
    #: overrides the worker's default cluster (``WALSTREAM_ELASTICSEARCH_URL``); http(s) only
    url: str | None = Field(default=None, pattern=r"^https?://[^\s/?#]+(:\d+)?(/[^\s]*)?$", max_length=2000)
    refresh: bool = False

    _port_in_range = field_validator("url")(lambda cls, v: _url_port_ok(v))

    @field_validator("index_prefix")
    @classmethod
    def _prefix_ok(cls, v: str) -> str:
        if v and not re.match(r"^[a-z0-9][a-z0-9_.-]{0,100}$", v):
            raise ValueError("index_prefix must be lower case letters, digits, '_', '.', '-'")
        return v


class KafkaTargetConfig(_Strict):
    """Produce the payload as-is to ``topic`` (same cluster unless ``bootstrap`` is set)."""

    type: Literal["kafka"]
    pacing: PacingConfig | None = _pacing_field()
    topic: str = Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")
    #: ``host:port[,host:port...]``
    bootstrap: str | None = None

    @field_validator("bootstrap")
    @classmethod
    def _ports_in_range(cls, v: str | None) -> str | None:
        # only what can never work is refused: configs stored before stay readable
        for item in (v or "").split(","):
            port = item.strip().rsplit(":", 1)[1] if ":" in item else ""
            if port.isdigit() and not 1 <= int(port) <= 65535:
                raise ValueError(f"port {port} is not from 1 to 65535")
        return v


#: headers the http target sets itself, or that only the HTTP client may set
_RESERVED_HEADERS = frozenset({
    "walstream-id", "walstream-ts", "walstream-namespace", "content-type", "content-length", "host",
    "transfer-encoding", "connection", "upgrade", "te", "trailer", "keep-alive", "proxy-connection",
})


class HttpTargetConfig(_Strict):
    """Send each entry's payload as JSON to an upstream service (walstream.targets.http).

    ``headers`` are sent with every request; they are part of the namespace config, which
    ``GET /v1/namespaces`` shows, so they must not carry secrets."""

    type: Literal["http"]
    pacing: PacingConfig | None = _pacing_field()
    url: str = Field(pattern=r"^https?://[^\s/?#@:]+(:\d{1,5})?(/[^\s#]*)?$", max_length=2000)
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    headers: dict[
        Annotated[str, Field(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$")],
        Annotated[str, Field(pattern=r"^[\x20-\x7e]{0,4000}$")],
    ] = Field(default_factory=dict, max_length=32)
    #: one request's deadline (connect, send, answer), in ms
    timeout_ms: int = Field(default=10_000, ge=1, le=300_000)

    _port_in_range = field_validator("url")(lambda cls, v: _url_port_ok(v))

    @field_validator("headers")
    @classmethod
    def _headers_not_reserved(cls, v: dict[str, str]) -> dict[str, str]:
        taken = sorted(h for h in v if h.lower() in _RESERVED_HEADERS)
        if taken:
            which = f"headers {', '.join(taken)} are" if len(taken) > 1 else f"header {taken[0]} is"
            raise ValueError(f"{which} set by walstream or the HTTP client, not the config")
        if len({h.lower() for h in v}) < len(v):
            raise ValueError("a header is given twice (names are case-insensitive)")
        return v


class NoopTargetConfig(_Strict):
    """Accepts every entry and does nothing: for benchmarks and pipeline tests."""

    type: Literal["noop"]
    pacing: PacingConfig | None = _pacing_field()


TargetConfig = Annotated[
    CassandraTargetConfig | ElasticsearchTargetConfig | KafkaTargetConfig | HttpTargetConfig | NoopTargetConfig,
    Field(discriminator="type"),
]

#: target types whose payloads must be mutation payloads (checked at write time)
MUTATION_TARGET_TYPES = frozenset({"cassandra", "elasticsearch"})

RegionName = Annotated[str, Field(pattern=REGION_RE.pattern)]


class RegionTargetConfig(_Strict):
    """Forwarding to a peer region (walstream.targets.region): each entry written in this
    region is produced, as it is, to ``wal.<namespace>`` on that region's Kafka. Never part of
    a namespace document: walstream derives one per peer from ``replication.regions``."""

    type: Literal["region"]
    region: RegionName
    #: the namespace forwarded: each (peer, namespace) is a target of its own, with its own
    #: circuit, so that one namespace's missing topic in the peer holds up no other
    namespace: str = Field(pattern=NAME_RE.pattern)


class RegionConfig(_Strict):
    """What one region of a replicated namespace holds differently: its own ``targets``
    (default: the namespace's)."""

    targets: list[TargetConfig] | None = Field(default=None, min_length=1, max_length=16)


class ReplicationConfig(_Strict):
    """The regions that hold a namespace (walstream.replication). Each applies every entry
    to its own targets; the region an entry was written in forwards it to the others."""

    regions: dict[RegionName, RegionConfig] = Field(min_length=2, max_length=16)


class NamespaceConfig(_Strict):
    """One namespace. ``version`` is assigned by walstream on every accepted change."""

    # the pattern is checked by _name_ok (with a message that says it in words) and shown in the
    # API's description
    name: str = Field(json_schema_extra={"pattern": NAME_RE.pattern})
    shard: str = Field(default=DEFAULT_SHARD, pattern=SHARD_PATTERN)
    targets: list[TargetConfig] = Field(min_length=1, max_length=16)
    retry: RetryPolicy = RetryPolicy()
    ordering: Literal["key", "none"] = "key"
    #: a mutation group still without its commit marker (or a member) this long after its
    #: first record was written is ABORTED, none of it applied (walstream.delivery.groups)
    group_timeout_s: int = Field(default=3600, ge=1, le=7 * 86_400, strict=True)
    #: how long ``wal.<name>`` keeps records (Kafka's ``retention.ms``), which bounds how far
    #: back a replay reaches (walstream.replay); None: the topic's is left as it is (the
    #: broker's default for a new topic). At least a day: an entry must outlive any backlog of
    #: workers that are down, or it would be deleted unread.
    retention_ms: int | None = Field(default=None, ge=86_400_000, le=3650 * 86_400_000, strict=True)
    description: str = Field(default="", max_length=2000)
    #: tokens that may write to (and cancel entries of) this namespace (walstream.auth); none:
    #: open. Given as tokens or as their digests (``sha256:<hex>``); kept and shown as digests.
    write_tokens: list[str] = Field(default_factory=list, max_length=64)
    #: the targets an entry may name in its own ``target`` (exactly as listed here); none: an
    #: entry may not override the namespace's targets (a client must not make workers call
    #: arbitrary hosts)
    allowed_target_overrides: list[TargetConfig] = Field(default_factory=list, max_length=64)
    #: the regions holding this namespace, each with its own Kafka and fleet (walstream.replication);
    #: None: the namespace lives in one region
    replication: ReplicationConfig | None = None
    #: assigned by walstream on every accepted change; a client does not send it
    version: int = Field(default=0, ge=0, json_schema_extra={"readOnly": True})

    @field_validator("write_tokens")
    @classmethod
    def _tokens_as_digests(cls, v: list[str]) -> list[str]:
        return sorted({stored_token(token, f"write token {n}") for n, token in enumerate(v)})

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
        return any(t.type in MUTATION_TARGET_TYPES for t in self.all_targets)

    @property
    def all_targets(self) -> list[TargetConfig]:
        """The targets of every region (an entry must suit each: it is applied in all)."""
        regions = self.replication.regions.values() if self.replication else []
        return [*self.targets, *(t for r in regions for t in r.targets or [])]

    def targets_in(self, region: str | None) -> list[TargetConfig]:
        """This namespace's targets in ``region`` (None: a worker outside replication)."""
        if region is None or self.replication is None:
            return self.targets
        own = self.replication.regions.get(region)
        return own.targets if own is not None and own.targets is not None else self.targets

    def peers_of(self, region: str | None) -> list[str]:
        """The regions an entry written in ``region`` is forwarded to: the others listed,
        when ``region`` is listed itself (sorted)."""
        if region is None or self.replication is None or region not in self.replication.regions:
            return []
        return sorted(r for r in self.replication.regions if r != region)

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))


class NamespaceDocument(NamespaceConfig):
    """What ``PUT /v1/namespaces/{name}`` takes (its description's body; :func:`parse_namespace`
    reads it): a namespace's config whose ``name`` may be left out, since the path names it
    (given, it must equal the path's)."""

    name: str | None = Field(default=None, json_schema_extra={"pattern": NAME_RE.pattern})  # type: ignore[assignment]

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str | None) -> str | None:  # type: ignore[override]
        return None if v is None else NamespaceConfig._name_ok(v)


def wal_topic(namespace: str) -> str:
    return f"wal.{namespace}"


def dlq_topic(namespace: str) -> str:
    return f"wal.{namespace}.dlq"


def validation_message(err: Any) -> str:
    """One pydantic error's message, without the "Value error, " pydantic puts before a
    validator's own message (which says it all)."""
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ") if err.get("type") == "value_error" else msg


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line per problem, each naming the field: ``retry.max_attempts: ...``."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
        msg = validation_message(err)
        if err["type"] == "union_tag_invalid":
            ctx = err.get("ctx") or {}
            msg = f"unknown target type {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
        elif err["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"{prefix}{loc}: {msg}" if loc else f"{prefix}{msg}")
    return "; ".join(lines)


_UNION_TAGS = {"cassandra", "elasticsearch", "kafka", "noop"}


def parse_namespace(data: Any, *, name: str | None = None) -> NamespaceConfig:
    """Validate a namespace document (a mapping, or JSON/YAML text read by :func:`load_document`).

    ``name``, when given (the URL's ``{name}``), must agree with the document's ``name`` or
    fill it in. Raises :class:`NamespaceError` with every problem found.
    """
    if isinstance(data, (bytes, str)):
        data = load_document(data)
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


def load_document(text: bytes | str) -> Any:
    """A namespace file's value: JSON (read by :mod:`walstream.strict_json`) or YAML (read by
    :class:`StrictYamlLoader`). Raises :class:`NamespaceError` naming the problem and where.

    A text starting with ``{`` is JSON unless it is not JSON at all (then it may be a YAML flow
    mapping such as ``{name: x, targets: [...]}``); a JSON document with a problem (a duplicate
    key, a number out of range) is refused as such, never re-read as YAML.
    """
    head = text.lstrip()[:1]
    json_error: strict_json.StrictJSONError | None = None
    if head in (b"{", "{"):
        try:
            return strict_json.loads(text)
        except strict_json.StrictJSONError as exc:
            if not exc.malformed:
                raise NamespaceError(str(exc)) from None
            json_error = exc
    try:
        return yaml.load(text, Loader=StrictYamlLoader)  # a SafeLoader
    except (ConstructorError, yaml.composer.ComposerError) as exc:
        raise NamespaceError(_yaml_problem(exc)) from None  # well-formed, but refused
    except yaml.YAMLError as exc:
        if json_error is not None:
            raise NamespaceError(f"not valid JSON ({json_error}) nor YAML: {_yaml_problem(exc)}") from None
        raise NamespaceError(f"not valid YAML or JSON: {_yaml_problem(exc)}") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error on one line: ``duplicate key 'name' (line 3, column 1)``."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        return f"{exc.problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else exc.problem
    return " ".join(str(exc).split())


class StrictYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 core-schema scalars, duplicate keys refused, and
    nesting bounded by :data:`walstream.strict_json.MAX_DEPTH`.

    PyYAML implements YAML 1.1, where ``yes``/``no``/``on``/``off`` are booleans, ``1:30`` is
    the sexagesimal number 90 and ``010`` is octal 8. Here a plain scalar is a boolean only if
    it is ``true``/``false`` (any case style of the core schema), a number only in the core
    schema's forms (``10``, ``0o10``, ``0x1f``, ``1.5``, ``1e3``, ``.inf``, ``.nan``), and
    otherwise a string, so ``max_attempts: yes`` is refused by the model (a string is not an
    integer). ``010`` is refused outright: YAML 1.1 and 1.2 disagree about its value.
    Integers must fit 64 bits and numbers must fit a 64-bit float, as in JSON.
    """

    yaml_implicit_resolvers: dict[Any, Any] = {}  # none of SafeLoader's (YAML 1.1) resolvers

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._levels = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        # PyYAML composes recursively: bound the depth before Python's recursion limit does
        deeper = self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent)
        if deeper:
            self._levels += 1
            if self._levels > strict_json.MAX_DEPTH + 1:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                problem = f"nested deeper than {strict_json.MAX_DEPTH} levels"
                raise yaml.composer.ComposerError(None, None, problem, mark)
        try:
            return super().compose_node(parent, index)
        finally:
            if deeper:
                self._levels -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    repeated = key in seen
                except TypeError:  # an unhashable key: SafeConstructor refuses it below
                    continue
                if repeated:
                    raise ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_core_int(self, node: ScalarNode) -> int:
        text = str(self.construct_scalar(node))
        digits = text.lstrip("+-")
        if len(digits) > 1 and digits[0] == "0" and digits[1].isdigit():
            raise ConstructorError(
                None,
                None,
                f"{text} is ambiguous (octal in YAML 1.1, decimal in YAML 1.2): "
                f"write it without the leading zero, or as 0o{digits.lstrip('0')} for octal",
                node.start_mark,
            )
        if len(digits) > 24:
            value = None
        elif digits[:2] in ("0o", "0x"):
            value = int(digits[2:], 8 if digits[1] == "o" else 16) * (-1 if text[0] == "-" else 1)
        else:
            value = int(text)
        if value is None or not strict_json.INT_MIN <= value <= strict_json.INT_MAX:
            raise ConstructorError(None, None, f"integer {text[:40]} is outside the 64-bit range", node.start_mark)
        return value

    def construct_core_float(self, node: ScalarNode) -> float:
        text = str(self.construct_scalar(node))
        special = text.lstrip("+-").lower()
        if special == ".inf":
            return float("-inf") if text[0] == "-" else float("inf")
        if special == ".nan":
            return float("nan")
        value = float(text)
        if value - value != 0.0:
            raise ConstructorError(
                None, None, f"number {text[:40]} is beyond the range of a 64-bit float", node.start_mark
            )
        return value


# The YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#103-core-schema), in resolution order.
# The last argument lists the characters a scalar of that kind can start with ("" = empty).
_CORE_SCALARS: list[tuple[str, str, list[str]]] = [
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", [*"~nN", ""]),
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", list("-+0123456789")),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        list("-+0123456789."),
    ),
]
for _tag, _pattern, _first in _CORE_SCALARS:
    StrictYamlLoader.add_implicit_resolver(_tag, re.compile(_pattern), _first)
StrictYamlLoader.add_constructor("tag:yaml.org,2002:int", StrictYamlLoader.construct_core_int)
StrictYamlLoader.add_constructor("tag:yaml.org,2002:float", StrictYamlLoader.construct_core_float)
