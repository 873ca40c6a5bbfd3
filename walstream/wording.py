"""Small helpers for the sentences walstream answers and prints."""

from __future__ import annotations


def counted(n: int, singular: str, plural: str | None = None) -> str:
    """``n`` with the noun in the right number: ``1 pending entry``, ``2 pending entries``
    (``plural`` defaults to ``singular`` + "s")."""
    return f"{n} {singular if n == 1 else (plural or singular + 's')}"
