"""The durable job queue (SQLite): queued → running → done / failed / not_applicable / superseded.

A worker claims a job with a lease and renews it while it runs; a job whose lease ran out
(its worker died) is claimed again. On start the node takes back every job a previous process
left running. A failed attempt is retried after a backoff until `max_attempts`.
"""

from __future__ import annotations

import json
import sqlite3

from node.config import JobSettings
from node.db import Database
from node.records import Job, RouteMatch, Study
from node.retry import retry_delay

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
NOT_APPLICABLE, SUPERSEDED = "not_applicable", "superseded"
FINAL_STATES = (DONE, FAILED, NOT_APPLICABLE, SUPERSEDED)
LEASE_EXPIRED_ERROR = "the worker stopped (crash or hang) on every attempt; its lease ran out"
STOPPED_ERROR = "node stopped while the job ran"


def mark_finished(conn: sqlite3.Connection, job_id: int, state: str, summary: str, now: float) -> None:
    """Record a job's final outcome inside the caller's transaction (the outbox stages results
    and marks the job done in one)."""
    conn.execute(
        """UPDATE jobs SET state = ?, summary = ?, last_error = '', finished_at = ?,
        lease_owner = NULL, lease_until = NULL WHERE id = ?""",
        (state, summary, now, job_id),
    )


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        study_instance_uid=row["study_uid"],
        revision=row["revision"],
        route=row["route"],
        pipeline=row["pipeline"],
        destinations=tuple(json.loads(row["destinations"])),
        series_uids=tuple(json.loads(row["series_uids"])),
        calling_ae=row["calling_ae"],
        attempts=row["attempts"],
    )


class JobQueue:
    def __init__(self, db: Database, settings: JobSettings) -> None:
        self.db = db
        self.settings = settings

    def enqueue(self, study: Study, match: RouteMatch, now: float) -> int:
        """Queue one job; queued jobs of older revisions of the same study and route are superseded."""
        with self.db.transaction() as conn:
            cursor = conn.execute(
                """INSERT INTO jobs (study_uid, revision, route, pipeline, destinations, series_uids,
                calling_ae, state, max_attempts, created_at, not_before)
                VALUES (?,?,?,?,?,?,?,?,?,?,?)""",
                (
                    study.study_instance_uid,
                    study.revision,
                    match.route,
                    match.pipeline,
                    json.dumps(list(match.destinations)),
                    json.dumps(list(match.series_uids)),
                    study.calling_ae,
                    QUEUED,
                    self.settings.max_attempts,
                    now,
                    now,
                ),
            )
            job_id = int(cursor.lastrowid or 0)
            conn.execute(
                """UPDATE jobs SET state = ?, superseded_by = ?, finished_at = ?
                WHERE study_uid = ? AND route = ? AND revision < ? AND state = ?""",
                (SUPERSEDED, job_id, now, study.study_instance_uid, match.route, study.revision, QUEUED),
            )
        return job_id

    def claim(self, owner: str, now: float) -> Job | None:
        """Take the oldest due job, or one whose lease expired; None when there is nothing to do."""
        with self.db.transaction() as conn:
            # a job whose worker died on every attempt (a study that crashes or hangs the
            # pipeline) must not be taken again and again: its attempts are used up
            conn.execute(
                """UPDATE jobs SET state = ?, finished_at = ?, lease_owner = NULL, lease_until = NULL,
                last_error = ? WHERE state = ? AND lease_until < ? AND attempts >= max_attempts""",
                (FAILED, now, LEASE_EXPIRED_ERROR, RUNNING, now),
            )
            row = conn.execute(
                """SELECT id FROM jobs WHERE (state = ? AND not_before <= ?)
                OR (state = ? AND lease_until < ?) ORDER BY not_before, id LIMIT 1""",
                (QUEUED, now, RUNNING, now),
            ).fetchone()
            if row is None:
                return None
            claimed = conn.execute(
                """UPDATE jobs SET state = ?, attempts = attempts + 1, started_at = ?,
                lease_owner = ?, lease_until = ? WHERE id = ? RETURNING *""",
                (RUNNING, now, owner, now + self.settings.lease_s, row["id"]),
            ).fetchone()
        return _job(claimed)

    def renew(self, job_id: int, owner: str, now: float) -> bool:
        return (
            self.db.execute(
                "UPDATE jobs SET lease_until = ? WHERE id = ? AND lease_owner = ? AND state = ?",
                (now + self.settings.lease_s, job_id, owner, RUNNING),
            )
            == 1
        )

    def finish(self, job_id: int, state: str, summary: str, now: float) -> None:
        if state not in (DONE, NOT_APPLICABLE):
            raise ValueError(f"finish() takes done or not_applicable, not {state!r}")
        with self.db.transaction() as conn:
            mark_finished(conn, job_id, state, summary, now)

    def supersede(self, job_id: int, now: float) -> None:
        """A claimed job whose study has a newer revision queued ends without running."""
        with self.db.transaction() as conn:
            mark_finished(conn, job_id, SUPERSEDED, "a newer revision of the study is queued", now)

    def fail(self, job_id: int, error: str, now: float) -> str:
        """Record a failed attempt; requeue with backoff or give up. Returns the new state."""
        with self.db.transaction() as conn:
            row = conn.execute("SELECT attempts, max_attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row["attempts"] >= row["max_attempts"]:
                state, not_before, finished = FAILED, now, now
            else:
                state = QUEUED
                not_before = now + retry_delay(row["attempts"], self.settings.retry)
                finished = None
            conn.execute(
                """UPDATE jobs SET state = ?, last_error = ?, not_before = ?, finished_at = ?,
                lease_owner = NULL, lease_until = NULL WHERE id = ?""",
                (state, error[:2000], not_before, finished, job_id),
            )
        return state

    def recover(self, now: float) -> int:
        """Requeue every job left running by a previous process (called once at start).

        A job that already used all its attempts ends failed instead, so a study that crashes
        the node cannot make it crash again on every restart. Returns the jobs requeued.
        """
        with self.db.transaction() as conn:
            conn.execute(
                """UPDATE jobs SET state = ?, finished_at = ?, lease_owner = NULL,
                lease_until = NULL, last_error = ? WHERE state = ? AND attempts >= max_attempts""",
                (FAILED, now, STOPPED_ERROR, RUNNING),
            )
            return conn.execute(
                """UPDATE jobs SET state = ?, not_before = ?, lease_owner = NULL, lease_until = NULL,
                last_error = CASE WHEN last_error = '' THEN ? ELSE last_error END WHERE state = ?""",
                (QUEUED, now, STOPPED_ERROR, RUNNING),
            ).rowcount

    def retry(self, job_id: int, now: float) -> bool:
        """Operator action: run a failed job again with a fresh attempt budget."""
        return (
            self.db.execute(
                """UPDATE jobs SET state = ?, attempts = 0, not_before = ?, finished_at = NULL
                WHERE id = ? AND state = ?""",
                (QUEUED, now, job_id, FAILED),
            )
            == 1
        )

    def is_superseded(self, job: Job) -> bool:
        """A newer revision of the same study and route exists."""
        rows = self.db.query(
            "SELECT 1 FROM jobs WHERE study_uid = ? AND route = ? AND revision > ? LIMIT 1",
            (job.study_instance_uid, job.route, job.revision),
        )
        return bool(rows)

    def counts(self) -> dict[str, int]:
        rows = self.db.query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        return {row["state"]: row["n"] for row in rows}
