"""Retention: spooled studies are deleted `storage.retention_days` after their work ended.

A study is purged only when it is complete, no job of it is unfinished or ended within the
period, and every result of it was delivered: nothing acknowledged or undelivered is removed.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable

from node.config import Config
from node.db import Database
from node.dispatch.outbox import DELIVERED
from node.jobs import FINAL_STATES
from node.logs import event

log = logging.getLogger("fracnode.node")


def purge_expired(config: Config, db: Database, now: float,
                  on_purged: Callable[[str, str], None] = lambda study_uid, why: None) -> int:
    """Delete the expired studies' spool and outbox files and rows; returns studies purged.
    `on_purged(study_uid, why)` follows each study's deletion (the audit trail's DICOM Study Deleted)."""
    days = config.storage.retention_days
    if days <= 0:
        return 0
    cutoff = now - days * 86400
    final = ",".join(f"'{s}'" for s in FINAL_STATES)
    rows = db.query(
        f"""SELECT s.study_uid FROM studies s WHERE s.pending = 0 AND s.last_received_at < ?
        AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.study_uid = s.study_uid
            AND (j.state NOT IN ({final}) OR j.finished_at >= ?))
        AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.study_uid = s.study_uid
            AND o.state != ?)""",
        (cutoff, cutoff, DELIVERED),
    )
    for row in rows:
        shutil.rmtree(config.spool_dir / row["study_uid"], ignore_errors=True)
        for job in db.query("SELECT id FROM jobs WHERE study_uid = ?", (row["study_uid"],)):
            shutil.rmtree(config.outbox_dir / str(job["id"]), ignore_errors=True)
        with db.transaction() as conn:
            conn.execute("DELETE FROM instances WHERE study_uid = ?", (row["study_uid"],))
            conn.execute("DELETE FROM outbox WHERE study_uid = ?", (row["study_uid"],))
            conn.execute("UPDATE studies SET route_status = route_status || ' (spool purged)'"
                         " WHERE study_uid = ?", (row["study_uid"],))
        on_purged(row["study_uid"], f"storage.retention_days ({days}) after its work ended")
    if rows:
        event(log, logging.INFO, "retention purge", studies=len(rows), retention_days=days)
    return len(rows)
