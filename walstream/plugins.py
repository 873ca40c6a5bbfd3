"""Discovery of use-case agents: every module of the top-level ``agents`` package that
defines ``register(wal: WalApp) -> None`` is registered with the worker.

A new use case is a new module in ``agents/``; nothing else changes.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from walstream.app import WalApp


def agent_modules() -> list[str]:
    import agents

    return sorted(
        f"agents.{m.name}" for m in pkgutil.iter_modules(agents.__path__) if not m.name.startswith("_")
    )


def register_agents(wal: WalApp) -> list[str]:
    """Import every agent module and call its ``register``; returns the modules registered."""
    registered = []
    for name in agent_modules():
        module = importlib.import_module(name)
        register = getattr(module, "register", None)
        if callable(register):
            register(wal)
            registered.append(name)
    return registered
