"""``walstream new-agent NAME`` (walstream.scaffold): the agent and test it writes pass their
own test, on both table stores, in a directory of their own, and are lint-clean; names and
places it cannot use are one-line errors that write nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_cli import one_line_error, run

pytestmark = pytest.mark.timeout(120)

def test_a_new_agent_passes_its_own_test(tmp_path: Path) -> None:
    result = run(["new-agent", "audit_trail", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit_trail.py", "test_audit_trail.py"]
    assert f"pytest {tmp_path / 'test_audit_trail.py'}" in result.stdout
    # its test, run as its author would: pytest in the agent's own directory
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         "test_audit_trail.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=100,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "3 passed" in tests.stdout
    # as in the author's own package, where walstream is a third-party import
    lint = subprocess.run([sys.executable, "-m", "ruff", "check", "--isolated", "--select", "E,F,W,I,B,UP",
                           "--line-length", "120", "."], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout


def test_its_test_fails_when_the_agent_applies_a_record_twice(tmp_path: Path) -> None:
    """The generated test guards the agent: without the offset check it fails."""
    assert run(["new-agent", "twice", "--dir", str(tmp_path)]).exit_code == 0
    module = tmp_path / "twice.py"
    source = module.read_text()
    guard = 'if message.offset <= row.get("offset", -1):'
    assert guard in source
    module.write_text(source.replace(guard, "if False:"))
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
                            str(tmp_path), "test_twice.py"], cwd=tmp_path, capture_output=True, text=True, timeout=100)
    assert tests.returncode == 1 and "1 failed" in tests.stdout, tests.stdout


@pytest.mark.parametrize(
    ("name", "problem"),
    [("Audit", "not an agent name"), ("class", "not an agent name"), ("a-b", "not an agent name"),
     ("x" * 41, "not an agent name")],
)
def test_a_name_that_is_no_module_name_is_refused(tmp_path: Path, name: str, problem: str) -> None:
    line = one_line_error(run(["new-agent", name, "--dir", str(tmp_path)]))
    assert problem in line and "e.g. audit_trail" in line
    assert list(tmp_path.iterdir()) == []


def test_nothing_is_overwritten_and_a_missing_directory_is_named(tmp_path: Path) -> None:
    (tmp_path / "test_audit.py").write_text("mine\n")
    line = one_line_error(run(["new-agent", "audit", "--dir", str(tmp_path)]))
    assert "test_audit.py exists already" in line
    assert (tmp_path / "test_audit.py").read_text() == "mine\n" and not (tmp_path / "audit.py").exists()
    line = one_line_error(run(["new-agent", "audit", "--dir", str(tmp_path / "nowhere")]))
    assert "is not a directory" in line


@pytest.mark.parametrize("name", ["os", "json", "asyncio", "faust", "walstream", "orjson"])
def test_a_name_that_would_shadow_a_module_is_refused(tmp_path: Path, name: str) -> None:
    line = one_line_error(run(["new-agent", name, "--dir", str(tmp_path)]))
    assert "would shadow it" in line and f"{name}_agent" in line
    assert list(tmp_path.iterdir()) == []
