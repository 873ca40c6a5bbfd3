"""What views and agents may use of their worker.

The composition root (walstream.app) builds one :class:`WebContext` for the HTTP views and
one :class:`AgentContext` for the agents; neither they nor anything below the root imports
the worker itself. A view or agent that needs something new gets it added here, by name,
rather than reaching into the worker.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import faust

from walstream.auth import Auth
from walstream.delivery.breaker import Breakers
from walstream.delivery.commands import CommandSender
from walstream.delivery.deliverer import Deliverer
from walstream.delivery.offsets import OffsetLedger
from walstream.entry import WriteClock
from walstream.faust_tables import Changelogs
from walstream.fleet import Fleet
from walstream.health import Liveness
from walstream.index_check import IndexChecks
from walstream.jobs import Jobs
from walstream.metrics import Metrics
from walstream.namespaces.registry import NamespaceRegistry
from walstream.replay import Replays
from walstream.replication import Peers
from walstream.settings import Settings
from walstream.shard_router import ShardRouter
from walstream.status import EntryStatus
from walstream.tables.dead_letter_index import DeadLetterIndex
from walstream.tables.entry_state import EntryStates
from walstream.tables.schedule import Schedule
from walstream.worker_report import WorkerReport
from walstream.writer import LogWriter


@dataclass(frozen=True, slots=True)
class WebContext:
    """For the HTTP views (walstream.web)."""

    settings: Settings
    #: declares the pages; its consumer's assignment is shown by /v1/health
    faust: faust.App
    registry: NamespaceRegistry
    writer: LogWriter
    clock: WriteClock
    metrics: Metrics
    fleet: Fleet
    status: EntryStatus
    commands: CommandSender
    dlq_index: DeadLetterIndex
    breakers: Breakers
    #: who may do what (admin and namespace write tokens)
    auth: Auth
    #: the partition Kafka's default partitioner gives a key in every WAL topic
    partition_for: Callable[[str], int]
    #: partitions this worker consumes actively (the same numbers in every WAL topic)
    active_partitions: Callable[[], list[int]]
    #: true while a rebalance or a table recovery is under way (tables may lag)
    settling: Callable[[], bool]
    #: why the worker should not take traffic yet (empty: ready; walstream.health)
    not_ready: Callable[[], list[str]]
    #: progress marks of the agents' loops (walstream.health)
    liveness: Liveness
    #: the topics the delivery agent consumes
    consumed_topics: Callable[[], list[str]]
    #: the largest encoded entry the write API accepts, in bytes (known once started)
    entry_limit_bytes: Callable[[], int]
    #: what this worker says about itself to the operator's pages
    report: WorkerReport
    #: the walstream tables by name, for the table browser
    tables: Mapping[str, Any]
    #: forwards requests about other shards' namespaces to them
    shard_router: ShardRouter
    #: this worker's background jobs (replays)
    jobs: Jobs
    #: starts replays as jobs
    replays: Replays
    #: starts index checks as jobs
    index_checks: IndexChecks
    #: what requests send to the other regions of replicated namespaces
    peers: Peers


@dataclass(frozen=True, slots=True)
class AgentContext:
    """For the agents (the ``agents`` package, walstream.plugins)."""

    settings: Settings
    #: declares agents, timers and signal handlers
    faust: faust.App
    #: the channel of every WAL topic of this worker's shard and the command topic
    wal_channel: Any
    offsets: OffsetLedger
    changelogs: Changelogs
    deliverer: Deliverer
    commands: CommandSender
    schedule: Schedule
    states: EntryStates
    active_partitions: Callable[[], list[int]]
    settling: Callable[[], bool]
    #: the agents mark their loops' progress here (walstream.health)
    liveness: Liveness
