"""The deployment files (deploy/): valid for their tools, and true to the code they deploy.

Schemas: the Kubernetes manifests against Kubernetes' own (kubernetes-validate, strict: an
unknown field fails), docker-compose.yml against the Compose specification's (check-jsonschema's
copy). Cross-checks that no schema makes: every ``WALSTREAM_*`` variable is a setting the worker
reads (pydantic-settings ignores unknown ones silently), probe paths are routes of the worker,
ports match, the images of the services are the versions ``walstream stack`` runs, the image
runs as a non-root user, and what the image installs (pyproject's dependencies) covers every
module walstream imports.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement

from walstream.settings import Settings
from walstream.stack.cassandra import CASSANDRA_VERSION
from walstream.stack.elasticsearch import ES_VERSION
from walstream.stack.kafka import KAFKA_VERSION
from walstream.web.views import OPERATIONS

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
SETTINGS = {f"WALSTREAM_{name.upper()}" for name in Settings.model_fields}
PORT = Settings.model_fields["web_port"].default


def k8s_docs() -> list[dict[str, Any]]:
    return [d for p in MANIFESTS for d in yaml.safe_load_all(p.read_text()) if d]


def containers() -> list[dict[str, Any]]:
    return [c for d in k8s_docs() if d["kind"] == "StatefulSet" for c in d["spec"]["template"]["spec"]["containers"]]


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def test_kubernetes_manifests_follow_the_kubernetes_schema() -> None:
    assert MANIFESTS
    kinds = set()
    for doc in k8s_docs():
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
        kinds.add(doc["kind"])
    assert {"StatefulSet", "Service", "PodDisruptionBudget", "ConfigMap"} <= kinds


def test_a_kubernetes_schema_error_is_caught() -> None:
    # the check above is only worth something if a wrong field fails it
    [sts] = [d for d in k8s_docs() if d["kind"] == "StatefulSet"]
    sts["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, kubernetes_validate.latest_version(), strict=True)


def test_compose_file_follows_the_compose_specification(tmp_path: Path) -> None:
    check = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
    ok = subprocess.run([*check, str(COMPOSE)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = tmp_path / "compose.yml"
    broken.write_text(COMPOSE.read_text().replace("stop_grace_period:", "stop_grace_periods:"))
    assert subprocess.run([*check, str(broken)], capture_output=True, timeout=60).returncode != 0


def _env_names() -> dict[str, set[str]]:
    """Where each ``WALSTREAM_*`` name is set, by file."""
    found: dict[str, set[str]] = {}
    for doc in k8s_docs():
        if doc["kind"] == "ConfigMap":
            found.setdefault("k8s", set()).update(doc["data"])
    for c in containers():
        found.setdefault("k8s", set()).update(e["name"] for e in c.get("env", []))
    text = COMPOSE.read_text()
    found["compose"] = set(re.findall(r"\b(WALSTREAM_[A-Z_]+):", text))
    found["Dockerfile"] = set(re.findall(r"\b(WALSTREAM_[A-Z_]+)=", DOCKERFILE.read_text()))
    return {where: {n for n in names if n.startswith("WALSTREAM_")} for where, names in found.items()}


def test_every_variable_set_is_a_setting_the_worker_reads() -> None:
    names = _env_names()
    assert all(names.values()), names
    for where, found in names.items():
        assert found <= SETTINGS, f"{where} sets {sorted(found - SETTINGS)}, which no setting reads"


def test_workers_listen_on_all_addresses_and_advertise_a_name_peers_resolve() -> None:
    [c] = containers()
    env = {e["name"]: e.get("value") for e in c["env"]}
    [config] = [d for d in k8s_docs() if d["kind"] == "ConfigMap"]
    assert config["data"]["WALSTREAM_WEB_BIND"] == "0.0.0.0"
    [headless] = [d for d in k8s_docs() if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None"]
    assert env["WALSTREAM_WEB_HOST"] == f"$(POD_NAME).{headless['metadata']['name']}.$(POD_NAMESPACE).svc"
    workers = {n: s for n, s in compose()["services"].items() if n.startswith("worker-")}
    assert len(workers) == 3
    for name, service in workers.items():
        assert service["environment"]["WALSTREAM_WEB_HOST"] == name
        assert service["environment"]["WALSTREAM_WEB_BIND"] == "0.0.0.0"


def test_probes_ask_routes_the_worker_serves_on_its_port() -> None:
    routes = {op.path for op in OPERATIONS if op.method == "get"}
    [c] = containers()
    assert [p["containerPort"] for p in c["ports"]] == [PORT]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] in routes, probe
    assert c["readinessProbe"]["httpGet"]["path"] == "/v1/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v1/health/live"
    assert f"127.0.0.1:{PORT}/v1/health/live" in DOCKERFILE.read_text()


def test_services_run_the_versions_the_stack_runs() -> None:
    images = {name: s["image"] for name, s in compose()["services"].items() if "build" not in s}
    assert images == {
        "kafka": f"apache/kafka:{KAFKA_VERSION}",
        "cassandra": f"cassandra:{CASSANDRA_VERSION}",
        "elasticsearch": f"elasticsearch:{ES_VERSION}",
    }


def test_the_image_is_multi_stage_and_runs_the_worker_as_a_non_root_user() -> None:
    parser = DockerfileParser(str(DOCKERFILE))
    steps = parser.structure
    stages = [i for i, s in enumerate(steps) if s["instruction"] == "FROM"]
    assert len(stages) >= 2
    final = steps[stages[-1]:]
    users = [s["value"] for s in final if s["instruction"] == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), users
    assert any(s["instruction"] == "COPY" and s["value"].startswith("--from=") for s in final)
    [entry] = [s["value"] for s in final if s["instruction"] == "ENTRYPOINT"]
    [cmd] = [s["value"] for s in final if s["instruction"] == "CMD"]
    assert (entry, cmd) == ('["walstream"]', '["worker"]')
    [sts] = [d for d in k8s_docs() if d["kind"] == "StatefulSet"]
    assert sts["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(users[-1].split(":")[0])


def _dependency_closure(names: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = requires(name) or []
        except PackageNotFoundError:
            continue
        for line in reqs:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def test_the_runtime_dependencies_cover_every_import() -> None:
    # the image installs pyproject's dependencies only (not requirements.lock's test tools)
    pyproject = (ROOT / "pyproject.toml").read_text()
    declared = re.findall(r'^\s+"([A-Za-z0-9_.-]+)==', pyproject.split("dependencies = [", 1)[1].split("]", 1)[0], re.M)
    closure = _dependency_closure(declared)
    dists = packages_distributions()
    missing: dict[str, str] = {}
    for path in [*ROOT.joinpath("walstream").rglob("*.py"), *ROOT.joinpath("agents").rglob("*.py"),
                 *ROOT.joinpath("tables").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if top in sys.stdlib_module_names or top == "walstream":
                    continue
                owners = {d.lower().replace("_", "-") for d in dists.get(top, [])}
                if not owners & closure:
                    missing[top] = str(path.relative_to(ROOT))
    assert not missing, f"imported but not installed by pyproject's dependencies: {missing}"


def test_web_bind_is_where_the_worker_listens_and_web_host_what_peers_are_told() -> None:
    from walstream.app import WalApp

    wal = WalApp(Settings(web_host="worker-1.walstream-workers.prod.svc", web_bind="0.0.0.0", store="memory://"))
    assert wal.faust.conf.web_bind == "0.0.0.0"
    assert str(wal.faust.conf.canonical_url) == "http://worker-1.walstream-workers.prod.svc:6066"
    alone = WalApp(Settings(web_host="10.1.2.3", store="memory://"))
    assert alone.faust.conf.web_bind == "10.1.2.3"
