"""The results folder (`type: folder` destinations): a layout a person can read.

    <path>/README.txt                                   what is where (written once)
    <path>/<StudyInstanceUID>/SR_9001_<SOPInstanceUID>.dcm      kind, series number, SOP Instance UID
    <path>/<StudyInstanceUID>/SEG_9002_<SOPInstanceUID>.dcm
    <path>/<StudyInstanceUID>/superseded/job<id>-rev<revision>/...   results a newer analysis replaced

A study analysed again (new instances, or an operator's request) gets a new revision; once every
result of the new revision is in the folder, the older revision's files of the same route are moved
into `superseded/`, so the study folder holds the current results only. Names carry UIDs, series
numbers and kinds, never patient data (the series numbers are the node's own, from sr_templates/).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pydicom import dcmread

from node.files import fsync_dir, make_directory

# SOP Class UID (PS3.4 B.5) → the kind a file name starts with
KINDS = {
    "1.2.840.10008.5.1.4.1.1.88.11": "SR",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22": "SR",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33": "SR",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34": "SR",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.66.4": "SEG",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.11.1": "GSPS",  # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.7": "SC",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.88.59": "KO",  # Key Object Selection
}
SUPERSEDED = "superseded"
README = """fracnode results folder
=======================

One folder per study, named by its Study Instance UID. In it, the DICOM objects fracnode made,
named KIND_SERIES_SOPINSTANCEUID.dcm:

  SR    the structured report (TID 1500): findings, probabilities, regions
  SEG   the segmentation (fracture regions, or vertebrae C1-C7 for a CT)
  GSPS  a presentation state drawing the regions on the image (when a destination asks)
  SC    a secondary capture with the regions burned in (when a destination asks)

SERIES is the result's Series Number. When a study is analysed again (new images arrived, or
an operator asked), the earlier results are moved to superseded/job<ID>-rev<REVISION>/ once the
new ones are all here. The dashboard (Studies) shows the same results with a preview.

AI results: not for diagnostic use.
"""


def kind(sop_class_uid: str, modality: str) -> str:
    return KINDS.get(sop_class_uid) or (modality or "DICOM").upper()


def file_name(source: Path, sop_instance_uid: str, sop_class_uid: str) -> str:
    """KIND_SERIES_SOPINSTANCEUID.dcm for the result object in `source` (its header is read)."""
    header = dcmread(source, stop_before_pixels=True, specific_tags=["Modality", "SeriesNumber"])
    series = header.get("SeriesNumber")
    number = str(series) if series not in (None, "") else "0"
    return f"{kind(sop_class_uid, str(header.get('Modality', '')))}_{number}_{sop_instance_uid}.dcm"


def write_readme(root: Path) -> None:
    """The README.txt at the folder's root, once (an operator may edit or remove it)."""
    path = root / "README.txt"
    if not path.exists():
        make_directory(root)
        path.write_text(README, encoding="utf-8")


def held(study_folder: Path, sop_instance_uid: str) -> Path | None:
    """The current file of a result in a study folder, by its SOP Instance UID (any name form)."""
    for pattern in (f"*_{sop_instance_uid}.dcm", f"{sop_instance_uid}.dcm"):
        found = next(iter(study_folder.glob(pattern)), None)
        if found is not None:
            return found
    return None


def set_aside(study_folder: Path, job_id: int, revision: int, sop_instance_uids: list[str]) -> int:
    """Move an older revision's results into superseded/job<id>-rev<revision>/; returns files moved."""
    target = study_folder / SUPERSEDED / f"job{job_id}-rev{revision}"
    moved = 0
    for uid in sop_instance_uids:
        current = held(study_folder, uid)
        if current is None:
            continue  # moved already, or removed by a person
        make_directory(target)
        os.replace(current, target / current.name)
        moved += 1
    if moved:
        fsync_dir(target)
        fsync_dir(study_folder)
    return moved


def writable_problem(folder: Path) -> str:
    """Why the node could not write results into `folder`, or "" when it can.

    The folder (or, when missing, the nearest existing folder above it, where it would be created)
    is probed by creating and removing a file, as the node's user: permission bits, read-only
    mounts and ACLs all count, and root's privileges are not mistaken for a writable path.
    """
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            return f"{folder}: no existing folder above it"
        existing = existing.parent
    if not existing.is_dir():
        return f"{folder}: {existing} is a file, not a folder"
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".fracnode-write-check-"):
            pass
    except OSError as exc:
        where = "" if existing == folder else f" (it does not exist; {existing} above it is not writable)"
        return f"{folder}: not writable by uid {os.getuid()}: {exc.strerror}{where}"
    return ""
