"""The persistent outbox: every derived object waits here, per destination, until confirmed.

Files are written durably under `<outbox>/<job id>/`; the rows that send them and the job's
"done" are committed in one transaction, so a crash never leaves a done job without results.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from io import BytesIO
from pathlib import Path

from pydicom import Dataset

from node.config import RetrySettings
from node.files import modified_before, write_atomically
from node.records import Job
from node.retry import retry_delay
from node.store import Database
from node.store import jobs as jobs_table
from node.store import outbox as table
from node.store.outbox import DELIVERED, FAILED, PENDING, OutboxItem

__all__ = ["DELIVERED", "FAILED", "PENDING", "Outbox", "OutboxItem", "encode", "optional_kind", "wanted_by"]
MAX_ERROR = 2000  # characters of an error kept

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
        owner: str | None = None,
    ) -> int:
        """Write the job's results, queue them for each destination and mark the job done.

        `overlays` maps a destination to the optional kinds it takes (GSPS, secondary capture,
        radiograph SEG: `optional_kind`); other destinations get none of those objects. With
        `owner`, the worker's lease is checked in the same transaction (LeaseLost: its files are
        removed again, and the worker that took the job over stages its own results once).
        """
        overlays = overlays or {}
        files = []
        for ds in datasets:
            path = self.root / str(job.id) / f"{ds.SOPInstanceUID}.dcm"
            write_atomically(path, encode(ds))
            files.append((path, str(ds.SOPInstanceUID), str(ds.SOPClassUID), ds))
        objects = [
            (destination, path, sop_uid, sop_class)
            for destination in job.destinations
            for path, sop_uid, sop_class, ds in files
            if wanted_by(overlays.get(destination, ()), ds)
        ]
        try:
            with self.db.transaction() as sql:
                jobs_table.check_holds(sql, job.id, owner)
                table.add(sql, job, objects, now)
                jobs_table.mark_finished(sql, job.id, jobs_table.DONE, summary, now)
        except jobs_table.LeaseLost:
            for path, *_ in files:
                path.unlink(missing_ok=True)  # random UIDs of this attempt: no other worker's files
            raise
        return len(objects)

    def due(self, destination: str, now: float, limit: int) -> list[OutboxItem]:
        return table.due(self.db, destination, now, limit)

    def claim(self, destination: str, now: float, limit: int, owner: str, lease_s: float) -> list[OutboxItem]:
        """Take due items for one dispatcher (`owner`) for `lease_s`: no other dispatcher sends
        them meanwhile; a dispatcher that dies leaves them to another when the lease lapses."""
        with self.db.transaction() as sql:
            return table.claim_due(sql, destination, now, limit, owner, now + lease_s)

    def release(self, owner_prefix: str) -> int:
        """A stopping dispatcher gives back what it claimed and did not send."""
        return table.release(self.db, owner_prefix)

    def release_gone(self, gone: Callable[[str], bool]) -> int:
        """Give back what dispatchers that are `gone` (node.owners) claimed; the items released."""
        return sum(table.release(self.db, owner) for owner in table.lease_owners(self.db) if gone(owner))

    def next_due_at(self, destination: str) -> float | None:
        return table.next_due_at(self.db, destination)

    def delivered(self, item: OutboxItem, now: float) -> None:
        """Record a delivery; a result delivered to all its destinations leaves the outbox (its
        file is patient data: the destinations hold it now)."""
        table.delivered(self.db, item.id, now)
        self._attempted(item, "delivered", now)
        if not table.waiting_for_file(self.db, item.path):
            item.path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                item.path.parent.rmdir()  # the job's folder, once its last result has left

    def states(self, ids: Sequence[int]) -> dict[int, str]:
        """The state of each of these outbox rows."""
        return table.states(self.db, ids)

    def failed_attempt(self, item: OutboxItem, error: str, now: float) -> float:
        """Record a failed delivery; returns when it will be tried again."""
        attempts = item.attempts + 1
        next_at = now + retry_delay(attempts, self.retry)
        table.failed_attempt(self.db, item.id, attempts, next_at, error[:MAX_ERROR])
        self._attempted(item, "failed", now)
        return next_at

    def give_up(self, item: OutboxItem, error: str, now: float) -> None:
        """A failure retrying cannot fix (e.g. configuration); an operator must act."""
        table.give_up(self.db, item.id, error[:MAX_ERROR])
        self._attempted(item, "given_up", now)

    def undelivered(self, job_id: int, destination: str) -> int:
        """Results of a job still waiting for (or given up on) one destination."""
        return table.undelivered(self.db, job_id, destination)

    def replaced(self, job_id: int, destination: str) -> dict[tuple[int, int], list[str]]:
        """Results this destination got from older revisions of the job's study and route:
        {(job id, revision): [SOP Instance UID, ...]}, which the job's results supersede."""
        return table.replaced(self.db, job_id, destination)

    def requeue_failed(self, now: float) -> int:
        return table.requeue_failed(self.db, now)

    def remove_orphans(self, now: float | None = None, grace_s: float = 0.0) -> int:
        """Drop result files whose rows were never committed (a worker died while staging).

        With `grace_s`, only files and folders older than that go: a worker of another process
        may be staging the newer ones now (processes sharing PostgreSQL). Returns the folders and
        files removed."""
        if not self.root.exists():
            return 0
        cutoff = (time.time() if now is None else now) - grace_s
        staged = {str(job_id) for job_id in table.staged_job_ids(self.db)}
        removed = 0
        for folder in self.root.iterdir():
            if not folder.is_dir() or (grace_s and not modified_before(folder, cutoff)):
                continue
            if folder.name not in staged:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
                continue
            if grace_s:  # a staged job's folder may hold the files of an attempt that lost its lease
                removed += self._remove_unstaged_files(folder, cutoff)
        return removed

    def remove_delivered_files(self) -> int:
        """Remove the files of results every destination has received that are still on disk: a
        dispatcher that died between recording a delivery and removing the file leaves one. They
        are patient data the destinations hold now. Reads only the (few) folders of the outbox, with
        one query per 500 of them. Returns the files removed."""
        if not self.root.exists():
            return 0
        job_ids = [int(folder.name) for folder in self.root.iterdir() if folder.is_dir() and folder.name.isdigit()]
        removed = 0
        for start in range(0, len(job_ids), 500):
            for job_id, name in table.delivered_paths(self.db, job_ids[start : start + 500]):
                path = self.root / str(job_id) / Path(name).name  # wherever the data folder is mounted
                if path.exists():
                    path.unlink(missing_ok=True)
                    removed += 1
                with contextlib.suppress(OSError):
                    path.parent.rmdir()  # the job's folder, once its last result has left
        return removed

    def _remove_unstaged_files(self, folder: Path, cutoff: float) -> int:
        named = table.staged_paths(self.db, [int(folder.name)]) if folder.name.isdigit() else set()
        removed = 0
        for path in folder.iterdir():
            if str(path) not in named and modified_before(path, cutoff):
                path.unlink(missing_ok=True)
                removed += 1
        return removed
