"""Creating the topics walstream owns, idempotently."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import for_code

TOPIC_ALREADY_EXISTS = 36

#: WAL records may carry a 1 MiB payload plus the envelope; the broker default (~1 MB) is
#: too small, so every WAL topic allows this much per record batch. Records from producers
#: other than the write API are bounded by this too.
WAL_MAX_MESSAGE_BYTES = 4 * 1024 * 1024

#: Records derived from a WAL record embed it whole and add to it: a dead letter (the raw
#: value in base64, 4/3 of it, when it is not a valid entry), a timer or held row (plus its
#: target, error and source), a dead-letter index row. Dead-letter topics and the tables'
#: changelog topics allow twice a WAL record, so whatever a WAL topic accepted fits them.
DERIVED_MAX_MESSAGE_BYTES = 2 * WAL_MAX_MESSAGE_BYTES

#: what the broker allows when a topic sets nothing (Kafka's ``message.max.bytes`` default)
KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588


class TopicError(RuntimeError):
    """Kafka refused to create a topic."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)


async def ensure_topics(bootstrap: str, specs: Sequence[TopicSpec], timeout_ms: int = 30_000) -> None:
    """Create each topic unless it exists; existing topics are left exactly as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms)
    await admin.start()
    try:
        response = await admin.create_topics(
            [
                NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=dict(s.config))
                for s in specs
            ],
            timeout_ms=timeout_ms,
        )
        problems = []
        for item in response.topic_errors:
            topic, code = item[0], item[1]
            if code not in (0, TOPIC_ALREADY_EXISTS):
                msg = item[2] if len(item) > 2 and item[2] else for_code(code).__name__
                problems.append(f"{topic}: {msg}")
        if problems:
            raise TopicError("could not create topics: " + "; ".join(problems))
    finally:
        await admin.close()


async def max_message_bytes(bootstrap: str, topics: Sequence[str], timeout_ms: int = 30_000) -> dict[str, int]:
    """Each existing topic's effective ``max.message.bytes`` (its own setting or the broker's).

    Topics created by an earlier walstream keep the limits they were created with; the
    delivery runtime bounds what it writes by what is really there. A topic that does not
    exist is left out.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms)
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t, {"max.message.bytes": None}) for t in topics]
        )
    finally:
        await admin.close()
    limits: dict[str, int] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            if resource["error_code"] != 0:
                continue
            for entry in resource["config_entries"]:
                if entry["config_names"] == "max.message.bytes" and entry["config_value"]:
                    limits[resource["resource_name"]] = int(entry["config_value"])
    return limits


async def unconsumed(bootstrap: str, group: str, topic: str, timeout_ms: int = 30_000) -> int:
    """Records of ``topic`` the consumer ``group`` has not committed past (its lag), summed
    over partitions; a partition without a committed offset counts from its log start."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, request_timeout_ms=timeout_ms)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms)
    await consumer.start()
    await admin.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return 0
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        committed = await admin.list_consumer_group_offsets(group, partitions=tps)
        total = 0
        for tp in tps:
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else starts[tp]
            total += max(0, ends[tp] - max(done, starts[tp]))
        return total
    finally:
        await admin.close()
        await consumer.stop()


async def group_consumed(bootstrap: str, group: str, topic: str, timeout_ms: int = 10_000) -> bool:
    """Whether the consumer ``group`` has committed an offset of ``topic`` (some worker of it
    consumed the topic at some time)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        return any(tp.topic == topic and meta is not None and meta.offset >= 0 for tp, meta in committed.items())
    finally:
        await admin.close()


def wal_topic_specs(name: str, partitions: int, replication_factor: int) -> list[TopicSpec]:
    """The WAL topic and dead-letter topic of one namespace."""
    cfg = {
        "min.insync.replicas": str(min(2, replication_factor)),
        "unclean.leader.election.enable": "false",
    }
    return [
        TopicSpec(
            f"wal.{name}", partitions, replication_factor, {**cfg, "max.message.bytes": str(WAL_MAX_MESSAGE_BYTES)}
        ),
        TopicSpec(
            f"wal.{name}.dlq",
            partitions,
            replication_factor,
            {**cfg, "max.message.bytes": str(DERIVED_MAX_MESSAGE_BYTES)},
        ),
    ]


#: DescribeConfigs ``config_source`` of a setting made for the topic itself (not inherited)
DYNAMIC_TOPIC_CONFIG = 1
UNKNOWN_TOPIC_OR_PARTITION = 3


@dataclass(frozen=True)
class TopicConfig:
    """A topic's configuration: every effective value, and the ones set for the topic itself."""

    effective: dict[str, str]
    own: dict[str, str]


async def topic_config(bootstrap: str, topic: str, timeout_ms: int = 30_000) -> TopicConfig | None:
    """``topic``'s configuration, or None when the topic does not exist."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms)
    await admin.start()
    try:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    config = TopicConfig({}, {})
    for response in responses:
        for resource in response.to_object()["resources"]:
            if resource["error_code"] == UNKNOWN_TOPIC_OR_PARTITION:
                return None
            if resource["error_code"] != 0:
                raise TopicError(f"could not read the configuration of {topic}: {resource['error_message']}")
            for entry in resource["config_entries"]:
                name, value = entry["config_names"], entry["config_value"]
                # v0 responses have no config_source: a non-default value is the topic's own
                own = (
                    entry["config_source"] == DYNAMIC_TOPIC_CONFIG
                    if "config_source" in entry
                    else not entry.get("is_default", True)
                )
                if value is not None:
                    config.effective[name] = value
                if own:
                    if value is None:  # sensitive: it could not be written back as it is
                        raise TopicError(f"{topic} has a sensitive setting {name}; not altering it")
                    config.own[name] = value
    return config


async def set_cleanup_policy(bootstrap: str, topic: str, policy: str, timeout_ms: int = 30_000) -> bool:
    """Give an existing ``topic`` the ``cleanup.policy`` ``policy``, keeping its other settings;
    True when it changed, False when it had it already or does not exist. Raises
    :class:`TopicError` when Kafka refuses."""
    return await set_topic_config(bootstrap, topic, {"cleanup.policy": policy}, timeout_ms)


async def set_topic_config(
    bootstrap: str, topic: str, changes: dict[str, str | None], timeout_ms: int = 30_000
) -> bool:
    """Set ``changes`` on an existing ``topic`` (a None value removes the topic's own setting:
    the broker's default applies again), keeping its other settings; True when something
    changed, False when nothing had to or the topic does not exist. Raises
    :class:`TopicError` when Kafka refuses.

    aiokafka has no IncrementalAlterConfigs, and AlterConfigs replaces every setting of the
    topic: the topic's own settings are read first and written back with the changes (a
    setting changed by someone else between the two requests would be reverted).
    """
    config = await topic_config(bootstrap, topic, timeout_ms)
    if config is None:
        return False
    settings = dict(config.own)
    for name, value in changes.items():
        if value is None:
            settings.pop(name, None)
        elif config.effective.get(name) != value:
            settings[name] = value
    if settings == config.own:
        return False
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms)
    await admin.start()
    try:
        responses = await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, settings)])
    finally:
        await admin.close()
    for response in responses:
        for resource in response.to_object()["resources"]:
            if resource["error_code"] != 0:
                msg = resource["error_message"] or for_code(resource["error_code"]).__name__
                said = ", ".join(f"{k}={v}" for k, v in changes.items())
                raise TopicError(f"could not set {said} on {topic}: {msg}")
    return True
