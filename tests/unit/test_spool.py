"""The spool: atomic durable writes, header parsing, duplicate detection and crash reconciliation."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from node.dispatch.outbox import encode
from node.header import MismatchedInstance
from node.spool import (
    TEMP_SUFFIX,
    OutOfSpace,
    Spool,
    UnreadableInstance,
    read_header,
    write_atomically,
)
from node.store import Database
from tests.support import dicomgen


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(TEMP_SUFFIX)]


def ct_bytes(**changes: object) -> bytes:
    (ds,) = dicomgen.ct_series(1, size=8)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return encode(ds)


# -- write_atomically ------------------------------------------------------------------------


def test_write_atomically_writes_the_bytes_and_creates_folders(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "x.dcm"
    write_atomically(target, b"payload")
    assert target.read_bytes() == b"payload"
    assert temp_files(tmp_path) == []


def test_write_atomically_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "x.dcm"
    target.write_bytes(b"old")
    write_atomically(target, b"new")
    assert target.read_bytes() == b"new"


def _raise(code: int):  # type: ignore[no-untyped-def]
    def fail(*args: object) -> None:
        raise OSError(code, os.strerror(code))

    return fail


@pytest.mark.parametrize("call", ["fsync", "write"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EIO])
def test_failed_write_raises_out_of_space_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str, code: int
) -> None:
    folder = tmp_path / "study"
    folder.mkdir()
    target = folder / "x.dcm"
    monkeypatch.setattr(f"node.files.os.{call}", _raise(code))
    with pytest.raises(OutOfSpace, match="cannot write x.dcm"):
        write_atomically(target, b"payload" * 1000)
    monkeypatch.undo()
    assert sorted(folder.iterdir()) == []


def test_failed_write_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "x.dcm"
    target.write_bytes(b"old")
    monkeypatch.setattr("node.files.os.fsync", _raise(errno.ENOSPC))
    with pytest.raises(OutOfSpace):
        write_atomically(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert temp_files(tmp_path) == []


def test_folder_whose_parent_is_a_file_is_out_of_space(tmp_path: Path) -> None:
    blocker = tmp_path / "spool"
    blocker.write_bytes(b"not a folder")
    with pytest.raises(OutOfSpace, match="cannot use"):
        write_atomically(blocker / "study" / "x.dcm", b"payload")
    assert blocker.read_bytes() == b"not a folder"
    assert temp_files(tmp_path) == []


def test_target_that_is_a_folder_leaves_no_temp_file(tmp_path: Path) -> None:
    (tmp_path / "x.dcm").mkdir()
    with pytest.raises(OutOfSpace):
        write_atomically(tmp_path / "x.dcm", b"payload")
    assert temp_files(tmp_path) == []


def test_below_the_free_space_floor_nothing_is_written(tmp_path: Path) -> None:
    target = tmp_path / "x.dcm"
    with pytest.raises(OutOfSpace, match="storage.min_free_mb"):
        write_atomically(target, b"payload", min_free_bytes=2**62)
    assert list(tmp_path.iterdir()) == []


# -- read_header -----------------------------------------------------------------------------


def test_read_header_reads_the_indexed_attributes() -> None:
    (ds,) = dicomgen.ct_series(1, size=8, description="CT Neck Bone", body_part="CSPINE")
    header = read_header(encode(ds))
    assert (header.sop_instance_uid, header.study_uid, header.series_uid) == (
        ds.SOPInstanceUID,
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
    )
    assert header.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
    assert header.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert (header.modality, header.body_part, header.series_description, header.protocol_name) == (
        "CT",
        "CSPINE",
        "CT Neck Bone",
        "CT Neck Bone",
    )
    assert header.image_type == "ORIGINAL\\PRIMARY\\AXIAL"


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"garbage" * 100, id="garbage"),
        pytest.param(b"\0" * 128 + b"DICM" + b"\xff" * 64, id="preamble-then-garbage"),
        pytest.param(b"\0" * 132, id="preamble-without-magic"),
    ],
)
def test_read_header_rejects_bytes_that_are_not_dicom(raw: bytes) -> None:
    with pytest.raises(UnreadableInstance):
        read_header(raw)


def test_read_header_rejects_a_truncated_file() -> None:
    raw = ct_bytes()
    with pytest.raises(UnreadableInstance):
        read_header(raw[:200])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"StudyInstanceUID": None}, r"no Study Instance UID \(0020,000D\)"),
        ({"SeriesInstanceUID": None}, r"no Series Instance UID \(0020,000E\)"),
        ({"StudyInstanceUID": "1.2.abc"}, r"the Study Instance UID \(0020,000D\) is not a valid UID \(7 characters\)"),
        ({"SeriesInstanceUID": "1..2"}, "not a valid UID"),
    ],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")  # pydicom, while reading
def test_read_header_rejects_missing_or_invalid_uids(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(UnreadableInstance, match=message):
        read_header(ct_bytes(**changes))


def test_read_header_rejects_a_sop_instance_uid_other_than_the_requests() -> None:
    raw = ct_bytes()
    with pytest.raises(MismatchedInstance, match="SOP Instance UID .* is not the request's"):
        read_header(raw, expected_sop_instance_uid=generate_uid())


def test_read_header_takes_the_requests_sop_instance_uid_when_the_dataset_lacks_it() -> None:
    expected = generate_uid()
    (ds,) = dicomgen.ct_series(1, size=8)
    del ds.SOPInstanceUID
    ds.file_meta.MediaStorageSOPInstanceUID = expected  # what pynetdicom writes from the C-STORE-RQ
    header = read_header(encode(ds), expected_sop_instance_uid=expected)
    assert header.sop_instance_uid == expected


def test_read_header_falls_back_to_the_media_storage_sop_class() -> None:
    header = read_header(ct_bytes(SOPClassUID=None))
    assert header.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"


# -- Spool.store and reconcile ---------------------------------------------------------------


def instance_rows(db: Database) -> list[dict]:
    return [dict(r) for r in db.query("SELECT * FROM instances ORDER BY sop_instance_uid")]


def cr() -> Dataset:
    return dicomgen.cr_image(size=8)


def test_store_writes_the_bytes_as_received_and_indexes_them(spool: Spool, db: Database) -> None:
    ds = cr()
    raw = encode(ds)
    stored = spool.store(raw, "CR01", "assoc-1", expected_sop_instance_uid=ds.SOPInstanceUID)
    assert not stored.duplicate
    assert stored.path == spool.root / ds.StudyInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    assert stored.path.read_bytes() == raw
    (row,) = instance_rows(db)
    assert (
        row["sop_instance_uid"],
        row["study_uid"],
        row["calling_ae"],
        row["association_id"],
    ) == (ds.SOPInstanceUID, ds.StudyInstanceUID, "CR01", "assoc-1")
    assert (row["digest"], row["size"], row["path"]) == ("", len(raw), str(stored.path))
    (study,) = db.query("SELECT * FROM studies")
    assert (study["study_uid"], study["pending"], study["calling_ae"]) == (
        ds.StudyInstanceUID,
        1,
        "CR01",
    )


def test_identical_resend_is_a_duplicate_and_changes_nothing(spool: Spool, db: Database) -> None:
    raw = encode(cr())
    spool.store(raw, "CR01", "assoc-1")
    before = instance_rows(db)
    again = spool.store(raw, "CR02", "assoc-2")
    assert again.duplicate
    # the first resend has the stored file hashed (a new UID is stored without a digest)
    assert instance_rows(db) == [{**before[0], "digest": hashlib.sha256(raw).hexdigest()}]
    assert spool.store(raw, "CR03", "assoc-3").duplicate


def test_same_sop_instance_with_other_bytes_replaces_the_file(spool: Spool, db: Database) -> None:
    ds = cr()
    spool.store(encode(ds), "CR01", "assoc-1")
    ds.SeriesDescription = "corrected"
    changed = encode(ds)
    stored = spool.store(changed, "CR01", "assoc-2")
    assert not stored.duplicate
    assert stored.path.read_bytes() == changed
    (row,) = instance_rows(db)
    assert (row["series_description"], row["association_id"]) == ("corrected", "assoc-2")
    assert row["digest"] == hashlib.sha256(changed).hexdigest()


def test_an_instance_resent_in_another_study_moves_there(spool: Spool, db: Database) -> None:
    """A PACS correcting a study (merge, split) resends an instance with its SOP Instance UID kept
    and another Study Instance UID: the instance now belongs to the new study alone, also after a
    restart."""
    ds = cr()
    first = spool.store(encode(ds), "CR01", "assoc-1")
    ds.StudyInstanceUID = generate_uid()
    moved = spool.store(encode(ds), "PACS", "assoc-2")
    assert not moved.duplicate
    assert moved.path.parent.name == ds.StudyInstanceUID
    assert not first.path.exists()
    (row,) = instance_rows(db)
    assert (row["study_uid"], row["path"]) == (ds.StudyInstanceUID, str(moved.path))
    assert spool.reconcile() == 0
    assert [r["path"] for r in instance_rows(db)] == [str(moved.path)]


def test_reconcile_keeps_the_newer_copy_of_a_moved_instance(spool: Spool, db: Database) -> None:
    ds = cr()
    old_raw = encode(ds)
    first = spool.store(old_raw, "CR01", "assoc-1")
    ds.StudyInstanceUID = generate_uid()
    new_raw = encode(ds)
    # the process died after the moved copy was renamed into place, before its index row
    newer = spool.root / ds.StudyInstanceUID / first.path.name
    newer.parent.mkdir()
    newer.write_bytes(new_raw)
    os.utime(first.path, (1_000_000_000, 1_000_000_000))
    assert spool.reconcile() == 1
    (row,) = instance_rows(db)
    assert (row["study_uid"], row["path"]) == (ds.StudyInstanceUID, str(newer))
    assert not first.path.exists()
    # ... and after the index row, before the old copy was removed
    stale = spool.root / first.path.parent.name / first.path.name
    stale.write_bytes(old_raw)
    os.utime(stale, (1_000_000_000, 1_000_000_000))
    assert spool.reconcile() == 0
    assert not stale.exists()
    assert [r["path"] for r in instance_rows(db)] == [str(newer)]


def test_resend_of_a_file_lost_from_disk_is_written_again(spool: Spool) -> None:
    raw = encode(cr())
    first = spool.store(raw, "CR01", "assoc-1")
    first.path.unlink()
    again = spool.store(raw, "CR01", "assoc-2")
    assert not again.duplicate
    assert again.path.read_bytes() == raw


def test_store_of_unreadable_bytes_writes_nothing(spool: Spool, db: Database) -> None:
    with pytest.raises(UnreadableInstance):
        spool.store(b"garbage" * 50, "CR01", "assoc-1")
    assert list(spool.root.iterdir()) == []
    assert instance_rows(db) == []


def test_store_that_fails_for_space_indexes_nothing(
    spool: Spool, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("node.files.os.fsync", _raise(errno.ENOSPC))
    with pytest.raises(OutOfSpace):
        spool.store(encode(cr()), "CR01", "assoc-1")
    monkeypatch.undo()
    assert instance_rows(db) == []
    assert db.query("SELECT * FROM studies") == []
    assert temp_files(spool.root) == []


def test_reconcile_indexes_a_durable_file_the_index_lacks(spool: Spool, db: Database) -> None:
    ds = cr()
    raw = encode(ds)
    # renamed into place, then the process died before the index row was committed
    path = spool.root / ds.StudyInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    path.parent.mkdir(parents=True)
    path.write_bytes(raw)
    assert spool.reconcile() == 1
    (row,) = instance_rows(db)
    assert (row["sop_instance_uid"], row["path"], row["digest"]) == (ds.SOPInstanceUID, str(path), "")
    assert row["received_at"] == pytest.approx(path.stat().st_mtime)
    (study,) = db.query("SELECT * FROM studies")
    assert study["pending"] == 1
    assert spool.reconcile() == 0  # idempotent


def test_reconcile_removes_temp_files_and_keeps_indexed_ones(spool: Spool, db: Database) -> None:
    stored = spool.store(encode(cr()), "CR01", "assoc-1")
    temp = stored.path.parent / f".{generate_uid()}.dcm.0123abcd{TEMP_SUFFIX}"
    temp.write_bytes(b"half written")
    before = instance_rows(db)
    assert spool.reconcile() == 0
    assert not temp.exists()
    assert stored.path.exists()
    assert instance_rows(db) == before


def test_reconcile_sets_aside_an_unreadable_file(spool: Spool, db: Database) -> None:
    folder = spool.root / generate_uid()
    folder.mkdir()
    (folder / "broken.dcm").write_bytes(b"garbage")
    (spool.root / "stray-file").write_bytes(b"x")  # not a study folder: left alone
    assert spool.reconcile() == 0
    assert not (folder / "broken.dcm").exists()
    assert (folder / "broken.unreadable").read_bytes() == b"garbage"
    assert (spool.root / "stray-file").exists()
    assert instance_rows(db) == []
