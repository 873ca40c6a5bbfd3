"""walstream: a write-ahead log service on Kafka, built with Faust.

Write an entry, get an answer only once Kafka holds it durably, and let the delivery agents
apply it to the namespace's targets (Cassandra, Elasticsearch, Kafka) idempotently.
"""

__version__ = "0.1.0"
