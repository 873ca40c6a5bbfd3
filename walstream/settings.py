"""Worker settings, read from the environment once, at the edge (``WALSTREAM_*``).

Every field documents its environment variable and default. Nothing else in walstream reads
the environment: collaborators receive a :class:`Settings` instance from the composition root.
"""

from __future__ import annotations

import hashlib
import re
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from walstream.auth import stored_token
from walstream.shards import DEFAULT_SHARD, SHARD_PATTERN, group_id, parse_shard_urls

#: a region's name (``WALSTREAM_REGION``, a namespace's ``replication.regions``)
REGION_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")


class Settings(BaseSettings):
    """Configuration of one walstream worker."""

    # inf and nan are no durations or sizes (``WALSTREAM_ENTRY_RETENTION_S=inf`` crashed)
    # errors never carry the value given (it may be a token); the CLI names it where it may
    model_config = SettingsConfigDict(
        env_prefix="WALSTREAM_", frozen=True, extra="ignore", allow_inf_nan=False, hide_input_in_errors=True
    )

    #: ``WALSTREAM_BROKER``: Kafka bootstrap servers, comma separated.
    broker: str = "127.0.0.1:9092"
    #: ``WALSTREAM_APP_ID``: names one walstream deployment: its namespace registry
    #: (``<app_id>.namespaces``) and, for the default shard, its consumer group and tables.
    app_id: str = Field(default="walstream", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    #: ``WALSTREAM_SHARD``: the worker delivers the namespaces whose ``shard`` equals this. Each
    #: shard is its own consumer group with its own tables (walstream.shards, ``group_id``).
    shard: str = Field(default=DEFAULT_SHARD, pattern=SHARD_PATTERN)
    #: ``WALSTREAM_SHARD_URLS``: where the other shards answer, ``b=http://host:6066,c=...``
    #: (a worker or load balancer of each): requests about a namespace of another shard
    #: (status, cancel, dead letters, its pages) are forwarded there. Without an URL such a
    #: request is answered 503 naming the shard.
    shard_urls: str = ""
    #: ``WALSTREAM_REGION``: this fleet's region (walstream.replication): entries written here
    #: to a namespace whose ``replication.regions`` lists it are forwarded to the others listed.
    #: None (the default): no replication; such namespaces are delivered here like any other.
    region: str | None = Field(default=None, pattern=REGION_RE.pattern)
    #: ``WALSTREAM_REGION_BROKERS``: every region's Kafka, ``east=host:9092,west=host2:9092``
    #: (a region's servers separated by ``;``). Must name this fleet's own region.
    region_brokers: str = ""
    #: ``WALSTREAM_REGION_SYNC_S``: how often each worker makes sure every other region holds
    #: the replicated namespaces' latest configs (one that was down when a namespace was
    #: applied gets it then).
    region_sync_s: float = Field(default=30.0, ge=1.0, le=3600.0)
    #: ``WALSTREAM_WEB_HOST`` / ``WALSTREAM_WEB_PORT``: where the write API listens, and the
    #: address other workers of the fleet use to reach this one (so it must resolve for them).
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=1, le=65535)
    #: ``WALSTREAM_WEB_BIND``: the address to listen on when it differs from ``web_host``
    #: (in a container: ``0.0.0.0``, with ``web_host`` the pod's DNS name). Default: ``web_host``.
    web_bind: str | None = None
    #: ``WALSTREAM_DATADIR``: this worker's own state (RocksDB tables). Never share it.
    datadir: Path = Path("var/worker")
    #: ``WALSTREAM_STORE``: Faust table store, ``rocksdb://`` or ``memory://``.
    store: str = "rocksdb://"
    #: ``WALSTREAM_PARTITIONS``: partitions of every ``wal.<namespace>`` topic. All WAL topics
    #: share one count so that Faust co-partitions them with the state tables.
    partitions: int = Field(default=8, ge=1, le=1024)
    #: ``WALSTREAM_REPLICATION_FACTOR``: of every topic walstream creates.
    replication_factor: int = Field(default=1, ge=1, le=16)
    #: ``WALSTREAM_CASSANDRA_HOSTS`` / ``_PORT``: default Cassandra cluster for ``cassandra`` targets.
    cassandra_hosts: str = "127.0.0.1"
    cassandra_port: int = 9042
    #: ``WALSTREAM_ELASTICSEARCH_URL``: default cluster for ``elasticsearch`` targets.
    elasticsearch_url: str = "http://127.0.0.1:9200"
    #: ``WALSTREAM_ADMIN_TOKENS``: comma-separated bearer tokens that may change namespaces and
    #: redrive dead letters (walstream.auth); empty: those are open. Kept as a secret: never
    #: shown in a log or a repr.
    admin_tokens: SecretStr = SecretStr("")
    #: ``WALSTREAM_MAX_ENTRY_BYTES``: largest encoded entry accepted by the write API (413 above).
    #: At most 4 MiB - 64 KiB (the WAL topics' record limit); lowered further at run time when
    #: the tables' changelog topics accept less (see WalApp.entry_limit_bytes).
    max_entry_bytes: int = Field(default=1024 * 1024, ge=1024, le=4 * 1024 * 1024 - 64 * 1024)
    #: ``WALSTREAM_MAX_REQUEST_BYTES``: largest request body (a batch) the web server reads.
    max_request_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    #: ``WALSTREAM_MAX_BATCH_ENTRIES``: most entries accepted in one ``POST /v1/log/batch``.
    max_batch_entries: int = Field(default=10_000, ge=1)
    #: ``WALSTREAM_PRODUCE_TIMEOUT_S``: after this, a write's outcome is UNKNOWN (503).
    produce_timeout_s: float = Field(default=10.0, gt=0)
    #: ``WALSTREAM_DELIVERY_BATCH``: most entries a delivery agent hands to targets at once.
    delivery_batch: int = Field(default=500, ge=1)
    #: ``WALSTREAM_TARGET_TIMEOUT_S``: the targets' own client timeouts (one Cassandra statement,
    #: one Elasticsearch request, the Kafka producer's request timeout). A whole call to a target
    #: is bounded more tightly by ``target_call_timeout_s``.
    target_timeout_s: float = Field(default=30.0, gt=0)
    #: ``WALSTREAM_TARGET_CALL_TIMEOUT_S``: deadline of one call to a target (one batch, with
    #: connecting and DNS). A call not finished by then is cancelled and counts as the target
    #: not answering (its circuit breaker counts it; the entries are retried). It must exceed
    #: the slowest healthy call (a first Cassandra connect takes seconds on a loaded machine).
    target_call_timeout_s: float = Field(default=10.0, gt=0)
    #: ``WALSTREAM_TARGET_WAIT_S``: how long the delivery agent waits for one target call before
    #: moving on to other targets and namespaces. A slower call carries on in the background (up
    #: to ``target_call_timeout_s``); its entries wait for its outcome without spending attempts,
    #: and the target gets no other call meanwhile. This bounds how long one slow target can
    #: hold up the others.
    target_wait_s: float = Field(default=1.0, gt=0)
    #: ``WALSTREAM_NAMESPACE_WAIT_S``: ``PUT /v1/namespaces`` waits this long to see its write.
    namespace_wait_s: float = Field(default=15.0, gt=0)
    #: ``WALSTREAM_RESUBSCRIBE_S``: delay before the consumer picks up newly created namespaces
    #: (batches several creations into one rebalance).
    resubscribe_s: float = Field(default=1.0, ge=0)

    #: ``WALSTREAM_SCHEDULER_INTERVAL_S``: how often each worker looks for due delays/retries.
    scheduler_interval_s: float = Field(default=0.02, gt=0, le=10)
    #: ``WALSTREAM_STUCK_AFTER_S``: a delivery batch held, or a scheduler silent, this long makes
    #: ``GET /v1/health/live`` answer 503 (walstream.health).
    stuck_after_s: float = Field(default=300.0, gt=0)
    #: ``WALSTREAM_TICK_RESEND_S``: a tick not handled within this is sent again.
    tick_resend_s: float = Field(default=2.0, gt=0)
    #: ``WALSTREAM_BREAKER_THRESHOLD``: consecutive all-transient calls that open a target's circuit.
    breaker_threshold: int = Field(default=3, ge=1)
    #: ``WALSTREAM_BREAKER_COOLDOWN_S`` / ``_MAX_S``: first and longest open period of a circuit.
    breaker_cooldown_s: float = Field(default=1.0, gt=0)
    breaker_cooldown_max_s: float = Field(default=15.0, gt=0)
    #: ``WALSTREAM_TABLE_CACHE_MB``: RocksDB block cache per table partition.
    table_cache_mb: int = Field(default=8, ge=1)

    #: ``WALSTREAM_ENTRY_RETENTION_S``: how long an entry's state is kept once it is final
    #: (DELIVERED, DEAD, CANCELLED), counted from its last change: status queries answer it and
    #: a repeated write with the same id is recognised and not written twice. The state of an
    #: entry still pending (delayed, retrying) is kept however long it waits. The minimum is a
    #: second so that tests can watch states expire; below a few minutes a client's retry after
    #: a timeout may no longer be recognised as a duplicate.
    entry_retention_s: float = Field(default=86_400.0, ge=1.0)
    #: ``WALSTREAM_SWEEP_INTERVAL_S``: how often each partition's final entry states are swept
    #: for ones older than the retention (each sweep reads a bounded slice; a partition with
    #: more to read is swept again after a second).
    sweep_interval_s: float = Field(default=60.0, gt=0, le=3600)

    #: ``WALSTREAM_STANDBY_REPLICAS``: how many other workers keep a standby copy of each table
    #: partition (Faust's ``table_standby_replicas``); 0 keeps none, and a worker taking a
    #: partition over then reads its whole changelog. Faust's assignor hands a partition to a
    #: worker with a copy only within that worker's share of partitions: workers - 1 makes every
    #: take-over start from a copy (README, "Running a fleet").
    standby_replicas: int = Field(default=1, ge=0, le=8)
    #: ``WALSTREAM_SESSION_TIMEOUT_S``: a worker that stops heartbeating (crash, SIGKILL) loses
    #: its partitions after this long; lower means faster take-over, higher tolerates pauses.
    session_timeout_s: float = Field(default=10.0, ge=6.0, le=300.0)
    #: ``WALSTREAM_INSTANCE_ID``: this worker's static consumer-group membership
    #: (``group.instance.id``, Kafka's KIP-345): a worker restarted under the same id within
    #: the session timeout gets its partitions back at once, with no rebalance wait. It must
    #: be stable across restarts and unique among the fleet's running workers. Default: the
    #: app id, host name and a hash of the data dir (each worker has its own). ``none``: dynamic
    #: membership (a restarted worker waits for its old self's session to expire).
    instance_id: str | None = None
    #: ``WALSTREAM_SHUTDOWN_TIMEOUT_S``: a stopping worker that has not exited after this long
    #: (aiokafka can hang when stopped mid-rebalance) exits anyway; finished work is committed.
    shutdown_timeout_s: float = Field(default=20.0, gt=0)

    #: ``WALSTREAM_LOG_FORMAT``: ``text`` (the default) or ``json``: one JSON object per line
    #: and event (``time``, ``level``, ``logger``, ``message``, and an event's own fields, e.g.
    #: a dead letter's ``namespace``, ``entry_id``, ``error_class``), for log collectors.
    log_format: Literal["text", "json"] = "text"

    #: ``WALSTREAM_FAILPOINTS``: for crash tests only: failpoints (walstream.failpoints) at
    #: which the worker kills itself once. Empty (the default) in production.
    failpoints: str = ""

    @property
    def group_instance_id(self) -> str | None:
        """The consumer group's ``group.instance.id`` of this worker (see ``instance_id``)."""
        if self.instance_id is not None:
            return None if self.instance_id.lower() == "none" else self.instance_id
        where = f"{socket.gethostname()}:{self.datadir.resolve()}"
        return f"{self.group_id}-{socket.gethostname()}-{hashlib.sha256(where.encode()).hexdigest()[:12]}"

    @property
    def group_id(self) -> str:
        """This worker's consumer group, Faust app id and table-topic prefix (walstream.shards)."""
        return group_id(self.app_id, self.shard)

    @field_validator("shard_urls")
    @classmethod
    def _shard_urls_parse(cls, v: str) -> str:
        parse_shard_urls(v)
        return v

    @field_validator("region_brokers")
    @classmethod
    def _region_brokers_parse(cls, v: str) -> str:
        parse_region_brokers(v)
        return v

    @model_validator(mode="after")
    def _own_region_listed(self) -> Settings:
        brokers = self.region_broker_map
        if self.region is not None and self.region not in brokers:
            raise ValueError(
                f"WALSTREAM_REGION is {self.region!r} but WALSTREAM_REGION_BROKERS does not name it: "
                f"list every region's Kafka there, {self.region}=<this fleet's brokers> included"
            )
        if self.region is None and brokers:
            raise ValueError("WALSTREAM_REGION_BROKERS is set but WALSTREAM_REGION is not: name this fleet's region")
        return self

    @property
    def region_broker_map(self) -> dict[str, str]:
        """``region_brokers`` as {region: bootstrap servers (comma separated)}."""
        return parse_region_brokers(self.region_brokers)

    @property
    def shard_url_map(self) -> dict[str, str]:
        """``shard_urls`` as {shard: base URL}."""
        return parse_shard_urls(self.shard_urls)

    @field_validator("admin_tokens")
    @classmethod
    def _tokens_long_enough(cls, v: SecretStr) -> SecretStr:
        # the message says which one, never what it is
        for n, t in enumerate((t.strip() for t in v.get_secret_value().split(",")), 1):
            if t.lower().startswith("sha256:"):
                raise ValueError(f"token number {n}: give the token itself, not a digest")
            if t:
                stored_token(t, f"token number {n}")
        return v

    @property
    def admin_token_list(self) -> list[str]:
        """``admin_tokens`` split at commas, blanks dropped."""
        return [t.strip() for t in self.admin_tokens.get_secret_value().split(",") if t.strip()]

    @property
    def web_url(self) -> str:
        return f"http://{self.web_host}:{self.web_port}"

    @property
    def namespaces_topic(self) -> str:
        """Compacted topic holding every namespace config, keyed by name."""
        return f"{self.app_id}.namespaces"


def parse_region_brokers(text: str) -> dict[str, str]:
    """``east=h1:9092;h2:9092,west=h3:9092`` as ``{"east": "h1:9092,h2:9092", "west": "h3:9092"}``.

    Raises ValueError naming the item that is not ``region=host:port[;host:port...]``.
    """
    out: dict[str, str] = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        region, sep, servers = (p.strip() for p in item.partition("="))
        hosts = [h.strip() for h in servers.split(";") if h.strip()]
        if not sep or not REGION_RE.match(region) or not hosts:
            raise ValueError(
                f"{item!r} is not region=host:port (a region is a-z, 0-9 and '-'; "
                "several servers of one region are separated by ';')"
            )
        for h in hosts:
            port = h.rsplit(":", 1)[1] if ":" in h else ""
            if not (port.isdigit() and 1 <= int(port) <= 65535):
                raise ValueError(f"{h!r} (region {region}) is not host:port with a port from 1 to 65535")
        if region in out:
            raise ValueError(f"region {region!r} is named twice")
        out[region] = ",".join(hosts)
    return out
