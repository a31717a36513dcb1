"""Retry schedule: exponential backoff from initial_s by factor, capped at max_s."""

from __future__ import annotations

import math

import pytest

from node.config import RetrySettings
from node.retry import retry_delay

DEFAULT = RetrySettings(initial_s=2.0, factor=2.0, max_s=300.0)
JOBS = RetrySettings(initial_s=5.0, factor=3.0, max_s=300.0)


@pytest.mark.parametrize(
    ("settings", "attempt", "expected"),
    [
        (DEFAULT, 1, 2.0),
        (DEFAULT, 2, 4.0),
        (DEFAULT, 3, 8.0),
        (DEFAULT, 8, 256.0),
        (DEFAULT, 9, 300.0),  # 512 capped
        (DEFAULT, 10, 300.0),
        (JOBS, 1, 5.0),
        (JOBS, 2, 15.0),
        (JOBS, 3, 45.0),
        (JOBS, 4, 135.0),
        (JOBS, 5, 300.0),  # 405 capped
        (RetrySettings(initial_s=1.0, factor=1.0, max_s=10.0), 50, 1.0),  # factor 1: constant
        (RetrySettings(initial_s=7.0, factor=2.0, max_s=7.0), 1, 7.0),  # max equals initial
        (RetrySettings(initial_s=0.2, factor=2.0, max_s=1.0), 3, 0.8),
        (RetrySettings(initial_s=0.2, factor=2.0, max_s=1.0), 4, 1.0),
        # growth goes on past 64 attempts when the cap is far away
        (RetrySettings(initial_s=1.0, factor=1.1, max_s=1e6), 100, 1.1**99),
    ],
)
def test_retry_delay(settings: RetrySettings, attempt: int, expected: float) -> None:
    assert retry_delay(attempt, settings) == pytest.approx(expected)


@pytest.mark.parametrize("attempt", [0, -1, -1000])
def test_attempt_below_one_is_rejected(attempt: int) -> None:
    with pytest.raises(ValueError, match="attempt must be 1 or more"):
        retry_delay(attempt, DEFAULT)


@pytest.mark.parametrize(
    "settings",
    [
        DEFAULT,
        JOBS,
        RetrySettings(initial_s=1.0, factor=1e6, max_s=3600.0),
        RetrySettings(initial_s=1e-3, factor=1.0001, max_s=1e9),
    ],
)
@pytest.mark.parametrize("attempt", [65, 1_000, 10**6, 10**18])
def test_huge_attempt_numbers_stay_capped_and_finite(settings: RetrySettings, attempt: int) -> None:
    delay = retry_delay(attempt, settings)
    assert math.isfinite(delay)
    assert delay <= settings.max_s


@pytest.mark.parametrize("settings", [DEFAULT, JOBS, RetrySettings(initial_s=0.5, factor=1.5, max_s=60.0)])
def test_delays_never_shrink_and_never_exceed_the_cap(settings: RetrySettings) -> None:
    delays = [retry_delay(attempt, settings) for attempt in range(1, 40)]
    assert delays == sorted(delays)
    assert delays[0] == settings.initial_s
    assert max(delays) == settings.max_s


def test_delay_is_a_float() -> None:
    assert isinstance(retry_delay(1, RetrySettings(initial_s=2, factor=2, max_s=10)), float)
