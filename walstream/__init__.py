"""walstream: a write-ahead log service on Kafka, built with Faust.

Write an entry, get an answer only once Kafka holds it durably, and let the delivery agents
apply it to the namespace's targets (Cassandra, Elasticsearch, Kafka) idempotently.
"""

from importlib.metadata import PackageNotFoundError, version

__version__ = "0.1.0"


def installed_version() -> str:
    """The installed distribution's version ("0" when run from a checkout not installed)."""
    try:
        return version("walstream")
    except PackageNotFoundError:
        return "0"
