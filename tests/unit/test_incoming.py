"""An instance received in fragments: streamed to a temporary file, then durable and indexed."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from node import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from node.incoming import Incoming, SpareFile, file_meta
from node.spool import TEMP_SUFFIX, OutOfSpace, Spool, UnreadableInstance
from node.store import Database
from tests.support import dicomgen
from tests.unit.test_header import encoded, with_sequences


def received(spool: Spool, data: bytes, syntax: str, sop_class: str, sop_instance: str,
             fragment: int) -> Incoming:
    incoming = Incoming(spool, syntax, sop_class, sop_instance, "MODALITY", "assoc-1")
    for start in range(0, len(data), fragment):
        incoming.add(memoryview(data)[start : start + fragment])
    return incoming


def everything_in(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def rows(db: Database) -> list[dict]:
    return [dict(r) for r in db.query("SELECT * FROM instances ORDER BY sop_instance_uid")]


@pytest.mark.parametrize("fragment", [1, 7, 100, 4096, 1 << 30])
@pytest.mark.parametrize(
    "syntax",
    [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian],
)
def test_fragments_are_stored_as_file_meta_and_the_bytes_as_received(
    spool: Spool, db: Database, syntax: str, fragment: int
) -> None:
    ds = with_sequences(dicomgen.ct_series(1, size=16)[0], undefined=True)
    raw, offset = encoded(ds, syntax)
    data = raw[offset:]
    stored = received(spool, data, syntax, ds.SOPClassUID, ds.SOPInstanceUID, fragment).commit()

    assert not stored.duplicate
    assert stored.path == spool.root / ds.StudyInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    content = stored.path.read_bytes()
    assert content == file_meta(ds.SOPClassUID, ds.SOPInstanceUID, syntax) + data
    assert dcmread(stored.path).PixelData == ds.PixelData
    (row,) = rows(db)
    assert (row["sop_instance_uid"], row["study_uid"], row["series_uid"], row["modality"]) == (
        ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID, "CT"
    )
    assert (row["transfer_syntax_uid"], row["calling_ae"], row["association_id"]) == (
        syntax, "MODALITY", "assoc-1"
    )
    assert (row["digest"], row["size"]) == ("", len(content))  # a new UID is not hashed
    assert [p.name for p in everything_in(spool.root)] == [stored.path.name]


def test_file_meta_is_valid_part_10(tmp_path: Path) -> None:
    path = tmp_path / "meta.dcm"
    path.write_bytes(file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3.45", ImplicitVRLittleEndian))
    meta = read_file_meta_info(path)
    assert meta.FileMetaInformationVersion == b"\0\1"
    assert (meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID) == (
        "1.2.840.10008.5.1.4.1.1.2", "1.2.3.45"
    )
    assert meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert meta.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME
    assert meta.FileMetaInformationGroupLength == len(path.read_bytes()) - 132 - 12


def test_the_file_is_started_once_the_header_has_arrived(spool: Spool) -> None:
    ds = dicomgen.ct_series(1, size=64)[0]
    raw, offset = encoded(ds)
    data = raw[offset:]
    incoming = Incoming(spool, ExplicitVRLittleEndian, ds.SOPClassUID, ds.SOPInstanceUID, "M", "a")
    incoming.add(data[:1000])  # the indexed attributes are all in here
    (temp,) = everything_in(spool.root)
    assert temp.name.endswith(TEMP_SUFFIX) and temp.parent.name == ds.StudyInstanceUID
    incoming.add(data[1000:])
    stored = incoming.commit()
    assert everything_in(spool.root) == [stored.path]


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian])
def test_garbage_is_refused_and_nothing_is_left(spool: Spool, db: Database, syntax: str) -> None:
    incoming = Incoming(spool, syntax, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "M", "a")
    with pytest.raises(UnreadableInstance):
        incoming.add(bytes(range(7, 256)) * 40)
        incoming.commit()
    incoming.discard()
    assert everything_in(spool.root) == []
    assert rows(db) == []


def test_a_data_set_without_study_uid_is_refused_before_a_file_is_made(spool: Spool) -> None:
    ds = dicomgen.ct_series(1, size=16)[0]
    del ds.StudyInstanceUID
    raw, offset = encoded(ds)
    incoming = Incoming(spool, ExplicitVRLittleEndian, ds.SOPClassUID, ds.SOPInstanceUID, "M", "a")
    with pytest.raises(UnreadableInstance, match="no Study Instance UID"):
        incoming.add(raw[offset:])
    incoming.discard()
    assert everything_in(spool.root) == []


def _raise(code: int):  # type: ignore[no-untyped-def]
    def fail(*args: object) -> None:
        raise OSError(code, os.strerror(code))

    return fail


@pytest.mark.parametrize(("call", "code"), [("writev", errno.ENOSPC), ("write", errno.EDQUOT),
                                            ("fsync", errno.ENOSPC), ("fsync", errno.EIO),
                                            ("replace", errno.EROFS)])
def test_a_failed_write_is_out_of_space_and_leaves_no_temporary_file(
    spool: Spool, db: Database, monkeypatch: pytest.MonkeyPatch, call: str, code: int
) -> None:
    ds = dicomgen.ct_series(1, size=64)[0]
    raw, offset = encoded(ds)
    data = raw[offset:]
    (spool.root / ds.StudyInstanceUID).mkdir()  # the failure is in the instance's own writes
    incoming = Incoming(spool, ExplicitVRLittleEndian, ds.SOPClassUID, ds.SOPInstanceUID, "M", "a")
    monkeypatch.setattr(f"node.incoming.os.{call}", _raise(code))
    if call == "write":  # a short writev leaves the rest to os.write
        monkeypatch.setattr("node.incoming.os.writev", lambda fd, buffers: 1)
    with pytest.raises(OutOfSpace, match=f"cannot write {ds.SOPInstanceUID}.dcm"):
        incoming.add(data[:2000])
        incoming.add(data[2000:])
        incoming.commit()
    incoming.discard()
    monkeypatch.undo()
    assert everything_in(spool.root) == []
    assert rows(db) == []


def test_below_the_free_space_floor_the_instance_is_refused(tmp_path: Path, db: Database) -> None:
    spool = Spool(tmp_path / "spool", db, min_free_bytes=2**62)
    ds = dicomgen.ct_series(1, size=16)[0]
    raw, offset = encoded(ds)
    incoming = received(spool, raw[offset:], ExplicitVRLittleEndian, ds.SOPClassUID, ds.SOPInstanceUID, 512)
    with pytest.raises(OutOfSpace, match="storage.min_free_mb"):
        incoming.commit()
    assert everything_in(spool.root) == []
    assert rows(db) == []


def test_identical_resend_is_a_duplicate_and_a_changed_one_replaces(spool: Spool, db: Database) -> None:
    ds = dicomgen.ct_series(1, size=16)[0]
    raw, offset = encoded(ds)
    first = received(spool, raw[offset:], ExplicitVRLittleEndian, ds.SOPClassUID, ds.SOPInstanceUID, 300)
    path = first.commit().path
    before = rows(db)
    assert before[0]["digest"] == ""
    again = received(spool, raw[offset:], ExplicitVRLittleEndian, ds.SOPClassUID, ds.SOPInstanceUID, 300)
    assert again.commit().duplicate
    # the resend had the stored file hashed; nothing else changed
    assert rows(db) == [{**before[0], "digest": hashlib.sha256(path.read_bytes()).hexdigest()}]
    assert len(everything_in(spool.root)) == 1

    ds.SeriesDescription = "corrected"
    raw, offset = encoded(ds)
    changed = received(spool, raw[offset:], ExplicitVRLittleEndian, ds.SOPClassUID, ds.SOPInstanceUID, 300)
    stored = changed.commit()
    assert not stored.duplicate
    (row,) = rows(db)
    assert row["series_description"] == "corrected"
    assert row["digest"] == hashlib.sha256(stored.path.read_bytes()).hexdigest()
    assert dcmread(stored.path).SeriesDescription == "corrected"


def test_an_instance_resent_in_another_study_leaves_no_copy_behind(spool: Spool, db: Database) -> None:
    ds = dicomgen.ct_series(1, size=16)[0]
    raw, offset = encoded(ds)
    received(spool, raw[offset:], ExplicitVRLittleEndian, ds.SOPClassUID, ds.SOPInstanceUID, 300).commit()
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.77"
    raw, offset = encoded(ds)
    moved = received(spool, raw[offset:], ExplicitVRLittleEndian, ds.SOPClassUID, ds.SOPInstanceUID, 300)
    stored = moved.commit()
    assert everything_in(spool.root) == [stored.path]
    (row,) = rows(db)
    assert (row["study_uid"], row["path"]) == (ds.StudyInstanceUID, str(stored.path))


@pytest.mark.parametrize("changed", [False, True])
def test_a_uid_indexed_while_the_instance_was_under_way_is_still_compared(
    spool: Spool, db: Database, changed: bool
) -> None:
    """Not hashed on the way (the UID was new when it started), the temporary file is hashed."""
    ds = dicomgen.ct_series(1, size=16)[0]
    raw, offset = encoded(ds)
    late = Incoming(spool, ExplicitVRLittleEndian, ds.SOPClassUID, ds.SOPInstanceUID, "M", "slow")
    received(spool, raw[offset:], ExplicitVRLittleEndian, ds.SOPClassUID, ds.SOPInstanceUID, 300).commit()
    if changed:
        ds.SeriesDescription = "corrected"
        raw, offset = encoded(ds)
    late.add(raw[offset:])
    stored = late.commit()
    assert stored.duplicate is not changed
    (row,) = rows(db)
    assert row["association_id"] == ("slow" if changed else "assoc-1")
    assert row["digest"] == hashlib.sha256(stored.path.read_bytes()).hexdigest()
    assert everything_in(spool.root) == [stored.path]


def test_discard_of_a_started_file_leaves_nothing(spool: Spool) -> None:
    ds = dicomgen.ct_series(1, size=64)[0]
    raw, offset = encoded(ds)
    incoming = Incoming(spool, ExplicitVRLittleEndian, ds.SOPClassUID, ds.SOPInstanceUID, "M", "a")
    incoming.add(raw[offset : offset + 3000])
    assert everything_in(spool.root)
    incoming.discard()
    assert everything_in(spool.root) == []


def test_a_spare_file_in_the_instances_folder_becomes_its_temporary_file(spool: Spool) -> None:
    first, second = dicomgen.ct_series(2, size=16)
    spare = SpareFile()
    spare.prepare(spool.root / first.StudyInstanceUID)
    (made,) = everything_in(spool.root)
    assert made.name.endswith(TEMP_SUFFIX)
    raw, offset = encoded(second)
    incoming = Incoming(spool, ExplicitVRLittleEndian, second.SOPClassUID, second.SOPInstanceUID, "M", "a",
                        spare=spare)
    incoming.add(raw[offset:])
    assert everything_in(spool.root) == [made]  # written into the spare, no other file made
    stored = incoming.commit()
    assert everything_in(spool.root) == [stored.path]
    assert stored.path.read_bytes()[132 + 12:].endswith(raw[offset:])
    spare.close()  # nothing left to remove
    assert everything_in(spool.root) == [stored.path]


def test_a_spare_in_another_folder_is_kept_and_close_removes_it(spool: Spool) -> None:
    (ds,) = dicomgen.ct_series(1, size=16)
    spare = SpareFile()
    spare.prepare(spool.root / "another-study")
    spare.prepare(spool.root / "another-study")  # one spare per folder, not one per call
    (made,) = everything_in(spool.root)
    raw, offset = encoded(ds)
    stored = received_with(spool, raw[offset:], ds, spare).commit()
    assert sorted(everything_in(spool.root)) == sorted([made, stored.path])
    spare.prepare(stored.path.parent)  # moves to the new folder
    assert len(everything_in(spool.root)) == 2 and made not in everything_in(spool.root)
    spare.close()
    assert everything_in(spool.root) == [stored.path]


def test_a_spare_that_cannot_be_made_is_no_error(tmp_path: Path, db: Database) -> None:
    spool = Spool(tmp_path / "spool", db)
    (spool.root / "a-file").write_bytes(b"")
    spare = SpareFile()
    spare.prepare(spool.root / "a-file")  # a folder whose name is taken by a file
    assert spare.take(spool.root / "a-file" / "x.dcm") is None


def received_with(spool: Spool, data: bytes, ds, spare: SpareFile) -> Incoming:
    incoming = Incoming(spool, ExplicitVRLittleEndian, ds.SOPClassUID, ds.SOPInstanceUID, "M", "a", spare=spare)
    incoming.add(data)
    return incoming
