"""The durable job queue: queued → running → done / failed / not_applicable / superseded.

A worker claims a job with a lease and renews it while it runs; a job whose lease ran out
(its worker died) is claimed again. A worker records its job's outcome only while it holds the
lease, checked in the transaction that records it (`owner`), so a job taken over is recorded once.
With the embedded SQLite index (one process) the node takes back at start every job a previous
process left running; processes sharing PostgreSQL rely on the lease alone, and a stopping worker
gives its jobs back. A failed attempt is retried after a backoff until `max_attempts`.
"""

from __future__ import annotations

from collections.abc import Callable

from node.config import JobSettings
from node.records import Job, RouteMatch, Study
from node.retry import retry_delay
from node.store import Database
from node.store import jobs as table
from node.store.jobs import (
    DONE,
    FAILED,
    FINAL_STATES,
    NOT_APPLICABLE,
    QUEUED,
    RUNNING,
    SUPERSEDED,
    LeaseLost,
    check_holds,
)

__all__ = [
    "DONE",
    "FAILED",
    "FINAL_STATES",
    "LEASE_EXPIRED_ERROR",
    "NOT_APPLICABLE",
    "QUEUED",
    "RUNNING",
    "STOPPED_ERROR",
    "SUPERSEDED",
    "JobQueue",
    "LeaseLost",
]
LEASE_EXPIRED_ERROR = "the worker stopped (crash or hang) on every attempt; its lease ran out"
STOPPED_ERROR = "node stopped while the job ran"
MAX_ERROR = 2000  # characters of an error kept


class JobQueue:
    def __init__(self, db: Database, settings: JobSettings) -> None:
        self.db = db
        self.settings = settings

    def enqueue(self, study: Study, match: RouteMatch, now: float) -> int:
        """Queue one job; queued jobs of older revisions of the same study and route are superseded."""
        with self.db.transaction() as sql:
            job_id = table.insert(
                sql,
                study.study_instance_uid,
                study.revision,
                match.route,
                match.pipeline,
                match.destinations,
                match.series_uids,
                study.calling_ae,
                self.settings.max_attempts,
                now,
            )
            table.supersede_queued(sql, study.study_instance_uid, match.route, study.revision, job_id, now)
        return job_id

    def claim(self, owner: str, now: float) -> Job | None:
        """Take the oldest due job, or one whose lease expired; None when there is nothing to do."""
        with self.db.transaction() as sql:
            # a job whose worker died on every attempt (a study that crashes or hangs the
            # pipeline) must not be taken again and again: its attempts are used up
            table.fail_spent_leases(sql, now, LEASE_EXPIRED_ERROR)
            job_id = table.next_due(sql, now)
            if job_id is None:
                return None
            return table.claim(sql, job_id, owner, now, now + self.settings.lease_s)

    def renew(self, job_id: int, owner: str, now: float) -> bool:
        return table.renew(self.db, job_id, owner, now + self.settings.lease_s)

    def finish(self, job_id: int, state: str, summary: str, now: float, owner: str | None = None) -> None:
        """The job's outcome; raises LeaseLost when `owner` no longer runs it."""
        if state not in (DONE, NOT_APPLICABLE):
            raise ValueError(f"finish() takes done or not_applicable, not {state!r}")
        with self.db.transaction() as sql:
            check_holds(sql, job_id, owner)
            table.mark_finished(sql, job_id, state, summary, now)

    def supersede(self, job_id: int, now: float, owner: str | None = None) -> None:
        """A claimed job whose study has a newer revision queued ends without running."""
        with self.db.transaction() as sql:
            check_holds(sql, job_id, owner)
            table.mark_finished(sql, job_id, SUPERSEDED, "a newer revision of the study is queued", now)

    def fail(self, job_id: int, error: str, now: float, owner: str | None = None) -> str:
        """Record a failed attempt; requeue with backoff or give up. Returns the new state."""
        with self.db.transaction() as sql:
            check_holds(sql, job_id, owner)
            attempts, max_attempts = table.attempts(sql, job_id)
            if attempts >= max_attempts:
                state, not_before, finished = FAILED, now, now
            else:
                state, not_before, finished = QUEUED, now + retry_delay(attempts, self.settings.retry), None
            table.failed_attempt(sql, job_id, state, error[:MAX_ERROR], not_before, finished)
        return state

    def recover(self, now: float) -> int:
        """Requeue every job left running by a previous process (called once at start).

        A job that already used all its attempts ends failed instead, so a study that crashes
        the node cannot make it crash again on every restart. Returns the jobs requeued.
        """
        with self.db.transaction() as sql:
            return table.recover(sql, now, STOPPED_ERROR)

    def recover_gone(self, now: float, gone: Callable[[str], bool]) -> int:
        """Requeue the running jobs of workers that are `gone` (node.owners: a process of this host
        that no longer runs), without waiting for their leases; the jobs requeued."""
        requeued = 0
        for owner in table.running_owners(self.db):
            if owner and gone(owner):
                with self.db.transaction() as sql:
                    requeued += table.recover(sql, now, STOPPED_ERROR, owner)
        return requeued

    def release(self, owner_prefix: str, now: float) -> int:
        """A stopping process gives back the jobs its workers (owners `owner_prefix`…) still run,
        so that another worker takes them at once rather than when the lease lapses."""
        with self.db.transaction() as sql:
            return table.recover(sql, now, STOPPED_ERROR, owner_prefix)

    def retry(self, job_id: int, now: float) -> bool:
        """Operator action: run a failed job again with a fresh attempt budget."""
        return table.retry(self.db, job_id, now)

    def is_superseded(self, job: Job) -> bool:
        """A newer revision of the same study and route exists."""
        return table.newer_revision(self.db, job.study_instance_uid, job.route, job.revision)

    def counts(self) -> dict[str, int]:
        return table.state_counts(self.db)
