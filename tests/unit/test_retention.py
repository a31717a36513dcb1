"""The retention janitor (node.retention): a study goes once its work ended `retention_days` ago
and every result was delivered; nothing unfinished or undelivered is removed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from node.assembly import Assembly
from node.config import AssemblySettings, Config, JobSettings, RetrySettings
from node.dispatch.outbox import Outbox, encode
from node.jobs import JobQueue
from node.records import RouteMatch, Study
from node.retention import purge_expired
from node.spool import Spool
from node.store import Database, open_database
from tests.support import dicomgen

DAY = 86400.0
SR = "1.2.840.10008.5.1.4.1.1.88.34"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config.model_validate({"storage": {"data_dir": str(tmp_path / "data"), "retention_days": 2}})


@pytest.fixture
def node_db(config: Config) -> Database:
    return open_database(config.database_path)


def _result(study_uid: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID = SR, generate_uid(), study_uid
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _analysed(config: Config, db: Database, now: float, deliver: bool) -> tuple[str, int, Outbox]:
    """A study received, complete, its one job done at `now` with one result (delivered or not)."""
    study_uid = generate_uid()
    spool = Spool(config.spool_dir, db)
    for ds in dicomgen.ct_series(2, study_uid=study_uid, size=8):
        spool.store(encode(ds), "CT01", "assoc")
    (study,) = Assembly(db, AssemblySettings(quiet_period_s=1.0)).run_once(now + 3600)
    queue = JobQueue(db, JobSettings())
    queue.enqueue(study, RouteMatch("r", "p", ("pacs",), tuple(s.series_instance_uid for s in study.series)), now)
    job = queue.claim("w", now)
    assert job is not None
    outbox = Outbox(config.outbox_dir, db, RetrySettings())
    outbox.stage(job, [_result(study_uid)], "done", now)
    if deliver:
        (item,) = outbox.due("pacs", now, 10)
        outbox.delivered(item, now)
    return study_uid, job.id, outbox


def test_a_delivered_study_is_purged_after_the_retention_period(config: Config, node_db: Database) -> None:
    now = time.time()  # the spool stamps instances with the clock
    study_uid, job_id, _ = _analysed(config, node_db, now, deliver=True)
    assert purge_expired(config, node_db, now + DAY) == 0  # within the period: kept
    assert (config.spool_dir / study_uid).is_dir()

    assert purge_expired(config, node_db, now + 3 * DAY) == 1
    assert not (config.spool_dir / study_uid).exists()
    assert not (config.outbox_dir / str(job_id)).exists()
    assert node_db.query("SELECT 1 FROM instances WHERE study_uid = ?", (study_uid,)) == []
    assert node_db.query("SELECT 1 FROM outbox WHERE study_uid = ?", (study_uid,)) == []
    (row,) = node_db.query("SELECT route_status FROM studies WHERE study_uid = ?", (study_uid,))
    assert row["route_status"].endswith("(spool purged)")
    assert purge_expired(config, node_db, now + 4 * DAY) == 0  # once


def test_an_undelivered_result_keeps_its_study(config: Config, node_db: Database) -> None:
    now = time.time()  # the spool stamps instances with the clock
    study_uid, job_id, _ = _analysed(config, node_db, now, deliver=False)
    assert purge_expired(config, node_db, now + 30 * DAY) == 0
    assert (config.spool_dir / study_uid).is_dir() and (config.outbox_dir / str(job_id)).is_dir()


def test_an_unfinished_job_keeps_its_study(config: Config, node_db: Database) -> None:
    now = time.time()  # the spool stamps instances with the clock
    study_uid, _, _ = _analysed(config, node_db, now, deliver=True)
    # another route's job of the same revision, still queued
    JobQueue(node_db, JobSettings()).enqueue(Study(study_uid, 1, "CT01", ()), RouteMatch("other", "p", ("pacs",), ()),
                                             now)
    assert purge_expired(config, node_db, now + 30 * DAY) == 0
    assert (config.spool_dir / study_uid).is_dir()


def test_retention_off_purges_nothing(tmp_path: Path) -> None:
    config = Config.model_validate({"storage": {"data_dir": str(tmp_path / "data"), "retention_days": 0}})
    db = open_database(config.database_path)
    _analysed(config, db, time.time(), deliver=True)
    assert purge_expired(config, db, time.time() + 365 * DAY) == 0
