"""The attributes the node indexes for each received instance, and the checks they must pass.

`node.scan.DataSetScan` finds the indexed elements while it walks a data set; this module turns
them into a `Header`, converting values as pydicom does (character sets, multi-values, padding),
and refuses an instance whose UIDs are missing, invalid or not the ones its sender announced
(the C-STORE command, PS3.7 9.1.1, or the File Meta Information, PS3.10 7.1). Messages name the
attribute, never its value: a corrupted length can make a UID swallow the patient's name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import cast

from pydicom import Dataset
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.tag import BaseTag, Tag
from pydicom.uid import RE_VALID_UID

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
SPECIFIC_CHARACTER_SET = 0x00080005  # needed to convert the text values (PS3.5 6.1.2.3)
WANTED_TAGS = frozenset(int(t) for t in _HEADER_TAG_NUMBERS) | {SPECIFIC_CHARACTER_SET}
# (keyword, tag, VR from the data dictionary) of each indexed attribute
_INDEXED = [(keyword, int(Tag(keyword)), dictionary_VR(keyword)) for keyword in HEADER_TAGS]
_VALID_UID = re.compile(RE_VALID_UID)


class UnreadableInstance(Exception):
    """The bytes are not a DICOM dataset the node can index (missing UIDs, garbage)."""


class MismatchedInstance(UnreadableInstance):
    """The data set is not the instance its sender announced (PS3.4 B.2.3 status 0xA900)."""


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
        return "\\".join(str(v) for v in cast(Iterable[object], value))
    return str(value).strip()


_UID_NAMES = {  # Header field: the attribute as messages name it
    "sop_class_uid": "SOP Class UID (0008,0016)",
    "sop_instance_uid": "SOP Instance UID (0008,0018)",
    "study_uid": "Study Instance UID (0020,000D)",
    "series_uid": "Series Instance UID (0020,000E)",
}


def _validated(
    values: Mapping[str, str],
    transfer_syntax: str,
    expected_sop_class_uid: str | None,
    expected_sop_instance_uid: str | None,
    announced_by: str,
) -> Header:
    for name, keyword, expected in (
        ("sop_class_uid", "SOPClassUID", expected_sop_class_uid),
        ("sop_instance_uid", "SOPInstanceUID", expected_sop_instance_uid),
    ):
        found = values[keyword]
        if expected and found and found != expected:
            shown = found if _is_valid_uid(found) else f"({len(found)} characters, not a valid UID)"
            raise MismatchedInstance(
                f"the data set's {_UID_NAMES[name]} {shown} is not the {announced_by}'s {expected}"
            )
    # a data set without them (some anonymisers strip them) takes the ones announced with it
    header = Header(
        sop_class_uid=values["SOPClassUID"] or (expected_sop_class_uid or ""),
        sop_instance_uid=values["SOPInstanceUID"] or (expected_sop_instance_uid or ""),
        study_uid=values["StudyInstanceUID"],
        series_uid=values["SeriesInstanceUID"],
        transfer_syntax_uid=transfer_syntax,
        modality=values["Modality"],
        body_part=values["BodyPartExamined"],
        series_description=values["SeriesDescription"],
        protocol_name=values["ProtocolName"],
        image_type=values["ImageType"],
    )
    for name, attribute in _UID_NAMES.items():
        uid = getattr(header, name)
        if not uid:
            raise UnreadableInstance(f"the data set has no {attribute}")
        if not _is_valid_uid(uid):
            raise UnreadableInstance(f"the {attribute} is not a valid UID ({len(uid)} characters)")
    return header


def _is_valid_uid(uid: str) -> bool:
    return len(uid) <= 64 and _VALID_UID.match(uid) is not None  # what pydicom's UID.is_valid checks


def _dataset_values(ds: Dataset) -> dict[str, str]:
    try:
        return {keyword: _text(ds.get(keyword)) for keyword in HEADER_TAGS}
    except Exception as exc:  # pydicom raises many kinds on garbage; its message may hold the value
        raise UnreadableInstance(f"an indexed attribute cannot be decoded ({type(exc).__name__})") from exc


def _ascii_values(elements: Mapping[int, RawDataElement]) -> dict[str, str] | None:
    """What pydicom's conversion and `_text` make of plain ASCII values; None for anything else.

    UI and CS (PS3.5 6.2): trailing spaces and NULs are padding, then values split at "\\";
    LO: split first, each value loses its trailing padding. A single value is also stripped.
    """
    values: dict[str, str] = {}
    for keyword, tag, vr in _INDEXED:
        element = elements.get(tag)
        if element is None:
            values[keyword] = ""
            continue
        raw = element.value
        if (element.VR is not None and vr != element.VR) or raw is None:
            return None
        if not raw.isascii() or b"\x1b" in raw:  # other character sets: pydicom decodes them
            return None
        text = raw.decode("ascii")
        parts = [part.rstrip("\0 ") for part in text.split("\\")] if vr == "LO" else text.rstrip(" \0").split("\\")
        values[keyword] = parts[0].strip() if len(parts) == 1 else "\\".join(parts)
    return values


def header_from_elements(
    elements: Mapping[int, RawDataElement],
    transfer_syntax: str,
    expected_sop_class_uid: str | None = None,
    expected_sop_instance_uid: str | None = None,
    announced_by: str = "request",
) -> Header:
    """The `Header` of a data set whose indexed elements a scan found; UnreadableInstance when a
    UID is missing or invalid, MismatchedInstance when one is not the `expected_*` one."""
    values = _ascii_values(elements)
    if values is None:
        # pydicom converts each raw value on access, with the data set's (0008,0005)
        ds = Dataset({BaseTag(tag): element for tag, element in elements.items()})
        values = _dataset_values(ds)
    return _validated(values, transfer_syntax, expected_sop_class_uid, expected_sop_instance_uid, announced_by)
