"""The Elasticsearch target: mutation payloads applied with external versions.

A put indexes ``{**key, **value}`` as document ``<doc id>`` of index ``<index_prefix><table>``
with ``version=<write time µs>, version_type=external``; a delete deletes it with the same
version. Elasticsearch rejects a version that is not greater than the stored one with 409,
which here means "a newer or the same write is already applied" and counts as success: so
replays and out-of-order deliveries converge to the last write.

Known limit: Elasticsearch forgets the version of a deleted document after the index's
``index.gc_deletes`` (60 s by default); a put older than the delete that arrives later than
that would recreate the document. Raise ``index.gc_deletes`` on indices that may see long
replays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from elastic_transport import ConnectionError as EsConnectionError
from elastic_transport import ConnectionTimeout
from elasticsearch import ApiError, AsyncElasticsearch

from walstream.entry import Entry
from walstream.mutations import MutationError, parse_mutations
from walstream.namespaces.model import ElasticsearchTargetConfig
from walstream.targets.base import (
    Outcomes,
    PermanentError,
    Target,
    TargetDownError,
    TargetError,
    TransientError,
    combine,
)

#: statuses that mean "retry later": throttled, or the cluster is not (yet) able to serve
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def _item_error(op: str, item: dict[str, Any]) -> TargetError | None:
    status = int(item.get("status", 500))
    if status < 300 or status == 409 or (op == "delete" and status == 404):
        return None
    err = item.get("error") or {}
    reason = f"{status} {err.get('type', '')}: {err.get('reason', '')}".strip()
    if status in TRANSIENT_STATUSES:
        return TransientError(reason)
    return PermanentError(reason)


class ElasticsearchTarget(Target):
    """Applies mutation payloads to indices ``<index_prefix><table>`` through the bulk API."""

    def __init__(self, cfg: ElasticsearchTargetConfig, url: str, timeout_s: float) -> None:
        self.cfg = cfg
        self.url = url
        self.label = f"elasticsearch:{cfg.index_prefix or '*'}"
        self._client = AsyncElasticsearch(url, request_timeout=timeout_s, max_retries=0)

    async def close(self) -> None:
        await self._client.close()

    async def apply(self, entries: Sequence[Entry]) -> Outcomes:
        operations: list[dict[str, Any]] = []
        #: per bulk action, the index of the entry it belongs to
        owners: list[int] = []
        errors: list[list[TargetError | None]] = [[] for _ in entries]
        for i, entry in enumerate(entries):
            try:
                payload = parse_mutations(entry.payload)
            except MutationError as exc:
                errors[i].append(PermanentError(str(exc)))
                continue
            for m in payload.mutations:
                meta = {
                    "_index": f"{self.cfg.index_prefix}{m.table}",
                    "_id": m.doc_id(),
                    "version": entry.written_at_us,
                    "version_type": "external",
                }
                if m.op == "put":
                    operations.append({"index": meta})
                    operations.append({**m.key, **(m.value or {})})
                else:
                    operations.append({"delete": meta})
                owners.append(i)
        if owners:
            try:
                resp = await self._client.bulk(
                    operations=operations, refresh="true" if self.cfg.refresh else "false"
                )
            except (EsConnectionError, ConnectionTimeout) as exc:
                return [TargetDownError(f"{type(exc).__name__}: {exc}")] * len(entries)
            except ApiError as exc:
                status = getattr(exc.meta, "status", 0)
                cls = TargetDownError if status in TRANSIENT_STATUSES else PermanentError
                return [cls(f"bulk request failed: {status} {exc}")] * len(entries)
            except Exception as exc:  # unknown: retry rather than dead-letter on first sight
                return [TransientError(f"{type(exc).__name__}: {exc}")] * len(entries)
            for owner, item in zip(owners, resp["items"], strict=False):
                op, result = next(iter(item.items()))
                errors[owner].append(_item_error(op, result))
        return [combine(errs) for errs in errors]
