"""The set of local services ``walstream stack`` manages, with ports from the environment.

Ports (``WALSTREAM_STACK_<NAME>``, defaults are the standard ones):
``KAFKA_PORT`` 9092 (controller 9093), ``KAFKA_WEST_PORT`` 9192 (controller 9193, the
second region), ``CASSANDRA_PORT`` 9042 (storage 7000), ``ELASTICSEARCH_PORT`` 9200
(transport 9300).
"""

from __future__ import annotations

import os

from walstream.stack.paths import StackPaths
from walstream.stack.service import Service, ServiceRunner

#: start order: Kafka first (the worker needs it), the slow starters after
ALL = ("kafka", "cassandra", "elasticsearch")
SECOND_REGION = "kafka-west"


def _port(name: str, default: int) -> int:
    return int(os.environ.get(f"WALSTREAM_STACK_{name}", default))


def build(name: str, paths: StackPaths) -> Service:
    if name == "kafka":
        from walstream.stack.kafka import KafkaService

        port = _port("KAFKA_PORT", 9092)
        return KafkaService(paths, name="kafka", port=port, controller_port=_port("KAFKA_CONTROLLER_PORT", port + 1))
    if name == SECOND_REGION:
        from walstream.stack.kafka import KafkaService

        port = _port("KAFKA_WEST_PORT", 9192)
        return KafkaService(paths, name=SECOND_REGION, port=port,
                            controller_port=_port("KAFKA_WEST_CONTROLLER_PORT", port + 1))
    if name == "cassandra":
        from walstream.stack.cassandra import CassandraService

        return CassandraService(paths, native_port=_port("CASSANDRA_PORT", 9042),
                                storage_port=_port("CASSANDRA_STORAGE_PORT", 7000))
    if name == "elasticsearch":
        from walstream.stack.elasticsearch import ElasticsearchService

        return ElasticsearchService(paths, http_port=_port("ELASTICSEARCH_PORT", 9200),
                                    transport_port=_port("ELASTICSEARCH_TRANSPORT_PORT", 9300))
    raise KeyError(f"unknown service {name!r}; known: {', '.join((*ALL, SECOND_REGION))}")


def runners(names: list[str], paths: StackPaths | None = None) -> list[ServiceRunner]:
    p = paths or StackPaths.from_env()
    return [ServiceRunner(build(n, p)) for n in names]
