"""Which destinations are in trouble: results waiting long, retried often, or given up.

A destination that can never succeed (a folder the node cannot write, a peer that refuses us)
retries with backoff forever while its jobs show "done". This is the one place that says so, read
by the dashboard and the API (`GET /api/v1/destinations`), `fracnode status` and `/metrics`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from node.store import Database, outbox

# a pending result that failed this many attempts, or waited this long, is trouble even when
# the last attempt was recent; one failed attempt alone may be a peer's restart
TROUBLE_ATTEMPTS = 3
TROUBLE_AGE_S = 600.0


@dataclass(frozen=True)
class DestinationHealth:
    name: str
    pending: int  # results waiting for delivery
    delivered: int
    failed: int  # given up: retrying cannot help (configuration); an operator must act
    oldest_pending_at: float | None  # when the oldest waiting result was staged
    attempts: int  # the most delivery attempts of a waiting result
    last_error: str  # of the most recent failed attempt
    last_delivered_at: float | None
    next_attempt_at: float | None

    def oldest_pending_age_s(self, now: float) -> float:
        return max(0.0, now - self.oldest_pending_at) if self.oldest_pending_at is not None else 0.0

    def in_trouble(self, now: float) -> bool:
        waiting = self.pending > 0 and (
            self.attempts >= TROUBLE_ATTEMPTS
            or (self.attempts > 0 and self.oldest_pending_age_s(now) >= TROUBLE_AGE_S)
        )
        return self.failed > 0 or waiting

    def trouble(self, now: float) -> str:
        """One line for an operator, or "" when the destination is fine."""
        if not self.in_trouble(now):
            return ""
        parts = []
        if self.pending:
            parts.append(
                f"{self.pending} result(s) undelivered, the oldest for {age(self.oldest_pending_age_s(now))},"
                f" after up to {self.attempts} attempt(s)"
            )
        if self.failed:
            parts.append(f"{self.failed} given up (fix the destination, then retry its jobs)")
        error = f": {self.last_error}" if self.last_error else ""
        return "; ".join(parts) + error


def age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def destination_health(db: Database, names: Iterable[str]) -> list[DestinationHealth]:
    """One record per destination in `names` (configured order), then any other the outbox holds."""
    counts = {c.destination: c for c in outbox.per_destination(db)}
    found = []
    for name in dict.fromkeys((*names, *counts)):
        c = counts.get(name)
        if c is None:
            found.append(DestinationHealth(name, 0, 0, 0, None, 0, "", None, None))
            continue
        found.append(DestinationHealth(
            name=name, pending=c.pending, delivered=c.delivered, failed=c.failed,
            oldest_pending_at=c.oldest_pending_at, attempts=c.attempts, last_error=c.last_error,
            last_delivered_at=c.last_delivered_at, next_attempt_at=c.next_attempt_at,
        ))
    return found
