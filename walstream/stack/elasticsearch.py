"""A local single-node Elasticsearch 8 on loopback, from Maven Central.

Elastic publishes no server jar we could put on a classpath, but it does publish its
*integration-test distribution* (``org.elasticsearch.distribution.integ-test-zip``), a full
``bin/elasticsearch`` layout without a bundled JDK and with only four modules:
``transport-netty4``, ``x-pack-core``, ``x-pack-security`` and ``apm``.

Verified to work: index/get/mget/delete, ``_update`` with a partial ``doc`` / ``doc_as_upsert``,
``_bulk``, external versioning (a lower version gets 409), mappings (keyword, text, long,
date_nanos, ip, geo_point, flattened), keyword normalizers with ``lowercase``, search with
queries and terms aggregations, ``_count``, ``_msearch``, scroll, point-in-time, aliases,
composable index templates, ``_cat``, ``_cluster/health``. The ``standard``, ``simple``,
``whitespace`` and ``keyword`` analyzers exist.

Missing (the module providing them is not in the zip): ``GET /`` and ``HEAD /`` (``rest-root``:
so the Python client's ``info()`` fails and ``ping()`` returns False; probe with
``cluster.health()``), painless (scripted updates, ``script_score``), ``_reindex``,
``_update_by_query``, ``_delete_by_query``, ``analysis-common`` (language analyzers,
``asciifolding``, ngram...), ingest pipelines, data streams, search templates, the
``scaled_float`` / ``wildcard`` field types. Design index usage around that.

Contract:

- ``fetch`` resolves the pinned zip with ``mvn`` into ``<cache>/elasticsearch/<version>/zip``
  and unpacks it once into a *distribution directory* (file modes restored: Python's
  ``zipfile`` drops them). ``prepare`` writes the node's config and creates its directories;
  both are idempotent, and data survives ``down``/``up`` and ``kill``/``up``.
- Elasticsearch refuses to run as root. When we are root, the node runs as the unprivileged
  system user :data:`SERVICE_USER` (created with ``useradd --system`` when missing), which
  must be able to *traverse* every directory it reads or writes. ``/root`` is mode 0700, so:

  * the distribution is unpacked under the cache when that user can reach the cache, else
    under ``/var/lib/walstream/dist/`` (root-owned, world-readable, shared by all stacks);
  * the node's own directory ``<state>/elasticsearch/es`` (``config``, ``data``, ``logs``,
    ``tmp``, owned by that user) is a real directory when the user can reach the state
    directory, else a symlink to ``/var/lib/walstream/state/<hash of the state dir>/`` (that
    directory holds an ``origin`` file naming the state dir it belongs to).

  The pid file and ``service.log`` stay in ``<state>/elasticsearch`` (written by root).
- ``healthy`` asks ``GET /_cluster/health?wait_for_status=yellow`` and never raises.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from walstream.stack.maven import Artifact, fetch
from walstream.stack.paths import StackPaths
from walstream.stack.service import LaunchSpec, Service, StackError, java17_home

#: newest 8.x integ-test distribution on Maven Central (8.19.22 does not exist there); the
#: Python client must stay on the same major (``elasticsearch>=8.15,<9``).
ES_VERSION = "8.19.21"
ES_ARTIFACT = Artifact(
    group="org.elasticsearch.distribution.integ-test-zip",
    artifact="elasticsearch",
    version=ES_VERSION,
    type="zip",
)

#: unprivileged user the node runs as when we are root
SERVICE_USER = "walstream"
#: where the node's files go when :data:`SERVICE_USER` cannot reach the cache/state dirs
RELOCATION_ROOT = Path("/var/lib/walstream")


class ElasticsearchService(Service):
    """Single-node Elasticsearch, security off, HTTP and transport on 127.0.0.1 only."""

    # Measured on 2 cores, JDK 17, 512 MiB heap: 10-18 s from spawn to a yellow cluster when
    # idle, 28-32 s while Kafka and Cassandra were starting too (load average ~7). A loaded CI
    # runner can be several times slower again, hence the wide margin.
    start_timeout_s = 180.0

    def __init__(
        self,
        paths: StackPaths,
        name: str = "elasticsearch",
        http_port: int = 9200,
        transport_port: int = 9300,
        heap_mb: int = 512,
    ) -> None:
        super().__init__(paths)
        self.name = name
        self.http_port = http_port
        self.transport_port = transport_port
        self.heap_mb = heap_mb

    # ------------------------------------------------------------------ layout

    @property
    def _drop_privileges(self) -> bool:
        return os.geteuid() == 0

    @property
    def _zip_dir(self) -> Path:
        return self.paths.cache / "elasticsearch" / ES_VERSION / "zip"

    @property
    def dist_dir(self) -> Path:
        """The unpacked distribution (``bin/elasticsearch`` lives here)."""
        cached = self.paths.cache / "elasticsearch" / ES_VERSION / "dist"
        if self._drop_privileges and not _traversable_by(cached, SERVICE_USER):
            return RELOCATION_ROOT / "dist" / f"elasticsearch-{ES_VERSION}"
        return cached

    @property
    def node_link(self) -> Path:
        """``<state>/<name>/es``: the node's config/data/logs (maybe a symlink, see module doc)."""
        return self.home / "es"

    @property
    def node_dir(self) -> Path:
        """Where the node's files really are (what Elasticsearch is told)."""
        if self.node_link.is_symlink():
            return Path(os.readlink(self.node_link))
        if self.node_link.exists():
            return self.node_link
        if self._drop_privileges and not _traversable_by(self.home, SERVICE_USER):
            key = hashlib.sha256(str(self.home.resolve()).encode()).hexdigest()[:16]
            return RELOCATION_ROOT / "state" / key
        return self.node_link

    @property
    def data_dir(self) -> Path:
        return self.node_dir / "data"

    def wipe(self) -> None:
        """Delete the node's data and config, also when relocated (call only when stopped).

        ``rm -rf <state>`` alone would leave a relocated node directory behind under
        :data:`RELOCATION_ROOT`.
        """
        node = self.node_dir
        if self.node_link.is_symlink():
            self.node_link.unlink()
        shutil.rmtree(node, ignore_errors=True)

    # --------------------------------------------------------------- lifecycle

    def fetch(self) -> None:
        """Resolve the zip with ``mvn`` and unpack it (both once per version)."""
        if self._drop_privileges:
            _ensure_user(SERVICE_USER, RELOCATION_ROOT)
        zip_dir = fetch([ES_ARTIFACT], self._zip_dir, transitive=False)
        zips = sorted(zip_dir.glob("*.zip"))
        if len(zips) != 1:
            raise StackError(f"expected one Elasticsearch zip in {zip_dir}, found {zips}")
        _unpack_once(zips[0], self.dist_dir)

    def prepare(self) -> None:
        """Write ``elasticsearch.yml`` and the node's directories (idempotent, keeps data)."""
        node = self.node_dir
        if self._drop_privileges and not _traversable_by(node, SERVICE_USER):
            raise StackError(
                f"{self.node_link} resolves to {node}, which user {SERVICE_USER!r} cannot "
                "reach; move the stack's state dir or remove that directory"
            )
        if node != self.node_link:
            _mkdirs_searchable(node.parent)
            node.mkdir(exist_ok=True)
            (node / "origin").write_text(f"{self.home.resolve()}\n")
            if not self.node_link.is_symlink():
                self.node_link.symlink_to(node)
        for sub in ("config", "config/jvm.options.d", "data", "logs", "tmp"):
            (node / sub).mkdir(parents=True, exist_ok=True)
        conf = node / "config"
        # jvm.options must match the distribution's version, so it is refreshed every time;
        # the heap comes from ES_JAVA_OPTS, which the launcher applies after this file.
        for f in ("jvm.options", "log4j2.properties"):
            shutil.copyfile(self.dist_dir / "config" / f, conf / f)
        (conf / "elasticsearch.yml").write_text(self._settings_yaml())
        if self._drop_privileges:
            _chown_tree(node, SERVICE_USER)

    def _settings_yaml(self) -> str:
        node = self.node_dir
        settings: dict[str, str | int | bool] = {
            "cluster.name": f"walstream-{self.name}",
            "node.name": self.name,
            # single-node also skips the production bootstrap checks (vm.max_map_count...)
            "discovery.type": "single-node",
            "network.host": "127.0.0.1",
            "http.port": self.http_port,
            "transport.port": self.transport_port,
            "path.data": str(node / "data"),
            "path.logs": str(node / "logs"),
            "xpack.security.enabled": False,
            # a dev machine's disk is often >90% full; ES would then refuse to allocate shards
            "cluster.routing.allocation.disk.threshold_enabled": False,
            # a test stack should let tests drop ``walstream-*`` indices with a wildcard
            "action.destructive_requires_name": False,
            # the default 1,000 shards per node filled up with a day of test runs' indices on
            # one machine (each test makes its own), and index creation was refused
            "cluster.max_shards_per_node": 20_000,
        }
        # JSON scalars are valid YAML and quote paths safely
        return "".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items())

    def launch_spec(self) -> LaunchSpec:
        node = self.node_dir
        env = {
            "ES_JAVA_HOME": str(java17_home()),
            "ES_JAVA_OPTS": f"-Xms{self.heap_mb}m -Xmx{self.heap_mb}m",
            "ES_PATH_CONF": str(node / "config"),
            # else the launcher makes a fresh /tmp/elasticsearch-* dir per start
            "ES_TMPDIR": str(node / "tmp"),
        }
        return LaunchSpec(
            argv=[str(self.dist_dir / "bin" / "elasticsearch")],
            env=env,
            # the JVM writes gc.log and hs_err files relative to its working directory
            cwd=node / "logs",
            user=SERVICE_USER if self._drop_privileges else None,
        )

    def healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.http_port}/_cluster/health?wait_for_status=yellow&timeout=1s"
        try:
            # no ProxyHandler from the environment: a loopback probe must never go to a proxy
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(url, timeout=3.0) as resp:
                body = json.load(resp)
                ok: bool = (
                    resp.status == 200 and not body.get("timed_out", True) and body.get("status") in ("green", "yellow")
                )
                return ok
        except Exception:  # the contract: a probe never raises
            return False

    def endpoints(self) -> dict[str, str]:
        return {"http": f"http://127.0.0.1:{self.http_port}"}


# ------------------------------------------------------------------- helpers


def _traversable_by(path: Path, user: str) -> bool:
    """Can ``user`` search every existing directory from ``/`` down to ``path``?

    Judged from mode bits (ACLs are ignored); directories that do not exist yet will be
    created by us with the usual 0755.
    """
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return False
    groups = set(os.getgrouplist(user, pw.pw_gid))
    p = Path(os.path.abspath(path))
    for d in (p, *p.parents):
        try:
            st = d.stat()
        except FileNotFoundError:
            continue
        except OSError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            continue
        if st.st_uid == pw.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _ensure_user(user: str, home: Path) -> None:
    """Create the system user (and its same-named group) unless it exists; root only."""
    try:
        pwd.getpwnam(user)
        grp.getgrnam(user)  # setpriv is run with --regid=<user>
        return
    except KeyError:
        pass
    proc = subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            str(home),
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            "walstream local stack services",
            user,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        # a concurrent `up` may have created it first: that is fine
        pwd.getpwnam(user)
        grp.getgrnam(user)
    except KeyError:
        raise StackError(
            f"could not create system user {user!r} (Elasticsearch refuses to run as "
            f"root): {proc.stderr.strip() or proc.stdout.strip()}"
        ) from None


def _unpack_once(zip_path: Path, dest: Path) -> None:
    """Unpack ``zip_path``'s single top directory as ``dest`` (atomic, marker-guarded).

    Files get 0755 when the archive marks them executable, else 0644; directories 0755.
    The distribution is thus readable by the service user but writable by root only.
    """
    marker = dest / ".walstream-unpacked"
    if marker.exists():
        return
    if dest.exists():
        shutil.rmtree(dest)
    _mkdirs_searchable(dest.parent)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    try:
        with zipfile.ZipFile(zip_path) as zf:
            tops = {n.split("/", 1)[0] for n in zf.namelist()}
            if len(tops) != 1:
                raise StackError(f"{zip_path}: expected one top-level directory, got {tops}")
            for info in zf.infolist():
                target = Path(zf.extract(info, tmp))
                mode = info.external_attr >> 16
                if info.is_dir():
                    target.chmod(0o755)
                else:
                    target.chmod(0o755 if mode & 0o111 else 0o644)
        (tmp / tops.pop()).rename(dest)
        dest.chmod(0o755)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    marker.write_text(f"{zip_path.name}\n")


def _mkdirs_searchable(path: Path) -> None:
    """``mkdir -p`` whose new directories are 0755 whatever the umask.

    A umask of 077 (common on CI runners) would otherwise hide them from the service user.
    """
    missing = [d for d in (path, *path.parents) if not d.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for d in missing:
        d.chmod(0o755)


def _chown_tree(root: Path, user: str) -> None:
    """Give ``root`` and everything below it to ``user`` (only entries not already theirs)."""
    pw = pwd.getpwnam(user)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (".", *dirnames, *filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if st.st_uid != pw.pw_uid or st.st_gid != pw.pw_gid:
                os.lchown(p, pw.pw_uid, pw.pw_gid)
