"""Where the local stack keeps downloaded artifacts (cache) and service data (state)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StackPaths:
    """Directories of the local stack.

    ``cache`` holds fetched release artifacts, shared by every checkout
    (``$WALSTREAM_CACHE_DIR``, default ``$XDG_CACHE_HOME/walstream`` or ``~/.cache/walstream``).
    ``state`` holds each service's config, data, log and pid file
    (``$WALSTREAM_STACK_DIR``, default ``~/.local/state/walstream/stack``).
    """

    cache: Path
    state: Path

    @classmethod
    def from_env(cls) -> StackPaths:
        xdg_cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        cache = os.environ.get("WALSTREAM_CACHE_DIR") or str(Path(xdg_cache) / "walstream")
        state = os.environ.get("WALSTREAM_STACK_DIR") or str(
            Path.home() / ".local" / "state" / "walstream" / "stack"
        )
        return cls(cache=Path(cache), state=Path(state))
