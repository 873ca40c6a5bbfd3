"""A single-node Apache Cassandra 5.0 on loopback, run from Maven Central's ``cassandra-all``.

Contract:
- :meth:`CassandraService.fetch` resolves ``org.apache.cassandra:cassandra-all`` (pinned by
  :data:`CASSANDRA_VERSION`) and its runtime dependencies, logback included, into
  ``<cache>/cassandra-<version>/lib``; nothing else is downloaded.
- :meth:`CassandraService.prepare` (re)writes ``conf/cassandra.yaml`` and ``conf/logback.xml``
  from the constructor's parameters and creates the data directories; it never touches
  existing data, so ``down`` then ``up`` (or a SIGKILL then ``up``) keeps every table.
- The node listens on 127.0.0.1 only: CQL on ``native_port``, inter-node messaging on
  ``storage_port``, and JMX (off unless ``jmx_port`` is given: then its registry on that
  port plus an RMI port the JVM picks) on the loopback address.
- :meth:`CassandraService.healthy` is a real CQL request (``system.local``) that must come from
  a Cassandra of the pinned version in *our* cluster; it never raises.
- Every acknowledged write survives a SIGKILL of the JVM (``commitlog_sync="batch"``, the
  default here; see :class:`CassandraService`); a clean ``down`` drains memtables to sstables.

Logs: Cassandra's own log goes to ``<state>/cassandra/logs/system.log`` (size-capped);
warnings and errors also go to stdout, i.e. the runner's ``service.log``, so a failed start
shows its cause in :meth:`ServiceRunner.tail`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import threading
import warnings
from pathlib import Path
from typing import Literal

from walstream.stack.maven import Artifact, fetch
from walstream.stack.paths import StackPaths
from walstream.stack.service import LaunchSpec, Service, StackError, java17_home

#: Cassandra release run by the stack (latest 5.0.x on Maven Central when pinned).
CASSANDRA_VERSION = "5.0.9"
#: jamm version that cassandra-all 5.0.9's parent POM pins (``jamm.version``); it is loaded as
#: a java agent, so the jar name must match what ``fetch`` puts in ``lib``.
JAMM_VERSION = "0.4.0"
#: Cluster name written to cassandra.yaml; the health probe checks it so that a foreign
#: Cassandra already listening on the same port is not mistaken for ours.
CLUSTER_NAME = "walstream-stack"

#: ``--add-exports`` / ``--add-opens`` and system properties from Cassandra's
#: ``conf/jvm17-server.options`` ("JPMS" and "Netty Options" sections). Without them JDK 17
#: refuses the reflective access Cassandra, jamm, Chronicle and Netty rely on.
JVM17_MODULE_FLAGS: tuple[str, ...] = (
    "-Djdk.attach.allowAttachSelf=true",
    "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports=java.sql/java.sql=ALL-UNNAMED",
    "--add-exports=java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports=jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports=jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports=jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dio.netty.allocator.useCacheForAllThreads=true",
    "-Dio.netty.allocator.maxOrder=11",
)

#: G1 settings from ``conf/jvm17-server.options`` and the general ones from
#: ``conf/jvm-server.options``, minus ``-XX:+AlwaysPreTouch`` (it would fault in the whole
#: heap at start: slower start and a full-heap RSS on a machine shared with Kafka and ES)
#: and minus the heap dump on OOM (a heap-sized file in the state dir); we exit instead.
JVM_GC_AND_GENERAL_FLAGS: tuple[str, ...] = (
    "-XX:+UseG1GC",
    "-XX:+ParallelRefProcEnabled",
    "-XX:MaxTenuringThreshold=1",
    "-XX:G1HeapRegionSize=16m",
    "-XX:G1RSetUpdatingPauseTimePercent=5",
    "-XX:MaxGCPauseMillis=300",
    "-XX:InitiatingHeapOccupancyPercent=70",
    "-ea",
    "-da:net.openhft...",
    "-XX:+UseThreadPriorities",
    "-Xss256k",
    "-XX:+UseTLAB",
    "-XX:+ResizeTLAB",
    "-XX:+PerfDisableSharedMem",
    "-Djava.net.preferIPv4Stack=true",
    "-XX:+ExitOnOutOfMemoryError",
)

_LOGBACK_XML = """\
<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by walstream stack; rewritten on every `up`. -->
<configuration scan="false">
  <shutdownHook class="ch.qos.logback.core.hook.DefaultShutdownHook"/>
  <appender name="SYSTEMLOG" class="ch.qos.logback.core.rolling.RollingFileAppender">
    <file>{log_dir}/system.log</file>
    <rollingPolicy class="ch.qos.logback.core.rolling.FixedWindowRollingPolicy">
      <fileNamePattern>{log_dir}/system.log.%i.zip</fileNamePattern>
      <minIndex>1</minIndex>
      <maxIndex>3</maxIndex>
    </rollingPolicy>
    <triggeringPolicy class="ch.qos.logback.core.rolling.SizeBasedTriggeringPolicy">
      <maxFileSize>20MB</maxFileSize>
    </triggeringPolicy>
    <encoder>
      <pattern>%-5level [%thread] %date{{ISO8601}} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <filter class="ch.qos.logback.classic.filter.ThresholdFilter">
      <level>WARN</level>
    </filter>
    <encoder>
      <pattern>%-5level [%thread] %date{{ISO8601}} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <root level="INFO">
    <appender-ref ref="SYSTEMLOG"/>
    <appender-ref ref="STDOUT"/>
  </root>
</configuration>
"""


class CassandraService(Service):
    """One Cassandra 5.0 node on loopback, data under ``<state>/<name>/data``.

    ``heap_mb`` is the fixed JVM heap (``-Xms`` = ``-Xmx``); memtables are sized from it.
    ``jmx_port`` enables Cassandra's loopback-only JMX server (needed only for ``nodetool``);
    ``None`` leaves JMX off. ``commitlog_sync``: ``"batch"`` (default) acknowledges a write
    only once its commit-log entry is synced, so no acknowledged write is lost to a SIGKILL;
    ``"periodic"`` (Cassandra's default) answers without waiting and loses the writes of the
    last ~100 ms before a SIGKILL, for about twice the peak write throughput.
    """

    # Measured on the 2-core machine: 4-7 s to healthy (first start of a fresh node 6 s),
    # up to ~16 s while Kafka and Elasticsearch were starting beside it; the rest is margin
    # for a loaded CI machine, short enough that a hung start fails the run quickly.
    start_timeout_s: float = 90.0

    def __init__(
        self,
        paths: StackPaths,
        name: str = "cassandra",
        native_port: int = 9042,
        storage_port: int = 7000,
        heap_mb: int = 1024,
        jmx_port: int | None = None,
        commitlog_sync: Literal["batch", "periodic"] = "batch",
    ) -> None:
        super().__init__(paths)
        self.name = name
        self.native_port = native_port
        self.storage_port = storage_port
        self.heap_mb = heap_mb
        self.jmx_port = jmx_port
        self.commitlog_sync = commitlog_sync

    # -- layout -----------------------------------------------------------------------------

    @property
    def lib_dir(self) -> Path:
        """Shared by every node of this version: jars never change once fetched."""
        return self.paths.cache / f"cassandra-{CASSANDRA_VERSION}" / "lib"

    @property
    def conf_dir(self) -> Path:
        return self.home / "conf"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    # -- Service ----------------------------------------------------------------------------

    def fetch(self) -> None:
        fetch([Artifact("org.apache.cassandra", "cassandra-all", CASSANDRA_VERSION)], self.lib_dir)
        if not (self.lib_dir / f"jamm-{JAMM_VERSION}.jar").exists():
            raise StackError(
                f"cassandra-all {CASSANDRA_VERSION} did not bring jamm-{JAMM_VERSION}.jar "
                f"into {self.lib_dir}; update JAMM_VERSION"
            )

    def prepare(self) -> None:
        for d in (self.conf_dir / "triggers", self.log_dir, *self._data_dirs().values()):
            d.mkdir(parents=True, exist_ok=True)
        # Config is a pure function of the constructor's arguments, so rewriting it on every
        # `up` is idempotent and lets a changed port take effect; data dirs are never cleared.
        _write_if_changed(self.conf_dir / "cassandra.yaml", self.cassandra_yaml())
        _write_if_changed(self.conf_dir / "logback.xml", _LOGBACK_XML.format(log_dir=self.log_dir))

    def launch_spec(self) -> LaunchSpec:
        java = java17_home() / "bin" / "java"
        jars = sorted(self.lib_dir.glob("*.jar"))
        if not jars:
            raise StackError(f"no jars in {self.lib_dir}; fetch() first")
        classpath = ":".join(str(j) for j in jars)
        argv = [
            str(java),
            f"-Xms{self.heap_mb}m",
            f"-Xmx{self.heap_mb}m",
            *JVM_GC_AND_GENERAL_FLAGS,
            *JVM17_MODULE_FLAGS,
            # Cassandra sizes objects with jamm's instrumentation; without the agent it falls
            # back to slower, less exact estimates and warns.
            f"-javaagent:{self.lib_dir / f'jamm-{JAMM_VERSION}.jar'}",
            f"-Dcassandra.config={(self.conf_dir / 'cassandra.yaml').as_uri()}",
            # Without it the daemon closes stdout/stderr, and start-up errors never reach
            # service.log.
            "-Dcassandra-foreground=yes",
            f"-Dcassandra.storagedir={self.data_dir}",
            f"-Dcassandra.logdir={self.log_dir}",
            f"-Dlogback.configurationFile={self.conf_dir / 'logback.xml'}",
            # A single node that is its own seed has nobody to gossip with: waiting for gossip
            # to "settle" only adds seconds to every start.
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            # Memtables estimate their per-row overhead at class load by building and measuring
            # 100000 rows (~2 s of every start); Cassandra's own test runs use 100 steps.
            "-Dcassandra.memtable_row_overhead_computation_step=100",
            f"-Dcassandra.triggers_dir={self.conf_dir / 'triggers'}",
            *self._jmx_flags(),
            *self._cds_flags(java, classpath),
            "-cp",
            classpath,
            "org.apache.cassandra.service.CassandraDaemon",
        ]
        if _can_drop_ipc_lock():
            # As root, CassandraDaemon's unconditional mlockall() succeeds and faults in and
            # pins the whole committed heap: ~2 s more start-up and a permanent full-heap RSS.
            # Without CAP_IPC_LOCK the 8 MiB RLIMIT_MEMLOCK makes it fail harmlessly (one
            # warning), which is what any non-root run of Cassandra gets anyway.
            argv = ["setpriv", "--bounding-set=-ipc_lock", "--", *argv]
        return LaunchSpec(argv=argv, env={"JAVA_HOME": str(java17_home())}, cwd=self.home)

    def healthy(self) -> bool:
        """A CQL ``SELECT release_version, cluster_name FROM system.local`` answered by our node.

        Checks the TCP port first so that the driver (and its connection warnings) is only
        involved once Cassandra listens; never raises.
        """
        try:
            with socket.create_connection(("127.0.0.1", self.native_port), timeout=1.0):
                pass
        except OSError:
            return False
        try:
            return _cql_probe(self.native_port)
        except Exception:  # a probe must never raise
            return False

    def endpoints(self) -> dict[str, str]:
        return {"cql": f"127.0.0.1:{self.native_port}"}

    # -- config -----------------------------------------------------------------------------

    def _data_dirs(self) -> dict[str, Path]:
        return {
            "data": self.data_dir / "data",
            "commitlog": self.data_dir / "commitlog",
            "saved_caches": self.data_dir / "saved_caches",
            "hints": self.data_dir / "hints",
            "cdc_raw": self.data_dir / "cdc_raw",
        }

    def _jmx_flags(self) -> list[str]:
        if self.jmx_port is None:
            # Neither cassandra.jmx.local.port nor .remote.port: CassandraDaemon starts no JMX
            # connector at all, so nothing listens on 7199.
            return []
        # The "local" port makes CassandraDaemon bind its JMX/RMI server to the loopback
        # address only.
        return [
            f"-Dcassandra.jmx.local.port={self.jmx_port}",
            "-Djava.rmi.server.hostname=127.0.0.1",
        ]

    def _cds_flags(self, java: Path, classpath: str) -> list[str]:
        """AppCDS: map the ~9000 classes Cassandra loads at start from an archive.

        Measured ~2 s (of ~6.5 s) off every warm start on the 2-core machine, and ~90 MB of
        RSS (archived class metadata is shared, read-only memory). The archive is made
        by the JVM itself at the first clean exit (``down``) of a node that ran without one,
        and is then shared by every later start of this Cassandra version on this JDK.
        A missing, stale or foreign archive only costs speed: with the default
        ``-Xshare:auto`` the JVM validates it and runs without it when it does not match.
        """
        archive = self.lib_dir.parent / "cds" / f"cassandra-{_cds_key(java, classpath)}.jsa"
        # A per-node dump name: two nodes stopping at once must not write the same file.
        dump = archive.with_name(f"{archive.name}.{self.name}.dump")
        if not archive.exists() and _is_complete_dynamic_archive(dump):
            os.replace(dump, archive)
        # CDS notes ("Pre JDK 6 class not supported", "Skipping ...") would be noise in
        # service.log (hence cds*=error); a failed dump just leaves no archive.
        # JDK 17 refuses to dump an archive while a java agent runs unless allowed, and then
        # only maps that archive into JVMs with the same setting. jamm only measures objects
        # and never transforms classes, so the archived classes are exactly those on disk.
        # (The JVM says so in one "created with AllowArchivingWithJavaAgent ... testing
        # purposes only" warning per start in service.log; it cannot be turned off alone.)
        common = [
            "-XX:+UnlockDiagnosticVMOptions",
            "-XX:+AllowArchivingWithJavaAgent",
            "-Xlog:cds*=error",
        ]
        if archive.exists():
            return [*common, f"-XX:SharedArchiveFile={archive}"]
        archive.parent.mkdir(parents=True, exist_ok=True)
        return [*common, f"-XX:ArchiveClassesAtExit={dump}"]

    def cassandra_yaml(self) -> str:
        """cassandra.yaml for one small loopback node (Cassandra rejects unknown keys)."""
        d = self._data_dirs()
        # A quarter of the heap for memtables would be the default; an eighth keeps flushes
        # small and frequent enough on a test machine while leaving room for reads.
        memtable_mb = max(32, self.heap_mb // 8)
        if self.commitlog_sync == "batch":
            commitlog_comment = (
                "batch: a write is acknowledged after its commit-log sync, so every\n"
                "# acknowledged write survives a SIGKILL of the JVM."
            )
            commitlog_sync = "commitlog_sync: batch"
        else:
            commitlog_comment = (
                "periodic: acknowledged before the sync; the sync marker is written every\n"
                "# 100 ms, so writes acknowledged in the last ~100 ms before a SIGKILL are lost."
            )
            commitlog_sync = "commitlog_sync: periodic\ncommitlog_sync_period: 10000ms"
        return f"""\
# Written by walstream stack from CassandraService's parameters; rewritten on every `up`.
cluster_name: {CLUSTER_NAME}
# One node, one token: no vnode bookkeeping, and a fixed token makes restarts deterministic.
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:{self.storage_port}"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: {self.storage_port}
start_native_transport: true
native_transport_port: {self.native_port}
# A fresh single-node cluster never talks to 4.x nodes: use 5.0's sstable format and limits.
storage_compatibility_mode: NONE

data_file_directories:
  - {d["data"]}
commitlog_directory: {d["commitlog"]}
saved_caches_directory: {d["saved_caches"]}
hints_directory: {d["hints"]}
cdc_raw_directory: {d["cdc_raw"]}

# {commitlog_comment}
{commitlog_sync}
# Memory-mapped (legacy, uncompressed) segments: what is written is in the page cache at
# once, so it outlives the JVM; the sync only has to write the segment's sync marker.
commitlog_disk_access_mode: legacy

# Tests create and drop keyspaces freely: no snapshot on DROP/TRUNCATE.
auto_snapshot: false
snapshot_before_compaction: false

# Small machine (2 cores, shared with Kafka and Elasticsearch).
concurrent_reads: 4
concurrent_writes: 4
concurrent_counter_writes: 4
concurrent_materialized_view_writes: 2
concurrent_compactors: 1
memtable_heap_space: {memtable_mb}MiB
memtable_offheap_space: {memtable_mb}MiB
key_cache_size: 16MiB
counter_cache_size: 0MiB
row_cache_size: 0MiB
# (5.0's chunk cache is off by default: file_cache_enabled: false.)
networking_cache_size: 16MiB

# A loaded CI machine can stall a few hundred ms; a 2 s write timeout (the default) turns
# that into spurious WriteTimeouts in tests.
write_request_timeout: 5000ms
counter_write_request_timeout: 5000ms
read_request_timeout: 5000ms
range_request_timeout: 10000ms

authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
hinted_handoff_enabled: false
"""


#: serialises health probes, which briefly change the driver's process-wide log level
_PROBE_LOCK = threading.Lock()

_CAP_IPC_LOCK = 14
_CAP_SETPCAP = 8


def _can_drop_ipc_lock() -> bool:
    """True when we hold CAP_IPC_LOCK (so mlockall would succeed) and may drop it (setpriv
    changes the bounding set only with CAP_SETPCAP)."""
    if shutil.which("setpriv") is None:
        return False
    try:
        with open("/proc/self/status") as f:
            caps = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return False
    return bool(caps >> _CAP_IPC_LOCK & 1) and bool(caps >> _CAP_SETPCAP & 1)


#: ``CDS_DYNAMIC_ARCHIVE_MAGIC`` of JDK 17's filemap.hpp, the first 4 bytes of a dynamic archive.
_CDS_DYNAMIC_MAGIC = 0xF00BABA8


def _cds_key(java: Path, classpath: str) -> str:
    """Identifies what an archive is valid for: this JVM build and this exact class path."""
    real_java = java.resolve()
    libjvm = real_java.parent.parent / "lib" / "server" / "libjvm.so"
    try:
        st = libjvm.stat()
        jvm_id = f"{libjvm}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        jvm_id = str(real_java)
    return hashlib.sha256(f"{jvm_id}\n{classpath}".encode()).hexdigest()[:16]


def _is_complete_dynamic_archive(path: Path) -> bool:
    """True when ``path`` is a fully written dynamic CDS archive.

    The JVM writes the header (with its magic) only after every region, so an archive
    whose dump was interrupted (SIGKILL during ``down``) has no magic and is rejected.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return len(head) == 4 and int.from_bytes(head, "little") == _CDS_DYNAMIC_MAGIC


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _cql_probe(port: int) -> bool:
    """Run the health query with cassandra-driver; quiet and bounded (~3 s per step)."""
    # Imported here: only a Cassandra health check needs the driver, and its import would
    # otherwise slow every `walstream stack` invocation.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
        from cassandra.policies import WhiteListRoundRobinPolicy

    # The TCP check in `healthy` already keeps the driver away from a node that is not
    # listening; one that listens but misbehaves would still make the driver log
    # reconnection warnings that the probe's False answer already conveys. The logger is
    # process-wide, hence ERROR (not higher) so that errors of other sessions stay
    # visible, and a lock so that concurrent probes cannot restore each other's level.
    with _PROBE_LOCK:
        driver_log = logging.getLogger("cassandra")
        saved_level = driver_log.level
        driver_log.setLevel(logging.ERROR)
        cluster = None
        try:
            profile = ExecutionProfile(
                # An explicit policy: without one the driver warns on every Cluster().
                load_balancing_policy=WhiteListRoundRobinPolicy(["127.0.0.1"]),
                request_timeout=3.0,
            )
            cluster = Cluster(
                contact_points=["127.0.0.1"],
                port=port,
                # The server is pinned to 5.0, which speaks v5: no version negotiation
                # round trips (nor their downgrade warnings).
                protocol_version=5,
                execution_profiles={EXEC_PROFILE_DEFAULT: profile},
                connect_timeout=3.0,
                control_connection_timeout=3.0,
                schema_metadata_enabled=False,
                token_metadata_enabled=False,
            )
            session = cluster.connect()
            row = session.execute("SELECT release_version, cluster_name FROM system.local").one()
            return row is not None and row.release_version == CASSANDRA_VERSION and row.cluster_name == CLUSTER_NAME
        finally:
            if cluster is not None:
                cluster.shutdown()
            driver_log.setLevel(saved_level)
