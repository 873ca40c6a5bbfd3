"""The shape of the code: one composition root, no import circle.

Every import of walstream's own modules counts, at module level, under ``if
TYPE_CHECKING:`` and inside functions alike: each is a dependency of one module on another.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: folder → the package it is installed as (tables/ and agents/ are walstream.tables and
#: walstream.agents, through symlinks in walstream/)
PACKAGES = {"walstream": "walstream", "tables": "walstream.tables", "agents": "walstream.agents"}
#: the composition root, and the command line that starts it
MAY_IMPORT_THE_ROOT = {"walstream.cli", "walstream.demo"}

pytestmark = pytest.mark.timeout(60)


def module_name(path: Path) -> str:
    folder, *parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGES[folder], *parts])


def own_modules() -> dict[str, Path]:
    found = {}
    for folder in PACKAGES:
        for p in (ROOT / folder).rglob("*.py"):
            # walstream/tables and walstream/agents are the symlinks: each file counts once, from its folder
            if not any((ROOT / d).is_symlink() for d in p.relative_to(ROOT).parents):
                found[module_name(p)] = p
    return found


def imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The own modules ``path`` imports (``from a.b import c`` counts ``a.b.c`` when that is a
    module, else ``a.b``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        else:
            continue
        found.update(n for n in names if n in modules)
    return found


def graph() -> dict[str, set[str]]:
    modules = own_modules()
    return {name: imports(path, modules) - {name} for name, path in modules.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_the_worker_but_the_command_line() -> None:
    g = graph()
    importers = sorted(m for m, deps in g.items() if "walstream.app" in deps)
    assert set(importers) <= MAY_IMPORT_THE_ROOT, (
        f"{importers} import walstream.app: views and agents get walstream.context, not the worker"
    )


def test_there_is_no_import_circle() -> None:
    assert cycles(graph()) == []


def test_the_checker_sees_a_circle_and_an_import_of_the_root() -> None:
    # the checks above would pass on an empty graph: they must see what they look for
    g = graph()
    assert "walstream.context" in g["walstream.app"]
    assert cycles({**g, "walstream.fleet": g["walstream.fleet"] | {"walstream.app"}}) != []


def test_nothing_imports_the_folders_as_top_level_packages() -> None:
    # installed, tables/ and agents/ exist only as walstream.tables and walstream.agents; in a
    # checkout a top-level ``import tables`` would still work, loading every table twice
    wrong = []
    for folder in ("walstream", "tables", "agents", "tests", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
                )
                wrong += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in ("tables", "agents")]
    assert wrong == []
