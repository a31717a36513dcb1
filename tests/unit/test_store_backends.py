"""What the two backends must agree on beyond the table modules' own tests (`db` is each backend
in turn), and what only PostgreSQL's row locks make possible: claims that skip each other."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from node.assembly import Assembly
from node.config import AssemblySettings, JobSettings
from node.jobs import JobQueue
from node.records import Instance, RouteMatch, SeriesAttributes, Study
from node.store import Database, DatabaseUnavailable, StoreError, instances, open_database, studies
from node.store import jobs as table

NOW = 1_000.0


def instance(uid: str, size: int) -> Instance:
    return Instance(
        uid,
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.3",
        "1.2.3.1",
        "1.2.840.10008.1.2.1",
        Path(f"/spool/1.2.3/{uid}.dcm"),
        "",
        size,
        NOW,
        "CT01",
        "a1",
    )


def test_an_instance_larger_than_2_gib_keeps_its_size(db: Database) -> None:
    with db.transaction() as sql:
        instances.put(sql, instance("1.2.3.4", 5 * 2**30))
    assert db.one("SELECT size FROM instances WHERE sop_instance_uid = ?", ("1.2.3.4",))["size"] == 5 * 2**30


def test_rows_are_read_by_column_name_and_by_position(db: Database) -> None:
    with db.transaction() as sql:
        instances.put(sql, instance("1.2.3.5", 10))
    row = db.one("SELECT sop_instance_uid, size FROM instances")
    assert row is not None
    assert (row["sop_instance_uid"], row[1], row.keys()) == ("1.2.3.5", 10, ["sop_instance_uid", "size"])


def test_a_failed_statement_rolls_back_the_whole_transaction(db: Database) -> None:
    with pytest.raises(StoreError), db.transaction() as sql:
        instances.put(sql, instance("1.2.3.6", 10))
        sql.execute("INSERT INTO no_such_table VALUES (1)")
    assert db.query("SELECT * FROM instances") == []


def test_concurrent_claims_on_postgresql_take_different_jobs_without_waiting(postgres_url: str) -> None:
    db = open_database(postgres_url, upgrade=True)
    queue = JobQueue(db, JobSettings(lease_s=60.0))
    route = RouteMatch("neck-ct", "cspine-fracture", ("pacs",), ("1.2.3.1",))
    first, second = (
        queue.enqueue(Study(uid, 1, "CT01", (SeriesAttributes("1.2.3.1", modality="CT"),)), route, NOW)
        for uid in ("1.2.3", "1.2.4")
    )
    holding, release = threading.Event(), threading.Event()
    held: list[int] = []

    def slow_claim() -> None:  # a worker whose claim transaction is still open
        with db.transaction() as sql:
            job_id = table.next_due(sql, NOW)
            assert job_id is not None
            table.claim(sql, job_id, "slow", NOW, NOW + 60)
            held.append(job_id)
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=slow_claim)
    thread.start()
    try:
        assert holding.wait(30)
        started = time.monotonic()
        other = queue.claim("fast", NOW)
        waited = time.monotonic() - started
    finally:
        release.set()
        thread.join(30)
        db.close()
    assert held == [first]
    assert other is not None and other.id == second  # skipped the locked row instead of taking it
    assert waited < 5.0  # it did not wait for the other transaction (FOR UPDATE SKIP LOCKED)


def test_a_study_completed_by_one_assembler_is_not_completed_again_by_another(postgres_url: str) -> None:
    """Two processes' assembly steps see the same due study: the second waits for the first's row
    lock, re-reads the study as complete, and makes no second revision (no double job)."""
    db = open_database(postgres_url, upgrade=True)
    with db.transaction() as sql:
        instances.put(sql, instance("1.2.3.7", 10))
        studies.received(sql, "1.2.3", "CT01", NOW)
    due = NOW + 60  # the quiet period has passed
    other: list[list[object]] = []
    first_holds = threading.Event()

    def second_assembler() -> None:
        first_holds.wait(30)
        other.append(list(Assembly(db, AssemblySettings(quiet_period_s=5)).run_once(due)))

    thread = threading.Thread(target=second_assembler)
    thread.start()
    try:
        with db.transaction() as sql:  # the first assembler, between its re-check and its commit
            current = studies.completion(sql, "1.2.3")
            assert current is not None and current.pending
            studies.complete(sql, "1.2.3", current.revision + 1, due)
            first_holds.set()
            time.sleep(1.0)  # the second has read the study as pending and now waits on its row
        thread.join(30)
        revision = db.one("SELECT revision FROM studies WHERE study_uid = '1.2.3'")
    finally:
        db.close()
    assert other == [[]]  # the second completed nothing
    assert revision is not None and revision["revision"] == 1


def test_a_database_that_cannot_be_reached_is_unavailable_not_a_crash() -> None:
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DatabaseUnavailable):
        open_database(f"postgresql://fracnode@127.0.0.1:{port}/fracnode")


def test_an_sqlite_index_of_schema_1_gains_the_outbox_claims_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    db = open_database(path)
    db.execute("ALTER TABLE outbox DROP COLUMN lease_owner")
    db.execute("ALTER TABLE outbox DROP COLUMN lease_until")
    db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.close()
    db = open_database(path)
    try:
        assert db.query("SELECT lease_owner, lease_until FROM outbox") == []
        assert db.one("SELECT value FROM meta WHERE key = 'schema_version'")["value"] == "2"  # type: ignore[index]
    finally:
        db.close()
