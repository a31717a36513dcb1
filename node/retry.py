"""Retry schedules: pure functions, shared by the job queue and dispatch."""

from __future__ import annotations

import math

from node.config import RetrySettings


def retry_delay(attempt: int, settings: RetrySettings) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): exponential, capped.

    attempt 1 → initial_s, 2 → initial_s·factor, … never more than max_s.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be 1 or more, got {attempt}")
    exponent = attempt - 1
    # compare in log space first: factor**exponent overflows a float on long outages
    if settings.factor > 1 and exponent * math.log(settings.factor) >= math.log(settings.max_s / settings.initial_s):
        return float(settings.max_s)
    return float(min(settings.max_s, settings.initial_s * settings.factor**exponent))
