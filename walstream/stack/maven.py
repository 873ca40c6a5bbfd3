"""Fetch pinned release artifacts (and their dependencies) from Maven Central with ``mvn``.

Artifacts are resolved by a throw-away POM and copied into a cache directory; a marker
file written last makes the fetch idempotent and safe to interrupt (a half-finished
fetch has no marker and is redone).
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape


class MavenError(RuntimeError):
    """``mvn`` failed to resolve an artifact."""


@dataclass(frozen=True)
class Artifact:
    group: str
    artifact: str
    version: str
    type: str = "jar"
    classifier: str | None = None
    #: ``groupId:artifactId`` pairs not to bring in transitively
    exclusions: tuple[str, ...] = ()

    def dependency_xml(self) -> str:
        parts = [
            f"<groupId>{escape(self.group)}</groupId>",
            f"<artifactId>{escape(self.artifact)}</artifactId>",
            f"<version>{escape(self.version)}</version>",
        ]
        if self.type != "jar":
            parts.append(f"<type>{escape(self.type)}</type>")
        if self.classifier:
            parts.append(f"<classifier>{escape(self.classifier)}</classifier>")
        if self.exclusions:
            ex = "".join(
                f"<exclusion><groupId>{escape(g)}</groupId><artifactId>{escape(a)}</artifactId></exclusion>"
                for g, a in (e.split(":", 1) for e in self.exclusions)
            )
            parts.append(f"<exclusions>{ex}</exclusions>")
        return "<dependency>" + "".join(parts) + "</dependency>"


def _pom(artifacts: list[Artifact]) -> str:
    deps = "\n".join(a.dependency_xml() for a in artifacts)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>walstream.stack</groupId>
  <artifactId>fetch</artifactId>
  <version>0</version>
  <packaging>pom</packaging>
  <dependencies>
{deps}
  </dependencies>
</project>
"""


def fetch(artifacts: list[Artifact], dest: Path, *, transitive: bool = True) -> Path:
    """Copy ``artifacts`` (with their runtime dependencies when ``transitive``) into ``dest``.

    Returns ``dest``. Does nothing when ``dest`` already holds a completed fetch of the same
    artifact list.
    """
    marker = dest / ".fetched"
    wanted = "\n".join(a.dependency_xml() for a in artifacts)
    if marker.exists() and marker.read_text() == wanted:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    # two services sharing one artifact set (kafka, kafka-west) may fetch at once
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and marker.read_text() == wanted:
            return dest
        return _fetch_locked(artifacts, dest, marker, wanted, transitive)


def _fetch_locked(artifacts: list[Artifact], dest: Path, marker: Path, wanted: str, transitive: bool) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp_dest = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    tmp_dest.chmod(0o755)  # mkdtemp makes it 0700; services may read it as another user
    with tempfile.TemporaryDirectory(prefix="walstream-mvn-") as work:
        pom = Path(work) / "pom.xml"
        pom.write_text(_pom(artifacts))
        cmd = [
            "mvn", "-B", "-q", "-f", str(pom),
            "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies",
            f"-DoutputDirectory={tmp_dest}",
            "-DincludeScope=runtime",
            f"-DexcludeTransitive={'false' if transitive else 'true'}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            shutil.rmtree(tmp_dest, ignore_errors=True)
            raise MavenError(
                f"mvn could not fetch {', '.join(f'{a.group}:{a.artifact}:{a.version}' for a in artifacts)}:\n"
                + (proc.stdout + proc.stderr)[-4000:]
            )
    tmp_dest.rename(dest)
    marker.write_text(wanted)
    return dest
