"""Work shared by several processes (node.roles): dispatchers claim outbox rows under leases, a
worker records its outcome only while it holds its job, a stopping process gives its leases back,
and the janitors leave young files alone. Each test runs on SQLite and on PostgreSQL (`db`)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from node import owners
from node.config import JobSettings, RetrySettings
from node.dispatch.outbox import Outbox
from node.files import TEMP_SUFFIX
from node.jobs import DONE, QUEUED, RUNNING, JobQueue, LeaseLost
from node.records import Job, RouteMatch, SeriesAttributes, Study
from node.spool import Spool
from node.store import Database

SR = "1.2.840.10008.5.1.4.1.1.88.34"
LEASE_S = 60.0
NOW = 1_000.0


def _sr() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = SR
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


@pytest.fixture
def queue(db: Database) -> JobQueue:
    return JobQueue(db, JobSettings(lease_s=LEASE_S))


@pytest.fixture
def outbox(tmp_path: Path, db: Database) -> Outbox:
    return Outbox(tmp_path / "outbox", db, RetrySettings())


def _job(queue: JobQueue, uid: str = "1.2.3", owner: str = "a-w0") -> Job:
    study = Study(uid, 1, "MOD", (SeriesAttributes(uid + ".1", modality="CR"),))
    queue.enqueue(study, RouteMatch("r", "p", ("pacs",), (uid + ".1",)), NOW)
    job = queue.claim(owner, NOW)
    assert job is not None
    return job


def _state(db: Database, job_id: int) -> tuple[str, str | None]:
    row = db.query("SELECT state, lease_owner FROM jobs WHERE id = ?", (job_id,))[0]
    return row["state"], row["lease_owner"]


# -- dispatchers --------------------------------------------------------------------------------


def test_two_dispatchers_claim_different_items_and_a_lapsed_claim_is_taken_again(
    queue: JobQueue, outbox: Outbox
) -> None:
    job = _job(queue)
    outbox.stage(job, [_sr() for _ in range(5)], "summary", NOW)
    first = outbox.claim("pacs", NOW + 1, 3, "a-d", 30.0)
    second = outbox.claim("pacs", NOW + 1, 3, "b-d", 30.0)
    assert [len(first), len(second)] == [3, 2]
    assert not {item.id for item in first} & {item.id for item in second}
    assert outbox.claim("pacs", NOW + 2, 10, "c-d", 30.0) == []  # every item is held
    outbox.delivered(first[0], NOW + 3)
    # a's dispatcher died: its two undelivered items go to another when its lease lapses
    taken = outbox.claim("pacs", NOW + 32, 10, "c-d", 30.0)
    assert sorted(item.id for item in taken) == sorted(item.id for item in first[1:] + second)


def test_a_stopping_dispatcher_gives_back_only_its_own_claims(queue: JobQueue, outbox: Outbox) -> None:
    job = _job(queue)
    outbox.stage(job, [_sr() for _ in range(4)], "summary", NOW)
    mine = outbox.claim("pacs", NOW, 2, "a-d", 300.0)
    outbox.claim("pacs", NOW, 2, "b-d", 300.0)
    assert outbox.release("a") == 2
    again = outbox.claim("pacs", NOW + 1, 10, "c-d", 300.0)
    assert sorted(item.id for item in again) == sorted(item.id for item in mine)


def test_a_failed_attempt_ends_the_claim_and_waits_for_its_retry_time(queue: JobQueue, outbox: Outbox) -> None:
    job = _job(queue)
    outbox.stage(job, [_sr()], "summary", NOW)
    (item,) = outbox.claim("pacs", NOW, 10, "a-d", 300.0)
    retry_at = outbox.failed_attempt(item, "peer down", NOW)
    assert outbox.claim("pacs", retry_at - 0.1, 10, "b-d", 300.0) == []
    assert [i.id for i in outbox.claim("pacs", retry_at, 10, "b-d", 300.0)] == [item.id]


# -- workers ------------------------------------------------------------------------------------


def test_a_worker_whose_lease_was_taken_over_stages_nothing_and_removes_its_files(
    queue: JobQueue, outbox: Outbox, db: Database
) -> None:
    job = _job(queue, owner="a-w0")
    taken = queue.claim("b-w0", NOW + LEASE_S + 1)  # a paused past its lease; b takes the job
    assert taken is not None and taken.id == job.id
    with pytest.raises(LeaseLost):
        outbox.stage(job, [_sr()], "a's result", NOW + LEASE_S + 2, owner="a-w0")
    assert not any(path.is_file() for path in outbox.root.rglob("*")), "the loser's files stay behind"
    assert db.query("SELECT COUNT(*) AS n FROM outbox")[0]["n"] == 0
    assert outbox.stage(taken, [_sr()], "b's result", NOW + LEASE_S + 3, owner="b-w0") == 1
    assert _state(db, job.id) == (DONE, None)
    with pytest.raises(LeaseLost):  # a comes back once more: still nothing recorded
        queue.fail(job.id, "late error", NOW + LEASE_S + 4, owner="a-w0")
    assert _state(db, job.id) == (DONE, None)


def test_finish_and_fail_record_only_for_the_worker_holding_the_job(queue: JobQueue, db: Database) -> None:
    job = _job(queue, owner="a-w0")
    with pytest.raises(LeaseLost):
        queue.finish(job.id, "not_applicable", "chest film", NOW + 1, owner="b-w0")
    assert queue.fail(job.id, "pipeline error", NOW + 1, owner="a-w0") == QUEUED


def test_a_stopping_process_gives_back_only_its_workers_jobs(queue: JobQueue, db: Database) -> None:
    mine = _job(queue, "1.2.3", owner="a-w0")
    theirs = _job(queue, "1.2.4", owner="b-w0")
    assert queue.release("a", NOW + 5) == 1
    assert _state(db, mine.id) == (QUEUED, None)
    assert _state(db, theirs.id) == (RUNNING, "b-w0")
    assert queue.claim("c-w0", NOW + 6) is not None  # taken at once, not after the lease


# -- janitors -----------------------------------------------------------------------------------


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_orphan_results_younger_than_the_grace_period_are_left_to_their_worker(queue: JobQueue, outbox: Outbox) -> None:
    young = outbox.root / "77"
    old = outbox.root / "78"
    for folder in (young, old):
        folder.mkdir(parents=True)
        (folder / "x.dcm").write_bytes(b"result")
    _age(old / "x.dcm", 7200)
    _age(old, 7200)
    assert outbox.remove_orphans(grace_s=3600) == 1
    assert young.exists() and not old.exists()


def test_an_attempt_that_lost_its_job_leaves_no_files_the_janitor_misses(queue: JobQueue, outbox: Outbox) -> None:
    job = _job(queue)
    outbox.stage(job, [_sr()], "summary", NOW)
    folder = outbox.root / str(job.id)
    stray = folder / "stray.dcm"  # a worker killed between writing and committing
    stray.write_bytes(b"result")
    _age(stray, 7200)
    _age(folder, 7200)
    assert outbox.remove_orphans(grace_s=3600) == 1
    assert not stray.exists() and len(list(folder.iterdir())) == 1  # the staged result stays


def test_spool_reconcile_with_a_grace_period_leaves_another_listeners_transfer_alone(
    tmp_path: Path, db: Database
) -> None:
    spool = Spool(tmp_path / "spool", db)
    study = spool.root / "1.2.3"
    study.mkdir(parents=True)
    in_flight = study / f".a.dcm.0123{TEMP_SUFFIX}"
    left = study / f".b.dcm.4567{TEMP_SUFFIX}"
    in_flight.write_bytes(b"partial")
    left.write_bytes(b"partial")
    _age(left, 7200)
    spool.reconcile(grace_s=3600)
    assert in_flight.exists() and not left.exists()


# -- processes of this host that are gone -------------------------------------------------------


def _dead_owner() -> str:
    process = subprocess.Popen(["true"])
    process.wait()
    return f"{owners.host_tag()}-{process.pid}"


def test_an_owner_is_gone_only_when_it_was_a_process_of_this_host_that_ended() -> None:
    assert owners.gone(_dead_owner() + "-abc123-w0")
    assert not owners.gone(owners.this_process() + "-abc123-w0")  # this process
    assert not owners.gone(f"{owners.host_tag()}-1-abc123-w0")  # init runs
    other_host = "0" * 8 if owners.host_tag() != "0" * 8 else "1" * 8
    assert not owners.gone(f"{other_host}-999999-abc123-w0")  # another host's: its lease decides
    assert not owners.gone("w1")  # an owner of another form
    assert owners.found_in(f".x.dcm.0123abcd.{owners.this_process()}.tmp") == owners.this_process()
    assert owners.found_in(".x.dcm.0123abcd.tmp") is None


def test_jobs_of_a_dead_process_of_this_host_are_requeued_at_once_others_wait_for_their_lease(
    queue: JobQueue, db: Database
) -> None:
    dead = _job(queue, "1.2.3", owner=_dead_owner() + "-abc123-w0")
    alive = _job(queue, "1.2.4", owner=owners.this_process() + "-abc123-w0")
    assert queue.recover_gone(NOW + 1, owners.gone) == 1
    assert _state(db, dead.id) == (QUEUED, None)
    assert _state(db, alive.id) == (RUNNING, owners.this_process() + "-abc123-w0")


def test_claims_of_a_dead_dispatcher_of_this_host_are_given_back_at_once(queue: JobQueue, outbox: Outbox) -> None:
    job = _job(queue)
    outbox.stage(job, [_sr(), _sr()], "summary", NOW)
    outbox.claim("pacs", NOW, 1, _dead_owner() + "-abc123-d", 300.0)
    outbox.claim("pacs", NOW, 1, owners.this_process() + "-abc123-d", 300.0)
    assert outbox.release_gone(owners.gone) == 1
    assert len(outbox.claim("pacs", NOW + 1, 10, "c-d", 300.0)) == 1


def test_a_dead_listeners_temporary_file_goes_at_once_a_live_ones_stays(tmp_path: Path, db: Database) -> None:
    spool = Spool(tmp_path / "spool", db)
    study = spool.root / "1.2.3"
    study.mkdir(parents=True)
    dead = study / f".a.dcm.0123abcd.{_dead_owner()}{TEMP_SUFFIX}"
    live = study / f".b.dcm.4567abcd.{owners.this_process()}{TEMP_SUFFIX}"
    for path in (dead, live):
        path.write_bytes(b"partial")
    spool.reconcile(grace_s=3600)
    assert live.exists() and not dead.exists()


def test_a_delivered_result_whose_file_outlived_its_dispatcher_is_removed_and_a_waiting_one_kept(
    queue: JobQueue, outbox: Outbox, db: Database
) -> None:
    job = _job(queue)
    outbox.stage(job, [_sr(), _sr()], "summary", NOW, owner="a-w0")
    first, second = sorted(db.query("SELECT id, path FROM outbox ORDER BY id"), key=lambda row: row["id"])
    # a dispatcher recorded the first delivery and died before removing its file
    db.execute("UPDATE outbox SET state = 'delivered' WHERE id = ?", (first["id"],))
    assert Path(first["path"]).exists()
    assert outbox.remove_delivered_files() == 1
    assert not Path(first["path"]).exists() and Path(second["path"]).exists()  # the other still waits
    db.execute("UPDATE outbox SET state = 'delivered' WHERE id = ?", (second["id"],))
    assert outbox.remove_delivered_files() == 1
    assert not (outbox.root / str(job.id)).exists()
