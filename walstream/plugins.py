"""Discovery of use-case agents, from two places:

- every module of the ``walstream.agents`` package (the repository's ``agents/`` folder) that
  defines ``register(ctx: AgentContext) -> None`` (walstream.context): a new use case is a new
  module there, nothing else changes;
- every entry point in the ``walstream.agents`` group of an installed distribution: a module
  with ``register``, or the ``register`` callable itself, e.g. in the plugin's
  ``pyproject.toml``::

      [project.entry-points."walstream.agents"]
      audit = "acme_audit.agent"          # a module defining register(ctx)

An agent found in both places, or listed twice (as a module and as its ``register``), is
registered once: what counts is the ``register`` callable itself.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from walstream.context import AgentContext

#: the entry-point group an installed package lists its agents in
ENTRY_POINT_GROUP = "walstream.agents"


class AgentLoadError(RuntimeError):
    """An agent listed as an entry point cannot be loaded or has no ``register``."""


def agent_modules() -> list[str]:
    """The modules of the ``walstream.agents`` package (``agents/``), sorted; ``_private``
    modules are skipped."""
    import walstream.agents

    return sorted(
        f"walstream.agents.{m.name}"
        for m in pkgutil.iter_modules(walstream.agents.__path__)
        if not m.name.startswith("_")
    )


def agent_entry_points() -> list[EntryPoint]:
    """The installed entry points of :data:`ENTRY_POINT_GROUP`, sorted by name."""
    return sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def _register_of(obj: Any, origin: str) -> Callable[[AgentContext], None]:
    register = getattr(obj, "register", None) if isinstance(obj, ModuleType) else obj
    if not callable(register):
        raise AgentLoadError(f"{origin}: expected a module defining register(ctx) or a callable, got {obj!r}")
    return register  # type: ignore[no-any-return]


def register_agents(ctx: AgentContext) -> list[str]:
    """Import every agent (folder, then entry points) and call its ``register``; returns
    what was registered: module names, and ``entry point NAME (VALUE)`` for entry points.
    Raises :class:`AgentLoadError` for an entry point that is not an agent (a worker must
    not start without an agent its deployment lists)."""
    registered: list[str] = []
    called: set[Callable[[AgentContext], None]] = set()
    for name in agent_modules():
        module = importlib.import_module(name)
        register = getattr(module, "register", None)
        if callable(register):
            register(ctx)
            called.add(register)
            registered.append(name)
    for ep in agent_entry_points():
        origin = f"entry point {ep.name!r} ({ep.value}) of group {ENTRY_POINT_GROUP!r}"
        try:
            obj = ep.load()
        except Exception as exc:
            raise AgentLoadError(f"{origin}: cannot be loaded: {exc}") from exc
        register = _register_of(obj, origin)
        if register in called:
            continue  # registered already: the folder's own module, or another name for it
        register(ctx)
        called.add(register)
        registered.append(f"entry point {ep.name} ({ep.value})")
    return registered
