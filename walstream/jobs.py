"""Background jobs of one worker (a replay: walstream.replay): started by a request, run as
a task of the worker's event loop, followed through ``GET /v1/jobs/{id}`` and cancelled by
``DELETE``.

A job lives in the worker that runs it: its state is that worker's memory. Another worker
asked about it asks its peers (walstream.web.jobs). A job does not survive its worker: a
worker that stops cancels its jobs, and one that dies takes them along (the job is then
unknown); a replay is idempotent (original write times), so it is simply started again.

Ids are ``<kind>.<namespace>.<random>``: the namespace in the id lets a worker of another
shard forward a question about the job to the namespace's shard (walstream.shard_router).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from walstream.api import JobState
from walstream.metrics import Metrics

log = logging.getLogger(__name__)

#: finished jobs a worker remembers (the oldest are forgotten first)
KEPT_FINISHED = 100
#: most samples a job keeps per kind
MAX_SAMPLES = 100


class JobCancelled(Exception):
    """Raised inside a job's work at its next check once the job is cancelled."""


@dataclass
class Job:
    """One job's state; its work updates :attr:`counts`, :attr:`done` of :attr:`total`
    (progress), :attr:`samples` and :attr:`plan`."""

    id: str
    kind: str
    namespace: str
    worker: str
    request: dict[str, Any]
    state: JobState = JobState.RUNNING
    started_s: float = field(default_factory=time.time)
    ended_s: float | None = None
    error: str | None = None
    total: int = 0
    done: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    cancel_requested: bool = False
    task: asyncio.Task[None] | None = None
    #: told of every count as it is made (metrics): (kind, namespace, outcome, n)
    observe: Callable[[str, str, str, int], None] | None = None

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n
        if self.observe is not None:
            self.observe(self.kind, self.namespace, name, n)

    def sample(self, kind: str, doc: dict[str, Any]) -> None:
        kept = self.samples.setdefault(kind, [])
        if len(kept) < MAX_SAMPLES:
            kept.append(doc)

    def check(self) -> None:
        """Raise :class:`JobCancelled` once the job is cancelled (called between steps)."""
        if self.cancel_requested:
            raise JobCancelled

    @property
    def finished(self) -> bool:
        return self.state != JobState.RUNNING

    def public(self) -> dict[str, Any]:
        """The job as ``GET /v1/jobs/{id}`` answers it (walstream.api.JobStatus)."""
        end = self.ended_s if self.ended_s is not None else time.time()
        elapsed = max(end - self.started_s, 1e-3)
        progress = 1.0 if self.state == JobState.SUCCEEDED else (self.done / self.total if self.total else 0.0)
        return {
            "id": self.id,
            "kind": self.kind,
            "namespace": self.namespace,
            "state": self.state.value,
            "worker": self.worker,
            "request": self.request,
            "progress": round(min(progress, 1.0), 4),
            "counts": dict(self.counts),
            "rate_per_s": round(self.counts.get("read", 0) / elapsed, 1),
            "started_at": _iso(self.started_s),
            "ended_at": None if self.ended_s is None else _iso(self.ended_s),
            "error": self.error,
            "plan": self.plan,
            "samples": {k: list(v) for k, v in self.samples.items()},
        }


def _iso(t_s: float) -> str:
    return datetime.fromtimestamp(t_s, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


Work = Callable[[Job], Awaitable[None]]


class Jobs:
    """The jobs of this worker. ``worker``: its address, shown in every job; ``metrics``
    (optional) counts their entries and their ends."""

    def __init__(self, worker: str, metrics: Metrics | None = None) -> None:
        self.worker = worker
        self.metrics = metrics
        self._jobs: OrderedDict[str, Job] = OrderedDict()

    def start(self, kind: str, namespace: str, request: dict[str, Any], work: Work, *, plan: dict[str, Any],
              total: int) -> Job:
        """Run ``work(job)`` as a task; the job ends SUCCEEDED when it returns, CANCELLED when
        it raises :class:`JobCancelled`, FAILED (with the error) when it raises anything else."""
        job = Job(f"{kind}.{namespace}.{secrets.token_hex(6)}", kind, namespace, self.worker, request,
                  plan=plan, total=total, observe=self._observe if self.metrics is not None else None)
        self._jobs[job.id] = job
        job.task = asyncio.create_task(self._run(job, work), name=f"walstream job {job.id}")
        self._forget_old()
        return job

    async def _run(self, job: Job, work: Work) -> None:
        try:
            await work(job)
        except (JobCancelled, asyncio.CancelledError):
            job.state = JobState.CANCELLED
        except Exception as exc:
            log.exception("job %s failed", job.id)
            job.state, job.error = JobState.FAILED, f"{type(exc).__name__}: {exc}"
        else:
            # a cancellation asked while its last step ran still ends it CANCELLED
            job.state = JobState.CANCELLED if job.cancel_requested else JobState.SUCCEEDED
        finally:
            job.ended_s = time.time()
            if self.metrics is not None:
                self.metrics.jobs_ended.labels(job.kind, job.state.value).inc()
            log.info("job %s ended %s: %s", job.id, job.state.value, job.counts)

    def _observe(self, kind: str, namespace: str, outcome: str, n: int) -> None:
        assert self.metrics is not None
        self.metrics.job_entries.labels(kind, namespace, outcome).inc(n)

    def _forget_old(self) -> None:
        finished = [j.id for j in self._jobs.values() if j.finished]
        for job_id in finished[: max(0, len(finished) - KEPT_FINISHED)]:
            del self._jobs[job_id]

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        return list(self._jobs.values())

    def cancel(self, job_id: str) -> Job | None:
        """Ask the job to stop at its next step (None: no such job here). A finished job is
        left as it ended."""
        job = self._jobs.get(job_id)
        if job is not None and not job.finished:
            job.cancel_requested = True
        return job

    async def close(self) -> None:
        """Cancel every running job and wait for them (the worker stops)."""
        tasks = [j.task for j in self._jobs.values() if j.task is not None and not j.finished]
        for job in self._jobs.values():
            job.cancel_requested = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
