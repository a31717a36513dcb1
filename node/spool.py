"""The spool: received instances as files, written atomically and durably, and indexed.

Layout: `<spool>/<StudyInstanceUID>/<SOPInstanceUID>.dcm`, stored byte for byte as received
(file meta added by the receiver). A file is written to a temporary name, fsynced, renamed and
its directory fsynced before it is indexed; only then may the sender be told "success".
"""

from __future__ import annotations

import errno
import hashlib
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from node.db import Database

HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "BodyPartExamined",
    "SeriesDescription",
    "ProtocolName",
    "ImageType",
]
# elements are encoded in ascending tag order (PS3.5 7.1): parsing stops after the last one we index
_HEADER_TAG_NUMBERS: list[BaseTag | int] = [Tag(keyword) for keyword in HEADER_TAGS]
LAST_HEADER_TAG = max(_HEADER_TAG_NUMBERS)
TEMP_SUFFIX = ".tmp"


class SpoolError(Exception):
    """Base class of spool failures; the ingest edge maps each to a DICOM status."""


class OutOfSpace(SpoolError):
    """The spool cannot take the instance (disk full, below the free-space floor, unwritable)."""


class UnreadableInstance(SpoolError):
    """The bytes are not a DICOM dataset the node can index (missing UIDs, garbage)."""


@dataclass(frozen=True)
class Header:
    """The few attributes the node indexes; read without touching pixel data."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax_uid: str
    modality: str = ""
    body_part: str = ""
    series_description: str = ""
    protocol_name: str = ""
    image_type: str = ""


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)  # type: ignore[union-attr]
    return str(value).strip()


def _past_header(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag > LAST_HEADER_TAG


def read_header(raw: bytes, expected_sop_instance_uid: str | None = None) -> Header:
    """Parse the indexing attributes from a DICOM file's bytes (preamble + meta + dataset)."""
    try:
        # what dcmread(stop_before_pixels=True) does, but stopping at the last indexed tag
        ds = read_partial(BytesIO(raw), stop_when=_past_header, specific_tags=_HEADER_TAG_NUMBERS)
        values = {tag: _text(ds.get(tag)) for tag in HEADER_TAGS}
        transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
        media_class = str(ds.file_meta.get("MediaStorageSOPClassUID", ""))
    except (InvalidDicomError, ValueError, KeyError, EOFError, OverflowError, TypeError) as exc:
        raise UnreadableInstance(f"cannot parse the dataset: {exc}") from exc
    except Exception as exc:  # pydicom raises many kinds on garbage; all mean "cannot understand"
        raise UnreadableInstance(f"cannot parse the dataset: {type(exc).__name__}: {exc}") from exc
    sop_instance = values["SOPInstanceUID"] or (expected_sop_instance_uid or "")
    if expected_sop_instance_uid and sop_instance != expected_sop_instance_uid:
        raise UnreadableInstance(
            f"SOPInstanceUID in the dataset ({sop_instance}) differs from the request's"
            f" Affected SOP Instance UID ({expected_sop_instance_uid})"
        )
    header = Header(
        sop_class_uid=values["SOPClassUID"] or media_class,
        sop_instance_uid=sop_instance,
        study_uid=values["StudyInstanceUID"],
        series_uid=values["SeriesInstanceUID"],
        transfer_syntax_uid=transfer_syntax,
        modality=values["Modality"],
        body_part=values["BodyPartExamined"],
        series_description=values["SeriesDescription"],
        protocol_name=values["ProtocolName"],
        image_type=values["ImageType"],
    )
    for name in ("sop_instance_uid", "study_uid", "series_uid", "sop_class_uid"):
        uid = getattr(header, name)
        if not uid:
            raise UnreadableInstance(f"the dataset has no {name.replace('_', ' ')}")
        if not UID(uid).is_valid:
            raise UnreadableInstance(f"{name.replace('_', ' ')} {uid!r} is not a valid UID")
    return header


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes, min_free_bytes: int = 0) -> None:
    """Write `data` to `path` so that a crash leaves either the old file, the new file, or neither.

    Raises OutOfSpace when the disk is full, below `min_free_bytes`, or not writable; no
    temporary file is left behind in that case.
    """
    directory = path.parent
    try:
        created = not directory.exists()
        directory.mkdir(parents=True, exist_ok=True)
        if created:
            fsync_dir(directory.parent)
        if min_free_bytes:
            stat = os.statvfs(directory)
            free = stat.f_bavail * stat.f_frsize
            if free - len(data) < min_free_bytes:
                raise OutOfSpace(
                    f"only {free // 2**20} MiB free in {directory}; the node keeps"
                    f" {min_free_bytes // 2**20} MiB free (storage.min_free_mb)"
                )
    except OSError as exc:
        raise OutOfSpace(f"cannot use {directory}: {exc.strerror}") from exc
    temp = directory / f".{path.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
        fsync_dir(directory)
    except OSError as exc:
        try:
            temp.unlink(missing_ok=True)
        except OSError:
            pass
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM, errno.EFBIG):
            raise OutOfSpace(f"cannot write {path.name}: {exc.strerror}") from exc
        raise OutOfSpace(f"cannot write {path.name}: {exc}") from exc


@dataclass(frozen=True)
class Stored:
    header: Header
    path: Path
    duplicate: bool


class Spool:
    def __init__(self, root: Path, db: Database, min_free_bytes: int = 0) -> None:
        self.root = root
        self.db = db
        self.min_free_bytes = min_free_bytes
        root.mkdir(parents=True, exist_ok=True)

    def path_for(self, header: Header) -> Path:
        return self.root / header.study_uid / f"{header.sop_instance_uid}.dcm"

    def store(
        self,
        raw: bytes,
        calling_ae: str,
        association_id: str,
        expected_sop_instance_uid: str | None = None,
    ) -> Stored:
        """Make one instance durable and indexed. Re-sending identical bytes changes nothing."""
        header = read_header(raw, expected_sop_instance_uid)
        digest = hashlib.sha256(raw).hexdigest()
        path = self.path_for(header)
        existing = self.db.query(
            "SELECT digest FROM instances WHERE sop_instance_uid = ?", (header.sop_instance_uid,)
        )
        if existing and existing[0]["digest"] == digest and path.exists():
            return Stored(header, path, duplicate=True)
        write_atomically(path, raw, self.min_free_bytes)
        try:
            self._index(header, path, digest, len(raw), time.time(), calling_ae, association_id)
        except sqlite3.OperationalError as exc:
            # the index shares the disk: a full disk there is out of resources too, not a crash
            if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL:
                raise
            raise OutOfSpace(f"cannot index {path.name}: the database's disk is full") from exc
        return Stored(header, path, duplicate=False)

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
        with self.db.transaction() as conn:
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
                    raw = entry.read_bytes()
                    try:
                        header = read_header(raw)
                    except UnreadableInstance:
                        entry.rename(entry.with_suffix(".unreadable"))
                        continue
                    digest = hashlib.sha256(raw).hexdigest()
                    self._index(header, entry, digest, len(raw), entry.stat().st_mtime, "", "")
                    added += 1
        return added
