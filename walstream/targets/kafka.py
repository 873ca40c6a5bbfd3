"""The Kafka target: the payload is produced as-is (JSON) to a topic, keyed by the entry key.

Kafka keeps no per-key version, so this target is at-least-once: a replay produces the
record again. Consumers of the topic de-duplicate by the ``walstream-id`` header, and order
by the ``walstream-ts`` header (original write time, µs).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidTopicError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    TopicAuthorizationFailedError,
)

from walstream.entry import Entry
from walstream.namespaces.model import KafkaTargetConfig
from walstream.targets.base import Outcomes, PermanentError, Target, TargetDownError, TargetError, TransientError

_PERMANENT = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
    TopicAuthorizationFailedError,
)


class KafkaTarget(Target):
    def __init__(self, cfg: KafkaTargetConfig, bootstrap: str, timeout_s: float) -> None:
        self.cfg = cfg
        self.label = f"kafka:{cfg.topic}"
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=True,
            request_timeout_ms=int(timeout_s * 1000),
            max_request_size=8 * 1024 * 1024,
        )
        self._started = False
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        async with self._lock:
            if not self._started:
                try:
                    await self._producer.start()
                except KafkaError as exc:
                    raise TargetDownError(f"{type(exc).__name__}: {exc}") from exc
                self._started = True

    async def close(self) -> None:
        if self._started:
            await self._producer.stop()

    async def apply(self, entries: Sequence[Entry]) -> Outcomes:
        try:
            await self.start()
        except TargetError as err:
            return [err] * len(entries)
        futures: list[asyncio.Future[object] | TargetError] = []
        for e in entries:
            try:
                futures.append(
                    await self._producer.send(
                        self.cfg.topic,
                        value=orjson.dumps(e.payload),
                        key=e.key_bytes,
                        headers=[
                            ("walstream-id", e.id.encode()),
                            ("walstream-ts", str(e.written_at_us).encode()),
                        ],
                    )
                )
            except Exception as exc:
                futures.append(_classify(exc))
        out: Outcomes = []
        for f in futures:
            if isinstance(f, TargetError):
                out.append(f)
                continue
            try:
                await f
                out.append(None)
            except Exception as exc:
                out.append(_classify(exc))
        return out


def _classify(exc: BaseException) -> TargetError:
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, _PERMANENT):
        return PermanentError(text)
    if isinstance(exc, (KafkaConnectionError, KafkaTimeoutError)):
        return TargetDownError(text)
    return TransientError(text)
