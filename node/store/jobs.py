"""The `jobs` table: queued → running → done / failed / not_applicable / superseded.

The states and their meaning are node.jobs' (the queue); here is how they are kept.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from node.records import Job
from node.store.sql import Row, Sql

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
NOT_APPLICABLE, SUPERSEDED = "not_applicable", "superseded"
FINAL_STATES = (DONE, FAILED, NOT_APPLICABLE, SUPERSEDED)


class LeaseLost(RuntimeError):
    """The worker's lease lapsed and another worker took the job over: this worker's outcome is
    not recorded (the other's is, once)."""


def check_holds(sql: Sql, job_id: int, owner: str | None) -> None:
    """Raise LeaseLost unless `owner` (None: no check) still runs the job; see `holds`."""
    if owner is not None and not holds(sql, job_id, owner):
        raise LeaseLost(f"job {job_id}: the lease of {owner} lapsed and another worker took the job")


@dataclass(frozen=True)
class JobRow:
    """A job with all it records: the API's and `fracnode status`' view of it."""

    job: Job  # what a worker runs, with the attempts made
    state: str
    max_attempts: int
    last_error: str
    summary: str
    created_at: float
    not_before: float
    started_at: float | None
    finished_at: float | None
    superseded_by: int | None


@dataclass(frozen=True)
class ListedJob:
    row: JobRow
    first_received_at: float | None  # the study's first instance
    completed_at: float | None  # when the job's study revision completed


@dataclass(frozen=True)
class FinishedJob:
    finished_at: float
    state: str
    completed_at: float | None  # the study's latest completion


def _row(r: Row) -> JobRow:
    return JobRow(
        _job(r),
        r["state"],
        r["max_attempts"],
        r["last_error"],
        r["summary"],
        r["created_at"],
        r["not_before"],
        r["started_at"],
        r["finished_at"],
        r["superseded_by"],
    )


def _job(r: Row) -> Job:
    return Job(
        id=r["id"],
        study_instance_uid=r["study_uid"],
        revision=r["revision"],
        route=r["route"],
        pipeline=r["pipeline"],
        destinations=tuple(json.loads(r["destinations"])),
        series_uids=tuple(json.loads(r["series_uids"])),
        calling_ae=r["calling_ae"],
        attempts=r["attempts"],
    )


# -- the queue ------------------------------------------------------------------------------------


def insert(
    sql: Sql,
    study_uid: str,
    revision: int,
    route: str,
    pipeline: str,
    destinations: Sequence[str],
    series_uids: Sequence[str],
    calling_ae: str,
    max_attempts: int,
    now: float,
) -> int:
    """A queued job, due now; its id."""
    row = sql.one(
        """INSERT INTO jobs (study_uid, revision, route, pipeline, destinations, series_uids,
        calling_ae, state, max_attempts, created_at, not_before)
        VALUES (?,?,?,?,?,?,?,?,?,?,?) RETURNING id""",
        (
            study_uid,
            revision,
            route,
            pipeline,
            json.dumps(list(destinations)),
            json.dumps(list(series_uids)),
            calling_ae,
            QUEUED,
            max_attempts,
            now,
            now,
        ),
    )
    assert row is not None
    return int(row["id"])


def supersede_queued(sql: Sql, study_uid: str, route: str, revision: int, by_job: int, now: float) -> None:
    """Queued jobs of older revisions of the study and route end: `by_job` replaces them."""
    sql.execute(
        """UPDATE jobs SET state = ?, superseded_by = ?, finished_at = ?
        WHERE study_uid = ? AND route = ? AND revision < ? AND state = ?""",
        (SUPERSEDED, by_job, now, study_uid, route, revision, QUEUED),
    )


def fail_spent_leases(sql: Sql, now: float, error: str) -> None:
    """Running jobs whose lease ran out with no attempt left fail with `error`."""
    sql.execute(
        """UPDATE jobs SET state = ?, finished_at = ?, lease_owner = NULL, lease_until = NULL,
        last_error = ? WHERE state = ? AND lease_until < ? AND attempts >= max_attempts""",
        (FAILED, now, error, RUNNING, now),
    )


def next_due(sql: Sql, now: float) -> int | None:
    """The oldest due job, or one whose lease ran out."""
    row = sql.one(
        f"""SELECT id FROM jobs WHERE (state = ? AND not_before <= ?)
        OR (state = ? AND lease_until < ?) ORDER BY not_before, id LIMIT 1{sql.dialect.claim_lock}""",
        (QUEUED, now, RUNNING, now),
    )
    return int(row["id"]) if row is not None else None


def claim(sql: Sql, job_id: int, owner: str, now: float, lease_until: float) -> Job:
    row = sql.one(
        """UPDATE jobs SET state = ?, attempts = attempts + 1, started_at = ?,
        lease_owner = ?, lease_until = ? WHERE id = ? RETURNING *""",
        (RUNNING, now, owner, lease_until, job_id),
    )
    assert row is not None
    return _job(row)


def renew(sql: Sql, job_id: int, owner: str, lease_until: float) -> bool:
    """Extend the lease of a job this owner still runs; False when it lost it."""
    return (
        sql.execute(
            "UPDATE jobs SET lease_until = ? WHERE id = ? AND lease_owner = ? AND state = ?",
            (lease_until, job_id, owner, RUNNING),
        )
        == 1
    )


def mark_finished(sql: Sql, job_id: int, state: str, summary: str, now: float) -> None:
    """A job's final outcome; inside the caller's transaction when it commits more (the outbox
    stages results and marks the job done in one)."""
    sql.execute(
        """UPDATE jobs SET state = ?, summary = ?, last_error = '', finished_at = ?,
        lease_owner = NULL, lease_until = NULL WHERE id = ?""",
        (state, summary, now, job_id),
    )


def holds(sql: Sql, job_id: int, owner: str) -> bool:
    """Whether `owner` still runs the job, read under the job's row lock: a worker records an
    outcome in the same transaction, so one whose lease lapsed and was taken over records none."""
    return (
        sql.one(
            f"SELECT 1 FROM jobs WHERE id = ? AND lease_owner = ? AND state = ?{sql.dialect.row_lock}",
            (job_id, owner, RUNNING),
        )
        is not None
    )


def attempts(sql: Sql, job_id: int) -> tuple[int, int]:
    """(attempts made, attempts allowed)."""
    row = sql.one("SELECT attempts, max_attempts FROM jobs WHERE id = ?", (job_id,))
    assert row is not None, f"no job {job_id}"
    return int(row["attempts"]), int(row["max_attempts"])


def failed_attempt(sql: Sql, job_id: int, state: str, error: str, not_before: float, finished_at: float | None) -> None:
    sql.execute(
        """UPDATE jobs SET state = ?, last_error = ?, not_before = ?, finished_at = ?,
        lease_owner = NULL, lease_until = NULL WHERE id = ?""",
        (state, error, not_before, finished_at, job_id),
    )


def recover(sql: Sql, now: float, error: str, owner_prefix: str = "") -> int:
    """Jobs left running (by owners named `owner_prefix`…, or by anyone): failed when they used
    every attempt, else queued again; the number queued."""
    sql.execute(
        """UPDATE jobs SET state = ?, finished_at = ?, lease_owner = NULL,
        lease_until = NULL, last_error = ? WHERE state = ? AND attempts >= max_attempts AND lease_owner LIKE ?""",
        (FAILED, now, error, RUNNING, owner_prefix + "%"),
    )
    return sql.execute(
        """UPDATE jobs SET state = ?, not_before = ?, lease_owner = NULL, lease_until = NULL,
        last_error = CASE WHEN last_error = '' THEN ? ELSE last_error END WHERE state = ? AND lease_owner LIKE ?""",
        (QUEUED, now, error, RUNNING, owner_prefix + "%"),
    )


def running_owners(sql: Sql) -> set[str]:
    """The lease owners of the running jobs."""
    return {
        row["lease_owner"] for row in sql.query("SELECT DISTINCT lease_owner FROM jobs WHERE state = ?", (RUNNING,))
    }


def retry(sql: Sql, job_id: int, now: float) -> bool:
    """A failed job queued again with a fresh attempt budget; False when it has not failed."""
    return (
        sql.execute(
            """UPDATE jobs SET state = ?, attempts = 0, not_before = ?, finished_at = NULL
        WHERE id = ? AND state = ?""",
            (QUEUED, now, job_id, FAILED),
        )
        == 1
    )


def newer_revision(sql: Sql, study_uid: str, route: str, revision: int) -> bool:
    return (
        sql.one(
            "SELECT 1 FROM jobs WHERE study_uid = ? AND route = ? AND revision > ? LIMIT 1",
            (study_uid, route, revision),
        )
        is not None
    )


def not_before(sql: Sql, job_id: int) -> float | None:
    row = sql.one("SELECT not_before FROM jobs WHERE id = ?", (job_id,))
    return row["not_before"] if row is not None else None


# -- what the operator reads -------------------------------------------------------------------------


def state_counts(sql: Sql, study_uid: str | None = None) -> dict[str, int]:
    if study_uid is None:
        rows = sql.query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
    else:
        rows = sql.query("SELECT state, COUNT(*) AS n FROM jobs WHERE study_uid = ? GROUP BY state", (study_uid,))
    return {row["state"]: row["n"] for row in rows}


def get(sql: Sql, job_id: int) -> JobRow | None:
    row = sql.one("SELECT * FROM jobs WHERE id = ?", (job_id,))
    return _row(row) if row is not None else None


def ids_of_study(sql: Sql, study_uid: str) -> list[int]:
    """Newest first."""
    return [row["id"] for row in sql.query("SELECT id FROM jobs WHERE study_uid = ? ORDER BY id DESC", (study_uid,))]


def latest_of_study(sql: Sql, study_uid: str) -> JobRow | None:
    row = sql.one("SELECT * FROM jobs WHERE study_uid = ? ORDER BY id DESC LIMIT 1", (study_uid,))
    return _row(row) if row is not None else None


def of_revision(sql: Sql, study_uid: str, revision: int) -> list[JobRow]:
    rows = sql.query("SELECT * FROM jobs WHERE study_uid = ? AND revision = ? ORDER BY id", (study_uid, revision))
    return [_row(r) for r in rows]


def created_since(sql: Sql, study_uid: str, since: float) -> list[JobRow]:
    rows = sql.query("SELECT * FROM jobs WHERE study_uid = ? AND created_at >= ? ORDER BY id", (study_uid, since))
    return [_row(r) for r in rows]


def recent(sql: Sql, limit: int) -> list[JobRow]:
    return [_row(r) for r in sql.query("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))]


def listed(
    sql: Sql,
    limit: int,
    *,
    states: Sequence[str] = (),
    study_uid: str | None = None,
    job_id: int | None = None,
    pipeline: str | None = None,
    since: float | None = None,
) -> list[ListedJob]:
    """Most recent first (running and queued jobs are recent by definition: their id is newer)."""
    where: list[str] = []
    params: list[str | int | float] = []
    if pipeline:
        where.append("j.pipeline = ?")
        params.append(pipeline)
    if since is not None:
        where.append("j.created_at >= ?")
        params.append(since)
    if states:
        where.append(f"j.state IN ({sql.dialect.params(len(states))})")
        params += list(states)
    if study_uid is not None:
        where.append("j.study_uid = ?")
        params.append(study_uid)
    if job_id is not None:
        where.append("j.id = ?")
        params.append(job_id)
    rows = sql.query(
        f"""SELECT j.*, s.first_received_at AS study_first_received_at,
        (SELECT completed_at FROM studies WHERE study_uid = j.study_uid AND revision = j.revision)
        AS study_completed_at
        FROM jobs j LEFT JOIN studies s ON s.study_uid = j.study_uid
        {"WHERE " + " AND ".join(where) if where else ""} ORDER BY j.id DESC LIMIT ?""",
        (*params, limit),
    )
    return [ListedJob(_row(r), r["study_first_received_at"], r["study_completed_at"]) for r in rows]


def finished_since(sql: Sql, start: float) -> list[FinishedJob]:
    """Jobs that ended done, not applicable or failed at or after `start`."""
    rows = sql.query(
        f"""SELECT j.finished_at, j.state, s.completed_at FROM jobs j
        LEFT JOIN studies s ON s.study_uid = j.study_uid
        WHERE j.finished_at >= ? AND j.state IN ({sql.dialect.params(3)})""",
        (start, DONE, FAILED, NOT_APPLICABLE),
    )
    return [FinishedJob(r["finished_at"], r["state"], r["completed_at"]) for r in rows]
