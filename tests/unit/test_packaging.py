"""How walstream installs: its tables and agents under walstream's name only, and use-case
agents found in the agents/ folder and through entry points."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from walstream import plugins

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_the_wheel_installs_nothing_top_level_but_walstream(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True, timeout=280,
    )
    [wheel] = tmp_path.glob("walstream-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"walstream"}
    # the folders are in, under walstream's name (PyTables is ``tables``)
    assert "walstream/tables/schedule.py" in names
    assert "walstream/agents/delivery.py" in names
    # the operator's pages' templates, which are not Python files
    assert "walstream/web/pages/templates/overview.html" in names
    # and walstream new-agent's
    assert {"walstream/scaffold/agent.py.tmpl", "walstream/scaffold/test_agent.py.tmpl"} <= set(names)


def test_the_agents_folder_is_discovered() -> None:
    assert "walstream.agents.delivery" in plugins.agent_modules()


def _install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, module_text: str) -> None:
    """A distribution ``acme-audit`` on sys.path, listing ``value`` in walstream's group."""
    (tmp_path / "acme_audit_agent.py").write_text(module_text)
    info = tmp_path / "acme_audit-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-audit\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{plugins.ENTRY_POINT_GROUP}]\naudit = {value}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "agent_modules", lambda: [])  # only the plugin's agent
    monkeypatch.delitem(sys.modules, "acme_audit_agent", raising=False)


AGENT = "SEEN = []\ndef register(ctx):\n    SEEN.append(ctx)\n"


@pytest.mark.parametrize("value", ["acme_audit_agent", "acme_audit_agent:register"])
def test_an_installed_entry_point_agent_is_registered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    _install_plugin(tmp_path, monkeypatch, value, AGENT)
    ctx: Any = object()
    assert plugins.register_agents(ctx) == [f"entry point audit ({value})"]
    import acme_audit_agent  # type: ignore[import-not-found]

    assert acme_audit_agent.SEEN == [ctx]


def test_an_entry_point_that_is_not_an_agent_stops_the_worker_with_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install_plugin(tmp_path, monkeypatch, "acme_audit_agent", "X = 1\n")
    with pytest.raises(plugins.AgentLoadError, match=r"entry point 'audit' .*register"):
        plugins.register_agents(object())  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["acme_audit_agent", "acme_audit_agent:register"])
def test_an_agent_in_the_folder_and_listed_as_an_entry_point_is_registered_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    _install_plugin(tmp_path, monkeypatch, value, AGENT)
    # the same module found in the folder too (a plugin that lists walstream's own agent)
    monkeypatch.setattr(plugins, "agent_modules", lambda: ["acme_audit_agent"])
    ctx: Any = object()
    assert plugins.register_agents(ctx) == ["acme_audit_agent"]
    import acme_audit_agent  # type: ignore[import-not-found]

    assert acme_audit_agent.SEEN == [ctx]
