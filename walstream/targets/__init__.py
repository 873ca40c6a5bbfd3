"""Targets: where delivered entries are applied (Cassandra, Elasticsearch, Kafka, no-op)."""
