"""The spool: received instances as files, written atomically and durably, and indexed.

Layout: `<spool>/<StudyInstanceUID>/<SOPInstanceUID>.dcm`, stored byte for byte as received
(file meta added by the receiver). A file is written to a temporary name, fsynced, renamed and
its directory fsynced before it is indexed; only then may the sender be told "success".

An index row's `digest` (sha256 of the file) is what makes a resend idempotent: identical bytes
are a duplicate, different bytes replace the instance. It is computed when it is needed, not for
every instance: an instance whose SOP Instance UID is not yet indexed is stored with digest ''
(hashing is a sixth of the receiver's CPU time per instance), and the stored file is hashed the
first time a resend of its UID arrives.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from node import owners
from node.files import (
    TEMP_SUFFIX,
    OutOfSpace,
    file_digest,
    fsync_dir,
    modified_before,
    private,
    private_dirs,
    write_atomically,
)
from node.header import Header, UnreadableInstance
from node.logs import event
from node.part10 import read_header, scan_file
from node.records import Instance
from node.scan import ScanLimits
from node.store import Database, StorageFull, instances, studies

# what the spool's callers (ingest, incoming, pulls) meet: its failures and the writes it uses
__all__ = [
    "TEMP_SUFFIX",
    "Header",
    "OutOfSpace",
    "Spool",
    "Stored",
    "UnreadableInstance",
    "read_header",
    "write_atomically",
]
log = logging.getLogger("fracnode.spool")


@dataclass(frozen=True)
class Stored:
    header: Header
    path: Path
    duplicate: bool


class Spool:
    def __init__(self, root: Path, db: Database, min_free_bytes: int = 0, limits: ScanLimits | None = None) -> None:
        self.root = root
        self.db = db
        self.min_free_bytes = min_free_bytes
        self.limits = limits or ScanLimits()  # what a data set may be (node.scan)
        private_dirs(root)
        private(root)

    def path_for(self, header: Header) -> Path:
        return self.root / header.study_uid / f"{header.sop_instance_uid}.dcm"

    def store(
        self,
        raw: bytes,
        calling_ae: str,
        association_id: str,
        expected_sop_instance_uid: str | None = None,
        check: Callable[[Header], None] | None = None,
    ) -> Stored:
        """Make one whole instance (a DICOM file in memory) durable and indexed. Re-sending
        identical bytes changes nothing.

        The data set is scanned to its end first (UnreadableInstance unless whole); `check` sees
        the header before anything is written and may raise to refuse the instance.
        """
        header = read_header(raw, expected_sop_instance_uid, self.limits)
        if check is not None:
            check(header)
        path = self.path_for(header)
        held = self.held_digest(header.sop_instance_uid, path)
        digest = hashlib.sha256(raw).hexdigest() if held is not None else ""
        if held == digest:  # digest is '' exactly when nothing is held
            return Stored(header, path, duplicate=True)
        write_atomically(path, raw, self.min_free_bytes)
        self.index(header, path, digest, len(raw), calling_ae, association_id)
        return Stored(header, path, duplicate=False)

    def is_indexed(self, sop_instance_uid: str) -> bool:
        return instances.is_indexed(self.db, sop_instance_uid)

    def held_digest(self, sop_instance_uid: str, path: Path) -> str | None:
        """The digest of the instance already stored at `path` under this UID; None when there is
        none (then an arriving instance is new and needs no digest). A digest not yet computed is
        computed from the file now and kept."""
        held = instances.held(self.db, sop_instance_uid)
        if held is None or held.path != str(path) or not path.exists():
            return None
        if held.digest:
            return held.digest
        try:
            digest = file_digest(path)
        except OSError:
            return None
        instances.set_digest(self.db, sop_instance_uid, path, digest)
        return digest

    def index(self, header: Header, path: Path, digest: str, size: int, calling_ae: str, association_id: str) -> None:
        """Commit the index row of a file already durable at `path` (`digest` '': not computed).

        An instance that was held in another study's folder (a study corrected at the PACS and
        resent) now belongs to this one alone: the old copy is removed once the row is committed.
        """
        try:
            self._index(header, path, digest, size, time.time(), calling_ae, association_id)
        except StorageFull as exc:
            # the index shares the disk: a full disk there is out of resources too, not a crash
            raise OutOfSpace(f"cannot index {path.name}: the database's disk is full") from exc

    def _index(
        self,
        header: Header,
        path: Path,
        digest: str,
        size: int,
        now: float,
        calling_ae: str,
        association_id: str,
    ) -> None:
        """Insert or replace the instance's row; once it is committed, remove the file the row
        held before when that is another (the older copy of a moved instance)."""
        instance = Instance(
            header.sop_instance_uid,
            header.sop_class_uid,
            header.study_uid,
            header.series_uid,
            header.transfer_syntax_uid,
            path,
            digest,
            size,
            now,
            calling_ae,
            association_id,
            header.modality,
            header.body_part,
            header.series_description,
            header.protocol_name,
            header.image_type,
        )
        with self.db.transaction() as sql:
            held = instances.held(sql, header.sop_instance_uid)
            instances.put(sql, instance)
            studies.received(sql, header.study_uid, calling_ae, now)
        if held is not None and held.path != str(path):
            _remove_superseded(Path(held.path), header.sop_instance_uid, path)

    def reconcile(self, now: float | None = None, grace_s: float = 0.0) -> int:
        """After a crash: drop temporary files and index any durable file the index lacks.

        Returns the number of files indexed anew. A file renamed into place whose index row
        was not committed was never acknowledged, but it is kept and processed all the same.
        With `grace_s`, only files older than that are touched: listeners of other processes
        may be writing the newer ones now (processes sharing PostgreSQL and the spool); the
        temporary files of a process of this host that is gone go at once (node.owners).
        """
        cutoff = (time.time() if now is None else now) - grace_s
        indexed = instances.indexed_paths(self.db)
        added = 0
        for study_dir in self.root.iterdir():
            if not study_dir.is_dir():
                continue
            for entry in study_dir.iterdir():
                old = not grace_s or modified_before(entry, cutoff)
                if entry.name.endswith(TEMP_SUFFIX):
                    if old or owners.gone(owners.found_in(entry.name) or ""):
                        entry.unlink(missing_ok=True)  # a dead process's unfinished write
                elif old and entry.suffix == ".dcm" and str(entry) not in indexed:
                    added += self._index_found(entry)
        return added

    def _index_found(self, entry: Path) -> int:
        """Index a durable file the index lacks; 1 when it was indexed."""
        try:
            header, size = scan_file(entry, self.limits)  # in pieces: no file is read whole
        except FileNotFoundError:
            return 0  # an older copy of a moved instance, removed a moment ago
        except UnreadableInstance as exc:
            entry.rename(entry.with_suffix(".unreadable"))
            event(
                log,
                logging.WARNING,
                "spooled file is not a whole instance; renamed",
                path=str(entry.with_suffix(".unreadable")),
                reason=str(exc),
            )
            return 0
        newer = self._newer_copy(header.sop_instance_uid, entry)
        if newer is not None:
            _remove_superseded(entry, header.sop_instance_uid, newer)
            return 0
        self._index(header, entry, "", size, entry.stat().st_mtime, "", "")
        return 1

    def _newer_copy(self, sop_instance_uid: str, entry: Path) -> Path | None:
        """The file the index holds for this UID at another path when it is at least as new as
        `entry` (then `entry` is an older copy of a moved instance), else None."""
        copy = instances.held(self.db, sop_instance_uid)
        if copy is None or copy.path == str(entry):
            return None
        held = Path(copy.path)
        try:
            return held if held.stat().st_mtime >= entry.stat().st_mtime else None
        except FileNotFoundError:
            return None


def _remove_superseded(path: Path, sop_instance_uid: str, kept: Path) -> None:
    """Remove the older copy of an instance held now in another study's folder (`kept`)."""
    try:
        path.unlink()
        fsync_dir(path.parent)
    except FileNotFoundError:
        return  # gone already (retention, or removed by hand)
    except OSError as exc:
        # left on disk it is harmless now: reconcile finds the newer copy indexed and removes it
        event(
            log,
            logging.WARNING,
            "could not remove the older copy of a moved instance",
            sop_instance_uid=sop_instance_uid,
            path=str(path),
            reason=exc.strerror,
        )
        return
    event(
        log,
        logging.INFO,
        "instance moved to another study",
        sop_instance_uid=sop_instance_uid,
        removed=str(path),
        kept=str(kept),
    )
