"""The http target: each entry's payload sent as JSON to an upstream service.

One request per entry (``method`` to ``url``), with the headers ``walstream-id`` (the entry
id), ``walstream-ts`` (its original write time, µs since the epoch: an upstream orders and
de-duplicates by them, as with the kafka target), ``walstream-namespace`` and the config's own
``headers``. The entries of one call are sent at once, at most :data:`MAX_IN_FLIGHT` at a
time: the delivery runtime hands a call at most one entry per key of an ordered namespace,
so this never reorders a key.

What an answer means (the contract in DESIGN.md):

- 2xx: applied;
- 408, 429, 5xx: transient, retried with the namespace's backoff, never sooner than the
  answer's ``Retry-After`` (seconds or an HTTP date); 429, 502, 503 and 504 say the service
  as a whole cannot take it now (:class:`TargetDownError`: no attempt spent, and consecutive
  such calls open the target's circuit), 408, 500 and other 5xx are the entry's attempt;
- no answer (refused, unresolvable, timed out after ``timeout_ms``, broken off): the target
  is down (:class:`TargetDownError`);
- 3xx and other 4xx: permanent (dead-lettered with the status and the start of the answer;
  redrivable once the upstream or the config is fixed). A redirect is not followed: the
  config names the final URL.

Like the kafka target it is at-least-once: a retried request may reach the upstream twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from email.utils import parsedate_to_datetime

import httpx
import orjson

from walstream.entry import Entry
from walstream.namespaces.model import HttpTargetConfig
from walstream.targets.base import Outcomes, PermanentError, Target, TargetDownError, TargetError, TransientError

#: requests one call has in flight at most
MAX_IN_FLIGHT = 32
#: statuses saying the service as a whole cannot take requests now
_UNAVAILABLE = frozenset({429, 502, 503, 504})
#: how much of an error answer's body a dead letter keeps, and how much of it is read
_BODY_CHARS = 300
_BODY_BYTES = 4096


class HttpTarget(Target):
    def __init__(self, cfg: HttpTargetConfig) -> None:
        self.cfg = cfg
        self.label = f"http:{cfg.url}"
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.cfg.timeout_ms / 1000),
                limits=httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT),
                follow_redirects=False,
            )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def apply(self, entries: Sequence[Entry]) -> Outcomes:
        await self.start()
        gate = asyncio.Semaphore(MAX_IN_FLIGHT)

        async def one(entry: Entry) -> TargetError | None:
            async with gate:
                return await self._send(entry)

        return list(await asyncio.gather(*(one(e) for e in entries)))

    async def _send(self, entry: Entry) -> TargetError | None:
        assert self._client is not None
        headers = {
            **self.cfg.headers,
            "content-type": "application/json",
            "walstream-id": entry.id,
            "walstream-ts": str(entry.written_at_us),
            "walstream-namespace": entry.namespace,
        }
        try:
            body = orjson.dumps(entry.payload)
            request = self._client.build_request(self.cfg.method, self.cfg.url, content=body, headers=headers)
            r = await self._client.send(request, stream=True)
            try:
                # an answer's body matters only to say why it refused: its start, never all of it
                start = await _read_start(r) if not 200 <= r.status_code < 300 else b""
            finally:
                await r.aclose()
        except httpx.TimeoutException as exc:
            return TargetDownError(f"{self.label}: no answer within {self.cfg.timeout_ms} ms ({type(exc).__name__})")
        except httpx.HTTPError as exc:
            return TargetDownError(f"{self.label}: {type(exc).__name__}: {exc}")
        except Exception as exc:  # apply never raises: whatever else, this entry's outcome
            return TransientError(f"{self.label}: {type(exc).__name__}: {exc}")
        if 200 <= r.status_code < 300:
            return None
        said = f"{self.label} answered {r.status_code} {r.reason_phrase}: {_text_of(start)}"
        if r.status_code in _UNAVAILABLE:
            return TargetDownError(said, retry_after_s=retry_after_s(r.headers.get("retry-after")))
        if r.status_code == 408 or r.status_code >= 500:
            return TransientError(said, retry_after_s=retry_after_s(r.headers.get("retry-after")))
        if 300 <= r.status_code < 400:
            where = r.headers.get("location", "(no Location)")
            return PermanentError(f"{said}; redirected to {where}: set the target's url to the final address")
        return PermanentError(said)


def retry_after_s(value: str | None, now_s: float | None = None) -> float | None:
    """A ``Retry-After`` header's wait in seconds (delta-seconds or an HTTP date; RFC 9110
    10.2.3), None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now_s is None else now_s))


async def _read_start(r: httpx.Response) -> bytes:
    """At most :data:`_BODY_BYTES` of an answer's body (an upstream may answer megabytes)."""
    got = b""
    async for chunk in r.aiter_raw():
        got += chunk
        if len(got) >= _BODY_BYTES:
            break
    return got[:_BODY_BYTES]


def _text_of(start: bytes) -> str:
    text = " ".join(start.decode("utf-8", "replace").split())
    return (text[:_BODY_CHARS] + " ...") if len(text) > _BODY_CHARS else (text or "(empty body)")
