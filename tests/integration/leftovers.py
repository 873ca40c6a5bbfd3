"""Removing what integration tests create in the shared stack: Kafka topics, Cassandra
keyspaces and Elasticsearch indices.

Why: the stack's services keep their data between runs, and every test makes its own topics
(a worker's changelogs, its WAL topics), keyspaces and indices. Left behind, they pile up run
after run: a broker holding ~20,000 partitions of old runs ran out of open files (one per log
segment) in the middle of a run and took its log directory offline, failing every test after.

Every name a test makes contains its ``unique`` token (``t`` + 10 hex digits), so a test's
own leftovers are found by that token alone, which is safe while other runs share the stack.
:func:`remove_stale` sweeps every name holding *some* token, for runs that were killed before
their teardown; only a run that owns the stack (CI) calls it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable

import httpx
from aiokafka.admin import AIOKafkaAdminClient
from cassandra.cluster import Session

#: the token :func:`tests.integration.conftest.unique` puts in every name a test makes,
#: standing alone (between non-hex characters), so that ``wal.a0000000`` is not one
TOKEN = re.compile(r"(?<![0-9a-z])t[0-9a-f]{10}(?![0-9a-f])")


def remove(token: str, kafkas: list[str], cassandra: Session, es_url: str) -> None:
    """Delete every topic (on each of ``kafkas``), keyspace and index whose name contains
    ``token``."""
    remove_matching(lambda name: token in name.lower(), kafkas, cassandra, es_url)


def remove_stale(kafkas: list[str], cassandra: Session, es_url: str) -> None:
    """Delete every topic, keyspace and index named with a test token (of any run)."""
    remove_matching(lambda name: TOKEN.search(name.lower()) is not None, kafkas, cassandra, es_url)


def remove_matching(wanted: Callable[[str], bool], kafkas: list[str], cassandra: Session, es_url: str) -> None:
    for kafka in kafkas:
        asyncio.run(delete_topics(kafka, wanted))
    for ks in [r[0] for r in cassandra.execute("SELECT keyspace_name FROM system_schema.keyspaces")]:
        if wanted(ks):
            cassandra.execute(f'DROP KEYSPACE IF EXISTS "{ks}"', timeout=120)
    indices = httpx.get(f"{es_url}/_cat/indices", params={"h": "index", "format": "json"}, timeout=30)
    indices.raise_for_status()
    doomed = [i["index"] for i in indices.json() if wanted(i["index"])]
    for chunk in _chunks(doomed, 50):  # a URL holds a comma-separated list of names
        httpx.delete(f"{es_url}/{','.join(chunk)}", params={"ignore_unavailable": "true"}, timeout=60)


async def delete_topics(kafka: str, wanted: Callable[[str], bool]) -> None:
    """Delete the topics ``wanted`` names (Kafka removes their files a minute later)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka, request_timeout_ms=60_000)
    await admin.start()
    try:
        doomed = [t for t in await admin.list_topics() if not t.startswith("__") and wanted(t)]
        for chunk in _chunks(doomed, 200):
            await admin.delete_topics(chunk, timeout_ms=60_000)
    finally:
        await admin.close()


def _chunks(items: list[str], n: int) -> Iterable[list[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]
