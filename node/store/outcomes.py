"""The `job_outcomes` table: what each job concluded, for the dashboard (node.outcomes)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from node.store.sql import Sql


@dataclass(frozen=True)
class OutcomeRow:
    job_id: int
    findings: str  # JSON, '' when the pipeline gave none
    timings: str  # JSON
    recorded_at: float


def record(sql: Sql, job_id: int, findings: str, timings: str, now: float) -> None:
    """Keep the latest attempt's (a retry replaces the row)."""
    sql.execute(
        """INSERT INTO job_outcomes (job_id, findings, timings, recorded_at) VALUES (?, ?, ?, ?)
        ON CONFLICT (job_id) DO UPDATE SET findings = excluded.findings, timings = excluded.timings,
        recorded_at = excluded.recorded_at""",
        (job_id, findings, timings, now),
    )


def of_jobs(sql: Sql, job_ids: Sequence[int]) -> list[OutcomeRow]:
    if not job_ids:
        return []
    rows = sql.query(
        f"SELECT * FROM job_outcomes WHERE job_id IN ({sql.dialect.params(len(job_ids))})", tuple(job_ids)
    )
    return [OutcomeRow(r["job_id"], r["findings"], r["timings"] or "{}", r["recorded_at"]) for r in rows]
