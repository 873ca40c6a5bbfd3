"""Creating the topics walstream owns, idempotently."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code

TOPIC_ALREADY_EXISTS = 36

#: WAL records may carry a 1 MiB payload plus the envelope; the broker default (~1 MB) is
#: too small, so every WAL topic allows this much per record batch.
WAL_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


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


def wal_topic_specs(name: str, partitions: int, replication_factor: int) -> list[TopicSpec]:
    """The WAL topic and dead-letter topic of one namespace."""
    cfg = {
        "max.message.bytes": str(WAL_MAX_MESSAGE_BYTES),
        "min.insync.replicas": str(min(2, replication_factor)),
        "unclean.leader.election.enable": "false",
    }
    return [
        TopicSpec(f"wal.{name}", partitions, replication_factor, cfg),
        TopicSpec(f"wal.{name}.dlq", partitions, replication_factor, cfg),
    ]
