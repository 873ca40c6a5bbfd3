"""A single-node Apache Kafka cluster (KRaft, combined broker + controller) on loopback.

Contract:
- ``fetch`` resolves the pinned ``org.apache.kafka:kafka_2.13`` and its runtime dependencies
  from Maven Central into ``<cache>/kafka-<version>/lib`` (shared by every instance).
- ``prepare`` (idempotent) writes ``server.properties`` and ``log4j2.properties`` into the
  service's state directory, creates a cluster id once (``<home>/cluster.id``) and formats
  ``<home>/data`` once; later calls keep the data and the id.
- The process listens on ``127.0.0.1:<port>`` (clients, PLAINTEXT) and
  ``127.0.0.1:<controller_port>`` (KRaft controller) only.
- ``healthy`` sends a real Metadata request and checks that the answering cluster is *this*
  one (its cluster id), so a foreign Kafka on the same port never counts as ours.

Several instances may run at once (e.g. ``kafka`` and ``kafka-west`` for a second region), as
long as each has its own ``name`` and ports: every instance has its own state directory,
data and cluster id.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextvars
import logging
import re
import subprocess
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from walstream.stack.maven import Artifact, fetch
from walstream.stack.paths import StackPaths
from walstream.stack.service import LaunchSpec, Service, StackError, java17_home

#: Kafka release run by the stack (4.1 line: brokers run on JDK 17, logs through slf4j 1.7).
KAFKA_VERSION = "4.1.2"
#: the Scala build of the broker jar; 2.13 is the only one Kafka 4.x publishes.
KAFKA_SCALA_VERSION = "2.13"
#: log4j2 as pulled in by ``kafka-server`` 4.1.2; the slf4j-1 binding must match it.
LOG4J_VERSION = "2.25.3"

KAFKA_ARTIFACTS: tuple[Artifact, ...] = (
    Artifact("org.apache.kafka", f"kafka_{KAFKA_SCALA_VERSION}", KAFKA_VERSION),
    # Kafka's POM leaves the slf4j binding to the distribution; without it the broker logs nothing.
    Artifact("org.apache.logging.log4j", "log4j-core", LOG4J_VERSION),
    # Kafka 4.1 still logs through slf4j 1.7.x, so the slf4j-1 binding (not -slf4j2-impl).
    Artifact("org.apache.logging.log4j", "log4j-slf4j-impl", LOG4J_VERSION),
)

#: Java flags besides heap and logging: Kafka's own defaults from ``kafka-run-class.sh``
#: (G1 with short pauses), plus dying on OOM so a wedged broker fails its health check
#: instead of limping on.
JVM_FLAGS: tuple[str, ...] = (
    "-server",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)

#: only the KRaft node id of a one-node cluster; each cluster has its own id space.
NODE_ID = 1

_LOG4J2_PROPERTIES = """\
# Written by walstream stack; rewritten on every `up`.
# Full INFO log in logs/server.log (rolled); only WARN and above reach stdout, which the
# stack runner appends to service.log and shows when start-up fails.
status = warn
# Kafka logs its own shutdown; log4j's hook would close the appenders under it (and then
# complain it cannot register during shutdown). Appenders flush each line anyway.
shutdownHook = disable
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
appender.console.filter.threshold.type = ThresholdFilter
appender.console.filter.threshold.level = warn

appender.server.type = RollingFile
appender.server.name = SERVER
appender.server.fileName = ${sys:kafka.logs.dir}/server.log
appender.server.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.server.layout.type = PatternLayout
appender.server.layout.pattern = [%d] %p %m (%c)%n
appender.server.policies.type = Policies
appender.server.policies.size.type = SizeBasedTriggeringPolicy
appender.server.policies.size.size = 10MB
appender.server.strategy.type = DefaultRolloverStrategy
appender.server.strategy.max = 3

rootLogger.level = info
rootLogger.appenderRef.console.ref = STDOUT
rootLogger.appenderRef.server.ref = SERVER

# Per-request and state-change chatter: useful only when debugging Kafka itself.
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.statechange.name = state.change.logger
logger.statechange.level = warn
logger.clients.name = org.apache.kafka.clients
logger.clients.level = warn
"""


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding.

    Same shape as ``kafka-storage.sh random-uuid``, made here to spare a JVM start. Like
    Kafka's ``Uuid.randomUuid`` we never hand out an id starting with ``-``, which its
    command-line tools would read as an option.
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


_CLUSTER_ID_RE = re.compile(r"^[A-Za-z0-9_-]{22}$")


class KafkaService(Service):
    """One KRaft Kafka node acting as broker and controller, bound to 127.0.0.1."""

    start_timeout_s = 120.0

    def __init__(
        self,
        paths: StackPaths,
        name: str = "kafka",
        port: int = 9092,
        controller_port: int = 9093,
        # 1 GiB: a broker holding ~19,000 partitions (runs of tests that left their topics
        # behind, before they removed them) died of OutOfMemoryError at 512 MiB
        heap_mb: int = 1024,
    ) -> None:
        super().__init__(paths)
        self.name = name
        self.port = port
        self.controller_port = controller_port
        self.heap_mb = heap_mb

    # -- locations -------------------------------------------------------------------------

    @property
    def lib_dir(self) -> Path:
        """Jars of the pinned release, shared by every instance on the machine."""
        return self.paths.cache / f"kafka-{KAFKA_VERSION}" / "lib"

    @property
    def data_dir(self) -> Path:
        """Topic partitions and the KRaft metadata log."""
        return self.home / "data"

    @property
    def config_file(self) -> Path:
        return self.home / "server.properties"

    @property
    def log4j_file(self) -> Path:
        return self.home / "log4j2.properties"

    @property
    def cluster_id_file(self) -> Path:
        return self.home / "cluster.id"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- Service ---------------------------------------------------------------------------

    def fetch(self) -> None:
        fetch(list(KAFKA_ARTIFACTS), self.lib_dir)

    def prepare(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(exist_ok=True)
        self.config_file.write_text(self.server_properties())
        self.log4j_file.write_text(_LOG4J2_PROPERTIES)
        cluster_id = self.cluster_id()
        if not (self.data_dir / "meta.properties").exists():
            self._format(cluster_id)

    def launch_spec(self) -> LaunchSpec:
        return LaunchSpec(argv=[*self._java_argv(), "kafka.Kafka", str(self.config_file)])

    def healthy(self) -> bool:
        try:
            expected = self._persisted_cluster_id()
            cid = _run_sync(_cluster_id_of(self.bootstrap, timeout_s=5.0), timeout_s=8.0)
        except Exception:  # a health probe reports; Ctrl-C still interrupts a wait
            return False
        return cid is not None and (expected is None or cid == expected)

    def endpoints(self) -> dict[str, str]:
        return {"bootstrap": self.bootstrap}

    # -- config ----------------------------------------------------------------------------

    def server_properties(self) -> str:
        """The broker/controller configuration (rewritten on every ``prepare``)."""
        props: dict[str, str | int] = {
            "process.roles": "broker,controller",
            "node.id": NODE_ID,
            # A static voter set (not `--standalone`'s dynamic quorum): the controller
            # address then comes from this file on every start, so it stays right even if
            # the ports of an existing state directory are changed.
            "controller.quorum.voters": f"{NODE_ID}@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            # One node: internal topics cannot have more than one replica.
            "default.replication.factor": 1,
            "min.insync.replicas": 1,
            "offsets.topic.replication.factor": 1,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "share.coordinator.state.topic.replication.factor": 1,
            "share.coordinator.state.topic.min.isr": 1,
            # Fewer internal partitions than the default 50: each is a log with open files
            # and mmapped indexes, and a dev stack never needs that spread.
            "offsets.topic.num.partitions": 10,
            "transaction.state.log.num.partitions": 10,
            "share.coordinator.state.topic.num.partitions": 10,
            # Tests start consumers and expect assignment at once, not after 3 s.
            "group.initial.rebalance.delay.ms": 0,
            # walstream creates its topics explicitly; a typo must fail, not create a topic.
            "auto.create.topics.enable": "false",
            "num.partitions": 3,
            # Two cores: Kafka's defaults (3 network, 8 io threads) only add contention.
            "num.network.threads": 2,
            "num.io.threads": 4,
            "background.threads": 4,
            # Dev retention: a few days, at most 1 GiB per partition, segments small enough
            # that retention and compaction act on dev-sized data.
            "log.retention.hours": 72,
            "log.retention.bytes": 1024 * 1024 * 1024,
            "log.segment.bytes": 64 * 1024 * 1024,
            "log.retention.check.interval.ms": 60_000,
            # The cleaner's dedupe buffer is on-heap (default 128 MiB): too much of a small heap.
            "log.cleaner.dedupe.buffer.size": 32 * 1024 * 1024,
            "log.cleaner.threads": 1,
            # After a SIGKILL the restarted controller keeps the old broker incarnation
            # alive until its session expires and only then accepts the new registration:
            # with the default 9 s that is most of a restart. Broker and controller share
            # one process, so a shorter session cannot fence it while it is merely slow.
            "broker.heartbeat.interval.ms": 1000,
            "broker.session.timeout.ms": 4000,
        }
        lines = ["# Written by walstream stack; rewritten on every `up`."]
        lines += [f"{k}={v}" for k, v in props.items()]
        return "\n".join(lines) + "\n"

    def cluster_id(self) -> str:
        """This instance's cluster id: the persisted one, or a new one persisted now."""
        cid = self._persisted_cluster_id()
        if cid is None:
            cid = new_cluster_id()
            self.cluster_id_file.write_text(cid + "\n")
        return cid

    def _persisted_cluster_id(self) -> str | None:
        try:
            cid = self.cluster_id_file.read_text().strip()
            if _CLUSTER_ID_RE.match(cid):
                return cid
        except FileNotFoundError:
            pass
        # A formatted data dir is the authority when cluster.id was lost: formatting it
        # again with another id would be refused, and the data belongs to that id anyway.
        try:
            meta = (self.data_dir / "meta.properties").read_text()
        except FileNotFoundError:
            return None
        m = re.search(r"^cluster\.id=(\S+)$", meta, re.MULTILINE)
        if m is None:
            return None
        self.cluster_id_file.write_text(m.group(1) + "\n")
        return m.group(1)

    def _java_argv(self) -> list[str]:
        java = java17_home() / "bin" / "java"
        return [
            str(java),
            f"-Xms{self.heap_mb}m",
            f"-Xmx{self.heap_mb}m",
            *JVM_FLAGS,
            f"-Dlog4j2.configurationFile={self.log4j_file}",
            f"-Dkafka.logs.dir={self.home / 'logs'}",
            "-cp",
            f"{self.lib_dir}/*",
        ]

    def _format(self, cluster_id: str) -> None:
        # `-g` (--ignore-formatted) keeps a re-run harmless should meta.properties exist
        # after all (e.g. an interrupted earlier format).
        argv = [
            *self._java_argv(),
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(self.config_file),
            "-g",
        ]
        proc = subprocess.run(
            argv, check=False, cwd=self.home, capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
        if proc.returncode != 0:
            raise StackError(
                f"formatting {self.data_dir} for {self.name} failed:\n" + (proc.stdout + proc.stderr)[-4000:]
            )


#: set inside a health probe; aiokafka's records logged under it are dropped
_PROBING: contextvars.ContextVar[bool] = contextvars.ContextVar("walstream_kafka_probe", default=False)


class _ProbeLogFilter(logging.Filter):
    """Drops aiokafka's log records emitted by our own health probes.

    A probe while Kafka is still starting is *expected* to fail to connect, and aiokafka
    logs that at ERROR ("Unable connect to ..."); the CLI would print it on every poll.
    The context variable limits this to the probe's own task, so an application's
    connection errors in the same process are still logged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not _PROBING.get()


_PROBE_FILTER = _ProbeLogFilter()
# Filters apply to records of their own logger only, not to those propagated from children.
_AIOKAFKA_LOGGERS = ("aiokafka", "aiokafka.conn", "aiokafka.cluster", "aiokafka.admin.client")


async def _cluster_id_of(bootstrap: str, timeout_s: float) -> str | None:
    """The cluster id reported by a Metadata request to ``bootstrap``, None without brokers."""
    from aiokafka.admin import AIOKafkaAdminClient

    for name in _AIOKAFKA_LOGGERS:
        logger = logging.getLogger(name)
        if _PROBE_FILTER not in logger.filters:
            logger.addFilter(_PROBE_FILTER)
    _PROBING.set(True)  # this task's context only: tasks it spawns inherit it
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=int(timeout_s * 1000),
        client_id="walstream-stack-health",
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        info = await asyncio.wait_for(admin.describe_cluster(), timeout_s)
    finally:
        await admin.close()
    if not info.get("brokers"):
        return None
    cid = info.get("cluster_id")
    return cid if isinstance(cid, str) else None


def _run_sync(coro: Coroutine[Any, Any, str | None], timeout_s: float) -> str | None:
    """Run ``coro`` to completion from sync code, even when an event loop already runs here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # asyncio.run refuses to nest; a short-lived thread has its own loop.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout=timeout_s)
