"""Retention: spooled studies are deleted `storage.retention_days` after their work ended.

A study is purged only when it is complete, no job of it is unfinished or ended within the
period, and every result of it was delivered: nothing acknowledged or undelivered is removed.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable

from node.config import Config
from node.logs import event
from node.store import Database, instances, jobs, outbox, studies

log = logging.getLogger("fracnode.node")


def purge_expired(config: Config, db: Database, now: float,
                  on_purged: Callable[[str, str], None] = lambda study_uid, why: None) -> int:
    """Delete the expired studies' spool and outbox files and rows; returns studies purged.
    `on_purged(study_uid, why)` follows each study's deletion (the audit trail's DICOM Study Deleted)."""
    days = config.storage.retention_days
    if days <= 0:
        return 0
    cutoff = now - days * 86400
    expired = studies.purgeable(db, cutoff, jobs.FINAL_STATES, outbox.DELIVERED)
    for study_uid in expired:
        shutil.rmtree(config.spool_dir / study_uid, ignore_errors=True)
        for job_id in jobs.ids_of_study(db, study_uid):
            shutil.rmtree(config.outbox_dir / str(job_id), ignore_errors=True)
        with db.transaction() as sql:
            instances.delete_study(sql, study_uid)
            outbox.delete_study(sql, study_uid)
            studies.mark_purged(sql, study_uid)
        on_purged(study_uid, f"storage.retention_days ({days}) after its work ended")
    if expired:
        event(log, logging.INFO, "retention purge", studies=len(expired), retention_days=days)
    return len(expired)
