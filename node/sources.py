"""Source images as the pipelines read them: a malformed header attribute never fails an analysis.

The results copy the Patient and Study modules from the source (PS3.3 C.7.1.1, C.7.2.1), and
highdicom converts what it copies: one birth date of "19XX0101" made every attempt fail ("Unable
to convert ... to 'DA'", with the value in the job's error). So each top-level attribute is
checked against its VR (PS3.5 6.2) when the file is read; one that does not conform is emptied
(a Type 2 attribute the results copy) or removed, and the attribute's tag is logged, never its
value. Pixel data and the other binary values are left to the pixel readers.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydicom import Dataset, config, dcmread
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.valuerep import validate_value

from node.logs import event

log = logging.getLogger("fracnode.pipeline")
# binary values (and numbers in binary) have no text to be malformed; their conversion is tried
_NOT_CHECKED = frozenset(
    {"SQ", "OB", "OW", "OD", "OF", "OL", "OV", "UN", "UR", "UT", "US", "SS", "UL", "SL", "FL", "FD", "AT", "UV", "SV"}
)
# Type 2 in the modules the results copy: kept present, but empty, when malformed
EMPTIED = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
        "StudyID",
        "AccessionNumber",
    }
)


def _conforms(vr: str, value: object) -> bool:
    values = value if isinstance(value, MultiValue | list | tuple) else [value]
    for item in values:
        if item is None or item == "":
            continue
        if vr in ("DS", "IS"):  # pydicom's number types keep the text they were read from
            item = getattr(item, "original_string", None) or str(item)
        validate_value(vr, item, config.RAISE)
    return True


def drop_malformed(ds: Dataset) -> list[str]:
    """Empty or remove every top-level attribute whose value does not fit its VR; the tags."""
    dropped = []
    for tag in list(ds.keys()):
        element = None
        try:
            element = ds[tag]
            if element.VR in _NOT_CHECKED or BaseTag(tag).group == 0x7FE0:
                continue
            _conforms(element.VR, element.value)
            continue
        except Exception:  # noqa: BLE001, S110 - pydicom raises many kinds; the attribute is dropped below
            pass
        keyword = element.keyword if element is not None else ""
        if element is not None and keyword in EMPTIED:
            element.value = None
        else:
            del ds[tag]
        dropped.append(f"{keyword or 'attribute'} ({BaseTag(tag).group:04X},{BaseTag(tag).element:04X})")
    return dropped


def read_source(path: Path, stop_before_pixels: bool = False) -> Dataset:
    """A source image for a pipeline: read, with malformed header attributes dropped (logged)."""
    ds = dcmread(path, stop_before_pixels=stop_before_pixels)
    dropped = drop_malformed(ds)
    if dropped:
        event(
            log,
            logging.WARNING,
            "malformed attributes not used",
            file=path.name,
            sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
            attributes=dropped,
        )
    return ds
