"""Namespaces: validated, versioned use-case configs shared by every worker."""

from walstream.namespaces.model import (
    CassandraTargetConfig,
    ElasticsearchTargetConfig,
    KafkaTargetConfig,
    NamespaceConfig,
    NoopTargetConfig,
    RetryPolicy,
    TargetConfig,
    parse_namespace,
)

__all__ = [
    "CassandraTargetConfig",
    "ElasticsearchTargetConfig",
    "KafkaTargetConfig",
    "NamespaceConfig",
    "NoopTargetConfig",
    "RetryPolicy",
    "TargetConfig",
    "parse_namespace",
]
