"""Backoff from a :class:`~walstream.namespaces.model.RetryPolicy` (retry policy is data)."""

from __future__ import annotations

import random

from walstream.namespaces.model import RetryPolicy


def backoff_ms(policy: RetryPolicy, attempt: int, rng: random.Random | None = None) -> int:
    """Delay before retry number ``attempt`` (1 = after the first failure).

    ``initial_delay_ms * multiplier**(attempt-1)``, capped at ``max_delay_ms``, then spread
    uniformly by ``±jitter`` so that many failing entries do not retry in lock-step.
    """
    try:
        base = policy.initial_delay_ms * policy.multiplier ** max(0, attempt - 1)
    except OverflowError:  # multiplier 100 overflows a float from attempt ~156: far past the cap
        base = float(policy.max_delay_ms)
    base = min(base, float(policy.max_delay_ms))
    if policy.jitter:
        r = (rng or random).uniform(-policy.jitter, policy.jitter)
        base *= 1.0 + r
    return max(0, int(base))
