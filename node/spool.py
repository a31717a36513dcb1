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

import errno
import hashlib
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from node.db import Database
from node.header import Header, UnreadableInstance
from node.logs import event
from node.part10 import read_header, scan_file
from node.scan import ScanLimits

__all__ = [
    "Header", "OutOfSpace", "Spool", "SpoolError", "Stored", "UnreadableInstance", "fsync_dir",
    "read_header", "write_atomically",
]
log = logging.getLogger("fracnode.spool")
TEMP_SUFFIX = ".tmp"
HASH_CHUNK = 1 << 20


class SpoolError(Exception):
    """Base class of spool failures; the ingest edge maps each to a DICOM status."""


class OutOfSpace(SpoolError):
    """The spool cannot take the instance (disk full, below the free-space floor, unwritable)."""


def private(path: Path) -> None:
    """Make an existing folder (0700) or file (0600) the node's user's alone: state is patient data."""
    try:
        path.chmod(0o700 if path.is_dir() else 0o600)
    except OSError as exc:
        event(log, logging.WARNING, "cannot make private", path=str(path), reason=exc.strerror)


def private_dirs(directory: Path) -> None:
    """`directory` and its missing parents, each 0700 (mkdir(parents=True) gives parents the
    umask's mode): what they will hold is patient data."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_directory(directory: Path) -> None:
    """Create `directory` (and parents) if missing, durably: a new entry is fsynced in its parent."""
    try:
        if directory.is_dir():
            return
        private_dirs(directory)
        fsync_dir(directory.parent)
    except OSError as exc:
        raise OutOfSpace(f"cannot use {directory}: {exc.strerror}") from exc


def check_free_space(directory: Path, size: int, min_free_bytes: int) -> None:
    """Raise OutOfSpace when `size` more bytes would leave less than `min_free_bytes` free."""
    if not min_free_bytes:
        return
    try:
        stat = os.statvfs(directory)
    except OSError as exc:
        raise OutOfSpace(f"cannot use {directory}: {exc.strerror}") from exc
    free = stat.f_bavail * stat.f_frsize
    if free - size < min_free_bytes:
        raise OutOfSpace(
            f"only {free // 2**20} MiB free in {directory}; the node keeps"
            f" {min_free_bytes // 2**20} MiB free (storage.min_free_mb)"
        )


def file_digest(path: Path) -> str:
    """The sha256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def temporary_path(path: Path) -> Path:
    """A fresh temporary name beside `path`; `Spool.reconcile` removes leftovers after a crash."""
    return path.parent / f".{path.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}"


def write_failure(path: Path, exc: OSError) -> OutOfSpace:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM, errno.EFBIG):
        return OutOfSpace(f"cannot write {path.name}: {exc.strerror}")
    return OutOfSpace(f"cannot write {path.name}: {exc}")


def create_temporary(path: Path) -> tuple[int, Path]:
    """An empty temporary file beside `path`, open for writing: (descriptor, its path)."""
    make_directory(path.parent)
    temp = temporary_path(path)
    try:
        return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), temp
    except OSError as exc:
        raise write_failure(path, exc) from exc


def remove_temporary(fd: int, temp: Path | None) -> None:
    """Close a temporary file's descriptor (-1: none) and remove the file, ignoring failures."""
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass
    if temp is not None:
        try:
            temp.unlink(missing_ok=True)
        except OSError:
            pass


def write_atomically(path: Path, data: bytes, min_free_bytes: int = 0) -> None:
    """Write `data` to `path` so that a crash leaves either the old file, the new file, or neither.

    Raises OutOfSpace when the disk is full, below `min_free_bytes`, or not writable; no
    temporary file is left behind in that case.
    """
    directory = path.parent
    make_directory(directory)
    check_free_space(directory, len(data), min_free_bytes)
    fd, temp = create_temporary(path)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(temp, path)
        fsync_dir(directory)
    except OSError as exc:
        remove_temporary(fd, temp)
        raise write_failure(path, exc) from exc


@dataclass(frozen=True)
class Stored:
    header: Header
    path: Path
    duplicate: bool


class Spool:
    def __init__(self, root: Path, db: Database, min_free_bytes: int = 0,
                 limits: ScanLimits | None = None) -> None:
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
        rows = self.db.query("SELECT 1 FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,))
        return bool(rows)

    def held_digest(self, sop_instance_uid: str, path: Path) -> str | None:
        """The digest of the instance already stored at `path` under this UID; None when there is
        none (then an arriving instance is new and needs no digest). A digest not yet computed is
        computed from the file now and kept."""
        rows = self.db.query(
            "SELECT digest, path FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
        )
        if not rows or rows[0]["path"] != str(path) or not path.exists():
            return None
        if rows[0]["digest"]:
            return str(rows[0]["digest"])
        try:
            digest = file_digest(path)
        except OSError:
            return None
        self.db.execute(
            "UPDATE instances SET digest = ? WHERE sop_instance_uid = ? AND path = ? AND digest = ''",
            (digest, sop_instance_uid, str(path)),
        )
        return digest

    def index(
        self, header: Header, path: Path, digest: str, size: int, calling_ae: str, association_id: str
    ) -> None:
        """Commit the index row of a file already durable at `path` (`digest` '': not computed).

        An instance that was held in another study's folder (a study corrected at the PACS and
        resent) now belongs to this one alone: the old copy is removed once the row is committed.
        """
        try:
            self._index(header, path, digest, size, time.time(), calling_ae, association_id)
        except sqlite3.OperationalError as exc:
            # the index shares the disk: a full disk there is out of resources too, not a crash
            if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL:
                raise
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
        with self.db.transaction() as conn:
            held = conn.execute(
                "SELECT path FROM instances WHERE sop_instance_uid = ?", (header.sop_instance_uid,)
            ).fetchone()
            conn.execute(
                """INSERT OR REPLACE INTO instances (sop_instance_uid, sop_class_uid, study_uid,
                series_uid, transfer_syntax_uid, modality, body_part, series_description,
                protocol_name, image_type, path, digest, size, received_at, calling_ae,
                association_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
                (
                    header.sop_instance_uid,
                    header.sop_class_uid,
                    header.study_uid,
                    header.series_uid,
                    header.transfer_syntax_uid,
                    header.modality,
                    header.body_part,
                    header.series_description,
                    header.protocol_name,
                    header.image_type,
                    str(path),
                    digest,
                    size,
                    now,
                    calling_ae,
                    association_id,
                ),
            )
            conn.execute(
                """INSERT INTO studies (study_uid, calling_ae, first_received_at, last_received_at,
                pending) VALUES (?, ?, ?, ?, 1)
                ON CONFLICT (study_uid) DO UPDATE SET last_received_at = excluded.last_received_at,
                calling_ae = COALESCE(NULLIF(excluded.calling_ae, ''), calling_ae), pending = 1,
                release_ready = 0""",
                (header.study_uid, calling_ae, now, now),
            )
        if held is not None and held["path"] != str(path):
            _remove_superseded(Path(held["path"]), header.sop_instance_uid, path)

    def reconcile(self) -> int:
        """After a crash: drop temporary files and index any durable file the index lacks.

        Returns the number of files indexed anew. A file renamed into place whose index row
        was not committed was never acknowledged, but it is kept and processed all the same.
        """
        indexed = {row["path"] for row in self.db.query("SELECT path FROM instances")}
        added = 0
        for study_dir in self.root.iterdir():
            if not study_dir.is_dir():
                continue
            for entry in study_dir.iterdir():
                if entry.name.endswith(TEMP_SUFFIX):
                    entry.unlink(missing_ok=True)
                elif entry.suffix == ".dcm" and str(entry) not in indexed:
                    try:
                        header, size = scan_file(entry, self.limits)  # in pieces: no file is read whole
                    except FileNotFoundError:
                        continue  # an older copy of a moved instance, removed a moment ago
                    except UnreadableInstance as exc:
                        entry.rename(entry.with_suffix(".unreadable"))
                        event(log, logging.WARNING, "spooled file is not a whole instance; renamed",
                              path=str(entry.with_suffix(".unreadable")), reason=str(exc))
                        continue
                    newer = self._newer_copy(header.sop_instance_uid, entry)
                    if newer is not None:
                        _remove_superseded(entry, header.sop_instance_uid, newer)
                        continue
                    self._index(header, entry, "", size, entry.stat().st_mtime, "", "")
                    added += 1
        return added

    def _newer_copy(self, sop_instance_uid: str, entry: Path) -> Path | None:
        """The file the index holds for this UID at another path when it is at least as new as
        `entry` (then `entry` is an older copy of a moved instance), else None."""
        rows = self.db.query("SELECT path FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,))
        if not rows or rows[0]["path"] == str(entry):
            return None
        held = Path(rows[0]["path"])
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
        event(log, logging.WARNING, "could not remove the older copy of a moved instance",
              sop_instance_uid=sop_instance_uid, path=str(path), reason=exc.strerror)
        return
    event(log, logging.INFO, "instance moved to another study", sop_instance_uid=sop_instance_uid,
          removed=str(path), kept=str(kept))
