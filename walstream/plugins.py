"""Discovery of use-case agents: every module of the top-level ``agents`` package that
defines ``register(ctx: AgentContext) -> None`` (walstream.context) is registered with the worker.

A new use case is a new module in ``agents/``; nothing else changes.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from walstream.context import AgentContext


def agent_modules() -> list[str]:
    import agents

    return sorted(
        f"agents.{m.name}" for m in pkgutil.iter_modules(agents.__path__) if not m.name.startswith("_")
    )


def register_agents(ctx: AgentContext) -> list[str]:
    """Import every agent module and call its ``register``; returns the modules registered."""
    registered = []
    for name in agent_modules():
        module = importlib.import_module(name)
        register = getattr(module, "register", None)
        if callable(register):
            register(ctx)
            registered.append(name)
    return registered
