"""The durable job queue: claim order, leases, bounded retries, recovery and superseding."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import JobSettings, RetrySettings
from node.jobs import (
    DONE,
    FAILED,
    NOT_APPLICABLE,
    QUEUED,
    RUNNING,
    SUPERSEDED,
    JobQueue,
)
from node.records import RouteMatch, SeriesAttributes, Study
from node.store import Database, open_database

SETTINGS = JobSettings(
    workers=1,
    max_attempts=3,
    lease_s=60.0,
    retry=RetrySettings(initial_s=10.0, factor=2.0, max_s=100.0),
)
NOW = 1_000.0


@pytest.fixture
def queue(db: Database) -> JobQueue:
    return JobQueue(db, SETTINGS)


def study(uid: str = "1.2.3", revision: int = 1) -> Study:
    return Study(uid, revision, "CT01", (SeriesAttributes("1.2.3.1", modality="CT"),))


def match(route: str = "neck-ct") -> RouteMatch:
    return RouteMatch(route, "cspine-fracture", ("pacs", "back"), ("1.2.3.1", "1.2.3.2"))


def job_row(db: Database, job_id: int) -> dict:
    return dict(db.query("SELECT * FROM jobs WHERE id = ?", (job_id,))[0])


def test_claimed_job_carries_the_study_and_route(queue: JobQueue) -> None:
    job_id = queue.enqueue(study(), match(), NOW)
    job = queue.claim("w1", NOW)
    assert job is not None
    assert (job.id, job.study_instance_uid, job.revision, job.route, job.pipeline) == (
        job_id,
        "1.2.3",
        1,
        "neck-ct",
        "cspine-fracture",
    )
    assert job.destinations == ("pacs", "back")
    assert job.series_uids == ("1.2.3.1", "1.2.3.2")
    assert (job.calling_ae, job.attempts) == ("CT01", 1)


def test_claim_on_an_empty_queue_returns_none(queue: JobQueue) -> None:
    assert queue.claim("w1", NOW) is None


def test_jobs_are_claimed_oldest_first_and_once(queue: JobQueue) -> None:
    ids = [queue.enqueue(study(f"1.2.{n}"), match(), NOW + n) for n in range(3)]
    claimed = [queue.claim("w1", NOW + 10) for _ in range(4)]
    assert [j.id if j else None for j in claimed] == [*ids, None]


def test_job_is_not_claimed_before_it_is_due(queue: JobQueue) -> None:
    queue.enqueue(study(), match(), NOW)
    assert queue.claim("w1", NOW - 1) is None
    assert queue.claim("w1", NOW) is not None


def test_claim_sets_running_with_a_lease(queue: JobQueue, db: Database) -> None:
    job_id = queue.enqueue(study(), match(), NOW)
    queue.claim("w1", NOW)
    row = job_row(db, job_id)
    assert (row["state"], row["lease_owner"], row["lease_until"], row["attempts"]) == (
        RUNNING,
        "w1",
        NOW + SETTINGS.lease_s,
        1,
    )


def test_running_job_is_not_claimed_again_while_its_lease_holds(queue: JobQueue) -> None:
    queue.enqueue(study(), match(), NOW)
    assert queue.claim("w1", NOW) is not None
    assert queue.claim("w2", NOW + SETTINGS.lease_s - 1) is None


def test_job_whose_lease_expired_is_claimed_by_another_worker(
    queue: JobQueue, db: Database
) -> None:
    job_id = queue.enqueue(study(), match(), NOW)
    queue.claim("w1", NOW)
    taken = queue.claim("w2", NOW + SETTINGS.lease_s + 1)
    assert taken is not None and taken.id == job_id and taken.attempts == 2
    assert job_row(db, job_id)["lease_owner"] == "w2"
    assert not queue.renew(job_id, "w1", NOW + SETTINGS.lease_s + 2)  # the old owner lost it


def test_job_whose_worker_died_on_every_attempt_ends_failed(queue: JobQueue, db: Database) -> None:
    job_id = queue.enqueue(study(), match(), NOW)
    now = NOW
    for attempt in range(1, SETTINGS.max_attempts + 1):
        job = queue.claim(f"w{attempt}", now)
        assert job is not None and job.attempts == attempt
        now += SETTINGS.lease_s + 1  # the worker dies: its lease runs out
    assert queue.claim("w-next", now) is None
    row = job_row(db, job_id)
    assert (row["state"], row["lease_owner"], row["finished_at"]) == (FAILED, None, now)
    assert "lease ran out" in row["last_error"]


def test_renew_extends_the_lease_for_the_owner_only(queue: JobQueue, db: Database) -> None:
    job_id = queue.enqueue(study(), match(), NOW)
    queue.claim("w1", NOW)
    assert queue.renew(job_id, "w1", NOW + 50)
    assert job_row(db, job_id)["lease_until"] == NOW + 50 + SETTINGS.lease_s
    assert not queue.renew(job_id, "w2", NOW + 51)
    assert job_row(db, job_id)["lease_until"] == NOW + 50 + SETTINGS.lease_s
    assert queue.claim("w2", NOW + SETTINGS.lease_s + 1) is None  # renewed: still held


def test_renew_of_a_finished_job_fails(queue: JobQueue) -> None:
    job_id = queue.enqueue(study(), match(), NOW)
    queue.claim("w1", NOW)
    queue.finish(job_id, DONE, "ok", NOW + 1)
    assert not queue.renew(job_id, "w1", NOW + 2)


@pytest.mark.parametrize("state", [DONE, NOT_APPLICABLE])
def test_finish_records_the_final_state(queue: JobQueue, db: Database, state: str) -> None:
    job_id = queue.enqueue(study(), match(), NOW)
    queue.claim("w1", NOW)
    queue.finish(job_id, state, "summary text", NOW + 5)
    row = job_row(db, job_id)
    assert (
        row["state"],
        row["summary"],
        row["finished_at"],
        row["lease_owner"],
        row["lease_until"],
    ) == (state, "summary text", NOW + 5, None, None)
    assert queue.claim("w2", NOW + 10_000) is None


@pytest.mark.parametrize("state", [QUEUED, RUNNING, FAILED, SUPERSEDED, "bogus"])
def test_finish_rejects_states_other_than_done_and_not_applicable(
    queue: JobQueue, db: Database, state: str
) -> None:
    job_id = queue.enqueue(study(), match(), NOW)
    queue.claim("w1", NOW)
    with pytest.raises(ValueError, match="done or not_applicable"):
        queue.finish(job_id, state, "", NOW)
    assert job_row(db, job_id)["state"] == RUNNING


def test_failed_attempts_are_retried_with_backoff_until_max_attempts(
    queue: JobQueue, db: Database
) -> None:
    job_id = queue.enqueue(study(), match(), NOW)
    now = NOW
    expected_delays = [10.0, 20.0]  # retry_delay(1), retry_delay(2)
    for attempt, delay in enumerate(expected_delays, start=1):
        job = queue.claim("w1", now)
        assert job is not None and job.attempts == attempt
        assert queue.fail(job_id, f"boom {attempt}", now) == QUEUED
        row = job_row(db, job_id)
        assert (row["state"], row["not_before"], row["last_error"], row["lease_owner"]) == (
            QUEUED,
            now + delay,
            f"boom {attempt}",
            None,
        )
        assert queue.claim("w1", now + delay - 0.1) is None  # backing off
        now += delay
    job = queue.claim("w1", now)
    assert job is not None and job.attempts == SETTINGS.max_attempts
    assert queue.fail(job_id, "boom 3", now) == FAILED
    row = job_row(db, job_id)
    assert (row["state"], row["finished_at"], row["last_error"]) == (FAILED, now, "boom 3")
    assert queue.claim("w1", now + 10_000) is None


def test_fail_keeps_a_bounded_error_text(queue: JobQueue, db: Database) -> None:
    job_id = queue.enqueue(study(), match(), NOW)
    queue.claim("w1", NOW)
    queue.fail(job_id, "x" * 10_000, NOW)
    assert len(job_row(db, job_id)["last_error"]) == 2000


def test_max_attempts_is_fixed_when_the_job_is_queued(db: Database) -> None:
    job_id = JobQueue(db, SETTINGS.model_copy(update={"max_attempts": 1})).enqueue(
        study(), match(), NOW
    )
    queue = JobQueue(db, SETTINGS)
    queue.claim("w1", NOW)
    assert queue.fail(job_id, "boom", NOW) == FAILED


def test_recover_requeues_jobs_left_running(queue: JobQueue, db: Database) -> None:
    running = queue.enqueue(study("1.2.1"), match(), NOW)
    finished = queue.enqueue(study("1.2.2"), match(), NOW + 1)
    waiting = queue.enqueue(study("1.2.3"), match(), NOW + 2)
    assert queue.claim("w1", NOW + 5).id == running  # type: ignore[union-attr]
    assert queue.claim("w1", NOW + 5).id == finished  # type: ignore[union-attr]
    queue.finish(finished, DONE, "", NOW + 6)
    # the process died; a new one starts long before the lease would run out
    assert queue.recover(NOW + 10) == 1
    row = job_row(db, running)
    assert (row["state"], row["not_before"], row["lease_owner"], row["lease_until"]) == (
        QUEUED,
        NOW + 10,
        None,
        None,
    )
    assert row["last_error"] == "node stopped while the job ran"
    assert job_row(db, finished)["state"] == DONE
    assert job_row(db, waiting)["state"] == QUEUED
    # the recovered job is due from the restart on, behind jobs that were due earlier
    claimed = [queue.claim("w2", NOW + 10) for _ in range(3)]
    assert [(j.id, j.attempts) if j else None for j in claimed] == [
        (waiting, 1),
        (running, 2),
        None,
    ]


def test_recover_keeps_the_error_of_an_earlier_attempt(queue: JobQueue, db: Database) -> None:
    job_id = queue.enqueue(study(), match(), NOW)
    queue.claim("w1", NOW)
    queue.fail(job_id, "pipeline crashed", NOW)
    queue.claim("w1", NOW + 100)
    queue.recover(NOW + 200)
    assert job_row(db, job_id)["last_error"] == "pipeline crashed"


def test_recover_fails_a_job_that_stopped_the_node_on_its_last_attempt(
    queue: JobQueue, db: Database
) -> None:
    # a study that crashes the node must not crash it again on every restart
    job_id = queue.enqueue(study(), match(), NOW)
    now = NOW
    for _ in range(SETTINGS.max_attempts):
        assert queue.claim("w1", now) is not None
        now += 1
        if job_row(db, job_id)["attempts"] < SETTINGS.max_attempts:
            assert queue.recover(now) == 1
    assert queue.recover(now) == 0
    row = job_row(db, job_id)
    assert (row["state"], row["finished_at"], row["lease_owner"]) == (FAILED, now, None)
    assert row["last_error"] == "node stopped while the job ran"


def test_recover_with_nothing_running_changes_nothing(queue: JobQueue, db: Database) -> None:
    job_id = queue.enqueue(study(), match(), NOW)
    assert queue.recover(NOW) == 0
    assert job_row(db, job_id)["state"] == QUEUED


def test_retry_requeues_a_failed_job_with_a_fresh_attempt_budget(
    queue: JobQueue, db: Database
) -> None:
    job_id = queue.enqueue(study(), match(), NOW)
    queue.db.execute("UPDATE jobs SET max_attempts = 1 WHERE id = ?", (job_id,))
    queue.claim("w1", NOW)
    assert queue.fail(job_id, "boom", NOW) == FAILED
    assert queue.retry(job_id, NOW + 500)
    row = job_row(db, job_id)
    assert (row["state"], row["attempts"], row["not_before"], row["finished_at"]) == (
        QUEUED,
        0,
        NOW + 500,
        None,
    )
    job = queue.claim("w1", NOW + 500)
    assert job is not None and job.attempts == 1


@pytest.mark.parametrize("finish_as", [None, DONE, "running"])
def test_retry_only_applies_to_failed_jobs(
    queue: JobQueue, db: Database, finish_as: str | None
) -> None:
    job_id = queue.enqueue(study(), match(), NOW)
    if finish_as is not None:
        queue.claim("w1", NOW)
    if finish_as == DONE:
        queue.finish(job_id, DONE, "", NOW)
    before = job_row(db, job_id)
    assert not queue.retry(job_id, NOW + 1)
    assert job_row(db, job_id) == before


def test_retry_of_an_unknown_job_is_false(queue: JobQueue) -> None:
    assert not queue.retry(12345, NOW)


def test_new_revision_supersedes_queued_older_revisions_of_the_same_route(
    queue: JobQueue, db: Database
) -> None:
    first = queue.enqueue(study(revision=1), match("neck-ct"), NOW)
    other_route = queue.enqueue(study(revision=1), match("audit"), NOW)
    other_study = queue.enqueue(study("9.9.9", revision=1), match("neck-ct"), NOW)
    second = queue.enqueue(study(revision=2), match("neck-ct"), NOW + 1)
    assert job_row(db, first)["state"] == SUPERSEDED
    assert job_row(db, first)["superseded_by"] == second
    assert job_row(db, first)["finished_at"] == NOW + 1
    assert {job_row(db, j)["state"] for j in (other_route, other_study, second)} == {QUEUED}
    claimed = [queue.claim("w1", NOW + 2) for _ in range(4)]
    assert [j.id if j else None for j in claimed] == [other_route, other_study, second, None]


def test_running_older_revision_is_not_superseded_but_reports_it(
    queue: JobQueue, db: Database
) -> None:
    first = queue.enqueue(study(revision=1), match(), NOW)
    running = queue.claim("w1", NOW)
    assert running is not None
    queue.enqueue(study(revision=2), match(), NOW + 1)
    assert job_row(db, first)["state"] == RUNNING  # the worker notices and stops itself
    assert queue.is_superseded(running)
    newest = queue.claim("w2", NOW + 2)
    assert newest is not None and not queue.is_superseded(newest)


def test_older_revision_enqueued_late_does_not_supersede_a_newer_one(
    queue: JobQueue, db: Database
) -> None:
    newer = queue.enqueue(study(revision=2), match(), NOW)
    queue.enqueue(study(revision=1), match(), NOW + 1)
    assert job_row(db, newer)["state"] == QUEUED


def test_counts_by_state(queue: JobQueue) -> None:
    for n in range(3):
        queue.enqueue(study(f"1.2.{n}"), match(), NOW)
    queue.claim("w1", NOW)
    assert queue.counts() == {QUEUED: 2, RUNNING: 1}


def test_queue_survives_reopening_the_database(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    first = open_database(path)
    job_id = JobQueue(first, SETTINGS).enqueue(study(), match(), NOW)
    first.close()
    reopened = open_database(path)
    try:
        job = JobQueue(reopened, SETTINGS).claim("w1", NOW)
        assert job is not None and job.id == job_id
    finally:
        reopened.close()
