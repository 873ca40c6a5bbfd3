"""Lifecycle of one locally run JVM service: fetch, prepare, start, health-check, stop.

A :class:`Service` describes *what* to run (artifacts, config files, command line, health
probe); :class:`ServiceRunner` owns *how*: a detached process in its own session, its
stdout/stderr appended to ``<state>/<name>/service.log``, its pid in ``<state>/<name>/pid``.

Guarantees:
- ``up`` is idempotent: a service whose pid file names a live process that answers its
  health check is left alone.
- ``down`` only signals the process group recorded in the service's own pid file, never
  anything found by name, so it cannot stop a Kafka someone else runs on the same machine.
- ``up`` returns only when the health check passes (a real request to the service), or
  raises :class:`StackError` with the tail of the service's log.
"""

from __future__ import annotations

import os
import pwd
import resource
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from walstream.stack.paths import StackPaths

JAVA17_HOME_CANDIDATES = (
    "/usr/lib/jvm/java-17-openjdk-amd64",
    "/usr/lib/jvm/java-1.17.0-openjdk-amd64",
    "/usr/lib/jvm/openjdk-17",
)


class StackError(RuntimeError):
    """A local service could not be fetched, started, or reached."""


def java17_home() -> Path:
    """The JDK 17 to run services with: ``$WALSTREAM_JAVA17_HOME`` or a Debian default.

    Cassandra 5.0 installs a SecurityManager and refuses newer JDKs, and the Elasticsearch
    8 distribution we run has no bundled JDK, so every service runs on the same JDK 17.
    """
    env = os.environ.get("WALSTREAM_JAVA17_HOME")
    candidates = (env,) if env else JAVA17_HOME_CANDIDATES
    for c in candidates:
        if c and (Path(c) / "bin" / "java").exists():
            return Path(c)
    raise StackError(
        "no JDK 17 found; set WALSTREAM_JAVA17_HOME to a JDK 17 home "
        f"(looked in {', '.join(c for c in candidates if c)})"
    )


@dataclass(frozen=True)
class LaunchSpec:
    """How to start a service process."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    #: run as this unprivileged user when we are root (Elasticsearch refuses root).
    user: str | None = None
    #: open files the process may hold (``RLIMIT_NOFILE``), raised as far as this machine
    #: allows (see :func:`raise_open_files`). Kafka holds a file per log segment of every
    #: partition: a shell's default 1,024 (or even 20,000) runs out once a dev broker holds
    #: the topics of many test runs, and the broker then stops accepting connections.
    open_files: int = 1_048_576


def raise_open_files(wanted: int) -> None:
    """Raise this process's ``RLIMIT_NOFILE`` towards ``wanted`` (never lowers it).

    Root with ``CAP_SYS_RESOURCE`` may raise the hard limit up to the kernel's
    ``fs.nr_open``; anyone else (a container's root often lacks that capability) gets the
    soft limit raised to the hard one. Called in a service's child before ``exec``.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    if hard == infinite:
        if soft != infinite and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        return
    if soft >= wanted:  # (a soft limit is never above a finite hard one)
        return
    try:
        ceiling = int(Path("/proc/sys/fs/nr_open").read_text().strip())
    except (OSError, ValueError):
        ceiling = hard
    target = min(wanted, max(hard, ceiling))
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(hard, target)))
    except (ValueError, OSError):  # not allowed above the hard limit: up to it, then
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(target, hard), hard))


class Service(ABC):
    """One local service. Subclasses are small: they know their artifacts and config."""

    #: short name used for directories, pid files and the CLI (``kafka``, ``cassandra``, ...)
    name: str

    def __init__(self, paths: StackPaths) -> None:
        self.paths = paths

    @property
    def home(self) -> Path:
        """Per-service state directory (data, config, logs, pid)."""
        return self.paths.state / self.name

    @property
    def log_file(self) -> Path:
        return self.home / "service.log"

    @property
    def pid_file(self) -> Path:
        return self.home / "pid"

    @abstractmethod
    def fetch(self) -> None:
        """Download pinned artifacts into the cache (no-op when already cached)."""

    @abstractmethod
    def prepare(self) -> None:
        """Write config and initialise data directories (idempotent)."""

    @abstractmethod
    def launch_spec(self) -> LaunchSpec:
        """The command line that runs the service in the foreground."""

    @abstractmethod
    def healthy(self) -> bool:
        """True when the service answers a real request (never raises)."""

    @abstractmethod
    def endpoints(self) -> dict[str, str]:
        """Human-readable addresses, e.g. ``{"bootstrap": "127.0.0.1:9092"}``."""

    #: seconds ``up`` waits for :meth:`healthy` after starting the process
    start_timeout_s: float = 180.0


class ServiceRunner:
    """Starts, stops and inspects :class:`Service` processes through their pid files."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def pid(self) -> int | None:
        """The pid from the pid file when that process is still alive, else ``None``."""
        try:
            pid = int(self.service.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        # a zombie left by an earlier Popen in this same process counts as dead
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ", 1)[1].startswith("Z"):
                    return None
        except (FileNotFoundError, IndexError):
            return None
        return pid

    def running(self) -> bool:
        return self.pid() is not None

    def up(self) -> None:
        """Fetch, prepare and start the service, then wait until it is healthy."""
        svc = self.service
        if self.running() and svc.healthy():
            return
        if not self.running():
            svc.fetch()
            svc.home.mkdir(parents=True, exist_ok=True)
            svc.prepare()
            self._spawn(svc.launch_spec())
        self.wait_healthy()

    def _spawn(self, spec: LaunchSpec) -> None:
        svc = self.service
        argv = list(spec.argv)
        if spec.user and os.geteuid() == 0:
            gid = pwd.getpwnam(spec.user).pw_gid
            argv = ["setpriv", f"--reuid={spec.user}", f"--regid={gid}", "--init-groups", "--", *argv]
        env = {**os.environ, **spec.env}

        def before_exec() -> None:  # runs in the child, between fork and exec
            raise_open_files(spec.open_files)

        with open(svc.log_file, "ab") as log:
            log.write(f"\n=== walstream stack: starting {svc.name} at {time.ctime()}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                argv,
                cwd=spec.cwd or svc.home,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: `down` signals the whole group
                preexec_fn=before_exec,
            )
        svc.pid_file.write_text(f"{proc.pid}\n")

    def wait_healthy(self) -> None:
        svc = self.service
        deadline = time.monotonic() + svc.start_timeout_s
        while time.monotonic() < deadline:
            if svc.healthy():
                return
            if not self.running():
                raise StackError(f"{svc.name} exited during start-up:\n{self.tail(40)}")
            time.sleep(0.5)
        raise StackError(
            f"{svc.name} not healthy after {svc.start_timeout_s:.0f}s:\n{self.tail(40)}"
        )

    def down(self, timeout_s: float = 60.0) -> bool:
        """SIGTERM the service's process group, SIGKILL after ``timeout_s``.

        Returns True when a process was stopped.
        """
        pid = self.pid()
        if pid is None:
            self.service.pid_file.unlink(missing_ok=True)
            return False
        self._signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.running():
            time.sleep(0.2)
        if self.running():
            self._signal_group(pid, signal.SIGKILL)
            while self.running():
                time.sleep(0.1)
        self.service.pid_file.unlink(missing_ok=True)
        return True

    def kill(self) -> None:
        """SIGKILL the service at once (for outage tests); keeps data for a later ``up``."""
        pid = self.pid()
        if pid is not None:
            self._signal_group(pid, signal.SIGKILL)
            while self.running():
                time.sleep(0.1)
        self.service.pid_file.unlink(missing_ok=True)

    @staticmethod
    def _signal_group(pid: int, sig: signal.Signals) -> None:
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass

    def tail(self, lines: int = 50) -> str:
        try:
            with open(self.service.log_file, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 64 * 1024))
                data = f.read().decode(errors="replace")
        except FileNotFoundError:
            return "(no log yet)"
        return "\n".join(data.splitlines()[-lines:])
