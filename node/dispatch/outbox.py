"""The persistent outbox: every derived object waits here, per destination, until confirmed.

Files are written durably under `<outbox>/<job id>/`; the rows that send them and the job's
"done" are committed in one transaction, so a crash never leaves a done job without results.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import Dataset

from node.config import RetrySettings
from node.db import Database
from node.jobs import DONE, mark_finished
from node.records import Job
from node.retry import retry_delay
from node.spool import write_atomically

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"

# Objects a destination receives only when its `overlays` ask for them (PS3.4 B.5 SOP classes).
OVERLAY_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.11.1": "gsps",  # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.7": "secondary_capture",
    "1.2.840.10008.5.1.4.1.1.7.1": "secondary_capture",  # multi-frame single bit
    "1.2.840.10008.5.1.4.1.1.7.2": "secondary_capture",  # multi-frame grayscale byte
    "1.2.840.10008.5.1.4.1.1.7.3": "secondary_capture",  # multi-frame grayscale word
    "1.2.840.10008.5.1.4.1.1.7.4": "secondary_capture",  # multi-frame true colour
}


SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def optional_kind(ds: Dataset) -> str | None:
    """The `overlays` entry a destination needs to receive `ds`, or None (every destination).

    A SEG without a frame of reference is a radiograph's (PS3.3 A.51: only SEGs of images in a
    patient frame of reference have one); OHIF 3.13 cannot display it, so it is opt-in.
    """
    sop_class = str(ds.SOPClassUID)
    if sop_class == SEGMENTATION_STORAGE and "FrameOfReferenceUID" not in ds:
        return "radiograph_seg"
    return OVERLAY_SOP_CLASSES.get(sop_class)


def wanted_by(overlays: Collection[str], ds: Dataset) -> bool:
    """Whether a destination with these `overlays` receives `ds`."""
    kind = optional_kind(ds)
    return kind is None or kind in overlays


@dataclass(frozen=True)
class OutboxItem:
    id: int
    job_id: int
    study_uid: str
    destination: str
    calling_ae: str
    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    attempts: int
    created_at: float = 0.0  # when the result was staged


def _item(row: sqlite3.Row) -> OutboxItem:
    return OutboxItem(
        row["id"], row["job_id"], row["study_uid"], row["destination"], row["calling_ae"],
        Path(row["path"]), row["sop_instance_uid"], row["sop_class_uid"], row["attempts"],
        row["created_at"],
    )


def encode(ds: Dataset) -> bytes:
    """Encode a dataset in the DICOM file format (PS3.10), file meta included."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class Outbox:
    def __init__(self, root: Path, db: Database, retry: RetrySettings) -> None:
        self.root = root
        self.db = db
        self.retry = retry
        # called after each delivery attempt with (item, "delivered" | "failed" | "given_up", now)
        self.on_attempt: Callable[[OutboxItem, str, float], None] | None = None

    def _attempted(self, item: OutboxItem, outcome: str, now: float) -> None:
        if self.on_attempt is not None:
            self.on_attempt(item, outcome, now)

    def stage(
        self,
        job: Job,
        datasets: Sequence[Dataset],
        summary: str,
        now: float,
        overlays: Mapping[str, Collection[str]] | None = None,
    ) -> int:
        """Write the job's results, queue them for each destination and mark the job done.

        `overlays` maps a destination to the optional kinds it takes (GSPS, secondary capture,
        radiograph SEG: `optional_kind`); other destinations get none of those objects.
        """
        overlays = overlays or {}
        files = []
        for ds in datasets:
            path = self.root / str(job.id) / f"{ds.SOPInstanceUID}.dcm"
            write_atomically(path, encode(ds))
            files.append((path, str(ds.SOPInstanceUID), str(ds.SOPClassUID), ds))
        rows = [
            (destination, path, sop_uid, sop_class)
            for destination in job.destinations
            for path, sop_uid, sop_class, ds in files
            if wanted_by(overlays.get(destination, ()), ds)
        ]
        with self.db.transaction() as conn:
            conn.executemany(
                """INSERT INTO outbox (job_id, study_uid, destination, calling_ae, path,
                sop_instance_uid, sop_class_uid, state, next_attempt_at, created_at)
                VALUES (?,?,?,?,?,?,?,?,?,?)""",
                [
                    (job.id, job.study_instance_uid, destination, job.calling_ae, str(path), sop_uid,
                     sop_class, PENDING, now, now)
                    for destination, path, sop_uid, sop_class in rows
                ],
            )
            mark_finished(conn, job.id, DONE, summary, now)
        return len(rows)

    def due(self, destination: str, now: float, limit: int) -> list[OutboxItem]:
        rows = self.db.query(
            """SELECT * FROM outbox WHERE destination = ? AND state = ? AND next_attempt_at <= ?
            ORDER BY id LIMIT ?""",
            (destination, PENDING, now, limit),
        )
        return [_item(r) for r in rows]

    def next_due_at(self, destination: str) -> float | None:
        rows = self.db.query(
            "SELECT MIN(next_attempt_at) AS t FROM outbox WHERE destination = ? AND state = ?",
            (destination, PENDING),
        )
        return rows[0]["t"] if rows else None

    def delivered(self, item: OutboxItem, now: float) -> None:
        """Record a delivery; a result delivered to all its destinations leaves the outbox (its
        file is patient data: the destinations hold it now)."""
        self.db.execute(
            """UPDATE outbox SET state = ?, attempts = attempts + 1, delivered_at = ?,
            last_error = '' WHERE id = ?""",
            (DELIVERED, now, item.id),
        )
        self._attempted(item, "delivered", now)
        waiting = self.db.query("SELECT 1 FROM outbox WHERE path = ? AND state != ? LIMIT 1",
                                (str(item.path), DELIVERED))
        if not waiting:
            item.path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                item.path.parent.rmdir()  # the job's folder, once its last result has left

    def states(self, ids: Sequence[int]) -> dict[int, str]:
        """The state of each of these outbox rows."""
        if not ids:
            return {}
        rows = self.db.query(f"SELECT id, state FROM outbox WHERE id IN ({','.join('?' * len(ids))})",
                             tuple(ids))
        return {row["id"]: row["state"] for row in rows}

    def failed_attempt(self, item: OutboxItem, error: str, now: float) -> float:
        """Record a failed delivery; returns when it will be tried again."""
        attempts = item.attempts + 1
        next_at = now + retry_delay(attempts, self.retry)
        self.db.execute(
            "UPDATE outbox SET attempts = ?, next_attempt_at = ?, last_error = ? WHERE id = ?",
            (attempts, next_at, error[:2000], item.id),
        )
        self._attempted(item, "failed", now)
        return next_at

    def give_up(self, item: OutboxItem, error: str, now: float) -> None:
        """A failure retrying cannot fix (e.g. configuration); an operator must act."""
        self.db.execute(
            "UPDATE outbox SET state = ?, attempts = attempts + 1, last_error = ? WHERE id = ?",
            (FAILED, error[:2000], item.id),
        )
        self._attempted(item, "given_up", now)

    def undelivered(self, job_id: int, destination: str) -> int:
        """Results of a job still waiting for (or given up on) one destination."""
        rows = self.db.query(
            "SELECT COUNT(*) AS n FROM outbox WHERE job_id = ? AND destination = ? AND state != ?",
            (job_id, destination, DELIVERED),
        )
        return int(rows[0]["n"])

    def replaced(self, job_id: int, destination: str) -> dict[tuple[int, int], list[str]]:
        """Results this destination got from older revisions of the job's study and route:
        {(job id, revision): [SOP Instance UID, ...]}, which the job's results supersede."""
        rows = self.db.query(
            """SELECT o.job_id, j.revision, o.sop_instance_uid FROM outbox o
            JOIN jobs j ON j.id = o.job_id
            JOIN jobs current ON current.id = ?
            WHERE o.destination = ? AND o.state = ? AND j.study_uid = current.study_uid
            AND j.route = current.route AND j.id < current.id ORDER BY o.id""",
            (job_id, destination, DELIVERED),
        )
        found: dict[tuple[int, int], list[str]] = {}
        for row in rows:
            found.setdefault((row["job_id"], row["revision"]), []).append(row["sop_instance_uid"])
        return found

    def requeue_failed(self, now: float) -> int:
        return self.db.execute(
            "UPDATE outbox SET state = ?, next_attempt_at = ? WHERE state = ?", (PENDING, now, FAILED)
        )

    def remove_orphans(self) -> int:
        """Drop result folders of jobs whose rows were never committed (crash while staging)."""
        if not self.root.exists():
            return 0
        staged = {str(r["job_id"]) for r in self.db.query("SELECT DISTINCT job_id FROM outbox")}
        removed = 0
        for folder in self.root.iterdir():
            if folder.is_dir() and folder.name not in staged:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed
